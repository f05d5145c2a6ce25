"""``aam identity check`` against a real SPIRE server's admin socket: the entries an
operator created, compared with the examples' identity bindings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from aam.cli.main import run
from tests.servers import tool_binary
from tests.spire import run_spire

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_entries_with_no_policy_and_policies_with_no_entry_from_the_real_server() -> None:
    # A SPIRE of its own: the session's holds other tests' entries.
    with run_spire() as spire:
        spire.register("spiffe://prod/agent/finance-analyst", ["unix:gid:54101"])
        spire.register("spiffe://prod/agent/support-triage", ["unix:gid:54102"])
        extra = spire.register("spiffe://prod/agent/unbound", ["unix:gid:54103"])
        gateway = spire.register("spiffe://prod/gateway/envoy", ["unix:gid:54104"])
        out, err = io.StringIO(), io.StringIO()
        code = run(["identity", "check", str(EXAMPLES), "--spire-server-socket",
                    str(spire.server_socket), "--spire-server", tool_binary("spire-server"),
                    "--ignore", "spiffe://prod/gateway/*", "--json"], out, err)
        assert code == 1, err.getvalue()
        report = json.loads(out.getvalue())
        assert [m["workload"] for m in report["matched"]] == [
            "spiffe://prod/agent/finance-analyst", "spiffe://prod/agent/support-triage"]
        assert [m["entries"][0]["selectors"] for m in report["matched"]] == [
            ["unix:gid:54101"], ["unix:gid:54102"]]
        assert [p["workload"] for p in report["policies_without_entry"]] == [
            "spiffe://prod/agent/claims-assistant"]
        assert [(e["spiffe_id"], e["id"]) for e in report["entries_without_policy"]] == [
            ("spiffe://prod/agent/unbound", extra)]
        assert [e["id"] for e in report["ignored"]] == [gateway]
        # The operator adds the missing entry and removes the stray one: all matched.
        spire.register("spiffe://prod/agent/claims-assistant", ["unix:gid:54105"])
        spire.delete(extra)
        out = io.StringIO()
        code = run(["identity", "check", str(EXAMPLES), "--spire-server-socket",
                    str(spire.server_socket), "--spire-server", tool_binary("spire-server"),
                    "--ignore", "spiffe://prod/gateway/*"], out, err)
        assert code == 0, out.getvalue() + err.getvalue()
        assert out.getvalue().rstrip().endswith("identity check: ok")
