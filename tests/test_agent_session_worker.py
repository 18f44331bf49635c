"""The agent acting through the Conversation, against the real LiveKit Agents
worker (the offline Speko agent): its session stream decoded into turns with
metrics, the blocking turn API, the latency as heard, and barge-in."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from conv import Recorder
from test_livekit_agents_worker import _require_agent_env, espeak

from speko_sync import AgentState, AudioConstraints, BufferAudio, Conversation, MessageSource, Turn, UserState
from speko_sync.testing import LocalServer
from speko_sync.testing.pytest_plugin import require_webrtc

pytestmark = pytest.mark.webrtc

GREETING = "Hello from the offline agent."
STORY = "Once upon a time there was a robot who liked to talk for a very long time about many things. " * 4
RULES = [("weather", "It is always sunny here."), ("story", STORY)]
RATE = 48_000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng to speak to the agent")


@pytest.fixture(scope="module")
def worker_server() -> Iterator[LocalServer]:
    require_webrtc()
    _require_agent_env()
    with LocalServer() as server:
        server.start_agent_worker(greeting=GREETING, rules=RULES)
        yield server


def spoken(text: str) -> np.ndarray:
    silence = np.zeros(RATE // 2, dtype=np.int16)
    return np.concatenate([silence, espeak(text), silence, silence, silence])


def quiet_after(rec: Recorder, speaking_turns: int) -> bool:
    states = rec.of("agent_state_changed")
    return bool(states) and states[-1] == AgentState.LISTENING and states.count(AgentState.SPEAKING) >= speaking_turns


def test_ask_returns_the_agents_answer_with_its_metrics_and_every_agent_turn_has_metrics(
        worker_server: LocalServer) -> None:
    rec = Recorder()
    with Conversation(worker_server.token("caller", "ask-real"), worker_server.url, audio=BufferAudio(),
                      **rec.callbacks()) as conv:
        greeting = rec.wait_for("turn", lambda t: t.source == MessageSource.AGENT, timeout=30)
        assert greeting.text == GREETING and greeting.metrics is not None
        reply = conv.ask("what is the weather", timeout=30)
        assert reply.text == "It is always sunny here." and not reply.interrupted
        assert reply.metrics is not None and reply.metrics.llm_node_ttft is not None
        assert reply.metrics.tts_node_ttfb is not None and reply.metrics.started_speaking_at is not None
        assert reply.first_audio_s is not None and reply.final_s is not None
        assert 0 < reply.first_audio_s < reply.final_s < 30
        assert reply.turn is not None and reply.turn.text == reply.text
        rec.wait_for("turn", lambda t: t.text == reply.text)  # events are delivered after ask() returned
        turns: list[Turn] = rec.of("turn")
        assert [(t.source, t.text) for t in turns] == [(MessageSource.AGENT, GREETING),
                                                       (MessageSource.USER, "what is the weather"),
                                                       (MessageSource.AGENT, "It is always sunny here.")]
        assert all(t.metrics is not None for t in turns if t.source == MessageSource.AGENT)
        # one transcript: the turns are events, not more lines
        assert [m.text for m in conv.transcript()] == [GREETING, "what is the weather", "It is always sunny here."]
        stats = conv.stats()
        assert stats.session_messages >= 6 and rec.of("error") == []
        states = rec.of("agent_state_changed")
        assert all(a != b for a, b in itertools.pairwise(states))  # one state, changes only


@needs_espeak
def test_a_spoken_turn_gives_the_latency_as_heard_beside_the_agents_own(worker_server: LocalServer) -> None:
    audio = BufferAudio()
    rec = Recorder()
    with Conversation(worker_server.token("speaker", "heard-real"), worker_server.url, audio=audio,
                      **rec.callbacks()) as conv:
        rec.wait_for("agent_state_changed", lambda _: quiet_after(rec, 1), timeout=30)
        audio.feed(spoken("what is the weather"))
        reply = conv.wait_for_reply(timeout=40)
        assert reply.text and reply.turn is not None
        assert reply.metrics is not None and reply.metrics.e2e_latency is not None
        heard = reply.turn.response_latency_s
        assert heard is not None and 0.05 < heard < 10, heard
        assert reply.first_audio_s == pytest.approx(heard, abs=0.05)  # timed from the end of the speech
        stats = conv.stats()
        assert stats.response_latency_s == heard and stats.agent_e2e_latency_s == reply.metrics.e2e_latency
        assert UserState.SPEAKING in rec.of("user_state_changed")  # the agent heard the user speak


@needs_espeak
def test_barge_in_drops_the_queued_agent_audio(worker_server: LocalServer) -> None:
    """The user talks over a long answer: the worker stops (speaking ->
    listening while the user speaks), and from the moment the library saw it
    not one more frame of the cut answer plays, though LiveKit still hands
    over what was in flight."""
    audio = BufferAudio()
    rec = Recorder()
    at_interruption: list[int] = []
    callbacks = rec.callbacks()
    record = callbacks.pop("on_interruption")

    def on_interruption(value: object) -> None:
        at_interruption.append(round(audio.played_seconds() * 100))  # 10 ms frames played (silence included)
        record(value)

    with Conversation(worker_server.token("rude", "barge-real"), worker_server.url, audio=audio,
                      # BufferAudio has no acoustic echo path; echo cancellation on it suppresses the
                      # user's speech while the agent talks (AEC3's double-talk handling)
                      audio_constraints=AudioConstraints(echo_cancellation=False),
                      on_interruption=on_interruption, **callbacks) as conv:
        rec.wait_for("turn", lambda t: t.text == GREETING, timeout=30)
        conv.send_chat_message("tell me a story")
        # LiveKit Agents ignores interruptions while its echo canceller warms up (3 s of speech)
        rec.wait_for("message", lambda m: m.source == MessageSource.AGENT and m.text.startswith(STORY[:40]),
                     timeout=30)
        assert conv.agent_state == AgentState.SPEAKING
        audio.feed(spoken("what is the weather"))
        interruption = rec.wait_for("interruption", timeout=30)
        assert interruption.is_interruption and conv.stats().barge_ins == 1
        cut = rec.wait_for("turn", lambda t: t.source == MessageSource.AGENT and t.interrupted, timeout=30)
        assert STORY.startswith(cut.text) and len(cut.text) < len(STORY) / 2, cut.text
        mark = at_interruption[0]
        assert audio.wait_for_played((mark + 12) / 100, timeout=10)
        played = audio.played()
        frame = RATE // 100
        peaks = [int(np.abs(played[i * frame:(i + 1) * frame]).max()) for i in range(mark - 100, mark + 11)]
        assert max(peaks[:50]) > 3000, "the story was not playing when the user spoke"
        # quiet from 30 ms after the receiver ran (the receiver and the audio loop race by a frame or
        # two; the flush itself acts at the next buffer: test_turns.py) to 110 ms: the agent answers what
        # it heard, or resumes a turn it judges not interrupted, a second or more later
        assert max(peaks[-8:]) < 300, repr(peaks)
        stats = conv.stats()
        assert stats.barge_in_dropped_ms > 0, "nothing was in flight: the drop was not exercised"
        usage = rec.of("usage")
        assert usage and all(a != b for a, b in itertools.pairwise(usage))  # changes only
