"""The hand-written Rego library: strict check and its own tests, with coverage."""

from __future__ import annotations

import json
import subprocess

from compiler.bundle import REGO_DIR
from tests.servers import opa_binary


def test_rego_library_passes_strict_check() -> None:
    r = subprocess.run([opa_binary(), "check", "--strict", str(REGO_DIR)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rego_unit_tests_pass_with_coverage() -> None:
    r = subprocess.run([opa_binary(), "test", "--coverage", str(REGO_DIR)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    report = json.loads(r.stdout)
    assert report["coverage"] >= 90, f"rego coverage {report['coverage']:.1f}% < 90%"
