"""The managed OPA on a Unix socket (opa_addr = "unix://..."): the real OPA decides over it."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from aam.v1 import pdp_pb2
from pdp.opa import DECISION_PATH, OpaClient
from tests.integration.pdp import FINANCE, request, running_stack, stub
from tests.servers import wait_until

ALLOW, DENY = pdp_pb2.DECISION_ALLOW, pdp_pb2.DECISION_DENY


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_managed_opa_on_a_private_unix_socket_decides() -> None:
    with running_stack(opa_addr="unix://") as stack:
        assert stack.opa is not None
        sock = Path(stack.opa.unix_socket)
        assert stack.opa_url == f"unix://{sock}"
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert _mode(sock.parent) == 0o700 and _mode(sock) == 0o600
        assert os.lstat(sock.parent).st_uid == os.geteuid()
        # OPA listens on the socket only: its command line names no TCP address.
        argv = Path(f"/proc/{stack.opa.proc.pid}/cmdline").read_bytes().split(b"\0")  # type: ignore[union-attr]
        assert argv[argv.index(b"--addr") + 1] == f"unix://{sock}".encode()
        assert argv.count(b"--addr") == 1
        channel, pdp = stub(stack)
        with channel:
            allow = pdp.Authorize(request(model="reasoning-high"), timeout=10)
            deny = pdp.Authorize(request(tool="salesforce.accounts", action="export"), timeout=10)
        assert allow.decision == ALLOW, allow.reasons
        assert deny.decision == DENY and [r.code for r in deny.reasons] == ["action_denied"]
        # The Data API answers the same over the socket, for any client of it.
        result = OpaClient(stack.opa_url, 5).query(DECISION_PATH, {
            "identity": {"spiffe_id": FINANCE}, "model": "", "tool": "salesforce.accounts",
            "action": "export", "params": {}, "context": {}, "estimate": {"tokens": 0, "cost_usd": 0}})
        assert result["allow"] is False
    assert not sock.parent.exists()  # the private directory goes with the stack


def test_killed_opa_restarts_on_the_same_socket_and_decisions_recover(tmp_path: Path) -> None:
    """An explicit socket path in a directory the PDP creates 0700; SIGKILL leaves a stale
    socket file behind, which the restart replaces."""
    sock = tmp_path / "run" / "opa.sock"
    with running_stack(opa_addr=f"unix://{sock}", opa_timeout_ms=300) as stack:
        assert stack.opa is not None and stack.opa.proc is not None
        assert _mode(sock.parent) == 0o700
        first = stack.opa.proc
        channel, pdp = stub(stack)
        with channel:
            assert pdp.Authorize(request(model="reasoning-high"), timeout=10).decision == ALLOW
            first.kill()
            first.wait()
            assert stat.S_ISSOCK(os.lstat(sock).st_mode)  # stale: nobody listens on it
            killed = time.monotonic()

            def recovered() -> bool:
                opa = stack.opa
                return (opa is not None and opa.proc is not first and time.monotonic() > killed
                        and pdp.Authorize(request(model="reasoning-high"), timeout=10).decision == ALLOW)

            wait_until(recovered, 30, "ALLOW from the OPA restarted on the socket")
        assert stack.opa is not None and stack.opa.unix_socket == str(sock)
    assert not sock.parent.exists()  # made by the PDP, so removed by it
