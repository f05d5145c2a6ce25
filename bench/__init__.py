"""Benchmarks: AAM side by side with OPA alone and Go ext_authz servers, one command.

Run ``.venv/bin/python -m bench.run`` (``--quick`` for a ~1 minute pass). Not
part of the test suite: it prints numbers, it asserts nothing.
"""
