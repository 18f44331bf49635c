"""Audio plumbing of the local server: one producer per published track, fanned
out to every subscriber, with a running level for active-speaker detection.

Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms, what Opus carries per packet
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_QUEUE_FRAMES = 10  # 200 ms per subscriber; older frames are dropped beyond that

#: An in-process subscriber: called with each frame, its mono samples and their RMS (0..1).
FrameSink = Callable[[AudioFrame, "np.ndarray", float], None]


def frame_to_mono(frame: AudioFrame) -> np.ndarray:
    """Return the frame's samples as mono int16 (averaging interleaved channels)."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if data.dtype != np.int16:
        data = np.clip(data * 32768.0, -32768, 32767).astype(np.int16)
    data = data.reshape(-1)
    if channels == 2:  # the usual case (Opus decodes to stereo): integer average, no floats
        return ((data[0::2].astype(np.int32) + data[1::2]) >> 1).astype(np.int16)
    if channels > 2:
        return np.asarray(data.reshape(-1, channels).mean(axis=1), dtype=np.int16)
    return data


def rms_level(mono: np.ndarray) -> float:
    """RMS of int16 samples as a fraction of full scale (0..1)."""
    if not len(mono):
        return 0.0
    x = mono.astype(np.float32)
    return float(np.sqrt(np.dot(x, x) / len(x))) / 32768.0


def mono_to_frame(samples: np.ndarray, pts: int) -> AudioFrame:
    """Wrap ``FRAME_SAMPLES`` int16 mono samples at 48 kHz as an ``AudioFrame``."""
    frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = _TIME_BASE
    return frame


class ForwardTrack(MediaStreamTrack):
    """What one subscriber's RTP sender encodes: frames pushed by a Fanout."""

    kind = "audio"

    def __init__(self, track_sid: str) -> None:
        super().__init__()
        self._id = track_sid
        self._queue: asyncio.Queue[AudioFrame | None] = asyncio.Queue(_QUEUE_FRAMES)

    def push(self, frame: AudioFrame | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # drop the oldest: latency must not grow
        self._queue.put_nowait(frame)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
            self.push(None)


class Fanout:
    """Pulls frames from one source and hands each to every sink.

    ``source`` is an async callable returning the next frame, or raising
    ``MediaStreamError`` when the track ends. Sinks are ``ForwardTrack`` objects
    (remote subscribers) or callables (in-process agents).
    """

    def __init__(self, track_sid: str, source: Callable[[], Awaitable[Any]]) -> None:
        self.track_sid = track_sid
        self._source = source
        self._tracks: list[ForwardTrack] = []
        self._sinks: list[FrameSink] = []
        self.level = 0.0  # RMS of the last frame, 0..1 of full scale
        self.peak_level = 0.0  # highest RMS since the last speaker tick
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def subscribe_track(self) -> ForwardTrack:
        track = ForwardTrack(self.track_sid)
        self._tracks.append(track)
        return track

    def unsubscribe_track(self, track: ForwardTrack) -> None:
        if track in self._tracks:
            self._tracks.remove(track)
        track.stop()

    def add_sink(self, sink: FrameSink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: FrameSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def take_peak(self) -> float:
        peak, self.peak_level = self.peak_level, 0.0
        return peak

    async def _run(self) -> None:
        try:
            while True:
                frame = await self._source()
                mono = frame_to_mono(frame)
                rms = rms_level(mono)
                self.level = rms
                self.peak_level = max(self.peak_level, rms)
                self.frames += 1
                for track in self._tracks:
                    track.push(frame)
                for sink in list(self._sinks):
                    sink(frame, mono, rms)
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self.level = 0.0
            for track in self._tracks:
                track.stop()
            self._tracks.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class PacedSource:
    """Real-time 20 ms frames for an in-process participant: queued audio when
    there is some, else silence. Pacing is by the loop clock, so a late tick
    catches up rather than drifting."""

    def __init__(self, on_busy: Callable[[bool], None] | None = None) -> None:
        self._on_busy = on_busy  # called when it starts (True) or stops (False) sending queued audio
        self._pending = np.zeros(0, dtype=np.int16)
        self._start = 0.0
        self._pts = 0
        self._base_pts = 0  # where the clock's current rate took over
        self._rate = float(SAMPLE_RATE)  # samples a second of the loop's clock: the sender's clock
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._idle = asyncio.Event()
        self._idle.set()

    def enqueue(self, samples: np.ndarray) -> None:
        """Queue int16 mono samples at 48 kHz after what is already queued."""
        self._pending = np.concatenate([self._pending, samples.astype(np.int16, copy=False)])
        if len(self._pending) and self._idle.is_set():
            self._idle.clear()
            if self._on_busy is not None:
                self._on_busy(True)

    def clear(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)
        self._went_idle()

    def _went_idle(self) -> None:
        if not self._idle.is_set():
            self._idle.set()
            if self._on_busy is not None:
                self._on_busy(False)

    @property
    def queued_seconds(self) -> float:
        return len(self._pending) / SAMPLE_RATE

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def set_clock_ppm(self, ppm: float) -> None:
        """From the next frame on, send as a sender whose clock runs ``ppm``
        parts per million fast (negative: slow): 48 kHz of its samples take
        ``1 / (1 + ppm / 1e6)`` seconds of the loop's clock."""
        if self._pts:
            self._start += (self._pts - self._base_pts) / self._rate
            self._base_pts = self._pts
        self._rate = SAMPLE_RATE * (1 + ppm * 1e-6)

    async def next_frame(self) -> AudioFrame:
        now = time.monotonic()
        if self._pts == 0:
            self._start = now
        else:
            due = self._start + (self._pts - self._base_pts) / self._rate
            if due > now:
                await asyncio.sleep(due - now)
        if len(self._pending):
            chunk = self._pending[:FRAME_SAMPLES]
            self._pending = self._pending[FRAME_SAMPLES:]
            if len(chunk) < FRAME_SAMPLES:
                chunk = np.concatenate([chunk, self._silence[len(chunk):]])
            if not len(self._pending):
                self._went_idle()
        else:
            chunk = self._silence
        frame = mono_to_frame(chunk, self._pts)
        self._pts += FRAME_SAMPLES
        return frame
