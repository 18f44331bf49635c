"""The PyAudio backend against real PortAudio, with a private PulseAudio daemon
providing a virtual microphone and speaker."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import pytest
from conv import open_conversation
from lk import RATE, dominant_frequency, rms, speechlike
from test_runtime import wait_until

from speko_sync import AudioConstraints, Conversation, ErrorCode, SpekoClientError, list_audio_devices
from speko_sync.testing import LocalServer, PulseUnavailable, ScriptedAgent, ServerProcess, VirtualSoundDevices, tone

pytestmark = pytest.mark.webrtc
RAW = AudioConstraints(echo_cancellation=False, noise_suppression=False, auto_gain_control=False)


@pytest.fixture
def pulse() -> Iterator[VirtualSoundDevices]:
    try:
        with VirtualSoundDevices() as devices:
            yield devices
    except PulseUnavailable as exc:
        if os.environ.get("SPEKO_SYNC_REQUIRE_WEBRTC") == "1":
            pytest.fail(f"virtual sound devices needed: {exc}", pytrace=False)
        pytest.skip(f"virtual sound devices needed: {exc}")


def test_devices_are_listed(pulse: VirtualSoundDevices) -> None:
    names = [d.name for d in list_audio_devices()]
    assert "pulse" in names or "default" in names


@pytest.mark.speko_agent(greeting=None)
def test_tone_into_the_microphone_reaches_the_agent(pulse: VirtualSoundDevices, speko_server: LocalServer,
                                                    speko_agent: ScriptedAgent) -> None:
    with open_conversation(speko_server, speko_agent, audio=None, audio_constraints=RAW):
        pulse.play_into_microphone(tone(1000, 5.0, 0.3))
        speko_agent.wait_for(lambda: len(speko_agent.received_audio()) > RATE // 2
                             and rms(speko_agent.received_audio()[-RATE // 2:]) > 0.05, timeout=15)
        heard = speko_agent.received_audio()[-RATE // 2:]
    assert abs(dominant_frequency(heard) - 1000) < 10


@pytest.mark.speko_agent(greeting=None)
def test_agent_tone_comes_out_of_the_speaker_and_volume_halves_it(
        pulse: VirtualSoundDevices, speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    recording = pulse.record_speaker()
    levels = []
    with open_conversation(speko_server, speko_agent, audio=None, audio_constraints=RAW) as conv:
        speko_agent.say_tone(700, 1.0, 0.4, wait=True)  # lets the output stream start
        for volume in (1.0, 0.5):
            conv.set_volume(volume)
            start = len(recording.audio())
            speko_agent.say_tone(700, 1.5, 0.4, wait=True)
            deadline = time.monotonic() + 5
            while len(recording.audio()) - start < 1.8 * RATE and time.monotonic() < deadline:
                time.sleep(0.02)
            played = recording.audio()[start:]
            assert abs(dominant_frequency(played[-RATE:]) - 700) < 10
            levels.append(float(np.percentile(np.abs(played), 99)))
        stats = conv.stats()
    recording.stop()
    assert levels[1] / levels[0] == pytest.approx(0.5, abs=0.05)
    assert stats.frames_played > 200 and stats.frames_captured > 200


def _echo_level(server: LocalServer, agent: ScriptedAgent, constraints: AudioConstraints) -> float:
    with open_conversation(server, agent, audio=None, audio_constraints=constraints):
        # PortAudio's streams through the pulse plugin take up to ~2 s to start
        agent.wait_for(lambda: len(agent.received_audio()) > RATE, timeout=20)
        # (the in-process agent's sending shares the interpreter with the client: on a loaded
        # machine it can fall seconds behind, which says nothing of the echo canceller)
        # the canceller converges on this (after it, what is left of the echo is 46-55 dB down, 38-41
        # with a core kept busy; tests/test_echo_reference.py pins down why)
        agent.say(speechlike(4.0), wait=True, timeout=30)
        agent.clear_audio()
        agent.say(speechlike(4.0), wait=True, timeout=30)
        agent.wait_for(lambda: len(agent.received_audio()) > 4 * RATE, timeout=20)
        return rms(agent.received_audio()[-3 * RATE:])


def test_echo_cancellation_removes_the_speaker_from_the_microphone(
        pulse: VirtualSoundDevices, speko_server: LocalServer) -> None:
    pulse.loop_speaker_into_microphone()
    without = _echo_level(speko_server, speko_server.add_agent("echo-off", greeting=None), RAW)
    with_aec = _echo_level(speko_server, speko_server.add_agent("echo-on", greeting=None),
                           AudioConstraints(echo_cancellation=True, noise_suppression=False,
                                            auto_gain_control=False))
    reduction_db = 20 * np.log10(without / max(with_aec, 1e-9))
    print(f"echo: {without:.4f} without, {with_aec:.5f} with echo cancellation ({reduction_db:.1f} dB less)")
    assert without > 0.02  # the loop really carries the agent into the microphone
    assert reduction_db > 20


def test_unknown_device_is_a_microphone_failure_listing_devices(
        pulse: VirtualSoundDevices, speko_server: LocalServer) -> None:
    speko_server.add_agent("devices", greeting=None)
    joins = speko_server.stats().get("joins", 0)
    with pytest.raises(SpekoClientError) as err:
        Conversation(speko_server.token("u", "devices"), speko_server.url, input_device="no-such-mic")
    assert err.value.code == ErrorCode.MICROPHONE_FAILED
    assert "no input device 'no-such-mic'" in err.value.message and "pulse" in err.value.message
    assert speko_server.stats().get("joins", 0) == joins  # refused before joining
    assert speko_server.participants("devices") == ["agent"]


def mic_readers(pulse: VirtualSoundDevices) -> int:
    """How many streams record from the virtual microphone now."""
    sources = [line.split("\t") for line in pulse.pactl("list", "short", "sources").splitlines()]
    mic = next(index for index, name, *_ in sources if name == "mic")
    outputs = [line.split("\t") for line in pulse.pactl("list", "short", "source-outputs").splitlines() if line]
    return sum(1 for fields in outputs if fields[1] == mic)


def test_text_only_session_opens_the_speaker_but_no_microphone(pulse: VirtualSoundDevices,
                                                               speko_server: LocalServer) -> None:
    agent = speko_server.add_agent("text-only")
    recording = pulse.record_speaker()
    with Conversation(speko_server.token("u", "text-only"), speko_server.url, microphone=False):
        assert pulse.pactl("list", "short", "sink-inputs").strip() != ""  # the speaker is open
        assert mic_readers(pulse) == 0
        agent.say_tone(700, 6.0)  # PulseAudio's streams take a second or so to start
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            heard = recording.audio()[-RATE // 4:]
            if len(heard) and rms(heard) > 0.02:
                break
            time.sleep(0.05)
        assert abs(dominant_frequency(recording.audio()[-RATE // 4:]) - 700) < 20  # out of the speaker
        assert agent.is_muted("u") is None
    recording.stop()
    # the same with a microphone: the check above can see one
    with Conversation(speko_server.token("v", "text-only"), speko_server.url):
        assert mic_readers(pulse) == 1


def test_talk_command_joins_and_sends_typed_lines(pulse: VirtualSoundDevices, speko_server: LocalServer) -> None:
    import subprocess
    import sys

    agent = speko_server.add_agent("talk", greeting=None)
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "talk", "--url", speko_server.url,
                           "--token", speko_server.token("typist", "talk")],
                          input="hello from stdin\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    agent.wait_for(lambda: agent.chats == [("typist", "hello from stdin")])  # a typed turn, over lk.chat
    assert "status: connected" in proc.stdout and "disconnected: user (CLIENT_INITIATED)" in proc.stdout


def test_talk_command_takes_the_servers_session_answer(pulse: VirtualSoundDevices,
                                                       speko_server: LocalServer) -> None:
    import json
    import subprocess
    import sys

    agent = speko_server.add_agent("talk-session", greeting=None)
    answer = {"sessionId": "s1", "transportToken": speko_server.token("typist", "talk-session"),
              "transportUrl": speko_server.url, "roomName": "talk-session", "transport": "livekit"}
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "talk", "--session", "-"],
                          input=json.dumps(answer) + "\nhello from stdin\n", capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    agent.wait_for(lambda: agent.chats == [("typist", "hello from stdin")])
    assert not any(noise in proc.stderr for noise in ("ALSA lib", "jack server")), proc.stderr


def test_devices_command_lists_the_virtual_devices(pulse: VirtualSoundDevices) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "speko_sync", "devices"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "inputs:" and "outputs:" in lines
    defaults = [line for line in lines if line.startswith(" *")]
    assert len(defaults) == 2 and all("Hz)" in line and " ch, " in line for line in defaults)
    assert proc.stderr == ""  # quiet


def test_talk_command_reports_a_bad_token(pulse: VirtualSoundDevices, speko_server: LocalServer) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "speko_sync", "talk", "--url", speko_server.url,
                           "--token", speko_server.token("typist", "talk", ttl=-60)],
                          input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "CONNECTION_FAILED" in proc.stderr and "expired" in proc.stderr


def test_a_microphone_lost_mid_call_is_an_error_and_the_call_goes_on(pulse: VirtualSoundDevices,
                                                                    speko_server: LocalServer) -> None:
    from conv import Recorder

    agent = speko_server.add_agent("mic-lost", greeting=None)
    rec = Recorder()
    conv = Conversation(speko_server.token("u", "mic-lost"), speko_server.url, audio_constraints=RAW,
                        **rec.callbacks())
    try:
        pulse.play_into_microphone(tone(1000, 2.0, 0.3))
        agent.wait_for(lambda: len(agent.received_audio("u")) > RATE // 4, timeout=15)  # audio flows
        assert rec.of("error") == []
        pulse.crash()  # the sound server dies: the microphone (and speaker) streams stop
        error = rec.wait_for("error", timeout=10)
        assert error.code == ErrorCode.MICROPHONE_FAILED and "microphone" in error.message
        assert conv.is_open()  # the session goes on
        conv.send_chat_message("still here")
        agent.wait_for(lambda: ("u", "still here") in agent.chats)
        assert len(rec.of("error")) == 1  # reported once
    finally:
        conv.end_session(timeout=15)


def test_a_packet_flood_gets_a_playback_cushion_that_is_given_back_without_dropping_audio(
        pulse: VirtualSoundDevices) -> None:
    """LiveKit hands the agent's frames over irregularly while packets pour in:
    the playback builds 40 ms of depth by playing slower as the flood begins, and
    plays it back out faster after it; the agent's audio is neither dropped nor
    held up meanwhile. The server runs in a process of its own, as a real one
    does (in this one it would take the interpreter from the client's audio)."""
    with ServerProcess() as server:
        server.add_agent("flood")
        with Conversation(server.token("user", "flood"), server.url, audio_constraints=RAW) as conv:
            server.say_tone("flood", 25.0)
            # PortAudio's streams through the pulse plugin take up to ~2 s to start
            wait_until(lambda: conv.stats().frames_played > 100, timeout=10, what="the speaker playing")
            io = conv._session.path.io
            assert io is not None and io.cushion == 0
            before = conv.stats()
            path = conv._session.path
            elastic = path._elastic
            assert elastic is not None
            started = time.monotonic()
            server.flood("flood", 20_000)
            wait_until(lambda: elastic.flooding, timeout=10, what="the flood seen")
            frames_before = path.frames_in
            wait_until(lambda: io.cushion == io.rate * 40 // 1000, timeout=10, what="a 40 ms cushion")
            built_over = path.frames_in - frames_before  # the agent's frames it took (they come slower while a
            # busy machine delivers the flood, so no wall-clock bound)
            wait_until(lambda: conv.stats().packets_received - before.packets_received == 20_000, timeout=20,
                       what="the flood")
            assert io.cushion > 0  # held while the flood lasted
            wait_until(lambda: io.cushion == 0, timeout=5, what="the cushion given back")
            after = conv.stats()
            elapsed = time.monotonic() - started
    played = (after.frames_played - before.frames_played) / 100
    assert built_over <= 90  # 80 frames to build at 5 %
    assert played > elapsed - 0.3, (played, elapsed)  # the speaker kept playing the whole time
    assert after.playback_dropped == before.playback_dropped  # given back by playing faster, not by skipping
