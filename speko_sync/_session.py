"""The loop side of a conversation: owns the LiveKit room, the microphone track
and the audio pumps. The room and its events live on the room loop; the audio
streams, the pumps, the audio source and the playback path on the audio loop
(both process-wide, see :mod:`speko_sync._runtime`), so no room work delays a
frame. Methods say which loop they run on.

Data flow:
  microphone -> backend -> capture ring -> ``_capture_pump`` (10 ms frames,
  resampling, audio processing) -> ``rtc.AudioSource`` -> LiveKit
  LiveKit -> ``rtc.AudioStream`` per agent track -> ``_read_track`` (alone:
  straight on; two or more: ``_mix_pump`` sums them every 10 ms) -> ``_play``
  (echo reference, resampling) -> playback ring -> backend -> speaker
  data packets (JSON, no topic) -> ``_protocol.decode`` -> messages
  ``lk.transcription`` text streams and legacy transcriptions -> messages
  (``_transcript.SegmentUpdates`` lets each update through once)
  messages -> ``_transcript.reconcile`` -> the transcript; both -> dispatcher
  ``lk.agent.state`` attribute of the agent -> agent state (and mode)
  ``lk.agent.session`` byte streams -> ``_agent_session`` -> user state,
  turns, the agent's tools, interruptions (barge-in), usage, agent errors
  RPC invocations of client tools -> ``_tools.ToolHost`` -> the tool pool
  all of it -> ``_turns.TurnTracker`` -> replies (``ask``) and latencies
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from livekit import rtc
from livekit.rtc.participant import PublishDataError

from . import _protocol
from ._agent_session import SessionStream
from ._flood import FloodCushion
from ._loop import call_on
from ._protocol import (
    ATTR_AGENT_STATE,
    ATTR_FINAL,
    ATTR_SEGMENT_ID,
    ATTR_TRACK_ID,
    TOPIC_CHAT,
    TOPIC_CONTROL,
    TOPIC_TRANSCRIPTION,
)
from ._tools import Tool, ToolHost
from ._transcript import SegmentUpdates, Transcript, reconcile
from ._turns import VOICED_PEAK, TurnTracker, VoiceEdges, is_barge_in
from .audio import (
    BARGE_IN_DROPPED,
    CAPTURE_DROPPED,
    CAPTURED,
    INPUT_OVERFLOWS,
    OUTPUT_UNDERFLOWS,
    OVERRUNS,
    PLAYBACK_DROPPED,
    PLAYBACK_OVERRUNS,
    PLAYED,
    SAMPLE_RATE,
    UNDERRUNS,
    AudioBackend,
    AudioConstraints,
    AudioIO,
)
from .errors import ErrorCode, SpekoClientError
from .events import (
    AgentState,
    ConversationStats,
    DisconnectionDetails,
    Interruption,
    Message,
    MessageSource,
    Mode,
    ModelUsage,
    Reconnection,
    Reply,
    UserState,
)

log = logging.getLogger("speko_sync")

FRAME = SAMPLE_RATE // 100  # 10 ms at 48 kHz
#: what LiveKit raises when a packet or text stream cannot go out (the room is
#: gone or going); anything else is a bug and propagates unchanged
_SEND_FAILURES = (PublishDataError, rtc.StreamError, ConnectionError)
Emit = Callable[[str, Any], None]


class _Reframer:
    """Resamples (when the device rate is not 48 kHz) and cuts into 10 ms frames."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self._resampler = rtc.AudioResampler(rate_in, rate_out) if rate_in != rate_out else None
        self._rate_in = rate_in
        self._rate_out = rate_out
        self._pending = np.zeros(0, dtype=np.int16)
        self._frame = rate_out // 100

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        if self._resampler is None and not len(self._pending) and len(samples) == self._frame:
            return [samples]
        if self._resampler is not None:
            frames = self._resampler.push(rtc.AudioFrame(samples.tobytes(), self._rate_in, 1, len(samples)))
            parts = [np.frombuffer(f.data, dtype=np.int16) for f in frames]
        else:
            parts = [samples]
        self._pending = np.concatenate([self._pending, *parts])
        out = []
        while len(self._pending) >= self._frame:
            out.append(self._pending[:self._frame].copy())
            self._pending = self._pending[self._frame:]
        return out


class _MicrophoneWatchdog:
    """Notices a microphone that failed mid-call (the backend says so, or a
    device-clocked one delivered nothing for :attr:`STALL_S` after it had
    started) and reports it once as MICROPHONE_FAILED; the session goes on. It
    reports again only if the microphone came back and failed anew."""

    STALL_S = 2.0

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._count = 0
        self._since = 0.0
        self._reported = False

    def check(self, audio: AudioBackend, captured: int, now: float) -> None:
        if captured != self._count:
            self._count, self._since = captured, now
        reason = audio.microphone_failure()
        if reason is None and not audio.clocked_by_loop and captured and now - self._since > self.STALL_S:
            reason = f"the microphone has delivered no audio for {self.STALL_S:g} s"
        if reason is None:
            self._reported = False
        elif not self._reported:
            self._reported = True
            self._emit("error", SpekoClientError(ErrorCode.MICROPHONE_FAILED, reason))


class Session:
    """One LiveKit session. Created and used on the room loop, except the audio
    path, which runs on the audio loop (the same loop when none is given)."""

    def __init__(self, emit: Emit, audio: AudioBackend, constraints: AudioConstraints,
                 on_remote_end: Callable[[DisconnectionDetails], None], *, microphone: bool = True,
                 on_link: Callable[[Reconnection | None], None] = lambda _: None,
                 audio_loop: asyncio.AbstractEventLoop | None = None,
                 emit_latest: Callable[[str, Callable[[], Any]], None] | None = None,
                 client_tools: Mapping[str, Tool] | None = None) -> None:
        self._emit = emit
        # snapshots (the transcript) built when delivered, the newest only
        self._emit_latest = emit_latest or (lambda kind, make: emit(kind, make()))
        self._audio_loop = audio_loop  # None: the room's loop runs the audio too
        self._on_link = on_link  # None: the link is lost; a Reconnection: it is back
        self._audio = audio
        self.microphone = microphone  # false: a text-only session
        self._constraints = constraints
        self._on_remote_end = on_remote_end
        self.room: rtc.Room | None = None
        self.io: AudioIO | None = None
        self._audio_open = False
        self._source: rtc.AudioSource | None = None
        self._track: rtc.LocalAudioTrack | None = None
        self._apm: rtc.AudioProcessingModule | None = None
        self._playing = False  # remote audio plays once the devices and pumps are up
        self._streams: dict[str, rtc.AudioStream] = {}
        self._readers_by_track: dict[str, asyncio.Task[None]] = {}
        self._mix_queues: dict[str, collections.deque[np.ndarray]] = {}
        self._mixer_task: asyncio.Task[None] | None = None
        self._out_reframe = _Reframer(SAMPLE_RATE, SAMPLE_RATE)
        self._cushion: FloodCushion | None = None
        self._echo: rtc.AudioProcessingModule | None = None
        self._frames_in = 0  # agent frames played so far
        self._tick_waiter: asyncio.Future[None] | None = None  # the capture pump, waiting for one
        self._tasks: list[asyncio.Task[None]] = []
        self._readers: set[asyncio.Task[None]] = set()  # lk.transcription streams being read
        self._mode = Mode.LISTENING
        self._speakers_mode = Mode.LISTENING  # what active speakers say
        self.agent_state: AgentState | None = None
        self.transcript = Transcript()
        self._updates = SegmentUpdates()
        self.muted = False
        self.volume = 1.0  # applied to the audio io when it opens
        self._volume_lock = threading.Lock()
        self.closing = False
        self.reconnecting = False
        self._outage_started = 0.0
        self._sid_before = ""  # our participant sid when the link was lost
        self._republished = False  # LiveKit published our tracks again: a full rejoin
        self._closed: asyncio.Task[None] | None = None
        self.packets_sent = 0
        self.packets_received = 0
        self.malformed = 0
        self.ignored = 0
        # what the agent does through us and says about itself
        self.tools = ToolHost(client_tools or {}, emit, self._is_agent)
        self.turns = TurnTracker()
        self.tools.on_call.append(self.turns.on_tool_call)
        self.agent_session = SessionStream(self._on_session_event, self._is_agent)
        self.user_state: UserState | None = None
        self.usage: tuple[ModelUsage, ...] = ()
        self._state_attribute = False  # the agent publishes lk.agent.state (then it is the state's source)
        self._room_loop: asyncio.AbstractEventLoop | None = None
        self._mic_edges = VoiceEdges()  # audio loop: the user's speech at the microphone
        self._agent_edges = VoiceEdges()  # audio loop: the agent's audio going to the speaker
        self._silence = np.zeros(FRAME, dtype=np.int16)
        self._quiet_until = 0.0  # audio loop: agent audio still in flight after a barge-in plays as silence
        self._barged = False  # this speaking turn of the agent was cut off already
        self.barge_ins = 0

    # -- connect ------------------------------------------------------------------
    async def connect(self, url: str, token: str, overrides: bytes | None, timeout: float) -> str:
        """Open the audio devices, join, send overrides, publish the microphone.
        Raises :class:`SpekoClientError`; on failure everything taken is released.

        The devices come first: a device that fails raises MICROPHONE_FAILED
        before any network traffic, so the session's credentials stay usable (an
        agent that saw its caller join and leave may close the room)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._open_audio()
        try:
            return await self._join(url, token, overrides, timeout, deadline)
        except BaseException:
            await self.close()
            raise

    async def _open_audio(self) -> None:
        audio = self._audio
        try:
            rate = await asyncio.to_thread(audio.prepare) if self.microphone else \
                await asyncio.to_thread(_prepare_without_microphone, audio)
            # a loop-clocked backend ticks on the loop the agent's frames arrive on:
            # no slack, and at most one frame after underruns
            io = AudioIO(rate, microphone=self.microphone,
                         playback_slack_ms=0 if audio.clocked_by_loop else 10,
                         playback_max_slack_ms=10 if audio.clocked_by_loop else 60)
            self.set_volume(None, io)
            await asyncio.to_thread(audio.open, io)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(audio.close)
            raise SpekoClientError(ErrorCode.MICROPHONE_FAILED, f"could not open the audio device: {exc}",
                                   exc) from exc
        self._audio_open = True

    async def _join(self, url: str, token: str, overrides: bytes | None, timeout: float, deadline: float) -> str:
        loop = self._room_loop = asyncio.get_running_loop()
        room = self.room = rtc.Room(loop)
        for event, handler in (
                ("disconnected", self._on_disconnected), ("reconnecting", self._on_reconnecting),
                ("reconnected", self._on_reconnected), ("local_track_republished", self._on_republished),
                ("active_speakers_changed", self._on_speakers), ("data_received", self._on_data),
                ("track_subscribed", self._on_track_subscribed),
                ("track_unsubscribed", self._on_track_unsubscribed),
                ("participant_attributes_changed", self._on_attributes),
                ("participant_connected", self._on_participant),
                ("transcription_received", self._on_legacy_transcription)):
            room.on(event, _listener(handler))  # type: ignore[arg-type]  # names as LiveKit spells them
        room.register_text_stream_handler(TOPIC_TRANSCRIPTION, self._on_transcription_stream)
        self.agent_session.attach(room)
        connecting = loop.create_task(room.connect(url, token, rtc.RoomOptions(
            auto_subscribe=True, connect_timeout=max(0.5, timeout))))
        try:
            await asyncio.wait_for(asyncio.shield(connecting), timeout)
        except asyncio.TimeoutError:
            connecting.add_done_callback(_disconnect_late(room))
            raise SpekoClientError(ErrorCode.CONNECTION_FAILED,
                                   f"could not connect to {url} within {timeout:g} s") from None
        except asyncio.CancelledError:
            connecting.add_done_callback(_disconnect_late(room))
            raise
        except Exception as exc:
            raise SpekoClientError(ErrorCode.CONNECTION_FAILED, f"could not connect to {url}: {exc}", exc) from exc
        self.tools.attach(room)  # before anything else: the agent may call a tool from its first turn
        for participant in room.remote_participants.values():
            self._on_participant(participant)
        try:
            if overrides is not None:
                await self._publish(overrides)
            await asyncio.wait_for(self._start_audio(), max(0.1, deadline - loop.time()))
        except BaseException as exc:
            if isinstance(exc, SpekoClientError) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, asyncio.TimeoutError):
                raise SpekoClientError(ErrorCode.MICROPHONE_FAILED,
                                       f"microphone not published within {timeout:g} s") from None
            raise SpekoClientError(ErrorCode.MICROPHONE_FAILED, f"microphone failed: {exc}", exc) from exc
        return room.name

    async def _start_audio(self) -> None:
        """Publish the microphone (unless text-only) and start the pumps."""
        audio, io = self._audio, self.io
        assert io is not None and self.room is not None
        if self.microphone:
            await self._publish_microphone()
        # Agent tracks subscribed while joining start playing only now, so no
        # stale audio queues up before the speaker is open.
        self._out_reframe = _Reframer(SAMPLE_RATE, io.rate)
        # a device clock does not wait for the agent's frames: build depth before a flood's gaps
        self._cushion = None if audio.clocked_by_loop else FloodCushion()
        self._echo = self._apm if self._constraints.echo_cancellation else None
        self._playing = True
        tracks = [publication.track for participant in self.room.remote_participants.values()
                  for publication in participant.track_publications.values()
                  if publication.track is not None and publication.track.kind == rtc.TrackKind.KIND_AUDIO]

        async def start() -> None:  # on the audio loop
            for track in tracks:
                self._add_stream(track)
            io.capture.skip(io.capture.available())  # what the device heard while we joined
            if self.microphone or audio.clocked_by_loop:
                self._tasks.append(asyncio.get_running_loop().create_task(
                    self._supervised("microphone", self._capture_pump)))
        await self._on_audio_loop(start)

    def _other_audio_loop(self) -> asyncio.AbstractEventLoop | None:
        """The audio loop when it is not the one running now, else ``None``."""
        loop = self._audio_loop
        return None if loop is None or loop is asyncio.get_running_loop() else loop

    async def _on_audio_loop(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Room loop: run ``fn()`` on the audio loop and wait for it."""
        loop = self._other_audio_loop()
        if loop is None:
            await fn()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(), loop))  # type: ignore[arg-type]

    def _call_on_audio_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Room loop: have ``fn(*args)`` called on the audio loop, in order."""
        call_on(self._audio_loop, fn, *args)

    def _to_room_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Audio loop: have ``fn(*args)`` called on the room loop, in order."""
        call_on(self._room_loop, fn, *args)

    def _is_agent(self, identity: str) -> bool:
        """Room loop: whether ``identity`` is a remote participant of kind AGENT."""
        room = self.room
        participant = room.remote_participants.get(identity) if room is not None else None
        return participant is not None and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

    async def _publish_microphone(self) -> None:
        audio = self._audio
        assert self.room is not None
        c = self._constraints
        if c.echo_cancellation or c.noise_suppression or c.auto_gain_control:
            self._apm = rtc.AudioProcessingModule(
                echo_cancellation=c.echo_cancellation, noise_suppression=c.noise_suppression,
                high_pass_filter=c.noise_suppression, auto_gain_control=c.auto_gain_control)
            self._apm.set_stream_delay_ms(int(audio.latency_s * 1000) + 40)
        # fed on the audio loop (its timers run there)
        self._source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=200, loop=self._audio_loop)
        self._track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        assert self.room is not None
        try:
            await self.room.local_participant.publish_track(
                self._track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        except Exception as exc:
            raise SpekoClientError(ErrorCode.MICROPHONE_FAILED, f"could not publish the microphone: {exc}",
                                   exc) from exc

    # -- audio pumps ------------------------------------------------------------------
    #: Microphone audio older than this when the loop gets to it is dropped
    #: (counted), and so is a frame that would queue more than
    #: ``SOURCE_BACKLOG_S`` in LiveKit's audio source, or one frame when a
    #: whole frame has stood queued there for a second: the source sends at
    #: exactly real time, so whatever is queued in it after a stall would stay
    #: as latency for the rest of the call.
    CAPTURE_BACKLOG_S = 0.04
    SOURCE_BACKLOG_S = 0.02
    #: Behind by more than this (a long stall), the pump resumes from now
    #: instead of running the missed ticks.
    CATCH_UP_S = 0.1
    #: While one agent track plays, a loop-clocked backend ticks as each of its
    #: frames arrives; when one is this late, the timer ticks instead.
    FRAME_GRACE_S = 0.005

    async def _capture_pump(self) -> None:
        """Audio loop. Every 10 ms: clock a loop-clocked backend, and send what the microphone
        captured (a text-only session just discards it).

        While one agent track plays, a loop-clocked backend is clocked by its
        frames (LiveKit hands them over at real time), so playback adds nothing
        to what the stream delivers; otherwise by a timer whose ticks, when a
        little late, are caught up, so the backend keeps real time under load.
        The microphone audio never reaches LiveKit in a burst (see
        ``CAPTURE_BACKLOG_S``), so its latency is back to normal as soon as the
        loop is."""
        io, audio, source = self.io, self._audio, self._source
        assert io is not None
        loop = asyncio.get_running_loop()
        device_frame = io.rate // 100
        backlog = int(io.rate * self.CAPTURE_BACKLOG_S)
        buf = np.zeros(device_frame, dtype=np.int16)
        reframe = _Reframer(io.rate, SAMPLE_RATE)
        watchdog = _MicrophoneWatchdog(self._emit)
        queued, sent_at = 0.0, loop.time()  # our estimate of what LiveKit's source holds, seconds
        sent, least = 0, 1.0  # frames, and the least estimate, over the last second
        ticks = 0
        ticked = self._frames_in  # agent frames the backend has been ticked for
        next_tick = loop.time() + 0.01
        while True:
            n = 1
            if audio.clocked_by_loop and self._mixer_task is None and len(self._streams) == 1:
                # clocked by the agent's frames: tick as each arrives (nothing waits
                # for a timer), or by the timer when one is late
                if self._frames_in == ticked:
                    waiter = self._tick_waiter = loop.create_future()
                    timer = loop.call_at(next_tick + self.FRAME_GRACE_S, _wake, waiter)
                    await waiter
                    timer.cancel()
                    self._tick_waiter = None
                if self._frames_in > ticked:
                    n = min(self._frames_in - ticked, 10)
                    next_tick = loop.time() + 0.01
                else:
                    next_tick += 0.01
                ticked = self._frames_in
            else:
                ticked = self._frames_in
                next_tick = await _sleep_until(loop, next_tick, self.CATCH_UP_S) + 0.01
            if audio.clocked_by_loop:
                for _ in range(n):
                    audio.tick(device_frame)
            if source is None:  # text-only
                io.capture.skip(io.capture.available())
                continue
            ticks += 1
            if ticks % 50 == 0:  # twice a second
                watchdog.check(audio, int(io.counters[CAPTURED]), loop.time())
            stale = io.capture.available() - backlog
            if stale > 0:
                io.counters[CAPTURE_DROPPED] += io.capture.skip(stale)
            while io.capture.available() >= device_frame:
                io.capture.read_into(buf)
                if self.muted:
                    continue  # a muted microphone feeds nothing
                for samples in reframe.push(buf):
                    now = loop.time()
                    queued = max(0.0, queued - (now - sent_at))
                    sent_at = now
                    least = min(least, queued)
                    sent += 1
                    if queued >= self.SOURCE_BACKLOG_S or (sent >= 100 and least >= 0.0099):
                        # a burst, or a frame of standing backlog for a whole second
                        io.counters[CAPTURE_DROPPED] += device_frame
                        sent, least = 0, 1.0
                        continue
                    if sent >= 100:
                        sent, least = 0, 1.0
                    queued += 0.01
                    frame = rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, FRAME)
                    if self._apm is not None:
                        self._apm.process_stream(frame)
                    # the user's speech as sent (echo cancelled): where it ends, a reply is timed from
                    heard_at = now - io.capture.available() / io.rate
                    if self._mic_edges.push(np.frombuffer(frame.data, dtype=np.int16), heard_at) == "end":
                        self._to_room_loop(self.turns.on_user_speech_end, self._mic_edges.last_voiced)
                    await source.capture_frame(frame)

    #: How many times a pump that raised is started again before giving up.
    PUMP_RESTARTS = 3

    async def _supervised(self, what: str, pump: Callable[[], Awaitable[None]]) -> None:
        """Run an audio pump. One that raises is logged and started again (at
        most ``PUMP_RESTARTS`` times), so one bad frame does not silence the
        microphone or the speaker for the rest of the call; a failed microphone
        is also reported as MICROPHONE_FAILED."""
        for attempt in range(self.PUMP_RESTARTS + 1):
            try:
                await pump()
                return
            except Exception as exc:
                last = attempt == self.PUMP_RESTARTS
                log.error("the %s audio path failed (%s): %r", what, "giving up" if last else "restarting it", exc,
                          exc_info=exc)
                if what == "microphone":
                    self._emit("error", SpekoClientError(ErrorCode.MICROPHONE_FAILED,
                                                         f"the microphone audio path failed: {exc}", exc))
                if last:
                    return
                await asyncio.sleep(0.05)

    def _play(self, samples: np.ndarray) -> None:
        """Audio loop. One 10 ms frame of the agent's audio (48 kHz) to the speaker: echo
        reference first, then the playback ring at the device rate."""
        io = self.io
        assert io is not None
        now = time.monotonic()
        if now < self._quiet_until:  # sent before the agent was interrupted: never played
            if int(samples.max()) > VOICED_PEAK or -int(samples.min()) > VOICED_PEAK:
                io.counters[BARGE_IN_DROPPED] += len(samples) * io.rate // SAMPLE_RATE
            samples = self._silence
        elif self._agent_edges.push(samples, now) == "start":
            # when this frame leaves the speaker: behind what is queued, and the device's latency
            played_at = now + io.playback.available() / io.rate + self._audio.latency_s
            self._to_room_loop(self.turns.on_agent_audio, played_at)
        if self._echo is not None:
            volume = io.volume
            played = samples if volume == 1.0 else (samples * volume).astype(np.int16)
            self._echo.process_reverse_stream(rtc.AudioFrame(played.tobytes(), SAMPLE_RATE, 1, FRAME))
        cushion = self._cushion
        if cushion is not None:
            samples = cushion.process(samples, self.packets_received)
            io.cushion = cushion.extra * io.rate // SAMPLE_RATE
        for chunk in self._out_reframe.push(samples):
            if io.playback.write(chunk) < len(chunk):
                io.counters[PLAYBACK_OVERRUNS] += 1
        self._frames_in += 1
        waiter = self._tick_waiter
        if waiter is not None:
            _wake(waiter)

    async def _read_track(self, sid: str, stream: rtc.AudioStream) -> None:
        """Audio loop. One remote audio track. Alone, its frames go straight to the speaker
        (no mixer, no timer: playback adds nothing to what the stream hands
        over); with others, to its queue for :meth:`_mix_pump`."""
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            queue = self._mix_queues.get(sid)
            if queue is None:
                self._play(samples)
            else:
                queue.append(samples)  # bounded: the oldest frame goes when it is full

    async def _mix_pump(self) -> None:
        """Audio loop. While two or more remote audio tracks play: every 10 ms, sum one frame
        from each track's queue (a track with nothing queued adds silence)."""
        loop = asyncio.get_running_loop()
        mix = np.zeros(FRAME, dtype=np.int32)
        out = np.zeros(FRAME, dtype=np.int16)
        next_tick = loop.time()
        while True:
            next_tick = await _sleep_until(loop, next_tick + 0.01, 0.015)
            mix[:] = 0
            heard = False
            for queue in self._mix_queues.values():
                if queue:
                    frame = queue.popleft()
                    if len(frame) == FRAME:
                        mix += frame
                        heard = True
            if heard:
                np.clip(mix, -32768, 32767, out=mix)
                out[:] = mix
                self._play(out)

    def _arrange_playback(self) -> None:
        """Audio loop. Mix only while two or more remote audio tracks play."""
        mixing = len(self._streams) > 1
        if mixing and self._mixer_task is None:
            self._mix_queues = {sid: collections.deque(maxlen=5) for sid in self._streams}
            self._mixer_task = asyncio.get_running_loop().create_task(self._mix_pump())
        elif mixing:
            for sid in self._streams:
                self._mix_queues.setdefault(sid, collections.deque(maxlen=5))
        elif self._mixer_task is not None:
            self._mixer_task.cancel()
            self._mixer_task = None
            self._mix_queues = {}

    # -- room events -------------------------------------------------------------------
    def _on_track_subscribed(self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                             participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and self._playing:
            self._call_on_audio_loop(self._add_stream, track)

    def _on_track_unsubscribed(self, track: rtc.Track, *_: Any) -> None:
        self._call_on_audio_loop(self._remove_stream, track.sid)

    def _add_stream(self, track: rtc.Track) -> None:
        """Audio loop: play a remote audio track (its stream delivers here)."""
        if not self._playing or track.sid in self._streams:
            return
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=10)
        self._streams[track.sid] = stream
        self._arrange_playback()
        sid = track.sid
        self._readers_by_track[sid] = asyncio.get_running_loop().create_task(
            self._supervised("speaker", lambda: self._read_track(sid, stream)))

    def _remove_stream(self, sid: str) -> None:
        """Audio loop: stop playing a track that went away."""
        stream = self._streams.pop(sid, None)
        reader = self._readers_by_track.pop(sid, None)
        if reader is not None:
            reader.cancel()
        if stream is not None:
            asyncio.get_running_loop().create_task(stream.aclose())
        self._mix_queues.pop(sid, None)
        self._arrange_playback()

    def _on_speakers(self, speakers: list[rtc.Participant]) -> None:
        room = self.room
        local = room.local_participant.identity if room is not None else None
        self._speakers_mode = Mode.SPEAKING if any(p.identity != local for p in speakers) else Mode.LISTENING
        self._update_mode()

    def _update_mode(self) -> None:
        """``mode`` follows the agent's own state when it publishes one (speaking
        iff ``speaking``), else the active speakers."""
        if self.agent_state is not None:
            mode = Mode.SPEAKING if self.agent_state == AgentState.SPEAKING else Mode.LISTENING
        else:
            mode = self._speakers_mode
        if mode != self._mode:
            self._mode = mode
            self._emit("mode_changed", mode)

    @property
    def mode(self) -> Mode:
        return self._mode

    # -- the agent's state (lk.agent.state) ------------------------------------------
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
        self._set_agent_state(state)

    def _set_agent_state(self, state: AgentState) -> None:
        """One agent state, from ``lk.agent.state`` or, for an agent that
        publishes none, its session stream; events only on change."""
        old = self.agent_state
        if state == old:
            return
        self.agent_state = state
        self._emit("agent_state_changed", state)
        self._update_mode()
        self.turns.on_agent_state(state)
        if state == AgentState.THINKING:  # its answer's first audio is a start, however soon it comes
            self._call_on_audio_loop(self._agent_edges.reset)
        elif state == AgentState.SPEAKING:
            if self._barged:
                self._call_on_audio_loop(self._play_again)
            self._barged = False
        elif is_barge_in(old, state, user_speaking=self._user_speaking()):
            self._barge_in(Interruption(is_interruption=True))

    def _user_speaking(self) -> bool:
        return self.user_state == UserState.SPEAKING or self._mic_edges.talking

    # -- the agent's session stream (lk.agent.session) ----------------------------------
    def _on_session_event(self, kind: str, value: Any) -> None:
        """Room loop: one decoded event of the agent's session stream."""
        if kind == "agent_state":
            if not self._state_attribute:  # lk.agent.state, when published, says the same first
                self._set_agent_state(value)
        elif kind == "user_state":
            if value != self.user_state:
                self.user_state = value
                self._emit("user_state_changed", value)
        elif kind == "turn":
            self._emit("turn", self.turns.on_turn(value))
        elif kind == "interruption":
            if value.is_interruption:
                self._barge_in(value)
            else:
                self._emit("interruption", value)
        elif kind == "usage":
            if value != self.usage:  # the worker repeats it about once a second
                self.usage = value
                self._emit("usage", value)
        elif kind == "agent_tools":
            self._emit("agent_tools", value)
        elif kind == "error":
            self._emit("error", SpekoClientError(ErrorCode.AGENT_ERROR, f"the agent reported: {value}"))

    #: After a barge-in, the agent's audio plays as silence until it speaks
    #: again (its state goes back to speaking), for this long at most: what
    #: arrives meanwhile was sent before it stopped (LiveKit Agents 1.8 keeps
    #: 200 ms queued; 0.1-0.8 s of it reaches the client after the state change).
    BARGE_IN_QUIET_S = 2.0

    def _barge_in(self, interruption: Interruption) -> None:
        """Room loop: the user interrupted the agent: drop its queued audio and
        report it, once per agent turn (its state and its session stream may
        both say so)."""
        if self._barged:
            return
        self._barged = True
        self.barge_ins += 1
        self._call_on_audio_loop(self._drop_playback)
        self._emit("interruption", interruption)

    def _drop_playback(self) -> None:
        """Audio loop: silence the speaker within one device buffer."""
        io = self.io
        if io is not None:
            self._quiet_until = time.monotonic() + self.BARGE_IN_QUIET_S
            io.flush_playback()

    def _play_again(self) -> None:
        """Audio loop: the agent speaks again after a barge-in (an answer, or
        the rest of a turn it judged not interrupted)."""
        self._quiet_until = 0.0

    # -- transcripts --------------------------------------------------------------------
    def _deliver(self, message: Message) -> None:
        self.transcript = reconcile(self.transcript, message)
        self._emit("message", message)
        self.turns.on_message(message)
        transcript = self.transcript
        self._emit_latest("transcript", lambda: transcript.messages)

    def _transcribed(self, source: MessageSource, segment_id: str, text: str, is_final: bool, *,
                     track: str, path: str) -> None:
        # the two paths differ in trailing spaces ("Hi! " while the stream grows)
        message = self._updates.accept(source, segment_id, text.strip(), is_final, time.time(),
                                       track=track, path=path)
        if message is not None:
            self._deliver(message)

    def _source_of(self, identity: str | None, track_sid: str | None) -> MessageSource:
        """User speech is the transcript of our own microphone track, published
        on our behalf; everything else is the agent's."""
        room = self.room
        if room is None:
            return MessageSource.AGENT
        local = room.local_participant
        if identity == local.identity or (track_sid and track_sid in local.track_publications):
            return MessageSource.USER
        return MessageSource.AGENT

    def _on_transcription_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        task = asyncio.get_running_loop().create_task(self._read_transcription(reader, sender))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read_transcription(self, reader: rtc.TextStreamReader, sender: str) -> None:
        """One ``lk.transcription`` stream: the agent's speech grows chunk by chunk
        and turns final in its trailer; the user's comes whole, one stream per update."""
        info = reader.info
        attributes = dict(info.attributes or {})
        segment_id = attributes.get(ATTR_SEGMENT_ID) or info.stream_id
        track = attributes.get(ATTR_TRACK_ID, "")
        source = self._source_of(sender, track)
        final_at_open = attributes.get(ATTR_FINAL) == "true"
        text = ""
        try:
            async for chunk in reader:
                text += chunk
                if not final_at_open:
                    self._transcribed(source, segment_id, text, False, track=track, path="stream")
        except Exception as exc:  # the sender aborted it, or the room went
            log.debug("transcription stream %s ended early: %r", info.stream_id, exc)
            return
        final = final_at_open or (info.attributes or {}).get(ATTR_FINAL) == "true"
        self._transcribed(source, segment_id, text, final, track=track, path="stream")

    def _on_legacy_transcription(self, segments: list[rtc.TranscriptionSegment],
                                 participant: rtc.Participant | None,
                                 publication: rtc.TrackPublication | None) -> None:
        identity = participant.identity if participant is not None else None
        track = publication.sid if publication is not None else ""
        source = self._source_of(identity, track)
        for segment in segments:
            self._transcribed(source, segment.id, segment.text, segment.final, track=track, path="legacy")

    # -- data packets -------------------------------------------------------------------
    def _on_data(self, packet: rtc.DataPacket) -> None:
        """Speko's JSON packets (no topic) and control events; anything else in
        the room (other topics, other publishers' formats) is ignored."""
        self.packets_received += 1
        if packet.topic == TOPIC_CONTROL:
            self._on_control(packet.data)
            return
        if packet.topic:
            self.ignored += 1
            log.debug("ignoring a data packet on topic %r", packet.topic)
            return
        try:
            message = _protocol.decode(packet.data)
        except _protocol.InvalidPacket as exc:
            self.malformed += 1
            self.ignored += 1
            log.debug("ignoring a data packet that is not Speko's: %s", exc)
            return
        if message is None:
            self.ignored += 1  # a Speko packet type this client does not know
            return
        self._deliver(message)

    def _on_control(self, payload: bytes) -> None:
        try:
            event = _protocol.decode_control(payload)
        except _protocol.InvalidPacket as exc:
            self.ignored += 1
            log.debug("ignoring a control packet: %s", exc)
            return
        self._emit("control", event)

    def _on_disconnected(self, reason: int) -> None:
        if self.closing:
            return
        known = reason in rtc.DisconnectReason.values()
        name = rtc.DisconnectReason.Name(reason) if known else None  # type: ignore[arg-type]
        details = _protocol.disconnection_details(name)
        self._on_remote_end(details)

    def _on_reconnecting(self) -> None:
        """LiveKit lost the link and tries to resume, else to rejoin."""
        if self.closing or self.reconnecting or self.room is None:
            return
        self.reconnecting = True
        self._outage_started = time.monotonic()
        self._sid_before = self.room.local_participant.sid
        self._republished = False
        self._on_link(None)

    def _on_republished(self, *_: Any) -> None:
        self._republished = True

    def _on_reconnected(self) -> None:
        if self.closing or not self.reconnecting or self.room is None:
            return
        self.reconnecting = False
        # a full rejoin is a new participant (and republishes the microphone)
        resumed = not self._republished and self.room.local_participant.sid == self._sid_before
        self._on_link(Reconnection(resumed=resumed, outage_s=time.monotonic() - self._outage_started))

    def set_volume(self, volume: float | None, io: AudioIO | None = None) -> None:
        """Any thread: set the playback volume (``None`` keeps it) and, with
        ``io``, make that the session's audio io first. One lock orders the two,
        so a volume set while the devices open is never lost."""
        with self._volume_lock:
            if io is not None:
                self.io = io
            if volume is not None:
                self.volume = volume
            if self.io is not None:
                self.io.volume = self.volume

    # -- commands ----------------------------------------------------------------------
    async def _publish(self, payload: bytes) -> None:
        assert self.room is not None
        await self.room.local_participant.publish_data(payload, reliable=True)
        self.packets_sent += 1

    def _require_link(self) -> rtc.Room:
        """The room, if packets can go out now; else NOT_CONNECTED."""
        if self.reconnecting:
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, "the conversation is reconnecting: nothing was "
                                   "sent; send again after on_reconnect")
        if self.closing or self.room is None or not self.room.isconnected():
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, "the session is not connected")
        return self.room

    async def send(self, payload: bytes) -> None:
        self._require_link()
        try:
            await self._publish(payload)
        except _SEND_FAILURES as exc:
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, f"not sent: {exc}", exc) from exc

    async def send_chat(self, text: str) -> None:
        """A typed user turn as LiveKit Agents reads one: an ``lk.chat`` text stream."""
        room = self._require_link()
        started = time.time()  # the user's turn began when it was sent, before the agent could answer it
        try:
            await room.local_participant.send_text(text, topic=TOPIC_CHAT)
        except _SEND_FAILURES as exc:
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, f"not sent: {exc}", exc) from exc
        self.packets_sent += 1
        # LiveKit Agents does not transcribe typed turns back: they join the
        # transcript here, as the user's
        self._deliver(Message(source=MessageSource.USER, text=text, is_final=True, started_at=started))

    async def ask(self, text: str) -> concurrent.futures.Future[Reply]:
        """Send a typed turn; a future of the agent's reply to it."""
        future = self.turns.expect(typed=True)  # before the send: nothing of the answer is missed
        try:
            await self.send_chat(text)
        except BaseException:
            future.cancel()
            raise
        return future

    async def expect_reply(self) -> concurrent.futures.Future[Reply]:
        """A future of the agent's next complete turn."""
        return self.turns.expect(typed=False)

    async def set_muted(self, muted: bool) -> None:
        self.muted = muted
        if self._track is not None:
            if muted:
                self._track.mute()
            else:
                self._track.unmute()

    def stats(self) -> ConversationStats:
        io = self.io
        counters = io.counters if io is not None else np.zeros(10, dtype=np.int64)
        frame = (io.rate // 100) if io is not None else FRAME
        return ConversationStats(
            frames_captured=int(counters[CAPTURED]) // frame,
            frames_played=int(counters[PLAYED]) // frame,
            underruns=int(counters[UNDERRUNS]),
            overruns=int(counters[OVERRUNS]) + int(counters[PLAYBACK_OVERRUNS]),
            capture_dropped=int(counters[CAPTURE_DROPPED]) // frame,
            playback_dropped=int(counters[PLAYBACK_DROPPED]),
            input_overflows=int(counters[INPUT_OVERFLOWS]),
            output_underflows=int(counters[OUTPUT_UNDERFLOWS]),
            playback_buffer_ms=io.playback_depth_ms() if io is not None else 0.0,
            packets_sent=self.packets_sent,
            packets_received=self.packets_received,
            malformed_packets=self.malformed,
            ignored_packets=self.ignored,
            tool_calls=self.tools.calls,
            tool_calls_refused=self.tools.refused,
            session_messages=self.agent_session.messages,
            session_ignored=self.agent_session.ignored,
            response_latency_s=self.turns.response_latency_s,
            agent_e2e_latency_s=self.turns.agent_e2e_latency_s,
            barge_ins=self.barge_ins,
            barge_in_dropped_ms=1000.0 * int(counters[BARGE_IN_DROPPED]) / (io.rate if io is not None else SAMPLE_RATE),
        )

    async def close(self) -> None:
        """Leave the room (if still in it) and release everything. Idempotent;
        concurrent calls (a cancelled connect cleaning up while the caller
        aborts) share one release."""
        self.closing = True
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_task(self._release())
        await asyncio.shield(self._closed)

    async def _release(self) -> None:
        self._playing = False
        self.turns.close()
        await self.agent_session.close()
        for task in self._readers:
            task.cancel()
        with contextlib.suppress(Exception):  # the audio loop is gone only at interpreter exit
            await self._on_audio_loop(self._stop_audio)
        if self._audio_open:
            self._audio_open = False
            await asyncio.to_thread(self._audio.close)
        room = self.room
        if room is not None and room.isconnected():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(room.disconnect(), 5)
        source = self._source
        if source is not None:
            with contextlib.suppress(Exception):
                await self._on_audio_loop(source.aclose)
            self._source = None

    async def _stop_audio(self) -> None:
        """Audio loop: stop the pumps and close the streams."""
        tasks = [*self._tasks, *self._readers_by_track.values()]
        if self._mixer_task is not None:
            tasks.append(self._mixer_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._readers_by_track, self._mixer_task = [], {}, None
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):
                await stream.aclose()
        self._streams.clear()


def _listener(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` as a room listener whose signature is worked out once:
    LiveKit's emitter inspects each listener's signature on every event, which
    costs a bound method about 10 us, a few percent of a core in a flood of
    packets; a function carrying its ``__signature__`` costs 1 us."""
    def listener(*args: Any) -> None:
        method(*args)
    listener.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return listener


def _prepare_without_microphone(audio: AudioBackend) -> int:
    """``prepare`` for a text-only session: backends with devices take
    ``microphone=False``; others have no microphone to open anyway."""
    if "microphone" in inspect.signature(audio.prepare).parameters:
        return audio.prepare(microphone=False)  # type: ignore[call-arg]
    return audio.prepare()


async def _sleep_until(loop: asyncio.AbstractEventLoop, due: float, catch_up: float) -> float:
    """Sleep until loop time ``due`` and return it; when already behind by more
    than ``catch_up`` seconds (a stall), return now instead, so the caller's
    10 ms clock resumes from here rather than bursting the ticks it missed."""
    delay = due - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    elif delay < -catch_up:
        return loop.time()
    return due


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _disconnect_late(room: rtc.Room) -> Callable[[asyncio.Task[None]], None]:
    """A connect we stopped waiting for may still succeed: leave the room then."""
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is None:
            asyncio.get_running_loop().create_task(room.disconnect())
    return done
