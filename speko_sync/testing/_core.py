"""The server's core: its rooms, its clients and agent dispatch, the aiohttp app
that admits and serves joins, and the faults tests inject into it. It lives on
the server's loop; :class:`~speko_sync.testing.LocalServer` is the blocking,
thread-safe façade over it.

The parts of the server import each other in one direction: rooms and media
(``_room``, ``_media``), then the clients and dispatcher the core creates
(``_client``, ``_workers``, which see the core through small Protocols), then
this module, then what runs beside the core (``_agent``, ``_worker_process``),
and ``_server`` on top."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from livekit.protocol import models, rtc

from ._auth import Grant, TokenError, verify_token
from ._client import RemoteClient
from ._realtime import REALTIME_PATH, RealtimeEndpoint
from ._room import Room
from ._workers import Dispatcher, ServerEndpoint

if TYPE_CHECKING:
    from .._loop import LoopThread

log = logging.getLogger("speko_sync.testing")


class ServerOptions(ServerEndpoint, Protocol):
    """The server as its core sees it: options read when they apply (a change
    holds from then on) and the hooks for rooms that come and go. Both are
    called on the loop."""

    @property
    def single_pc(self) -> bool: ...
    @property
    def auto_create_rooms(self) -> bool: ...
    @property
    def allow_resume(self) -> bool: ...
    @property
    def empty_room_timeout(self) -> float | None: ...
    @property
    def ping_interval(self) -> int: ...
    @property
    def ping_timeout(self) -> int: ...

    @property
    def realtime(self) -> RealtimeEndpoint: ...

    def _room_created(self, room: Room) -> None: ...

    def _room_closed(self, name: str) -> None: ...


class ServerHandle(Protocol):
    """A running server as the things beside its core (a ScriptedAgent) see it:
    its loop thread and core, and the blocking calls made through them."""

    def _require(self) -> tuple[LoopThread, _ServerCore]: ...

    def _call(self, coro: Any, timeout: float = 15.0) -> Any: ...

    def remove_participant(self, room: str, identity: str | None = None,
                           reason: int | str = "PARTICIPANT_REMOVED") -> int: ...


class _ServerCore:
    """The loop-side state of a server. Only touched on the server's loop."""

    def __init__(self, server: ServerOptions) -> None:
        self.server = server
        self.keys = {server.api_key: server.api_secret}
        self.rooms: dict[str, Room] = {}
        self.clients: set[RemoteClient] = set()
        self.ping_interval = server.ping_interval
        self.ping_timeout = server.ping_timeout
        self.join_delay = 0.0
        self.join_refusal: tuple[int, str] | None = None
        self.refused_identities: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.host = ""
        self.port = 0
        self.dispatcher = Dispatcher(self)

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/rtc/v1", self._handle_v1)
        app.router.add_get("/rtc", self._handle_v0)
        app.router.add_get("/rtc/validate", self._handle_validate)
        app.router.add_get("/rtc/v1/validate", self._handle_validate)
        app.router.add_get("/agent", self.dispatcher.handle)
        app.router.add_get("/", self._handle_root)
        app.router.add_get(REALTIME_PATH, self.server.realtime.handle)  # Speko's realtime sessions
        app.on_shutdown.append(self.server.realtime.on_shutdown)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await self.listen(host, port)

    async def listen(self, host: str, port: int) -> None:
        assert self.runner is not None
        site = self.site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp has no public way to learn the bound port
        assert isinstance(server, asyncio.Server)
        self.host, self.port = host, server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused, as by a
        server that is gone; connections already open stay."""
        if self.site is not None:
            await self.site.stop()
            self.site = None

    async def stop(self) -> None:
        await self.dispatcher.close()
        for room in list(self.rooms.values()):
            await room.close(models.DisconnectReason.SERVER_SHUTDOWN)
        self.rooms.clear()
        if self.runner is not None:
            await self.runner.cleanup()

    def room(self, name: str, *, create: bool) -> Room | None:
        room = self.rooms.get(name)
        if room is None and create:
            room = self.rooms[name] = Room(name)
            self.server._room_created(room)
        return room

    # -- HTTP -----------------------------------------------------------------
    @staticmethod
    def _token_of(request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query.get("access_token", "")

    def _admit(self, request: web.Request) -> Grant:
        """Every check a join must pass, shared by the join and ``/validate``
        (clients call it after a failed upgrade to learn the reason). Raises an
        ``HTTPException`` whose body is the reason, or returns the grant."""
        try:
            grant = verify_token(self._token_of(request), self.keys)
        except TokenError as exc:
            self.stats["auth_refused"] += 1
            raise web.HTTPUnauthorized(text=str(exc)) from None
        if grant.room not in self.rooms and not self.server.auto_create_rooms:
            self.stats["auth_refused"] += 1
            raise web.HTTPNotFound(text=f"requested room does not exist: {grant.room}")
        if grant.identity in self.refused_identities:
            self.stats["auth_refused"] += 1
            raise web.HTTPUnauthorized(text=f"participant {grant.identity!r} was dropped and may not rejoin")
        if self.join_refusal is not None:
            raise _http_error(*self.join_refusal)
        return grant

    async def _handle_root(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _handle_validate(self, request: web.Request) -> web.Response:
        self._admit(request)
        return web.Response(text="success")

    async def _handle_v1(self, request: web.Request) -> web.StreamResponse:
        if not self.server.single_pc:
            raise web.HTTPNotFound(text="single peer connection mode disabled")
        raw = request.query.get("join_request", "")
        try:
            wrapped = rtc.WrappedJoinRequest()
            wrapped.ParseFromString(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            data = wrapped.join_request
            if wrapped.compression == rtc.WrappedJoinRequest.Compression.GZIP:
                data = gzip.decompress(data)
            join = rtc.JoinRequest()
            join.ParseFromString(data)
        except Exception as exc:
            raise web.HTTPBadRequest(text=f"invalid join_request: {exc}") from None
        return await self._join(request, join, single_pc=True)

    async def _handle_v0(self, request: web.Request) -> web.StreamResponse:
        join = rtc.JoinRequest()
        join.connection_settings.auto_subscribe = request.query.get("auto_subscribe", "1") in ("1", "true")
        query = request.query
        with contextlib.suppress(ValueError):
            join.client_info.protocol = int(query.get("protocol", "0"))
            join.client_info.client_protocol = int(query.get("client_protocol", "0"))
        for name in filter(None, query.get("capabilities", "").split(",")):
            if name.strip() in models.ClientInfo.Capability.keys():
                join.client_info.capabilities.append(models.ClientInfo.Capability.Value(name.strip()))  # type: ignore[arg-type]
        if request.query.get("reconnect") in ("1", "true"):
            join.reconnect = True
        return await self._join(request, join, single_pc=False)

    async def _join(self, request: web.Request, join: rtc.JoinRequest, *, single_pc: bool) -> web.StreamResponse:
        if self.join_delay > 0:
            await asyncio.sleep(self.join_delay)
        grant = self._admit(request)
        if (join.metadata or any(join.participant_attributes.values())) and not grant.can_update_metadata:
            raise web.HTTPUnauthorized(text="setting metadata or attributes at join needs canUpdateOwnMetadata")
        if join.reconnect:
            return await self._resume(request, grant, join)
        room = self.room(grant.room, create=True)
        assert room is not None
        ws, upgraded = await _websocket(request)
        if not upgraded:
            return ws
        client = RemoteClient(self, room, ws, grant=grant, single_pc=single_pc)
        self.clients.add(client)
        self.stats["joins"] += 1
        self.stats["joins_v1" if single_pc else "joins_v0"] += 1
        try:
            await room.join(client)
            await client.start(join)
            self.dispatcher.request_agent(room)
        except Exception:
            log.exception("client %s failed", client.identity)
            client.end()
        return await self._serve(client, ws)

    async def _resume(self, request: web.Request, grant: Any, join: rtc.JoinRequest) -> web.StreamResponse:
        """A client that lost its signalling link resumes its session, as
        livekit-server allows while the participant is still in the room: a new
        websocket, a ReconnectResponse (with the last reliable packet received,
        from which the client resends), then its ICE-restart offer."""
        room = self.rooms.get(grant.room)
        client = room.participants.get(grant.identity) if room is not None else None
        if not self.server.allow_resume or not isinstance(client, RemoteClient) or client.ended \
                or client.sid != join.participant_sid:
            self.stats["resumes_refused"] += 1
            raise web.HTTPNotFound(text="participant session not found; rejoin")
        ws, upgraded = await _websocket(request)
        if not upgraded:
            return ws
        self.stats["resumes"] += 1
        await client.resume(ws)
        return await self._serve(client, ws)

    async def _serve(self, client: RemoteClient, ws: web.WebSocketResponse) -> web.WebSocketResponse:
        """Serve ``client`` on ``ws`` until its session ends here. A websocket
        that closes without a leave keeps the participant for a resume for the
        ping timeout, as livekit-server does; a resume hands the session to
        the new websocket's handler, and this one returns at once."""
        room = client.room
        try:
            if not client.ended:
                await client.serve()
            if not client.ended and await client.wait_resumed(ws, float(self.ping_timeout)):
                return ws
        except Exception:
            log.exception("client %s failed", client.identity)
        if client.ws is not ws and not client.ended:
            return ws  # resumed while this handler was failing: not ours to end
        self.clients.discard(client)
        await room.leave(client, models.DisconnectReason.CLIENT_INITIATED
                         if client.ws.closed else models.DisconnectReason.UNKNOWN_REASON)
        await client.release()
        if not ws.closed:
            await ws.close()
        self._watch_empty(room)
        return ws

    def _watch_empty(self, room: Room) -> None:
        timeout = self.server.empty_room_timeout
        if timeout is None or any(isinstance(p, RemoteClient) for p in room.participants.values()):
            return
        asyncio.get_running_loop().call_later(timeout, lambda: asyncio.ensure_future(self._close_if_empty(room)))

    async def _close_if_empty(self, room: Room) -> None:
        if self.rooms.get(room.name) is not room:
            return
        if any(isinstance(p, RemoteClient) for p in room.participants.values()):
            return
        del self.rooms[room.name]
        await room.close(models.DisconnectReason.ROOM_DELETED)
        await self.dispatcher.room_closed(room.name)
        self.server._room_closed(room.name)

    async def drop_connections(self, room: str | None, refuse_rejoin: bool) -> int:
        victims = [c for c in self.clients if room is None or c.room.name == room]
        for client in victims:
            if refuse_rejoin:
                self.refused_identities.add(client.identity)
            await client.close(models.DisconnectReason.UNKNOWN_REASON, send_leave=False)
        return len(victims)

    async def remove(self, room_name: str, identity: str | None, reason: int) -> int:
        room = self.rooms.get(room_name)
        if room is None:
            return 0
        removed = 0
        for p in list(room.participants.values()):
            if isinstance(p, RemoteClient) and (identity is None or p.identity == identity):
                await room.evict(p, reason)
                removed += 1
        return removed


async def _websocket(request: web.Request) -> tuple[web.WebSocketResponse, bool]:
    """Upgrade ``request`` to a signalling websocket; false when the client
    already gave up (an abandoned join, a held one it timed out on): nothing
    to serve, no error."""
    ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
    try:
        await ws.prepare(request)
    except ConnectionError:
        log.debug("a client left before its websocket upgrade")
        return ws, False
    return ws, True


def _http_error(status: int, text: str) -> web.HTTPException:
    exc = web.HTTPException(text=text)
    exc.set_status(status)
    return exc
