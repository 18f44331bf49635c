"""Run a LiveKit Agents worker (by default the offline Speko agent) as its own
process, from its own environment, against a :class:`LocalServer`.

LiveKit Agents pins a ``livekit`` release of its own, so the worker cannot share
this process or its environment; it runs as a real worker does, from the
environment ``make agent-env`` (or :func:`create_agent_env`) builds.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import venv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._workers import ServerEndpoint

#: What the agent environment holds (LiveKit Agents with offline speech parts).
AGENT_REQUIREMENTS = (
    "livekit-agents==1.8.9",
    "livekit-plugins-silero==1.8.9",
    "pocketsphinx==5.1.1",
)
#: Environment variable naming the agent environment's Python.
AGENT_PYTHON_ENV = "SPEKO_SYNC_AGENT_PYTHON"
#: The offline Speko agent program.
OFFLINE_WORKER = Path(__file__).with_name("offline_worker.py")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class AgentEnvUnavailable(RuntimeError):
    """No environment with LiveKit Agents was found; the message says how to make one."""


def default_agent_env() -> Path:
    """Where the agent environment lives by default: ``.venv-agent`` next to the
    project (a source checkout) or in the current directory."""
    if (_PROJECT_ROOT / "setup.py").exists():
        return _PROJECT_ROOT / ".venv-agent"
    return Path.cwd() / ".venv-agent"


def agent_python() -> str:
    """The Python of the agent environment: ``$SPEKO_SYNC_AGENT_PYTHON``, else
    ``.venv-agent/bin/python``. Raises :class:`AgentEnvUnavailable`."""
    configured = os.environ.get(AGENT_PYTHON_ENV)
    candidate = Path(configured) if configured else default_agent_env() / "bin" / "python"
    if not candidate.exists():
        raise AgentEnvUnavailable(
            f"no LiveKit Agents environment at {candidate}: run `make agent-env` or "
            f"`python -m speko_sync.testing agent-env` (or set {AGENT_PYTHON_ENV})")
    return str(candidate)


def create_agent_env(path: Path | None = None, *, quiet: bool = True, log: Path | None = None) -> Path:
    """Create (or complete) the agent environment at ``path`` (default
    :func:`default_agent_env`) with :data:`AGENT_REQUIREMENTS`. Returns its
    Python. pip's output goes to ``log`` when given (``quiet`` then does not
    matter), else to this process's output (``-q`` when ``quiet``). Raises
    ``subprocess.CalledProcessError`` when making the environment or pip fails."""
    path = path or default_agent_env()
    python = path / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(path)
    flags = ["-q"] if quiet and log is None else []
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *flags, *AGENT_REQUIREMENTS]
    if log is None:
        subprocess.run(command, check=True)
        return python
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    return python


class AgentWorker:
    """A LiveKit Agents worker process registered with a :class:`LocalServer`.

    Made by :meth:`LocalServer.start_agent_worker`. The server dispatches it to
    every room that has a client and no agent (as LiveKit Cloud does with
    automatic dispatch). Its output is kept (:meth:`output`) for diagnostics.
    Thread-safe; :meth:`stop` is idempotent.

    The offline Speko agent's options: ``greeting``, reply ``rules``
    (``(regex, reply)``), ``client_tools`` (``(regex, method, args_json,
    reply)``: a matching user turn calls the client's RPC method; ``None``
    keeps the worker's default ``set_light`` tools, ``[]`` has none),
    ``tool_timeout`` (seconds an RPC may take; the client is told 7 s less),
    ``tts``, ``stt`` (see ``offline_worker.py``).
    """

    def __init__(self, server: ServerEndpoint, *, program: Sequence[str] | None = None,
                 python: str | None = None, greeting: str | None = None,
                 rules: Sequence[tuple[str, str]] = (),
                 client_tools: Sequence[tuple[str, str, str, str]] | None = None, tool_timeout: float = 15.0,
                 tts: str = "auto", stt: str = "auto",
                 env: dict[str, str] | None = None, log_level: str = "WARNING") -> None:
        self.server = server
        cmd = [python or agent_python(), *(program or [str(OFFLINE_WORKER)]), "--log-level", log_level]
        tool_env: dict[str, str] = {}
        if program is None:
            cmd += ["--tts", tts, "--stt", stt, "--tool-timeout", str(tool_timeout)]
            if greeting is not None:
                cmd += ["--greeting", greeting]
            for pattern, reply in rules:
                cmd += ["--rule", pattern, reply]
            if client_tools is not None:  # exactly these (none for []), not the worker's defaults
                tool_env["SPEKO_AGENT_CLIENT_TOOLS"] = json.dumps([list(rule) for rule in client_tools])
        child_env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
                         LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1", **tool_env, **(env or {}))
        self.command = cmd
        self._lines: collections.deque[str] = collections.deque(maxlen=2000)
        self._changed = threading.Condition()  # the reader has read a line, or the end
        self._registered = False
        self._eof = False
        self._proc = subprocess.Popen(cmd, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="speko-agent-worker-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._registered = self._registered or line.startswith("worker registered")
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended (negative: killed by that signal)."""
        return self._proc.poll()

    def output(self) -> str:
        """The last 2000 lines the worker printed."""
        with self._changed:
            return "\n".join(self._lines)

    def wait_registered(self, timeout: float = 60.0) -> None:
        """Block until the worker registered with the server. Raises
        ``TimeoutError`` (or ``RuntimeError`` if it exited), with its output."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._registered or self._eof, timeout)
        if not done:
            raise TimeoutError(f"agent worker not registered within {timeout} s:\n{self.output()}")
        if not self._registered:  # its output ended: it exited
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            raise RuntimeError(f"agent worker exited with {self.returncode}:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the worker and its job processes at once (a crash)."""
        self._signal(signal.SIGKILL)
        self._proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the worker to drain and exit (SIGTERM); kill it after ``timeout``."""
        if self.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)

    def _signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.killpg(self._proc.pid, sig)  # its own session: the job processes too
            except ProcessLookupError:
                pass

    def __enter__(self) -> AgentWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Lines of pip's output shown when it fails.
_LOG_TAIL_LINES = 20


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m speko_sync.testing agent-env [PATH]``: one line while it
    works; pip's output goes to a log file, shown (its end) only on failure."""
    args = list(argv if argv is not None else sys.argv[1:])
    target = Path(args[0]) if args else default_agent_env()
    log = Path(tempfile.gettempdir()) / f"speko-agent-env-{os.getpid()}.log"
    shown = os.path.relpath(target) if not os.path.relpath(target).startswith("..") else str(target)
    print(f"building the LiveKit Agents environment in {shown} (a few minutes the first time)...", flush=True)
    try:
        python = create_agent_env(target, log=log)
    except subprocess.CalledProcessError as exc:
        if exc.output:  # venv's ensurepip captures its own output
            log.write_text(exc.output if isinstance(exc.output, str) else exc.output.decode(errors="replace"))
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:] \
            if log.exists() else []
        print(f"error: building the agent environment failed (exit {exc.returncode}); "
              f"the whole output is in {log}; its last lines:", file=sys.stderr)
        for line in tail:
            print(f"  {line}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. its Python cannot run: nothing worth keeping in the log
        with contextlib.suppress(OSError):
            log.unlink()
        print(f"error: cannot build the agent environment in {shown}: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(OSError):
        log.unlink()
    print(f"agent environment ready: {python}")
    return 0
