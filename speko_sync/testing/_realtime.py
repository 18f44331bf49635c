"""An offline Speko realtime endpoint: speech to speech over one websocket.

Speko's realtime sessions: the client connects to the session's ``wsUrl`` with
its ``wsToken`` as the only websocket subprotocol, gets a ``ready`` frame with
the sample rates, then both sides send mono PCM16 (little-endian) as binary
frames and JSON control frames as text. :class:`RealtimeEndpoint` mints
sessions and serves each with the offline agent
(:class:`~speko_sync.testing._realtime_agent.RealtimeAgentSession`)::

    endpoint = RealtimeEndpoint(greeting=None)
    app.router.add_get(REALTIME_PATH, endpoint.handle)    # any aiohttp app
    app.on_shutdown.append(endpoint.on_shutdown)
    answer = endpoint.mint(base_url="ws://127.0.0.1:7880")

or on a thread of its own, for blocking code::

    with RealtimeServer() as server:
        answer = server.mint()
        session = server.endpoint.wait_for_session()
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .._loop import LoopThread
from ._realtime_agent import RealtimeAgentSession
from ._realtime_voice import (
    AgentSettings,
    check_rate,
)

log = logging.getLogger("speko_sync.testing")

#: Where the endpoint is mounted; a session's ``wsUrl`` is its base URL and this.
REALTIME_PATH = "/realtime"

@dataclass(frozen=True)
class SessionGrant:
    """What a minted token grants: one session, until ``expires_at`` (``time.time()``)."""

    session_id: str
    token: str
    expires_at: float
    input_rate: int
    output_rate: int


@dataclass(eq=False)
class RealtimeEndpoint(AgentSettings):
    """Mints realtime sessions and serves them, one offline agent per websocket.

    The :class:`AgentSettings` fields may be changed at any time; a connection
    takes a copy when it opens (``session.settings``). ``reject_tokens``
    refuses every connection (401). :meth:`handle` serves on whichever loop
    runs it (the first is kept as ``loop``); the other methods are thread-safe.
    """

    reject_tokens: bool = False
    loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)
    _grants: dict[str, SessionGrant] = field(default_factory=dict, init=False, repr=False)
    _sessions: list[RealtimeAgentSession] = field(default_factory=list, init=False, repr=False)
    _handed: int = field(default=0, init=False, repr=False)
    _script: collections.deque[str] = field(default_factory=collections.deque, init=False, repr=False)

    def __post_init__(self) -> None:
        self.check()

    def mint(self, session_id: str | None = None, *, ttl_s: float = 900.0, input_rate: int | None = None,
             output_rate: int | None = None, base_url: str) -> dict[str, Any]:
        """A session as Speko's API answers it: ``sessionId``, ``wsUrl`` (``base_url``
        and ``/realtime``, as ``ws://`` or ``wss://``), ``wsToken`` (valid for
        ``ttl_s`` seconds), ``expiresAt`` (ISO 8601, UTC), ``inputSampleRate``
        and ``outputSampleRate`` (the endpoint's unless given)."""
        grant = SessionGrant(
            session_id=session_id or f"rt_{secrets.token_hex(8)}",
            token=secrets.token_urlsafe(24),
            expires_at=time.time() + ttl_s,
            input_rate=check_rate(self.input_rate if input_rate is None else input_rate),
            output_rate=check_rate(self.output_rate if output_rate is None else output_rate),
        )
        with self._cond:
            self._grants[grant.token] = grant
        base = re.sub(r"^http(s?)://", r"ws\1://", base_url.rstrip("/"))
        expires = datetime.fromtimestamp(grant.expires_at, timezone.utc).isoformat(timespec="milliseconds")
        return {"sessionId": grant.session_id, "wsUrl": base + REALTIME_PATH, "wsToken": grant.token,
                "expiresAt": expires.replace("+00:00", "Z"),
                "inputSampleRate": grant.input_rate, "outputSampleRate": grant.output_rate}

    def will_hear(self, text: str) -> None:
        """Script the text of the next user utterance heard in any session (a
        session's own ``will_hear`` goes first). With none scripted, an
        utterance is heard as ``"(speech, 1.2 s)"``."""
        with self._cond:
            self._script.append(text)

    def _next_heard(self) -> str | None:
        with self._cond:
            return self._script.popleft() if self._script else None

    @property
    def sessions(self) -> list[RealtimeAgentSession]:
        """Every session connected so far, oldest first."""
        with self._cond:
            return list(self._sessions)

    def wait_for_session(self, timeout: float = 10.0) -> RealtimeAgentSession:
        """The next connected session not yet returned by this method (the
        first, on the first call), waiting for it. Raises ``TimeoutError``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._sessions) > self._handed, timeout):
                raise TimeoutError(f"no new realtime session within {timeout} s "
                                   f"({len(self._sessions)} connected so far)")
            self._handed += 1
            return self._sessions[self._handed - 1]

    def settings(self) -> AgentSettings:
        """A copy of the agent settings now, as a new session takes it."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(AgentSettings)}
        return AgentSettings(**{**values, "tools": list(self.tools)})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of ``GET /realtime``: check the token offered as
        the only subprotocol (HTTP 401 otherwise), upgrade echoing it, then run
        the agent until the websocket closes."""
        grant = self._admit(request)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        ws = web.WebSocketResponse(protocols=(grant.token,), autoping=True)
        try:
            await ws.prepare(request)
        except ConnectionError:
            log.debug("a realtime client left before its websocket upgrade")
            return ws
        session = RealtimeAgentSession(ws, session_id=grant.session_id, input_rate=grant.input_rate,
                                       output_rate=grant.output_rate, settings=self.settings(),
                                       script=self._next_heard)
        with self._cond:
            self._sessions.append(session)
            self._cond.notify_all()
        try:
            await session.run()
        except Exception:
            log.exception("realtime session %s failed", grant.session_id)
        return ws

    def _admit(self, request: web.Request) -> SessionGrant:
        offered = [p.strip() for header in request.headers.getall("Sec-WebSocket-Protocol", [])
                   for p in header.split(",") if p.strip()]
        if self.reject_tokens:
            raise web.HTTPUnauthorized(text="session tokens are refused")
        if len(offered) != 1:
            raise web.HTTPUnauthorized(text="expected the session token as the only websocket subprotocol")
        with self._cond:
            grant = self._grants.get(offered[0])
        if grant is None:
            raise web.HTTPUnauthorized(text="unknown session token")
        if time.time() >= grant.expires_at:
            raise web.HTTPUnauthorized(text="session token expired")
        return grant

    async def close_sessions(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every open session served on the running loop."""
        loop = asyncio.get_running_loop()
        live = [s for s in self.sessions if not s.closed.is_set() and s.loop is loop]
        await asyncio.gather(*(asyncio.wrap_future(s.close(code, reason)) for s in live), return_exceptions=True)

    async def on_shutdown(self, app: web.Application) -> None:
        """For ``app.on_shutdown``: close the open sessions (1001)."""
        await self.close_sessions()


async def serve_realtime(endpoint: RealtimeEndpoint, host: str = "127.0.0.1",
                         port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve ``endpoint`` at ``/realtime`` on the running loop. Returns the
    runner (``await runner.cleanup()`` to stop) and the ``ws://`` base URL."""
    app = web.Application()
    app.router.add_get(REALTIME_PATH, endpoint.handle)
    app.on_shutdown.append(endpoint.on_shutdown)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, f"ws://{host}:{runner.addresses[0][1]}"


class RealtimeServer:
    """A :class:`RealtimeEndpoint` served on its own thread and loop, for
    blocking code: a context manager, or :meth:`start` and :meth:`stop`."""

    def __init__(self, endpoint: RealtimeEndpoint | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.endpoint = endpoint if endpoint is not None else RealtimeEndpoint()
        self.host = host
        self._port = port
        self._thread: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._url = ""

    def start(self) -> RealtimeServer:
        """Start listening; returns self. Raises ``OSError`` if the port is taken."""
        if self._thread is not None:
            return self
        thread = LoopThread("speko-realtime-server")
        try:
            self._runner, self._url = thread.call(serve_realtime(self.endpoint, self.host, self._port), timeout=15)
        except BaseException:
            thread.stop()
            raise
        self._thread = thread
        return self

    def stop(self) -> None:
        """Close every session (1001) and stop. Idempotent."""
        thread, runner = self._thread, self._runner
        if thread is None or runner is None:
            return
        self._thread = self._runner = None
        try:
            thread.call(runner.cleanup(), timeout=15)
        finally:
            thread.stop()

    def __enter__(self) -> RealtimeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The ``ws://`` base URL (the endpoint is at ``url + "/realtime"``)."""
        if self._thread is None:
            raise RuntimeError("the server is not running; call start() or use it in a with block")
        return self._url

    def mint(self, session_id: str | None = None, **options: Any) -> dict[str, Any]:
        """:meth:`RealtimeEndpoint.mint` with this server's URL as the base."""
        return self.endpoint.mint(session_id, base_url=self.url, **options)
