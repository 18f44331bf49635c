"""Frames and ticks shared by the audio path and the transports' players."""

from __future__ import annotations

import asyncio

import numpy as np
from livekit import rtc

from .audio import SAMPLE_RATE

FRAME = SAMPLE_RATE // 100  # 10 ms at 48 kHz


class RatioResampler:
    """Streaming resampling by a whole ratio (48 kHz to and from 24 or 16
    kHz): a Kaiser-windowed sinc low-pass, polyphase when interpolating. Each
    push returns exactly the ratio times its input (no clumps, nothing held
    back), delayed by half the filter, under 1 ms at 48 kHz."""

    TAPS_PER_PHASE = 24

    def __init__(self, rate_in: int, rate_out: int) -> None:
        high, low = max(rate_in, rate_out), min(rate_in, rate_out)
        if high % low:
            raise ValueError(f"{rate_in} Hz to {rate_out} Hz is not a whole ratio")
        factor = high // low
        self.up, self.down = (factor, 1) if rate_out > rate_in else (1, factor)
        n = self.TAPS_PER_PHASE * factor
        t = np.arange(n) - (n - 1) / 2
        cutoff = 0.9 * 0.5 / factor  # cycles per sample at the high rate, below the low rate's Nyquist
        taps = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, 8.0)
        taps /= taps.sum()
        if self.up > 1:
            self._phases = [np.ascontiguousarray(taps[p::self.up] * self.up) for p in range(self.up)]
            self._keep = self.TAPS_PER_PHASE - 1
        else:
            self._taps = taps
            self._keep = n - 1
        self._buf = np.zeros(self._keep + 4800, dtype=np.float64)  # the history, then each push's input
        self._phase = 0  # decimating: where in the next input the next output sample is

    def push(self, samples: np.ndarray) -> np.ndarray:
        """int16 in, int16 out: ``len(samples) * up // down`` samples (give
        or take one when decimating a length that is not a multiple). Few
        numpy calls: each costs more than its arithmetic at these sizes."""
        keep, n = self._keep, len(samples)
        if not n:
            return np.zeros(0, dtype=np.int16)
        if keep + n > len(self._buf):
            grown = np.zeros(keep + n, dtype=np.float64)
            grown[:keep] = self._buf[:keep]
            self._buf = grown
        buf = self._buf
        buf[keep:keep + n] = samples
        window = buf[:keep + n]
        if self.up > 1:
            out = np.empty(n * self.up, dtype=np.float64)
            for p, phase in enumerate(self._phases):
                out[p::self.up] = np.convolve(window, phase, "valid")
        else:
            out = np.convolve(window, self._taps, "valid")[self._phase::self.down]
            self._phase = (self._phase - n) % self.down
        buf[:keep] = buf[n:keep + n]  # the next push's history
        np.rint(out, out=out)
        np.minimum(out, 32767, out=out)
        np.maximum(out, -32768, out=out)
        return out.astype(np.int16)


class Reframer:
    """Resamples (when the rates differ) and cuts into frames of ``frame_ms``.
    A whole ratio goes through :class:`RatioResampler`; any other (a 44.1 kHz
    device) through LiveKit's resampler."""

    def __init__(self, rate_in: int, rate_out: int, frame_ms: int = 10) -> None:
        whole = max(rate_in, rate_out) % min(rate_in, rate_out) == 0
        self._ratio = RatioResampler(rate_in, rate_out) if rate_in != rate_out and whole else None
        self._resampler = rtc.AudioResampler(rate_in, rate_out) if rate_in != rate_out and not whole else None
        self._rate_in = rate_in
        self._pending = np.zeros(0, dtype=np.int16)
        self._frame = rate_out * frame_ms // 1000

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Samples (int16) in, whole frames out. The frames are valid until the
        caller's ``samples`` change (they may be views of them)."""
        if self._ratio is not None:
            part = self._ratio.push(samples)
        elif self._resampler is not None:
            frames = self._resampler.push(rtc.AudioFrame(samples.tobytes(), self._rate_in, 1, len(samples)))
            part = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames]) if frames else samples[:0]
        else:
            part = samples
        frame = self._frame
        if not len(self._pending) and not len(part) % frame:  # whole frames, nothing pending: no copies
            return [part] if len(part) == frame else [part[i:i + frame] for i in range(0, len(part), frame)]
        pending = self._pending = np.concatenate([self._pending, part])
        whole = len(pending) - len(pending) % frame
        out = [pending[i:i + frame] for i in range(0, whole, frame)]
        self._pending = pending[whole:].copy()
        return out


async def cancel_all(tasks: list[asyncio.Task[None]], timeout: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until they have ended, at most ``timeout``
    seconds: a task that ignores its cancel is left running rather than hang
    what stops it (a session's release, which must still leave the room).
    What they raised is retrieved and dropped; a cancel of the caller itself
    goes through."""
    for task in tasks:
        task.cancel()
    if tasks:
        done, _ = await asyncio.wait(tasks, timeout=timeout)
        for task in done:
            if not task.cancelled():
                task.exception()


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
