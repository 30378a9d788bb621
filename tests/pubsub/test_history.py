"""The in-memory history and offsets, without I/O: publishes in, stamped publishes and verdicts out."""

from __future__ import annotations

import pytest

from syncws.protocol.frames import OP_BINARY, OP_TEXT
from syncws.protocol.payload import Outgoing
from syncws.pubsub.history import MemoryHistory, format_offset, is_after, new_epoch, parse_offset


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fill(history: MemoryHistory, count: int, namespace: str = "/", topic: str = "t") -> list[str | None]:
    return [history.append(namespace, topic, Outgoing(f"m{i}")).offset for i in range(count)]


def test_offsets_count_up_within_one_history_under_one_epoch():
    history = MemoryHistory(10)
    offsets = fill(history, 3)
    parsed = [parse_offset(offset) for offset in offsets]
    assert len({epoch for epoch, _ in parsed}) == 1
    assert [seq for _, seq in parsed] == [1, 2, 3]
    other = history.append("/", "other", Outgoing("x")).offset
    assert parse_offset(other)[0] != parsed[0][0]  # another topic, another epoch: never mistaken


@pytest.mark.parametrize("text", ["", "1", "a-1", "1-b", "-1", "1-", "1-2-3", "١-٢", None, 12, "9" * 70])
def test_anything_but_an_offset_parses_to_none(text):
    assert parse_offset(text) is None


def test_offsets_round_trip_and_epochs_fit_a_stream_id():
    epoch = new_epoch()
    assert 0 < epoch < 2**47 + 2
    assert parse_offset(format_offset(epoch, 7)) == (epoch, 7)


def test_a_stamped_publish_shares_the_payload_and_the_frames():
    history = MemoryHistory(10)
    original = Outgoing({"k": 1})
    stamped = history.append("/", "t", original)
    assert stamped.payload is original.payload and stamped.topic == "t" and stamped.offset
    assert stamped.frame is original.frame  # framed once, on the original
    again = history.append("/other", "t", original)
    assert again.frame is original.frame and again.offset != stamped.offset


def test_read_after_since_recovers_exactly_the_rest():
    history = MemoryHistory(10)
    offsets = fill(history, 5)
    entries, recovered, newest = history.read("/", "t", offsets[1])
    assert recovered and newest == offsets[-1]
    assert [e.offset for e in entries] == offsets[2:]
    assert [e.payload for e in entries] == [b"m2", b"m3", b"m4"]
    assert history.read("/", "t", offsets[-1]) == ([], True, offsets[-1])


def test_a_trimmed_history_keeps_exactly_the_last_size_and_says_not_recovered():
    history = MemoryHistory(3)
    offsets = fill(history, 6)
    entries, recovered, _newest = history.read("/", "t", offsets[0])
    assert not recovered and [e.offset for e in entries] == offsets[3:]
    # the offset right before the oldest kept one still recovers: nothing between was dropped
    entries, recovered, _ = history.read("/", "t", offsets[2])
    assert recovered and [e.offset for e in entries] == offsets[3:]


def test_since_from_another_epoch_or_the_future_is_stale():
    history = MemoryHistory(10)
    offsets = fill(history, 2)
    epoch, _seq = parse_offset(offsets[0])
    for stale in (format_offset(epoch + 1, 1), format_offset(epoch, 99), "junk"):
        entries, recovered, _ = history.read("/", "t", stale)
        assert not recovered and len(entries) == 2


def test_without_since_everything_is_returned_and_limit_keeps_the_newest():
    history = MemoryHistory(10)
    offsets = fill(history, 4)
    assert [e.offset for e in history.read("/", "t")[0]] == offsets
    assert [e.offset for e in history.read("/", "t", limit=2)[0]] == offsets[2:]
    assert history.read("/", "t", limit=0)[0] == []
    assert history.read("/", "nothing") == ([], False, None)


def test_entries_keep_their_kind():
    history = MemoryHistory(10)
    for data in (b"\x00", "text", [1, 2]):
        history.append("/", "t", Outgoing(data))
    binary, text, json_list = history.read("/", "t")[0]
    assert (binary.opcode, binary.is_json) == (OP_BINARY, False)
    assert (text.opcode, text.is_json) == (OP_TEXT, False)
    assert (json_list.opcode, json_list.is_json, json_list.payload) == (OP_TEXT, True, b"[1,2]")


def test_ttl_expires_old_entries_and_forgets_quiet_topics():
    clock = Clock()
    history = MemoryHistory(10, ttl=30, clock=clock)
    old = fill(history, 2)
    clock.now += 20
    young = history.append("/", "t", Outgoing("young")).offset
    clock.now += 15  # the first two are 35 s old, the third 15 s
    entries, recovered, _newest = history.read("/", "t", old[0])
    assert not recovered and [e.offset for e in entries] == [young]
    entries, recovered, _ = history.read("/", "t", old[1])  # nothing between old[1] and young was lost
    assert recovered and [e.offset for e in entries] == [young]
    assert history.read("/", "t", young) == ([], True, young)  # expired or not, nothing was missed
    history.append("/", "other", Outgoing("x"))
    clock.now += 100  # every entry of "t" and "other" is now older than the TTL
    history.append("/", "fresh", Outgoing("y"))  # a sweep runs: quiet topics are forgotten
    assert history.read("/", "t") == ([], False, None)
    assert history.namespaces("t") == frozenset()
    assert history.counts() == {"histories": 1, "entries": 1}


def test_namespaces_lists_where_a_topic_has_a_history():
    history = MemoryHistory(10)
    history.append("/a", "t", Outgoing("x"))
    history.append("/b", "t", Outgoing("x"))
    history.append("/c", "u", Outgoing("x"))
    assert history.namespaces("t") == {"/a", "/b"}


@pytest.mark.parametrize(
    "offset, mark, after",
    [
        (None, (5, 3), True),  # unstamped: never part of a replay
        ("5-4", (5, 3), True),
        ("5-3", (5, 3), False),
        ("5-1", (5, 3), False),
        ("6-1", (5, 3), True),  # a new epoch: the history was recreated since
        ("5-1", None, True),
    ],
)
def test_is_after(offset, mark, after):
    assert is_after(offset, mark) is after


def test_past_max_topics_the_least_recently_published_history_is_forgotten():
    history = MemoryHistory(10, max_topics=3)
    first = fill(history, 2, topic="a")
    fill(history, 1, topic="b")
    fill(history, 1, topic="c")
    fill(history, 1, topic="a")  # "a" is the most recent now, "b" the least
    fill(history, 1, topic="d")
    assert history.read("/", "b") == ([], False, None)
    assert history.namespaces("b") == frozenset()
    entries, recovered, _ = history.read("/", "a", first[0])
    assert recovered and len(entries) == 2
    assert history.counts() == {"histories": 3, "entries": 5} and history.evicted == 1


def test_the_sweep_forgets_expired_histories_a_slice_per_publish():
    clock = Clock()
    history = MemoryHistory(10, ttl=5, clock=clock)
    for n in range(250):
        history.append("/", f"t{n}", Outgoing("x"))
    clock.now += 10
    history.append("/", "fresh", Outgoing("y"))  # 100 expired histories at most per publish
    assert history.counts() == {"histories": 151, "entries": 151}
    history.append("/", "fresh", Outgoing("y"))
    history.append("/", "fresh", Outgoing("y"))
    assert history.counts() == {"histories": 1, "entries": 3}


def test_reads_share_the_stored_publishes_and_cost_what_they_return():
    history = MemoryHistory(1000)
    offsets = fill(history, 1000)
    first, _, _ = history.read("/", "t", offsets[-3])
    again, _, _ = history.read("/", "t", offsets[-3])
    assert [e.offset for e in first] == offsets[-2:]
    assert all(a is b for a, b in zip(first, again, strict=True))  # one object: framed and compressed once
    assert history.read("/", "t", limit=0) == ([], False, offsets[-1])
    assert [e.offset for e in history.read("/", "t", limit=2)[0]] == offsets[-2:]
