"""Group commit for the audit chain, shared by the stores."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pdp.ledger.types import AuditEntry, LedgerError, LedgerUnavailable

log = logging.getLogger("aam.ledger")
MAX_BATCH = 256


@dataclass
class Pending:
    entry: AuditEntry
    release: bool
    done: threading.Event = field(default_factory=threading.Event)
    seq: int = 0
    error: LedgerError | None = None


class AuditWriter:
    """Group commit: decisions waiting for their audit row share one transaction.

    The chain is a single sequence, so appends serialise on one lock; batching
    the rows that arrive while a commit is in flight pays that lock and the WAL
    flush once per batch instead of once per decision. ``submit`` returns only
    after the batch holding the row has committed (or raises): no decision is
    answered before its audit row is durable.
    """

    def __init__(self, write: Callable[[list[Pending]], list[int]], wait_s: float) -> None:
        self.write = write
        self.wait_s = wait_s
        self.queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="aam-audit-writer", daemon=True)
        self.thread.start()

    def submit(self, entry: AuditEntry, release: bool) -> int:
        pending = Pending(entry, release)
        self.queue.put(pending)
        if not pending.done.wait(self.wait_s):
            raise LedgerUnavailable("ledger audit: no commit in time")
        if pending.error is not None:
            raise pending.error
        return pending.seq

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=self.wait_s)

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                seqs = self.write(batch)
                for p, seq in zip(batch, seqs, strict=True):
                    p.seq = seq
            except LedgerError as exc:
                for p in batch:
                    p.error = exc
            except Exception:
                log.exception("audit writer failed")
                for p in batch:
                    p.error = LedgerError("ledger audit: internal error")
            for p in batch:
                p.done.set()
            if stop:
                return
