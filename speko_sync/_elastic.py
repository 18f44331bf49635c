"""The agent's audio, stretched or squeezed a little on its way to a device
with a clock of its own, so the playback depth stays where it should be:
clock drift absorbed by tiny resampling instead of cuts or gaps, and depth
built ahead of inbound packet floods.

**Drift.** A sound card's clock is not the sender's: 50-500 ppm apart, 0.2-1.8 s
an hour. As each frame arrives, the audio loop measures the ring's headroom
against a continuous read position (the count and time of the speaker's last
buffer, advanced at the device rate since: the device's buffers and the
network's frames slide past each other with drift, and a headroom seen only
at the buffers jumps by a frame each time they do). :class:`ElasticPlayback`
steers the least headroom of each second towards the jitter policy's slack
with a proportional-integral controller on the playback rate, within
:attr:`ElasticPlayback.DRIFT_LIMIT_PPM` (an inaudible pitch change; steady, it
equals the clocks' difference). Depth more than a frame above the slack for a
whole second (what a burst of late frames leaves, or the speaker's restart
after an underrun) is played out 5 % faster instead, within a fraction of a
second, like a flood cushion given back: at the controller's limit 20 ms
would take 25 s.

**Floods.**
LiveKit's Python SDK hands every native event, the agent's audio frames and
data packets alike, to Python on one FFI thread. While packets pour in (thousands
a second), the agent's 10 ms frames come out of it irregularly: gaps of 20-40 ms
instead of 10. A jitter buffer that only widens after an underrun pays for
each step with an audible gap. :class:`ElasticPlayback` sees the flood coming (the
inbound packet rate, counted on the room loop) and builds the depth before the
gaps arrive, without a gap: it plays the agent's frames 5 % slower until
:attr:`ElasticPlayback.TARGET_MS` of audio more is queued, holds it while the flood
lasts, then plays 5 % faster until the extra depth is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .audio import AudioIO

FRAME = 480  # 10 ms at 48 kHz: the unit the agent's audio arrives in


class ElasticPlayback:
    """Audio loop. Stretches or squeezes each 10 ms frame of the agent's audio
    (48 kHz int16): by the drift controller's rate (:attr:`ppm`, set by
    :meth:`observe`), by 5 % while playing out an excess, and by 5 % to move
    the cushion towards a target that is :attr:`TARGET_MS` while inbound
    packets arrive faster than :attr:`RATE_PER_S` (measured over
    :attr:`WINDOW_FRAMES` frames) and for :attr:`HOLD_FRAMES` frames after,
    zero otherwise.

    :attr:`extra` is how much longer (in 48 kHz samples) the audio handed to the
    speaker is than what arrived: the depth built so far, which the playback
    policy must not trim. Time-scaling is linear interpolation with a phase
    carried across frames, so the waveform stays continuous; its pitch moves by
    5 % while depth is built or given back (under a second each way). The echo
    canceller's reference is what the speaker played, scaled as it was
    (``AudioIO.played``): its echo stays a linear function of it.
    """

    TARGET_MS = 40
    RATE_PER_S = 400  # a real agent sends tens of packets a second at most
    WINDOW_FRAMES = 10  # the rate is measured every 100 ms
    HOLD_FRAMES = 200  # two calm seconds before the depth is given back
    STEP = FRAME // 20  # 5 %: samples added or removed per frame
    #: the drift controller's limit on the rate change (parts per million)
    DRIFT_LIMIT_PPM = 800.0
    #: its gains: ppm per ms of error, and ppm per ms of error each second
    KP_PPM_PER_MS = 180.0
    KI_PPM_PER_MS = 10.0
    #: depth this far (ms) above the slack, a whole second long, is played
    #: out 5 % faster (down to a third of it); the controller takes the rest
    EXCESS_MS = 10

    def __init__(self) -> None:
        self.extra = 0
        self.ppm = 0.0  # the drift controller's rate change: negative plays faster (a device that is slow)
        self._integral = 0.0
        self._fraction = 0.0  # of a sample, carried from frame to frame
        self._excess = 0  # 48 kHz samples still to play out fast
        self._window_end = 0.0  # when the second being measured ends (0: not started)
        self._least = float("inf")
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

    def watch(self, io: AudioIO, now: float) -> None:
        """Before a frame is written to ``io``'s playback ring at ``now``
        (``io.clock`` seconds): the ring's headroom beyond the cushion,
        against the speaker's read position advanced at the device rate since
        its last buffer, to :meth:`observe`."""
        count, at = io.read_clock[0], io.read_clock[1]
        if not io.playing:
            self.reset()
        elif count == io.playback.total_read:  # (else a buffer is being taken: the next frame measures)
            spare = io.playback.total_written - count - io.rate * (now - at) - io.cushion
            self.observe(spare, now, io.slack, io.rate)

    def observe(self, spare: float, now: float, slack: int, rate: int) -> None:
        """A frame arrives at ``now`` (seconds, monotonic): the headroom the
        speaker's ring has beyond the cushion just before it is written
        (``spare``) and the slack it should have, in device samples at
        ``rate`` Hz. Each second, the least of these updates :attr:`ppm` (or
        starts playing out an excess); not while a flood is held."""
        if self._window_end == 0.0 or self.flooding:
            self._window_end, self._least = now + 1.0, float("inf")
            return
        self._least = min(self._least, spare)
        if now < self._window_end:
            return
        self._window_end = now + 1.0
        error_ms, self._least = 1000.0 * (self._least - slack) / rate, float("inf")
        if error_ms > self.EXCESS_MS:
            self._excess = int((error_ms - self.EXCESS_MS / 3) * FRAME / 10)
            return
        limit = self.DRIFT_LIMIT_PPM
        integral = max(-limit, min(limit, self._integral + self.KI_PPM_PER_MS * error_ms))
        if abs(integral + self.KP_PPM_PER_MS * error_ms) <= limit or abs(integral) < abs(self._integral):
            self._integral = integral  # (not while the rate is at its limit: no wind-up)
        self.ppm = -max(-limit, min(limit, self._integral + self.KP_PPM_PER_MS * error_ms))

    def reset(self) -> None:
        """The speaker starts again (after a barge-in or an underrun): the
        second being measured is thrown away; the rate found is kept."""
        self._window_end = 0.0

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
        if len(samples) != FRAME:
            if len(samples):
                self._last = float(samples[-1])
            return samples
        target = self._target if self._hold else 0
        change = max(-self.STEP, min(self.STEP, target - self.extra))
        self.extra += change
        fast = min(self._excess, self.STEP - max(0, -change))
        self._excess -= fast
        self._fraction += FRAME * self.ppm * 1e-6
        drift = int(self._fraction)  # towards zero: whole samples only
        self._fraction -= drift
        n = FRAME + change - fast + drift
        if n == FRAME:
            self._last = float(samples[-1])
            return samples
        return self._rescale(samples, n)

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
