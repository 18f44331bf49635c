"""The LiveKit transport: the room, the microphone track, the agent's tracks,
data packets, transcriptions, the agent's state and session stream, RPC
tools, reconnection. Created and used on the room loop; the microphone
sink and the track player run on the audio loop.

  data packets (JSON, no topic) -> ``_protocol.decode`` -> messages
  ``lk.transcription`` text streams and legacy transcriptions -> messages
  ``lk.agent.state`` attribute of the agent -> agent state (and mode)
  ``lk.agent.session`` byte streams -> ``_agent_session`` -> the core
  RPC invocations of client tools -> ``_tools.ToolHost`` -> the tool pool
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from livekit import rtc
from livekit.rtc.participant import PublishDataError

from . import _protocol
from ._agent_session import SessionStream
from ._audio_path import Sink
from ._lk_link import LinkWatch
from ._lk_text import RoomText
from ._lk_tracks import TrackPlayer
from ._loop import call_on, within
from ._protocol import (
    ATTR_AGENT_STATE,
    TOPIC_CHAT,
    TOPIC_TRANSCRIPTION,
)
from ._transport import Core, unsupported
from .audio import SAMPLE_RATE
from .errors import ErrorCode, SpekoClientError
from .events import AgentState, Reconnection

log = logging.getLogger("speko_sync")

#: what LiveKit raises when a packet or text stream cannot go out (the room is
#: gone or going); anything else is a bug and propagates unchanged
_SEND_FAILURES = (PublishDataError, rtc.StreamError, ConnectionError)


class LiveKitTransport:
    """One LiveKit room, joined for one session."""

    name: ClassVar[str] = "livekit"
    playback_slack_ms: ClassVar[int | None] = None  # frames arrive at real time: the default policy
    drop_stale_capture: ClassVar[bool] = True  # a burst would stand in the agent's jitter buffer
    tick_ms: ClassVar[int] = 10  # LiveKit's audio frames
    sink_awaits: ClassVar[bool] = True  # LiveKit's audio source takes a frame asynchronously

    def __init__(self, core: Core) -> None:
        self._core = core
        self.room: rtc.Room | None = None
        self.tracks = TrackPlayer(core.path)
        self.source: rtc.AudioSource | None = None
        self._track: rtc.LocalAudioTrack | None = None
        self.text = RoomText(core, lambda: self.room)
        self._state_attribute = False  # the agent publishes lk.agent.state (then it is the state's source)
        self.agent_session = SessionStream(self._on_session_event, self.is_agent)
        self.reconnecting = False
        self._outage_started = 0.0
        self._sid_before = ""  # our participant sid when the link was lost
        self._republished = False  # LiveKit published our tracks again: a full rejoin
        self.packets_sent = 0
        self.link_watch = LinkWatch(lambda: self.reconnecting)

    @property
    def packets_received(self) -> int:
        return self.text.packets_received

    @property
    def malformed(self) -> int:
        return self.text.malformed

    @property
    def ignored(self) -> int:
        return self.text.ignored

    @property
    def session_messages(self) -> int:
        return self.agent_session.messages

    @property
    def session_ignored(self) -> int:
        return self.agent_session.ignored

    # -- joining --------------------------------------------------------------------
    async def join(self, url: str, token: str, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        room = self.room = rtc.Room(loop)
        for event, handler in (
                ("disconnected", self._on_disconnected), ("reconnecting", self._on_reconnecting),
                ("reconnected", self._on_reconnected), ("local_track_republished", self._on_republished),
                ("active_speakers_changed", self._on_speakers), ("data_received", self.text.on_data),
                ("track_subscribed", self._on_track_subscribed),
                ("track_unsubscribed", self._on_track_unsubscribed),
                ("participant_attributes_changed", self._on_attributes),
                ("participant_connected", self._on_participant),
                ("transcription_received", self.text.on_legacy_transcription)):
            room.on(event, _listener(handler))  # type: ignore[arg-type]  # names as LiveKit spells them
        room.register_text_stream_handler(TOPIC_TRANSCRIPTION, self.text.on_transcription_stream)
        self.agent_session.attach(room)
        connecting = loop.create_task(room.connect(url, token, rtc.RoomOptions(
            auto_subscribe=True, connect_timeout=max(0.5, timeout))))
        try:
            await within(asyncio.shield(connecting), timeout)
        except asyncio.TimeoutError:
            connecting.add_done_callback(_disconnect_late(room))
            raise SpekoClientError(ErrorCode.CONNECTION_FAILED,
                                   f"could not connect to {url} within {timeout:g} s") from None
        except asyncio.CancelledError:
            connecting.add_done_callback(_disconnect_late(room))
            raise
        except Exception as exc:
            raise SpekoClientError(ErrorCode.CONNECTION_FAILED, f"could not connect to {url}: {exc}", exc) from exc
        self._core.tools.attach(room)  # before anything else: the agent may call a tool from its first turn
        for participant in room.remote_participants.values():
            self._on_participant(participant)
        self.link_watch.start(room)
        return room.name

    async def start(self, timeout: float) -> Sink | None:
        """Publish the microphone (unless text-only) and start playing the agent's tracks."""
        room, path = self.room, self._core.path
        assert room is not None
        if self._core.microphone:
            await self._publish_microphone()
        # Agent tracks subscribed while joining start playing only now, so no
        # stale audio queues up before the speaker is open.
        # a device clock does not wait for the agent's frames: build depth before a flood's gaps
        path.start_playback(elastic=not path.audio.clocked_by_loop)
        self.tracks.playing = True
        tracks = [publication.track for participant in room.remote_participants.values()
                  for publication in participant.track_publications.values()
                  if publication.track is not None and publication.track.kind == rtc.TrackKind.KIND_AUDIO]
        for track in tracks:
            call_on(self._core.audio_loop, self.tracks.add, track)
        source = self.source
        return self._capture if source is not None else None

    async def _capture(self, samples: np.ndarray) -> None:
        """Audio loop: one microphone frame to LiveKit's audio source."""
        assert self.source is not None
        await self.source.capture_frame(rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, len(samples)))

    async def _publish_microphone(self) -> None:
        assert self.room is not None
        self._core.path.make_processing()
        # fed on the audio loop (its timers run there). No queue (0 ms): each 10 ms frame goes to
        # WebRTC as it is captured. A queue is drained by a 10 ms timer of its own, whose phase
        # against ours is arbitrary: a frame that misses a tick by a hair waits a whole tick, and
        # the depth ratchets up by a frame each time, never to come down (a standing backlog).
        self.source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=0, loop=self._core.audio_loop)
        self._track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)
        try:
            await self.room.local_participant.publish_track(
                self._track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        except Exception as exc:
            raise SpekoClientError(ErrorCode.MICROPHONE_FAILED, f"could not publish the microphone: {exc}",
                                   exc) from exc

    def frame_clocked(self) -> bool:
        return self.tracks.frame_clocked()

    def queued_ms(self) -> float:
        return 0.0  # frames go straight to the speaker's ring

    def is_agent(self, identity: str) -> bool:
        """Whether ``identity`` is a remote participant of kind AGENT."""
        room = self.room
        participant = room.remote_participants.get(identity) if room is not None else None
        return participant is not None and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

    # -- room events -------------------------------------------------------------------
    def _on_track_subscribed(self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                             participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and self.tracks.playing:
            call_on(self._core.audio_loop, self.tracks.add, track)

    def _on_track_unsubscribed(self, track: rtc.Track, *_: Any) -> None:
        call_on(self._core.audio_loop, self.tracks.remove, track.sid)

    def _on_speakers(self, speakers: list[rtc.Participant]) -> None:
        room = self.room
        local = room.local_participant.identity if room is not None else None
        self._core.set_heard_mode(any(p.identity != local for p in speakers))

    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        self._on_attributes({}, participant)

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        room = self.room
        if room is None or participant.identity == room.local_participant.identity:
            return
        # the value this event changed, not the participant's latest: updates that
        # arrive together would otherwise all read the last one, and the states
        # between (thinking, when an answer follows at once) would be lost
        value = changed.get(ATTR_AGENT_STATE, participant.attributes.get(ATTR_AGENT_STATE))
        if value is None:
            return
        try:
            state = AgentState(value)
        except ValueError:
            log.debug("ignoring unknown agent state %r from %s", value, participant.identity)
            return
        self._state_attribute = True
        self._core.set_agent_state(state)

    def _on_session_event(self, kind: str, value: Any) -> None:
        """One decoded event of the agent's session stream. Its agent state is
        used only for an agent that publishes no ``lk.agent.state`` (when
        published, that says the same first)."""
        if kind != "agent_state":
            self._core.session_event(kind, value)
        elif not self._state_attribute:
            self._core.set_agent_state(value)

    # -- the link -------------------------------------------------------------------------
    def _on_disconnected(self, reason: int) -> None:
        if self._core.closing:
            return
        known = reason in rtc.DisconnectReason.values()
        name = rtc.DisconnectReason.Name(reason) if known else None  # type: ignore[arg-type]
        self._core.remote_end(_protocol.disconnection_details(name))

    def _on_reconnecting(self) -> None:
        """LiveKit lost the link and tries to resume, else to rejoin."""
        if self._core.closing or self.reconnecting or self.room is None:
            return
        self.reconnecting = True
        self._outage_started = time.monotonic()
        self._sid_before = self.room.local_participant.sid
        self._republished = False
        self._core.link(None)

    def _on_republished(self, *_: Any) -> None:
        self._republished = True

    def _on_reconnected(self) -> None:
        if self._core.closing or not self.reconnecting or self.room is None:
            return
        self.reconnecting = False
        # a full rejoin is a new participant (and republishes the microphone)
        resumed = not self._republished and self.room.local_participant.sid == self._sid_before
        # a new session: what the old one had not delivered is gone, and the app is told what that may be
        unconfirmed = () if resumed else self._core.sends.between(self.link_watch.unsure_since(),
                                                                   self._outage_started)
        self._core.link(Reconnection(resumed=resumed, outage_s=time.monotonic() - self._outage_started,
                                     unconfirmed=unconfirmed))

    # -- commands ----------------------------------------------------------------------
    def require_link(self) -> None:
        """The room, if packets can go out now; else NOT_CONNECTED."""
        if self.reconnecting:
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, "the conversation is reconnecting: nothing was "
                                   "sent; send again after on_reconnect")
        if self._core.closing or self.room is None or not self.room.isconnected():
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, "the session is not connected")

    async def send_packet(self, payload: bytes) -> None:
        self.require_link()
        assert self.room is not None
        try:
            await self.room.local_participant.publish_data(payload, reliable=True)
        except _SEND_FAILURES as exc:
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, f"not sent: {exc}", exc) from exc
        self.packets_sent += 1

    async def send_chat(self, text: str) -> None:
        """A typed user turn as LiveKit Agents reads one: an ``lk.chat`` text stream."""
        self.require_link()
        assert self.room is not None
        try:
            await self.room.local_participant.send_text(text, topic=TOPIC_CHAT)
        except _SEND_FAILURES as exc:
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, f"not sent: {exc}", exc) from exc
        self.packets_sent += 1

    async def interrupt(self) -> None:
        raise unsupported(self.name, "interrupt the agent: LiveKit Agents takes no interrupt request from the "
                          "caller (it stops when the user speaks over it)")

    async def commit(self) -> None:
        raise unsupported(self.name, "commit the user's turn: LiveKit Agents detects the end of turn itself")

    def set_muted(self, muted: bool) -> None:
        if self._track is not None:
            if muted:
                self._track.mute()
            else:
                self._track.unmute()

    async def stop_audio(self) -> None:
        await self.tracks.stop()

    async def close(self) -> None:
        await self.link_watch.stop()
        self.tracks.playing = False
        await self.agent_session.close()
        self.text.close()
        room = self.room
        if room is not None and room.isconnected():
            try:
                await within(room.disconnect(), 5)
            except Exception:  # gone already
                pass

    async def release_audio(self) -> None:
        """Audio loop, after :meth:`close`: close the microphone's audio source."""
        source, self.source = self.source, None
        if source is not None:
            await source.aclose()


def _listener(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` as a room listener whose signature is worked out once:
    LiveKit's emitter inspects each listener's signature on every event, which
    costs a bound method about 10 us, a few percent of a core in a flood of
    packets; a function carrying its ``__signature__`` costs 1 us."""
    def listener(*args: Any) -> None:
        method(*args)
    listener.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return listener


def _disconnect_late(room: rtc.Room) -> Callable[[asyncio.Task[None]], None]:
    """A connect we stopped waiting for may still succeed: leave the room then."""
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is None:
            asyncio.get_running_loop().create_task(room.disconnect())
    return done

