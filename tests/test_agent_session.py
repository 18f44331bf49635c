"""The agent's session stream (``lk.agent.session``) through a Conversation,
against the scripted agent (fast; the real worker: test_agent_session_worker.py):
typed events, one agent state with lk.agent.state, agent errors through
on_error, and streams that are malformed, oversized, unknown or not an
agent's, none of which ends the session."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from conv import Recorder, open_conversation
from livekit.protocol.agent_pb import agent_session as pb
from lk import connect, run
from test_runtime import wait_until

from speko_sync import AgentState, Conversation, ErrorCode, Interruption, MessageSource, NullAudio, UserState
from speko_sync.testing import LocalServer, ScriptedAgent

pytestmark = pytest.mark.webrtc


@pytest.mark.speko_agent(session_events=True)
def test_the_scripted_agents_session_stream_gives_turns_with_metrics_and_ask_answers(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec) as conv:
        greeting = rec.wait_for("turn", lambda t: t.source == MessageSource.AGENT)
        assert greeting.metrics is not None and greeting.metrics.started_speaking_at is not None
        reply = conv.ask("hello there", timeout=20)
        assert reply.text == "You said: hello there." and reply.metrics is not None
        assert reply.metrics.llm_node_ttft is not None and reply.first_audio_s is not None
        rec.wait_for("turn", lambda t: t.text == reply.text)
        assert [(t.source, t.text) for t in rec.of("turn")] == [
            (MessageSource.AGENT, greeting.text), (MessageSource.USER, "hello there"),
            (MessageSource.AGENT, "You said: hello there.")]
        assert UserState.SPEAKING in rec.of("user_state_changed")
        states = rec.of("agent_state_changed")
        assert all(a != b for a, b in itertools.pairwise(states))  # both sources, one state
        assert [m.text for m in conv.transcript()] == [greeting.text, "hello there", "You said: hello there."]
        assert conv.stats().session_messages >= 6


def test_without_a_session_stream_ask_completes_on_the_final_text(speko_server: LocalServer,
                                                                   speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec) as conv:
        rec.wait_for("message", lambda m: m.is_final)
        reply = conv.ask("what now", timeout=20)
        assert (reply.text, reply.metrics, reply.turn) == ("You said: what now.", None, None)
        assert conv.user_state is None and rec.of("turn") == [] and conv.stats().session_messages == 0
        with pytest.raises(TimeoutError, match=r"did not complete a turn within 0\.5 s"):
            conv.wait_for_reply(timeout=0.5)  # nobody speaks
        with pytest.raises(ValueError, match="positive number"):
            conv.ask("x", timeout=0)
    from speko_sync import SpekoClientError
    with pytest.raises(SpekoClientError) as err:
        conv.ask("after the end")
    assert err.value.code == ErrorCode.NOT_CONNECTED


@pytest.mark.speko_agent(greeting=None)
def test_events_from_the_stream_and_garbage_beside_them(speko_server: LocalServer,
                                                        speko_agent: ScriptedAgent) -> None:
    E = pb.AgentSessionEvent
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec) as conv:
        speko_agent.wait_for(lambda: "user" in speko_agent.ready_clients())
        speko_agent.send_raw_stream("lk.agent.session", b"\xff\xfe not a protobuf")
        speko_agent.send_raw_stream("lk.agent.session", b"\x00" * (300 * 1024))  # oversized
        speko_agent.send_session_message(pb.AgentSessionMessage(response=pb.SessionResponse(request_id="x")))
        speko_agent.send_session_event(E(eot_prediction=E.EotPrediction(probability=0.9)))
        speko_agent.send_session_event(E(error=E.Error(message="the TTS is down")))
        speko_agent.send_session_event(E(agent_state_changed=E.AgentStateChanged(new_state=pb.AS_THINKING)))
        speko_agent.send_session_event(E(agent_false_interruption=E.AgentFalseInterruption(resumed=True)))
        speko_agent.send_session_event(E(user_state_changed=E.UserStateChanged(new_state=pb.US_AWAY)))
        error = rec.wait_for("error")
        assert error.code == ErrorCode.AGENT_ERROR and "the TTS is down" in error.message
        rec.wait_for("user_state_changed")
        assert conv.user_state == UserState.AWAY
        # lk.agent.state is the agent's state; the stream's account of it is not delivered twice
        assert rec.of("agent_state_changed") == [AgentState.LISTENING]
        assert rec.of("interruption") == [Interruption(is_interruption=False, false_alarm=True, resumed=True)]
        stats = conv.stats()
        assert (stats.session_messages, stats.session_ignored) == (4, 4)
        assert conv.is_open()
        conv.send_chat_message("still here")  # the session goes on
        speko_agent.wait_for(lambda: "still here" in [text for _, text in speko_agent.chats])


def test_only_agents_streams_count_and_an_agent_without_lk_agent_state_drives_the_state_by_its_stream(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    E = pb.AgentSessionEvent
    rec = Recorder()

    async def send(conv: Conversation, identity: str, kind: str, event: pb.AgentSessionEvent) -> None:
        room, _ = await connect(speko_server, identity, "bare", token=speko_server.token(identity, "bare", kind=kind))
        await room.local_participant.send_bytes(pb.AgentSessionMessage(event=event).SerializeToString(),
                                                topic="lk.agent.session", name="AS_1")
        read = conv.stats().session_messages + conv.stats().session_ignored
        await asyncio.to_thread(wait_until, lambda: conv.stats().session_messages + conv.stats().session_ignored
                                > read, 10, "the stream read")  # before its sender leaves
        await room.disconnect()

    with Conversation(speko_server.token("user", "bare"), speko_server.url, audio=NullAudio(),
                      **rec.callbacks()) as conv:
        run(send(conv, "impostor", "", E(error=E.Error(message="fake"))))
        run(send(conv, "bare-agent", "agent", E(agent_state_changed=E.AgentStateChanged(new_state=pb.AS_SPEAKING))))
        rec.wait_for("agent_state_changed", timeout=10)
        assert conv.agent_state == AgentState.SPEAKING and rec.of("error") == []
        stats = conv.stats()
        assert (stats.session_messages, stats.session_ignored) == (1, 1)
