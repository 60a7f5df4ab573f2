"""The uid -> node_id map: a device gets the same node_id every time, across restarts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MAX_NODE_ID = 0xFFFF


class NodeIdStore:
    """A JSON file under the state directory, rewritten atomically when an id is added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids: dict[str, int] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._ids = {str(uid): int(node) for uid, node in data.items()}
            except (ValueError, AttributeError, TypeError) as exc:
                # Keep the broken file for inspection; never reuse ids it may have handed out.
                backup = path.with_suffix(".corrupt")
                path.replace(backup)
                log.error("node id map %s is corrupt (%s); moved to %s, starting anew",
                          path, exc, backup)

    def get(self, uid: str) -> int:
        """The node_id of ``uid``, allocating (and persisting) the next free one if new."""
        node_id = self._ids.get(uid)
        if node_id is None:
            used = set(self._ids.values())
            node_id = next(n for n in range(1, MAX_NODE_ID + 1) if n not in used)
            self._ids[uid] = node_id
            self._save()
        return node_id

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(self._ids, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
