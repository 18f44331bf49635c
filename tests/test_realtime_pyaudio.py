"""Realtime sessions through real PortAudio (the PyAudio backend) and a
private PulseAudio daemon's virtual microphone and speaker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from lk import dominant_frequency
from test_pyaudio_pulse import RAW, pulse

from speko_sync import Conversation, Mode
from speko_sync.testing import LocalServer, VirtualSoundDevices, tone

__all__ = ["pulse"]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def voiced(samples: np.ndarray, threshold: int = 1500) -> np.ndarray:
    """Per 10 ms frame at 48 kHz: whether it carries sound."""
    frames = samples[:len(samples) // 480 * 480].reshape(-1, 480).astype(np.int32)
    return np.abs(frames).max(axis=1, initial=0) > threshold


def test_the_agent_is_heard_on_the_speaker_and_the_microphone_reaches_the_agent(
        pulse: VirtualSoundDevices, server: LocalServer) -> None:
    server.realtime.greeting = "Hello from the realtime agent, through a real sound card."
    recording = pulse.record_speaker()
    conv = Conversation.from_session(server.realtime_session(), audio_constraints=RAW)
    session = server.realtime.wait_for_session(5)
    with conv:
        sent_s = len(server.realtime.greeting) * server.realtime.ms_per_char / 1000
        session.wait_until(lambda s: s.sent_audio_ms / 1000 >= sent_s - 0.01, timeout=10)
        deadline = time.monotonic() + sent_s + 10
        while voiced(recording.audio()).sum() / 100 < sent_s - 0.1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the whole greeting came out of the speaker, gaplessly
        heard = voiced(recording.audio())
        assert heard.sum() / 100 == pytest.approx(sent_s, abs=0.15)
        start, end = np.flatnonzero(heard)[[0, -1]]
        assert (end - start + 1) / 100 == pytest.approx(sent_s, abs=0.15)
        pulse.play_into_microphone(tone(1000, 3.0, 0.3))
        session.wait_until(lambda s: voiced(np.repeat(s.received_audio(), 2), 3000).sum() > 100, timeout=15)
        got = session.received_audio()
        assert abs(dominant_frequency(got[-session.input_rate // 2:], session.input_rate) - 1000) < 15
    recording.stop()
    assert conv.stats().playback_dropped == 0


def test_an_interruption_silences_the_real_speaker(pulse: VirtualSoundDevices,
                                                    server: LocalServer) -> None:
    server.realtime.greeting = "A long greeting that the user will talk over. " * 4
    recording = pulse.record_speaker()
    at: list[int] = []
    done = threading.Event()

    def on_interruption(_: object) -> None:
        at.append(len(recording.audio()))
        done.set()

    conv = Conversation.from_session(server.realtime_session(), audio_constraints=RAW,
                                     on_interruption=on_interruption)
    session = server.realtime.wait_for_session(5)
    with conv:
        session.wait_until(lambda s: s.replies_started, timeout=10)
        deadline = time.monotonic() + 10
        while not voiced(recording.audio()[-4800:]).any() and time.monotonic() < deadline:
            time.sleep(0.02)
        pulse.play_into_microphone(tone(800, 1.0, 0.3))
        assert done.wait(10), "no interruption"
        deadline = time.monotonic() + 5
        while len(recording.audio()) < at[0] + 48000 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = recording.audio()[at[0]:at[0] + 48000]
        # quiet within the device buffer and the sound server's latency
        quiet_from = np.flatnonzero(voiced(after))
        assert len(quiet_from) == 0 or quiet_from[-1] < 15, f"still playing {quiet_from[-1] * 10} ms after"
        assert conv.mode == Mode.LISTENING and session.interruptions_sent == 1
    recording.stop()
