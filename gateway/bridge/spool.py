"""The on-disk event queue: SQLite in WAL mode under the state directory.

Events are appended in batches (one transaction per batch), read back in order, and
deleted only when the broker has acknowledged them. The newest unsent events are also
kept in memory (up to ``memory_rows``), so while the broker keeps up they are sent without
being read back from the disk; the disk is read after a restart, a reconnect or a long
outage. Bounded by messages and bytes: when
full the oldest are dropped and counted. Per-device event ``seq`` numbers live here too,
so they survive restarts along with the events.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: unsent events also held in memory (the oldest leave it first; they stay on disk)
MEMORY_ROWS = 20_000

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
                 max_bytes: int = 64 * 1024 * 1024, memory_rows: int = MEMORY_ROWS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.memory_rows = memory_rows
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of the process (not of the OS) without an
        # fsync per batch; that is what keeps the queue off the throughput's critical path.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Whatever is left from a previous run waited through a stop: it is replayed.
        self._db.execute("UPDATE queue SET replayed = 1 WHERE replayed = 0")
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM queue").fetchone()
        self.count = count
        self.bytes = size
        self.dropped = self._total("dropped")
        self._dropped_upto = 0
        self._seqs: dict[str, int] = dict(self._db.execute("SELECT device, seq FROM seqs"))
        # Every row with an id above ``_memory_after`` is also in ``_unsent`` (in id order).
        self._unsent: deque[SpooledEvent] = deque()
        self._memory_after = self._last_id()

    def _last_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _total(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def next_seq(self, device_id: str) -> int:
        """The next event seq of a device (made durable by the next ``append``)."""
        seq = self._seqs.get(device_id, 0) + 1
        self._seqs[device_id] = seq
        return seq

    def append(self, messages: Iterable[tuple[str, bytes, str, int]], *, replayed: bool) -> int:
        """Add ``(topic, body, device_id, seq)`` messages in one transaction; returns count."""
        rows = list(messages)
        if not rows:
            return 0
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO queue (topic, body, replayed) VALUES (?, ?, ?)",
                           [(topic, body, int(replayed)) for topic, body, _, _ in rows])
            # One writer, AUTOINCREMENT: a batch's ids are consecutive, ending at the last.
            first = db.execute("SELECT last_insert_rowid()").fetchone()[0] - len(rows) + 1
            unsent = self._unsent
            unsent.extend(SpooledEvent(first + i, topic, body, replayed)
                          for i, (topic, body, _, _) in enumerate(rows))
            while len(unsent) > self.memory_rows:
                self._memory_after = unsent.popleft().id
            last: dict[str, int] = {}
            for _, _, device_id, seq in rows:
                last[device_id] = seq
            db.executemany("INSERT INTO seqs (device, seq) VALUES (?, ?) ON CONFLICT(device) "
                           "DO UPDATE SET seq = excluded.seq", list(last.items()))
            self.count += len(rows)
            self.bytes += sum(len(body) for _, body, _, _ in rows)
            self._trim()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rows)

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
        cursor = self._db.execute(
            "SELECT id, topic, body, replayed FROM queue WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit))
        return [SpooledEvent(row[0], row[1], bytes(row[2]), bool(row[3])) for row in cursor]

    def remove(self, events: Iterable[SpooledEvent]) -> None:
        """Delete acknowledged messages (those already dropped as oldest are skipped)."""
        done = [e for e in events if e.id > self._dropped_upto]
        if not done:
            return
        # Acks come mostly in order: delete runs of consecutive ids, one statement per run.
        ids = sorted(e.id for e in done)
        runs, start = [], ids[0]
        for previous, current in itertools.pairwise(ids):
            if current != previous + 1:
                runs.append((start, previous))
                start = current
        runs.append((start, ids[-1]))
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM queue WHERE id BETWEEN ? AND ?", runs)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.count -= len(done)
        self.bytes -= sum(len(e.body) for e in done)
