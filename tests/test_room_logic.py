"""Room switchboard rules without sockets: data routing and speaker detection."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from livekit.protocol import models, rtc

from speko_sync.testing import disconnect_reason
from speko_sync.testing._media import _QUEUE_FRAMES, FRAME_SAMPLES, Fanout, PacedSource, mono_to_frame
from speko_sync.testing._room import _HANGOVER_TICKS, SPEAKING_LEVEL, Participant, PublishedTrack, Room


class Probe(Participant):
    def __init__(self, room: Room, identity: str, **options: Any) -> None:
        super().__init__(room, identity, **options)
        self.data: list[models.DataPacket] = []
        self.updates: list[models.ParticipantInfo] = []

    def on_data(self, packet: models.DataPacket) -> None:
        self.data.append(packet)

    def on_participants_changed(self, infos: list[models.ParticipantInfo]) -> None:
        self.updates.extend(infos)


def user_packet(payload: bytes, to: list[str] | None = None) -> models.DataPacket:
    return models.DataPacket(user=models.UserPacket(payload=payload), destination_identities=to or [])


def test_data_goes_to_others_with_sender_identity_and_rising_sequence() -> None:
    async def scenario() -> None:
        room = Room("r")
        a, b, c = Probe(room, "a"), Probe(room, "b"), Probe(room, "c")
        for p in (a, b, c):
            await room.join(p)
        assert room.route_data(a, user_packet(b"1")) == 2
        assert room.route_data(a, user_packet(b"2", to=["c"])) == 1
        assert room.route_data(a, user_packet(b"3")) == 2
        assert a.data == []
        assert [p.user.payload for p in b.data] == [b"1", b"3"]
        assert [p.sequence for p in b.data] == [1, 2]  # no gap for the packet b never got
        assert [p.sequence for p in c.data] == [1, 2, 3]
        assert {p.participant_identity for p in c.data} == {"a"}
        assert {p.participant_sid for p in c.data} == {a.sid}
        await room.close(models.DisconnectReason.ROOM_DELETED)
    asyncio.run(scenario())


def test_user_packet_destinations_are_honoured_too() -> None:
    async def scenario() -> None:
        room = Room("r")
        a, b, c = Probe(room, "a"), Probe(room, "b"), Probe(room, "c")
        for p in (a, b, c):
            await room.join(p)
        packet = models.DataPacket(user=models.UserPacket(payload=b"x", destination_identities=["b"]))
        assert room.route_data(a, packet) == 1 and len(b.data) == 1 and c.data == []
        await room.close(models.DisconnectReason.ROOM_DELETED)
    asyncio.run(scenario())


def test_duplicate_identity_replaces_the_old_participant() -> None:
    async def scenario() -> None:
        room = Room("r")
        watcher, first, second = Probe(room, "w"), Probe(room, "dup"), Probe(room, "dup")
        for p in (watcher, first, second):
            await room.join(p)
        assert room.participants["dup"] is second
        gone = [u for u in watcher.updates if u.sid == first.sid]
        assert gone[-1].state == models.ParticipantInfo.State.DISCONNECTED
        assert gone[-1].disconnect_reason == models.DisconnectReason.DUPLICATE_IDENTITY
        await room.close(models.DisconnectReason.ROOM_DELETED)
    asyncio.run(scenario())


def _track(owner: Participant, level: float) -> PublishedTrack:
    async def never() -> None:
        raise AssertionError
    fanout = Fanout("TR_x" + owner.identity, never)  # type: ignore[arg-type]
    fanout.peak_level = level
    track = PublishedTrack(owner, fanout, name="mic", cid="c")
    owner.tracks[track.sid] = track
    return track


def test_speaker_updates_list_every_active_speaker_and_clear_with_hangover() -> None:
    room = Room("r")
    a, b = Probe(room, "a"), Probe(room, "b")
    room.participants = {"a": a, "b": b}
    ta, tb = _track(a, 0.0), _track(b, 0.0)
    loud = SPEAKING_LEVEL * 3

    def tick(a_level: float, b_level: float) -> set[tuple[str, bool]]:
        ta.fanout.peak_level, tb.fanout.peak_level = a_level, b_level
        return {(s.sid, s.active) for s in room._speaker_tick()}

    assert tick(loud, 0.0) == {(a.sid, True)}
    assert tick(loud, loud) == {(a.sid, True), (b.sid, True)}  # the whole picture, not just b
    assert tick(loud, loud) == set()  # nothing changed
    assert [tick(0.0, loud) for _ in range(_HANGOVER_TICKS - 1)] == [set()] * (_HANGOVER_TICKS - 1)
    assert tick(0.0, loud) == {(b.sid, True), (a.sid, False)}
    assert room.active_speakers() == ["b"]


def test_muted_tracks_do_not_speak() -> None:
    room = Room("r")
    a = Probe(room, "a")
    room.participants = {"a": a}
    track = _track(a, SPEAKING_LEVEL * 5)
    track.muted = True
    assert room._speaker_tick() == []


def test_paced_source_sends_queued_audio_then_silence() -> None:
    async def scenario() -> None:
        source = PacedSource()
        source.enqueue(np.full(FRAME_SAMPLES + 10, 1000, dtype=np.int16))
        frames = [await source.next_frame() for _ in range(3)]
        data = [f.to_ndarray().reshape(-1) for f in frames]
        assert (data[0] == 1000).all()
        assert (data[1][:10] == 1000).all() and (data[1][10:] == 0).all()
        assert (data[2] == 0).all()
        assert [f.pts for f in frames] == [0, FRAME_SAMPLES, 2 * FRAME_SAMPLES]
        await asyncio.wait_for(source.wait_idle(), 1)
    asyncio.run(scenario())


def test_paced_source_sends_at_a_skewed_clock_without_a_jump_when_it_changes() -> None:
    """5 % fast, then 5 % slow (exaggerated, so a second shows it): 50 frames
    (1 s of audio) take 1/1.05 s, then 1/0.95 s, of the loop's clock."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source = PacedSource()
        await source.next_frame()
        source.set_clock_ppm(50_000)
        start = loop.time()
        for _ in range(50):
            await source.next_frame()
        fast = loop.time() - start
        source.set_clock_ppm(-50_000)
        start = loop.time()
        for _ in range(50):
            await source.next_frame()
        slow = loop.time() - start
        assert abs(fast - 1 / 1.05) < 0.015 and abs(slow - 1 / 0.95) < 0.015, (fast, slow)
    asyncio.run(scenario())


def test_fanout_drops_oldest_frames_for_a_stalled_subscriber() -> None:
    async def scenario() -> None:
        frames = iter([mono_to_frame(np.full(FRAME_SAMPLES, i, dtype=np.int16), i) for i in range(30)])
        drained = asyncio.Event()

        async def source() -> AudioFrame:
            frame = next(frames, None)
            if frame is None:
                drained.set()
                await asyncio.Event().wait()  # a live source with nothing more to say
            assert frame is not None
            return frame

        fanout = Fanout("TR_f", source)
        track = fanout.subscribe_track()
        fanout.start()
        await asyncio.wait_for(drained.wait(), 2)
        assert fanout.frames == 30
        pts = [(await asyncio.wait_for(track.recv(), 1)).pts for _ in range(_QUEUE_FRAMES)]
        assert pts == list(range(30 - _QUEUE_FRAMES, 30))  # the bounded queue kept the newest
        await fanout.stop()
        with pytest.raises(MediaStreamError):
            await track.recv()
    asyncio.run(scenario())


@pytest.mark.parametrize(("given", "value"), [("ROOM_DELETED", 5), ("room_deleted", 5), (4, 4)])
def test_disconnect_reasons_by_name_or_value(given: str | int, value: int) -> None:
    assert disconnect_reason(given) == value


@pytest.mark.parametrize("bad", ["NOPE", 999])
def test_unknown_disconnect_reason_is_refused(bad: str | int) -> None:
    with pytest.raises(ValueError, match="unknown DisconnectReason"):
        disconnect_reason(bad)


def test_stereo_frames_average_to_mono_and_rms_is_full_scale_relative() -> None:
    from av import AudioFrame

    from speko_sync.testing._media import frame_to_mono, rms_level

    stereo = np.array([[1000, 3000, -2000, -4000, 32767, 32767]], dtype=np.int16)
    frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    assert list(frame_to_mono(frame)) == [2000, -3000, 32767]
    assert rms_level(np.full(480, 16384, dtype=np.int16)) == pytest.approx(0.5)
    assert rms_level(np.zeros(0, dtype=np.int16)) == 0.0


# -- livekit-server rules that LiveKit Agents rely on ---------------------------------

def metadata_request(request_id: int = 1, **fields: object) -> rtc.UpdateParticipantMetadata:
    return rtc.UpdateParticipantMetadata(request_id=request_id, **fields)  # type: ignore[arg-type]


def joined(room: Room, *people: Participant) -> None:
    """Seat participants without a loop (room.join starts the speaker task)."""
    for p in people:
        room.participants[p.identity] = p


def allowed(**extra: bool) -> models.ParticipantPermission:
    return models.ParticipantPermission(can_subscribe=True, can_publish=True, can_publish_data=True,
                                        can_update_metadata=True, **extra)


def test_update_metadata_merges_attributes_and_echoes_to_everyone_the_sender_included() -> None:
    room = Room("r")
    agent = Probe(room, "agent", permission=allowed(), attributes={"keep": "1", "drop": "2"})
    user = Probe(room, "user")
    joined(room, agent, user)
    answer = room.update_metadata(agent, metadata_request(
        7, name="Speko", attributes={"lk.agent.state": "listening", "drop": ""}))
    assert answer.request_id == 7 and answer.reason == rtc.RequestResponse.Reason.OK
    assert answer.WhichOneof("request") == "update_metadata"
    assert agent.attributes == {"keep": "1", "lk.agent.state": "listening"} and agent.name == "Speko"
    for p in (agent, user):
        assert dict(p.updates[-1].attributes) == {"keep": "1", "lk.agent.state": "listening"}
        assert p.updates[-1].name == "Speko"
    versions = [u.version for u in user.updates]
    room.update_metadata(agent, metadata_request(8, attributes={"lk.agent.state": "speaking"}))
    assert user.updates[-1].version > versions[-1]  # clients drop updates that are not newer
    assert agent.updates[-1].attributes["lk.agent.state"] == "speaking"


def test_update_metadata_needs_the_grant_and_respects_limits() -> None:
    room = Room("r")
    plain = Probe(room, "plain")
    agent = Probe(room, "agent", permission=allowed())
    joined(room, plain, agent)
    refused = room.update_metadata(plain, metadata_request(3, attributes={"a": "b"}))
    assert refused.reason == rtc.RequestResponse.Reason.NOT_ALLOWED and refused.request_id == 3
    assert plain.attributes == {} and agent.updates == []
    too_big = room.update_metadata(agent, metadata_request(4, attributes={"a": "x" * (64 * 1024)}))
    assert too_big.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED and "attributes" in too_big.message
    long_name = room.update_metadata(agent, metadata_request(5, name="n" * 257))
    assert long_name.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED and agent.name == ""
    same = room.update_metadata(agent, metadata_request(6, metadata=""))  # empty = unchanged, no update
    assert same.reason == rtc.RequestResponse.Reason.OK and plain.updates == []


def test_participant_info_carries_attributes_protocol_capabilities_and_permissions() -> None:
    room = Room("r")
    p = Probe(room, "user", attributes={"team": "blue"}, permission=allowed(agent=True))
    p.client_protocol = 2
    p.capabilities = [models.ClientInfo.Capability.CAP_PACKET_TRAILER]
    info = p.info()
    assert dict(info.attributes) == {"team": "blue"} and info.client_protocol == 2
    assert list(info.capabilities) == [models.ClientInfo.Capability.CAP_PACKET_TRAILER]
    assert info.permission.can_update_metadata and info.permission.agent and p.is_agent


class Publisher(Probe):
    def __init__(self, room: Room, identity: str) -> None:
        super().__init__(room, identity)
        self.subscribed: list[str] = []

    def on_track_subscribed(self, track: PublishedTrack) -> None:
        self.subscribed.append(track.sid)


def test_publisher_hears_of_its_first_subscriber_once_per_track() -> None:
    async def scenario() -> None:
        room = Room("r")
        alice = Publisher(room, "alice")
        await room.join(alice)

        async def silence() -> AudioFrame:
            await asyncio.sleep(1)
            raise MediaStreamError
        track = PublishedTrack(alice, Fanout("TR_a", silence), name="microphone", cid="c")
        room.publish(track)
        room.subscribed(track)
        room.subscribed(track)  # a second subscriber: no second signal
        assert alice.subscribed == ["TR_a"]
        await room.close(models.DisconnectReason.ROOM_DELETED)
    asyncio.run(scenario())


def transcription_packet() -> models.DataPacket:
    return models.DataPacket(transcription=models.Transcription(
        transcribed_participant_identity="user", track_id="TR_x",
        segments=[models.TranscriptionSegment(id="s1", text="hi", final=True)]))


def test_transcriptions_are_forwarded_from_agents_only() -> None:
    room = Room("r")
    agent = Probe(room, "agent", permission=allowed(agent=True))
    user, other = Probe(room, "user"), Probe(room, "other")
    joined(room, agent, user, other)
    assert room.route_data(user, transcription_packet()) == 0
    assert room.route_data(agent, transcription_packet()) == 2
    assert other.data[-1].participant_identity == "agent"
    assert other.data[-1].transcription.transcribed_participant_identity == "user"


def stream_header(identity: str, *, text: bool = True) -> models.DataPacket:
    header = models.DataStream.Header(stream_id="st1", topic="lk.transcription")
    if text:
        header.text_header.CopyFrom(models.DataStream.TextHeader())
    else:
        header.byte_header.CopyFrom(models.DataStream.ByteHeader(name="b"))
    return models.DataPacket(participant_identity=identity, stream_header=header)


def test_agents_publish_text_streams_on_behalf_of_others_marked_generated() -> None:
    room = Room("r")
    agent = Probe(room, "agent", permission=allowed(agent=True))
    user, other = Probe(room, "user"), Probe(room, "other")
    joined(room, agent, user, other)
    room.route_data(agent, stream_header("user"))
    got = other.data[-1]
    assert got.participant_identity == "user" and got.stream_header.text_header.generated
    assert got.participant_sid == agent.sid
    room.route_data(agent, stream_header("user", text=False))  # byte streams: never on behalf
    assert other.data[-1].participant_identity == "agent"
    chunk = models.DataPacket(participant_identity="user",
                              stream_chunk=models.DataStream.Chunk(stream_id="st1", content=b"hi"))
    room.route_data(agent, chunk)  # chunks always carry the publisher
    assert other.data[-1].participant_identity == "agent"
    room.route_data(user, stream_header("other"))  # only agents may
    got = other.data[-1]
    assert got.participant_identity == "user" and not got.stream_header.text_header.generated


def test_no_data_from_a_participant_without_the_permission() -> None:
    room = Room("r")
    mute = Probe(room, "mute", permission=models.ParticipantPermission(can_subscribe=True, can_publish_data=False))
    ear = Probe(room, "ear")
    joined(room, mute, ear)
    assert room.route_data(mute, user_packet(b"x")) == 0 and ear.data == []


def test_rpc_packets_go_to_their_destination_only_stamped_with_the_sender() -> None:
    room = Room("r")
    caller, callee, bystander = Probe(room, "caller"), Probe(room, "callee"), Probe(room, "bystander")
    joined(room, caller, callee, bystander)
    request = models.DataPacket(participant_identity="forged", destination_identities=["callee"],
                                rpc_request=models.RpcRequest(id="q1", method="m", payload="{}", version=1))
    assert room.route_data(caller, request) == 1
    assert callee.data[-1].rpc_request.id == "q1" and callee.data[-1].participant_identity == "caller"
    ack = models.DataPacket(destination_identities=["caller"], rpc_ack=models.RpcAck(request_id="q1"))
    response = models.DataPacket(destination_identities=["caller"],
                                 rpc_response=models.RpcResponse(request_id="q1", payload="ok"))
    assert room.route_data(callee, ack) == 1 and room.route_data(callee, response) == 1
    assert [p.WhichOneof("value") for p in caller.data] == ["rpc_ack", "rpc_response"]
    assert {p.participant_identity for p in caller.data} == {"callee"}
    # never broadcast: without a destination, or to someone not in the room, nobody gets it
    for packet in (models.DataPacket(rpc_request=models.RpcRequest(id="q2", method="m", version=1)),
                   models.DataPacket(destination_identities=["ghost"], rpc_request=models.RpcRequest(id="q3")),
                   models.DataPacket(rpc_ack=models.RpcAck(request_id="q1"))):
        assert room.route_data(caller, packet) == 0
    assert bystander.data == [] and len(callee.data) == 1
