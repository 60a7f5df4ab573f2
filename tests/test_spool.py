"""The on-disk queue: order, acknowledgement, bounds, restarts."""

from __future__ import annotations

from gateway.bridge.spool import Spool


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
