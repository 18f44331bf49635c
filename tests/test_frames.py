"""Whole-ratio resampling and the realtime burst player (pure: no loop, no network)."""

from __future__ import annotations

import numpy as np
import pytest

from speko_sync._frames import RatioResampler, Reframer
from speko_sync._realtime_audio import BurstPlayer
from speko_sync.audio import BARGE_IN_DROPPED, PLAYBACK_OVERRUNS, AudioConstraints, AudioIO, BufferAudio


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize(("rate_in", "rate_out"), [(48000, 24000), (48000, 16000), (24000, 48000),
                                                   (16000, 48000)])
def test_every_push_returns_exactly_the_ratio_and_keeps_the_tone(rate_in: int, rate_out: int) -> None:
    resampler = RatioResampler(rate_in, rate_out)
    tone = sine(1000, rate_in, 1.0)
    block = rate_in // 100
    outs = [resampler.push(tone[i:i + block]) for i in range(0, len(tone), block)]
    assert {len(o) for o in outs} == {rate_out // 100}  # no clumps: every 10 ms in is 10 ms out
    out = np.concatenate(outs)[rate_out // 10:]
    assert peak_hz(out, rate_out) == pytest.approx(1000, abs=2)
    assert np.abs(out).max() / np.abs(tone).max() == pytest.approx(1.0, abs=0.01)


def test_the_delay_is_under_a_millisecond_and_pieces_equal_the_whole() -> None:
    click = np.zeros(4800, dtype=np.int16)
    click[1000] = 20000
    whole = RatioResampler(48000, 24000).push(click)
    assert abs(int(np.argmax(np.abs(whole))) - 500) <= 24  # 1 ms at 24 kHz
    pieces = RatioResampler(48000, 24000)
    split = np.concatenate([pieces.push(click[i:i + 333]) for i in range(0, len(click), 333)])
    assert len(split) == len(whole) and np.array_equal(split, whole)


def test_decimation_rejects_what_the_lower_rate_cannot_carry() -> None:
    out = RatioResampler(48000, 16000).push(sine(10000, 48000, 0.5))  # above 8 kHz: would alias to 6 kHz
    assert np.abs(out[800:]).max() < 16383 * 10 ** (-60 / 20)


def test_a_ratio_that_is_not_whole_goes_through_livekits_resampler() -> None:
    with pytest.raises(ValueError, match="not a whole ratio"):
        RatioResampler(44100, 48000)
    frames = [f for i in range(0, 44100, 441) for f in Reframer(44100, 48000).push(sine(1000, 44100, 0.01))]
    assert all(len(f) == 480 for f in frames)


class Path:
    """What BurstPlayer needs of the audio path: an io, a loop-clocked backend, play()."""

    def __init__(self) -> None:
        self.io = AudioIO(48000)
        self.audio = BufferAudio()
        self.played: list[np.ndarray] = []
        self.before_tick = None
        self.tick_sooner = None
        self.constraints = AudioConstraints()

    def play(self, samples: np.ndarray, *, silent: bool = False) -> None:
        assert not silent or not samples.any(), "frames said to be silent are not"
        self.played.append(samples.copy())
        self.io.playback.write(samples)

    def drop_playback(self) -> None:
        self.io.flush_playback()


def test_a_reply_plays_whole_even_when_its_end_is_not_a_whole_frame() -> None:
    path = Path()
    edges: list[bool] = []
    player = BurstPlayer(path, 24000, edges.append)  # type: ignore[arg-type]
    reply = sine(500, 24000, 0.0537)  # 53.7 ms: the last 3.7 ms is a partial frame
    player.push(reply)
    out = np.zeros(480, dtype=np.int16)
    for _ in range(20):  # 200 ms of ticks
        player.top_up()
        path.io.playback.read_into(out)
    played = np.concatenate(path.played)
    voiced = np.flatnonzero(np.abs(played) > 300)
    assert (voiced[-1] - voiced[0]) / 48000 == pytest.approx(0.0537, abs=0.002)  # nothing held back
    assert edges == [True, False]  # speaking, then quiet after the reply


def test_drop_empties_the_queue_and_counts_a_barge_in() -> None:
    path = Path()
    player = BurstPlayer(path, 16000, lambda _: None)  # type: ignore[arg-type]
    player.push(sine(500, 16000, 2.0))
    assert player.queued_ms() == pytest.approx(2000, abs=1)
    player.drop(barge_in=True)
    assert player.queued_ms() == 0
    assert path.io.counters[BARGE_IN_DROPPED] == 96000  # at the device rate


def test_more_than_the_queue_holds_is_reported_as_an_overrun() -> None:
    path = Path()
    player = BurstPlayer(path, 24000, lambda _: None)  # type: ignore[arg-type]
    player.push(sine(500, 24000, BurstPlayer.QUEUE_S))
    assert path.io.counters[PLAYBACK_OVERRUNS] == 0
    player.push(sine(500, 24000, 0.1))  # past a full minute
    assert path.io.counters[PLAYBACK_OVERRUNS] == 1 and player.queued_ms() == pytest.approx(60_000, abs=1)
