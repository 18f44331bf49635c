"""Agent dispatch: LiveKit Agents workers register on ``/agent`` and get jobs.

This is the part of livekit-server that a LiveKit Agents worker talks to
(``livekit.agents`` ``AgentServer`` / ``cli.run_app`` with ``LIVEKIT_URL``
pointing here). The exchange, as livekit-server runs it:

1. the worker opens a websocket on ``/agent`` with a token carrying the
   ``agent`` grant and sends ``register``; the server answers with a worker id;
2. for each room that needs an agent the server sends an ``availability``
   request; the worker answers ``available`` (with the identity, name and
   attributes its participant wants);
3. the server mints that participant a token (kind agent, ``agent`` grant,
   ``canUpdateOwnMetadata``) and sends the ``assignment``; the worker's job
   process joins the room as an ordinary client;
4. the worker reports job status; the server sends ``termination`` when the
   room closes; pings are answered with pongs.

Rooms are dispatched when they are created (automatic dispatch, for workers
registered without an agent name) and, for rooms that already have a client
but no agent, when a worker registers. Dispatch can be held (the agent joins
late, or never) for tests.

Everything here runs on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSMsgType, web
from livekit.protocol import agent as agent_pb
from livekit.protocol import models

from .._loop import within
from ._auth import TokenError, mint_token, verify_token

if TYPE_CHECKING:
    from ._room import Room

log = logging.getLogger("speko_sync.testing")

#: Seconds a worker has to answer an availability request.
AVAILABILITY_TIMEOUT_S = 10.0
#: Lifetime of the tokens minted for agent jobs (seconds), as livekit-server.
JOB_TOKEN_TTL_S = 3600.0


class ServerEndpoint(Protocol):
    """Where a server listens, and the key pair it signs and checks tokens with."""

    @property
    def url(self) -> str: ...
    @property
    def api_key(self) -> str: ...
    @property
    def api_secret(self) -> str: ...


class DispatchHost(Protocol):
    """What the dispatcher needs of the server core: the API keys workers'
    tokens are checked against, the rooms, and the server jobs join."""

    @property
    def keys(self) -> Mapping[str, str]: ...
    @property
    def rooms(self) -> Mapping[str, Room]: ...
    @property
    def server(self) -> ServerEndpoint: ...


@dataclass
class JobRecord:
    """One dispatched job: which room, which worker, what became of it."""

    id: str
    room: str
    worker_id: str
    identity: str = ""
    status: str = "JS_PENDING"
    error: str = ""
    dispatched_at: float = field(default_factory=time.time)


class WorkerConnection:
    """One registered worker's websocket."""

    def __init__(self, ws: web.WebSocketResponse, register: agent_pb.RegisterWorkerRequest) -> None:
        self.ws = ws
        self.id = f"AW_{secrets.token_hex(6)}"
        self.agent_name = register.agent_name
        self.version = register.version
        perms = register.allowed_permissions
        # livekit-server's defaults when a worker states no permissions
        self.permissions = perms if perms.ByteSize() else models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True)
        self.available = True
        self.pending: dict[str, asyncio.Future[agent_pb.AvailabilityResponse]] = {}
        self._send_lock = asyncio.Lock()

    async def send(self, **fields: object) -> bool:
        if self.ws.closed:
            return False
        payload = agent_pb.ServerMessage(**fields).SerializeToString()  # type: ignore[arg-type]
        async with self._send_lock:
            try:
                await self.ws.send_bytes(payload)
            except (ConnectionError, RuntimeError):
                return False
        return True


class Dispatcher:
    """The server's side of agent dispatch (see the module docstring)."""

    def __init__(self, core: DispatchHost) -> None:
        self.core = core
        self.workers: dict[str, WorkerConnection] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.held = False
        self._changed = asyncio.Event()
        self._job_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the /agent websocket ------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.query.get("access_token", "")
        try:
            grant = verify_token(token, self.core.keys, require_room_join=False)
        except TokenError as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from None
        if not grant.agent:
            raise web.HTTPUnauthorized(text="token has no agent grant")
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        worker: WorkerConnection | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                message = agent_pb.WorkerMessage()
                try:
                    message.ParseFromString(msg.data)
                except Exception:
                    log.warning("worker sent an unparsable message")
                    continue
                which = message.WhichOneof("message")
                if which == "register":
                    if worker is None:
                        worker = await self._register(ws, message.register)
                elif worker is None:
                    log.warning("worker sent %s before registering", which)
                else:
                    await self._on_message(worker, message)
        finally:
            if worker is not None:
                self._unregister(worker)
        return ws

    async def _register(self, ws: web.WebSocketResponse, req: agent_pb.RegisterWorkerRequest) -> WorkerConnection:
        worker = WorkerConnection(ws, req)
        self.workers[worker.id] = worker
        log.info("agent worker %s registered (agent name %r, version %s)", worker.id, worker.agent_name, worker.version)
        await worker.send(register=agent_pb.RegisterWorkerResponse(
            worker_id=worker.id,
            server_info=models.ServerInfo(edition=models.ServerInfo.Edition.Standard, version="1.9.0",
                                          protocol=16, node_id="speko-local")))
        self._notify()
        for room in list(self.core.rooms.values()):  # rooms that waited for a worker
            if self._needs_agent(room):
                self.request_agent(room)
        return worker

    def _unregister(self, worker: WorkerConnection) -> None:
        self.workers.pop(worker.id, None)
        for future in worker.pending.values():
            if not future.done():
                future.cancel()
        for job in self.jobs.values():
            if job.worker_id == worker.id and job.status in ("JS_PENDING", "JS_RUNNING"):
                job.status, job.error = "JS_FAILED", "worker disconnected"
        log.info("agent worker %s is gone", worker.id)
        self._notify()

    async def _on_message(self, worker: WorkerConnection, message: agent_pb.WorkerMessage) -> None:
        which = message.WhichOneof("message")
        if which == "availability":
            future = worker.pending.get(message.availability.job_id)
            if future is not None and not future.done():
                future.set_result(message.availability)
        elif which == "update_job":
            job = self.jobs.get(message.update_job.job_id)
            if job is not None:
                job.status = agent_pb.JobStatus.Name(message.update_job.status)
                job.error = message.update_job.error
                self._notify()
        elif which == "update_worker":
            if message.update_worker.HasField("status"):
                worker.available = message.update_worker.status == agent_pb.WorkerStatus.WS_AVAILABLE
        elif which == "ping":
            await worker.send(pong=agent_pb.WorkerPong(last_timestamp=message.ping.timestamp,
                                                       timestamp=int(time.time() * 1000)))

    # -- dispatching --------------------------------------------------------------
    def _needs_agent(self, room: Room) -> bool:
        if room.closed or self.held:
            return False
        if any(job.room == room.name and job.status in ("JS_PENDING", "JS_RUNNING") for job in self.jobs.values()):
            return False
        return bool(room.participants) and not any(p.is_agent for p in room.participants.values())

    def request_agent(self, room: Room) -> None:
        """Dispatch an agent to ``room`` if a worker is registered, none is held
        back and none is there or on its way."""
        if not self._needs_agent(room):
            return
        workers = [w for w in self.workers.values() if w.available and not w.agent_name]
        if not workers:
            return
        job = JobRecord(id=f"AJ_{next(self._job_ids)}_{secrets.token_hex(3)}", room=room.name,
                        worker_id=workers[0].id)
        self.jobs[job.id] = job
        task = asyncio.get_running_loop().create_task(self._assign(workers, job, room))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _assign(self, workers: list[WorkerConnection], job: JobRecord, room: Room) -> None:
        proto = agent_pb.Job(id=job.id, dispatch_id=f"AD_{secrets.token_hex(6)}", type=agent_pb.JobType.JT_ROOM,
                             room=room.info(), agent_name="")
        for worker in workers:  # the first that takes it
            job.worker_id = worker.id
            future: asyncio.Future[agent_pb.AvailabilityResponse] = asyncio.get_running_loop().create_future()
            worker.pending[job.id] = future
            try:
                if not await worker.send(availability=agent_pb.AvailabilityRequest(job=proto)):
                    continue
                answer = await within(future, AVAILABILITY_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                continue
            finally:
                worker.pending.pop(job.id, None)
            if not answer.available:
                continue
            job.identity = answer.participant_identity or f"agent-{job.id}"
            attributes = dict(answer.participant_attributes)
            perms = worker.permissions
            token = mint_token(self.core.server.api_key, self.core.server.api_secret, job.identity, room.name,
                               ttl=JOB_TOKEN_TTL_S, name=answer.participant_name, kind="agent",
                               metadata=answer.participant_metadata, agent=True,
                               can_publish=perms.can_publish, can_subscribe=perms.can_subscribe,
                               can_publish_data=perms.can_publish_data,
                               can_update_own_metadata=perms.can_update_metadata, attributes=attributes)
            proto.state.CopyFrom(agent_pb.JobState(status=agent_pb.JobStatus.JS_PENDING, worker_id=worker.id,
                                                   participant_identity=job.identity))
            await worker.send(assignment=agent_pb.JobAssignment(job=proto, url=self.core.server.url, token=token))
            log.info("job %s for room %s assigned to worker %s as %s", job.id, room.name, worker.id, job.identity)
            self._notify()
            return
        job.status, job.error = "JS_FAILED", "no worker accepted the job"
        self._notify()

    async def room_closed(self, room_name: str) -> None:
        """Tell the workers that jobs in ``room_name`` are over."""
        for job in self.jobs.values():
            if job.room != room_name or job.status not in ("JS_PENDING", "JS_RUNNING"):
                continue
            worker = self.workers.get(job.worker_id)
            if worker is not None:
                await worker.send(termination=agent_pb.JobTermination(job_id=job.id))
            job.status = "JS_SUCCESS"
        self._notify()

    def release(self) -> None:
        """Stop holding dispatch; rooms that wait for an agent get one now."""
        self.held = False
        for room in list(self.core.rooms.values()):
            self.request_agent(room)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self.workers.values()):
            with contextlib.suppress(Exception):
                await worker.ws.close()

    # -- waiting ------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await within(self._changed.wait(), timeout)
