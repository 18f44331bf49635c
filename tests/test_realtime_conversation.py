"""Conversations over Speko's realtime (speech-to-speech) WebSocket sessions,
through the public API, against the offline realtime agent that LocalServer
serves at ``/realtime``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conv import Recorder
from test_runtime import INTERRUPTED_JOIN as LIVEKIT_JOIN

from speko_sync import BufferAudio, Conversation, DisconnectReason, ErrorCode, Mode, SpekoClientError, Status
from speko_sync.testing import LocalServer
from speko_sync.testing._realtime import RealtimeAgentSession
from speko_sync.testing._realtime_voice import speech_audio


def tone(seconds: float, freq: float = 440.0, rate: int = 48000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


def silence(seconds: float, rate: int = 48000) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.int16)


def wait_until(condition: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def join(server: LocalServer, recorder: Recorder | None = None, **options: Any) -> tuple[Conversation,
                                                                                         RealtimeAgentSession]:
    answer = server.realtime_session(**options.pop("mint", {}))
    options.setdefault("audio", BufferAudio())
    callbacks = recorder.callbacks() if recorder is not None else {}
    callbacks.update({name: options.pop(name) for name in list(options) if name.startswith("on_")})
    conv = Conversation.from_session(answer, connect_timeout=options.pop("connect_timeout", 10), **callbacks,
                                     **options)
    return conv, server.realtime.wait_for_session(5)


def played_from_onset(samples: np.ndarray) -> np.ndarray:
    return samples[np.flatnonzero(np.abs(samples.astype(np.int32)) > 1000)[0]:]


def tones_of(samples: np.ndarray, rate: int, segment_s: float = 0.12) -> list[int]:
    """The dominant frequency (Hz, rounded to 10) of each whole segment after the first."""
    n = int(segment_s * rate)
    out = []
    for i in range(1, len(samples) // n - 1):
        chunk = samples[i * n + n // 4:(i + 1) * n - n // 4].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(chunk * np.hanning(len(chunk)), 8 * len(chunk)))
        out.append(int(round(np.argmax(spectrum) * rate / (8 * len(chunk)) / 10) * 10))
    return out


def voiced_seconds(samples: np.ndarray, rate: int = 48000, threshold: int = 1000) -> float:
    frames = samples[:len(samples) // 480 * 480].reshape(-1, 480)
    return float((np.abs(frames).max(axis=1) > threshold).sum() / 100)


def test_the_greeting_plays_whole_in_order_at_real_time_and_is_transcribed(server: LocalServer) -> None:
    rec = Recorder()
    audio = BufferAudio()
    conv, session = join(server, rec, audio=audio)
    with conv:
        assert conv.transport == "realtime" and conv.conversation_id == session.session_id
        final = rec.wait_for("message", lambda m: m.is_final)
        assert final.source.value == "agent" and final.text == server.realtime.greeting
        rec.wait_for("mode_changed", lambda m: m == Mode.SPEAKING)
        rec.wait_for("mode_changed", lambda m: m == Mode.LISTENING, timeout=15)
        sent_ms = session.sent_audio_ms
        # the burst arrived faster than real time but played at real time, whole
        assert session.replies_started and voiced_seconds(audio.played()) == pytest.approx(sent_ms / 1000, abs=0.06)
        stats = conv.stats()
        assert stats.underruns == 0 and stats.playback_dropped == 0
        assert [m.text for m in conv.transcript()] == [server.realtime.greeting]
        # in order: what played is what was sent (its tones, segment by segment), resampled
        sent = speech_audio(server.realtime.greeting, session.output_rate)
        assert tones_of(played_from_onset(audio.played()), 48000) == tones_of(sent, session.output_rate)


def test_the_microphone_goes_out_in_20_ms_frames_at_real_time_and_not_while_muted(server: LocalServer) -> None:
    audio = BufferAudio(np.concatenate([tone(1.0), silence(30)]))
    conv, session = join(server, audio=audio, mint={"input_rate": 16000})
    with conv:
        assert session.input_rate == 16000
        start = audio.played_seconds()
        wait_until(lambda: audio.played_seconds() > start + 2.0, what="two seconds of the device's clock")
        frames = session.audio_frames
        assert {size for _, size in frames} == {16000 // 50 * 2}  # 20 ms of PCM16 at 16 kHz
        # real time: what arrived matches the device clock, to within a few frames
        received = session.received_audio_ms
        assert abs(received - audio.played_seconds() * 1000) < 120
        heard = session.received_audio()
        assert np.abs(heard[:16000]).max() > 5000  # the tone, resampled to 16 kHz
        conv.set_mic_muted(True)
        time_muted = audio.played_seconds()
        wait_until(lambda: audio.played_seconds() > time_muted + 1.0, what="a muted second")
        muted_at = session.received_audio_ms
        wait_until(lambda: audio.played_seconds() > time_muted + 2.0, what="another muted second")
        assert session.received_audio_ms == muted_at  # nothing while muted
        conv.set_mic_muted(False)
        wait_until(lambda: session.received_audio_ms > muted_at + 200, what="audio after unmuting")


class FailingTicks(BufferAudio):
    """A loop-clocked backend whose ticks raise from the ``first``-th on, ``count`` times."""

    def __init__(self, first: int, count: int) -> None:
        super().__init__()
        self.first, self.count, self.ticks = first, count, 0

    def tick(self, samples: int) -> None:
        self.ticks += 1
        if self.first <= self.ticks < self.first + self.count:
            raise RuntimeError(f"device hiccup {self.ticks - self.first + 1}")
        super().tick(samples)


def test_a_microphone_path_that_raises_is_reported_and_started_again_then_given_up(server: LocalServer) -> None:
    """The realtime pump runs on the loop's timer, not in a task: its failures
    are reported and it restarts as the LiveKit one does, and after too many
    it stops (the session goes on)."""
    rec, audio = Recorder(), FailingTicks(first=30, count=1)
    conv, session = join(server, rec, audio=audio)
    with conv:
        error = rec.wait_for("error")
        assert error.code == ErrorCode.MICROPHONE_FAILED and "device hiccup 1" in error.message
        ticks, received = audio.ticks, session.received_audio_ms
        wait_until(lambda: audio.ticks > ticks + 20 and session.received_audio_ms > received + 200,
                   what="the microphone path running again")
        assert conv.is_open() and len(rec.of("error")) == 1
    rec, audio = Recorder(), FailingTicks(first=30, count=100)
    conv, session = join(server, rec, audio=audio)
    with conv:
        restarts = conv._session.path.PUMP_RESTARTS
        wait_until(lambda: len(rec.of("error")) == restarts + 1, what="every restart failing")
        given_up_at = audio.ticks
        time.sleep(0.3)  # (no condition to wait for: what is checked is that nothing more happens)
        assert audio.ticks == given_up_at and len(rec.of("error")) == restarts + 1
        assert conv.is_open()


def test_a_spoken_turn_is_answered_transcribed_and_timed(server: LocalServer) -> None:
    rec = Recorder()
    server.realtime.will_hear("what is the weather")
    audio = BufferAudio(np.concatenate([silence(3.5), tone(0.8), silence(20)]))
    conv, session = join(server, rec, audio=audio)
    with conv:
        reply = conv.wait_for_reply(timeout=20)
        assert reply.text == "You said: what is the weather"
        user = [m for m in conv.transcript() if m.source.value == "user"]
        assert [m.text for m in user] == ["what is the weather"]
        # the transcript comes before the audio: the latency as heard is known once it plays
        wait_until(lambda: conv.stats().response_latency_s is not None, what="the answer heard")
        latency = conv.stats().response_latency_s
        assert latency is not None and 0.5 < latency < 3  # 500 ms of end-of-speech silence, then the answer
        usage = rec.wait_for("usage", lambda u: u[0].values["output_audio_tokens"] > 0)
        assert usage[0].kind == "realtime"
        wait_until(lambda: conv.stats().output_audio_tokens == session.usage()["outputAudioTokens"],
                   what="stats() to show the last usage frame")


def test_a_tool_call_runs_the_client_tool_and_answers_with_its_result(server: LocalServer) -> None:
    rec = Recorder()
    calls: list[bool] = []

    def set_light(on: bool) -> str:
        calls.append(on)
        return "the light is on" if on else "the light is off"

    server.realtime.will_hear("turn on the light")
    audio = BufferAudio(np.concatenate([silence(3.5), tone(0.8), silence(20)]))
    conv, session = join(server, rec, audio=audio, client_tools={"set_light": set_light})
    with conv:
        call = rec.wait_for("tool_call", timeout=20)
        assert call.name == "set_light" and call.status.value == "ok" and call.caller == "agent"
        assert calls == [True]
        session.wait_until(lambda s: s.tool_results, timeout=5)
        assert list(session.tool_results.values()) == ["the light is on"]
        rec.wait_for("message", lambda m: m.is_final and "the light is on" in m.text, timeout=15)
        assert conv.stats().tool_calls == 1


def test_a_failing_or_unknown_tool_answers_an_error_and_the_session_goes_on(server: LocalServer) -> None:
    rec = Recorder()

    def set_light(on: bool) -> str:
        raise RuntimeError("the bulb is broken")

    server.realtime.will_hear("turn on the light")
    audio = BufferAudio(np.concatenate([silence(3.5), tone(0.8), silence(20)]))
    conv, session = join(server, rec, audio=audio, client_tools={"set_light": set_light})
    with conv:
        call = rec.wait_for("tool_call", timeout=20)
        assert call.status.value == "error" and call.error == "the bulb is broken"
        session.wait_until(lambda s: s.tool_results, timeout=5)
        assert list(session.tool_results.values()) == ['{"error":"the bulb is broken"}']
        assert conv.status == Status.CONNECTED


def test_talking_over_the_agent_interrupts_it_and_silences_the_speaker_within_a_buffer(
        server: LocalServer) -> None:
    rec = Recorder()
    audio = BufferAudio(np.concatenate([silence(1.0), tone(1.0), silence(20)]))
    heard_at: list[float] = []
    server.realtime.greeting = "A very long greeting " * 8  # about 10 s of speech
    record = rec.callbacks()["on_interruption"]

    def on_interruption(interruption: Any) -> None:
        heard_at.append(audio.played_seconds())
        record(interruption)

    conv, session = join(server, rec, audio=audio, on_interruption=on_interruption)
    with conv:
        interruption = rec.wait_for("interruption", timeout=10)
        assert interruption.is_interruption and session.interruptions_sent == 1
        rec.wait_for("mode_changed", lambda m: m == Mode.LISTENING)
        start = audio.played_seconds()
        wait_until(lambda: audio.played_seconds() > start + 0.5, what="half a second after")
        played = audio.played()
        at = int((heard_at[0] + 0.01) * 48000)  # one 10 ms device buffer after the receiver ran
        assert np.abs(played[at:at + 24000]).max() < 1000  # quiet from there
        assert conv.stats().barge_ins == 1 and conv.stats().barge_in_dropped_ms > 500


def test_interrupt_stops_the_reply_and_a_30_s_reply_is_held_whole(server: LocalServer) -> None:
    server.realtime.burst_speed = None  # the whole reply at once
    conv, session = join(server, audio=BufferAudio())
    with conv:
        session.wait_until(lambda s: s.replies_started, timeout=5)
        session.say("x" * 600)  # 36 s of speech, sent at once
        session.wait_until(lambda s: s.sent_audio_ms >= 36_000, timeout=10)
        wait_until(lambda: conv.stats().playback_buffer_ms > 35_000, timeout=10, what="the whole reply queued")
        assert conv.stats().playback_dropped == 0 and conv.stats().overruns == 0
        conv.interrupt()
        session.wait_until(lambda s: s.interrupts == 1, timeout=5)
        wait_until(lambda: conv.stats().playback_buffer_ms < 100, timeout=2, what="the queue dropped")
        assert conv.mode == Mode.LISTENING


def test_error_frames_garbage_and_odd_audio_never_end_the_session(server: LocalServer) -> None:
    rec = Recorder()
    server.realtime.greeting = None
    conv, session = join(server, rec)
    with conv:
        session.send_error("RATE_LIMITED", "slow down").result(5)
        error = rec.wait_for("error")
        assert error.code == ErrorCode.AGENT_ERROR and "RATE_LIMITED" in error.message and "slow down" in error.message
        for garbage in ("not json", "[1, 2]", '{"t": 7}', '{"t":"nope"}', '{"t":"usage","inputAudioTokens":"x"}',
                        b"\x01\x02\x03"):
            session.send_raw(garbage).result(5)
        session.say("still here").result(10)
        rec.wait_for("message", lambda m: m.is_final and m.text == "still here")
        stats = conv.stats()
        # four text frames that are not JSON objects with a string "t" and one of
        # three bytes are malformed; with the unknown type, all six are ignored
        assert stats.malformed_packets == 5 and stats.ignored_packets == 6
        assert conv.status == Status.CONNECTED


@pytest.mark.parametrize(("close", "reason", "message"), [
    ({"end": "goodbye"}, DisconnectReason.AGENT, "goodbye"),
    ({"close": (1000, "")}, DisconnectReason.AGENT, "end"),
    ({"close": (4000, "policy")}, DisconnectReason.ERROR, "websocket closed with 4000: policy"),
])
def test_server_closes_end_the_session_with_their_reason(server: LocalServer, close: dict[str, Any],
                                                         reason: DisconnectReason, message: str) -> None:
    rec = Recorder()
    conv, session = join(server, rec)
    if "end" in close:
        session.end(close["end"])
    else:
        session.close(*close["close"])
    details = conv.wait_for_end(10)
    assert details.reason == reason and details.message == message
    errors = [e for e in rec.of("error") if e.code == ErrorCode.DISCONNECTED]
    assert bool(errors) == (reason == DisconnectReason.ERROR)


def test_end_session_closes_with_1000_client_stopped(server: LocalServer) -> None:
    conv, session = join(server)
    details = conv.end_session()
    assert details.reason == DisconnectReason.USER
    session.closed.wait(5)
    assert session.client_close == (1000, "client_stopped")


def test_a_refused_handshake_fails_at_once(server: LocalServer) -> None:
    answer = server.realtime_session()
    answer["wsToken"] = "not-a-token"
    audio = BufferAudio()
    started = time.monotonic()
    with pytest.raises(SpekoClientError) as caught:
        Conversation.from_session(answer, audio=audio, connect_timeout=10)
    assert caught.value.code == ErrorCode.CONNECTION_FAILED and "401" in caught.value.message
    assert caught.value.status == 401 and time.monotonic() - started < 5


def test_no_ready_fails_after_the_connect_timeout_with_the_socket_closed(server: LocalServer) -> None:
    server.realtime.no_ready = True
    with pytest.raises(SpekoClientError) as caught:
        Conversation.from_session(server.realtime_session(), audio=BufferAudio(), connect_timeout=1.5)
    assert caught.value.code == ErrorCode.CONNECTION_FAILED and "no ready frame within 1.5 s" in caught.value.message
    session = server.realtime.wait_for_session(1)
    assert session.closed.wait(5) and session.client_close == (1000, "client_stopped")


def test_what_the_realtime_transport_cannot_do_raises_unsupported_naming_it(server: LocalServer) -> None:
    with pytest.raises(SpekoClientError, match="realtime transport cannot send overrides") as caught:
        Conversation.from_session(server.realtime_session(), audio=BufferAudio(), overrides={"agent": {}})
    assert caught.value.code == ErrorCode.UNSUPPORTED
    conv, session = join(server)
    with conv:
        for send in (conv.send_chat_message, conv.send_user_message, conv.send_contextual_update, conv.ask):
            with pytest.raises(SpekoClientError, match="the realtime transport cannot") as caught:
                send("hello")
            assert caught.value.code == ErrorCode.UNSUPPORTED
        conv.commit_user_turn()
        session.wait_until(lambda s: s.commits == 1, timeout=5)
        assert conv.status == Status.CONNECTED


def test_a_text_only_realtime_session_sends_no_audio_and_still_plays(server: LocalServer) -> None:
    rec = Recorder()
    audio = BufferAudio(tone(2.0))
    conv, session = join(server, rec, audio=audio, microphone=False)
    with conv:
        rec.wait_for("message", lambda m: m.is_final)
        wait_until(lambda: voiced_seconds(audio.played()) > 0.3, what="the greeting played")
        assert session.received_audio_ms == 0
        events = conv.poll_events()
        assert any(e.kind == "message" for e in events)


# the LiveKit test's script, joining the realtime session answer given as JSON
INTERRUPTED_JOIN = LIVEKIT_JOIN.replace("import signal, sys, time", "import json, signal, sys, time").replace(
    "Conversation(sys.argv[1], sys.argv[2], audio=NullAudio(),",
    "Conversation.from_session(json.loads(sys.argv[1]), audio=NullAudio(),")
assert "from_session" in INTERRUPTED_JOIN and "import json" in INTERRUPTED_JOIN


def test_ctrl_c_while_waiting_for_ready_leaves_no_session_behind(server: LocalServer) -> None:
    import json
    import subprocess
    import sys

    server.realtime.ready_delay_s = 2.0  # the socket is open; ready comes 2 s later
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_JOIN, json.dumps(server.realtime_session())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    session = server.realtime.wait_for_session(10)
    assert session.closed.wait(5), "the interrupted client kept its session open"  # long before it exits
    assert session.client_close == (1000, "client_stopped")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.split() == ["interrupted", "alive"], err[-2000:]
