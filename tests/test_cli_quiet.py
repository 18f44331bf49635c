"""A newcomer's first minutes: no ALSA/JACK noise, a devices command, whole lines,
``talk --session``, and the README's first-ten-minutes commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("ALSA lib", "jack server", "JackShm", "Cannot connect to server")


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}  # no sound server
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


def test_probing_devices_prints_nothing_from_alsa_or_jack() -> None:
    proc = run_python("import speko_sync; print(len(speko_sync.list_audio_devices()))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # at the file-descriptor level: ALSA and JACK write to fd 2 directly
    assert proc.stdout.strip() == "0"


def test_a_device_error_stays_clear_and_quiet() -> None:
    code = ("from speko_sync import Conversation, SpekoClientError\n"
            "try:\n    Conversation('token', 'ws://127.0.0.1:9')\n"
            "except SpekoClientError as exc:\n    print(exc)\n")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "MICROPHONE_FAILED" in proc.stdout and "no" in proc.stdout and "device" in proc.stdout
    assert not any(noise in proc.stderr for noise in NOISE), proc.stderr


def test_debug_logging_shows_what_was_suppressed() -> None:
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "-v", "devices"], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("PULSE_")})
    assert "printed (suppressed)" in proc.stderr
    assert "ALSA lib" in proc.stderr  # what PortAudio's probing said, now in the log


def test_devices_command_without_devices_fails_clearly() -> None:
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "devices"], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("PULSE_")})
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: PortAudio found no sound devices") and proc.stdout == ""


FIRST_TEN = re.compile(r"<!-- first ten minutes -->\s*```sh\n(.*?)```", re.S)


def first_ten_minutes_commands() -> list[str]:
    block = FIRST_TEN.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block, "README has no first-ten-minutes block"
    commands = []
    for line in block.group(1).splitlines():
        command = line.split("#", 1)[0].strip()
        if command and "(checked elsewhere)" not in line:
            commands.append(command)
    return commands


@pytest.mark.webrtc
def test_the_readme_first_ten_minutes_run_as_written() -> None:
    """Every command of the README's first-ten-minutes section, in order, from the
    checkout (those marked "checked elsewhere" are the clone and the test run)."""
    from speko_sync.testing import AgentEnvUnavailable, agent_python
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    try:
        agent_python()
    except AgentEnvUnavailable as exc:
        pytest.skip(str(exc))
    commands = first_ten_minutes_commands()
    assert any(c.startswith("make demo") for c in commands)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    for command in commands:
        proc = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        expected = 1 if "devices" in command else 0  # no sound devices on a CI machine
        assert proc.returncode == expected, f"{command!r} exited {proc.returncode}:\n{proc.stdout[-1500:]}" \
                                            f"\n{proc.stderr[-1500:]}"
        assert not any(noise in proc.stdout + proc.stderr for noise in NOISE), command
        if command.startswith("make demo"):
            lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
            assert lines and all(len(re.findall(r"\[\s*\d+\.\d\d s\]", line)) == 1 for line in lines)


def test_talk_takes_the_session_answer_from_stdin_without_a_sound_server(tmp_path: Path) -> None:
    session = {"transportToken": "t", "transportUrl": "wss://example.invalid", "transport": "daily"}
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "talk", "--session", "-"],
                          input=json.dumps(session) + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "'daily' is not supported" in proc.stderr
    path = tmp_path / "session.json"
    path.write_text(json.dumps({**session, "transport": "livekit", "expiresAt": "2020-01-01T00:00:00Z"}))
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "talk", "--session", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "expired" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "talk", "--url", "wss://x"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--session" in proc.stderr
