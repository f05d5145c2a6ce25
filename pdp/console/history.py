"""Which bundle revisions this PDP published, and when OPA made each one active."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from pdp.health import ENGINE, Components

KEEP = 50  # revisions remembered (this process's lifetime only; the audit rows keep the rest)


@dataclass(frozen=True)
class Published:
    revision: str
    published_at: float  # wall-clock seconds
    policies: int
    active_at: float | None = None  # when OPA was first seen deciding with it


class RevisionLog:
    """Fed by the stack's publisher and by the engine's health (which names the revision
    OPA has active): the console's "bundle revisions" page."""

    def __init__(self, keep: int = KEEP) -> None:
        self._lock = threading.Lock()
        self._entries: deque[Published] = deque(maxlen=keep)
        self._active = ""

    def published(self, revision: str, policies: int) -> None:
        with self._lock:
            if self._entries and self._entries[-1].revision == revision:
                return
            self._entries.append(Published(revision, time.time(), policies))
            self._mark(self._active)

    def on_components(self, components: Components) -> None:
        """A :meth:`Components.listen` listener: the engine's detail names OPA's revision."""
        engine = components.snapshot().get(ENGINE)
        revision = engine.detail.get("revision", "") if engine is not None else ""
        if revision:
            with self._lock:
                self._active = revision
                self._mark(revision)

    def _mark(self, revision: str) -> None:
        for i, e in enumerate(self._entries):
            if e.revision == revision and e.active_at is None:
                self._entries[i] = replace(e, active_at=time.time())

    @property
    def active(self) -> str:
        return self._active

    def entries(self) -> list[Published]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._entries))
