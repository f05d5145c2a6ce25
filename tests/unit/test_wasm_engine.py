"""OPA's compiled Wasm in-process (bench/opawasm.py) decides as OPA's server does.

With the real OPA: the bench's Wasm build of the examples plus generated
workloads, against the server on the same bundle, over varied inputs
(bench/wasm.py), and the host's ``sprintf`` against OPA's own on the cases
where Go's fmt is easy to get wrong.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import wasm
from bench.opawasm import OpaWasm, RegoText, _go_arg, go_sprintf, read_wasm_bundle
from pdp.config import Settings
from pdp.opa import OpaClient

pytestmark = pytest.mark.integration


def _disagreements(tmp: Path, n: int = 200) -> tuple[list[tuple[str, object, object]], int]:
    opa = Settings.load(env={}).opa_path()
    built = wasm.build(tmp, opa)
    engine = OpaWasm(*read_wasm_bundle(built.wasm), raw=True)
    with wasm.opa_server(built.bundle, opa, tmp) as (url, _unix, _pid):
        client = OpaClient(url, 5)
        try:
            return wasm.mismatches(wasm.inputs(n), engine, client)
        finally:
            client.close()


def test_wasm_and_server_give_identical_decisions(tmp_path: Path) -> None:
    """authz.rego sorts its reasons, so even their order is the same on both engines."""
    bad, allows = _disagreements(tmp_path)
    assert 40 < allows < 160  # both outcomes, many reasons
    assert [(label, want, got) for label, want, got in bad] == []


CASES = [
    ("%v|%v|%v|%v|%v", '[1000000.0, 15.0, 5e-06, 0.1, 2.50]'),
    ("%d|%d|%d.%02d|%s|%s", '[15.0, 7, 3, 5, 5, 1.5]'),
    ("%q|%q|%v", r'["a\"b\u00e9\u0001", "tab\t", "plain"]'),
    ("%v %v %v %v", '[{"b", "a", 1}, {"z": 1, "a": [1.0, "x"]}, set(), [null, true]]'),
    ("%v of %v", '[123456789012345678901234567890]'),
    ("%s", '["a", "extra", 2]'),
]


def test_host_sprintf_matches_opas() -> None:
    expr = "[" + ", ".join(f"sprintf({json.dumps(f)}, {a})" for f, a in CASES) + "]"
    out = subprocess.run([Settings.load(env={}).opa_path(), "eval", "-f", "json", expr],
                         capture_output=True, text=True, check=True).stdout
    want = json.loads(out)["result"][0]["expressions"][0]["value"]
    got = [go_sprintf(f, [_go_arg(v) for v in RegoText(a).value()]) for f, a in CASES]
    assert got == want
