"""The output ring of a detached sandbox (``fence.executor.outputlog``): numbering, bounds, drop markers."""

from __future__ import annotations

from fence.executor.outputlog import OutputLog


def test_chunks_are_numbered_in_order_across_streams():
    log = OutputLog(limit=1000)
    log.append("stdout", b"a")
    log.append("stderr", b"b")
    log.append("stdout", b"c")
    chunks = log.after(0, 1000)
    assert [(c.seq, c.stream, c.data) for c in chunks] == [
        (1, "stdout", b"a"),
        (2, "stderr", b"b"),
        (3, "stdout", b"c"),
    ]
    assert [c.seq for c in log.after(2, 1000)] == [3]
    assert log.after(3, 1000) == [] and log.after(99, 1000) == []


def test_the_ring_keeps_the_newest_bytes_and_counts_what_a_reader_missed():
    log = OutputLog(limit=10)
    for i in range(10):
        log.append("stdout", b"%04d" % i)  # 4 bytes each: the ring keeps the last two
    assert log.retained == 8 and log.first == 9 and log.total_bytes == 40
    marker, *rest = log.after(0, 1000)
    assert (marker.stream, marker.count, marker.seq) == ("dropped", 8, 8)
    assert [c.data for c in rest] == [b"0008", b"0009"]
    marker, *rest = log.after(5, 1000)  # a reader that got up to 5 missed 6, 7, 8
    assert (marker.stream, marker.count) == ("dropped", 3) and [c.seq for c in rest] == [9, 10]
    assert [c.seq for c in log.after(9, 1000)] == [10]  # no marker for a reader that kept up


def test_a_reply_is_bounded_but_always_makes_progress():
    log = OutputLog(limit=1 << 20)
    for _ in range(5):
        log.append("stdout", b"x" * 100)
    assert [c.seq for c in log.after(0, 250)] == [1, 2]
    assert [c.seq for c in log.after(0, 10)] == [1]  # one chunk larger than the budget still comes
    big = OutputLog(limit=10)
    big.append("stdout", b"y" * 50)  # the newest chunk stays even when it alone is over the limit
    assert [c.data for c in big.after(0, 1000)] == [b"y" * 50]
