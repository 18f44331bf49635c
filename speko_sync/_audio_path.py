"""The transport-neutral audio path of a conversation, on the audio loop.

  microphone -> backend -> capture ring -> :meth:`AudioPath.capture_pump`
  (10 ms frames at 48 kHz, audio processing against what the speaker played,
  the user's speech edges) -> the transport's sink;
  the transport's agent audio (10 ms frames at 48 kHz) -> :meth:`AudioPath.play`
  (barge-in silence, the agent's speech edges, elastic resampling) ->
  playback ring -> backend -> speaker (and, with echo cancellation, what it
  played -> ``AudioIO.played`` -> the microphone pump's echo reference).

Opening and closing the devices run on the room loop (in worker threads);
everything else on the audio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import numpy as np
from livekit import rtc

from ._capture import TimedPump, capture_pump
from ._elastic import ElasticPlayback
from ._frames import FRAME, Reframer, cancel_all, wake
from ._turns import VOICED_PEAK, TurnTracker, VoiceEdges
from .audio import (
    BARGE_IN_DROPPED,
    PLAYBACK_OVERRUNS,
    SAMPLE_RATE,
    AudioBackend,
    AudioConstraints,
    AudioIO,
)
from .errors import ErrorCode, SpekoClientError

log = logging.getLogger("speko_sync")

Emit = Callable[[str, Any], None]
#: the transport's microphone sink: one processed 10 ms frame at 48 kHz (int16;
#: a view the pump reuses: copy what is kept)
Sink = Callable[[np.ndarray], Awaitable[None]]
#: a sink that takes the frame in a plain call (never blocks)
PlainSink = Callable[[np.ndarray], None]


class AudioPath:
    """The devices, the microphone pump and the speaker side of one session.

    ``to_room_loop(fn, *args)`` has the room loop call ``fn``; ``turns`` hears
    where the user's and the agent's speech start and end. ``packets()`` is the
    transport's inbound packet count (the flood cushion watches its rate)."""

    #: How many times a pump that raised is started again before giving up.
    PUMP_RESTARTS = 3

    def __init__(self, emit: Emit, audio: AudioBackend, constraints: AudioConstraints, *, microphone: bool,
                 turns: TurnTracker, to_room_loop: Callable[..., None]) -> None:
        self.emit = emit
        self.audio = audio
        self.constraints = constraints
        self.microphone = microphone  # false: a text-only session
        self.turns = turns
        self.to_room_loop = to_room_loop
        self.io: AudioIO | None = None
        self.opened = False
        self.muted = False
        self.volume = 1.0  # applied to the audio io when it opens
        self._volume_lock = threading.Lock()
        self.apm: rtc.AudioProcessingModule | None = None
        self._out_reframe = Reframer(SAMPLE_RATE, SAMPLE_RATE)
        self._elastic: ElasticPlayback | None = None
        self.packets: Callable[[], int] = lambda: 0
        self.frames_in = 0  # agent frames played so far
        self.tick_waiter: asyncio.Future[None] | None = None  # the capture pump, waiting for one
        self.mic_edges = VoiceEdges()  # the user's speech at the microphone
        self.agent_edges = VoiceEdges()  # the agent's audio going to the speaker
        self._silence = np.zeros(FRAME, dtype=np.int16)
        self._quiet_until = 0.0  # agent audio still in flight after a barge-in plays as silence
        self.tasks: list[asyncio.Task[None]] = []
        self._timed: TimedPump | None = None
        #: called with ``n`` before ``n`` ticks of a loop-clocked backend (a
        #: transport that paces the agent's audio itself keeps the ring filled
        #: on that clock)
        self.before_tick: Callable[[int], None] | None = None
        #: while the microphone pump waits for more than one tick: end the wait
        #: at the next 10 ms tick (the agent's audio just arrived)
        self.tick_sooner: Callable[[], None] | None = None

    # -- devices (room loop) ------------------------------------------------------
    async def open(self, *, playback_slack_ms: int | None = None) -> None:
        """Open the devices; MICROPHONE_FAILED, with the backend closed again, if
        that fails. ``playback_slack_ms`` overrides the jitter policy's slack
        (a transport that paces its own playback keeps it above its depth)."""
        audio = self.audio
        try:
            rate = await asyncio.to_thread(audio.prepare) if self.microphone else \
                await asyncio.to_thread(_prepare_without_microphone, audio)
            # a loop-clocked backend ticks on the loop the agent's frames arrive on:
            # no slack, and at most one frame after underruns
            if playback_slack_ms is not None:
                slack, most = playback_slack_ms, playback_slack_ms + 50
            else:
                slack, most = (0, 10) if audio.clocked_by_loop else (10, 60)
            io = AudioIO(rate, microphone=self.microphone, playback_slack_ms=slack, playback_max_slack_ms=most,
                         echo_reference=self.microphone and self.constraints.echo_cancellation)
            self.set_volume(None, io)
            await asyncio.to_thread(audio.open, io)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(audio.close)
            raise SpekoClientError(ErrorCode.MICROPHONE_FAILED, f"could not open the audio device: {exc}",
                                   exc) from exc
        self.opened = True

    async def close(self) -> None:
        if self.opened:
            self.opened = False
            await asyncio.to_thread(self.audio.close)

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

    def make_processing(self) -> None:
        """The audio processing module the constraints ask for (echo
        cancellation, noise suppression, gain control), if any."""
        c = self.constraints
        if c.echo_cancellation or c.noise_suppression or c.auto_gain_control:
            self.apm = rtc.AudioProcessingModule(
                echo_cancellation=c.echo_cancellation, noise_suppression=c.noise_suppression,
                high_pass_filter=c.noise_suppression, auto_gain_control=c.auto_gain_control)
            # its reference is what the device played (``AudioIO.played``): the delay is the devices'
            self.apm.set_stream_delay_ms(int(self.audio.latency_s * 1000))

    # -- speaker (audio loop) -------------------------------------------------------
    def start_playback(self, *, elastic: bool) -> None:
        """Before the first :meth:`play`: ``elastic`` (agent audio that
        arrives at the sender's clock, a device with a clock of its own)
        resamples it very slightly to follow the device's clock, and builds
        depth ahead of a packet flood's gaps (``speko_sync._elastic``)."""
        io = self.io
        assert io is not None
        self._out_reframe = Reframer(SAMPLE_RATE, io.rate)
        self._elastic = ElasticPlayback() if elastic else None
        io.elastic = elastic

    def play(self, samples: np.ndarray, *, silent: bool = False) -> None:
        """Whole 10 ms frames of the agent's audio (48 kHz; one, as LiveKit
        delivers them, or a few) to the speaker: the playback ring at the
        device rate. ``silent``: the caller knows
        the frames are silence (nothing to measure)."""
        io = self.io
        assert io is not None
        now = time.monotonic()
        if now < self._quiet_until:  # sent before the agent was interrupted: never played
            if int(samples.max()) > VOICED_PEAK or -int(samples.min()) > VOICED_PEAK:
                io.counters[BARGE_IN_DROPPED] += len(samples) * io.rate // SAMPLE_RATE
            samples = self._silence if len(samples) == FRAME else np.zeros_like(samples)
        elif self.agent_edges.push(None if silent else samples, now, len(samples) / SAMPLE_RATE) == "start":
            # when this frame leaves the speaker: behind what is queued, and the device's latency
            played_at = now + io.playback.available() / io.rate + self.audio.latency_s
            self.to_room_loop(self.turns.on_agent_audio, played_at)
        elastic = self._elastic
        if elastic is not None and len(samples) == FRAME:
            elastic.watch(io, now)
            samples = elastic.process(samples, self.packets())
            io.cushion = elastic.extra * io.rate // SAMPLE_RATE
        for chunk in self._out_reframe.push(samples):
            if io.playback.write(chunk) < len(chunk):
                io.counters[PLAYBACK_OVERRUNS] += 1
        self.frames_in += len(samples) // FRAME
        waiter = self.tick_waiter
        if waiter is not None:
            wake(waiter)

    def drop_playback(self, quiet_s: float = 0.0) -> None:
        """Silence the speaker within one device buffer; agent audio that
        arrives in the next ``quiet_s`` seconds plays as silence."""
        io = self.io
        if io is not None:
            self._quiet_until = time.monotonic() + quiet_s
            io.flush_playback()

    def play_again(self) -> None:
        """The agent speaks again after a barge-in: its audio plays."""
        self._quiet_until = 0.0

    # -- microphone (audio loop) ------------------------------------------------------
    def start_capture(self, sink: Sink | PlainSink | None, frame_clocked: Callable[[], bool] = lambda: False, *,
                      drop_stale: bool = True, tick_frames: int = 1, awaits: bool = True) -> None:
        """Start the microphone pump (``sink`` ``None``: a text-only session,
        which still clocks a loop-clocked backend). ``frame_clocked()``: one
        agent stream delivers frames at real time, so a loop-clocked backend
        is clocked by them. ``drop_stale``: after a stall, microphone audio
        older than ``CAPTURE_BACKLOG_S`` is dropped;
        ``tick_frames``: 10 ms frames a tick (see
        :func:`~speko_sync._capture.capture_pump`); ``awaits`` false: the
        sink is a plain call, and the pump runs on the loop's timer
        (:class:`~speko_sync._capture.TimedPump`)."""
        io = self.io
        assert io is not None
        io.capture.skip(io.capture.available())  # what the device heard while we joined
        if sink is not None and not awaits:
            self._timed = TimedPump(self, cast(PlainSink, sink), tick_frames)
        elif sink is not None or self.audio.clocked_by_loop:
            awaited = cast("Sink | None", sink)
            self.tasks.append(asyncio.get_running_loop().create_task(
                self.supervised("microphone", lambda: capture_pump(self, awaited, frame_clocked, drop_stale=drop_stale,
                                                          tick_frames=tick_frames))))

    def pump_failed(self, what: str, exc: Exception, *, last: bool) -> None:
        """An audio pump raised: logged, and a microphone's reported as
        MICROPHONE_FAILED; ``last``: it is not started again."""
        log.error("the %s audio path failed (%s): %r", what, "giving up" if last else "restarting it", exc,
                  exc_info=exc)
        if what == "microphone":
            self.emit("error", SpekoClientError(ErrorCode.MICROPHONE_FAILED,
                                                 f"the microphone audio path failed: {exc}", exc))

    async def supervised(self, what: str, pump: Callable[[], Awaitable[None]]) -> None:
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
                self.pump_failed(what, exc, last=last)
                if last:
                    return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop the pumps started here."""
        timed, self._timed = self._timed, None
        if timed is not None:
            timed.stop()
        tasks, self.tasks = self.tasks, []
        await cancel_all(tasks)


def _prepare_without_microphone(audio: AudioBackend) -> int:
    """``prepare`` for a text-only session: backends with devices take
    ``microphone=False``; others have no microphone to open anyway."""
    if "microphone" in inspect.signature(audio.prepare).parameters:
        return audio.prepare(microphone=False)  # type: ignore[call-arg]
    return audio.prepare()
