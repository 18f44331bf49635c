"""A conversation's status machine: connecting -> connected <-> reconnecting
-> disconnecting -> disconnected, whoever ends it (the caller, the agent, a
lost link, a failed join)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from typing import Any

from . import _protocol
from ._loop import LoopThread
from .errors import ErrorCode, SpekoClientError
from .events import DisconnectionDetails, DisconnectReason, Reconnection, Status


class Lifecycle:
    """``status`` changes only through :meth:`transition`: atomically, each
    change posted as ``status_changed`` in order. Any thread, except where a
    method says it runs on the loop.

    ``close_session()`` is the coroutine that releases the session;
    ``release()`` (any thread) lets go of what the conversation holds once
    its last event is posted; then :attr:`ended` is set."""

    def __init__(self, emit: Callable[[str, Any], None], runner: LoopThread,
                 close_session: Callable[[], Coroutine[Any, Any, None]], release: Callable[[], None],
                 reconnect_timeout: float) -> None:
        self._emit = emit
        self._runner = runner
        self._close_session = close_session
        self._release = release
        self.reconnect_timeout = reconnect_timeout
        self.lock = threading.RLock()
        self._status = Status.CONNECTING
        self.details: DisconnectionDetails | None = None
        self.ended = threading.Event()
        self._end_requested = False
        self._give_up: Any = None  # the reconnect_timeout timer (an asyncio.TimerHandle, on the loop)

    @property
    def status(self) -> Status:
        with self.lock:
            return self._status

    def transition(self, allowed: tuple[Status, ...], status: Status) -> bool:
        """From one of ``allowed`` to ``status``; False (and nothing done) from
        any other status, so of two threads racing to end the conversation
        exactly one wins."""
        with self.lock:
            if self._status not in allowed:
                return False
            self._status = status
            self._emit("status_changed", status)
        return True

    def connected(self, conversation_id: str) -> bool:
        """The join succeeded; True if :meth:`end` was asked for meanwhile."""
        with self.lock:
            if self.transition((Status.CONNECTING,), Status.CONNECTED):
                self._emit("connected", conversation_id)
            return self._end_requested

    def end(self) -> None:
        """The caller ends the conversation (while connecting: once connected)."""
        with self.lock:
            starting = self.transition((Status.CONNECTED, Status.RECONNECTING), Status.DISCONNECTING)
            if not starting and self._status == Status.CONNECTING:
                self._end_requested = True  # the constructor ends it once connected
        if starting:
            self._runner.submit(self._finish(_protocol.disconnection_details("CLIENT_INITIATED")))

    def abort(self) -> None:
        """A failed constructor: release everything, deliver what happened."""
        try:
            self._runner.call(self._close_session(), timeout=10)
        except Exception:
            pass
        self.transition((Status.CONNECTING, Status.CONNECTED, Status.DISCONNECTING), Status.DISCONNECTED)
        self._release()
        self.ended.set()

    def remote_end(self, details: DisconnectionDetails) -> None:
        """On the loop: the far end or the transport ended the session (kick,
        drop, failure), or the link was not recovered in time."""
        if self.transition((Status.CONNECTING, Status.CONNECTED, Status.RECONNECTING), Status.DISCONNECTING):
            self._runner.loop.create_task(self._finish(details))

    def link(self, reconnection: Reconnection | None) -> None:
        """On the loop: the transport lost the link (``None``) or got it back."""
        if reconnection is None:
            if self.transition((Status.CONNECTED,), Status.RECONNECTING):
                self._give_up = self._runner.loop.call_later(self.reconnect_timeout, self.remote_end,
                                                             _protocol.disconnection_details("RECONNECT_TIMEOUT"))
            return
        self._stop_give_up_timer()
        with self.lock:
            if self.transition((Status.RECONNECTING,), Status.CONNECTED):
                self._emit("reconnected", reconnection)

    def _stop_give_up_timer(self) -> None:
        """On the loop: the link is back, or the conversation is ending."""
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None

    async def _finish(self, details: DisconnectionDetails) -> None:
        """On the loop: release everything, then report the end."""
        self._stop_give_up_timer()
        try:
            await self._close_session()
        finally:
            with self.lock:
                self.details = details
            self.transition((Status.DISCONNECTING,), Status.DISCONNECTED)
            if details.reason not in (DisconnectReason.USER, DisconnectReason.AGENT):
                self._emit("error", SpekoClientError(
                    ErrorCode.DISCONNECTED, f"the session ended unexpectedly ({details.reason.value}: "
                    f"{details.message})"))
            self._emit("disconnected", details)
            self._release()
            self.ended.set()
