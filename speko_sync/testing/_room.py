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

from livekit.protocol import models

from ._media import Fanout

log = logging.getLogger("speko_sync.testing")

#: RMS (of full scale) above which a participant counts as speaking (about -40 dBFS).
SPEAKING_LEVEL = 0.01
#: Seconds between speaker evaluations.
SPEAKER_TICK_S = 0.1
#: Quiet ticks before an active speaker is reported inactive.
_HANGOVER_TICKS = 4


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

    def __init__(self, room: Room, identity: str, *, name: str = "", metadata: str = "") -> None:
        self.room = room
        self.sid = new_sid("PA")
        self.identity = identity
        self.name = name
        self.metadata = metadata
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
            permission=models.ParticipantPermission(
                can_subscribe=True, can_publish=True, can_publish_data=True
            ),
            disconnect_reason=self.disconnect_reason,
        )

    # Hooks the room calls (on the loop). Defaults do nothing.
    def on_participants_changed(self, infos: list[models.ParticipantInfo]) -> None: ...
    def on_track_available(self, track: PublishedTrack) -> None: ...
    def on_track_gone(self, track: PublishedTrack) -> None: ...
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

    def _broadcast_update(self, p: Participant) -> None:
        info = p.info()
        for other in self.others(p):
            other.on_participants_changed([info])

    # -- tracks -------------------------------------------------------------
    def publish(self, track: PublishedTrack) -> None:
        track.owner.tracks[track.sid] = track
        track.fanout.start()
        self._broadcast_update(track.owner)
        for other in self.others(track.owner):
            other.on_track_available(track)

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
        self._broadcast_update(owner)
        return True

    # -- data ---------------------------------------------------------------
    def route_data(self, sender: Participant, packet: models.DataPacket) -> int:
        """Forward ``packet`` from ``sender`` to the others (or to its destination
        identities only), stamped with the sender's identity and a sequence that
        rises strictly per (receiver, sender). Returns how many got it."""
        destinations = set(packet.destination_identities)
        if packet.HasField("user"):
            destinations.update(packet.user.destination_identities)
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
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
