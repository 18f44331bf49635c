"""Hands events from the loop thread to user code on a thread of the library's
own, so a slow receiver never stalls audio or networking.

One :class:`Dispatcher` thread serves every conversation in the process; each
conversation posts through its own :class:`Channel`, whose events are delivered
in the order it posted them.
"""

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
_CLOSE = object()


class _Latest:
    """A state snapshot (the transcript) posted with :meth:`Channel.post_latest`:
    its value is made once, when first delivered or polled; a newer snapshot of
    the same kind supersedes it."""

    __slots__ = ("_make", "_value", "kind", "seq")

    def __init__(self, kind: str, seq: int, make: Callable[[], Any]) -> None:
        self.kind, self.seq, self._make = kind, seq, make
        self._value: Any = _Latest

    def value(self) -> Any:
        """The snapshot, made on first use (on the dispatcher thread, or the
        polling one: making it twice is harmless, it is a pure function)."""
        if self._value is _Latest:
            self._value = self._make()
        return self._value


class Dispatcher:
    """Delivers events to the blinker signals on its own thread, in the order
    they were posted (so each channel's order is kept).

    A receiver that raises, ``SystemExit`` included, is logged; the other
    receivers and later events are unaffected.
    """

    def __init__(self, name: str = "speko-dispatch") -> None:
        self._queue: queue.SimpleQueue[tuple[Channel | None, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def channel(self, owner: Any, *, poll_capacity: int = 1000) -> Channel:
        """A channel whose events are sent with ``sender=owner``."""
        return Channel(self, owner, poll_capacity)

    def _put(self, channel: Channel, item: Any) -> None:
        self._queue.put((channel, item))

    def stop(self, timeout: float | None = None) -> None:
        """Deliver what is queued, then end the thread (waits up to ``timeout``
        seconds unless called on the dispatcher thread)."""
        self._queue.put((None, _STOP))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            channel, item = self._queue.get()
            if channel is None:
                return
            channel._deliver(item)


class Channel:
    """One owner's events through a shared :class:`Dispatcher`, with a bounded
    copy kept for polling.

    ``post`` and ``call`` are non-blocking and callable from any thread.
    :meth:`close` marks the end: :meth:`wait_closed` returns once everything
    posted before it has been delivered.
    """

    def __init__(self, dispatcher: Dispatcher, owner: Any, poll_capacity: int) -> None:
        self._dispatcher = dispatcher
        self._owner = owner
        self._poll: collections.deque[Event | _Latest] = collections.deque()
        self._poll_capacity = poll_capacity
        self._poll_lock = threading.Lock()
        self._dropped = 0
        self._latest: dict[str, int] = {}  # kind -> the newest snapshot posted
        self._poll_latest: dict[str, _Latest] = {}  # kind -> its newest snapshot in the poll buffer
        self._closed = threading.Event()

    @property
    def on_dispatch_thread(self) -> bool:
        return threading.current_thread() is self._dispatcher.thread

    def post(self, kind: str, value: Any) -> None:
        event = Event(kind, value)
        with self._poll_lock:
            if len(self._poll) >= self._poll_capacity:
                self._poll.popleft()
                self._dropped += 1
            self._poll.append(event)
        self._dispatcher._put(self, event)

    def post_latest(self, kind: str, make: Callable[[], Any]) -> None:
        """Post a state snapshot whose value ``make()`` builds when it is
        delivered (or polled). Snapshots come in order, like events; one that a
        newer snapshot of the same kind follows before it is delivered is
        skipped, so a flood costs one snapshot per delivery, not one per post."""
        with self._poll_lock:
            seq = self._latest[kind] = self._latest.get(kind, 0) + 1
            slot = _Latest(kind, seq, make)
            previous = self._poll_latest.get(kind)
            if previous is not None:  # superseded: out of the poll buffer (it is near the end)
                for i in range(1, min(len(self._poll), 8) + 1):
                    if self._poll[-i] is previous:
                        del self._poll[-i]
                        break
            self._poll_latest[kind] = slot
            if len(self._poll) >= self._poll_capacity:
                self._poll.popleft()
                self._dropped += 1
            self._poll.append(slot)
        self._dispatcher._put(self, slot)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the dispatcher thread after the events posted so far."""
        self._dispatcher._put(self, fn)

    def poll(self) -> EventBatch:
        with self._poll_lock:
            items, self._poll = list(self._poll), collections.deque()
            dropped, self._dropped = self._dropped, 0
            self._poll_latest = {}
        newest = {item.kind: item.seq for item in items if isinstance(item, _Latest)}
        events = tuple(Event(item.kind, item.value()) if isinstance(item, _Latest) else item for item in items
                       if not isinstance(item, _Latest) or item.seq == newest[item.kind])
        return EventBatch(events, dropped)

    def close(self) -> None:
        """Mark the end of this channel's events (does not wait)."""
        self._dispatcher._put(self, _CLOSE)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until everything posted before :meth:`close` was delivered;
        false on timeout. Returns at once on the dispatcher thread itself."""
        if self.on_dispatch_thread:
            return self._closed.is_set()
        return self._closed.wait(timeout)

    def _deliver(self, item: Any) -> None:
        """On the dispatcher thread."""
        if item is _CLOSE:
            self._closed.set()
            return
        if isinstance(item, _Latest):
            if item.seq != self._latest.get(item.kind):
                return  # a newer snapshot is on its way
            if not any(True for _ in getattr(signals, item.kind).receivers_for(self._owner)):
                return  # nobody listens: the snapshot is not even made
            item = Event(item.kind, item.value())
        elif callable(item):
            try:
                item()
            except BaseException:
                log.exception("speko_sync internal callback failed")
            return
        signal = getattr(signals, item.kind)
        kwargs = {signals.PAYLOAD_NAMES[item.kind]: item.value}
        for receiver in list(signal.receivers_for(self._owner)):
            try:
                receiver(self._owner, **kwargs)
            except BaseException:  # SystemExit too: one receiver must not end delivery for all
                log.exception("a %s receiver raised; the others still run", item.kind)
