"""The uid -> node_id table: a device gets the same node_id every time, across restarts.

Node ids are HELLO_ACK's u16, handed out from 1 to 65535 (0 is never used). The table is
bounded by that range: when every id is taken, a new uid gets the id of the uid seen least
recently, unless that device is online now. Changes are written coalesced: at most one
rewrite of the file per ``flush_delay_s`` (and one when the gateway stops), atomically
(temporary file, fsync, rename), never one per HELLO.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from gateway.errors import NodeIdsExhausted
from gateway.logs import Recurring
from gateway.statefiles import aside_path, write_atomically

log = logging.getLogger(__name__)

MAX_NODE_ID = 0xFFFF
#: a new mapping reaches the disk at most this long after it was made
FLUSH_DELAY_S = 1.0
FILE_VERSION = 2
#: how many examples a warning about a damaged file names
_EXAMPLES = 5

#: (uid, node_id, last_seen) as the file holds them, oldest first
_Entry = tuple[str, int, float]


class NodeIdStore:
    """``node_ids.json`` under the state directory, held in memory in least-recently-seen
    order.

    ``in_use`` answers the uids of the devices online now (asked only when the table is
    full, to pick an id to reuse). ``run()`` writes changes within ``flush_delay_s``;
    ``close()`` writes what is left.

    The file (version 2) maps each uid to ``[node_id, last_seen]`` (Unix seconds), oldest
    first. A version 1 file (``{uid: node_id}``) is read as if every uid was seen at once,
    the lowest node id longest ago.
    """

    def __init__(
        self,
        path: Path,
        *,
        in_use: Callable[[], Collection[str]] = frozenset,
        capacity: int = MAX_NODE_ID,
        flush_delay_s: float = FLUSH_DELAY_S,
    ) -> None:
        if not 1 <= capacity <= MAX_NODE_ID:
            raise ValueError(f"capacity {capacity} is not within 1..{MAX_NODE_ID}")
        self.path = path
        self.capacity = capacity
        self.flush_delay_s = flush_delay_s
        self._in_use = in_use
        #: uid -> (node_id, last_seen), least recently seen first
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()
        #: ids below ``_next`` that nobody holds (a min-heap: the lowest is handed out first)
        self._free: list[int] = []
        self._next = 1
        #: bumped by every change (new mapping or a uid seen again); ``_written`` is the
        #: version on disk
        self._version = 0
        self._written = 0
        #: set when a mapping changes: the flusher writes within ``flush_delay_s``
        self._wake = asyncio.Event()
        #: one writer at a time (the flusher's thread and ``close``)
        self._write_lock = threading.Lock()
        #: how many times the file was written
        self.writes = 0
        self._reused = Recurring(log, "node id table full: reusing the ids of the uids seen "
                                 "least recently", level=logging.INFO)
        self._write_failed = Recurring(log, f"node id map {path} could not be written "
                                       "(kept in memory, retried)", level=logging.ERROR)
        self._load()

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uid: object) -> bool:
        return uid in self._entries

    def lookup(self, uid: str) -> int | None:
        """The node_id ``uid`` holds now (None if none), without counting it as seen."""
        entry = self._entries.get(uid)
        return entry[0] if entry is not None else None

    def items(self) -> Iterator[tuple[str, int]]:
        """(uid, node_id), least recently seen first."""
        return ((uid, entry[0]) for uid, entry in self._entries.items())

    def get(self, uid: str) -> int:
        """The node_id of ``uid`` (it was seen now), allocating one if it is new: the lowest
        free id, or when none is free, the id of the uid seen least recently that is not
        online now. ``NodeIdsExhausted`` when every id belongs to a device online now."""
        now = time.time()
        entry = self._entries.get(uid)
        self._version += 1
        if entry is not None:
            self._entries.move_to_end(uid)
            self._entries[uid] = (entry[0], now)
            return entry[0]
        node_id = self._allocate(uid)
        self._entries[uid] = (node_id, now)
        self._wake.set()
        return node_id

    def _allocate(self, uid: str) -> int:
        if self._free:
            return heapq.heappop(self._free)
        if self._next <= self.capacity:
            self._next += 1
            return self._next - 1
        online = self._in_use()
        for oldest in self._entries:
            if oldest not in online:
                break
        else:
            raise NodeIdsExhausted(uid, self.capacity)
        node_id, seen = self._entries.pop(oldest)
        self._reused.occurred(f"node id {node_id} of {oldest} (seen "
                              f"{_age(seen)}) now belongs to {uid}")
        return node_id

    # ------------------------------------------------------------------ writing

    @property
    def dirty(self) -> bool:
        """Changes not yet on disk."""
        return self._version != self._written

    async def run(self) -> None:
        """Write new mappings within ``flush_delay_s`` of the first, until cancelled.

        A failed write (a full disk) is logged once, kept in memory and tried again every
        ``flush_delay_s``; it never stops the gateway."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_delay_s)
            self._wake.clear()
            version, items = self._version, list(self._entries.items())
            try:
                await asyncio.to_thread(self._write, items)
            except OSError as exc:
                self._write_failed.occurred(str(exc))
                self._wake.set()
                continue
            self._written = max(self._written, version)
            self._write_failed.ended("written")

    def close(self) -> None:
        """Write what is not on disk yet (the gateway is stopping); a failure is logged."""
        if not self.dirty:
            return
        version = self._version
        try:
            self._write(list(self._entries.items()))
        except OSError as exc:
            log.error("node id map %s could not be written on stop: %s; mappings made since "
                      "the last write are lost (those devices get new ids at their next "
                      "HELLO)", self.path, exc)
            return
        self._written = version

    def _write(self, items: list[tuple[str, tuple[int, float]]]) -> None:
        """Write ``items`` atomically: a temporary file, fsync, rename, fsync of the dir."""
        # One entry per line, so the file can be read and grepped.
        body = ",\n".join(f"{json.dumps(uid)}: [{node_id}, {seen:.0f}]"
                          for uid, (node_id, seen) in items)
        text = f'{{"version": {FILE_VERSION}, "nodes": {{\n{body}\n}}}}\n'
        with self._write_lock:
            write_atomically(self.path, text)
            self.writes += 1

    # ------------------------------------------------------------------ reading

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries, invalid = _parse(data, self.capacity)
        except FileNotFoundError:
            return
        except (ValueError, UnicodeDecodeError) as exc:
            # Keep the broken file for inspection.
            backup = aside_path(self.path)
            self.path.replace(backup)
            log.error("node id map %s is corrupt (%s); moved to %s, starting anew",
                      self.path, exc, backup)
            return
        if invalid:
            log.warning("node id map %s: dropped %d invalid entries (a node id must be an "
                        "integer in 1..%d), e.g. %s; those uids get a new id at their next "
                        "HELLO", self.path, len(invalid), self.capacity,
                        ", ".join(invalid[:_EXAMPLES]))
        # The most recently seen holder of a node id keeps it.
        entries.sort(key=lambda e: (e[2], e[1]))
        holders: dict[int, str] = {}
        shared: set[int] = set()
        dropped: list[str] = []
        for uid, node_id, _seen in reversed(entries):
            if node_id in holders:
                shared.add(node_id)
                dropped.append(f"{uid} (node id {node_id}, kept by {holders[node_id]})")
            else:
                holders[node_id] = uid
        if dropped:
            log.warning("node id map %s gave %d node ids to more than one uid; each stays "
                        "with the uid seen last and the other %d uids get a new id at their "
                        "next HELLO: %s%s", self.path, len(shared), len(dropped),
                        ", ".join(dropped[:_EXAMPLES]),
                        ", ..." if len(dropped) > _EXAMPLES else "")
        for uid, node_id, seen in entries:
            if holders.get(node_id) == uid:
                self._entries[uid] = (node_id, seen)
        self._next = max(holders, default=0) + 1
        self._free = [n for n in range(1, self._next) if n not in holders]  # sorted: a heap
        if invalid or dropped or data.get("version") != FILE_VERSION:
            self._version += 1  # repaired (or upgraded): rewritten by the next flush
            self._wake.set()


def _parse(data: Any, capacity: int) -> tuple[list[_Entry], list[str]]:
    """The entries of a version 1 or 2 file, and the uids of the invalid ones;
    ``ValueError`` if it is neither."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if "version" in data:
        if data["version"] != FILE_VERSION or not isinstance(data.get("nodes"), dict):
            raise ValueError(f"unknown format version {data['version']!r}")
        pairs = [(uid, value[0] if isinstance(value, list) and len(value) == 2 else None,
                  value[1] if isinstance(value, list) and len(value) == 2 else 0)
                 for uid, value in data["nodes"].items()]
    else:
        pairs = [(uid, value, 0) for uid, value in data.items()]
    entries: list[_Entry] = []
    invalid: list[str] = []
    for uid, node_id, seen in pairs:
        if type(node_id) is int and 1 <= node_id <= capacity and \
                isinstance(seen, int | float) and not isinstance(seen, bool):  # fmt: skip
            entries.append((uid, node_id, float(seen)))
        else:
            invalid.append(uid)
    return entries, invalid


def _age(seen: float) -> str:
    if not seen:
        return "before the table kept times"
    return f"{max(0.0, time.time() - seen) / 86400:.1f} days ago"
