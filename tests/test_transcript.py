"""The reconciled transcript (speko_sync._transcript): the rules as a table."""

from __future__ import annotations

import pytest

from speko_sync._transcript import Transcript, reconcile
from speko_sync.events import Message, MessageSource

U, A = MessageSource.USER, MessageSource.AGENT


def m(source: MessageSource, text: str, final: bool = True, seg: str | None = None,
      at: float | None = None) -> Message:
    return Message(source=source, text=text, is_final=final, segment_id=seg, started_at=at)


def run(*incoming: Message) -> list[tuple[str, str, bool]]:
    transcript = Transcript()
    for message in incoming:
        transcript = reconcile(transcript, message)
    return [(x.source.value, x.text, x.is_final) for x in transcript.messages]


CASES = {
    "cumulative updates of a segment replace it": (
        [m(A, "Hello", False, "s1", 1), m(A, "Hello there", False, "s1", 1), m(A, "Hello there.", True, "s1", 1)],
        [("agent", "Hello there.", True)]),
    "a final delivered twice is kept once": (
        [m(A, "Hi.", True, "s1", 1), m(A, "Hi.", True, "s1", 1)],
        [("agent", "Hi.", True)]),
    "segments of one speaker coalesce into one turn, punctuation hugs": (
        [m(U, "Okay", True, "a", 1), m(U, ", so", True, "b", 2), m(U, "I am here", True, "c", 3)],
        [("user", "Okay, so I am here", True)]),
    "the other speaker closes a turn": (
        [m(U, "hi", True, "a", 1), m(A, "hello", True, "x", 2), m(U, "how are you", True, "b", 3)],
        [("user", "hi", True), ("agent", "hello", True), ("user", "how are you", True)]),
    "a segment id recurring in a later turn opens a new turn": (
        [m(U, "first", True, "SG_1", 1), m(A, "reply", True, "x", 2), m(U, "second", True, "SG_1", 3)],
        [("user", "first", True), ("agent", "reply", True), ("user", "second", True)]),
    "a final under a fresh id supersedes the open interim": (
        [m(U, "what is", False, "i1", 1), m(U, "what is the weather", True, "f1", 1)],
        [("user", "what is the weather", True)]),
    "a fresh interim is a new segment, not a supersession": (
        [m(U, "one", False, "i1", 1), m(U, "two", False, "i2", 2)],
        [("user", "one two", False)]),
    "a final after a final turn joins the same speaker's turn": (
        [m(U, "one", True, "a", 1), m(U, "two", True, "b", 2)],
        [("user", "one two", True)]),
    "overlapping speech is ordered by started_at": (
        [m(A, "I was saying", False, "x", 2.0), m(U, "sorry", True, "a", 1.5),
         m(A, "I was saying that", True, "x", 2.0)],
        [("user", "sorry", True), ("agent", "I was saying that", True)]),
    "messages without segment ids coalesce into a trailing partial": (
        [m(U, "[speech", False), m(U, "[speech, 1.2 s]", True), m(A, "Heard it.")],
        [("user", "[speech, 1.2 s]", True), ("agent", "Heard it.", True)]),
    "without segment ids a final is never replaced": (
        [m(A, "one"), m(A, "two")],
        [("agent", "one", True), ("agent", "two", True)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reconciliation_rules(case: str) -> None:
    incoming, expected = CASES[case]
    assert run(*incoming) == expected


def test_turn_keeps_its_first_segment_id_and_start() -> None:
    t = reconcile(reconcile(Transcript(), m(U, "a", True, "s1", 10.0)), m(U, "b", True, "s2", 11.0))
    (turn,) = t.messages
    assert (turn.segment_id, turn.started_at) == ("s1", 10.0)


def test_reconcile_never_changes_its_input() -> None:
    before = reconcile(Transcript(), m(A, "Hello", False, "s1", 1))
    after = reconcile(before, m(A, "Hello you", True, "s1", 1))
    assert [x.text for x in before.messages] == ["Hello"]
    assert [x.text for x in after.messages] == ["Hello you"]


def test_re_delivery_in_a_closed_turn_does_not_rewrite_history() -> None:
    # the other speaker spoke since: s1 names history, so this is a new turn
    assert run(m(U, "first", False, "s1", 1), m(A, "reply", True, "x", 2), m(U, "later", False, "s1", 3)) == [
        ("user", "first", False), ("agent", "reply", True), ("user", "later", False)]


def test_updates_arriving_by_two_paths_are_delivered_once_each() -> None:
    from speko_sync._transcript import SegmentUpdates

    updates = SegmentUpdates()
    arrivals = [("Hello", False, 1.0), ("Hello", False, 1.1),  # stream, then legacy
                ("Hello there", False, 1.2), ("Hello", False, 1.3),  # a lagging legacy partial: stale
                ("Hello there", False, 1.4), ("Hello there.", True, 1.5), ("Hello there.", True, 1.6),
                ("Hello there", False, 1.7)]  # a partial after the final: stale
    delivered = [updates.accept(A, "SG_1", text, final, now) for text, final, now in arrivals]
    got = [(x.text, x.is_final, x.started_at) for x in delivered if x is not None]
    assert got == [("Hello", False, 1.0), ("Hello there", False, 1.0), ("Hello there.", True, 1.0)]


def test_a_segment_id_recurring_after_the_other_side_spoke_is_a_new_segment() -> None:
    from speko_sync._transcript import SegmentUpdates

    updates = SegmentUpdates()
    assert updates.accept(U, "SG_0", "yes", True, 1.0) is not None
    assert updates.accept(U, "SG_0", "yes", True, 1.1) is None  # re-delivery
    assert updates.accept(A, "SG_9", "Great.", True, 2.0) is not None  # the agent spoke
    again = updates.accept(U, "SG_0", "yes", True, 3.0)
    assert again is not None and again.started_at == 3.0


def test_the_two_paths_ids_for_one_segment_are_joined() -> None:
    """LiveKit Agents numbers stream and legacy segments independently."""
    from speko_sync._transcript import SegmentUpdates

    updates = SegmentUpdates()
    arrivals = [("stream", "SG_s", "Hi!", False), ("legacy", "SG_l", "Hi!", False),
                ("legacy", "SG_l", "Hi! You", False), ("stream", "SG_s", "Hi! You", False),
                ("stream", "SG_s", "Hi! You there.", True), ("legacy", "SG_l", "Hi! You there.", True),
                # the next segment: new ids on both paths, a text that does not continue the last
                ("legacy", "SG_l2", "Bye", False), ("stream", "SG_s2", "Bye", False),
                ("stream", "SG_s2", "Bye.", True), ("legacy", "SG_l2", "Bye.", True)]
    got = []
    for path, seg, text, final in arrivals:
        message = updates.accept(A, seg, text, final, 1.0, track="TR_agent", path=path)
        if message is not None:
            got.append((message.segment_id, message.text, message.is_final))
    assert got == [("SG_s", "Hi!", False), ("SG_s", "Hi! You", False), ("SG_s", "Hi! You there.", True),
                   ("SG_l2", "Bye", False), ("SG_l2", "Bye.", True)]


def test_other_tracks_are_never_joined() -> None:
    from speko_sync._transcript import SegmentUpdates

    updates = SegmentUpdates()
    assert updates.accept(U, "a", "yes", True, 1.0, track="TR_1", path="stream") is not None
    other = updates.accept(U, "b", "yes", True, 1.0, track="TR_2", path="legacy")
    assert other is not None and other.segment_id == "b"


def test_a_new_segment_that_starts_like_the_last_one_is_not_joined_to_it() -> None:
    """"You said: hello." then "You said: room 0.": the second answer's first
    word is a prefix of the first answer, but a path that already delivered its
    share of a segment starts a new one with its next id."""
    from speko_sync._transcript import SegmentUpdates

    updates = SegmentUpdates()
    arrivals = [("legacy", "L1", "You", False, 1.0), ("stream", "S1", "You", False, 1.0),
                ("stream", "S1", "You said: hello.", True, 1.5), ("legacy", "L1", "You said: hello.", True, 1.5),
                ("stream", "S2", "You", False, 3.0), ("legacy", "L2", "You", False, 3.0),
                ("legacy", "L2", "You said: room 0.", True, 3.5), ("stream", "S2", "You said: room 0.", True, 3.5)]
    got = []
    for path, seg, text, final, now in arrivals:
        message = updates.accept(A, seg, text, final, now, track="TR_agent", path=path)
        if message is not None:
            got.append((message.segment_id, message.text, message.is_final, message.started_at))
    assert got == [("L1", "You", False, 1.0), ("L1", "You said: hello.", True, 1.0),
                   ("S2", "You", False, 3.0), ("S2", "You said: room 0.", True, 3.0)]


@pytest.mark.parametrize("seed", range(6))
def test_a_long_transcript_reconciles_as_if_it_were_short(seed: int) -> None:
    """Updates touch only the newest turns of a long transcript, the older ones
    frozen in chunks, and new turns appended without a search; the result is
    the same as the rules applied to the whole list, through random traffic with
    recurring segment ids, partials, finals, out-of-order starts and long runs
    of one speaker."""
    import random

    import speko_sync._transcript as tr

    rng = random.Random(seed)
    incoming = []
    clock = 0.0
    for i in range(1500):
        source = rng.choice([U, A]) if rng.random() < 0.3 else (incoming[-1].source if incoming else U)
        clock += rng.random()
        at = None if rng.random() < 0.1 else clock - (rng.random() * 30 if rng.random() < 0.05 else 0)
        seg = None if rng.random() < 0.2 else f"SG_{rng.randrange(40)}"
        incoming.append(m(source, f"w{i}", rng.random() < 0.6, seg, at))
    fast_states = []
    fast = tr.Transcript()
    for message in incoming:
        fast = tr.reconcile(fast, message)
        fast_states.append(fast)
    assert fast.head.chunks  # it did freeze chunks
    slow: tuple[tr._Turn, ...] = ()  # the rules applied to the whole list, no shortcut
    for step, message in enumerate(incoming):
        turns = tr._apply(list(slow), message, float("-inf"), complete=True)
        assert turns is not None
        slow = turns
        if step % 25 == 0 or step == len(incoming) - 1:
            assert fast_states[step].messages == tuple(turn.message for turn in slow), step


def test_a_long_transcript_keeps_few_objects_for_the_garbage_collector() -> None:
    """Every full collection walks every tracked object: frozen turns are plain
    tuples of atoms, which the collector stops tracking, so 20k agent messages
    leave only the newest turns (two objects each) for it to walk, and a long
    session's collections stay short. Messages are made when asked for."""
    import gc

    import speko_sync._transcript as tr

    transcript = tr.Transcript()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(20_000):
        transcript = tr.reconcile(transcript, m(A if i % 3 else U, f"line {i}", True, None, None))
    gc.collect()
    gc.collect()  # a tuple is let go once what it holds has been, so the outer ones go a pass later
    tracked = len(gc.get_objects()) - before
    assert tracked < 2 * 128 + 50, tracked  # the unfrozen tail's turns and messages, and a few more
    messages = transcript.messages
    assert len(messages) == 20_000 and messages[0].text == "line 0" and messages[-1].text == "line 19999"
    assert messages[0].source == U and messages[1].source == A
