"""The process-wide runtime: one asyncio loop thread that owns every
conversation's LiveKit room and audio pumps, and one dispatcher thread that
delivers every conversation's events. Both start on first use.

One loop rather than one per conversation: LiveKit's FFI hands each native
event to every subscribed loop with ``call_soon_threadsafe``, so N loops mean N
thread wake-ups per event and a process of N conversations pays O(N^2) context
switches; on one loop it costs what the raw ``livekit.rtc`` client costs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ._dispatch import Dispatcher
from ._loop import LoopThread


@dataclass(frozen=True)
class Runtime:
    loop: LoopThread
    dispatcher: Dispatcher
    pid: int

    def alive(self) -> bool:
        return (self.pid == os.getpid() and self.loop.thread.is_alive() and not self.loop.stopping
                and self.dispatcher.thread.is_alive())


_lock = threading.Lock()
_current: Runtime | None = None


def runtime() -> Runtime:
    """The process's runtime, started (or, after a fork, started anew) on first use."""
    global _current
    with _lock:
        current = _current
        if current is None or not current.alive():
            current = _current = Runtime(LoopThread("speko-loop"), Dispatcher("speko-dispatch"), os.getpid())
        return current


def _after_fork_in_child() -> None:
    global _current, _lock
    _lock = threading.Lock()  # the parent's may have been held by a thread that does not exist here
    _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)
