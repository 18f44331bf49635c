"""The process-wide runtime: one asyncio loop thread that owns every
conversation's LiveKit room, one that runs every conversation's audio pumps,
and one dispatcher thread that delivers every conversation's events. All start
on first use.

Audio has a loop of its own so that nothing the room does (a flood of data
packets, a burst of events, a slow receiver of LiveKit's) delays a frame: the
interpreter hands the audio thread its turn within a switch interval however
busy the room loop is.

One loop rather than one per conversation: LiveKit's FFI hands each native
event to every subscribed loop with ``call_soon_threadsafe``, so N loops mean N
thread wake-ups per event and a process of N conversations pays O(N^2) context
switches; on one loop it costs what the raw ``livekit.rtc`` client costs.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (its exit hook must be registered before ours; see _on_exit)
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from . import _livekit_exit  # noqa: F401  (LiveKit's callbacks quiesced at exit)
from ._dispatch import Dispatcher
from ._loop import LoopThread

log = logging.getLogger("speko_sync")


@dataclass(frozen=True)
class Runtime:
    loop: LoopThread
    audio: LoopThread
    dispatcher: Dispatcher
    pid: int
    #: conversations not yet ended, ended at interpreter exit
    open: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def alive(self) -> bool:
        return (self.pid == os.getpid() and all(t.thread.is_alive() and not t.stopping
                                                 for t in (self.loop, self.audio))
                and self.dispatcher.thread.is_alive())


_lock = threading.Lock()
_current: Runtime | None = None


def runtime() -> Runtime:
    """The process's runtime, started (or, after a fork, started anew) on first use."""
    global _current
    with _lock:
        current = _current
        if current is None or not current.alive():
            current = _current = Runtime(LoopThread("speko-loop"), LoopThread("speko-audio"),
                                         Dispatcher("speko-dispatch"), os.getpid())
        return current


FORK_ADVICE = (
    "speko_sync cannot hold a conversation in this process: it was forked from a parent that had "
    "already used LiveKit, whose native threads do not survive fork(). Start conversations only in "
    "processes whose parent has not: with Celery's prefork pool, run them in tasks, never in the "
    "worker's main process or at import time; with gunicorn --preload, not at import time; or use "
    "the 'spawn' or 'forkserver' start method of multiprocessing.")


def check_not_forked_after_use() -> None:
    """Raise ``RuntimeError`` (with :data:`FORK_ADVICE`) when LiveKit's native
    runtime was started in a parent of this forked process; a process that
    forked before using it is fine."""
    from livekit.rtc._ffi_client import FfiClient

    client = FfiClient._instance
    if client is not None and getattr(client, "_pid", os.getpid()) != os.getpid():
        raise RuntimeError(FORK_ADVICE)


def _on_exit() -> None:
    """At interpreter exit, end the conversations left open: leave their rooms
    and close their devices while the loop and the thread pools still work.

    Registered with ``threading``'s exit hooks, which run before the
    interpreter tears anything down, in reverse order of registration: ours is
    registered after ``concurrent.futures``' (imported above), so it runs while
    the default executor still takes work."""
    current = _current
    if current is None or current.pid != os.getpid():
        return
    for conversation in list(current.open):
        try:
            conversation.end_session(timeout=5.0)
        except Exception:
            log.exception("could not end %r at exit", conversation)


_register_exit = getattr(threading, "_register_atexit", None)
if _register_exit is not None:
    _register_exit(_on_exit)
else:  # pragma: no cover - an interpreter without threading's exit hooks
    atexit.register(_on_exit)


def _after_fork_in_child() -> None:
    global _current, _lock
    _lock = threading.Lock()  # the parent's may have been held by a thread that does not exist here
    _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)
