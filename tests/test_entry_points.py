"""The three ways in: the serve command and the pytest plugin (the context manager
is what every other test uses)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import threading

import pytest
from livekit import rtc
from lk import Recorder, run

from speko_sync.testing import DEFAULT_API_KEY, DEFAULT_API_SECRET, verify_token


@pytest.mark.webrtc
@pytest.mark.parametrize("agent", ["scripted", "worker"])
def test_serve_command_prints_a_working_url_and_token(agent: str) -> None:
    from speko_sync.testing import AgentEnvUnavailable, agent_python
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    if agent == "worker":
        try:
            agent_python()
        except AgentEnvUnavailable as exc:
            pytest.skip(str(exc))
    proc = subprocess.Popen([sys.executable, "-m", "speko_sync.testing", "serve", "--port", "0",
                             "--room", "cli-room", "--identity", "cli-user", "--agent", agent],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        token = proc.stdout.readline().split()[-1]
        assert url.startswith("ws://127.0.0.1:")
        grant = verify_token(token, {DEFAULT_API_KEY: DEFAULT_API_SECRET})
        assert (grant.identity, grant.room) == ("cli-user", "cli-room")

        async def scenario() -> None:
            room = rtc.Room()
            events = Recorder(room)
            await room.connect(url, token)
            (p,) = await events.wait_for("participant_connected", timeout=30)  # the default agent
            assert p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            if agent == "scripted":
                assert p.identity == "agent"
            # either agent speaks LiveKit Agents' protocol: it says what it is doing
            await events.wait_for("track_subscribed", timeout=30)
            while p.attributes.get("lk.agent.state") not in ("listening", "speaking"):
                await asyncio.sleep(0.02)
            await room.disconnect()
        run(scenario())
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def test_serve_command_prints_a_realtime_session_that_joins() -> None:
    import json

    from speko_sync import Conversation, NullAudio

    proc = subprocess.Popen([sys.executable, "-m", "speko_sync.testing", "serve", "--port", "0", "--agent", "none"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[3].startswith("realtime session: "), lines
        answer = json.loads(lines[3].split(": ", 1)[1])
        assert answer["wsUrl"].startswith("ws://127.0.0.1:") and answer["wsUrl"].endswith("/realtime")
        greeted = threading.Event()
        with Conversation.from_session(answer, audio=NullAudio(),
                                       on_message=lambda m: m.is_final and greeted.set()) as conv:
            assert conv.transport == "realtime" and conv.conversation_id == answer["sessionId"]
            assert greeted.wait(10)
            assert conv.transcript()[0].text.startswith("Hello!")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def test_serve_command_reports_a_busy_port() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "speko_sync.testing", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


INNER_TEST = """
import asyncio
import importlib.util
from livekit import rtc

def test_inner(speko_server, speko_agent):
    async def go():
        room = rtc.Room()
        greeting = asyncio.get_running_loop().create_future()

        def on_stream(reader, sender):
            async def read():
                text = await reader.read_all()
                if not greeting.done():
                    greeting.set_result((sender, text))
            asyncio.ensure_future(read())
        room.register_text_stream_handler("lk.transcription", on_stream)
        await room.connect(speko_server.url, speko_server.token("u", speko_agent.room))
        sender, text = await asyncio.wait_for(greeting, 10)
        assert sender == speko_agent.identity and text == speko_agent.greeting
        await room.disconnect()
    asyncio.run(go())
"""


@pytest.mark.webrtc
def test_pytest_plugin_fixtures_work(pytester: pytest.Pytester) -> None:
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    pytester.makepyfile(INNER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(("required", "outcome"), [("0", "skipped"), ("1", "errors")])
def test_plugin_skips_or_fails_without_a_namespace(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                   required: str, outcome: str) -> None:
    pytester.makepyfile(INNER_TEST)
    monkeypatch.delenv("SPEKO_SYNC_NETNS", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no unshare: no namespace can be made
    monkeypatch.setenv("SPEKO_SYNC_REQUIRE_WEBRTC", required)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--speko-isolate", "-rs", timeout=120)
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*needs a private network namespace*unshare*not installed*"])
    assert os.environ.get("SPEKO_SYNC_NETNS") is None


@pytest.mark.webrtc
def test_demo_command_holds_a_whole_conversation(tmp_path: object) -> None:
    import wave
    from pathlib import Path

    import numpy as np

    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    wav = Path(str(tmp_path)) / "agent.wav"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}  # no sound devices
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "demo", "--agent", "scripted", "--wav", str(wav)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for expected in ("status: connected", "agent: Hi! This is the offline Speko demo agent.",
                     "(partial)", "agent: I heard", "mode: speaking", "status: disconnected",
                     "disconnected: user (CLIENT_INITIATED)", "saved"):
        assert expected in out, out
    with wave.open(str(wav)) as f:
        audio = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)
    assert np.abs(audio).max() > 3000  # the agent's greeting tone was played


@pytest.mark.webrtc
def test_demo_with_the_real_worker_hears_and_answers_by_voice(tmp_path: object) -> None:
    """``demo`` with the offline Speko agent, a real LiveKit Agents worker: it greets,
    hears the spoken question, answers it, and the Conversation shows it all."""
    import shutil
    import wave
    from pathlib import Path

    import numpy as np

    from speko_sync.testing import AgentEnvUnavailable, agent_python
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    try:
        agent_python()
    except AgentEnvUnavailable as exc:
        pytest.skip(str(exc))
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng to ask the question")
    wav = Path(str(tmp_path)) / "agent.wav"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}  # no sound devices
    proc = subprocess.run([sys.executable, "-m", "speko_sync", "demo", "--wav", str(wav)],  # worker: the default
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for expected in ("LiveKit Agents worker", "status: connected", "agent is speaking", "mode: speaking",
                     "disconnected: user (CLIENT_INITIATED)", "saved",
                     # a client tool called by the agent, the blocking turn API and the latencies
                     "(the demo's light is now on)", 'tool call | set_light({"on": true}) -> the light is on [ok',
                     "ask -> 'Done: the light is on'", "1 tool call(s))", "TTS first byte",
                     "latency heard for the spoken question: "):
        assert expected in out, out
    lines = out.splitlines()
    # the worker heard the spoken question (PocketSphinx's words, whatever they are) and answered it
    asked = next(i for i, line in enumerate(lines) if "] user: " in line and "(partial)" not in line)
    assert any("] agent: " in line and "(partial)" not in line for line in lines[asked:]), out
    assert any("transcript | user: " in line for line in lines), out
    with wave.open(str(wav)) as f:
        audio = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)
    assert np.abs(audio).max() > 3000  # the agent's words were played


@pytest.mark.webrtc
@pytest.mark.parametrize(("script", "expected"), [
    ("local_agent_session.py", "'You said: \"hello\"'"),
    ("robot_control_loop.py", ("agent: Done, I am moving 0.5 m.\ntool move({'distance_m': 0.5}) -> moving 0.5 m",
                               "(the agent called move: ok)", "robot at 0.5 m")),
    ("batch_job.py", ("agent: I heard 1.5 seconds of speech.", "s after the question ended)")),
])
def test_examples_run(tmp_path: object, script: str, expected: str | tuple[str, ...]) -> None:
    from pathlib import Path

    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    example = Path(__file__).parent.parent / "examples" / script
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in (expected,) if isinstance(expected, str) else expected:
        assert line in proc.stdout, proc.stdout


@pytest.mark.webrtc
def test_celery_example_runs_conversations_as_tasks_on_a_prefork_worker(tmp_path: object) -> None:
    """A real Celery worker (prefork pool, Redis broker from Debian's
    redis-server) runs three conversations as tasks and returns their
    transcripts, each typed turn answered by the agent, in order."""
    import shutil
    from pathlib import Path

    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    missing = [what for what, present in (("redis-server", shutil.which("redis-server")),
                                          ("celery", importlib.util.find_spec("celery"))) if not present]
    if missing:
        if os.environ.get("SPEKO_SYNC_REQUIRE_WEBRTC") == "1":
            pytest.fail(f"missing for the Celery example: {missing} (make setup installs them)")
        pytest.skip(f"missing for the Celery example: {missing}")
    example = Path(__file__).parent.parent / "examples" / "celery_worker.py"
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("celery-")]
    for i in range(3):
        assert [line for line in lines if line.startswith(f"celery-{i} ")] == [
            f"celery-{i} user: hello", f"celery-{i} agent: You said: hello.",
            f"celery-{i} user: room {i}", f"celery-{i} agent: You said: room {i}."], proc.stdout


def test_pytest_plugin_loads_nothing_heavy() -> None:
    code = ("import sys, speko_sync.testing.pytest_plugin\n"
            "heavy = [m for m in ('aiortc', 'av', 'livekit', 'numpy', 'aiohttp') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve_lazily() -> None:
    import speko_sync
    import speko_sync.testing

    assert set(speko_sync.__all__) <= set(dir(speko_sync))
    for name in speko_sync.__all__:
        assert getattr(speko_sync, name) is not None
    for name in speko_sync.testing.__all__:
        assert getattr(speko_sync.testing, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = speko_sync.Nope  # type: ignore[attr-defined]
