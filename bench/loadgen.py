"""Load generators, each returning the same :class:`Result`.

- gRPC (Authorize, ext_authz Check): ``ghz``. At a fixed rate it runs with
  ``--async``, so requests go out on schedule whether or not earlier ones have
  answered (open loop: a slow server cannot slow the offered load and hide its
  queueing). At saturation it runs closed-loop with ``concurrency`` workers.
- HTTP (OPA's Data API): ``vegeta``, open loop at a fixed rate; closed loop
  with ``concurrency`` workers at saturation (``-rate=0``).
Both are Go programs built by scripts/setup, so neither shares the GIL with
the PDP; they do share the machine's two cores, which every row pays alike.

Both send many requests, round-robin: ghz a JSON array of messages (its
``--data-file``), with :data:`SEQ` in strings evaluated per call (the call's
request number, after a tag of the run: no two calls of a bench run carry the
same input); vegeta a targets file with one body per target.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.tools import tool
from pdp.config import REPO_ROOT

NS_PER_MS = 1_000_000
# A Go template ghz evaluates in string values of its call data at every call: the call's
# request number (0, 1, ... in each ghz run).
SEQ = "{{.RequestNumber}}"
_RUNS = itertools.count()
_BENCH = secrets.token_hex(3)


def run_tag() -> str:
    """A tag no other load run of this process (or, likely, of another bench run) uses."""
    return f"{_BENCH}.{next(_RUNS)}."


def tag_seq(obj: Any, tag: str) -> Any:
    """``obj`` with SEQ in every string prefixed by ``tag`` (so ghz renders "<tag><n>")."""
    if isinstance(obj, str):
        return obj.replace(SEQ, tag + SEQ)
    if isinstance(obj, dict):
        return {k: tag_seq(v, tag) for k, v in obj.items()}
    if isinstance(obj, list):
        return [tag_seq(v, tag) for v in obj]
    return obj


@dataclass(frozen=True)
class Load:
    """What to offer: ``rate`` requests/s open loop, or saturation when rate is 0."""

    rate: int
    duration_s: float
    concurrency: int = 16

    @property
    def label(self) -> str:
        return f"{self.rate}/s" if self.rate else f"max c={self.concurrency}"


@dataclass(frozen=True)
class Result:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # successful responses per second
    count: int
    errors: int


def describe() -> str:
    """The generators and their versions (pinned in scripts/setup: go-installed binaries
    carry no version of their own), for the run's header."""
    setup = (REPO_ROOT / "scripts" / "setup").read_text()

    def pin(name: str) -> str:
        m = re.search(rf"^{name}_VERSION=(\S+)", setup, re.M)
        return m.group(1) if m else "?"

    return (f"ghz {pin('GHZ')} for gRPC (Authorize, ext_authz Check; --async open loop at a fixed "
            f"rate, closed loop with N workers at saturation), vegeta {pin('VEGETA')} for HTTP "
            "(OPA's Data API; open loop, N workers at saturation)")


class LoadError(RuntimeError):
    """The load generator failed or every request failed."""


def _run(argv: list[str], timeout_s: float, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise LoadError(f"{Path(argv[0]).name} exited {proc.returncode}: "
                        f"{proc.stderr.decode(errors='replace')[-800:]}")
    return proc.stdout


def ghz(addr: str, call: str, payloads: list[dict[str, Any]] | dict[str, Any], load: Load,
        protoset: Path, metadata: dict[str, str] | None = None, connections: int = 2) -> Result:
    """``payloads`` (one message, or many sent round-robin) at ``load`` over ``connections``
    connections; SEQ in their strings becomes this run's tag and the call's request number."""
    messages = tag_seq(payloads if isinstance(payloads, list) else [payloads], run_tag())
    with tempfile.TemporaryDirectory(prefix="aam-bench-") as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps(messages, separators=(",", ":")))
        argv = [tool("ghz"), "--insecure", "--protoset", str(protoset), "--call", call,
                "-D", str(data), *(["-m", json.dumps(metadata)] if metadata else []),
                "-z", f"{load.duration_s:g}s", "-t", "5s", "-O", "json", "--connections", str(connections),
                "--duration-stop", "ignore"]
        if load.rate:
            argv += ["--rps", str(load.rate), "--async", "-c", "64"]
        else:
            argv += ["-c", str(load.concurrency)]
        out = _run([*argv, addr], load.duration_s + 60)
    return parse_ghz(json.loads(out), load.duration_s)


def parse_ghz(doc: dict[str, Any], duration_s: float) -> Result:
    lat = {int(d["percentage"]): d["latency"] / NS_PER_MS for d in doc.get("latencyDistribution") or ()}
    ok = int((doc.get("statusCodeDistribution") or {}).get("OK", 0))
    count = int(doc.get("count", 0))
    if not ok:
        raise LoadError(f"ghz: no successful call: {doc.get('errorDistribution')}")
    total_s = doc.get("total", 0) / 1e9 or duration_s
    return Result(lat.get(50, 0.0), lat.get(90, 0.0), lat.get(99, 0.0), ok / total_s, count, count - ok)


def vegeta_targets(url: str, bodies: list[dict[str, Any]]) -> bytes:
    """vegeta's JSON targets format: one POST per line, one body each (sent round-robin)."""
    return b"".join(json.dumps({
        "method": "POST", "url": url, "header": {"Content-Type": ["application/json"]},
        "body": _b64(json.dumps(body, separators=(",", ":")).encode())}).encode() + b"\n"
        for body in bodies)


def vegeta(url: str, bodies: list[dict[str, Any]] | dict[str, Any], load: Load,
           unix_socket: str = "") -> Result:
    """POST ``bodies`` (one, or many sent round-robin) to ``url``; with ``unix_socket``
    vegeta connects there instead of to the URL's host."""
    with tempfile.TemporaryDirectory(prefix="aam-bench-") as tmp:
        targets = Path(tmp) / "targets.json"
        targets.write_bytes(vegeta_targets(url, bodies if isinstance(bodies, list) else [bodies]))
        argv = [tool("vegeta"), "attack", "-format=json", f"-targets={targets}",
                f"-duration={load.duration_s:g}s", "-timeout=5s", "-keepalive=true",
                "-max-connections=64", *([f"-unix-socket={unix_socket}"] if unix_socket else [])]
        argv += [f"-rate={load.rate}/1s"] if load.rate else \
            ["-rate=0", f"-max-workers={load.concurrency}", f"-workers={load.concurrency}"]
        results = _run(argv, load.duration_s + 60)
        report = _run([tool("vegeta"), "report", "-type=json"], 60, results)
    return parse_vegeta(json.loads(report))


def parse_vegeta(doc: dict[str, Any]) -> Result:
    lat = doc.get("latencies") or {}
    count = int(doc.get("requests", 0))
    ok = int((doc.get("status_codes") or {}).get("200", 0))
    if not ok:
        raise LoadError(f"vegeta: no successful request: {doc.get('errors')}")
    return Result(lat.get("50th", 0) / NS_PER_MS, lat.get("90th", 0) / NS_PER_MS,
                  lat.get("99th", 0) / NS_PER_MS, float(doc.get("throughput", 0.0)), count, count - ok)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
