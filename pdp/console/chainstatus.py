"""The console's view of the audit chain: verified once from genesis, then incrementally.

Re-hashing a million rows on every page load would make the page as slow as
``aam audit verify``. Instead one background walk checks the whole chain once (in
pages of :data:`PAGE` rows on the primary key), remembering the last verified
(seq, hash); every later page load checks only the rows appended since, chained to
that hash. What a page load costs is therefore the rows written since the last load;
the one full walk costs what ``aam audit verify`` does (bench/console.py prints both).

The walk checks what makes the chain tamper-evident: every seq present, every row
chained to the previous row's hash, every row's HMAC under its key (or the public
formula for legacy rows before the first keyed one). ``aam audit verify`` says more
about a break (moved rows, columns against bodies); the page points to it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pdp.config import ConfigError
from pdp.ledger import AuditFilter, Ledger, LedgerError
from pdp.ledger import anchor as anchors
from pdp.ledger.chain import LEGACY, keyed_hash, legacy_hash
from pdp.ledger.keyring import Keyring
from pdp.ledger.types import GENESIS, AuditRow

PAGE = 10_000  # rows per query of the walk
MAX_PROBLEMS = 20  # problems kept for the page (aam audit verify lists them all)


@dataclass
class ChainState:
    seq: int = 0  # the last verified row
    hash: str = GENESIS
    rows: int = 0  # rows verified so far
    problems: list[str] = field(default_factory=list)
    legacy: int = 0
    keyed_seen: bool = False
    done: bool = False  # the walk from genesis has reached the head once
    error: str = ""  # the ledger failed: the state is unknown, not intact
    checked_at: float = 0.0
    full_walk_s: float | None = None


@dataclass(frozen=True)
class AnchorStatus:
    path: str
    seq: int = 0
    time: str = ""
    problem: str = ""  # "" = the signature verifies and the chain holds its hash


class ChainStatus:
    def __init__(self, ledger: Ledger, keyring: Keyring | None, anchor_file: str) -> None:
        self.ledger = ledger
        self.keyring = keyring
        self.anchor_file = anchor_file
        self.state = ChainState()
        self._lock = threading.Lock()  # one walker at a time
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """The first walk from genesis, in the background."""
        self._thread = threading.Thread(target=self.catch_up, name="aam-console-verify",
                                        daemon=True)
        self._thread.start()

    def catch_up(self) -> ChainState:
        """Verify every row after the last verified one. While the first walk runs, a page
        load does not wait for it: it shows its progress."""
        if not self._lock.acquire(blocking=self._thread is None or self.state.done):
            return self.state
        try:
            started = time.perf_counter()
            first = not self.state.done
            while True:
                try:
                    rows = self.ledger.audit_rows(AuditFilter(after_seq=self.state.seq,
                                                              through_seq=self.state.seq + PAGE))
                except LedgerError as exc:
                    self.state.error = str(exc)
                    return self.state
                self.state.error = ""
                for r in rows:
                    self._check(r)
                if len(rows) < PAGE:  # the head (a gap longer than a page shows as one)
                    break
            if first:
                self.state.full_walk_s = time.perf_counter() - started
            self.state.done = True
            self.state.checked_at = time.time()
            return self.state
        finally:
            self._lock.release()

    def _check(self, r: AuditRow) -> None:
        s = self.state
        problem = ""
        if r.seq != s.seq + 1:
            problem = f"row(s) {s.seq + 1}..{r.seq - 1} before this one are missing"
        elif r.prev_hash != s.hash:
            problem = "does not chain to the previous row's hash"
        elif r.key_id == LEGACY:
            if s.keyed_seen:
                problem = "an unkeyed row after keyed rows"
            elif legacy_hash(r.prev_hash, r.seq, r.body) != r.hash:
                problem = "contents do not match the row's hash"
            s.legacy += 1
        else:
            s.keyed_seen = True
            key = self.keyring.get(r.key_id) if self.keyring is not None else None
            if key is None:
                problem = (f"key id {r.key_id!r} is not in the keyring" if self.keyring
                           else "no audit key to check its HMAC")
            elif keyed_hash(key, r.prev_hash, r.seq, r.body) != r.hash:
                problem = "contents do not match the row's hash"
        if problem and len(s.problems) < MAX_PROBLEMS:
            s.problems.append(f"seq {r.seq} (decision {r.decision_id}): {problem}")
        s.seq, s.hash, s.rows = r.seq, r.hash, s.rows + 1

    def anchor(self) -> AnchorStatus | None:
        """The last anchor the PDP wrote, its signature, and whether the chain holds it."""
        if not self.anchor_file:
            return None
        path = Path(self.anchor_file)
        if not path.exists():
            return AnchorStatus(str(path), problem="not written yet")
        try:
            a = anchors.read(path)
        except ConfigError as exc:
            return AnchorStatus(str(path), problem=str(exc))
        problem = anchors.signature_problem(a, self.keyring) if self.keyring is not None \
            else "its signature is unchecked: no audit key"
        if problem is None:
            try:
                stored = self.ledger.audit_hash(a.seq)
            except LedgerError as exc:
                stored, problem = None, str(exc)
            if problem is None and stored != a.hash:
                problem = (f"the chain has no row at seq {a.seq}" if stored is None
                           else f"the chain's hash at seq {a.seq} differs from the anchor's")
        return AnchorStatus(str(path), a.seq, a.time, problem or "")
