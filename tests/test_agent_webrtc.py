"""The scripted agent's JSON-packet behaviour (``protocol="json"``), seen through
the raw livekit.rtc client. Its native protocol: test_agent_native_protocol.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from lk import RATE, Ear, Mic, connect, dominant_frequency, run

from speko_sync.testing import LocalServer, ScriptedAgent, tone

pytestmark = [pytest.mark.webrtc, pytest.mark.speko_agent(protocol="json")]


def send(room, message: dict) -> asyncio.Future:  # type: ignore[no-untyped-def, type-arg]
    return room.local_participant.publish_data(json.dumps(message).encode(), reliable=True)


def test_default_greeting_with_a_tone(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "user", speko_agent.room)
        (track, _, who) = await ev.wait_for("track_subscribed")
        assert who.identity == speko_agent.identity
        ear = Ear(track)
        (packet,) = await ev.wait_for("data_received")
        assert json.loads(packet.data) == {"type": "agent_message", "text": speko_agent.greeting}
        await ear.wait_for_sound(speko_agent.greeting_tone_hz)
        await ear.close()
        await room.disconnect()
    run(scenario())
    assert speko_agent.greeted == ["user"]


def test_overrides_are_remembered_and_first_message_greets(speko_server: LocalServer,
                                                           speko_agent: ScriptedAgent) -> None:
    overrides = {"agent": {"prompt": "Be brief.", "firstMessage": "Ahoy!", "language": "en"},
                 "tts": {"voiceId": "v1", "speed": 1.1}}

    async def scenario() -> None:
        room, ev = await connect(speko_server, "user", speko_agent.room)
        await send(room, {"type": "overrides", "overrides": overrides})
        (packet,) = await ev.wait_for("data_received")
        assert json.loads(packet.data) == {"type": "agent_message", "text": "Ahoy!"}
        await room.disconnect()
    run(scenario())
    assert speko_agent.overrides == overrides
    first = speko_agent.packets()[0]
    assert first.type == "overrides" and first.sender == "user" and json.loads(first.raw) == first.data


@pytest.mark.speko_agent(greeting=None)
def test_user_message_is_echoed_and_answered(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "user", speko_agent.room)
        await send(room, {"type": "user_message", "text": "what time is it?"})
        await ev.wait_for("data_received", lambda p: len(ev.of("data_received")) >= 2)
        assert [d for _, d in ev.data()] == [
            {"type": "user_message_echo", "text": "what time is it?"},
            {"type": "agent_message", "text": 'You said: "what time is it?"'},
        ]
        await room.disconnect()
    run(scenario())


@pytest.mark.speko_agent(greeting=None)
def test_contextual_updates_and_malformed_packets_are_recorded(speko_server: LocalServer,
                                                               speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _ = await connect(speko_server, "user", speko_agent.room)
        await send(room, {"type": "contextual_update", "text": "user opened the cart"})
        await room.local_participant.publish_data(b"\xff not json")
        await room.local_participant.publish_data(b"[1, 2]")
        await asyncio.to_thread(speko_agent.wait_for_packet, lambda p: p.raw == b"[1, 2]")
        await room.disconnect()
    run(scenario())
    assert speko_agent.contextual_updates == ["user opened the cart"]
    packets = speko_agent.packets()
    assert [p.valid for p in packets] == [True, False, False]
    assert packets[1].raw == b"\xff not json" and packets[1].data == {}


@pytest.mark.speko_agent(greeting=None)
def test_utterance_gives_partial_then_final_transcript(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "user", speko_agent.room)
        mic = await Mic(room).publish()
        await mic.silence_until(lambda: len(speko_agent.received_audio("user")) > 0)  # the whole tone is heard
        await mic.play(np.concatenate([np.zeros(RATE // 5, np.int16), tone(300, 1.0, 0.4),
                                       np.zeros(RATE, np.int16)]))
        await ev.wait_for("data_received", lambda p: b"agent_message" in p.data)
        transcripts = [d for _, d in ev.data() if d["type"] == "transcript"]
        assert [t["isFinal"] for t in transcripts] == [False, True]
        assert all(t["source"] == "user" for t in transcripts)
        await room.disconnect()
    run(scenario())
    assert len(speko_agent.utterances) == 1
    assert 0.8 <= speko_agent.utterances[0] <= 1.2
    heard = speko_agent.received_audio("user")
    loud = heard[np.abs(heard) > 3000]
    assert len(loud) > 0
    assert abs(dominant_frequency(heard[np.argmax(np.abs(heard) > 3000):][:RATE // 2]) - 300) < 10


@pytest.mark.speko_agent(greeting=None)
def test_agent_sees_client_mute(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _ = await connect(speko_server, "user", speko_agent.room)
        assert speko_agent.client_muted is None
        mic = await Mic(room).publish()
        await asyncio.to_thread(speko_agent.wait_for, lambda: speko_agent.client_muted is False)
        mic.track.mute()
        await asyncio.to_thread(speko_agent.wait_for, lambda: speko_agent.client_muted is True)
        mic.track.unmute()
        await asyncio.to_thread(speko_agent.wait_for, lambda: speko_agent.client_muted is False)
        await room.disconnect()
    run(scenario())


@pytest.mark.speko_agent(greeting=None)
def test_say_accepts_float_audio_at_other_rates(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "user", speko_agent.room)
        (track, _, _) = await ev.wait_for("track_subscribed")
        ear = Ear(track)
        t = np.arange(16000 * 2) / 16000
        await asyncio.to_thread(speko_agent.say, 0.3 * np.sin(2 * np.pi * 700 * t), 16000)
        await ear.wait_for_sound(700)
        await ear.close()
        await room.disconnect()
    run(scenario())


@pytest.mark.speko_agent(greeting=None)
def test_kick_by_name_or_value(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    from livekit import rtc

    async def scenario() -> None:
        _, ev1 = await connect(speko_server, "one", speko_agent.room)
        _, ev2 = await connect(speko_server, "two", speko_agent.room)
        assert await asyncio.to_thread(speko_agent.kick, "ROOM_CLOSED", "one") == 1
        assert (await ev1.wait_for("disconnected")) == (rtc.DisconnectReason.ROOM_CLOSED,)
        assert await asyncio.to_thread(speko_agent.kick, int(rtc.DisconnectReason.PARTICIPANT_REMOVED)) == 1
        assert (await ev2.wait_for("disconnected")) == (rtc.DisconnectReason.PARTICIPANT_REMOVED,)
    run(scenario())
    with pytest.raises(ValueError, match="unknown DisconnectReason 'NOPE'"):
        speko_agent.kick("NOPE")


def test_agent_leaving_is_seen(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        _, ev = await connect(speko_server, "user", speko_agent.room)
        await ev.wait_for("track_subscribed")
        await asyncio.to_thread(speko_agent.leave)
        (who,) = await ev.wait_for("participant_disconnected")
        assert who.identity == speko_agent.identity
    run(scenario())


@pytest.mark.speko_server(default_agent=lambda server, room: server.add_agent(room, protocol="json"))
def test_default_agent_in_every_new_room(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        for room_name in ("first", "second"):
            room, ev = await connect(speko_server, "user", room_name)
            (p,) = await ev.wait_for("participant_connected")
            assert p.identity == "agent"
            await ev.wait_for("data_received")  # the greeting
            await room.disconnect()
    run(scenario())
    assert sorted(a.room for a in speko_server.agents) == ["first", "second"]


def test_subclass_overrides_behaviour(speko_server: LocalServer) -> None:
    class Parrot(ScriptedAgent):
        def on_user_message(self, text: str, sender: str) -> None:
            self.send({"type": "agent_message", "text": text.upper()})

    agent = speko_server.add_agent("parrot", agent_class=Parrot, greeting=None, protocol="json")

    async def scenario() -> None:
        room, ev = await connect(speko_server, "user", "parrot")
        await send(room, {"type": "user_message", "text": "polly"})
        (packet,) = await ev.wait_for("data_received")
        assert json.loads(packet.data) == {"type": "agent_message", "text": "POLLY"}
        await room.disconnect()
    run(scenario())
    assert isinstance(agent, Parrot)


def test_mixed_room_two_clients_one_agent(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        rooms, mics = [], []
        for identity, freq in (("low", 350), ("high", 950)):
            room, ev = await connect(speko_server, identity, speko_agent.room)
            mic = await Mic(room).publish()
            mic.play_forever(freq)
            rooms.append((room, ev))
            mics.append(mic)
        for _, ev in rooms:
            await ev.wait_for("data_received")  # each client is greeted, and only once
        await asyncio.to_thread(speko_agent.wait_for, lambda: all(
            len(speko_agent.received_audio(i)) > RATE for i in ("low", "high")))
        for mic in mics:
            await mic.stop()
        for room, _ in rooms:
            await room.disconnect()
        assert [len(ev.of("data_received")) for _, ev in rooms] == [1, 1]
    run(scenario())
    assert sorted(speko_agent.greeted) == ["high", "low"]
    for identity, freq in (("low", 350), ("high", 950)):
        assert abs(dominant_frequency(speko_agent.received_audio(identity)[-RATE // 2:]) - freq) < 20
