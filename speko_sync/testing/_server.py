"""``LocalServer``: a LiveKit-compatible server on its own thread and loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from livekit.protocol import models

from .._loop import LoopThread
from ._agent import ScriptedAgent
from ._auth import mint_token
from ._core import _ServerCore
from ._realtime import RealtimeEndpoint
from ._room import Room
from ._worker_process import AgentWorker
from ._workers import Dispatcher, JobRecord

DEFAULT_API_KEY = "devkey"
DEFAULT_API_SECRET = "secret-for-local-testing-only-0123456789"


def disconnect_reason(reason: int | str) -> int:
    """A LiveKit ``DisconnectReason`` given by name (``"ROOM_DELETED"``) or value.
    Raises ``ValueError`` naming the valid names for an unknown one."""
    if isinstance(reason, str):
        try:
            return int(models.DisconnectReason.Value(reason.upper()))
        except ValueError:
            names = ", ".join(models.DisconnectReason.keys())
            raise ValueError(f"unknown DisconnectReason {reason!r}; expected one of {names}") from None
    if reason not in models.DisconnectReason.values():
        raise ValueError(f"unknown DisconnectReason value {reason!r}")
    return int(reason)


class LocalServer:
    """A LiveKit-compatible server for tests and offline development.

    Speaks enough LiveKit signalling (``/rtc/v1`` and ``/rtc``) and WebRTC
    (through aiortc) for the real ``livekit.rtc`` client to join rooms, publish
    and hear audio and exchange data packets. Runs on its own thread and event
    loop; every public method is blocking and thread-safe.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with LocalServer() as server:
            agent = server.add_agent(room="r1")
            url, token = server.url, server.token("alice", "r1")

    WebRTC needs a non-loopback interface: run clients and server inside a
    private network namespace (see :func:`speko_sync.testing.reexec_isolated`).

    Args:
        host, port: where the websocket listens (port 0 picks a free one).
        api_key, api_secret: the key pair tokens are checked against.
        single_pc: serve ``/rtc/v1``; when false it answers 404 so clients fall
            back to the classic two-connection ``/rtc`` path.
        default_agent: give every new room a :class:`ScriptedAgent`; true for
            the default class, or a callable ``(server, room_name) -> agent``.
        auto_create_rooms: create rooms on demand from the token's grant; when
            false only rooms made with :meth:`create_room` can be joined.
        ping_interval, ping_timeout: seconds, sent to clients in the join. A
            client whose websocket closed without a leave stays in the room
            for ``ping_timeout`` seconds, to resume.
        allow_resume: accept resumes (LiveKit's reconnect join: same
            participant, ICE restart); when false the server answers them 404
            and clients rejoin as new participants.
        empty_room_timeout: seconds after its last client left that a room is
            closed (its agents leave and stop); ``None`` keeps rooms forever.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str = DEFAULT_API_KEY, api_secret: str = DEFAULT_API_SECRET,
                 single_pc: bool = True,
                 default_agent: bool | Callable[[LocalServer, str], ScriptedAgent] = False,
                 auto_create_rooms: bool = True,
                 ping_interval: int = 5, ping_timeout: int = 15, allow_resume: bool = True,
                 empty_room_timeout: float | None = None) -> None:
        if ping_interval <= 0 or ping_timeout <= 0:
            raise ValueError("ping_interval and ping_timeout must be positive (seconds)")
        self.host = host
        self.api_key = api_key
        self.api_secret = api_secret
        self.single_pc = single_pc
        self.default_agent = default_agent
        self.auto_create_rooms = auto_create_rooms
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.allow_resume = allow_resume
        self.empty_room_timeout = empty_room_timeout
        self._port = port
        self._runner: LoopThread | None = None
        self._core: _ServerCore | None = None
        self.agents: list[ScriptedAgent] = []  # changed in place, under _agents_lock (user and loop threads)
        self._agents_lock = threading.Lock()
        self.agent_workers: list[AgentWorker] = []
        #: Speko's realtime (speech-to-speech) sessions, served at ``/realtime``
        #: by an offline agent; change its settings at any time
        self.realtime = RealtimeEndpoint()
        self._background: set[asyncio.Future[None]] = set()

    # -- life cycle -------------------------------------------------------------
    def start(self) -> LocalServer:
        """Start listening; returns self. Raises ``OSError`` if the port is taken."""
        if self._runner is not None:
            return self
        runner = LoopThread("speko-local-server")
        core = _ServerCore(self)
        try:
            runner.call(core.start(self.host, self._port), timeout=15)
        except BaseException:
            runner.stop()
            raise
        self._runner, self._core = runner, core
        return self

    def stop(self) -> None:
        """Close every session (leave with SERVER_SHUTDOWN) and stop. Idempotent."""
        runner, core = self._runner, self._core
        if runner is None or core is None:
            return
        with self._agents_lock:
            agents = list(self.agents)
        for agent in agents:
            agent._shutdown()
        for worker in self.agent_workers:
            worker.stop()
        try:
            runner.call(core.stop(), timeout=15)
        finally:
            runner.stop()
            self._runner = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- info -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The ``ws://`` URL clients connect to."""
        return f"ws://{self.host}:{self._require()[1].port}"

    @property
    def port(self) -> int:
        return self._require()[1].port

    def _require(self) -> tuple[LoopThread, _ServerCore]:
        if self._runner is None or self._core is None:
            raise RuntimeError("the server is not running; call start() or use it in a with block")
        return self._runner, self._core

    def _call(self, coro: Any, timeout: float = 15.0) -> Any:
        try:
            runner = self._require()[0]
        except RuntimeError:
            coro.close()
            raise
        return runner.call(coro, timeout)

    def realtime_session(self, session_id: str | None = None, **options: Any) -> dict[str, Any]:
        """A realtime session answer as Speko's API gives one (``sessionId``,
        ``wsUrl``, ``wsToken``, ``expiresAt``, the sample rates), for
        ``Conversation.from_session``; ``options``: ``ttl_s``, ``input_rate``,
        ``output_rate`` (16000 or 24000). The session's agent is
        ``self.realtime.wait_for_session()``."""
        return self.realtime.mint(session_id, base_url=self.url, **options)

    def token(self, identity: str, room: str, *, ttl: float = 3600.0, **grants: Any) -> str:
        """Mint a token for ``identity`` in ``room`` valid for ``ttl`` seconds.
        Keyword arguments pass to :func:`speko_sync.testing.mint_token`."""
        return mint_token(self.api_key, self.api_secret, identity, room, ttl=ttl, **grants)

    def stats(self) -> dict[str, int]:
        """Counters: joins (joins_v1, joins_v0), auth_refused, data_in, data_out."""
        async def read() -> dict[str, int]:
            return dict(self._require()[1].stats)
        return self._call(read())  # type: ignore[no-any-return]

    def rooms(self) -> list[str]:
        return self._call(self._async_rooms())  # type: ignore[no-any-return]

    async def _async_rooms(self) -> list[str]:
        return list(self._require()[1].rooms)

    def participants(self, room: str) -> list[str]:
        """Identities in ``room`` now (clients and agents)."""
        async def get() -> list[str]:
            r = self._require()[1].rooms.get(room)
            return list(r.participants) if r else []
        return self._call(get())  # type: ignore[no-any-return]

    def participant_info(self, room: str, identity: str) -> models.ParticipantInfo | None:
        """The ``ParticipantInfo`` the server sends about ``identity`` in ``room``
        now (attributes, client protocol, permissions, tracks...), or ``None``."""
        async def get() -> models.ParticipantInfo | None:
            r = self._require()[1].rooms.get(room)
            p = r.participants.get(identity) if r else None
            return p.info() if p is not None else None
        return self._call(get())  # type: ignore[no-any-return]

    def create_room(self, name: str) -> None:
        """Create ``name`` now (needed when ``auto_create_rooms`` is false)."""
        async def make() -> None:
            self._require()[1].room(name, create=True)
        self._call(make())

    # -- agents -----------------------------------------------------------------
    def add_agent(self, room: str, identity: str = "agent", *,
                  agent_class: type[ScriptedAgent] | None = None, **options: Any) -> ScriptedAgent:
        """Join a :class:`ScriptedAgent` (or ``agent_class``) to ``room``, creating
        the room if needed, and return it once it is in the room."""
        cls = agent_class or ScriptedAgent
        agent = cls(self, room, identity, **options)
        with self._agents_lock:
            self.agents.append(agent)
        agent._join()
        return agent

    def _room_closed(self, name: str) -> None:
        """On the loop: a room was closed; its agents stop (on a worker thread,
        since stopping waits for their behaviour threads)."""
        with self._agents_lock:
            # an agent not yet in (it joins after this, on this loop) is not in the closed room
            gone = [a for a in self.agents if a.room == name and a._peer is not None]
            self.agents[:] = [a for a in self.agents if a not in gone]
        for agent in gone:
            asyncio.get_running_loop().run_in_executor(None, agent._shutdown)

    def _room_created(self, room: Room) -> None:
        """On the loop: a room appeared; give it its default agent if asked."""
        if not self.default_agent:
            return
        factory = self.default_agent
        loop = asyncio.get_running_loop()

        def make() -> None:
            if callable(factory):
                agent = factory(self, room.name)
                with self._agents_lock:
                    if agent not in self.agents:
                        self.agents.append(agent)
            else:
                self.add_agent(room.name)
        # add_agent blocks on the loop, so it runs on a worker thread
        future = loop.run_in_executor(None, make)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    # -- LiveKit Agents workers -------------------------------------------------
    def start_agent_worker(self, *, wait: bool = True, timeout: float = 60.0, **options: Any) -> AgentWorker:
        """Start the offline Speko agent (a real LiveKit Agents worker, see
        ``speko_sync/testing/offline_worker.py``) as its own process; it is
        dispatched to every room with a client and no agent. With ``wait``,
        return once it has registered. Options: ``greeting`` (``""`` for none),
        ``rules`` (``(regex, reply)`` pairs), ``client_tools`` (``(regex,
        method, args_json, reply)``: a matching user turn calls the client's
        LiveKit RPC method ``method`` and the agent says ``reply`` with
        ``{result}`` replaced; default: the worker's ``set_light`` tools,
        ``[]`` for none), ``tool_timeout`` (seconds, default 15), ``tts``
        (``auto``/``espeak``/``tone``), ``stt`` (``auto``/``pocketsphinx``/
        ``describe``), ``program`` (another worker's argv after the Python),
        ``python``, ``env``, ``log_level``. The server stops it when it stops.

        Raises :class:`AgentEnvUnavailable` when there is no agent environment
        (``make agent-env``), ``TimeoutError`` or ``RuntimeError`` when the
        worker does not register."""
        self._require()
        worker = AgentWorker(self, **options)
        self.agent_workers.append(worker)
        if wait:
            try:
                worker.wait_registered(timeout)
            except BaseException:
                worker.stop()
                raise
        return worker

    def workers(self) -> list[str]:
        """Ids of the LiveKit Agents workers registered on ``/agent`` now."""
        async def get() -> list[str]:
            return list(self._require()[1].dispatcher.workers)
        return self._call(get())  # type: ignore[no-any-return]

    def jobs(self, room: str | None = None) -> list[JobRecord]:
        """Agent jobs dispatched so far (or those for ``room``), oldest first."""
        async def get() -> list[JobRecord]:
            jobs = self._require()[1].dispatcher.jobs.values()
            return [JobRecord(**vars(j)) for j in jobs if room is None or j.room == room]
        return self._call(get())  # type: ignore[no-any-return]

    def wait_for_worker(self, timeout: float = 30.0) -> str:
        """Block until a worker is registered; return its id. Raises ``TimeoutError``."""
        return self._wait(lambda d: next(iter(d.workers), None), timeout, "no agent worker registered")  # type: ignore[no-any-return]

    def wait_for_job(self, room: str, status: str = "JS_RUNNING", timeout: float = 30.0) -> JobRecord:
        """Block until a job for ``room`` reaches ``status`` (a ``JobStatus`` name);
        return it. Raises ``TimeoutError`` saying what the jobs were."""
        def found(d: Dispatcher) -> JobRecord | None:
            return next((JobRecord(**vars(j)) for j in d.jobs.values() if j.room == room and j.status == status), None)
        return self._wait(found, timeout, f"no {status} job for room {room!r}")  # type: ignore[no-any-return]

    def _wait(self, probe: Callable[[Dispatcher], Any], timeout: float, what: str) -> Any:
        async def wait() -> Any:
            dispatcher = self._require()[1].dispatcher
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (value := probe(dispatcher)) is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    jobs = [(j.room, j.status, j.error) for j in dispatcher.jobs.values()]
                    raise TimeoutError(f"{what} within {timeout} s (workers {list(dispatcher.workers)}, jobs {jobs})")
                await dispatcher.wait_changed(remaining)
            return value
        return self._call(wait(), timeout=timeout + 5)

    def hold_dispatch(self) -> None:
        """Dispatch no agent to any room until :meth:`release_dispatch` (an
        agent that joins late, or never)."""
        self._require()[1].dispatcher.held = True

    def release_dispatch(self) -> None:
        """Dispatch agents again; rooms that wait for one get it now."""
        async def release() -> None:
            self._require()[1].dispatcher.release()
        self._call(release())

    # -- faults -----------------------------------------------------------------
    def drop_connections(self, room: str | None = None, *, refuse_rejoin: bool = False) -> int:
        """Abort every client connection (or those in ``room``) with no leave, as
        a crashed server would. Clients then try to resume and rejoin; with
        ``refuse_rejoin`` their identities are refused (HTTP 401) from now on, so
        their sessions end (LiveKit reports JOIN_FAILURE). Returns how many
        connections were dropped."""
        return self._call(self._require()[1].drop_connections(room, refuse_rejoin))  # type: ignore[no-any-return]

    def remove_participant(self, room: str, identity: str | None = None,
                           reason: int | str = "PARTICIPANT_REMOVED") -> int:
        """Send clients in ``room`` (or just ``identity``) a leave with ``reason``
        (a LiveKit ``DisconnectReason`` name or value) and close them."""
        value = disconnect_reason(reason)
        return self._call(self._require()[1].remove(room, identity, value))  # type: ignore[no-any-return]

    def delete_room(self, room: str) -> None:
        """Close ``room`` for everyone with ROOM_DELETED, as LiveKit's API does."""
        async def delete() -> None:
            core = self._require()[1]
            r = core.rooms.pop(room, None)
            if r is not None:
                await r.close(models.DisconnectReason.ROOM_DELETED)
                await core.dispatcher.room_closed(room)
        self._call(delete())

    def stop_listening(self) -> None:
        """Refuse new connections at the TCP level (nothing listens on the port),
        as a server that went away does; with :meth:`drop_connections` the
        server looks dead to its clients. :meth:`listen_again` undoes it."""
        self._call(self._require()[1].stop_listening())

    def listen_again(self) -> None:
        """Listen on the same port again after :meth:`stop_listening`."""
        core = self._require()[1]
        if core.site is None:
            self._call(core.listen(core.host, core.port))

    def pause_pongs(self, seconds: float) -> None:
        """Stop answering pings on every client websocket open now, for
        ``seconds``: the clients take their links for dead once their ping
        timeout passes. Websockets opened later (a resume) are answered."""
        async def pause() -> None:
            until = time.monotonic() + seconds
            for client in self._require()[1].clients:
                client.pong_pause = (client.ws, until)
        self._call(pause())

    def set_join_delay(self, seconds: float) -> None:
        """Hold every new join for ``seconds`` before answering it (0 to stop)."""
        self._require()[1].join_delay = max(0.0, seconds)

    def refuse_joins(self, message: str | None = "joins are refused", status: int = 503) -> None:
        """Refuse every new join with HTTP ``status`` and ``message``; ``None`` to
        accept joins again."""
        self._require()[1].join_refusal = None if message is None else (status, message)
