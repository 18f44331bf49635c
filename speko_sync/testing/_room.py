"""Rooms and participants of the local server (all on the server's loop).

A room holds participants of two kinds: remote clients (a websocket and aiortc
peer connections, see ``_client.py``) and in-process scripted agents (see
``_agent.py``). The room is the switchboard: it forwards every published audio
track to every other participant, routes data packets, tells everybody who
joined, left, published or muted, and computes active speakers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Mapping

from livekit.protocol import models, rtc

from ._media import Fanout

log = logging.getLogger("speko_sync.testing")

#: RMS (of full scale) above which a participant counts as speaking (about -40 dBFS).
SPEAKING_LEVEL = 0.01
#: Seconds between speaker evaluations.
SPEAKER_TICK_S = 0.1
#: Quiet ticks before an active speaker is reported inactive.
_HANGOVER_TICKS = 4
#: livekit-server's default limits on a participant's own updates (bytes).
MAX_NAME_BYTES = 256
MAX_METADATA_BYTES = 512 * 1024
MAX_ATTRIBUTES_BYTES = 64 * 1024
#: DataPacket kinds of LiveKit RPC (v1 packets; v2 requests and successful
#: responses are text streams on ``lk.rpc_request`` / ``lk.rpc_response``).
RPC_PACKETS = frozenset({"rpc_request", "rpc_ack", "rpc_response"})


def new_sid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


class PublishedTrack:
    """An audio track a participant publishes, as the room sees it."""

    def __init__(self, owner: Participant, fanout: Fanout, *, name: str, cid: str,
                 source: int = models.TrackSource.MICROPHONE) -> None:
        self.owner = owner
        self.sid = fanout.track_sid
        self.fanout = fanout
        self.name = name
        self.cid = cid
        self.source = source
        self.muted = False
        self.mid = ""
        self.receiver_track: object | None = None  # what a remote client sends it on
        self.ever_subscribed = False  # the publisher got its TrackSubscribed

    def info(self) -> models.TrackInfo:
        return models.TrackInfo(
            sid=self.sid,
            type=models.TrackType.AUDIO,
            name=self.name,
            muted=self.muted,
            source=self.source,  # type: ignore[arg-type]
            mime_type="audio/opus",
            mid=self.mid,
            stream=f"{self.owner.sid}|{self.sid}",
        )


class Participant:
    """Base of remote clients and scripted agents. Subclasses override the
    ``on_*`` hooks to hear about the room; the room calls them on the loop."""

    kind: int = models.ParticipantInfo.Kind.STANDARD

    def __init__(self, room: Room, identity: str, *, name: str = "", metadata: str = "",
                 attributes: Mapping[str, str] | None = None,
                 permission: models.ParticipantPermission | None = None) -> None:
        self.room = room
        self.sid = new_sid("PA")
        self.identity = identity
        self.name = name
        self.metadata = metadata
        self.attributes: dict[str, str] = dict(attributes or {})
        self.permission = permission or models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=True)
        self.client_protocol = 0  # from the client's ClientInfo, as livekit-server copies it
        self.capabilities: list[int] = []
        self.joined_at = time.time()
        self.tracks: dict[str, PublishedTrack] = {}
        self.version = 0
        self.state = models.ParticipantInfo.State.JOINED
        self.disconnect_reason = models.DisconnectReason.UNKNOWN_REASON

    def info(self) -> models.ParticipantInfo:
        self.version += 1
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            metadata=self.metadata,
            state=self.state,
            tracks=[t.info() for t in self.tracks.values()],
            joined_at=int(self.joined_at),
            joined_at_ms=int(self.joined_at * 1000),
            version=self.version,
            kind=self.kind,  # type: ignore[arg-type]
            is_publisher=bool(self.tracks),
            permission=self.permission,
            attributes=self.attributes,
            client_protocol=self.client_protocol,
            capabilities=self.capabilities,  # type: ignore[arg-type]
            disconnect_reason=self.disconnect_reason,
        )

    @property
    def is_agent(self) -> bool:
        """An agent as livekit-server counts one: kind AGENT or the agent grant."""
        return self.kind == models.ParticipantInfo.Kind.AGENT or self.permission.agent

    # Hooks the room calls (on the loop). Defaults do nothing.
    def on_participants_changed(self, infos: list[models.ParticipantInfo]) -> None: ...
    def on_track_available(self, track: PublishedTrack) -> None: ...
    def on_track_gone(self, track: PublishedTrack) -> None: ...
    def on_track_subscribed(self, track: PublishedTrack) -> None:
        """``track`` (one of ours) has its first subscriber bound."""
    def on_data(self, packet: models.DataPacket) -> None: ...
    def on_speakers(self, speakers: list[models.SpeakerInfo]) -> None: ...
    async def close(self, reason: int, *, send_leave: bool = True) -> None: ...


class Room:
    """One room: its participants, tracks, data routing and speaker detection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sid = new_sid("RM")
        self.created = time.time()
        self.participants: dict[str, Participant] = {}
        self._data_seq: dict[tuple[str, str], itertools.count[int]] = {}
        self._active: dict[str, tuple[float, int]] = {}  # sid -> (level, quiet ticks)
        self._speaker_task: asyncio.Task[None] | None = None
        self.closed = False

    def info(self) -> models.Room:
        return models.Room(
            sid=self.sid,
            name=self.name,
            creation_time=int(self.created),
            creation_time_ms=int(self.created * 1000),
            num_participants=len(self.participants),
            empty_timeout=300,
            departure_timeout=20,
        )

    def others(self, me: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not me]

    # -- membership ---------------------------------------------------------
    async def join(self, p: Participant) -> None:
        """Add ``p``; a participant with the same identity is replaced (as LiveKit
        does, with DUPLICATE_IDENTITY)."""
        old = self.participants.get(p.identity)
        if old is not None:
            await self.evict(old, models.DisconnectReason.DUPLICATE_IDENTITY)
        self.participants[p.identity] = p
        if self._speaker_task is None:
            self._speaker_task = asyncio.get_running_loop().create_task(self._speaker_loop())

    def announce(self, p: Participant) -> None:
        """Tell the others that ``p`` is here and give ``p`` everyone's tracks."""
        self._broadcast_update(p)
        for other in self.others(p):
            for track in other.tracks.values():
                p.on_track_available(track)

    async def leave(self, p: Participant, reason: int) -> None:
        if self.participants.get(p.identity) is not p:
            return
        del self.participants[p.identity]
        for track in list(p.tracks.values()):
            await self._drop_track(track)
        p.tracks.clear()
        p.state = models.ParticipantInfo.State.DISCONNECTED
        p.disconnect_reason = reason  # type: ignore[assignment]
        self._broadcast_update(p)
        self._active.pop(p.sid, None)

    async def evict(self, p: Participant, reason: int) -> None:
        """End ``p``'s session with ``reason`` and take it out of the room."""
        await p.close(reason)
        await self.leave(p, reason)

    async def close(self, reason: int) -> None:
        self.closed = True
        for p in list(self.participants.values()):
            await self.evict(p, reason)
        if self._speaker_task is not None:
            self._speaker_task.cancel()

    def _broadcast_update(self, p: Participant, *, include_self: bool = False) -> None:
        """Send ``p``'s state to the others and, as livekit-server does for
        changes a participant makes to itself (metadata, attributes, mute), to
        ``p`` too: a client learns its own attributes only from that echo."""
        info = p.info()
        for other in self.participants.values() if include_self else self.others(p):
            other.on_participants_changed([info])

    # -- a participant's own metadata -----------------------------------------
    def update_metadata(self, p: Participant, req: rtc.UpdateParticipantMetadata) -> rtc.RequestResponse:
        """Apply ``p``'s ``update_metadata`` request as livekit-server does: it
        needs the ``canUpdateOwnMetadata`` grant and must fit the size limits; an
        empty name or metadata means "unchanged"; attributes merge into the
        existing ones, an empty value deleting its key. On success everyone, ``p``
        included, gets a participant update. Returns the ``RequestResponse`` to
        send back (``p``'s SDK waits for it)."""
        def answer(reason: int, message: str = "") -> rtc.RequestResponse:
            return rtc.RequestResponse(request_id=req.request_id, reason=reason,  # type: ignore[arg-type]
                                       message=message, update_metadata=req)

        if not p.permission.can_update_metadata:
            return answer(rtc.RequestResponse.Reason.NOT_ALLOWED, "does not have permission to update own metadata")
        if len(req.name.encode()) > MAX_NAME_BYTES:
            return answer(rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "exceeds name length limit")
        if len(req.metadata.encode()) > MAX_METADATA_BYTES:
            return answer(rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "exceeds metadata size limit")
        if sum(len(k.encode()) + len(v.encode()) for k, v in req.attributes.items()) > MAX_ATTRIBUTES_BYTES:
            return answer(rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "exceeds attributes size limit")
        changed = False
        if req.name and req.name != p.name:
            p.name, changed = req.name, True
        if req.metadata and req.metadata != p.metadata:
            p.metadata, changed = req.metadata, True
        for key, value in req.attributes.items():
            changed = True  # livekit-server broadcasts any attribute request
            if value:
                p.attributes[key] = value
            else:
                p.attributes.pop(key, None)
        if changed and self.participants.get(p.identity) is p:
            self._broadcast_update(p, include_self=True)
        return answer(rtc.RequestResponse.Reason.OK)

    # -- tracks -------------------------------------------------------------
    def publish(self, track: PublishedTrack) -> None:
        track.owner.tracks[track.sid] = track
        track.fanout.start()
        self._broadcast_update(track.owner)
        for other in self.others(track.owner):
            other.on_track_available(track)

    def subscribed(self, track: PublishedTrack) -> None:
        """A subscriber is bound to ``track`` and can receive it: the publisher
        hears of it once per track (LiveKit's ``TrackSubscribed``, which a
        publisher's ``wait_for_subscription()`` waits for)."""
        if track.ever_subscribed or track.owner.tracks.get(track.sid) is not track:
            return
        track.ever_subscribed = True
        track.owner.on_track_subscribed(track)

    async def unpublish(self, owner: Participant, track_sid: str) -> None:
        track = owner.tracks.pop(track_sid, None)
        if track is not None:
            await self._drop_track(track)
            self._broadcast_update(owner)

    async def _drop_track(self, track: PublishedTrack) -> None:
        for other in self.others(track.owner):
            other.on_track_gone(track)
        await track.fanout.stop()

    def set_muted(self, owner: Participant, track_sid: str, muted: bool) -> bool:
        track = owner.tracks.get(track_sid)
        if track is None or track.muted == muted:
            return False
        track.muted = muted
        self._broadcast_update(owner, include_self=True)
        return True

    # -- data ---------------------------------------------------------------
    def route_data(self, sender: Participant, packet: models.DataPacket) -> int:
        """Forward ``packet`` from ``sender`` to the others (or to its destination
        identities only), stamped with the sender's identity and a sequence that
        rises strictly per (receiver, sender). Returns how many got it.

        As in livekit-server: nothing is forwarded from a participant without
        the ``canPublishData`` permission; ``Transcription`` packets only from
        agents; an agent may publish a text-stream header (or a chat message) on
        behalf of another participant, which keeps that identity and is marked
        ``generated``; every other packet carries the sender's own identity.

        RPC packets (``rpc_request``, ``rpc_ack``, ``rpc_response``; LiveKit
        clients always address them) go to their destination only; one without
        a destination is dropped (livekit-server would broadcast it; no client
        sends one). One for an identity not in the room is dropped, as
        livekit-server does: no answer, so the caller's SDK gives up after its
        ``max_round_trip_latency`` with CONNECTION_TIMEOUT (1501)."""
        if not sender.permission.can_publish_data:
            return 0
        which = packet.WhichOneof("value")
        if which == "transcription" and not sender.is_agent:
            return 0
        destinations = set(packet.destination_identities)
        if which in RPC_PACKETS and not destinations:
            log.debug("%s sent an %s without a destination: dropped", sender.identity, which)
            return 0
        if packet.HasField("user"):
            destinations.update(packet.user.destination_identities)
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
        on_behalf = (sender.is_agent and packet.participant_identity not in ("", sender.identity)
                     and which in ("stream_header", "chat_message"))
        if on_behalf and which == "stream_header" and packet.stream_header.HasField("text_header"):
            packet.stream_header.text_header.generated = True
        elif on_behalf and which == "chat_message":
            packet.chat_message.generated = True
        elif not on_behalf or which == "stream_header":  # a byte stream header is never on behalf
            packet.participant_identity = sender.identity
        packet.participant_sid = sender.sid
        delivered = 0
        for other in self.others(sender):
            if destinations and other.identity not in destinations:
                continue
            counter = self._data_seq.setdefault((other.identity, sender.identity), itertools.count(1))
            copy = models.DataPacket()
            copy.CopyFrom(packet)
            copy.sequence = next(counter)
            other.on_data(copy)
            delivered += 1
        return delivered

    # -- active speakers ----------------------------------------------------
    async def _speaker_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(SPEAKER_TICK_S)
            changed = self._speaker_tick()
            if changed:
                for p in list(self.participants.values()):
                    p.on_speakers(changed)

    def _speaker_tick(self) -> list[models.SpeakerInfo]:
        """Update who speaks; on any change return the whole picture: every active
        speaker (LiveKit clients replace their list with the active entries of
        each update) plus those who just stopped, marked inactive."""
        changed = False
        stopped: list[models.SpeakerInfo] = []
        for p in list(self.participants.values()):
            level = max((t.fanout.take_peak() for t in p.tracks.values() if not t.muted), default=0.0)
            was = self._active.get(p.sid)
            if level >= SPEAKING_LEVEL:
                changed = changed or was is None
                self._active[p.sid] = (level, 0)
            elif was is not None:
                if was[1] + 1 >= _HANGOVER_TICKS:
                    del self._active[p.sid]
                    stopped.append(models.SpeakerInfo(sid=p.sid, level=0.0, active=False))
                    changed = True
                else:
                    self._active[p.sid] = (was[0], was[1] + 1)
        if not changed:
            return []
        active = [models.SpeakerInfo(sid=sid, level=min(1.0, level * 4), active=True)
                  for sid, (level, _) in self._active.items()]
        return active + stopped

    def active_speakers(self) -> list[str]:
        """Identities currently reported as speaking."""
        by_sid = {p.sid: p.identity for p in self.participants.values()}
        return [by_sid[s] for s in self._active if s in by_sid]
