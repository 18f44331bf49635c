"""The agent's audio of a realtime session to the speaker, on the audio loop.

Bursts arrive faster than real time (at the session's output rate): they are
resampled to 48 kHz into a queue that holds a whole reply and more, and a
feeder keeps the speaker's ring :attr:`BurstPlayer.TARGET_MS` deep from it at
the device's clock, with silence between replies (as a LiveKit track plays),
so a reply plays whole, in order, at real time, and nothing is ever trimmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from ._audio_path import AudioPath
from ._frames import FRAME, RatioResampler, cancel_all, sleep_until
from ._ring import Ring
from .audio import BARGE_IN_DROPPED, PLAYBACK_OVERRUNS, SAMPLE_RATE


class BurstPlayer:
    """Audio loop. ``on_speaking(bool)`` is told (on the audio loop) when the
    agent's audio starts playing and when it has stopped."""

    #: the speaker's ring is kept this deep (ms) for a device-clocked backend
    #: (whose callbacks come in buffers of their own, between our ticks); a
    #: loop-clocked one is topped up just before each tick: one tick is enough.
    #: The jitter policy's slack (:attr:`SLACK_MS`) stays above it, so nothing
    #: is ever trimmed
    TARGET_MS = 30
    SLACK_MS = 60
    #: the agent's audio that may wait for the speaker: a full reply and more
    QUEUE_S = 60.0
    #: silence after the agent's audio before it counts as stopped (10 ms frames)
    QUIET_FRAMES = 5

    def __init__(self, path: AudioPath, output_rate: int, on_speaking: Callable[[bool], None]) -> None:
        self._path = path
        self._on_speaking = on_speaking
        self.queue = Ring(int(SAMPLE_RATE * self.QUEUE_S))
        self._output_rate = output_rate
        self._resample = RatioResampler(output_rate, SAMPLE_RATE)
        self._frame = np.zeros(2 * FRAME, dtype=np.int16)  # up to 20 ms a frame
        self._silence = np.zeros(2 * FRAME, dtype=np.int16)
        self._quiet = self.QUIET_FRAMES  # frames of silence played since the agent's audio
        self._feeder: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Feed the speaker: a loop-clocked backend just before each tick of
        its clock, a device-clocked one every 10 ms of the loop's clock."""
        path = self._path
        if path.audio.clocked_by_loop:
            path.before_tick = self.top_up
        else:
            self._feeder = asyncio.get_running_loop().create_task(path.supervised("speaker", self._feed))

    def push(self, samples: np.ndarray) -> None:
        """Queue agent audio (int16 at the output rate)."""
        if self._quiet >= self.QUIET_FRAMES and not self.queue.available():
            sooner = self._path.tick_sooner  # the start of a reply: play it at the next 10 ms tick
            if sooner is not None:
                sooner()
        audio = self._resample.push(samples)
        io = self._path.io
        if self.queue.write(audio) < len(audio) and io is not None:  # over a minute queued: reported, as a full ring
            io.counters[PLAYBACK_OVERRUNS] += 1

    def drop(self, *, barge_in: bool) -> None:
        """Drop what is queued and silence the speaker within one device
        buffer; a new reply starts clean. A barge-in counts what it dropped."""
        self._resample = RatioResampler(self._output_rate, SAMPLE_RATE)
        dropped = self.queue.skip(self.queue.available())
        io = self._path.io
        if barge_in and io is not None:
            io.counters[BARGE_IN_DROPPED] += dropped * io.rate // SAMPLE_RATE
        self._path.drop_playback()

    def queued_ms(self) -> float:
        """Any thread: the agent's audio waiting before the speaker's ring."""
        return 1000.0 * self.queue.available() / SAMPLE_RATE

    async def _feed(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            next_tick = await sleep_until(loop, next_tick + 0.01, 0.1)
            self.top_up()

    def top_up(self, ticks: int = 1) -> None:
        """Fill the speaker's ring to its depth (a loop-clocked backend: the
        ``ticks`` about to come) from the queue, or with silence when it is
        empty (the end of a reply, shorter than a frame, padded with it), in
        one frame of up to 20 ms. The device drains the ring, so playback
        follows the device's clock exactly."""
        path, queue = self._path, self.queue
        io = path.io
        if io is None:
            return
        target = ticks * io.rate // 100 if path.audio.clocked_by_loop else io.rate * self.TARGET_MS // 1000
        while (missing := target - io.playback.available()) > 0:
            frames = max(1, min(2, -(-missing * SAMPLE_RATE // io.rate) // FRAME))
            n = frames * FRAME
            quiet = self._quiet
            silent = not queue.available()
            if not silent:
                frame = self._frame[:n]
                got = queue.read_into(frame)
                frame[got:] = 0
                if quiet >= self.QUIET_FRAMES:
                    self._on_speaking(True)
                self._quiet = 0
            else:
                frame = self._silence[:n]
                self._quiet = quiet + frames
                if quiet < self.QUIET_FRAMES <= self._quiet:
                    self._on_speaking(False)
            path.play(frame, silent=silent)

    async def stop(self) -> None:
        self._path.before_tick = None
        feeder, self._feeder = self._feeder, None
        await cancel_all([feeder] if feeder is not None else [])
