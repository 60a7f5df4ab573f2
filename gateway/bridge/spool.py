"""The on-disk event queue: SQLite in WAL mode under the state directory.

Events are added in batches, read back in order, and deleted only when the broker has
acknowledged them. ``append`` stages a batch (ids assigned, kept in memory) and ``commit``
writes it, with the deletes staged since, in one transaction: the bridge sends a batch
before it commits it, in the same loop turn, so the disk is off the latency path while
nothing can be acknowledged before it is written. The newest unsent events stay in memory
(up to ``memory_rows``), so while the broker keeps up they are sent without being read back;
the disk is read after a restart, a reconnect or a long outage. WAL checkpoints (the
fsyncs) run in a thread of their own, off the event loop. Bounded by messages and bytes: when
full the oldest are dropped and counted. Per-device event ``seq`` numbers live here too,
so they survive restarts along with the events.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: unsent events also held in memory (the oldest leave it first; they stay on disk)
MEMORY_ROWS = 20_000
#: how often the checkpoint thread folds the WAL into the database
CHECKPOINT_INTERVAL_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    replayed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS seqs (device TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class _Checkpointer(threading.Thread):
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection every interval."""

    def __init__(self, path: Path, interval: float) -> None:
        super().__init__(name=f"spool-checkpoint-{path.name}", daemon=True)
        self.path = path
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self.stopping.wait(self.interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("event queue checkpoint failed: %s", exc)
        finally:
            db.close()


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """One queued event."""

    id: int
    topic: str
    body: bytes
    replayed: bool


class Spool:
    """A bounded, ordered, durable queue of (topic, body) messages."""

    def __init__(self, path: Path, *, max_messages: int = 100_000,
                 max_bytes: int = 64 * 1024 * 1024, memory_rows: int = MEMORY_ROWS,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.memory_rows = memory_rows
        self._db = db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of the process (not of the OS) without an
        # fsync per batch; checkpoints (which do fsync) run in their own thread.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.executescript(_SCHEMA)
        # Whatever is left from a previous run waited through a stop: it is replayed.
        db.execute("UPDATE queue SET replayed = 1 WHERE replayed = 0")
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM queue").fetchone()
        self.count = count
        self.bytes = size
        self.dropped = self._total("dropped")
        #: events written to the disk by this process (acked before a delayed commit: never)
        self.written = 0
        self._dropped_upto = 0
        self._seqs: dict[str, int] = dict(db.execute("SELECT device, seq FROM seqs"))
        last_id = self._last_id()
        self._next_id = last_id + 1
        # Every row with an id above ``_memory_after`` is also in ``_unsent`` (in id order).
        self._unsent: deque[SpooledEvent] = deque()
        self._memory_after = last_id
        # Staged for the next commit.
        self._inserts: dict[int, tuple[int, str, bytes, int]] = {}
        self._deletes: list[tuple[int, int]] = []
        self._seq_updates: dict[str, int] = {}
        self._checkpointer = _Checkpointer(path, checkpoint_interval)
        self._checkpointer.start()

    def _last_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        """Commit what is staged and close the database."""
        with contextlib.suppress(sqlite3.Error):
            self.commit()
        self._checkpointer.stopping.set()
        self._checkpointer.join(5)
        self._db.close()

    def _total(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def next_seq(self, device_id: str) -> int:
        """The next event seq of a device (made durable with the event)."""
        seq = self._seqs.get(device_id, 0) + 1
        self._seqs[device_id] = seq
        return seq

    def last_seq(self, device_id: str) -> int:
        """The last event seq handed out for a device (0 if none)."""
        return self._seqs.get(device_id, 0)

    @property
    def last_id(self) -> int:
        """The id of the newest event ever added (0 if none): every event queued so far has
        an id up to it."""
        return self._next_id - 1

    @property
    def staged(self) -> bool:
        """True while something waits for ``commit``."""
        return bool(self._inserts or self._deletes or self._seq_updates)

    def append(self, messages: Iterable[tuple[str, bytes, str, int]], *, replayed: bool,
               commit: bool = True) -> int:
        """Add ``(topic, body, device_id, seq)`` messages; returns the count.

        With ``commit=False`` they are only staged: ``peek`` hands them out at once, and the
        caller must ``commit`` before the loop turn ends (before anything can be acked).
        """
        rows = list(messages)
        if not rows:
            return 0
        first = self._next_id
        self._next_id = first + len(rows)
        flag = int(replayed)
        unsent = self._unsent
        inserts = self._inserts
        seqs = self._seq_updates
        size = 0
        for i, (topic, body, device_id, seq) in enumerate(rows, first):
            unsent.append(SpooledEvent(i, topic, body, replayed))
            inserts[i] = (i, topic, body, flag)
            seqs[device_id] = seq
            size += len(body)
        while len(unsent) > self.memory_rows:
            self._memory_after = unsent.popleft().id
        self.count += len(rows)
        self.bytes += size
        if commit:
            self.commit()
        return len(rows)

    def commit(self) -> None:
        """Write what is staged (adds, deletes, seqs; then the bounds) in one transaction."""
        if not self._inserts and not self._deletes and not self._seq_updates:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if self._inserts:
                db.executemany("INSERT INTO queue (id, topic, body, replayed) "
                               "VALUES (?, ?, ?, ?)", list(self._inserts.values()))
                self.written += len(self._inserts)
            if self._seq_updates:
                db.executemany("INSERT INTO seqs (device, seq) VALUES (?, ?) "
                               "ON CONFLICT(device) DO UPDATE SET seq = excluded.seq",
                               list(self._seq_updates.items()))
            if self._deletes:
                db.executemany("DELETE FROM queue WHERE id BETWEEN ? AND ?", self._deletes)
            self._trim()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._inserts.clear()
        self._deletes.clear()
        self._seq_updates.clear()

    def _trim(self) -> None:
        excess_messages = self.count - self.max_messages
        excess_bytes = self.bytes - self.max_bytes
        if excess_messages <= 0 and excess_bytes <= 0:
            return
        dropped = freed = 0
        last_id = None
        for row_id, size in self._db.execute("SELECT id, LENGTH(body) FROM queue ORDER BY id"):
            if dropped >= excess_messages and freed >= excess_bytes:
                break
            dropped += 1
            freed += size
            last_id = row_id
        if last_id is None:
            return
        self._db.execute("DELETE FROM queue WHERE id <= ?", (last_id,))
        unsent = self._unsent
        while unsent and unsent[0].id <= last_id:
            unsent.popleft()
        self._dropped_upto = max(self._dropped_upto, last_id)
        self.count -= dropped
        self.bytes -= freed
        self.dropped += dropped
        self._db.execute("INSERT INTO totals (name, value) VALUES ('dropped', ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                         (self.dropped,))
        log.warning("event queue full: dropped the %d oldest events (%d dropped in all)",
                    dropped, self.dropped)

    def peek(self, after_id: int, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` messages with ids above ``after_id``, oldest first.

        Sending is expected to ask for what follows what it last got: those come from
        memory (and leave it); anything else is read from the disk.
        """
        if after_id >= self._memory_after:
            unsent = self._unsent
            while unsent and unsent[0].id <= after_id:
                unsent.popleft()
            rows = [unsent.popleft() for _ in range(min(limit, len(unsent)))]
            if rows:
                self._memory_after = rows[-1].id
            return rows
        self.commit()
        cursor = self._db.execute(
            "SELECT id, topic, body, replayed FROM queue WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit))
        return [SpooledEvent(row[0], row[1], bytes(row[2]), bool(row[3])) for row in cursor]

    def remove(self, events: Iterable[SpooledEvent]) -> None:
        """Delete acknowledged messages at the next ``commit`` (those already dropped as
        oldest are skipped; those not written yet never will be). A crash before that
        sends them again: at least once."""
        done = [e for e in events if e.id > self._dropped_upto]
        if not done:
            return
        self.count -= len(done)
        self.bytes -= sum(len(e.body) for e in done)
        inserts = self._inserts
        if inserts:
            done = [e for e in done if inserts.pop(e.id, None) is None]
            if not done:
                return
        # Acks come mostly in order: runs of consecutive ids, one statement per run.
        ids = sorted(e.id for e in done)
        start = ids[0]
        for previous, current in itertools.pairwise(ids):
            if current != previous + 1:
                self._deletes.append((start, previous))
                start = current
        self._deletes.append((start, ids[-1]))
