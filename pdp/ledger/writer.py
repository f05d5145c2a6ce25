"""Group commit for the audit chain, shared by the stores."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pdp.ledger.types import Admission, Ask, AuditEntry, Committed, LedgerError, LedgerUnavailable

log = logging.getLogger("aam.ledger")
MAX_BATCH = 256


@dataclass
class Pending:
    """One decision's write. With ``ask`` (an allowed, metered decision) the store
    reserves first and writes the audit row only if the reservation was taken."""

    entry: AuditEntry
    release: bool
    ask: Ask | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # Filled in by the store: the audit sequence (0 when nothing was written) and,
    # for an ask, the state the reservation was checked against.
    seq: int = 0
    admission: Admission | None = None
    error: LedgerError | None = None


class AuditWriter:
    """Group commit: decisions waiting for their audit row share one transaction.

    The chain is a single sequence, so appends serialise on one lock; batching
    the rows that arrive while a commit is in flight pays that lock and the WAL
    flush once per batch instead of once per decision. ``submit`` returns only
    after the batch holding the row has committed (or raises): no decision is
    answered before its audit row is durable.
    """

    def __init__(self, write: Callable[[list[Pending]], None], wait_s: float) -> None:
        self.write = write
        self.wait_s = wait_s
        self.queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="aam-audit-writer", daemon=True)
        self.thread.start()

    def submit(self, entry: AuditEntry, release: bool, ask: Ask | None = None) -> Pending:
        """Queue one write and wait until its batch has committed (or failed)."""
        pending = Pending(entry, release, ask)
        self.queue.put(pending)
        if not pending.done.wait(self.wait_s):
            raise LedgerUnavailable("ledger audit: no commit in time")
        if pending.error is not None:
            raise pending.error
        return pending

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
                self.write(batch)
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


class WriterBacked:
    """The Ledger steps both stores route through their :class:`AuditWriter`."""

    writer: AuditWriter

    def finish(self, entry: AuditEntry, release: bool) -> int:
        """Hand the row to the audit writer and wait until its batch has committed."""
        return self.writer.submit(entry, release).seq

    def commit(self, ask: Ask, entry: AuditEntry) -> Committed:
        """Reserve for an allowed decision and append its audit row, in the writer's
        next batch; nothing is written when the ledger refuses the reservation."""
        p = self.writer.submit(entry, False, ask)
        assert p.admission is not None
        return Committed(p.admission, p.seq)
