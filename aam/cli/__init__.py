"""The ``aam`` command line: one module per command, each a thin library call."""
