"""A :class:`LocalServer` in a process of its own.

A real agent's server never shares the application's interpreter. Run in the
same process, the server's Python (WebRTC, Opus, its agents) competes for the
interpreter lock with the conversation's audio threads, so timing measurements
(playback gaps under load, packet floods) describe the test rig rather than the
library. :class:`ServerProcess` runs the server in a child process, driven by one
line per command on its stdin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import TracebackType


class ServerProcess:
    """A :class:`LocalServer` with scripted agents, in a child process (in the
    same network namespace). Methods block until the child has done the work
    and raise ``RuntimeError`` if it has died or answered with an error.

    ``nice`` lowers the child's scheduling priority (to tell the machine's load
    from the client's). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, *, nice: int = 0, timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._proc = subprocess.Popen([sys.executable, "-m", "speko_sync.testing._process", str(nice)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        #: the server's ``ws://`` URL
        self.url = self._read()

    def _read(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process ended (exit status {self._proc.wait(5)})")
        if line.startswith("error "):
            raise RuntimeError(f"the server process failed: {line[6:].strip()}")
        return line.strip()

    def ask(self, *words: object) -> str:
        """Send one command line, return the child's one-line answer."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(" ".join(map(str, words)) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def add_agent(self, room: str) -> None:
        """A scripted agent (no greeting) in ``room``."""
        self.ask("agent", room)

    def token(self, identity: str, room: str) -> str:
        """A user token for ``room``."""
        return self.ask("token", identity, room)

    def say_tone(self, room: str, seconds: float) -> None:
        """``room``'s agent speaks a 440 Hz tone for ``seconds`` (returns at once)."""
        self.ask("speak", room, seconds)

    def set_agent_clock(self, room: str, ppm: float) -> None:
        """``room``'s agent sends as if its clock ran ``ppm`` parts per million
        fast (negative: slow)."""
        self.ask("clock", room, ppm)

    def flood(self, room: str, count: int, payload: bytes = b'{"type":"flood"}') -> float:
        """``room``'s agent sends ``payload`` ``count`` times back to back to
        everyone in it; returns the seconds the server took to hand them to
        its transports (they arrive later, at the link's pace)."""
        return float(self.ask("flood", room, count, payload.hex()))

    def close(self) -> None:
        """End the child and wait for it (killed after ``timeout`` seconds).
        Idempotent; raises nothing."""
        if self._proc.poll() is not None:
            return
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write("quit\n")
            self._proc.stdin.close()
            self._proc.wait(self._timeout)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _serve() -> None:
    from ._server import LocalServer

    with LocalServer() as server:
        agents = {}
        print(server.url, flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            try:
                if command == "quit":
                    return
                if command == "agent":
                    agents[args[0]] = server.add_agent(args[0], greeting=None)
                    answer = "ok"
                elif command == "token":
                    answer = server.token(args[0], args[1])
                elif command == "speak":
                    agents[args[0]].say_tone(440, float(args[1]), 0.3)
                    answer = "ok"
                elif command == "clock":
                    agents[args[0]].set_clock_ppm(float(args[1]))
                    answer = "ok"
                elif command == "flood":
                    started = time.monotonic()
                    agents[args[0]].flood(int(args[1]), bytes.fromhex(args[2]))
                    answer = f"{time.monotonic() - started:.3f}"
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:  # reported to the parent, which raises it
                answer = f"error {exc!r}"
            print(answer, flush=True)


if __name__ == "__main__":
    os.nice(int(sys.argv[1]))
    _serve()
