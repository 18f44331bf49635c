"""The local server against the real livekit.rtc client over real WebRTC."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc
from livekit.protocol import models
from lk import RATE, Ear, Mic, connect, dominant_frequency, run

from speko_sync.testing import LocalServer
from speko_sync.testing._client import RemoteClient

pytestmark = pytest.mark.webrtc


def test_two_clients_hear_each_other(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        alice, alice_events = await connect(speko_server, "alice", "duo")
        bob, bob_events = await connect(speko_server, "bob", "duo")
        alice_mic = await Mic(alice).publish()
        bob_mic = await Mic(bob).publish()
        alice_mic.play_forever(440)
        bob_mic.play_forever(1320)
        (track_at_bob, _, who) = await bob_events.wait_for("track_subscribed")
        assert who.identity == "alice"
        (track_at_alice, _, who) = await alice_events.wait_for("track_subscribed")
        assert who.identity == "bob"
        bob_ear, alice_ear = Ear(track_at_bob), Ear(track_at_alice)
        await bob_ear.wait_for_sound(440)
        await alice_ear.wait_for_sound(1320)
        for thing in (bob_ear, alice_ear, alice_mic, bob_mic):
            await thing.close() if isinstance(thing, Ear) else await thing.stop()
        await alice.disconnect()
        await bob.disconnect()
    run(scenario())


def test_data_to_everyone_and_to_one_destination(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        a, a_ev = await connect(speko_server, "a", "data")
        b, b_ev = await connect(speko_server, "b", "data")
        c, c_ev = await connect(speko_server, "c", "data")
        await a_ev.wait_for("participant_connected", lambda p: p.identity == "c")
        await a.local_participant.publish_data(b'{"n": 1}', reliable=True)
        await a.local_participant.publish_data(b'{"n": 2}', reliable=True, destination_identities=["b"])
        await a.local_participant.publish_data(b'{"n": 3}', reliable=False, topic="lossy")
        await b.local_participant.publish_data(b'{"n": 4}', reliable=True)
        await b_ev.wait_for("data_received", lambda p: p.data == b'{"n": 3}')
        await c_ev.wait_for("data_received", lambda p: p.data == b'{"n": 3}')  # lossy: any order
        await c_ev.wait_for("data_received", lambda p: p.data == b'{"n": 4}')
        await a_ev.wait_for("data_received", lambda p: p.data == b'{"n": 4}')
        # reliable packets are ordered, so c would have seen n=2 before n=4 had it been sent to c
        got_by_c = [d["n"] for _, d in c_ev.data()]
        assert sorted(got_by_c) == [1, 3, 4] and got_by_c.index(1) < got_by_c.index(4)
        assert {"n": 2} in [d for _, d in b_ev.data()]
        assert all(sender == "a" for sender, d in b_ev.data() if d["n"] in (1, 2, 3))
        assert a_ev.data() == [("b", {"n": 4})]
        lossy = next(p for (p,) in b_ev.of("data_received") if p.data == b'{"n": 3}')
        assert lossy.topic == "lossy" and lossy.kind == rtc.DataPacketKind.KIND_LOSSY
        for room in (a, b, c):
            await room.disconnect()
    run(scenario())


def test_rpc_goes_to_its_destination_only_and_an_unknown_one_times_out(
        speko_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """perform_rpc / register_rpc_method between real clients, as through
    livekit-server: the request (a text stream on lk.rpc_request between these
    clients, which advertise client protocol 2), the ack and the response
    reach only the two ends; nobody answers for an identity not in the room."""
    delivered: list[tuple[str, str, str]] = []  # (receiver, packet kind, stream topic)
    forward = RemoteClient.on_data

    def spy(self: RemoteClient, packet: models.DataPacket) -> None:
        which = packet.WhichOneof("value") or ""
        topic = packet.stream_header.topic if which == "stream_header" else ""
        delivered.append((self.identity, which, topic))
        forward(self, packet)
    monkeypatch.setattr(RemoteClient, "on_data", spy)

    async def scenario() -> None:
        alice, alice_ev = await connect(speko_server, "alice", "rpc")
        bob, _ = await connect(speko_server, "bob", "rpc")
        carol, _ = await connect(speko_server, "carol", "rpc")
        await alice_ev.wait_for("participant_connected", lambda p: p.identity == "carol")
        calls: list[tuple[str, str, str]] = []

        def handler_of(who: str):  # type: ignore[no-untyped-def]
            async def handler(data: rtc.RpcInvocationData) -> str:
                calls.append((who, data.caller_identity, data.payload))
                if data.payload == "fail":
                    raise rtc.RpcError(1500, "light is broken", "bulb")
                return f"{who} got {data.payload}"
            return handler
        bob.local_participant.register_rpc_method("set_light", handler_of("bob"))
        carol.local_participant.register_rpc_method("set_light", handler_of("carol"))
        answer = await alice.local_participant.perform_rpc(destination_identity="bob", method="set_light",
                                                           payload='{"on": true}')
        assert answer == 'bob got {"on": true}'
        with pytest.raises(rtc.RpcError) as failed:
            await alice.local_participant.perform_rpc(destination_identity="bob", method="set_light",
                                                      payload="fail")
        assert (failed.value.code, failed.value.message, failed.value.data) == (1500, "light is broken", "bulb")
        with pytest.raises(rtc.RpcError) as unknown:
            await alice.local_participant.perform_rpc(destination_identity="bob", method="nope", payload="")
        assert unknown.value.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD
        started = asyncio.get_running_loop().time()
        with pytest.raises(rtc.RpcError) as nobody:
            await alice.local_participant.perform_rpc(destination_identity="dave", method="set_light",
                                                      payload="", max_round_trip_latency=1.0)
        assert nobody.value.code == rtc.RpcError.ErrorCode.CONNECTION_TIMEOUT  # no ack came
        assert 0.9 < asyncio.get_running_loop().time() - started < 5
        assert calls == [("bob", "alice", '{"on": true}'), ("bob", "alice", "fail")]
        rpc = [d for d in delivered if d[1].startswith("rpc_") or d[2].startswith("lk.rpc_")]
        assert {who for who, _, _ in rpc} == {"alice", "bob"}  # carol never saw any of it
        assert ("bob", "stream_header", "lk.rpc_request") in rpc and ("alice", "rpc_ack", "") in rpc
        assert ("alice", "stream_header", "lk.rpc_response") in rpc and ("alice", "rpc_response", "") in rpc
        for room in (alice, bob, carol):
            await room.disconnect()
    run(scenario())


def test_participant_and_track_events(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        watcher, ev = await connect(speko_server, "watcher", "events")
        actor, _ = await connect(speko_server, "actor", "events")
        (p,) = await ev.wait_for("participant_connected")
        assert p.identity == "actor"
        mic = await Mic(actor).publish()
        assert mic.publication is not None
        await ev.wait_for("track_published", lambda pub, who: pub.sid == mic.publication.sid)
        await ev.wait_for("track_subscribed")
        mic.publication.track.mute()  # type: ignore[union-attr]
        await ev.wait_for("track_muted", lambda who, pub: pub.sid == mic.publication.sid)
        mic.publication.track.unmute()  # type: ignore[union-attr]
        await ev.wait_for("track_unmuted", lambda who, pub: pub.sid == mic.publication.sid)
        await actor.local_participant.unpublish_track(mic.publication.sid)
        await ev.wait_for("track_unpublished", lambda pub, who: pub.sid == mic.publication.sid)
        await actor.disconnect()
        (gone,) = await ev.wait_for("participant_disconnected")
        assert gone.identity == "actor"
        assert "actor" not in watcher.remote_participants
        await watcher.disconnect()
    run(scenario())


def test_connection_states_and_client_leave(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "solo", "states")
        assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED
        assert speko_server.participants("states") == ["solo"]
        await room.disconnect()
        assert room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED
        states = [s for (s,) in ev.of("connection_state_changed")]
        assert states[-1] == rtc.ConnectionState.CONN_DISCONNECTED
        # the SDK does not always emit "disconnected" for its own disconnect(); when it does,
        # the reason is the client's
        assert all(reason == rtc.DisconnectReason.CLIENT_INITIATED for (reason,) in ev.of("disconnected"))

    run(scenario())
    deadline = time.monotonic() + 5
    while speko_server.participants("states") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert speko_server.participants("states") == []


@pytest.mark.parametrize("reason", ["PARTICIPANT_REMOVED", "ROOM_DELETED", "ROOM_CLOSED", "SERVER_SHUTDOWN"])
def test_server_leave_reasons_reach_the_client(speko_server: LocalServer, reason: str) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "kicked", "kick")
        await asyncio.to_thread(speko_server.remove_participant, "kick", "kicked", reason)
        (got,) = await ev.wait_for("disconnected")
        assert got == getattr(rtc.DisconnectReason, reason)
        assert room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED
    run(scenario())


def test_delete_room_disconnects_with_room_deleted(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        _, ev = await connect(speko_server, "x", "doomed")
        await asyncio.to_thread(speko_server.delete_room, "doomed")
        (got,) = await ev.wait_for("disconnected")
        assert got == rtc.DisconnectReason.ROOM_DELETED
    run(scenario())


@pytest.mark.speko_server(auto_create_rooms=False)
@pytest.mark.parametrize("fault", ["expired", "wrong_secret", "wrong_room", "no_grant", "not_yet_valid"])
def test_bad_tokens_are_refused_with_the_reason(speko_server: LocalServer, fault: str) -> None:
    speko_server.create_room("open")
    stranger = LocalServer(api_secret="another-secret-of-at-least-32-bytes!")
    tokens = {
        "expired": (speko_server.token("u", "open", ttl=-60), "expired"),
        "wrong_secret": (stranger.token("u", "open"), "signature"),
        "wrong_room": (speko_server.token("u", "no-such-room"), "does not exist"),
        "no_grant": (speko_server.token("u", "open", room_join=False), "roomJoin"),
        "not_yet_valid": (speko_server.token("u", "open", not_before=time.time() + 600), "nbf"),
    }
    token, reason = tokens[fault]

    async def scenario() -> None:
        room = rtc.Room()
        started = time.monotonic()
        with pytest.raises(rtc.ConnectError) as err:
            await room.connect(speko_server.url, token)
        assert reason in str(err.value)
        assert time.monotonic() - started < 5.0  # refused at once, no retries
    run(scenario())
    assert speko_server.stats()["auth_refused"] >= 1
    assert speko_server.stats().get("joins", 0) == 0


@pytest.mark.speko_server(single_pc=False)
def test_classic_two_connection_path(speko_server: LocalServer) -> None:
    agent = speko_server.add_agent("v0", greeting=None)

    async def scenario() -> None:
        room, ev = await connect(speko_server, "old", "v0")
        (track, _, who) = await ev.wait_for("track_subscribed")
        assert who.identity == "agent"
        ear = Ear(track)
        mic = await Mic(room).publish()
        mic.play_forever(660)
        await asyncio.to_thread(agent.say_tone, 880, 2.0)
        await ear.wait_for_sound(880)
        await asyncio.to_thread(agent.wait_for, lambda: len(agent.received_audio("old")) > RATE)
        await room.local_participant.publish_data(b'{"type": "contextual_update", "text": "v0"}')
        await asyncio.to_thread(agent.wait_for, lambda: agent.contextual_updates == ["v0"])
        await asyncio.to_thread(agent.send, {"type": "agent_message", "text": "down"})
        await ev.wait_for("data_received", lambda p: b"down" in p.data)
        await mic.stop()
        await ear.close()
        await room.disconnect()
    run(scenario())
    heard = agent.received_audio("old")
    assert abs(dominant_frequency(heard[-RATE // 2:]) - 660) < 20


def test_single_pc_path_is_used_by_default(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _ = await connect(speko_server, "new", "v1")
        await room.disconnect()
    run(scenario())
    assert speko_server.stats()["joins_v1"] == 1
    assert speko_server.stats().get("joins_v0", 0) == 0


def test_video_publish_is_refused_cleanly(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _ = await connect(speko_server, "cam", "video")
        source = rtc.VideoSource(64, 64)
        track = rtc.LocalVideoTrack.create_video_track("camera", source)
        with pytest.raises(Exception):  # noqa: B017 - the client's own error type varies
            await asyncio.wait_for(room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)), 15)
        # the session is still usable
        mic = await Mic(room).publish()
        assert mic.publication is not None
        await room.disconnect()
    run(scenario())


def test_late_joining_agent_is_seen_and_heard(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "early", "late")
        await Mic(room).publish()
        assert not room.remote_participants
        agent = await asyncio.to_thread(speko_server.add_agent, "late", greeting=None)
        (p,) = await ev.wait_for("participant_connected")
        assert p.identity == "agent" and p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        (track, _, _) = await ev.wait_for("track_subscribed")
        ear = Ear(track)
        await asyncio.to_thread(agent.say_tone, 523, 1.5)
        await ear.wait_for_sound(523)
        await ear.close()
        await room.disconnect()
    run(scenario())


def test_active_speakers_follow_real_audio(speko_server: LocalServer) -> None:
    agent = speko_server.add_agent("speakers", greeting=None)

    async def scenario() -> None:
        room, ev = await connect(speko_server, "talker", "speakers")
        mic = await Mic(room).publish()
        await asyncio.to_thread(agent.say_tone, 440, 1.0)
        await ev.wait_for("active_speakers_changed", lambda s: [p.identity for p in s] == ["agent"])
        await ev.wait_for("active_speakers_changed", lambda s: s == [])
        mic.play_forever(300)
        await ev.wait_for("active_speakers_changed", lambda s: [p.identity for p in s] == ["talker"])
        await mic.stop()
        await ev.wait_for("active_speakers_changed", lambda s: s == [])
        await room.disconnect()
    run(scenario())


def test_dropped_connection_makes_the_client_reconnect(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "fragile", "drop")
        dropped = await asyncio.to_thread(speko_server.drop_connections, "drop")
        assert dropped == 1
        await ev.wait_for("reconnecting")
        await ev.wait_for("reconnected", timeout=20)
        assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED
        await room.disconnect()
    run(scenario())


def test_dropped_connection_with_rejoin_refused_ends_the_session(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        _, ev = await connect(speko_server, "fragile", "drop2")
        await asyncio.to_thread(speko_server.drop_connections, "drop2", refuse_rejoin=True)
        (reason,) = await ev.wait_for("disconnected", timeout=30)
        assert reason == rtc.DisconnectReason.JOIN_FAILURE
    run(scenario())


@pytest.mark.speko_server(ping_interval=1, ping_timeout=2)
def test_unanswered_pings_make_the_client_reconnect(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "pinger", "pings")
        speko_server.pause_pongs(4)
        await ev.wait_for("reconnecting", timeout=10)
        await ev.wait_for("reconnected", timeout=20)
        await room.disconnect()
    run(scenario())


def test_join_delay_makes_connect_wait(speko_server: LocalServer) -> None:
    speko_server.set_join_delay(1.0)

    async def scenario() -> None:
        started = time.monotonic()
        room, _ = await connect(speko_server, "patient", "slow")
        assert time.monotonic() - started >= 1.0
        await room.disconnect()
    run(scenario())


def test_refused_joins_fail_connect(speko_server: LocalServer) -> None:
    speko_server.refuse_joins("maintenance", status=403)

    async def scenario() -> None:
        with pytest.raises(rtc.ConnectError) as err:
            await rtc.Room().connect(speko_server.url, speko_server.token("u", "closed"))
        assert "maintenance" in str(err.value)
    run(scenario())
    speko_server.refuse_joins(None)


def test_packet_flood_arrives_in_order(speko_server: LocalServer) -> None:
    agent = speko_server.add_agent("flood", greeting=None)

    async def scenario() -> None:
        room, ev = await connect(speko_server, "sink", "flood")
        await asyncio.to_thread(agent.wait_for, lambda: "sink" in agent.ready_clients())
        await asyncio.to_thread(agent.flood, 500, b'{"type": "flood"}')
        await ev.wait_for("data_received", lambda p: len(ev.of("data_received")) >= 500, timeout=20)
        assert all(p.participant.identity == "agent" for (p,) in ev.of("data_received"))
        await room.disconnect()
    run(scenario())


def test_server_stop_ends_sessions_with_server_shutdown() -> None:
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    server = LocalServer().start()

    async def scenario() -> None:
        _, ev = await connect(server, "last", "closing")
        await asyncio.to_thread(server.stop)
        (reason,) = await ev.wait_for("disconnected")
        assert reason == rtc.DisconnectReason.SERVER_SHUTDOWN
    try:
        run(scenario())
    finally:
        server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        server.rooms()


@pytest.mark.speko_server(default_agent=True, empty_room_timeout=0.2)
def test_empty_rooms_close_and_their_agents_stop(speko_server: LocalServer) -> None:
    async def scenario() -> None:
        room, ev = await connect(speko_server, "visitor", "transient")
        await ev.wait_for("participant_connected")
        await room.disconnect()
    run(scenario())
    deadline = time.monotonic() + 10
    while "transient" in speko_server.rooms() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "transient" not in speko_server.rooms()
    assert speko_server.agents == []

    async def again() -> None:  # the room comes back, with a new agent
        room, ev = await connect(speko_server, "visitor", "transient")
        (p,) = await ev.wait_for("participant_connected")
        assert p.identity == "agent"
        await room.disconnect()
    run(again())
