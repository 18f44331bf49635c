"""Playback depth for inbound packet floods.

LiveKit's Python SDK hands every native event, the agent's audio frames and
data packets alike, to Python on one FFI thread. While packets pour in (thousands
a second), the agent's 10 ms frames come out of it irregularly: gaps of 20-40 ms
instead of 10. A jitter buffer that only widens after an underrun pays for
each step with an audible gap. :class:`FloodCushion` sees the flood coming (the
inbound packet rate, counted on the room loop) and builds the depth before the
gaps arrive, without a gap: it plays the agent's frames 5 % slower until
:attr:`FloodCushion.TARGET_MS` of audio more is queued, holds it while the flood
lasts, then plays 5 % faster until the extra depth is gone.
"""

from __future__ import annotations

import numpy as np

FRAME = 480  # 10 ms at 48 kHz: the unit the agent's audio arrives in


class FloodCushion:
    """Audio loop. Stretches or squeezes each 10 ms frame of the agent's audio
    (48 kHz int16) to move the playback depth towards a target that is
    :attr:`TARGET_MS` while inbound packets arrive faster than
    :attr:`RATE_PER_S` (measured over :attr:`WINDOW_FRAMES` frames) and for
    :attr:`HOLD_FRAMES` frames after, zero otherwise.

    :attr:`extra` is how much longer (in 48 kHz samples) the audio handed to the
    speaker is than what arrived: the depth built so far, which the playback
    policy must not trim. Time-scaling is linear interpolation with a phase
    carried across frames, so the waveform stays continuous; its pitch moves by
    5 % while depth is built or given back (under a second each way). The echo
    canceller's reference stays the unscaled audio: the delay it sees drifts by
    the 40 ms over 0.8 s, within what its delay estimator follows.
    """

    TARGET_MS = 40
    RATE_PER_S = 400  # a real agent sends tens of packets a second at most
    WINDOW_FRAMES = 10  # the rate is measured every 100 ms
    HOLD_FRAMES = 200  # two calm seconds before the depth is given back
    STEP = FRAME // 20  # 5 %: samples added or removed per frame

    def __init__(self) -> None:
        self.extra = 0
        self._target = FRAME * self.TARGET_MS // 10
        self._counted = 0
        self._frames = 0
        self._hold = 0
        self._last = 0.0  # the previous frame's last sample: where the next one's phase starts
        self._grid = np.arange(-1, FRAME, dtype=np.float64)
        self._positions: dict[int, np.ndarray] = {}
        self._scratch = np.zeros(FRAME + 1, dtype=np.float64)

    @property
    def flooding(self) -> bool:
        return self._hold > 0

    def process(self, samples: np.ndarray, packets_received: int) -> np.ndarray:
        """One 10 ms frame (int16, :data:`FRAME` samples) in, the samples to
        play out; ``packets_received`` is the session's count of inbound
        packets so far. Raises nothing for frames of the expected length;
        others pass through unchanged."""
        self._frames += 1
        if self._frames >= self.WINDOW_FRAMES:
            rate = (packets_received - self._counted) * 100 / self._frames
            self._counted, self._frames = packets_received, 0
            if rate >= self.RATE_PER_S:
                self._hold = self.HOLD_FRAMES
        if self._hold:
            self._hold -= 1
        target = self._target if self._hold else 0
        change = max(-self.STEP, min(self.STEP, target - self.extra))
        if change == 0 or len(samples) != FRAME:
            if len(samples):
                self._last = float(samples[-1])
            return samples
        self.extra += change
        return self._rescale(samples, FRAME + change)

    def _rescale(self, samples: np.ndarray, n: int) -> np.ndarray:
        positions = self._positions.get(n)
        if positions is None:  # output sample j sits at (j + 1) * FRAME / n - 1: the last one on the last input
            positions = self._positions[n] = (np.arange(1, n + 1) * (FRAME / n) - 1.0)
        source = self._scratch
        source[0] = self._last
        source[1:] = samples
        self._last = float(samples[-1])
        out: np.ndarray = np.rint(np.interp(positions, self._grid, source)).astype(np.int16)
        return out
