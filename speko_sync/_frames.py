"""Frames and ticks shared by the audio path and the transports' players."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from livekit import rtc

from .audio import SAMPLE_RATE

FRAME = SAMPLE_RATE // 100  # 10 ms at 48 kHz


class Reframer:
    """Resamples (when the rates differ) and cuts into frames of ``frame_ms``."""

    def __init__(self, rate_in: int, rate_out: int, frame_ms: int = 10) -> None:
        self._resampler = rtc.AudioResampler(rate_in, rate_out) if rate_in != rate_out else None
        self._rate_in = rate_in
        self._pending = np.zeros(0, dtype=np.int16)
        self._frame = rate_out * frame_ms // 1000

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


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def sleep_until(loop: asyncio.AbstractEventLoop, due: float, catch_up: float) -> float:
    """Sleep until loop time ``due`` and return it; when already behind by more
    than ``catch_up`` seconds (a stall), return now instead, so the caller's
    10 ms clock resumes from here rather than bursting the ticks it missed."""
    delay = due - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    elif delay < -catch_up:
        return loop.time()
    return due


def wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
