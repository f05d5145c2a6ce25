"""CPU and memory of the processes under test, read from /proc (Linux).

CPU is reported as percent of one core over the measured window (200% = both
cores of this machine); RSS is the peak seen by sampling every 100 ms. A name may
stand for several processes (the PDP and its worker processes): their CPU is summed,
RSS is the peak of the sum, and each one's peak is kept too. Besides those, a
:class:`Meter` measures process trees (PostgreSQL: the
postmaster and its backends) and the load generator (this process's children
that exited during the window, i.e. ghz or vegeta), so that every CPU a
decision costs on the machine is accounted for.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, as they are now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo.extend(children(p))
    return out


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    out = {}
    for p in tree(pid):
        with contextlib.suppress(OSError):
            out[p] = cpu_seconds(p)
    return out


def exited_children_cpu_seconds() -> float:
    """CPU of this process's children that have exited and been waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:  # that thread exited since the listing
            continue
        out.extend(int(c) for c in text)
    return out


@dataclass(frozen=True)
class Usage:
    cpu_pct: float
    rss_mb: float
    # With several processes under one name: each one's peak RSS, in the order given.
    parts_mb: tuple[float, ...] = ()


class Meter:
    """Measure CPU and peak RSS of named processes (a pid, or several pids summed) over a
    ``with`` block; with ``trees``, the CPU of named process trees; with ``loadgen``, the
    CPU of the children that exited in the window (usage key "loadgen")."""

    def __init__(self, pids: Mapping[str, int | Sequence[int]], interval_s: float = 0.1,
                 trees: dict[str, int] | None = None, loadgen: bool = False) -> None:
        self.pids = {n: [p] if isinstance(p, int) else list(p) for n, p in pids.items()}
        self.trees = trees or {}
        self.loadgen = loadgen
        self.interval_s = interval_s
        self.usage: dict[str, Usage] = {}
        self._peak: dict[str, int] = dict.fromkeys(self.pids, 0)
        self._parts: dict[str, list[int]] = {n: [0] * len(p) for n, p in self.pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for name, pids in self.pids.items():
                now = []
                for pid in pids:
                    try:
                        now.append(rss_kb(pid))
                    except OSError:
                        now.append(0)
                self._peak[name] = max(self._peak[name], sum(now))
                self._parts[name] = [max(a, b) for a, b in zip(self._parts[name], now, strict=True)]
            if self._stop.wait(self.interval_s):
                return

    def _cpu(self, pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def __enter__(self) -> Meter:
        self._t0 = time.monotonic()
        self._cpu0 = {n: self._cpu(p) for n, p in self.pids.items()}
        self._tree0 = {n: tree_cpu_seconds(p) for n, p in self.trees.items()}
        self._children0 = exited_children_cpu_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t0
        self._stop.set()
        self._thread.join()
        for name, pids in self.pids.items():
            # A process that exited in the window (a restarted worker) drops out of the sum.
            cpu = max(0.0, self._cpu(pids) - self._cpu0[name])
            parts = tuple(kb / 1024 for kb in self._parts[name]) if len(pids) > 1 else ()
            self.usage[name] = Usage(100 * cpu / wall if wall else 0.0, self._peak[name] / 1024,
                                     parts)
        for name, pid in self.trees.items():
            now, before = tree_cpu_seconds(pid), self._tree0[name]
            cpu = sum(c - before.get(p, 0.0) for p, c in now.items())
            self.usage[name] = Usage(100 * cpu / wall if wall else 0.0, 0.0)
        if self.loadgen:
            cpu = exited_children_cpu_seconds() - self._children0
            self.usage["loadgen"] = Usage(100 * cpu / wall if wall else 0.0, 0.0)
