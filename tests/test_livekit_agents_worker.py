"""An unmodified LiveKit Agents worker (the offline Speko agent) against
LocalServer, seen by the real livekit.rtc client over WebRTC: dispatch, the
agent's audio, ``lk.agent.state``, ``lk.transcription`` streams and legacy
transcriptions, typed turns on ``lk.chat``, spoken turns transcribed on the
user's behalf, and the worker's own failure modes."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
from livekit import rtc
from lk import RATE, AgentView, Ear, Mic, Recorder, join_with_agent, join_with_session, metric_names, rms, run

from speko_sync.testing import AgentEnvUnavailable, LocalServer, agent_python
from speko_sync.testing.pytest_plugin import require_webrtc

pytestmark = pytest.mark.webrtc

GREETING = "Hello from the offline agent."
RULES = [("weather", "It is always sunny here.")]


def _require_agent_env() -> None:
    try:
        agent_python()
    except AgentEnvUnavailable as exc:
        if os.environ.get("SPEKO_SYNC_REQUIRE_WEBRTC") == "1":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def worker_server() -> Iterator[LocalServer]:
    """One server with one offline Speko worker for the module (it takes a few
    seconds to start); each test uses a room of its own."""
    require_webrtc()
    _require_agent_env()
    with LocalServer() as server:
        server.start_agent_worker(greeting=GREETING, rules=RULES)
        yield server


def test_worker_is_dispatched_and_greets_with_audio_state_and_transcripts(worker_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _, view, track, agent = await join_with_agent(worker_server, "greet")
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ear = Ear(track)
        await view.wait("greeting transcript", lambda: GREETING in view.final_texts(agent.identity))
        await view.wait("listening again", lambda: view.states[-1:] == ["listening"] and "speaking" in view.states)
        assert view.states.index("speaking") < len(view.states) - 1  # speaking, then listening
        heard = ear.audio()
        assert rms(heard) > 0.005, "the greeting was not heard"
        _, _, attrs = next(s for s in view.streams if s[1] == GREETING)
        agent_tracks = [p.sid for p in agent.track_publications.values()]
        assert attrs["lk.transcribed_track_id"] in agent_tracks and attrs["lk.segment_id"]
        # the client reports client_protocol < 3, so the worker also sends legacy packets
        await view.wait("legacy final", lambda: (agent.identity, GREETING, True) in view.legacy)
        partials = [t for who, t, final in view.legacy if not final]
        assert partials and all(GREETING.startswith(t) for t in partials)  # cumulative updates
        job = worker_server.wait_for_job("greet", "JS_RUNNING", timeout=5)
        assert job.identity == agent.identity
        await ear.close()
        await room.disconnect()
    run(scenario(), timeout=90)


def test_typed_turn_on_lk_chat_is_answered_like_a_spoken_one(worker_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _, view, _, agent = await join_with_agent(worker_server, "chat")
        await view.wait("greeting", lambda: GREETING in view.final_texts(agent.identity))
        await room.local_participant.send_text("what is the weather", topic="lk.chat")
        await view.wait("rule reply", lambda: "It is always sunny here." in view.final_texts(agent.identity))
        await room.local_participant.send_text("tell me a story", topic="lk.chat")
        await view.wait("echo reply", lambda: "You said: tell me a story." in view.final_texts(agent.identity))
        assert "thinking" in view.states
        await room.disconnect()
    run(scenario(), timeout=90)


def espeak(text: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True).stdout
    pcm = np.frombuffer(wav[44:], dtype=np.int16)  # 22050 Hz mono
    positions = np.arange(0, len(pcm), 22050 / RATE)
    return np.interp(positions, np.arange(len(pcm)), pcm).astype(np.int16)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng to speak to the agent")
def test_spoken_turn_is_transcribed_on_the_users_behalf_and_answered(worker_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _, view, _, agent = await join_with_agent(worker_server, "speak")
        mic = await Mic(room).publish()
        assert mic.publication is not None
        await view.wait("greeting", lambda: GREETING in view.final_texts(agent.identity))
        silence = np.zeros(RATE // 2, dtype=np.int16)
        await mic.play(np.concatenate([silence, espeak("what is the weather"), silence, silence, silence]))
        await view.wait("user transcript", lambda: view.final_texts("user"), timeout=30)
        text = view.final_texts("user")[0]
        # PocketSphinx hears espeak through Opus well, not perfectly: some of the words
        assert {"what", "is", "the", "weather"} & set(text.lower().split()), text
        _, _, attrs = next(s for s in view.streams if s[0] == "user")
        assert attrs["lk.transcribed_track_id"] == mic.publication.sid
        # published by the agent on the user's behalf: the stream's sender is the user
        await view.wait("answer", lambda: len(view.final_texts(agent.identity)) >= 2)
        answer = view.final_texts(agent.identity)[-1]
        assert answer == "It is always sunny here." or answer.startswith("You said: "), answer
        await room.disconnect()
    run(scenario(), timeout=90)


def test_a_worker_that_exits_before_registering_is_an_error_with_its_output() -> None:
    _require_agent_env()
    with LocalServer() as server:
        with pytest.raises(RuntimeError, match="exited with 3") as err:
            server.start_agent_worker(program=["-c", "print('no such agent'); raise SystemExit(3)"], timeout=30)
        assert "no such agent" in str(err.value) and server.workers() == []


def test_a_worker_killed_mid_turn_leaves_the_room() -> None:
    """A crash of the worker's processes while the agent speaks: the agent
    participant goes away (its connection dies with it), the job is failed."""
    require_webrtc()
    _require_agent_env()
    with LocalServer() as server:
        doomed = server.start_agent_worker(greeting="This greeting is long enough to be cut. " * 10)

        async def scenario() -> None:
            room, recorder, view, _, agent = await join_with_agent(server, "crash")
            await view.wait("speaking", lambda: "speaking" in view.states)
            await asyncio.to_thread(doomed.kill)
            await recorder.wait_for("participant_disconnected", lambda p: p.identity == agent.identity, timeout=30)
            await room.disconnect()
        run(scenario(), timeout=120)
        assert doomed.returncode is not None and doomed.returncode < 0
        failed = server.wait_for_job("crash", "JS_FAILED", timeout=10)
        assert failed.error == "worker disconnected" and len(server.jobs("crash")) == 1


def test_an_agent_held_back_never_joins_then_joins_late(worker_server: LocalServer) -> None:
    worker_server.hold_dispatch()
    try:
        async def scenario() -> None:
            room = rtc.Room()
            recorder = Recorder(room)
            view = AgentView()
            view.attach(room)
            await room.connect(worker_server.url, worker_server.token("user", "late"))
            # dispatch is decided as the client joins: held, no job and no agent
            assert worker_server.jobs("late") == [] and worker_server.participants("late") == ["user"]
            await asyncio.to_thread(worker_server.release_dispatch)
            (agent,) = await recorder.wait_for("participant_connected", timeout=30)
            await view.wait("late greeting", lambda: GREETING in view.final_texts(agent.identity))
            await room.disconnect()
        run(scenario(), timeout=90)
    finally:
        worker_server.release_dispatch()


async def converse(server: LocalServer, room_name: str) -> dict[str, object]:
    """One conversation (greeting, a typed turn, a spoken turn), reduced to what
    is on the wire: kinds, topics, attribute names and update patterns."""
    room, _, view, _, agent = await join_with_agent(server, room_name)
    mic = await Mic(room).publish()
    assert mic.publication is not None
    await view.wait("greeting", lambda: len(view.final_texts(agent.identity)) >= 1)
    await view.wait("listening", lambda: view.states[-1:] == ["listening"])
    await room.local_participant.send_text("what is the weather", topic="lk.chat")
    await view.wait("typed reply", lambda: len(view.final_texts(agent.identity)) >= 2)
    await view.wait("listening", lambda: view.states[-1:] == ["listening"])
    silence = np.zeros(RATE // 2, dtype=np.int16)
    await mic.play(np.concatenate([silence, espeak("what is the weather"), silence, silence, silence]))
    await view.wait("user transcript", lambda: view.final_texts("user"), timeout=30)
    await view.wait("spoken reply", lambda: len(view.final_texts(agent.identity)) >= 3, timeout=30)
    await view.wait("legacy user final", lambda: any(w == "user" and final for w, _, final in view.legacy))
    await view.wait("legacy agent finals", lambda: sum(w == agent.identity and final
                                                       for w, _, final in view.legacy) >= 3)
    agent_tracks = {p.sid for p in agent.track_publications.values()}
    agent_opened = [a for who, a in view.opened if who == agent.identity]
    agent_closed = [a for who, _, a in view.streams if who == agent.identity]
    user_opened = [a for who, a in view.opened if who == "user"]
    segments: dict[str, list[str]] = {}
    for attrs in user_opened:
        segments.setdefault(attrs["lk.segment_id"], []).append(attrs["lk.transcription_final"])
    agent_legacy = [(text, final) for who, text, final in view.legacy if who == agent.identity]
    cumulative = all(b[0].startswith(a[0]) for a, b in itertools.pairwise(agent_legacy)
                     if not a[1])
    states = view.states
    await room.disconnect()
    return {
        "agent participant attributes": sorted(k for k in agent.attributes if k.startswith("lk.")),
        "states seen": sorted(set(states)),
        "a turn is thinking, speaking, listening": any(
            states[i:i + 3] == ["thinking", "speaking", "listening"] for i in range(len(states))),
        "state events only on change": all(a != b for a, b in itertools.pairwise(states)),
        "agent stream attributes": sorted({k for a in agent_opened for k in a}),
        "agent streams open non-final, close final": (
            {a["lk.transcription_final"] for a in agent_opened} == {"false"}
            and {a["lk.transcription_final"] for a in agent_closed} == {"true"}),
        "agent streams transcribe the agent's track": {a["lk.transcribed_track_id"] in agent_tracks
                                                        for a in agent_opened} == {True},
        "user stream attributes": sorted({k for a in user_opened for k in a}),
        "user streams transcribe the user's microphone": {a["lk.transcribed_track_id"]
                                                          for a in user_opened} == {mic.publication.sid},
        "each user segment ends final": all(finals[-1] == "true" for finals in segments.values()),
        "legacy agent updates are cumulative, then final": cumulative and agent_legacy[-1][1],
    }


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng to speak to the agents")
def test_scripted_agent_sends_what_the_real_worker_sends(worker_server: LocalServer) -> None:
    """The same conversation with the real LiveKit Agents worker and with the
    in-process ScriptedAgent: the same kinds of packets, topics, attribute names
    and update patterns reach the client."""
    real = run(converse(worker_server, "wire-real"), timeout=120)
    worker_server.add_agent("wire-scripted")  # an agent is there: nothing is dispatched
    scripted = run(converse(worker_server, "wire-scripted"), timeout=120)
    assert worker_server.jobs("wire-scripted") == []
    assert real["agent stream attributes"] == ["lk.segment_id", "lk.transcribed_track_id", "lk.transcription_final"]
    assert {k: v for k, v in real.items() if v is not True} != {}  # the summary is not all booleans
    assert scripted == real


async def session_summary(server: LocalServer, room_name: str) -> dict[str, object]:
    """A greeting and a typed turn, reduced to the session stream's shape: the
    events in order (without the usage updates) and each chat message's role
    and metric names."""
    room, view, session = await join_with_session(server, room_name)
    await session.wait("greeting item", lambda: len(session.items("assistant")) == 1, timeout=30)
    await view.wait("listening", lambda: view.states[-1:] == ["listening"])
    await room.local_participant.send_text("what is the weather", topic="lk.chat")
    await session.wait("answer item", lambda: len(session.items("assistant")) == 2, timeout=30)
    await session.wait("listening", lambda: session.kinds()[-1] == "agent speaking>listening")
    summary = {"events": session.kinds(),
               "messages": [(m.role, metric_names(m), m.HasField("metrics")) for m in session.items()]}
    await session.close()
    await room.disconnect()
    return summary


def test_scripted_agent_with_session_events_sends_the_real_workers_session_stream(
        worker_server: LocalServer) -> None:
    """The real worker's ``lk.agent.session`` stream for a greeting and a typed
    turn, and the ScriptedAgent's with ``session_events=True``: the same events
    in the same order, the same metrics."""
    real = run(session_summary(worker_server, "session-real"), timeout=90)
    worker_server.add_agent("session-scripted", session_events=True, greeting=GREETING)
    scripted = run(session_summary(worker_server, "session-scripted"), timeout=90)
    assert real["events"][:2] == ["item agent_handoff", "agent initializing>listening"]
    assert scripted == real


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng to speak to the agent")
def test_conversation_with_the_real_worker(worker_server: LocalServer) -> None:
    """speko_sync's Conversation against the real LiveKit Agents worker: the
    greeting's transcript, the agent's state driving the mode, a typed turn and a
    spoken turn answered, and the reconciled transcript in order."""
    from conv import Recorder

    from speko_sync import AgentState, BufferAudio, Conversation, MessageSource, Mode

    audio = BufferAudio()
    rec = Recorder()
    with Conversation(worker_server.token("caller", "conv-real"), worker_server.url, audio=audio,
                      **rec.callbacks()) as conv:
        greeting = rec.wait_for("message", lambda m: m.source == MessageSource.AGENT and m.is_final, timeout=30)
        assert greeting.text == GREETING and greeting.segment_id and greeting.started_at
        def quiet_after(speaking_turns: int) -> bool:
            states = rec.of("agent_state_changed")
            return states[-1] == AgentState.LISTENING and states.count(AgentState.SPEAKING) >= speaking_turns

        rec.wait_for("agent_state_changed", lambda _: quiet_after(1), timeout=20)
        assert Mode.SPEAKING in rec.of("mode_changed") and conv.mode == Mode.LISTENING

        conv.send_chat_message("what is the weather")
        rec.wait_for("message", lambda m: m.is_final and m.text == "It is always sunny here.", timeout=30)
        rec.wait_for("agent_state_changed", lambda _: quiet_after(2), timeout=20)
        states = rec.of("agent_state_changed")
        turn = [AgentState.LISTENING, AgentState.THINKING, AgentState.SPEAKING, AgentState.LISTENING]
        assert any(states[i:i + 4] == turn for i in range(len(states))), states  # a typed turn, in order
        assert all(a != b for a, b in itertools.pairwise(states))  # changes only

        silence = np.zeros(RATE // 2, dtype=np.int16)
        audio.feed(np.concatenate([silence, espeak("what is the weather"), silence, silence, silence]))
        spoken = rec.wait_for("message", lambda m: m.source == MessageSource.USER and m.is_final
                              and m.segment_id is not None, timeout=30)
        assert spoken.text
        rec.wait_for("transcript", lambda t: len(t) == 5 and t[-1].is_final, timeout=30)
        turns = conv.transcript()
        assert [m.source for m in turns] == [MessageSource.AGENT, MessageSource.USER, MessageSource.AGENT,
                                             MessageSource.USER, MessageSource.AGENT]
        assert turns[1].text == "what is the weather" and turns[2].text == "It is always sunny here.", turns
        started = [m.started_at for m in turns]
        assert started == sorted(started)  # type: ignore[type-var]
        assert rec.of("error") == []
        updates = [(m.source, m.segment_id, m.text, m.is_final) for m in rec.of("message")]
        assert len(updates) == len(set(updates))  # each update once, by whichever path came first
        assert np.abs(audio.played()).max() > 3000  # and the agent was heard, not only read


def test_text_only_conversation_with_the_real_worker(worker_server: LocalServer) -> None:
    from conv import Recorder

    from speko_sync import BufferAudio, Conversation, MessageSource

    audio = BufferAudio()
    rec = Recorder()
    with Conversation(worker_server.token("typist", "text-real"), worker_server.url, audio=audio,
                      microphone=False, **rec.callbacks()) as conv:
        rec.wait_for("message", lambda m: m.source == MessageSource.AGENT and m.is_final, timeout=30)
        conv.send_chat_message("tell me a story")
        rec.wait_for("message", lambda m: m.is_final and m.text == "You said: tell me a story.", timeout=30)
        assert np.abs(audio.played()).max() > 3000  # the agent's audio still plays
        assert [m.source for m in conv.transcript()] == [MessageSource.AGENT, MessageSource.USER,
                                                         MessageSource.AGENT]
        assert worker_server.participant_info("text-real", "typist").tracks == []  # no microphone
