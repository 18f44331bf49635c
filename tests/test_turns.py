"""Turns, pure rules: speech edges, when a reply is complete, the latency as
heard, barge-in, and the playback flush a barge-in uses."""

from __future__ import annotations

import time

import numpy as np
import pytest

from speko_sync import AgentState, Message, MessageSource, SpekoClientError, ToolCall, ToolCallStatus, Turn
from speko_sync._turns import TurnTracker, VoiceEdges, is_barge_in
from speko_sync.audio import AudioIO
from speko_sync.events import TurnMetrics

LOUD = np.full(480, 3000, dtype=np.int16)
QUIET = np.zeros(480, dtype=np.int16)


def feed(edges: VoiceEdges, frames: list[np.ndarray], start: float = 0.0) -> list[tuple[float, str]]:
    out = []
    for i, frame in enumerate(frames):
        edge = edges.push(frame, start + 0.01 * i)
        if edge:
            out.append((round(start + 0.01 * i, 3), edge))
    return out


def test_voice_edges_find_the_start_and_the_end_after_the_hangover() -> None:
    edges = VoiceEdges(hangover_s=0.2)
    frames = [QUIET] * 10 + [LOUD] * 30 + [QUIET] * 30
    assert feed(edges, frames) == [(0.1, "start"), (0.6, "end")]  # last voiced frame ends at 0.4
    assert edges.last_voiced == pytest.approx(0.4) and not edges.talking


def test_voice_edges_ignore_clicks_short_pauses_and_negative_peaks_count() -> None:
    edges = VoiceEdges(hangover_s=0.2, min_speech_s=0.05)
    assert feed(edges, [LOUD] * 2 + [QUIET] * 30) == [(0.0, "start")]  # 20 ms: no "end" for a click
    edges = VoiceEdges(hangover_s=0.2)
    words = [-LOUD] * 20 + [QUIET] * 10 + [LOUD] * 20 + [QUIET] * 30  # a 100 ms pause inside speech
    assert feed(edges, words) == [(0.0, "start"), (0.7, "end")]
    assert feed(VoiceEdges(), [np.full(480, 200, dtype=np.int16)] * 50) == []  # below the gate
    edges = VoiceEdges()
    assert feed(edges, [LOUD] * 5) == [(0.0, "start")]
    assert feed(edges, [LOUD] * 5, start=1.0) == [(1.0, "start")]  # no frames at all in between is a gap too


def test_barge_in_is_the_agent_stopping_while_the_user_speaks() -> None:
    assert is_barge_in(AgentState.SPEAKING, AgentState.LISTENING, user_speaking=True)
    assert not is_barge_in(AgentState.SPEAKING, AgentState.LISTENING, user_speaking=False)
    assert not is_barge_in(AgentState.THINKING, AgentState.LISTENING, user_speaking=True)
    assert not is_barge_in(AgentState.SPEAKING, AgentState.THINKING, user_speaking=True)


def agent_final(text: str, started_at: float | None = None) -> Message:
    return Message(MessageSource.AGENT, text, True, "seg", started_at if started_at is not None else time.time())


def test_with_a_session_stream_a_typed_turn_is_answered_by_the_agent_item_after_the_users() -> None:
    tracker = TurnTracker()
    tracker.stream = True
    future = tracker.expect(typed=True)
    tracker.on_turn(Turn(MessageSource.AGENT, "Hello, I am the greeting."))  # still under way when asked
    assert not future.done()
    tracker.on_turn(Turn(MessageSource.USER, "what is the weather"))
    call = ToolCall("set_light", {"on": True}, ToolCallStatus.OK, result="on")
    tracker.on_tool_call(call)
    tracker.on_agent_audio(time.monotonic())
    metrics = TurnMetrics(e2e_latency=0.8)
    tracker.on_turn(Turn(MessageSource.AGENT, "Sunny.", metrics=metrics))
    reply = future.result(0)
    assert (reply.text, reply.metrics, reply.tool_calls) == ("Sunny.", metrics, (call,))
    assert reply.first_audio_s is not None and 0 <= reply.first_audio_s <= reply.final_s  # type: ignore[operator]
    assert tracker.agent_e2e_latency_s == 0.8


def test_without_a_session_stream_the_final_text_completes_once_the_agent_is_quiet() -> None:
    tracker = TurnTracker()
    before = time.time() - 5
    future = tracker.expect(typed=True)
    tracker.on_message(agent_final("Old greeting.", started_at=before))  # began before the ask
    tracker.on_agent_state(AgentState.LISTENING)
    assert not future.done()
    tracker.on_agent_state(AgentState.SPEAKING)
    tracker.on_message(Message(MessageSource.AGENT, "You said", False, "s2", time.time()))
    tracker.on_message(agent_final("You said: hi."))
    assert not future.done()  # still speaking
    tracker.on_agent_state(AgentState.LISTENING)
    reply = future.result(0)
    assert (reply.text, reply.metrics, reply.turn) == ("You said: hi.", None, None)


def test_the_latency_as_heard_goes_from_the_users_speech_end_to_the_agents_first_audio() -> None:
    tracker = TurnTracker()
    future = tracker.expect(typed=False)
    t = time.monotonic()
    tracker.on_user_speech_end(t + 1.0)
    tracker.on_agent_audio(t + 1.75)
    turn = tracker.on_turn(Turn(MessageSource.AGENT, "Answer.", metrics=TurnMetrics(e2e_latency=0.6)))
    assert turn.response_latency_s == pytest.approx(0.75)
    assert tracker.response_latency_s == pytest.approx(0.75) and tracker.agent_e2e_latency_s == 0.6
    reply = future.result(0)
    assert reply.first_audio_s == pytest.approx(0.75)  # a spoken turn's reply is timed from the speech end
    tracker.on_agent_audio(t + 3.0)  # more audio, no new speech: nothing to match
    assert tracker.on_turn(Turn(MessageSource.AGENT, "More.")).response_latency_s is None


def test_waiters_fail_when_the_session_ends_and_a_cancelled_one_is_forgotten() -> None:
    tracker = TurnTracker()
    cancelled = tracker.expect(typed=False)
    cancelled.cancel()
    pending = tracker.expect(typed=True)
    tracker.close()
    with pytest.raises(SpekoClientError, match="ended before the agent answered"):
        pending.result(0)
    with pytest.raises(SpekoClientError):
        tracker.expect(typed=False).result(0)


def test_a_flush_drops_what_was_queued_at_the_next_buffer_and_is_no_underrun() -> None:
    io = AudioIO(48000)
    out, scratch = np.zeros(960, dtype=np.int16), np.zeros(960, dtype=np.float32)
    io.playback.write(np.full(4800, 1000, dtype=np.int16))
    io.render(out, scratch)
    assert (out == 1000).all()
    io.flush_playback()
    io.render(out, scratch)
    assert (out == 0).all() and io.playback.available() == 0
    assert io.counters[2] == 0  # UNDERRUNS: the silence after a flush is not one
    io.playback.write(np.full(960, 7, dtype=np.int16))  # new audio after the flush plays
    io.render(out, scratch)
    assert (out == 7).all()
