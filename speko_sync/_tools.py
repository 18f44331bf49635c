"""Client tools: the agent calls the user's plain Python functions over LiveKit RPC.

A LiveKit Agents function tool reaches the caller's code with
``perform_rpc(destination_identity=<user>, method=<name>, payload=<str>)``.
Each client tool is registered as an RPC method of that name. The rules, pure
and tested on their own (:func:`parse_arguments`, :func:`encode_result`,
:func:`error_message`):

- a payload that is a JSON object is passed as keyword arguments; an empty
  payload as none; any other payload as one string;
- a ``str`` result is sent as it is, anything else JSON-encoded;
- an exception sends ``str(exc)`` (``ToolError(message)``: exactly that
  message) as the RPC error's message, never a traceback.

:class:`ToolHost` runs on the room loop: it checks the caller (agents only),
bounds payloads and calls in flight, runs each function on :class:`ToolPool`
(daemon threads of the library's own, never the loop, audio or dispatcher
thread) and reports every call as a :class:`~speko_sync.events.ToolCall`.
The deadline is LiveKit's: the SDK answers ``RESPONSE_TIMEOUT`` when the
caller's ``response_timeout`` (minus its round-trip allowance) passes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from livekit import rtc

from ._loop import call_on
from ._protocol import MAX_PACKET_BYTES
from .errors import ToolError
from .events import ToolCall, ToolCallStatus

log = logging.getLogger("speko_sync")

#: LiveKit's bound on an RPC request or response payload (bytes of UTF-8), as on a packet.
MAX_PAYLOAD = MAX_PACKET_BYTES
#: Calls of one conversation's tools running at once (timed-out ones that
#: still run included); more are refused.
MAX_IN_FLIGHT = 4
#: Threads of the process-wide tool pool.
POOL_THREADS = 8
#: Longest tool name accepted.
MAX_NAME = 128

Tool = Callable[..., Any]


def check_tool(name: object, fn: object) -> None:
    """Raise ``TypeError``/``ValueError`` for a name or function that cannot be a tool."""
    if not isinstance(name, str):
        raise TypeError(f"a tool name must be a str, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME or name != name.strip():
        raise ValueError(f"a tool name must be 1 to {MAX_NAME} characters without surrounding spaces, got {name!r}")
    if not callable(fn):
        raise TypeError(f"tool {name!r} must be callable, got {type(fn).__name__}")
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        raise TypeError(f"tool {name!r} is a coroutine function: client tools are plain blocking functions "
                        "(they run on a thread of their own)")


def check_tools(tools: object) -> dict[str, Tool]:
    """``client_tools`` as given to a conversation: a mapping of name -> function."""
    if tools is None:
        return {}
    if not isinstance(tools, Mapping):
        raise TypeError(f"client_tools must be a mapping of name -> function, got {type(tools).__name__}")
    for name, fn in tools.items():
        check_tool(name, fn)
    return dict(tools)


def parse_arguments(payload: str) -> tuple[tuple[Any, ...], dict[str, Any], Mapping[str, Any] | str]:
    """``(args, kwargs, reported)`` for a payload: a JSON object becomes keyword
    arguments, an empty payload none, anything else one string argument."""
    if not payload.strip():
        return (), {}, {}
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return (), value, value
    return (payload,), {}, payload


def encode_result(result: object) -> str:
    """A ``str`` as it is, anything else as JSON. Raises ``ValueError`` for a
    result JSON cannot encode or one over :data:`MAX_PAYLOAD`."""
    if isinstance(result, str):
        text = result
    else:
        try:
            text = json.dumps(result, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the tool returned a {type(result).__name__}, which is not JSON-serializable: "
                             f"{exc}") from None
    size = _utf8_size(text)
    if size > MAX_PAYLOAD:
        raise ValueError(f"the tool's result is {size} bytes, over LiveKit's {MAX_PAYLOAD} for an RPC response")
    return text


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def error_message(exc: BaseException) -> str:
    """What the agent is told of a tool's exception: its message (a
    :class:`ToolError`'s exactly), else its type's name; never a traceback.
    Bounded so that it fits an RPC error."""
    message = exc.message if isinstance(exc, ToolError) else str(exc)
    if not message:
        message = type(exc).__name__
    return message[:4096]


class ToolPool:
    """Daemon threads (``speko-tool-N``, at most :data:`POOL_THREADS`, started
    as needed) that run client tools. Daemon threads, so a tool that never
    returns cannot hold up the interpreter's exit."""

    def __init__(self, threads: int = POOL_THREADS) -> None:
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = \
            queue.SimpleQueue()
        self._max = threads
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._idle == 0 and len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"speko-tool-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
            self._queue.put((future, fn))
        return future

    def _work(self) -> None:
        while True:
            future, fn = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # delivered to the caller, never raised here
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1
            del future, fn


_pool_lock = threading.Lock()
_pool: tuple[int, ToolPool] | None = None


def pool() -> ToolPool:
    """The process's tool pool (made anew in a forked child)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ToolPool())
        return _pool[1]


class ToolHost:
    """One conversation's client tools. ``add``/``remove`` from any thread;
    everything else on the room loop. ``emit(kind, value)`` reports calls."""

    def __init__(self, tools: Mapping[str, Tool], emit: Callable[[str, Any], None],
                 is_agent: Callable[[str], bool]) -> None:
        self._tools: dict[str, Tool] = dict(tools)
        self._lock = threading.Lock()
        self._emit = emit
        self._is_agent = is_agent
        self._room: rtc.Room | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registered: set[str] = set()  # room loop: the RPC methods LiveKit has now
        self.in_flight = 0
        self.calls = 0
        self.refused = 0
        #: listeners (on the room loop) told of each answered call, for the turn API
        self.on_call: list[Callable[[ToolCall], None]] = []

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._tools)

    # -- registration ------------------------------------------------------------
    def attach(self, room: rtc.Room | None) -> None:
        """Room loop, right after the join: register every tool with LiveKit
        (``None``: a transport whose calls arrive as messages, see :meth:`call`)."""
        self._room, self._loop = room, asyncio.get_running_loop()
        with self._lock:
            names = list(self._tools)
        for name in names:
            self._register(name)

    def _register(self, name: str) -> None:
        room = self._room
        with self._lock:
            wanted = name in self._tools
        if room is None or not wanted or name in self._registered:
            return  # attach() and add() may both get here first
        room.local_participant.register_rpc_method(name, self._handler(name))
        self._registered.add(name)

    def add(self, name: str, fn: Tool) -> None:
        """Any thread: add or replace a tool; registered with LiveKit at once
        when the room is joined."""
        with self._lock:
            self._tools[name] = fn  # a call looks its function up by name: a replacement takes effect at once
        self._on_loop(self._register, name)

    def remove(self, name: str) -> bool:
        """Any thread: remove a tool; False if there was none of that name."""
        with self._lock:
            if self._tools.pop(name, None) is None:
                return False
        self._on_loop(self._unregister, name)
        return True

    def _unregister(self, name: str) -> None:
        room = self._room
        with self._lock:
            wanted = name in self._tools
        if room is not None and not wanted and name in self._registered:
            room.local_participant.unregister_rpc_method(name)
            self._registered.discard(name)

    def _on_loop(self, fn: Callable[[str], None], name: str) -> None:
        if self._loop is not None:  # else attach() registers it
            call_on(self._loop, fn, name)

    # -- calls ---------------------------------------------------------------------
    def _handler(self, name: str) -> Callable[[rtc.RpcInvocationData], Any]:
        async def handle(invocation: rtc.RpcInvocationData) -> str:
            return await self.call(name, invocation)
        return handle

    async def call(self, name: str, invocation: rtc.RpcInvocationData) -> str:
        """Room loop: answer one RPC invocation of tool ``name``."""
        started = time.monotonic()
        payload = invocation.payload
        record = {"name": name, "caller": invocation.caller_identity, "request_id": invocation.request_id}

        def report(status: ToolCallStatus, arguments: Mapping[str, Any] | str, *, result: str | None = None,
                   error: str | None = None) -> None:
            self.calls += 1
            if status == ToolCallStatus.REFUSED:
                self.refused += 1
            call = ToolCall(arguments=arguments, status=status, result=result, error=error,
                            duration_s=time.monotonic() - started, **record)
            for listener in list(self.on_call):
                listener(call)
            self._emit("tool_call", call)

        def refuse(code: int, message: str) -> rtc.RpcError:
            report(ToolCallStatus.REFUSED, payload[:1024], error=message)
            return rtc.RpcError(code, message)

        if not self._is_agent(invocation.caller_identity):
            log.warning("refused a call of tool %r from %r: not an agent participant", name,
                        invocation.caller_identity)
            raise refuse(rtc.RpcError.ErrorCode.APPLICATION_ERROR,
                         "refused: only agent participants may call client tools")
        if _utf8_size(payload) > MAX_PAYLOAD:
            raise refuse(rtc.RpcError.ErrorCode.REQUEST_PAYLOAD_TOO_LARGE,
                         f"refused: the payload is over {MAX_PAYLOAD} bytes")
        with self._lock:
            fn = self._tools.get(name)
        if fn is None:
            raise refuse(rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, f"refused: no client tool named {name!r}")
        if self.in_flight >= MAX_IN_FLIGHT:
            raise refuse(rtc.RpcError.ErrorCode.APPLICATION_ERROR,
                         f"refused: {MAX_IN_FLIGHT} calls of client tools are already running")
        args, kwargs, reported = parse_arguments(payload)
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as exc:
            message = f"bad arguments for {name}: {exc}"
            report(ToolCallStatus.ERROR, reported, error=message)
            raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, message) from None
        except ValueError:
            pass  # a builtin without a signature: let the call decide
        self.in_flight += 1
        done = pool().submit(lambda: fn(*args, **kwargs))
        done.add_done_callback(self._finished)
        try:
            value = await asyncio.shield(asyncio.wrap_future(done))
            result = encode_result(value)
        except asyncio.CancelledError:
            timed_out = getattr(invocation, "cancel_reason", None) == rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT
            if timed_out:
                report(ToolCallStatus.TIMEOUT, reported,
                       error=f"no answer within the agent's deadline of {invocation.response_timeout:g} s")
            else:
                report(ToolCallStatus.ERROR, reported, error="the conversation ended during the call")
            raise
        except rtc.RpcError as exc:  # a tool may answer with an RPC error of its own
            report(ToolCallStatus.ERROR, reported, error=exc.message)
            raise rtc.RpcError(exc.code, exc.message[:4096], exc.data) from None
        except Exception as exc:
            message = error_message(exc)
            log.info("client tool %r raised: %r", name, exc, exc_info=not isinstance(exc, (ToolError, ValueError)))
            report(ToolCallStatus.ERROR, reported, error=message)
            raise rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, message) from None
        report(ToolCallStatus.OK, reported, result=result)
        return result

    def _finished(self, _: concurrent.futures.Future[Any]) -> None:
        """Any thread: a tool's function returned (maybe after its deadline)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._release_slot)
        except RuntimeError:  # the loop is gone (interpreter exit)
            pass

    def _release_slot(self) -> None:
        self.in_flight -= 1
