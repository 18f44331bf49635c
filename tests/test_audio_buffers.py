"""Rings, playback rendering and the dispatcher (pure, no devices)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from speko_sync import signals
from speko_sync._dispatch import Dispatcher
from speko_sync._ring import Ring
from speko_sync.audio import OVERRUNS, PLAYBACK_DROPPED, UNDERRUNS, AudioIO, BufferAudio


def test_ring_wraps_and_keeps_order() -> None:
    ring = Ring(8)
    out = np.zeros(8, dtype=np.int16)
    assert ring.write(np.arange(6, dtype=np.int16)) == 6
    assert ring.read_into(out[:4]) == 4 and list(out[:4]) == [0, 1, 2, 3]
    assert ring.write(np.arange(10, 17, dtype=np.int16)) == 6  # only 6 fit
    assert ring.available() == 8 and ring.space() == 0
    assert ring.read_into(out) == 8
    assert list(out) == [4, 5, 10, 11, 12, 13, 14, 15]


def test_ring_skip_drops_oldest() -> None:
    ring = Ring(4)
    ring.write(np.array([1, 2, 3], dtype=np.int16))
    assert ring.skip(2) == 2
    out = np.zeros(4, dtype=np.int16)
    assert ring.read_into(out) == 1 and out[0] == 3


def test_render_applies_volume_and_counts_underruns() -> None:
    io = AudioIO(48000)
    io.playback.write(np.full(480, 10000, dtype=np.int16))
    out, scratch = np.zeros(480, dtype=np.int16), np.zeros(480, dtype=np.float32)
    io.volume = 0.5
    io.render(out, scratch)
    assert (out == 5000).all()
    io.render(out, scratch)
    assert (out == 0).all() and io.counters[UNDERRUNS] == 1


def test_render_drops_a_burst_at_once_down_to_the_slack() -> None:
    io = AudioIO(48000, playback_max_ms=200)
    io.playback.write(np.arange(48000 // 4, dtype=np.int16) % 1000)  # 250 ms queued
    out, scratch = np.zeros(480, dtype=np.int16), np.zeros(480, dtype=np.float32)
    io.render(out, scratch)
    assert io.counters[PLAYBACK_DROPPED] == 1
    assert io.playback_depth_ms() == pytest.approx(10.0)  # one frame of slack left after this buffer
    assert out[0] == (12000 - 960) % 1000  # the newest audio was kept


def steady(io: AudioIO, seconds: float, *, lead: int, buffer: int = 960) -> np.ndarray:
    """Play ``seconds`` with the source ``lead`` samples ahead, 10 ms frames in,
    ``buffer``-sample callbacks out; return the ring depth seen before each callback."""
    out, scratch = np.zeros(buffer, dtype=np.int16), np.zeros(buffer, dtype=np.float32)
    frame = np.ones(480, dtype=np.int16)
    io.playback.write(np.ones(lead, dtype=np.int16))
    depths = []
    for _ in range(int(seconds * 48000 / buffer)):
        for _ in range(buffer // 480):
            io.playback.write(frame)
        depths.append(io.playback.available() - buffer)
        io.render(out, scratch)
    return np.array(depths)


def test_render_trims_standing_latency_to_one_frame_within_a_second() -> None:
    io = AudioIO(48000)
    depths = steady(io, 3.0, lead=48000 * 80 // 1000)  # the source runs 80 ms ahead, steadily
    assert depths[0] == 3840  # 80 ms of headroom at first
    assert (depths[len(depths) // 2:] == 480).all()  # then one 10 ms frame
    assert io.counters[PLAYBACK_DROPPED] == 1 and io.counters[UNDERRUNS] == 0


def test_render_keeps_the_flood_cushion_and_trims_what_stands_beyond_it() -> None:
    io = AudioIO(48000)
    io.cushion = 48000 * 40 // 1000
    depths = steady(io, 3.0, lead=48000 * 80 // 1000)
    assert (depths[len(depths) // 2:] == 480 + 1920).all()  # the slack's frame plus the 40 ms cushion
    assert io.counters[PLAYBACK_DROPPED] == 1 and io.counters[UNDERRUNS] == 0


def sine_frames(count: int, start: float = 0.0) -> tuple[list[np.ndarray], float]:
    """``count`` 10 ms frames of a 440 Hz sine (amplitude 10000), beginning
    ``start`` samples into it; returns the frames and where the next begins."""
    n = start + np.arange(count * 480)
    wave = np.rint(10000 * np.sin(2 * np.pi * 440 * n / 48000)).astype(np.int16)
    return [wave[i * 480:(i + 1) * 480] for i in range(count)], start + count * 480


def test_flood_cushion_builds_depth_while_packets_pour_in_and_gives_it_back() -> None:
    from speko_sync._elastic import ElasticPlayback

    cushion = ElasticPlayback()
    frames, _ = sine_frames(700)
    packets, position, played, extras = 0, -1.0, [], []
    for i, frame in enumerate(frames):
        if i < 300:
            packets += 50  # 5000 packets a second for three seconds, then none
        out = cushion.process(frame, packets)
        step = 480 / len(out)  # each output sample advances this far through the input
        played.append((out, position + step * np.arange(1, len(out) + 1)))
        position += 480
        extras.append(cushion.extra)
    assert max(extras) == 1920 and extras[150] == 1920  # 40 ms built within the first second, then held
    assert extras[-1] == 0 and not cushion.flooding  # given back once two calm seconds passed
    assert all(abs(b - a) <= ElasticPlayback.STEP for a, b in itertools.pairwise(extras))
    out = np.concatenate([o for o, _ in played])
    at = np.concatenate([p for _, p in played])
    assert len(out) == 700 * 480  # everything that came in went out: nothing dropped, nothing added
    ideal = 10000 * np.sin(2 * np.pi * 440 * at / 48000)
    # linear interpolation of this sine is good to about 4 (of 10000); a phase that restarts each frame is 30 off
    assert np.abs(out - ideal).max() < 10  # the same waveform, slower then faster, continuous across frames


def test_flood_cushion_leaves_a_normal_sessions_frames_alone() -> None:
    from speko_sync._elastic import ElasticPlayback

    cushion = ElasticPlayback()
    frames, _ = sine_frames(500)
    for i, frame in enumerate(frames):
        assert cushion.process(frame, i // 5) is frame  # 20 packets a second: a chatty agent, no flood
    assert cushion.extra == 0


def test_an_underrun_widens_the_slack_and_calm_narrows_it() -> None:
    io = AudioIO(48000)
    out, scratch = np.zeros(960, dtype=np.int16), np.zeros(960, dtype=np.float32)
    io.playback.write(np.ones(960, dtype=np.int16))
    io.render(out, scratch)
    io.render(out, scratch)  # nothing queued: an underrun
    assert io.counters[UNDERRUNS] == 1 and io.slack == 960
    steady(io, 2.0, lead=48000 * 50 // 1000)
    assert io.playback.available() - 960 <= 960 + 960  # trimmed to the wider slack (plus this buffer)
    steady(io, 31.0, lead=0)
    assert io.slack == 480


RENDER_PEAK_SCRIPT = """
import tracemalloc
import numpy as np
from speko_sync.audio import AudioIO
io = AudioIO(48000)
out, scratch = np.zeros(960, dtype=np.int16), np.zeros(960, dtype=np.float32)
block = np.ones(960, dtype=np.int16)
io.volume = 0.7
io.playback.write(block)
io.render(out, scratch)  # warm up
tracemalloc.start()
for _ in range(200):
    io.playback.write(block)
    io.render(out, scratch)
print(tracemalloc.get_traced_memory()[1])
"""


def test_render_allocates_no_sample_buffers() -> None:
    import subprocess
    import sys

    # a fresh process: other threads' allocations must not count
    peak = int(subprocess.run([sys.executable, "-c", RENDER_PEAK_SCRIPT], capture_output=True, text=True,
                              check=True, timeout=60).stdout)
    assert peak < 960 * 2  # less than one buffer's worth over 200 callbacks


def test_capture_overrun_is_counted() -> None:
    io = AudioIO(48000)
    io.capture_samples(np.zeros(48000 + 10, dtype=np.int16))
    assert io.counters[OVERRUNS] == 1


def test_buffer_audio_feeds_then_silence_and_keeps_what_played() -> None:
    audio = BufferAudio(np.full(700, 0.5, dtype=np.float32))
    io = AudioIO(48000)
    audio.open(io)
    io.playback.write(np.full(480, 1000, dtype=np.int16))
    audio.tick(480)
    audio.tick(480)
    captured = np.zeros(960, dtype=np.int16)
    assert io.capture.read_into(captured) == 960
    assert (captured[:700] == 16383).all() and (captured[700:] == 0).all()
    assert audio.wait_until_fed(0)
    played = audio.played()
    assert len(played) == 960 and (played[:480] == 1000).all() and (played[480:] == 0).all()


def test_buffer_audio_rejects_stereo() -> None:
    with pytest.raises(ValueError, match="mono"):
        BufferAudio(np.zeros((2, 100), dtype=np.int16))


def test_dispatcher_delivers_in_order_on_its_thread_and_survives_a_raising_receiver() -> None:
    owner = object()
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def bad(sender: object, **kw: object) -> None:
        raise RuntimeError("receiver bug")

    def good(sender: object, status: str) -> None:
        seen.append((threading.current_thread().name, status))
        if status == "last":
            done.set()

    signals.status_changed.connect(bad, sender=owner)
    signals.status_changed.connect(good, sender=owner)
    dispatcher = Dispatcher(name="test-dispatch")
    channel = dispatcher.channel(owner)
    for status in ("a", "b", "last"):
        channel.post("status_changed", status)
    assert done.wait(5)
    dispatcher.stop(5)
    assert seen == [("test-dispatch", "a"), ("test-dispatch", "b"), ("test-dispatch", "last")]
    signals.status_changed.disconnect(bad, sender=owner)
    signals.status_changed.disconnect(good, sender=owner)


def test_one_dispatcher_keeps_each_channels_order_and_outlives_system_exit_in_a_receiver() -> None:
    a, b = object(), object()
    seen: list[tuple[str, int]] = []

    def exits(sender: object, message: int) -> None:
        if message == 0:
            raise SystemExit(3)

    def record(sender: object, message: int) -> None:
        seen.append(("a" if sender is a else "b", message))

    for owner in (a, b):
        signals.message.connect(exits, sender=owner)
        signals.message.connect(record, sender=owner)
    dispatcher = Dispatcher(name="test-dispatch")
    ca, cb = dispatcher.channel(a), dispatcher.channel(b)
    for i in range(50):
        ca.post("message", i)
        cb.post("message", i)
    ca.close()
    cb.close()
    assert ca.wait_closed(5) and cb.wait_closed(5)
    assert [m for o, m in seen if o == "a"] == list(range(50))
    assert [m for o, m in seen if o == "b"] == list(range(50))
    assert dispatcher.thread.is_alive()
    dispatcher.stop(5)
    for owner in (a, b):
        signals.message.disconnect(exits, sender=owner)
        signals.message.disconnect(record, sender=owner)


def test_poll_buffer_is_bounded_and_counts_drops() -> None:
    dispatcher = Dispatcher()
    channel = dispatcher.channel(object(), poll_capacity=3)
    for i in range(5):
        channel.post("message", i)
    batch = channel.poll()
    assert [e.value for e in batch] == [2, 3, 4] and batch.dropped == 2
    assert len(channel.poll()) == 0
    dispatcher.stop(5)


def test_snapshots_behind_a_busy_receiver_collapse_to_the_newest() -> None:
    """While a receiver holds the dispatcher, 1000 transcripts are posted
    between messages: every message is delivered, in order, but only the newest
    transcript after the hold, and only the delivered ones are ever built."""
    owner = object()
    release = threading.Event()
    got: list[tuple[str, object]] = []
    built: list[int] = []

    def on_message(sender: object, message: int) -> None:
        if message == 0:
            release.wait(5)
        got.append(("message", message))

    def on_transcript(sender: object, transcript: object) -> None:
        got.append(("transcript", transcript))

    signals.message.connect(on_message, sender=owner)
    signals.transcript.connect(on_transcript, sender=owner)
    dispatcher = Dispatcher()
    channel = dispatcher.channel(owner)

    def snapshot(i: int) -> int:
        built.append(i)
        return i

    for i in range(1000):
        channel.post("message", i)
        channel.post_latest("transcript", lambda i=i: snapshot(i))
    release.set()
    channel.close()
    assert channel.wait_closed(10)
    assert [v for k, v in got if k == "message"] == list(range(1000))
    assert [v for k, v in got if k == "transcript"] == [999] and got[-1] == ("transcript", 999)
    assert built == [999]
    batch = channel.poll()  # the poll buffer keeps the newest snapshot too
    assert [e.value for e in batch if e.kind == "transcript"] == [999]
    assert [e.value for e in batch if e.kind == "message"] == list(range(1000 - 999, 1000))
    dispatcher.stop(5)
    signals.message.disconnect(on_message, sender=owner)
    signals.transcript.disconnect(on_transcript, sender=owner)


def test_slow_receiver_does_not_block_posting() -> None:
    owner = object()
    release = threading.Event()

    def slow(sender: object, **kw: object) -> None:
        release.wait(5)

    signals.message.connect(slow, sender=owner)
    dispatcher = Dispatcher()
    channel = dispatcher.channel(owner)
    started = time.monotonic()
    for i in range(100):
        channel.post("message", i)
    assert time.monotonic() - started < 1.0
    release.set()
    dispatcher.stop(5)
    signals.message.disconnect(slow, sender=owner)


def test_buffer_audio_reads_wav_files_and_resamples(tmp_path: object) -> None:
    import wave
    from pathlib import Path

    path = Path(str(tmp_path)) / "in.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.full((1600, 2), 1000, dtype=np.int16).tobytes())  # 100 ms stereo at 16 kHz
    audio = BufferAudio(path)
    assert audio.pending_seconds() == pytest.approx(0.1, abs=0.001)
    audio.save_wav(Path(str(tmp_path)) / "out.wav")  # nothing played yet: an empty file is fine


def test_reframer_resamples_device_audio_to_10_ms_frames() -> None:
    from speko_sync._frames import Reframer as _Reframer

    reframe = _Reframer(44100, 48000)
    t = np.arange(441 * 50) / 44100
    tone = (np.sin(2 * np.pi * 1000 * t) * 10000).astype(np.int16)
    frames = []
    for i in range(0, len(tone), 441):
        frames.extend(reframe.push(tone[i:i + 441]))
    assert all(len(f) == 480 for f in frames) and len(frames) >= 45
    joined = np.concatenate(frames)[4800:]
    spectrum = np.abs(np.fft.rfft(joined * np.hanning(len(joined))))
    assert abs(np.argmax(spectrum) * 48000 / len(joined) - 1000) < 15


@pytest.mark.parametrize(("samples", "match"), [
    (np.zeros(10, dtype=np.int32), "int16 or float"),
    (np.zeros((3, 3), dtype=np.int16), "mono"),
])
def test_bad_audio_arrays_are_refused(samples: np.ndarray, match: str) -> None:
    from speko_sync.audio import load_pcm16

    with pytest.raises(ValueError, match=match):
        load_pcm16(samples)


def test_float_audio_is_scaled_and_resampled() -> None:
    from speko_sync.audio import load_pcm16

    out = load_pcm16(np.full((1600, 1), 0.5), 16000)
    assert len(out) == 4800 and out.dtype == np.int16 and int(out[100]) == 16383


def test_microphone_watchdog_reports_a_failure_once_and_again_after_recovery() -> None:
    from speko_sync._capture import MicrophoneWatchdog as _MicrophoneWatchdog
    from speko_sync.audio import AudioBackend

    class Device(AudioBackend):
        clocked_by_loop = False
        failure: str | None = None

        def microphone_failure(self) -> str | None:
            return self.failure

    errors: list[object] = []
    dog = _MicrophoneWatchdog(lambda kind, value: errors.append(value))
    device = Device()
    dog.check(device, 0, 0.0)
    dog.check(device, 0, 10.0)  # nothing yet: sound servers take time to start, not a stall
    dog.check(device, 480, 10.5)
    dog.check(device, 480, 12.0)  # 1.5 s without audio: fine
    assert errors == []
    dog.check(device, 480, 12.6)  # 2.1 s: stalled
    dog.check(device, 480, 13.0)
    assert len(errors) == 1 and "no audio" in str(errors[0])
    dog.check(device, 960, 13.5)  # back
    device.failure = "the stream stopped"
    dog.check(device, 1440, 14.0)
    dog.check(device, 1920, 14.5)
    assert len(errors) == 2 and "the stream stopped" in str(errors[1])


def test_buffer_audio_keeps_a_bounded_recording_and_counts_everything() -> None:
    from speko_sync.audio import AudioIO, BufferAudio

    audio = BufferAudio(keep_seconds=0.1)
    io = AudioIO(48000)
    audio.open(io)
    tone_block = np.full(480, 1000, dtype=np.int16)
    for _ in range(100):  # one second, 10 ms at a time
        io.playback.write(tone_block)
        audio.tick(480)
    kept = audio.played()
    assert 0.1 * 48000 <= len(kept) < 0.1 * 48000 + 480  # the newest 100 ms, one block of slack
    assert audio.played_seconds() == pytest.approx(1.0)
    everything = BufferAudio(keep_seconds=None)
    everything.open(AudioIO(48000))
    for _ in range(100):
        everything.tick(480)
    assert len(everything.played()) == 48000
    with pytest.raises(ValueError, match="keep_seconds"):
        BufferAudio(keep_seconds=0)


def test_a_volume_set_while_the_devices_open_reaches_the_io() -> None:
    from speko_sync._session import Session
    from speko_sync.audio import AudioConstraints, NullAudio

    session = Session(lambda kind, value: None, NullAudio(), AudioConstraints(), lambda details: None)
    path = session.path
    path.set_volume(0.3)  # before the io exists (the devices are opening)
    io = AudioIO(48000)
    path.set_volume(None, io)  # the loop publishes the io
    assert path.io is io and io.volume == 0.3
    path.set_volume(0.5)
    assert io.volume == 0.5 and path.volume == 0.5


def test_pyaudio_backend_refuses_a_bad_buffer_size_before_touching_devices() -> None:
    from speko_sync import PyAudioBackend

    with pytest.raises(ValueError, match="frames_per_buffer"):
        PyAudioBackend(frames_per_buffer=0)
    with pytest.raises(TypeError, match="frames_per_buffer"):
        PyAudioBackend(frames_per_buffer=9.5)  # type: ignore[arg-type]
    assert PyAudioBackend(frames_per_buffer=480).frames_per_buffer == 480
