"""Benchmarks: AAM side by side with OPA alone (and opa-envoy-plugin), one command.

Run ``.venv/bin/python -m bench.run`` (``--quick`` for a ~1 minute pass). Not
part of the test suite: it prints numbers, it asserts nothing.
"""
