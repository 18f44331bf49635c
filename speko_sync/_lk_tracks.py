"""The agent's LiveKit audio tracks to the speaker, on the audio loop: one
track alone plays straight on (no mixer, no timer: playback adds nothing to
what its stream hands over); two or more are summed every 10 ms."""

from __future__ import annotations

import asyncio
import collections
import contextlib

import numpy as np
from livekit import rtc

from ._audio_path import AudioPath
from ._frames import FRAME, cancel_all, sleep_until
from .audio import SAMPLE_RATE


class TrackPlayer:
    """Audio loop. The remote audio tracks being played into ``path``."""

    def __init__(self, path: AudioPath) -> None:
        self._path = path
        self.playing = False  # remote audio plays once the devices and pumps are up
        self.streams: dict[str, rtc.AudioStream] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._queues: dict[str, collections.deque[np.ndarray]] = {}
        self._mixer: asyncio.Task[None] | None = None

    def frame_clocked(self) -> bool:
        """One track plays and no mixer runs: its frames clock the speaker."""
        return self._mixer is None and len(self.streams) == 1

    def add(self, track: rtc.Track) -> None:
        """Play a remote audio track (its stream delivers here)."""
        if not self.playing or track.sid in self.streams:
            return
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=10)
        self.streams[track.sid] = stream
        self._arrange()
        sid = track.sid
        self._readers[sid] = asyncio.get_running_loop().create_task(
            self._path.supervised("speaker", lambda: self._read(sid, stream)))

    def remove(self, sid: str) -> None:
        """Stop playing a track that went away."""
        stream = self.streams.pop(sid, None)
        reader = self._readers.pop(sid, None)
        if reader is not None:
            reader.cancel()
        if stream is not None:
            asyncio.get_running_loop().create_task(stream.aclose())
        self._queues.pop(sid, None)
        self._arrange()

    async def _read(self, sid: str, stream: rtc.AudioStream) -> None:
        """One remote audio track: alone, its frames go straight to the speaker;
        with others, to its queue for :meth:`_mix`."""
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            queue = self._queues.get(sid)
            if queue is None:
                self._path.play(samples)
            else:
                queue.append(samples)  # bounded: the oldest frame goes when it is full

    async def _mix(self) -> None:
        """While two or more tracks play: every 10 ms, sum one frame from each
        track's queue (a track with nothing queued adds silence)."""
        loop = asyncio.get_running_loop()
        mix = np.zeros(FRAME, dtype=np.int32)
        out = np.zeros(FRAME, dtype=np.int16)
        next_tick = loop.time()
        while True:
            next_tick = await sleep_until(loop, next_tick + 0.01, 0.015)
            mix[:] = 0
            heard = False
            for queue in self._queues.values():
                if queue:
                    frame = queue.popleft()
                    if len(frame) == FRAME:
                        mix += frame
                        heard = True
            if heard:
                np.clip(mix, -32768, 32767, out=mix)
                out[:] = mix
                self._path.play(out)

    def _arrange(self) -> None:
        """Mix only while two or more remote audio tracks play."""
        mixing = len(self.streams) > 1
        if mixing and self._mixer is None:
            self._queues = {sid: collections.deque(maxlen=5) for sid in self.streams}
            self._mixer = asyncio.get_running_loop().create_task(self._mix())
        elif mixing:
            for sid in self.streams:
                self._queues.setdefault(sid, collections.deque(maxlen=5))
        elif self._mixer is not None:
            self._mixer.cancel()
            self._mixer = None
            self._queues = {}

    async def stop(self) -> None:
        """Stop the readers and the mixer and close the streams."""
        self.playing = False
        tasks = list(self._readers.values())
        if self._mixer is not None:
            tasks.append(self._mixer)
        await cancel_all(tasks)
        self._readers, self._mixer = {}, None
        for stream in list(self.streams.values()):
            with contextlib.suppress(Exception):
                await stream.aclose()
        self.streams.clear()
