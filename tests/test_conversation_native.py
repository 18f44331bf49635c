"""Conversation and LiveKit Agents' native protocol, against the scripted agent
speaking it (``protocol="livekit"``, the default): transcripts from
``lk.transcription`` streams and legacy packets, the reconciled transcript, the
agent's state and the mode it drives, typed turns over ``lk.chat``. The same
against the real LiveKit Agents worker: test_livekit_agents_worker.py."""

from __future__ import annotations

import numpy as np
import pytest
from conv import Recorder, open_conversation

from speko_sync import AgentState, BufferAudio, ErrorCode, MessageSource, Mode, SpekoClientError
from speko_sync.testing import LocalServer, ScriptedAgent, tone

pytestmark = pytest.mark.webrtc

GREETING = "Hello! I'm the local Speko test agent."


def test_greeting_gives_transcript_agent_state_and_mode(speko_server: LocalServer,
                                                        speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec) as conv:
        final = rec.wait_for("message", lambda m: m.is_final)
        assert (final.source, final.text) == (MessageSource.AGENT, GREETING)
        assert final.segment_id and final.started_at is not None
        partials = [m for m in rec.of("message") if not m.is_final]
        assert partials and all(m.segment_id == final.segment_id for m in partials)
        assert all(m.started_at == final.started_at for m in partials)  # when the segment began
        # each update once, though it came both as a stream and as a legacy packet
        updates = [(m.text, m.is_final) for m in rec.of("message")]
        assert len(updates) == len(set(updates))
        assert [m.text for m in partials] == sorted((m.text for m in partials), key=len)
        rec.wait_for("agent_state_changed", lambda _: rec.of("agent_state_changed")[-1] == AgentState.LISTENING
                     and AgentState.SPEAKING in rec.of("agent_state_changed"))
        states = rec.of("agent_state_changed")
        assert states[-2:] == [AgentState.SPEAKING, AgentState.LISTENING]
        assert conv.agent_state == AgentState.LISTENING
        # mode follows the agent's own state
        rec.wait_for("mode_changed", lambda m: m == Mode.LISTENING)
        assert rec.of("mode_changed") == [Mode.SPEAKING, Mode.LISTENING]
        transcript = rec.wait_for("transcript", lambda t: t and t[-1].is_final)
        assert [(m.source, m.text) for m in transcript] == [(MessageSource.AGENT, GREETING)]
        assert conv.transcript() == transcript
        assert rec.of("error") == []


def test_chat_message_is_a_turn_the_agent_answers(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec) as conv:
        rec.wait_for("message", lambda m: m.is_final)
        conv.send_chat_message("how are you")
        answer = rec.wait_for("message", lambda m: m.is_final and m.text.startswith("You said"))
        assert answer.text == "You said: how are you."
        assert speko_agent.chats == [("user", "how are you")]
        assert AgentState.THINKING in rec.of("agent_state_changed")
        turns = rec.wait_for("transcript", lambda t: len(t) == 3 and t[-1].is_final)
        # the typed turn is the user's, between the greeting and the answer
        assert [(m.source, m.text) for m in turns] == [
            (MessageSource.AGENT, GREETING), (MessageSource.USER, "how are you"),
            (MessageSource.AGENT, "You said: how are you.")]
        assert conv.transcript() == turns
        with pytest.raises(TypeError):
            conv.send_chat_message(b"bytes")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            conv.send_chat_message("   ")
    with pytest.raises(SpekoClientError) as err:
        conv.send_chat_message("too late")
    assert err.value.code == ErrorCode.NOT_CONNECTED


@pytest.mark.speko_agent(greeting=None)
def test_spoken_turn_is_the_users_in_the_transcript(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    quiet = np.zeros(24000, dtype=np.int16)
    audio = BufferAudio(np.concatenate([quiet, tone(300, 1.0, 0.4), quiet, quiet]))
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec, audio=audio):
        user = rec.wait_for("message", lambda m: m.source == MessageSource.USER and m.is_final, timeout=15)
        assert user.text.startswith("[speech, ") and user.segment_id
        user_updates = [m for m in rec.of("message") if m.source == MessageSource.USER]
        assert [m.is_final for m in user_updates] == [False, True]
        assert len({m.segment_id for m in user_updates}) == 1
        reply = rec.wait_for("message", lambda m: m.source == MessageSource.AGENT and m.is_final, timeout=15)
        assert reply.text.startswith("I heard ")
        transcript = rec.wait_for("transcript", lambda t: len(t) == 2 and t[-1].is_final)
        assert [m.source for m in transcript] == [MessageSource.USER, MessageSource.AGENT]
        assert transcript[0].started_at <= transcript[1].started_at  # type: ignore[operator]


def test_json_and_native_agents_both_reach_on_message(speko_server: LocalServer) -> None:
    for protocol in ("json", "livekit"):
        agent = speko_server.add_agent(f"proto-{protocol}", protocol=protocol)
        rec = Recorder()
        with open_conversation(speko_server, agent, rec):
            final = rec.wait_for("message", lambda m: m.is_final)
            assert final.text == GREETING
            assert (final.segment_id is None) == (protocol == "json")


def test_text_only_session_publishes_no_microphone(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    audio = BufferAudio(tone(300, 1.0, 0.4))  # would be heard, were there a microphone
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec, audio=audio, microphone=False) as conv:
        rec.wait_for("message", lambda m: m.is_final)  # greeted: the agent's audio plays
        assert audio.wait_for_played(0.5, timeout=10)
        assert np.abs(audio.played()).max() > 3000
        conv.send_chat_message("typing only")
        rec.wait_for("message", lambda m: m.is_final and m.text == "You said: typing only.")
        assert speko_agent.is_muted("user") is None  # it never saw a microphone track
        assert speko_agent.utterances == [] and len(speko_agent.received_audio("user")) == 0
        conv.set_mic_muted(True)  # nothing to mute: accepted
        assert conv.stats().frames_captured >= 0
    with pytest.raises(TypeError, match="microphone"):
        open_conversation(speko_server, speko_agent, microphone="no")  # type: ignore[arg-type]
