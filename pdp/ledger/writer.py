"""Group commit for the audit chain, shared by the stores."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pdp.ledger.chain import Link, link
from pdp.ledger.keyring import AuditKey, Keyring
from pdp.ledger.types import (
    Admission,
    Ask,
    AuditEntry,
    ChainHead,
    Committed,
    LedgerError,
    LedgerUnavailable,
)

log = logging.getLogger("aam.ledger")
NewRows = list[tuple[Link, AuditEntry]]  # a batch's rows to insert, chained
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
    """The Ledger steps both stores route through their :class:`AuditWriter`, and the
    chain state the writer keeps: the audit keyring and this process's chain head."""

    writer: AuditWriter
    keyring: Keyring | None = None
    # The newest row this process appended or, before its first append, the one its
    # anchor names (Stack sets it). Every batch first checks the chain still holds it:
    # rows cut from the end or rewritten under a PDP stop its appends (decisions deny)
    # instead of being covered by new rows chained onto the shortened chain.
    head: ChainHead | None = None

    def audit_key(self) -> AuditKey:
        """The key this batch's rows are written under; without a keyring, nothing is."""
        if self.keyring is None:
            raise LedgerError("ledger audit: no audit key loaded (audit_key_file); "
                              "audit rows are only written keyed")
        return self.keyring.current()

    def chain(self, batch: list[Pending], keep: list[bool], existing: dict[str, int],
              head: ChainHead, key: AuditKey) -> NewRows:
        """Give each kept decision its seq (the existing one for a decision already in
        the chain: a retry appends nothing) and chain the new rows after ``head``.
        Sets ``p.seq`` (0: not kept, nothing written); returns the rows to insert."""
        fresh: dict[str, Pending] = {}  # a decision twice in one batch gets the first one's row
        for p, kept in zip(batch, keep, strict=True):
            if kept and p.entry.decision_id not in existing:
                fresh.setdefault(p.entry.decision_id, p)
        links = link(head.seq, head.hash, key, [p.entry.body for p in fresh.values()])
        seq_of = {**existing, **{did: lk.seq for did, lk in zip(fresh, links, strict=True)}}
        for p, kept in zip(batch, keep, strict=True):
            p.seq = seq_of[p.entry.decision_id] if kept else 0
        return [(lk, p.entry) for p, lk in zip(fresh.values(), links, strict=True)]

    def advance(self, rows: NewRows) -> None:
        """After the batch committed: its last new row (if any) is this process's head."""
        if rows:
            last = rows[-1][0]
            self.head = ChainHead(last.seq, last.hash)

    def check_head(self, stored_hash: str | None) -> None:
        """``stored_hash``: the hash the chain holds now at ``head.seq`` (None: no such row)."""
        head = self.head
        if head is None or stored_hash == head.hash:
            return
        what = "is gone" if stored_hash is None else "was rewritten"
        raise LedgerError(f"ledger audit: chain broken: seq {head.seq}, which this PDP wrote or "
                          f"anchored, {what}; appends stop (run `aam audit verify`)")

    def finish(self, entry: AuditEntry, release: bool) -> int:
        """Hand the row to the audit writer and wait until its batch has committed."""
        return self.writer.submit(entry, release).seq

    def commit(self, ask: Ask, entry: AuditEntry) -> Committed:
        """Reserve for an allowed decision and append its audit row, in the writer's
        next batch; nothing is written when the ledger refuses the reservation."""
        p = self.writer.submit(entry, False, ask)
        assert p.admission is not None
        return Committed(p.admission, p.seq)
