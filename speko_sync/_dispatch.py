"""Hands events from the loop thread to user code, in order, on a thread of
the library's own, so a slow receiver never stalls audio or networking."""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from . import signals
from .events import Event, EventBatch

log = logging.getLogger("speko_sync")

_STOP = object()


class Dispatcher:
    """Delivers :class:`Event` values to the blinker signals (``sender`` =
    ``owner``) on its own thread, and keeps a bounded copy for polling.

    ``post`` is non-blocking and callable from any thread. A receiver that
    raises is logged; the other receivers and later events are unaffected.
    """

    def __init__(self, owner: Any, *, poll_capacity: int = 1000, name: str = "speko-dispatch") -> None:
        self._owner = owner
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._poll: collections.deque[Event] = collections.deque()
        self._poll_capacity = poll_capacity
        self._poll_lock = threading.Lock()
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def post(self, kind: str, value: Any) -> None:
        event = Event(kind, value)
        with self._poll_lock:
            if len(self._poll) >= self._poll_capacity:
                self._poll.popleft()
                self._dropped += 1
            self._poll.append(event)
        self._queue.put(event)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the dispatcher thread after the events posted so far."""
        self._queue.put(fn)

    def poll(self) -> EventBatch:
        with self._poll_lock:
            events, self._poll = tuple(self._poll), collections.deque()
            dropped, self._dropped = self._dropped, 0
        return EventBatch(events, dropped)

    def stop(self, timeout: float | None = None, *, wait: bool = True) -> None:
        """Deliver what is queued, then end the thread; with ``wait`` (and not on
        the dispatcher thread itself) wait up to ``timeout`` seconds for that."""
        self._queue.put(_STOP)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if callable(item):
                try:
                    item()
                except Exception:
                    log.exception("speko_sync internal callback failed")
                continue
            signal = getattr(signals, item.kind)
            kwargs = {signals.PAYLOAD_NAMES[item.kind]: item.value}
            for receiver in list(signal.receivers_for(self._owner)):
                try:
                    receiver(self._owner, **kwargs)
                except Exception:
                    log.exception("a %s receiver raised; the others still run", item.kind)
