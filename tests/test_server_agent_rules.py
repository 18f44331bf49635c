"""What LiveKit Agents workers need from the server, proved with the real
livekit.rtc client over WebRTC: own attributes (``set_attributes``), the
publisher's ``TrackSubscribed``, participant info from the token, legacy
transcriptions from agents only, and text streams published on a user's behalf."""

from __future__ import annotations

import asyncio

import pytest
from livekit import rtc
from lk import Mic, connect, run

from speko_sync.testing import LocalServer

pytestmark = pytest.mark.webrtc


def agent_token(server: LocalServer, identity: str, room: str) -> str:
    return server.token(identity, room, kind="agent", agent=True, can_update_own_metadata=True,
                        attributes={"lk.agent.name": "speko"})


def test_set_attributes_reaches_everyone_and_the_sender(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        user, _ = await connect(speko_server, "user", "attrs")
        agent, _ = await connect(speko_server, "agent", "attrs", token=agent_token(speko_server, "agent", "attrs"))
        changes: list[dict[str, str]] = []
        user.on("participant_attributes_changed", lambda changed, p: changes.append(dict(changed)))
        mine = asyncio.Event()
        agent.on("participant_attributes_changed",
                 lambda changed, p: mine.set() if p.identity == "agent" else None)
        remote = user.remote_participants["agent"]
        assert remote.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        assert remote.attributes == {"lk.agent.name": "speko"}  # from the token

        await asyncio.wait_for(agent.local_participant.set_attributes({"lk.agent.state": "listening"}), 3)
        await asyncio.wait_for(mine.wait(), 5)
        assert agent.local_participant.attributes["lk.agent.state"] == "listening"
        deadline = asyncio.get_running_loop().time() + 5
        while remote.attributes.get("lk.agent.state") != "listening":
            assert asyncio.get_running_loop().time() < deadline, remote.attributes
            await asyncio.sleep(0.02)
        assert {"lk.agent.state": "listening"} in changes

        # a plain token may not: the request is refused at once, nothing changes
        await asyncio.wait_for(user.local_participant.set_attributes({"hack": "1"}), 3)
        await asyncio.wait_for(agent.local_participant.set_attributes({"lk.agent.state": "speaking"}), 3)
        while remote.attributes.get("lk.agent.state") != "speaking":
            assert asyncio.get_running_loop().time() < deadline + 5
            await asyncio.sleep(0.02)
        assert "hack" not in agent.remote_participants["user"].attributes
        assert "hack" not in user.local_participant.attributes
        await user.disconnect()
        await agent.disconnect()
    run(scenario())


@pytest.mark.parametrize("single_pc", [True, False], ids=["v1", "v0"])
def test_publisher_learns_its_track_is_subscribed(single_pc: bool) -> None:
    with LocalServer(single_pc=single_pc) as server:
        async def scenario() -> None:
            alice, _ = await connect(server, "alice", "sub")
            mic = await Mic(alice).publish()
            assert mic.publication is not None
            subscribed = asyncio.ensure_future(mic.publication.wait_for_subscription())
            await asyncio.sleep(0)
            assert not subscribed.done()  # nobody listens yet
            bob, bob_ev = await connect(server, "bob", "sub")
            await bob_ev.wait_for("track_subscribed")
            await asyncio.wait_for(subscribed, 10)
            await alice.disconnect()
            await bob.disconnect()
        run(scenario())


def test_agent_publishing_waits_for_a_subscriber_then_plays(speko_server: LocalServer) -> None:
    """What LiveKit Agents' audio output does before its first frame."""
    async def scenario() -> None:
        agent, _ = await connect(speko_server, "agent", "wait", token=agent_token(speko_server, "agent", "wait"))
        mic = await Mic(agent).publish()
        assert mic.publication is not None
        user, user_ev = await connect(speko_server, "user", "wait")
        await asyncio.wait_for(mic.publication.wait_for_subscription(), 10)
        await user_ev.wait_for("track_subscribed")
        await agent.disconnect()
        await user.disconnect()
    run(scenario())


def test_legacy_transcriptions_only_from_agents(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        user, user_ev = await connect(speko_server, "user", "tx")
        agent, _ = await connect(speko_server, "agent", "tx", token=agent_token(speko_server, "agent", "tx"))
        other, _ = await connect(speko_server, "other", "tx")
        user_mic = await Mic(user).publish()
        assert user_mic.publication is not None
        got: list[tuple[str, str | None, str | None]] = []
        done = asyncio.Event()

        def on_tx(segments: list[rtc.TranscriptionSegment], who: rtc.Participant | None,
                  pub: rtc.TrackPublication | None) -> None:
            got.append((segments[0].text, who.identity if who else None, pub.sid if pub else None))
            done.set()
        user.on("transcription_received", on_tx)
        forged = rtc.Transcription(participant_identity="other", track_sid="TR_forged",
                                   segments=[rtc.TranscriptionSegment(id="f", text="forged", start_time=0,
                                                                      end_time=0, language="en", final=True)])
        await other.local_participant.publish_transcription(forged)
        await other.local_participant.publish_data(b"marker", topic="marker")
        await user_ev.wait_for("data_received", lambda p: p.topic == "marker")
        assert got == []  # a standard participant's transcription was dropped
        real = rtc.Transcription(participant_identity="user", track_sid=user_mic.publication.sid,
                                 segments=[rtc.TranscriptionSegment(id="s1", text="hello there", start_time=0,
                                                                    end_time=0, language="en", final=True)])
        await agent.local_participant.publish_transcription(real)
        await asyncio.wait_for(done.wait(), 5)
        assert got == [("hello there", "user", user_mic.publication.sid)]
        for room in (user, agent, other):
            await room.disconnect()
    run(scenario())


def test_agent_text_stream_on_behalf_of_the_user(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        user, _ = await connect(speko_server, "user", "streams")
        agent, _ = await connect(speko_server, "agent", "streams",
                                 token=agent_token(speko_server, "agent", "streams"))
        other, _ = await connect(speko_server, "other", "streams")
        received: asyncio.Queue[tuple[str, str, dict[str, str]]] = asyncio.Queue()
        readers: list[asyncio.Task[None]] = []

        def on_stream(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                text = await reader.read_all()
                await received.put((sender, text, dict(reader.info.attributes or {})))
            readers.append(asyncio.ensure_future(read()))
        other.register_text_stream_handler("lk.transcription", on_stream)
        attrs = {"lk.segment_id": "SG_1", "lk.transcription_final": "true"}
        writer = await agent.local_participant.stream_text(topic="lk.transcription", sender_identity="user",
                                                           attributes=attrs)
        await writer.write("what the user said")
        await writer.aclose()
        sender, text, got_attrs = await asyncio.wait_for(received.get(), 5)
        assert (sender, text) == ("user", "what the user said") and got_attrs == attrs
        # a standard participant cannot speak for another
        writer = await user.local_participant.stream_text(topic="lk.transcription", sender_identity="agent")
        await writer.write("forged")
        await writer.aclose()
        sender, text, _ = await asyncio.wait_for(received.get(), 5)
        assert (sender, text) == ("user", "forged")
        for room in (user, agent, other):
            await room.disconnect()
    run(scenario())


@pytest.mark.parametrize("single_pc", [True, False], ids=["v1", "v0"])
def test_client_info_and_token_attributes_reach_participant_info(single_pc: bool) -> None:
    """LiveKit Agents reads ``client_protocol`` to choose its transcript format."""
    with LocalServer(single_pc=single_pc) as server:
        async def scenario() -> None:
            token = server.token("user", "info", attributes={"tier": "gold"})
            room, _ = await connect(server, "user", "info", token=token)
            info = await asyncio.to_thread(server.participant_info, "info", "user")
            assert info is not None
            assert dict(info.attributes) == {"tier": "gold"}
            assert info.client_protocol >= 1  # the Rust SDK reports its data-stream level
            assert info.permission.can_publish_data and not info.permission.can_update_metadata
            assert await asyncio.to_thread(server.participant_info, "info", "nobody") is None
            await room.disconnect()
        run(scenario())
