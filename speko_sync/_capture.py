"""The microphone pump of a conversation, on the audio loop: every 10 ms it
clocks a loop-clocked backend and hands what the microphone captured, as
processed 10 ms frames at 48 kHz, to the transport's sink."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from livekit import rtc

from ._frames import FRAME, Reframer, wake
from .audio import CAPTURE_DROPPED, CAPTURED, SAMPLE_RATE, AudioBackend, AudioIO
from .errors import ErrorCode, SpekoClientError

if TYPE_CHECKING:
    from ._audio_path import AudioPath, PlainSink, Sink

#: For a sink that drops stale audio (LiveKit's): after a stall of the loop,
#: what reaches the network in a burst is at most this much (and, from a
#: loop-clocked backend, half a frame more for timer jitter); the oldest of
#: the rest is dropped and counted, so the agent's jitter buffer is not left
#: holding it as latency.
CAPTURE_BACKLOG_S = 0.04
#: How much faster than real time a loop-clocked backend's lead over real
#: time is forgotten (1 % of elapsed time): the lead a burst leaves is gone
#: after a few seconds, as the far end's jitter buffer catches up with it.
LEAD_LEAK = 0.01
#: Behind by more than this (a long stall), the pump resumes from now
#: instead of running the missed ticks.
CATCH_UP_S = 0.1
#: While one agent track plays, a loop-clocked backend ticks as each of its
#: frames arrives; when one is this late, the timer ticks instead.
FRAME_GRACE_S = 0.005
#: The echo canceller's reference (what the speaker played) may run this far
#: ahead of the microphone (the output stream started first, or the input one
#: stalled); beyond it the oldest is dropped, so the delay the canceller has
#: to find stays a device's latency, not a backlog.
ECHO_LEAD_S = 0.1


class MicrophoneWatchdog:
    """Notices a microphone that failed mid-call (the backend says so, or a
    device-clocked one delivered nothing for :attr:`STALL_S` after it had
    started) and reports it once as MICROPHONE_FAILED; the session goes on. It
    reports again only if the microphone came back and failed anew."""

    STALL_S = 2.0

    def __init__(self, emit: Callable[[str, Any], None]) -> None:
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


async def wait_ticks(path: AudioPath, loop: asyncio.AbstractEventLoop, first: float, most: int) -> tuple[int, float]:
    """Wait for ``most`` 10 ms ticks, the first due at loop time ``first``;
    ``path.tick_sooner()`` (the agent's audio starting) cuts the wait short at
    the next tick, so a pump that ticks every 20 ms still starts playing on a
    10 ms grid. Returns the ticks that passed and when the next one is due;
    behind by more than ``CATCH_UP_S`` (a stall), it resumes from now rather
    than run the ticks it missed."""
    waiter: asyncio.Future[None] = loop.create_future()
    steps = most
    timer = loop.call_at(first + 0.01 * (steps - 1), wake, waiter)

    def sooner() -> None:
        nonlocal steps, timer
        k = _sooner_steps(loop, first)
        if k < steps:
            steps = k
            timer.cancel()
            timer = loop.call_at(first + 0.01 * (k - 1), wake, waiter)

    path.tick_sooner = sooner
    try:
        await waiter
    finally:
        timer.cancel()
        path.tick_sooner = None
    return steps, _next_due(loop, first + 0.01 * (steps - 1))


def _sooner_steps(loop: asyncio.AbstractEventLoop, first: float) -> int:
    """The ticks from ``first`` to the first tick at or after now."""
    return max(1, math.ceil((loop.time() - first) / 0.01 - 1e-9) + 1)


def _next_due(loop: asyncio.AbstractEventLoop, due: float) -> float:
    """After the tick due at ``due``: when the next one is (from now after a stall)."""
    return loop.time() + 0.01 if loop.time() - due > CATCH_UP_S else due + 0.01


class CaptureStep:
    """What each tick of the microphone pump does, after its wait: clock a
    loop-clocked backend, check the microphone, and take what it captured
    as frames for the sink (see :func:`capture_pump` for the rules)."""

    def __init__(self, path: AudioPath, *, sending: bool, drop_stale: bool, tick_frames: int) -> None:
        io = path.io
        assert io is not None
        self.path, self.io, self.audio = path, io, path.audio
        self.sending, self.drop_stale = sending, drop_stale
        self.device_frame = io.rate // 100
        self.unit = self.device_frame * tick_frames  # what one tick takes from the microphone, as one frame
        self.backlog = int(io.rate * CAPTURE_BACKLOG_S)
        # a loop-clocked backend captures as the pump ticks it, and a stall's
        # catch-up ticks it faster than real time; a device cannot run ahead
        self.lead = SendLead(self.unit / io.rate) if drop_stale and self.audio.clocked_by_loop else None
        self.buf = np.zeros(self.unit, dtype=np.int16)
        self.reframe = Reframer(io.rate, SAMPLE_RATE, 10 * tick_frames)
        # (the audio io keeps what was played exactly when the session cancels echo)
        self.echo = EchoReference(io, path.apm) if io.played is not None and path.apm is not None else None
        self.watchdog = MicrophoneWatchdog(path.emit)
        self.loop = asyncio.get_running_loop()
        self.ticks = 0

    def frames(self, n: int) -> Iterator[np.ndarray]:
        """Tick ``n`` 10 ms frames; then each processed frame for the sink
        (a view of a buffer the next frame reuses: send it before asking for
        the next)."""
        path, io, audio = self.path, self.io, self.audio
        if audio.clocked_by_loop:
            if path.before_tick is not None:
                path.before_tick(n)
            for _ in range(n):
                audio.tick(self.device_frame)
        if not self.sending:  # text-only
            io.capture.skip(io.capture.available())
            return
        self.ticks += 1
        if self.ticks % 50 == 0:  # twice a second
            self.watchdog.check(audio, int(io.counters[CAPTURED]), self.loop.time())
        if self.drop_stale:
            self._drop_stale()
        buf, echo = self.buf, self.echo
        while io.capture.available() >= self.unit:
            io.capture.read_into(buf)
            if path.muted:  # a muted microphone feeds nothing, the canceller included
                if echo is not None:
                    echo.skip(self.unit)
                continue
            if echo is not None:  # what was played as this was heard: the canceller's reference, in step
                echo.feed(self.unit)
            if self.lead is not None:
                self.lead.sent()
            for samples in self.reframe.push(buf):
                now = self.loop.time()
                if path.apm is not None:
                    samples = _processed(path.apm, samples)
                # the user's speech as sent (echo cancelled): where it ends, a reply is timed from
                heard_at = now - io.capture.available() / io.rate
                if path.mic_edges.push(samples, heard_at, len(samples) / SAMPLE_RATE) == "end":
                    path.to_room_loop(path.turns.on_user_speech_end, path.mic_edges.last_voiced)
                yield samples
        if echo is not None:
            echo.bound(io.capture.available())

    def _drop_stale(self) -> None:
        """Drop (and count) the oldest captured audio beyond ``CAPTURE_BACKLOG_S``
        waiting, or beyond what keeps a loop-clocked backend's lead over real
        time within it."""
        io = self.io
        keep = self.backlog if self.lead is None else min(self.backlog, self.lead.room(self.loop.time()) * self.unit)
        stale = io.capture.available() - keep
        if stale > 0:
            io.counters[CAPTURE_DROPPED] += io.capture.skip(stale)
            if self.echo is not None:  # the same span of the reference: the two stay in step
                self.echo.skip(stale)


class EchoReference:
    """Audio loop. Feeds the echo canceller what the speaker really played
    (``AudioIO.played``, written by the device's own callback after the
    jitter policy, the drift resampling and the volume), in step with the
    microphone: a unit of reference before each unit of microphone audio.
    The delay the canceller then has to find is the devices' latency,
    whatever depth the playback ring holds, and the echo is a linear
    function of the reference even while the playback is stretched."""

    def __init__(self, io: AudioIO, apm: rtc.AudioProcessingModule) -> None:
        assert io.played is not None
        self.ring, self.apm = io.played, apm
        self.buf = np.zeros(io.rate, dtype=np.int16)
        self.reframe = Reframer(io.rate, SAMPLE_RATE)
        self.lead = int(io.rate * ECHO_LEAD_S)
        self.ring.skip(self.ring.available())  # played before the microphone pump began

    def feed(self, samples: int) -> None:
        """Up to ``samples`` (device rate) of what was played, to the canceller."""
        part = self.buf[:self.ring.read_into(self.buf[:samples])]
        for frame in self.reframe.push(part):  # 10 ms at 48 kHz, what the canceller takes
            self.apm.process_reverse_stream(rtc.AudioFrame(frame.tobytes(), SAMPLE_RATE, 1, FRAME))

    def skip(self, samples: int) -> None:
        self.ring.skip(samples)

    def bound(self, waiting: int) -> None:
        """After a tick, with ``waiting`` microphone samples still queued:
        drop the reference's oldest beyond :data:`ECHO_LEAD_S` ahead of them."""
        ahead = self.ring.available() - waiting - self.lead
        if ahead > 0:
            self.ring.skip(ahead)


class SendLead:
    """How far the microphone audio a loop-clocked backend sent is ahead of
    real time: audio sent, less time elapsed, never below nothing (what
    LiveKit's own queue estimate measures), forgotten ``LEAD_LEAK`` faster
    than real time. Counted across ticks, not only from what one tick finds
    waiting, it bounds a stall's catch-up, whose missed ticks run back to back
    and would each send a frame. Times in seconds; pure arithmetic."""

    def __init__(self, frame_s: float) -> None:
        self.frame_s = frame_s
        self.lead = 0.0
        self._at = 0.0

    def room(self, now: float) -> int:
        """The frames that may be sent at ``now`` (loop time) and keep the lead
        within ``CAPTURE_BACKLOG_S`` and half a frame (timer jitter)."""
        self.lead = max(0.0, self.lead - (now - self._at) * (1 + LEAD_LEAK))
        self._at = now
        return max(0, math.floor((CAPTURE_BACKLOG_S - self.lead) / self.frame_s + 0.5))

    def sent(self) -> None:
        """One frame went out."""
        self.lead += self.frame_s


async def capture_pump(path: AudioPath, sink: Sink | None, frame_clocked: Callable[[], bool], *,
                       drop_stale: bool = True, tick_frames: int = 1) -> None:
    """Every 10 ms: clock a loop-clocked backend, and send what the microphone
    captured (a text-only session just discards it).

    While one agent stream plays, a loop-clocked backend is clocked by its
    frames (they arrive at real time), so playback adds nothing to what
    the stream delivers; otherwise by a timer whose ticks, when a little
    late, are caught up, so the backend keeps real time under load. Every
    sink sends a frame at once (LiveKit's audio source is made without a
    queue of its own, so nothing stands between the microphone and the
    network); after a stall, one that ``drop_stale`` gets at most
    ``CAPTURE_BACKLOG_S`` ahead of real time, counted across the ticks that
    catch up, the oldest of the rest dropped and counted, so the far end's
    jitter buffer is not left holding it; otherwise (the realtime
    socket) late frames go out late. The timer ticks every
    ``tick_frames`` 10 ms frames (a transport whose frames are 20 ms long
    needs no more; each tick of the loop costs about as much as its work)."""
    step = CaptureStep(path, sending=sink is not None, drop_stale=drop_stale, tick_frames=tick_frames)
    loop = step.loop
    ticked = path.frames_in  # agent frames the backend has been ticked for
    phase = 0  # ticks since the last whole microphone frame, when a tick is shorter than the frame
    next_tick = loop.time() + 0.01
    while True:
        n = 1
        if step.audio.clocked_by_loop and frame_clocked():
            # clocked by the agent's frames: tick as each arrives (nothing waits
            # for a timer), or by the timer when one is late
            if path.frames_in == ticked:
                waiter = path.tick_waiter = loop.create_future()
                timer = loop.call_at(next_tick + FRAME_GRACE_S, wake, waiter)
                await waiter
                timer.cancel()
                path.tick_waiter = None
            if path.frames_in > ticked:
                n = min(path.frames_in - ticked, 10)
                next_tick = loop.time() + 0.01
            else:
                next_tick += 0.01
            ticked = path.frames_in
        else:
            ticked = path.frames_in
            # a wait cut short leaves the pump between two of its frames: the
            # next one is shorter, so the microphone's frames stay whole
            n, next_tick = await wait_ticks(path, loop, next_tick, tick_frames - phase)
            phase = (phase + n) % tick_frames
        for samples in step.frames(n):
            assert sink is not None
            await sink(samples)


class TimedPump:
    """The microphone pump for a sink that is a plain call (the realtime
    socket's): run by the loop's timer itself, so a tick costs one pass of
    the loop, not the two a coroutine's wake-up takes (a timer wakes the
    task, the task runs on the next pass). The same ticks, rules and
    restarts as :func:`capture_pump` with a timer clock."""

    def __init__(self, path: AudioPath, sink: PlainSink, tick_frames: int) -> None:
        self._path, self._sink, self._tick_frames = path, sink, tick_frames
        self._loop = asyncio.get_running_loop()
        self._failures = 0
        self._handle: asyncio.TimerHandle | None = None
        self._begin()
        path.tick_sooner = self._sooner

    def _begin(self, delay: float = 0.0) -> None:
        """(Re)start: a fresh step, the first tick 10 ms (and ``delay``) from now."""
        self._step = CaptureStep(self._path, sending=True, drop_stale=False, tick_frames=self._tick_frames)
        self._first = self._loop.time() + 0.01  # when the next tick is due
        self._steps = self._tick_frames  # the ticks this wait covers
        self._phase = 0
        self._schedule(delay)

    def _schedule(self, delay: float = 0.0) -> None:
        self._handle = self._loop.call_at(self._first + 0.01 * (self._steps - 1) + delay, self._tick)

    def _sooner(self) -> None:
        k = _sooner_steps(self._loop, self._first)
        if k < self._steps and self._handle is not None:
            self._steps = k
            self._handle.cancel()
            self._schedule()

    def _tick(self) -> None:
        n = self._steps
        self._first = _next_due(self._loop, self._first + 0.01 * (n - 1))
        self._phase = (self._phase + n) % self._tick_frames
        self._steps = self._tick_frames - self._phase
        try:
            for samples in self._step.frames(n):
                self._sink(samples)
        except Exception as exc:
            self._failures += 1
            last = self._failures > self._path.PUMP_RESTARTS
            self._path.pump_failed("microphone", exc, last=last)
            if last:
                self._handle = None
                return
            self._begin(0.05)
            return
        self._schedule()

    def stop(self) -> None:
        """Audio loop: no more ticks."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._path.tick_sooner == self._sooner:
            self._path.tick_sooner = None


def _processed(apm: rtc.AudioProcessingModule, samples: np.ndarray) -> np.ndarray:
    """``samples`` (whole 10 ms frames at 48 kHz) through the audio processing,
    which takes 10 ms at a time."""
    parts = []
    for start in range(0, len(samples), FRAME):
        frame = rtc.AudioFrame(samples[start:start + FRAME].tobytes(), SAMPLE_RATE, 1, FRAME)
        apm.process_stream(frame)
        parts.append(np.frombuffer(frame.data, dtype=np.int16))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
