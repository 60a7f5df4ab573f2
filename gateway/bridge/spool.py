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
so they survive restarts along with the events, and ``SeqMarks`` keeps them from going
backwards when this file does not survive.

Storage faults: a ``commit`` that the disk refuses (full, I/O error) raises
``SpoolWriteFailed`` and keeps everything staged: the queue goes on in memory (``error``
says why), holding at most ``memory_rows`` unwritten events (the oldest are dropped,
counted), until a later ``commit`` succeeds. A file that is not a readable queue (corrupt,
truncated, random bytes, a directory) is moved aside as ``spool.db.corrupt-<time>``, what
SQLite can still read of it is salvaged into a new queue, and the loss is logged.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
import stat
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.bridge.seqmarks import RESERVE, SeqMarks
from gateway.errors import SpoolUnavailable, SpoolWriteFailed
from gateway.logs import Recurring
from gateway.settings import QueueSettings
from gateway.statefiles import aside_path

log = logging.getLogger(__name__)

#: unsent events also held in memory (the oldest leave it first; they stay on disk); while
#: the disk refuses writes, also the most events held that are nowhere else
MEMORY_ROWS = 20_000
#: the declared bounds of ``[queue]`` (``gateway.settings``): a spool built without a config
_QUEUE = QueueSettings()
#: how often the checkpoint thread folds the WAL into the database
CHECKPOINT_INTERVAL_S = 1.0
#: SQLite's page size for a new queue file (bytes)
PAGE_SIZE = 1024
#: a full queue is "full" until it is back under this share of its bounds (log hysteresis)
_FULL_UNTIL = 0.9
#: SQLite's primary result codes for a file that is not (or no longer) a database
_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
#: damaged rows or pages a salvage looks past before it gives up (each costs a few lookups)
_SALVAGE_HOLES = 20_000

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
        # Only this thread uses it: a full disk fails every checkpoint, once a second.
        self._failing = Recurring(log, "event queue checkpoint failed")

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self.stopping.wait(self.interval):
                try:
                    busy, _, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    self._failing.occurred(str(exc))
                else:
                    if not busy:
                        self._failing.ended()
        finally:
            db.close()


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """One queued event."""

    id: int
    topic: str
    body: bytes
    replayed: bool


class _NotAQueue(Exception):
    """The file cannot be read as a queue (corrupt); carries what SQLite said."""


@dataclass
class _Salvage:
    """What could be read from a queue file that would not open."""

    rows: deque[tuple[str, bytes]] = field(default_factory=deque)
    seqs: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    #: the highest event id the file had handed out, if its sqlite_sequence was readable
    last_id: int | None = None
    #: rows found but unreadable or beyond the queue's bounds
    skipped: int = 0
    damaged: bool = False


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


class Spool:
    """A bounded, ordered, durable queue of (topic, body) messages."""

    def __init__(self, path: Path, *, max_messages: int = _QUEUE.max_messages,
                 max_bytes: int = _QUEUE.max_bytes, memory_rows: int = MEMORY_ROWS,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL_S,
                 marks_path: Path | None = None) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolUnavailable(str(path), str(exc)) from exc
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.memory_rows = memory_rows
        #: seq high-water marks beside the queue (``spool-seqs.json``)
        self.marks = SeqMarks(marks_path or path.with_name(f"{path.stem}-seqs.json"))
        #: why the last write failed (the disk is full...), None while writes succeed
        self.error: str | None = None
        #: where a file that was not a readable queue was moved, and how many events of it
        #: were salvaged into this one (None, 0 when the file opened)
        self.moved_to: Path | None = None
        self.salvaged = 0
        self._full = Recurring(log, "event queue full: dropping the oldest events")
        self._memory_full = Recurring(
            log, f"event queue not writable and {memory_rows} events held in memory: "
            "dropping the oldest", level=logging.ERROR)
        lost = self._check_file()
        salvage = None
        try:
            self._db = self._open_db()
        except _NotAQueue as exc:
            salvage = self._move_aside_and_salvage(str(exc))
            lost = True
            self._db = self._open_db()
        db = self._db
        last_id = self._last_id()
        #: rows with ids up to this were queued by an earlier run: they are sent as replayed
        self._previous_upto = last_id
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM queue").fetchone()
        self.count = count
        self.bytes = size
        self.dropped = self._total("dropped")
        self._dropped_saved = self.dropped
        #: events written to the disk by this process (acked before a delayed commit: never)
        self.written = 0
        self._dropped_upto = 0
        self._seqs: dict[str, int] = dict(db.execute("SELECT device, seq FROM seqs"))
        self._next_id = last_id + 1
        # Every row with an id above ``_memory_after`` is also in ``_unsent`` (in id order).
        self._unsent: deque[SpooledEvent] = deque()
        self._memory_after = last_id
        # Staged for the next commit.
        self._inserts: dict[int, tuple[int, str, bytes, int]] = {}
        self._deletes: list[tuple[int, int]] = []
        self._seq_updates: dict[str, int] = {}
        if salvage is not None:
            self._take_salvage(salvage)
        if lost or not self.marks.exact:
            if not lost:
                log.warning("the event queue %s was not written up to the last stop (its "
                            "writes were failing): each device's seq continues above its "
                            "mark in %s, skipping up to %d", path, self.marks.path,
                            RESERVE)
            self._seqs = self.marks.above(self._seqs)
            self._seq_updates.update(self._seqs)
            self._commit_at_start()
        self._marks = self.marks.marks  # the hot path's dict (``next_seq``)
        self.marks.raise_to(self._seqs)
        if self.error is None:
            self.marks.set_exact(True)
        self._checkpointer = _Checkpointer(path, checkpoint_interval)
        self._checkpointer.start()

    # ------------------------------------------------------------------ opening

    def _check_file(self) -> bool:
        """What stands at ``path`` before SQLite opens it; True if a queue was lost."""
        path = self.path
        try:
            info = path.stat()
        except FileNotFoundError:
            if self.marks.found:
                log.error("the event queue %s is missing, but %s shows this state directory "
                          "had one: whatever it held is lost; a new queue starts and each "
                          "device's seq continues above its mark", path, self.marks.path)
                return True
            return False
        except OSError as exc:
            raise SpoolUnavailable(str(path), str(exc)) from exc
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            self.moved_to = aside = aside_path(path)
            try:
                path.replace(aside)
            except OSError as exc:
                raise SpoolUnavailable(str(path), f"it is {kind} and cannot be moved aside: "
                                       f"{exc}") from exc
            log.error("the event queue %s is %s: moved to %s; a new queue starts (nothing "
                      "could be salvaged)", path, kind, aside)
            return True
        if info.st_size == 0 and self.marks.found:
            log.error("the event queue %s is empty (0 bytes), but %s shows this state "
                      "directory had a queue: it was truncated or replaced and whatever it "
                      "held is lost; each device's seq continues above its mark",
                      path, self.marks.path)
            return True
        return False

    def _open_db(self) -> sqlite3.Connection:
        """A connection to a readable queue at ``path``; ``_NotAQueue`` if it is corrupt,
        ``SpoolUnavailable`` if it cannot be opened for another reason."""
        db = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            # A commit writes every page it touched to the WAL (the queue's last leaf, the
            # sequence and seq rows): 1 KiB pages write a third of 4 KiB ones per commit.
            # It takes effect only in a new file (an older queue keeps its pages).
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a crash of the process (not of the OS) without
            # an fsync per batch; checkpoints (which do fsync) run in their own thread.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
            # quick_check reads every page (not the indexes' contents): a garbled page is
            # found now, not in the middle of a commit.
            problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise _NotAQueue("; ".join(problems).replace("\n", " "))
            db.executescript(_SCHEMA)
            db.execute("SELECT id, topic, body, replayed FROM queue LIMIT 0").fetchall()
        except _NotAQueue:
            db.close()
            raise
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            if _sqlite_code(exc) in _CORRUPT_CODES:
                raise _NotAQueue(str(exc)) from exc
            if isinstance(exc, sqlite3.DatabaseError) and "no such column" in str(exc):
                raise _NotAQueue(f"not an event queue: {exc}") from exc
            raise SpoolUnavailable(str(self.path), str(exc)) from exc
        return db

    def _move_aside_and_salvage(self, reason: str) -> _Salvage:
        path = self.path
        size = path.stat().st_size
        self.moved_to = aside = aside_path(path)
        # The WAL and its index belong to that file: a new queue must not pick them up.
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                try:
                    source.replace(aside.with_name(aside.name + suffix))
                except OSError as exc:
                    raise SpoolUnavailable(str(path), f"it is corrupt ({reason}) and cannot be "
                                           f"moved aside: {exc}") from exc
        salvage = _salvage(aside, self.max_messages, self.max_bytes)
        known = (f"; it had queued events up to id {salvage.last_id}"
                 if salvage.last_id is not None else "")
        beyond = f", {salvage.skipped} more found but unreadable or over the bounds" \
            if salvage.skipped else ""  # fmt: skip
        log.error("the event queue %s is corrupt (%s; %d bytes): moved to %s; salvaged %d "
                  "unsent events%s and the seqs of %d devices%s; whatever else it held is "
                  "lost, and each device's seq continues above its mark", path, reason, size,
                  aside, len(salvage.rows), beyond, len(salvage.seqs), known)
        return salvage

    def _take_salvage(self, salvage: _Salvage) -> None:
        """Queue the salvaged events (as replayed) in the new file, with the seqs and totals."""
        rows = salvage.rows
        first = self._next_id
        self._next_id = first + len(rows)
        for i, (topic, body) in enumerate(rows, first):
            self._inserts[i] = (i, topic, body, 1)
            self.bytes += len(body)
        self.count += len(rows)
        self._previous_upto = self._memory_after = self._next_id - 1
        self.salvaged = len(rows)
        for device_id, seq in salvage.seqs.items():
            self._seqs[device_id] = max(seq, self._seqs.get(device_id, 0))
        self.dropped += salvage.dropped
        self._commit_at_start()

    def _commit_at_start(self) -> None:
        # A disk that is full already: the queue starts in memory, its writes retried later.
        with contextlib.suppress(SpoolWriteFailed):
            self.commit()

    def _last_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        """Commit what is staged and close the database. Events that cannot be written now
        (the disk is still full) are lost: logged, with their count."""
        try:
            self.commit()
        except SpoolWriteFailed as exc:
            if self._inserts:
                log.error("stopping with %d events that could not be written to %s (%s): "
                          "they are lost; seqs continue above the marks in %s at the next "
                          "start", len(self._inserts), self.path, exc.reason, self.marks.path)
        self._checkpointer.stopping.set()
        self._checkpointer.join(5)
        self._db.close()

    def _total(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    # ------------------------------------------------------------------ the queue

    def next_seq(self, device_id: str) -> int:
        """The next event seq of a device (made durable with the event)."""
        seq = self._seqs.get(device_id, 0) + 1
        self._seqs[device_id] = seq
        if seq > self._marks.get(device_id, 0):
            self.marks.reserve(device_id, seq)
        return seq

    def last_seq(self, device_id: str) -> int:
        """The last event seq handed out for a device (0 if none)."""
        return self._seqs.get(device_id, 0)

    @property
    def dropped_upto(self) -> int:
        """Every event with an id up to this has left the queue by being dropped (full)."""
        return self._dropped_upto

    @property
    def last_id(self) -> int:
        """The id of the newest event ever added (0 if none): every event queued so far has
        an id up to it."""
        return self._next_id - 1

    @property
    def staged(self) -> bool:
        """True while something waits for ``commit``."""
        return bool(self._inserts or self._deletes or self._seq_updates)

    @property
    def first_unwritten(self) -> int | None:
        """The id of the oldest event staged and not on the disk (None if none)."""
        return next(iter(self._inserts), None)

    @property
    def unwritten(self) -> int:
        """Events staged and not on the disk (while writes fail, they are only in memory)."""
        return len(self._inserts)

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
        self.count += len(rows)
        self.bytes += size
        if len(unsent) > self.memory_rows:
            self._leave_memory()
        if commit:
            self.commit()
        return len(rows)

    def _leave_memory(self) -> None:
        """The oldest unsent events leave memory (they are on the disk); while writes fail,
        those that are nowhere else are dropped, counted: memory stays bounded."""
        unsent, inserts = self._unsent, self._inserts
        failing = self.error is not None
        dropped = freed = 0
        while len(unsent) > self.memory_rows:
            event = unsent.popleft()
            self._memory_after = event.id
            if failing and inserts.pop(event.id, None) is not None:
                dropped += 1
                freed += len(event.body)
        if dropped:
            self.count -= dropped
            self.bytes -= freed
            self.dropped += dropped
            self._memory_full.occurred(f"dropped {dropped} ({self.dropped} dropped in all)",
                                       count=dropped)

    def commit(self) -> None:
        """Write what is staged (adds, deletes, seqs; then the bounds) in one transaction.

        If the disk refuses it, ``SpoolWriteFailed``: nothing of it is written and all of it
        stays staged for the next call (the acks and seqs alone are tried too: they are small
        and often fit where the events do not)."""
        if not self._inserts and not self._deletes and not self._seq_updates:
            return
        try:
            trimmed = self._write(with_inserts=True)
        except sqlite3.Error as exc:
            self._failed(exc)
            if self._inserts and (self._deletes or self._seq_updates):
                with contextlib.suppress(sqlite3.Error):
                    self._write(with_inserts=False)
                    self._deletes.clear()
                    self._seq_updates.clear()
            raise SpoolWriteFailed(str(self.path), str(exc)) from exc
        self.written += len(self._inserts)
        self._inserts.clear()
        self._deletes.clear()
        self._seq_updates.clear()
        self._dropped_saved = self.dropped
        if trimmed is not None:
            self._trimmed(*trimmed)
        if self._full.active and self.count < self.max_messages * _FULL_UNTIL \
                and self.bytes < self.max_bytes * _FULL_UNTIL:  # fmt: skip
            self._full.ended(f"{self.dropped} dropped in all")
        if self.error is not None:
            self.error = None
            self._memory_full.ended(f"{self.dropped} dropped in all")
            self.marks.set_exact(True)

    def _failed(self, exc: sqlite3.Error) -> None:
        # SQLite may have rolled the transaction back itself (a full disk does): a second
        # ROLLBACK would raise "cannot rollback - no transaction is active".
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        if self.error is None:
            # From now on the seqs handed out may be nowhere on disk: the marks take over.
            self.marks.set_exact(False)
        self.error = str(exc)

    def _write(self, *, with_inserts: bool) -> tuple[int, int, int] | None:
        """One transaction; returns the trim to apply to memory once it is committed."""
        db = self._db
        db.execute("BEGIN")
        try:
            if with_inserts and self._inserts:
                db.executemany("INSERT INTO queue (id, topic, body, replayed) "
                               "VALUES (?, ?, ?, ?)", list(self._inserts.values()))
            if self._seq_updates:
                db.executemany("INSERT INTO seqs (device, seq) VALUES (?, ?) "
                               "ON CONFLICT(device) DO UPDATE SET seq = excluded.seq",
                               list(self._seq_updates.items()))
            if self._deletes:
                db.executemany("DELETE FROM queue WHERE id BETWEEN ? AND ?", self._deletes)
            trimmed = self._trim() if with_inserts else None
            dropped = self.dropped + (trimmed[0] if trimmed else 0)
            if dropped != self._dropped_saved:
                db.execute("INSERT INTO totals (name, value) VALUES ('dropped', ?) "
                           "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (dropped,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        return trimmed

    def _trim(self) -> tuple[int, int, int] | None:
        """Delete the oldest rows over the bounds (in the open transaction); returns
        (dropped, freed bytes, last id dropped) for ``_trimmed``."""
        excess_messages = self.count - self.max_messages
        excess_bytes = self.bytes - self.max_bytes
        if excess_messages <= 0 and excess_bytes <= 0:
            return None
        dropped = freed = 0
        last_id = None
        for row_id, size in self._db.execute("SELECT id, LENGTH(body) FROM queue ORDER BY id"):
            if dropped >= excess_messages and freed >= excess_bytes:
                break
            dropped += 1
            freed += size
            last_id = row_id
        if last_id is None:
            return None
        self._db.execute("DELETE FROM queue WHERE id <= ?", (last_id,))
        return dropped, freed, last_id

    def _trimmed(self, dropped: int, freed: int, last_id: int) -> None:
        unsent = self._unsent
        while unsent and unsent[0].id <= last_id:
            unsent.popleft()
        self._dropped_upto = max(self._dropped_upto, last_id)
        self.count -= dropped
        self.bytes -= freed
        self.dropped += dropped
        self._dropped_saved = self.dropped
        self._full.occurred(f"dropped the {dropped} oldest ({self.dropped} dropped in all)",
                            count=dropped)

    def peek(self, after_id: int, limit: int) -> list[SpooledEvent]:
        """Up to ``limit`` messages with ids above ``after_id``, oldest first.

        Sending is expected to ask for what follows what it last got: those come from
        memory (and leave it); anything else is read from the disk.
        """
        if after_id >= self._memory_after:
            unsent = self._unsent
            while unsent and unsent[0].id <= after_id:
                unsent.popleft()
            # Those popped left memory too: after a reconnect they are read from the disk
            # (else a send from the disk that had stopped short of them skipped them).
            self._memory_after = after_id
            rows = [unsent.popleft() for _ in range(min(limit, len(unsent)))]
            if rows:
                self._memory_after = rows[-1].id
            return rows
        if self.error is None:
            # What is staged goes to the disk first, to be read back in order; if the disk
            # refuses, the staged events are merged in below.
            with contextlib.suppress(SpoolWriteFailed):
                self.commit()
        previous = self._previous_upto
        cursor = self._db.execute(
            "SELECT id, topic, body, replayed FROM queue WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit))
        rows = [SpooledEvent(row[0], row[1], bytes(row[2]), bool(row[3]) or row[0] <= previous)
                for row in cursor]
        if self._inserts:
            # Not on the disk (its writes fail) and no longer in memory's ``_unsent``: only
            # possible for events staged before the first failed write.
            upto = self._memory_after
            staged = [SpooledEvent(i, t, b, bool(f) or i <= previous)
                      for i, t, b, f in self._inserts.values() if after_id < i <= upto]
            if staged:
                rows = sorted([*rows, *staged], key=lambda e: e.id)[:limit]
        return rows

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


def _salvage(path: Path, max_messages: int, max_bytes: int) -> _Salvage:
    """Read what SQLite can of a damaged queue file: unsent events (the newest within the
    bounds, in order), seqs, the dropped total. Damaged pages are skipped by seeking past
    them; a file that is not a database at all yields nothing."""
    found = _Salvage()
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        # Else SQLite refuses a file shorter than its header says (a truncated queue)
        # before reading a single row.
        db.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error:
        return found
    try:
        with contextlib.suppress(sqlite3.Error):
            found.seqs = {str(d): int(s) for d, s in db.execute("SELECT device, seq FROM seqs")
                          if isinstance(s, int)}
        with contextlib.suppress(sqlite3.Error, TypeError):
            row = db.execute("SELECT value FROM totals WHERE name = 'dropped'").fetchone()
            found.dropped = int(row[0]) if row else 0
        with contextlib.suppress(sqlite3.Error, TypeError):
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
            found.last_id = int(row[0]) if row else None
        _salvage_rows(db, found, max_messages, max_bytes)
    finally:
        db.close()
    return found


def _readable(topic: object, body: object) -> bytes | None:
    """A salvaged row's body if it is intact: the queue holds JSON objects on topics; a
    damaged page can still yield a row, with zeros or garbage where its bytes were."""
    if not isinstance(topic, str) or not topic or "\0" in topic:
        return None
    if not isinstance(body, bytes | str):
        return None
    data = body.encode() if isinstance(body, str) else bytes(body)
    try:
        return data if isinstance(json.loads(data), dict) else None
    except ValueError:  # also not UTF-8
        return None


def _salvage_rows(db: sqlite3.Connection, found: _Salvage, max_messages: int,
                  max_bytes: int) -> None:
    rows = found.rows
    size = 0
    after = 0
    last_failure = -1
    for _ in range(_SALVAGE_HOLES):
        try:
            for row_id, topic, body in db.execute(
                    "SELECT id, topic, body FROM queue WHERE id > ? ORDER BY id", (after,)):
                after = row_id
                data = _readable(topic, body)
                if data is None:
                    found.skipped += 1
                    continue
                rows.append((topic, data))
                size += len(data)
                # The bounds drop the oldest, as the queue itself would have.
                while len(rows) > max_messages or size > max_bytes:
                    size -= len(rows.popleft()[1])
                    found.skipped += 1
            return
        except sqlite3.DatabaseError:
            found.damaged = True
        # A damaged page: look further and further ahead for the next readable row. If the
        # scan failed at once where the last look led it, that row itself is unreadable:
        # look past it.
        base = after + 1 if after == last_failure else after
        last_failure = after
        step = 1
        while base + step < 2**62:
            try:
                row = db.execute("SELECT id FROM queue WHERE id >= ? ORDER BY id LIMIT 1",
                                 (base + step,)).fetchone()
            except sqlite3.DatabaseError:
                step *= 2
                continue
            if row is None:
                return
            found.skipped += 1  # at least the row that could not be read
            after = row[0] - 1
            break
        else:
            return
