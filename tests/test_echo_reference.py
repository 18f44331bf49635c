"""The echo canceller's reference is what the speaker really played, in step
with the microphone: the real canceller (LiveKit's WebRTC audio processing),
a loop-clocked device whose microphone hears its own speaker 30 ms late, and
agent audio stretched and squeezed on its way to the speaker, as the elastic
playback does while it builds depth or follows a drifting clock."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
from lk import RATE, rms, speechlike

from speko_sync import AudioConstraints
from speko_sync._audio_path import AudioPath
from speko_sync._capture import CaptureStep
from speko_sync._elastic import FRAME, ElasticPlayback
from speko_sync._turns import TurnTracker
from speko_sync.audio import AudioBackend, AudioIO

ECHO_ONLY = AudioConstraints(echo_cancellation=True, noise_suppression=False, auto_gain_control=False)


class SpeakerNextToMicrophone(AudioBackend):
    """Loop-clocked: each tick renders the speaker and captures what it played
    ``delay_frames`` ticks ago, at half the level."""

    def __init__(self, delay_frames: int = 3) -> None:
        self.air: deque[np.ndarray] = deque(np.zeros(FRAME, dtype=np.int16) for _ in range(delay_frames))

    def open(self, io: AudioIO) -> None:
        super().open(io)
        self.out = np.zeros(FRAME, dtype=np.int16)
        self.scratch = np.zeros(FRAME, dtype=np.float32)

    def tick(self, samples: int) -> None:
        self.io.render(self.out, self.scratch)
        self.air.append(self.out.copy() // 2)
        self.io.capture_samples(self.air.popleft())


async def echo_left(stretch: bool, volume: float = 1.0) -> tuple[float, float]:
    """The echo's level at the microphone and after the canceller, over the
    last second of 6 s of speech."""
    audio = SpeakerNextToMicrophone()
    path = AudioPath(lambda *_: None, audio, ECHO_ONLY, microphone=True, turns=TurnTracker(),
                     to_room_loop=lambda *_: None)
    await path.open()
    path.make_processing()
    path.start_playback(elastic=False)
    io = path.io
    assert io is not None
    io.volume = volume
    step = CaptureStep(path, sending=True, drop_stale=False, tick_frames=1)
    elastic = ElasticPlayback()
    speech = speechlike(6.0)
    heard, sent = [], []
    for i, start in enumerate(range(0, len(speech), FRAME)):
        frame = speech[start:start + FRAME]
        # 5 % slower then faster, 0.4 s each way, as the elastic playback builds depth and gives it back
        played = elastic._rescale(frame, FRAME + (24 if i // 40 % 2 else -24)) if stretch else frame
        io.playback.write(played)
        raw = audio.air[-1].copy()
        for samples in step.frames(1):
            sent.append(samples.copy())
            heard.append(raw)
    await path.stop()
    await path.close()
    return rms(np.concatenate(heard)[-RATE:]), rms(np.concatenate(sent)[-RATE:])


def reduction_db(stretch: bool, volume: float = 1.0) -> float:
    heard, left = asyncio.run(echo_left(stretch, volume))
    assert heard > 0.015  # the microphone really hears the speaker
    return 20 * np.log10(heard / max(left, 1e-9))


def test_the_echo_of_steady_playback_is_cancelled() -> None:
    assert reduction_db(stretch=False) > 30


def test_the_echo_of_stretched_playback_is_cancelled_too() -> None:
    # (with the agent's audio as it arrived for reference, fed as it arrived: about 3 dB)
    assert reduction_db(stretch=True) > 30


def test_the_reference_is_played_at_the_volume() -> None:
    assert reduction_db(stretch=False, volume=0.4) > 30
