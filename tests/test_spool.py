"""The on-disk queue: order, acknowledgement, bounds, restarts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.bridge.spool import Spool, SpooledEvent


def fill(spool: Spool, device: str, count: int, size: int = 10, replayed: bool = False):
    rows = []
    for _ in range(count):
        seq = spool.next_seq(device)
        rows.append((f"t/{device}", f"{seq:0{size}d}".encode(), device, seq))
    spool.append(rows, replayed=replayed)


def test_in_order_and_removed_only_when_acknowledged(tmp_path):
    spool = Spool(tmp_path / "q.db")
    fill(spool, "a", 5)
    first = spool.peek(0, 3)
    assert [e.body for e in first] == [b"%010d" % i for i in (1, 2, 3)]
    assert [e.body for e in spool.peek(first[-1].id, 10)] == [b"%010d" % i for i in (4, 5)]
    spool.remove(first[:2])
    assert spool.count == 3
    assert next(e.body for e in spool.peek(0, 10)) == b"%010d" % 3
    assert spool.bytes == 30


def test_survives_a_restart_with_seqs_and_marks_leftovers_replayed(tmp_path):
    spool = Spool(tmp_path / "q.db")
    fill(spool, "a", 3)
    fill(spool, "b", 2)
    spool.close()
    again = Spool(tmp_path / "q.db")
    assert again.count == 5
    assert all(e.replayed for e in again.peek(0, 10))
    assert again.next_seq("a") == 4
    assert again.next_seq("b") == 3


def test_bounds_drop_the_oldest_and_count_them(tmp_path):
    spool = Spool(tmp_path / "q.db", max_messages=10)
    fill(spool, "a", 25)
    assert spool.count == 10
    assert spool.dropped == 15
    assert spool.peek(0, 1)[0].body == b"%010d" % 16
    by_bytes = Spool(tmp_path / "b.db", max_bytes=100)
    fill(by_bytes, "a", 25)
    assert by_bytes.bytes <= 100
    assert by_bytes.count == 10
    assert by_bytes.dropped == 15
    by_bytes.close()
    assert Spool(tmp_path / "b.db").dropped == 15


def test_acknowledging_an_event_dropped_meanwhile_does_not_miscount(tmp_path):
    spool = Spool(tmp_path / "q.db", max_messages=5)
    fill(spool, "a", 5)
    in_flight = spool.peek(0, 5)
    fill(spool, "a", 3)  # drops the 3 oldest, which are in flight
    spool.remove(in_flight)
    assert spool.count == 3
    assert spool.bytes == 30
    assert [e.body for e in spool.peek(0, 10)] == [b"%010d" % i for i in (6, 7, 8)]


class SpoolMachine(RuleBasedStateMachine):
    """The spool against a plain list: whatever the mix of appends (committed at once or
    staged), sends (from memory or disk), acks, commits, reconnects, drops, clean restarts
    and crashes, it hands out exactly the model's rows, and a crash loses only what was
    staged and not committed."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.spool = self._open()
        self.model: list[tuple[int, bytes]] = []  # (id, body) queued, oldest first
        self.durable: list[tuple[int, bytes]] = []  # what the last commit wrote
        self.sent = 0  # id of the last row handed out since the last (re)connect
        self.in_flight: list[SpooledEvent] = []
        self.next_id = 1
        self.committed_next_id = 1

    def _open(self) -> Spool:
        return Spool(self.dir / "q.db", max_messages=12, memory_rows=5)

    def _committed(self) -> None:
        del self.model[:max(0, len(self.model) - 12)]  # the bound drops the oldest
        self.durable = list(self.model)
        self.committed_next_id = self.next_id

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir)

    @rule(count=st.integers(1, 8), commit=st.booleans())
    def append(self, count, commit):
        first = self.next_id
        rows = [("t", b"%d" % i, "d", i) for i in range(first, first + count)]
        self.spool.append(rows, replayed=False, commit=commit)
        self.model.extend((i, b"%d" % i) for i in range(first, first + count))
        self.next_id += count
        if commit:
            self._committed()

    @rule(limit=st.integers(1, 6))
    def send(self, limit):
        staged = self.spool.staged
        rows = self.spool.peek(self.sent, limit)
        if staged and not self.spool.staged:
            self._committed()  # a read from the disk commits first
        expected = [m for m in self.model if m[0] > self.sent][:limit]
        assert [(e.id, e.body) for e in rows] == expected
        if rows:
            self.sent = rows[-1].id
        self.in_flight.extend(rows)

    @rule(data=st.data())
    def ack(self, data):
        if not self.in_flight:
            return
        acked = data.draw(st.lists(st.sampled_from(self.in_flight), unique=True))
        self.spool.remove(acked)
        gone = {e.id for e in acked}
        self.in_flight = [e for e in self.in_flight if e.id not in gone]
        self.model = [m for m in self.model if m[0] not in gone]

    @rule()
    def commit(self):
        self.spool.commit()
        self._committed()

    @rule()
    def reconnect(self):
        self.sent = 0
        self.in_flight.clear()

    @rule()
    def restart(self):
        self.spool.close()
        self._committed()
        self.spool = self._open()
        self.reconnect()

    @rule()
    def crash(self):
        self.spool._checkpointer.stopping.set()
        self.spool._db.close()  # no commit: what was only staged is gone
        self.model = list(self.durable)
        self.next_id = self.committed_next_id  # ids never written are handed out again
        self.spool = self._open()
        self.reconnect()

    @invariant()
    def counts_match(self):
        assert self.spool.count == len(self.model)
        assert self.spool.bytes == sum(len(body) for _, body in self.model)


SpoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                          deadline=None)
test_the_spool_behaves_like_a_list = SpoolMachine.TestCase
