"""Helpers for Conversation tests: record every event, wait for one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from speko_sync import Conversation, NullAudio
from speko_sync.testing import LocalServer, ScriptedAgent


class Recorder:
    """Collects (kind, value, thread name) of every callback, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, str]] = []
        self._cond = threading.Condition()

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        return {f"on_{name}": self._make(kind) for name, kind in (
            ("connect", "connected"), ("disconnect", "disconnected"), ("reconnect", "reconnected"),
            ("message", "message"),
            ("transcript", "transcript"), ("status_change", "status_changed"), ("mode_change", "mode_changed"),
            ("agent_state_change", "agent_state_changed"), ("control", "control"), ("error", "error"),
            ("user_state_change", "user_state_changed"), ("turn", "turn"), ("tool_call", "tool_call"),
            ("agent_tools", "agent_tools"), ("interruption", "interruption"), ("usage", "usage"))}

    def _make(self, kind: str) -> Callable[[Any], None]:
        def record(value: Any) -> None:
            with self._cond:
                self.events.append((kind, value, threading.current_thread().name))
                self._cond.notify_all()
        return record

    def of(self, kind: str) -> list[Any]:
        with self._cond:
            return [v for k, v, _ in self.events if k == kind]

    def wait_for(self, kind: str, predicate: Callable[[Any], bool] = lambda v: True, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for k, v, _ in self.events:
                    if k == kind and predicate(v):
                        return v
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {kind} event within {timeout} s; got {[e[:2] for e in self.events]}")
                self._cond.wait(remaining)


def open_conversation(server: LocalServer, agent: ScriptedAgent, recorder: Recorder | None = None,
                      identity: str = "user", **kwargs: Any) -> Conversation:
    kwargs.setdefault("audio", NullAudio())
    callbacks = recorder.callbacks() if recorder is not None else {}
    return Conversation(server.token(identity, agent.room), server.url, **callbacks, **kwargs)
