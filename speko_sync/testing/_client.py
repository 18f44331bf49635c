"""A remote client of the local server: its signalling websocket and its
aiortc peer connection(s), seen by the room as a participant.

Two modes, as LiveKit has them:
- v1 (``/rtc/v1``, one peer connection): the client offers, the server answers.
  Remote tracks ride on the client's recvonly m-lines; ``mid_to_track_id`` in
  each answer says which. When a new track needs a free m-line the server asks
  for one with ``media_sections_requirement`` and the client re-offers.
- v0 (``/rtc``, two peer connections): the server offers a subscriber
  connection (remote tracks plus its own data channels); the client offers a
  publisher connection when it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc

from .._loop import within
from ._media import Fanout, ForwardTrack
from ._room import Participant, PublishedTrack, Room, new_sid

if TYPE_CHECKING:
    from ._auth import Grant

log = logging.getLogger("speko_sync.testing")

_OUTBOX_LIMIT = 1000  # data packets held while the client's data channel opens


class ClientHost(Protocol):
    """What a client needs of the server core: the ping settings it sends in
    the join and the counters it adds its data packets to."""

    @property
    def ping_interval(self) -> int: ...
    @property
    def ping_timeout(self) -> int: ...
    @property
    def stats(self) -> Counter[str]: ...


def permission_of(grant: Grant) -> models.ParticipantPermission:
    """A token's grant as the ``ParticipantPermission`` livekit-server reports."""
    return models.ParticipantPermission(
        can_subscribe=grant.can_subscribe, can_publish=grant.can_publish,
        can_publish_data=grant.can_publish_data, can_update_metadata=grant.can_update_metadata,
        agent=grant.agent)


class RemoteClient(Participant):
    """One connected client. Created by the server after the token checked out."""

    def __init__(self, core: ClientHost, room: Room, ws: web.WebSocketResponse, *,
                 grant: Grant, single_pc: bool) -> None:
        super().__init__(room, grant.identity, name=grant.name, metadata=grant.metadata,
                         attributes=grant.attributes, permission=permission_of(grant))
        if grant.kind == "agent":
            self.kind = models.ParticipantInfo.Kind.AGENT
        self.core = core
        self.ws = ws
        self.single_pc = single_pc
        config = RTCConfiguration(iceServers=[])  # never reach out to a STUN server
        self.pc = RTCPeerConnection(config)  # v1: the only one; v0: the publisher
        self.sub_pc = None if single_pc else RTCPeerConnection(config)
        self._send_lock = asyncio.Lock()
        self._negotiate_lock = asyncio.Lock()
        self._sub_answer: asyncio.Future[rtc.SessionDescription] | None = None
        self._sub_offer_id = 0
        self._reliable: RTCDataChannel | None = None
        self._lossy: RTCDataChannel | None = None
        self._outbox: list[tuple[bool, bytes]] = []
        self._pending_publish: dict[str, rtc.AddTrackRequest] = {}  # cid -> request
        self._published_sids: dict[str, str] = {}  # cid -> track sid
        self._subscriptions: dict[str, tuple[PublishedTrack, ForwardTrack]] = {}
        self._unattached: list[str] = []  # track sids waiting for an m-line (v1)
        self._sections_requested = 0  # m-lines asked for and not yet offered (v1)
        self._closed = False
        self.pong_pause: tuple[web.WebSocketResponse, float] | None = None  # (websocket, until)
        self._handover = asyncio.Event()  # set when a resume brings a new websocket
        self.last_reliable_seq = 0  # of the client's reliable packets: a resume resends from here
        self._ready = asyncio.Event()  # data channel open and every track attached
        self._gone = asyncio.Event()  # released: waiters give up
        self._sub_pending = False  # v0: a subscriber negotiation is under way
        self._tasks: set[asyncio.Task[None]] = set()
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        if self.sub_pc is not None:
            self._reliable = self.sub_pc.createDataChannel("_reliable", ordered=True)
            self._lossy = self.sub_pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
            self._reliable.on("open", self._flush_outbox)
            self._reliable.on("message", lambda m: self._on_data_message(m, True))
            self._lossy.on("message", lambda m: self._on_data_message(m, False))
            self.sub_pc.on("datachannel", self._on_datachannel)

    # -- signalling I/O -----------------------------------------------------
    async def send(self, **fields: object) -> None:
        if self._closed or self.ws.closed:
            return
        payload = rtc.SignalResponse(**fields).SerializeToString()  # type: ignore[arg-type]
        async with self._send_lock:
            try:
                await self.ws.send_bytes(payload)
            except (ConnectionError, RuntimeError):
                pass

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("client %s: %r", self.identity, task.exception())

    def _pongs_paused(self) -> bool:
        pause = self.pong_pause
        return pause is not None and pause[0] is self.ws and time.monotonic() < pause[1]

    @property
    def ended(self) -> bool:
        """Left, closed by the server, or released: no resume."""
        return self._closed

    def end(self) -> None:
        self._closed = True

    async def resume(self, ws: web.WebSocketResponse) -> None:
        """Carry this session on over ``ws`` (the client's resume join): the
        old websocket is closed, the client learns where to resend reliable
        packets from, and its ICE-restart offer is answered as any offer."""
        old, self.ws = self.ws, ws
        self._handover.set()
        if not old.closed:
            _abort(old)
        await self.send(reconnect=rtc.ReconnectResponse(ice_servers=[], last_message_seq=self.last_reliable_seq))
        # the room as it is now: the client drops whoever it does not hear of
        await self.send(update=rtc.ParticipantUpdate(participants=[p.info() for p in self.room.others(self)]))

    async def wait_resumed(self, ws: web.WebSocketResponse, timeout: float) -> bool:
        """After ``ws`` closed without a leave: true if the client resumed on a
        new websocket within ``timeout`` seconds."""
        if self.ws is not ws:
            return True
        self._handover.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await within(self._handover.wait(), timeout)
        return self.ws is not ws and not self._closed

    async def start(self, join: rtc.JoinRequest) -> None:
        """Send the JoinResponse, then answer or offer as the mode wants."""
        self.client_protocol = join.client_info.client_protocol
        self.capabilities = list(join.client_info.capabilities)
        if join.metadata:
            self.metadata = join.metadata
        self.attributes.update({k: v for k, v in join.participant_attributes.items() if v})
        others = [p.info() for p in self.room.others(self)]
        await self.send(join=rtc.JoinResponse(
            room=self.room.info(),
            participant=self.info(),
            other_participants=others,
            server_version="1.9.0",
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Edition.Standard, version="1.9.0", protocol=16,
                node_id="speko-local"),
            ping_interval=self.core.ping_interval,
            ping_timeout=self.core.ping_timeout,
            subscriber_primary=not self.single_pc,
            ice_servers=[],
        ))
        self.room.announce(self)
        if self.single_pc:
            if join.HasField("publisher_offer") and join.publisher_offer.sdp:
                await self._answer(join.publisher_offer)
        else:
            self.spawn(self._offer_subscriber())

    async def serve(self) -> None:
        """Read signal requests until the websocket closes."""
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                continue
            req = rtc.SignalRequest()
            try:
                req.ParseFromString(msg.data)
            except Exception:
                log.warning("client %s sent an unparsable signal request", self.identity)
                continue
            try:
                await self._handle(req)
            except Exception:  # one bad request must not end the session
                log.exception("client %s: %s request failed", self.identity, req.WhichOneof("message"))
            if req.WhichOneof("message") == "leave":
                break

    async def _handle(self, req: rtc.SignalRequest) -> None:
        which = req.WhichOneof("message")
        if which not in ("ping_req", "ping", "trickle"):
            log.debug("client %s -> %s", self.identity, which)
        if which == "ping_req":
            if not self._pongs_paused():
                await self.send(pong_resp=rtc.Pong(
                    last_ping_timestamp=req.ping_req.timestamp, timestamp=int(time.time() * 1000)))
        elif which == "ping":
            if not self._pongs_paused():
                await self.send(pong=int(time.time() * 1000))
        elif which == "offer":
            self.spawn(self._answer(req.offer))
        elif which == "answer":
            if self._sub_answer is not None and not self._sub_answer.done():
                self._sub_answer.set_result(req.answer)
        elif which == "trickle":
            await self._trickle(req.trickle)
        elif which == "add_track":
            await self._add_track(req.add_track)
        elif which == "mute":  # the others learn it from a participant update
            self.room.set_muted(self, req.mute.sid, req.mute.muted)
        elif which == "update_metadata":
            await self.send(request_response=self.room.update_metadata(self, req.update_metadata))
        elif which == "leave":
            self._closed = True  # no resume after a leave
            await self.room.leave(self, models.DisconnectReason.CLIENT_INITIATED)
        # subscription, track_setting, sync_state...: accepted, ignored

    async def _trickle(self, trickle: rtc.TrickleRequest) -> None:
        try:
            init = json.loads(trickle.candidateInit)
            line = init.get("candidate", "")
            if not line:
                return
            candidate = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
            candidate.sdpMid = init.get("sdpMid")
            candidate.sdpMLineIndex = init.get("sdpMLineIndex")
            subscriber = trickle.target == rtc.SignalTarget.SUBSCRIBER
            pc = self.sub_pc if subscriber and self.sub_pc is not None else self.pc
            await pc.addIceCandidate(candidate)
        except Exception as exc:
            log.debug("client %s: candidate ignored: %r", self.identity, exc)

    # -- publishing ---------------------------------------------------------
    async def _add_track(self, req: rtc.AddTrackRequest) -> None:
        if req.type != models.TrackType.AUDIO:
            log.info("client %s: refused a %s publish (audio only)", self.identity,
                     models.TrackType.Name(req.type))
            await self.send(request_response=rtc.RequestResponse(
                reason=rtc.RequestResponse.Reason.UNSUPPORTED_TYPE,
                message="this server forwards audio only", add_track=req))
            return
        self._pending_publish[req.cid] = req
        sid = new_sid("TR")
        self._published_sids[req.cid] = sid
        info = models.TrackInfo(sid=sid, type=models.TrackType.AUDIO, name=req.name,
                                source=req.source, muted=req.muted, mime_type="audio/opus",
                                stream=f"{self.sid}|{sid}")
        await self.send(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=info))

    def _on_track(self, track: MediaStreamTrack) -> None:
        log.debug("client %s: %s track %s arrived (pending %s)", self.identity, track.kind, track.id,
                  list(self._pending_publish))
        if track.kind != "audio":
            return  # never acknowledged, so never negotiated in earnest
        cid = track.id if track.id in self._pending_publish else next(iter(self._pending_publish), None)
        if cid is None:
            log.warning("client %s: unannounced audio track ignored", self.identity)
            return
        req = self._pending_publish.pop(cid)
        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is track:
                _forward_as_received(transceiver.receiver)
        sid = self._published_sids[cid]
        published = PublishedTrack(self, Fanout(sid, track.recv), name=req.name or "microphone",
                                   cid=cid, source=req.source)
        published.muted = req.muted
        published.receiver_track = track
        self.room.publish(published)

    async def _drop_stopped_publications(self) -> None:
        """LiveKit clients unpublish by renegotiating without the track (no
        signal of its own): unpublish every track whose m-line stopped sending."""
        for transceiver in self.pc.getTransceivers():
            track = transceiver.receiver.track
            if track is None or transceiver._offerDirection in ("recvonly", "sendrecv"):
                continue
            for published in list(self.tracks.values()):
                if published.receiver_track is track:
                    await self.room.unpublish(self, published.sid)

    # -- subscribing --------------------------------------------------------
    def on_track_available(self, track: PublishedTrack) -> None:
        if self._closed or track.sid in self._subscriptions:
            return
        forward = track.fanout.subscribe_track()
        self._subscriptions[track.sid] = (track, forward)
        if self.single_pc:
            self._unattached.append(track.sid)
            self._update_ready()
            self.spawn(self._request_sections())
        else:
            self.spawn(self._offer_subscriber())

    def on_track_subscribed(self, track: PublishedTrack) -> None:
        self.spawn(self.send(track_subscribed=rtc.TrackSubscribed(track_sid=track.sid)))

    def _report_bound(self, pc: RTCPeerConnection) -> None:
        """Tell the room which of our subscriptions are bound (attached to an
        m-line) once ``pc`` is connected, as livekit-server does on bind."""
        bound = [track for track, forward in self._subscriptions.values()
                 if not track.ever_subscribed
                 and any(t.sender.track is forward for t in pc.getTransceivers())]
        if not bound:
            return
        if pc.connectionState == "connected":
            for track in bound:
                self.room.subscribed(track)
            return

        async def when_connected() -> None:
            connected = asyncio.Event()

            def changed() -> None:
                if pc.connectionState == "connected":
                    connected.set()
            pc.on("connectionstatechange", changed)
            try:
                changed()
                await within(connected.wait(), 30.0)
            except asyncio.TimeoutError:
                return
            finally:
                pc.remove_listener("connectionstatechange", changed)
            for track in bound:
                self.room.subscribed(track)
        self.spawn(when_connected())

    def on_track_gone(self, track: PublishedTrack) -> None:
        entry = self._subscriptions.pop(track.sid, None)
        if entry is None:
            return
        track.fanout.unsubscribe_track(entry[1])
        if track.sid in self._unattached:
            self._unattached.remove(track.sid)
        pc = self.pc if self.single_pc else self.sub_pc
        assert pc is not None
        for transceiver in pc.getTransceivers():
            if transceiver.sender.track is entry[1]:
                transceiver.sender.replaceTrack(None)
                transceiver.direction = "inactive" if not self.single_pc else "recvonly"
        if not self.single_pc:
            self.spawn(self._offer_subscriber())

    async def _request_sections(self) -> None:
        """v1: ask the client for m-lines for tracks still unattached, once any
        negotiation under way is done (its answer may attach them; an extra,
        needless renegotiation can race the client's own publish)."""
        async with self._negotiate_lock:
            missing = len(self._unattached) - self._sections_requested
            if missing > 0 and not self._closed:
                self._sections_requested += missing
                await self.send(media_sections_requirement=rtc.MediaSectionsRequirement(num_audios=missing))

    def _attach(self, transceiver: RTCRtpTransceiver, track_sid: str) -> None:
        track, forward = self._subscriptions[track_sid]
        transceiver.sender.replaceTrack(forward)
        transceiver.sender._stream_id = f"{track.owner.sid}|{track.sid}"  # the msid LiveKit uses
        transceiver.direction = "sendonly" if not self.single_pc else "sendrecv"

    def _mid_map(self, pc: RTCPeerConnection) -> dict[str, str]:
        return {t.mid: t.sender.track.id for t in pc.getTransceivers()
                if t.mid is not None and isinstance(t.sender.track, ForwardTrack)}

    async def _answer(self, offer: rtc.SessionDescription) -> None:
        """Answer one client offer (v1: everything; v0: the publisher)."""
        async with self._negotiate_lock:
            if self._closed:
                return
            _adopt_ice_restart(self.pc, offer.sdp)
            await self.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await self._drop_stopped_publications()
            if self.single_pc:
                free = [t for t in self.pc.getTransceivers()
                        if t.kind == "audio" and t.sender.track is None
                        and t._offerDirection in ("sendonly", "sendrecv")]
                while self._unattached and free:
                    self._attach(free.pop(0), self._unattached.pop(0))
                if not self._unattached:
                    self._sections_requested = 0
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("client %s <- answer to offer %d, audio m-lines %s", self.identity, offer.id,
                          [(t.mid, t._offerDirection, t.receiver.track is not None)
                           for t in self.pc.getTransceivers() if t.kind == "audio"])
            await self.send(answer=rtc.SessionDescription(
                type="answer", sdp=self.pc.localDescription.sdp, id=offer.id,
                mid_to_track_id=self._mid_map(self.pc) if self.single_pc else {}))
            self._update_ready()
            if self.single_pc:
                self._report_bound(self.pc)

    async def _offer_subscriber(self) -> None:
        """v0: (re)negotiate the subscriber connection, the server offering."""
        assert self.sub_pc is not None
        self._sub_pending = True
        self._update_ready()
        async with self._negotiate_lock:
            if self._closed:
                return
            try:
                await self._negotiate_subscriber()
            finally:
                self._sub_pending = False
                self._update_ready()

    async def _negotiate_subscriber(self) -> None:
        assert self.sub_pc is not None
        for sid in [s for s in self._subscriptions if not self._is_attached(s)]:
            track, forward = self._subscriptions[sid]
            self.sub_pc.addTrack(forward)
            for t in self.sub_pc.getTransceivers():
                if t.sender.track is forward:
                    t.sender._stream_id = f"{track.owner.sid}|{track.sid}"
        offer = await self.sub_pc.createOffer()
        await self.sub_pc.setLocalDescription(offer)
        self._sub_offer_id += 1
        self._sub_answer = asyncio.get_running_loop().create_future()
        await self.send(offer=rtc.SessionDescription(
            type="offer", sdp=self.sub_pc.localDescription.sdp, id=self._sub_offer_id,
            mid_to_track_id=self._mid_map(self.sub_pc)))
        try:
            answer = await within(self._sub_answer, 15.0)
        except asyncio.TimeoutError:
            log.warning("client %s never answered the subscriber offer", self.identity)
            return
        await self.sub_pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        self._report_bound(self.sub_pc)

    def _is_attached(self, track_sid: str) -> bool:
        forward = self._subscriptions[track_sid][1]
        pc = self.sub_pc if self.sub_pc is not None else self.pc
        return any(t.sender.track is forward for t in pc.getTransceivers())

    # -- data ---------------------------------------------------------------
    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == "_reliable" and self.single_pc:
            self._reliable = channel
            self._flush_outbox()
        elif channel.label == "_lossy" and self.single_pc:
            self._lossy = channel
        reliable = channel.label != "_lossy"
        channel.on("message", lambda m: self._on_data_message(m, reliable))

    def _on_data_message(self, message: bytes | str, reliable: bool) -> None:
        """A data packet from the client; its kind is the channel it came on (as
        LiveKit clients read it), whatever the packet's own field says."""
        if isinstance(message, str):
            message = message.encode()
        packet = models.DataPacket()
        try:
            packet.ParseFromString(message)
        except Exception:
            log.warning("client %s sent an unparsable data packet", self.identity)
            return
        if packet.WhichOneof("value") is None:
            return
        if reliable and packet.sequence:
            if packet.sequence <= self.last_reliable_seq:
                return  # resent after a resume, and already routed
            self.last_reliable_seq = packet.sequence
        packet.kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY
        self.core.stats["data_in"] += 1
        self.room.route_data(self, packet)

    def on_data(self, packet: models.DataPacket) -> None:
        reliable = packet.kind == models.DataPacket.Kind.RELIABLE
        payload = packet.SerializeToString()
        channel = self._reliable if reliable or self._lossy is None else self._lossy
        if channel is not None and channel.readyState == "open":
            channel.send(payload)
            self.core.stats["data_out"] += 1
        elif len(self._outbox) < _OUTBOX_LIMIT:
            self._outbox.append((reliable, payload))

    def _flush_outbox(self) -> None:
        channel = self._reliable
        if channel is None or channel.readyState != "open":
            if channel is not None:
                channel.on("open", self._flush_outbox)
            return
        outbox, self._outbox = self._outbox, []
        for _reliable, payload in outbox:
            channel.send(payload)
            self.core.stats["data_out"] += 1
        self._update_ready()

    @property
    def data_ready(self) -> bool:
        return self._reliable is not None and self._reliable.readyState == "open"

    def _update_ready(self) -> None:
        if self.data_ready and not self._unattached and not self._sub_pending:
            self._ready.set()
        else:
            self._ready.clear()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the client can hear every track it subscribes to and has an
        open data channel. Returns false on timeout or if the client goes."""
        ready = asyncio.ensure_future(self._ready.wait())
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait((ready, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            gone.cancel()
        return self._ready.is_set() and not self._gone.is_set()

    # -- room events ----------------------------------------------------------
    def on_participants_changed(self, infos: list[models.ParticipantInfo]) -> None:
        self.spawn(self.send(update=rtc.ParticipantUpdate(participants=infos)))

    def on_speakers(self, speakers: list[models.SpeakerInfo]) -> None:
        self.spawn(self.send(speakers_changed=rtc.SpeakersChanged(speakers=speakers)))

    # -- teardown -------------------------------------------------------------
    async def close(self, reason: int, *, send_leave: bool = True) -> None:
        """End this client's session: a LiveKit leave (unless ``send_leave`` is
        false, for an abrupt drop), then the websocket and peer connections."""
        if self._closed:
            return
        if send_leave:
            await self.send(leave=rtc.LeaveRequest(
                reason=reason, action=rtc.LeaveRequest.Action.DISCONNECT,  # type: ignore[arg-type]
                can_reconnect=False))
        self._closed = True
        if send_leave:
            await self.ws.close()
        else:
            _abort(self.ws)
        await self.release()

    async def release(self) -> None:
        self._closed = True
        self._gone.set()
        self._handover.set()
        for track, forward in self._subscriptions.values():
            track.fanout.unsubscribe_track(forward)
        self._subscriptions.clear()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        for pc in (self.pc, self.sub_pc):
            if pc is not None:
                await pc.close()


def _abort(ws: web.WebSocketResponse) -> None:
    """Drop ``ws``'s connection at once, with no close frame, as a dead link does."""
    transport = ws._req.transport if ws._req is not None else None
    if transport is not None:
        transport.abort()


def _adopt_ice_restart(pc: RTCPeerConnection, sdp: str) -> None:
    """An offer with new ICE credentials restarts ICE (a resuming client sends
    one). aiortc cannot restart ICE, so the running ICE connection adopts the
    client's new credentials: its checks and consent requests then use them,
    and the path already validated carries on."""
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.M)
    pwd = re.search(r"^a=ice-pwd:(\S+)", sdp, re.M)
    if ufrag is None or pwd is None:
        return
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is not None:
            _set_remote_credentials(transport.transport, ufrag.group(1), pwd.group(1))
    sctp = pc.sctp
    if sctp is not None:
        _set_remote_credentials(sctp.transport.transport, ufrag.group(1), pwd.group(1))


def _set_remote_credentials(ice: Any, ufrag: str, pwd: str) -> None:
    connection = getattr(ice, "_connection", None)
    if connection is None or connection.remote_username in (None, ufrag):
        return
    connection.remote_username = ufrag
    connection.remote_password = pwd


class _ForwardingBuffer:
    """What an SFU does with a publisher's audio packets: each one goes on as it
    arrives, so a lost packet is a gap of one frame. aiortc's receive jitter
    buffer waits for a missing packet until 16 more have come and then drops
    frames around it, turning 5 % loss into about 20 % of the audio gone. A
    packet older than one already passed on (reordered, duplicated) is dropped.
    """

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        sequence = packet.sequence_number
        last = self._last
        if last is not None and (sequence == last or (sequence - last) % 65536 >= 32768):
            return False, None
        self._last = sequence
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def _forward_as_received(receiver: Any) -> None:
    """Give an audio receiver the forwarding buffer (aiortc offers no option)."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if isinstance(getattr(receiver, name, None), JitterBuffer):
        setattr(receiver, name, _ForwardingBuffer())
