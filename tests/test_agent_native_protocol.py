"""ScriptedAgent speaking LiveKit Agents' native protocol (here with the JSON packets
too, protocol="both"), heard by the real
livekit.rtc client: ``lk.agent.state``, ``lk.transcription`` streams (the user's on
the user's behalf), legacy transcriptions, typed turns on ``lk.chat``; and the
protocol switch (``both``, ``livekit``, ``json``)."""

from __future__ import annotations

import asyncio

import pytest
from lk import Mic, join_with_agent, run

from speko_sync.testing import LocalServer, ScriptedAgent, tone

pytestmark = [pytest.mark.webrtc, pytest.mark.speko_agent(protocol="both")]

GREETING = "Hello! I'm the local Speko test agent."


def test_greeting_states_and_transcripts_by_both_paths(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, recorder, view, _, agent = await join_with_agent(speko_server, speko_agent.room)
        assert agent.attributes.get("lk.agent.state") in ("listening", "speaking")  # published at join
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await view.wait("listening", lambda: view.states[-1:] == ["listening"] and "speaking" in view.states)
        opened = next(attrs for who, attrs in view.opened if who == "agent")
        assert opened["lk.transcription_final"] == "false"  # final only in the trailer
        assert opened["lk.transcribed_track_id"] in [p.sid for p in agent.track_publications.values()]
        await view.wait("legacy final", lambda: ("agent", GREETING, True) in view.legacy)
        partials = [t for who, t, final in view.legacy if who == "agent" and not final]
        assert partials == [" ".join(GREETING.split()[:i + 1]) for i in range(len(GREETING.split()))]
        (data,) = [d for _, d in recorder.data()]  # and the JSON greeting, once
        assert data == {"type": "agent_message", "text": GREETING}
        await room.disconnect()
    run(scenario())


def test_typed_turn_on_lk_chat_is_answered(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _, view, _, _ = await join_with_agent(speko_server, speko_agent.room)
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await room.local_participant.send_text("how are you", topic="lk.chat")
        await view.wait("answer", lambda: "You said: how are you." in view.final_texts("agent"))
        assert speko_agent.chats == [("user", "how are you")]
        assert view.states.index("thinking") > view.states.index("speaking")
        await room.disconnect()
    run(scenario())


def test_spoken_turn_is_transcribed_on_the_users_behalf(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _, view, _, _ = await join_with_agent(speko_server, speko_agent.room)
        mic = await Mic(room).publish()
        assert mic.publication is not None
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await mic.play(tone(300, 1.0))
        await mic.play(tone(300, 0.6, amplitude=0.0))
        await view.wait("user transcript", lambda: view.final_texts("user"))
        user_streams = [attrs for who, attrs in view.opened if who == "user"]
        assert [a["lk.transcription_final"] for a in user_streams] == ["false", "true"]
        assert len({a["lk.segment_id"] for a in user_streams}) == 1
        assert {a["lk.transcribed_track_id"] for a in user_streams} == {mic.publication.sid}
        assert view.final_texts("user")[0].startswith("[speech, ")
        said = view.final_texts("user")[0]
        await view.wait("legacy user final", lambda: ("user", said, True) in view.legacy)
        await view.wait("reply", lambda: any(t.startswith("I heard ") for t in view.final_texts("agent")))
        await room.disconnect()
    run(scenario())


@pytest.mark.parametrize("protocol", ["livekit", "json"])
def test_one_protocol_only(speko_server: LocalServer, protocol: str) -> None:
    agent = speko_server.add_agent("only", protocol=protocol)

    async def scenario() -> None:
        room, recorder, view, _, remote = await join_with_agent(speko_server, "only")
        if protocol == "livekit":
            await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
            assert recorder.of("data_received") == []
        else:
            await recorder.wait_for("data_received")
            await room.local_participant.send_text("anyone there", topic="lk.chat")
            await room.local_participant.publish_data(b"marker")
            await asyncio.to_thread(agent.wait_for_packet, lambda p: p.raw == b"marker")
            assert view.streams == [] and view.states == [] and agent.chats == []
            assert "lk.agent.state" not in remote.attributes
        await room.disconnect()
    run(scenario())


def test_unknown_protocol_is_refused(speko_server: LocalServer) -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        speko_server.add_agent("bad", protocol="sip")
    with pytest.raises(ValueError, match="agent state"):
        speko_server.add_agent("ok").set_state("dancing")


def test_the_user_sees_state_changes_in_order(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _, view, _, _ = await join_with_agent(speko_server, speko_agent.room)
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await view.wait("listening", lambda: view.states[-1:] == ["listening"])
        await asyncio.to_thread(speko_agent.set_state, "thinking")
        await view.wait("thinking", lambda: view.states[-1:] == ["thinking"])
        await asyncio.to_thread(speko_agent.say_tone, 500, 0.3)
        await view.wait("back to listening", lambda: view.states[-3:] == ["thinking", "speaking", "listening"])
        assert all(a != b for a, b in zip(view.states, view.states[1:], strict=False))  # changes only
        await room.disconnect()
    run(scenario())
