"""Child processes the PDP (and its tests and benchmarks) start: OPA, OpenBao, ...

Two habits in one place: wait for readiness while noticing a child that died
(with the tail of its log), and stop politely, then firmly.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``check`` (exceptions count as not ready) until it is true or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
