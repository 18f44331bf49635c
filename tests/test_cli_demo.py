"""``python -m speko_sync demo`` as a newcomer meets it: one clear line without
the testing extra, the "no LiveKit Agents environment" note once, and a
microphone that asks its question only once the agent's greeting is over."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from speko_sync.testing import AgentEnvUnavailable, agent_python

GREETING = "Hi! This is the offline Speko agent. Ask me anything."
WITHOUT_EXTRA = """
import importlib.abc, runpy, sys

class NotInstalled(importlib.abc.MetaPathFinder):  # as if pip install speko_sync, no extras
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"aiortc", "aiohttp", "jwt"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["speko_sync", *sys.argv[1:]]
runpy.run_module("speko_sync", run_name="__main__", alter_sys=True)
"""


def quiet_env(**extra: str) -> dict[str, str]:
    """No sound server (the demo then uses its synthetic microphone)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}, **extra}


def test_demo_without_the_testing_extra_says_so_in_one_line_and_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, "demo"], capture_output=True, text=True,
                          timeout=60, env=quiet_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert re.fullmatch(r"speko_sync demo needs the testing extra \(no (aiortc|aiohttp|jwt)\): "
                        r"pip install 'speko_sync\[testing\]'\n", proc.stderr), proc.stderr


def test_without_the_extra_the_other_commands_still_work() -> None:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, "talk", "--url", "wss://x"],
                          capture_output=True, text=True, timeout=60, env=quiet_env())
    assert proc.returncode == 2 and "--session" in proc.stderr  # argparse, not an ImportError


def run_demo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "speko_sync", "demo", "--wav", str(tmp_path / "agent.wav"), *args],
                          capture_output=True, text=True, timeout=180, env=quiet_env(**env))


def lines_of(stdout: str) -> list[str]:
    """The demo's lines without their time stamps."""
    return [re.sub(r"^\[\s*\d+\.\d\d s\] ", "", line) for line in stdout.splitlines()]


def first(lines: list[str], pattern: str, after: int = -1) -> int:
    return next(i for i, line in enumerate(lines) if i > after and re.search(pattern, line))


@pytest.mark.webrtc
def test_without_an_agent_environment_the_note_comes_once_and_the_question_waits_for_the_greeting(
        tmp_path: Path) -> None:
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    env = quiet_env(SPEKO_SYNC_AGENT_PYTHON=str(tmp_path / "nowhere" / "python"))
    env.pop("SPEKO_SYNC_NETNS", None)  # the demo makes its own namespace and runs itself again there
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "demo", "--wav", str(tmp_path / "agent.wav")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    notes = [line for line in proc.stderr.splitlines() if "no LiveKit Agents environment" in line]
    assert len(notes) == 1 and notes[0].endswith("using the scripted agent"), proc.stderr
    lines = lines_of(proc.stdout)
    greeting_over = first(lines, r"^agent is listening$", after=first(lines, r"^agent is speaking$"))
    assert first(lines, r"^user: \[speech, ") > greeting_over
    assert any(line.startswith("agent: I heard ") for line in lines)  # and it was answered


@pytest.mark.webrtc
def test_the_real_workers_greeting_is_heard_whole_before_the_question(tmp_path: Path) -> None:
    """The offline worker stops speaking when it hears the user (barge-in): a
    question asked during the greeting used to cut it off."""
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    try:
        agent_python()
    except AgentEnvUnavailable as exc:
        pytest.skip(str(exc))
    proc = run_demo(tmp_path, "--agent", "worker", "--seconds", "40")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = lines_of(proc.stdout)
    asked = first(lines, r"^user: ")
    assert first(lines, rf"^agent: {re.escape(GREETING)}$") < asked
    assert first(lines, r"^agent is listening$", after=first(lines, r"^agent is speaking$")) < asked
    assert f"transcript | agent: {GREETING}" in lines
    assert sum(line.startswith("transcript | agent: Hi!") for line in lines) == 1, lines  # no cut-off greeting


def test_serve_without_the_testing_extra_says_so_and_agent_env_needs_none() -> None:
    code = WITHOUT_EXTRA.replace('run_module("speko_sync"', 'run_module("speko_sync.testing"')
    proc = subprocess.run([sys.executable, "-c", code, "serve"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert re.fullmatch(r"speko_sync\.testing serve needs the testing extra \(no \w+\): "
                        r"pip install 'speko_sync\[testing\]'\n", proc.stderr), proc.stderr
    proc = subprocess.run([sys.executable, "-c", code, "agent-env", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "agent-env" in proc.stdout


def test_serve_documents_the_servers_own_defaults() -> None:
    from speko_sync.testing import DEFAULT_API_KEY, DEFAULT_API_SECRET
    from speko_sync.testing import __main__ as cli

    assert (cli.DEFAULT_API_KEY, cli.DEFAULT_API_SECRET) == (DEFAULT_API_KEY, DEFAULT_API_SECRET)


def test_the_realtime_demo_asks_after_the_greeting_and_the_agent_calls_the_light_tool(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--transport", "realtime", "--seconds", "30")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = lines_of(proc.stdout)
    greeting_over = first(lines, r"^mode: listening$", after=first(lines, r"^mode: speaking$"))
    asked = first(lines, r"^user: Please turn on the light\.$")
    assert asked > greeting_over
    tool = first(lines, r"^tool call \| set_light\(\{\"on\": true\}\) -> the light is on \[ok, ")
    assert first(lines, r"^agent: The light tool said: the light is on$") > tool > asked
    assert any(re.match(r"^latency heard for the spoken question: \d\.\d\d s", line) for line in lines), lines
    assert (tmp_path / "agent.wav").stat().st_size > 48000 * 2 * 3  # over 3 s of the agent's audio
