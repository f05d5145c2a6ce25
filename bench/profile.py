"""Where the PDP's hot path spends its time: py-spy attached to the running PDP.

py-spy samples the live process from outside (no code change, little
overhead). Its collapsed stacks are summarised two ways: inclusive share of
samples per function (what a call costs with its callees) and self share
(where the CPU actually is).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.tools import tool

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


@dataclass(frozen=True)
class Profile:
    samples: int
    inclusive: list[tuple[str, float]]  # (function, share of samples)
    self_: list[tuple[str, float]]


def start(pid: int, duration_s: float, out: Path, rate_hz: int = 250) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [tool("py-spy"), "record", "--pid", str(pid), "--duration", f"{duration_s:.0f}",
         "--rate", str(rate_hz), "--format", "raw", "--nonblocking", "--gil", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1].split("/", 1)[-1] if marker == "/lib/python3" else \
                path.split(marker, 1)[1]
            break
    else:
        path = Path(path).name if "/" not in path else "/".join(Path(path).parts[-2:])
    return f"{m.group('func')} ({path})"


def summarize(collapsed: str, top: int = 15) -> Profile:
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";")]
        for f in set(frames):
            incl[f] += n
        self_[frames[-1]] += n
    if not total:
        return Profile(0, [], [])
    return Profile(total, [(f, c / total) for f, c in incl.most_common(top)],
                   [(f, c / total) for f, c in self_.most_common(top)])


def record(pid: int, duration_s: float) -> tuple[subprocess.Popen[bytes], Path]:
    tmp = Path(tempfile.mkdtemp(prefix="aam-bench-prof-"))
    out = tmp / "pdp.collapsed"
    return start(pid, duration_s, out), out


def finish(proc: subprocess.Popen[bytes], out: Path) -> Profile:
    _, err = proc.communicate(timeout=60)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
    return summarize(out.read_text())


def format_profile(p: Profile) -> str:
    if not p.samples:
        return "(no samples)"
    lines = [f"{p.samples} samples of the PDP thread holding the GIL", "",
             "inclusive  function"]
    lines += [f"{share * 100:8.1f}%  {f}" for f, share in p.inclusive]
    lines += ["", "self       function"]
    lines += [f"{share * 100:8.1f}%  {f}" for f, share in p.self_]
    return "\n".join(lines)
