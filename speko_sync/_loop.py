"""A private asyncio loop on a daemon thread, driven from blocking code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopStopped(RuntimeError):
    """The loop was asked to stop (or stopped) before the operation ran or finished."""


def call_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any) -> None:
    """Have ``fn(*args)`` called on ``loop``: at once when that is the loop
    running here (or ``loop`` is ``None``: this one), else soon, from any thread,
    in the order of the calls."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # a thread without a loop
        running = None
    if loop is None or loop is running:
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)


async def within(aw: Awaitable[T], timeout: float) -> T:
    """``asyncio.wait_for(aw, timeout)`` without its lost cancellation.

    On Python 3.10 and 3.11, a task cancelled in the same pass of the loop as
    the result it waits for arrives gets the result, and runs on as if it had
    never been cancelled: a poll loop around it never ends, and whatever
    awaits its end (a session's release) hangs. Here a cancel always raises
    ``CancelledError`` (``aw`` is cancelled too). After ``timeout`` seconds
    ``aw`` is cancelled and awaited, then ``asyncio.TimeoutError`` is raised
    (unless it finished meanwhile: then its result, or its exception)."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait((task,), timeout=max(0.0, timeout))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.wait((task,))
        if task.cancelled():
            raise asyncio.TimeoutError
    return task.result()


async def run_on(loop: asyncio.AbstractEventLoop | None, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on ``loop`` (at once when that is the loop running
    here, or ``None``); cancelling the wait cancels it there too."""
    if loop is None or loop is asyncio.get_running_loop():
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


class LoopThread:
    """Owns one event loop running on its own thread.

    :meth:`call` submits a coroutine from any other thread and waits for its
    result (or exception) with a timeout; on timeout the coroutine is cancelled
    and ``TimeoutError`` is raised. Calling :meth:`call` from the loop's own
    thread raises ``RuntimeError`` instead of deadlocking.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(asyncio.sleep(0))  # start what was submitted last
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop. Raises :class:`LoopStopped` once the
        loop has been asked to stop."""
        with self._stop_lock:
            if self._stopping:
                coro.close()
                raise LoopStopped("the event loop has stopped")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError("blocking call made from the loop's own thread")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"operation did not finish within {timeout} s") from None
        except concurrent.futures.CancelledError:
            raise LoopStopped("the event loop stopped before the operation finished") from None
        except BaseException:
            future.cancel()  # interrupted (KeyboardInterrupt): do not leave it running
            raise

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def request_stop(self) -> None:
        """Ask the loop to stop (idempotent, any thread, does not wait)."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the loop (pending tasks are cancelled) and wait for its thread,
        unless called from that thread."""
        self.request_stop()
        if not self.in_loop_thread:
            self._thread.join(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._thread
