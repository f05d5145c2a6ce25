"""A kept-alive client is asked to reconnect after max_connection_age_s, so it presents its
current (rotated) SVID: the PDP checks a caller's SVID on every call, and a connection keeps
the certificate it was opened with."""

from __future__ import annotations

import threading
import time

import grpc

from aam.v1 import pdp_pb2
from tests.integration.pdp import request, running_stack, stub


def test_a_long_lived_connection_is_renewed_and_no_call_fails() -> None:
    with running_stack(max_connection_age_s=1.0) as stack:
        channel, pdp = stub(stack, gateway=True)
        ready = []
        lock = threading.Lock()

        def seen(state: grpc.ChannelConnectivity) -> None:
            if state == grpc.ChannelConnectivity.READY:
                with lock:
                    ready.append(time.monotonic())

        channel.subscribe(seen, try_to_connect=True)
        answers = []
        deadline = time.monotonic() + 4.5
        with channel:
            while time.monotonic() < deadline:
                answers.append(pdp.Authorize(request(model="reasoning-high"), timeout=10).decision)
                time.sleep(0.05)
            channel.unsubscribe(seen)
    assert len(ready) >= 3, ready  # connected, then reconnected about every second
    assert set(answers) == {pdp_pb2.DECISION_ALLOW} and len(answers) > 40
