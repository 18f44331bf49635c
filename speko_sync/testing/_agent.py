"""``ScriptedAgent``: an in-process participant that behaves like a Speko agent.

It lives inside the local server's room (no WebRTC of its own), so it costs one
Opus encode per listener and nothing else. Clients see an AGENT participant with
a microphone track and JSON data packets, exactly as from a real agent worker.

Threads: the room side (``_AgentPeer``) runs on the server loop; the behaviour
hooks (``on_*`` methods) run in order on the agent's own behaviour thread, so they
may call the blocking methods (``send``, ``say``, ``call_tool``...) freely.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from livekit.protocol import models, rtc

from .._loop import within
from ..audio import load_pcm16
from . import _lk_protocol as lk
from ._client import RemoteClient
from ._media import FRAME_SAMPLES, SAMPLE_RATE, Fanout, PacedSource
from ._room import Participant, PublishedTrack, Room, new_sid

if TYPE_CHECKING:
    from av import AudioFrame
    from livekit.protocol.agent_pb.agent_session import AgentSessionEvent, AgentSessionMessage
    from livekit.rtc import RpcError

    from ._core import ServerHandle

log = logging.getLogger("speko_sync.testing")

_FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
#: Which protocols a ScriptedAgent speaks: LiveKit Agents' native one, the JSON packets, or both.
PROTOCOLS = ("both", "livekit", "json")
#: Seconds the scripted LLM and TTS report as their latencies in session metrics.
_LLM_TTFT_S, _LLM_TTFS_S, _TTS_TTFB_S = 0.05, 0.06, 0.1


def rpc_error(code: int, message: str | None = None, data: str = "") -> RpcError:
    """A ``livekit.rtc.RpcError`` (``message`` defaults to the built-in one of
    ``code``); imported when first needed, since ``livekit.rtc`` is slow to load."""
    from livekit.rtc import RpcError

    if message is None:
        message = RpcError.ErrorMessage.get(RpcError.ErrorCode(code), "") if code in set(RpcError.ErrorCode) else ""
    return RpcError(code, message, data)


class ToolCall(NamedTuple):
    """One :meth:`ScriptedAgent.call_tool`: the method, the payload sent and
    what came back (the result string, or the ``livekit.rtc.RpcError``)."""

    method: str
    payload: str
    outcome: str | RpcError


@dataclass
class _PendingCall:
    """An RPC the agent made, waiting on the loop for its ack and response."""

    ack: asyncio.Event
    response: asyncio.Future[tuple[str, tuple[int, str, str] | None]]


@dataclass
class _SpokenItem:
    """A line the agent is speaking, reported as a chat message once spoken."""

    text: str
    to: list[str]
    seconds: float
    created_at: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class ReceivedPacket:
    """A data packet a client sent: ``raw`` bytes, ``data`` the parsed JSON object
    (empty when ``raw`` was not a JSON object), and who sent it when."""

    raw: bytes
    data: dict[str, Any]
    sender: str
    topic: str
    received_at: float = field(default_factory=time.monotonic)

    @property
    def valid(self) -> bool:
        """True when ``raw`` is a JSON object with a string ``type``."""
        return isinstance(self.data.get("type"), str)

    @property
    def type(self) -> str | None:
        value = self.data.get("type")
        return value if isinstance(value, str) else None


def tone(freq_hz: float, seconds: float, amplitude: float = 0.3,
         sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sine tone as int16 samples, with 5 ms fades so it does not click."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    wave = amplitude * np.sin(2 * np.pi * freq_hz * t)
    fade = min(n // 2, int(0.005 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return (wave * 32767).astype(np.int16)


class _Listener:
    """The agent's ear on one client track: keeps the audio, finds utterances."""

    def __init__(self, agent: ScriptedAgent, identity: str) -> None:
        self.agent = agent
        self.identity = identity
        self.speech_frames = 0
        self.quiet_frames = 0
        self.loud_run = 0

    def __call__(self, frame: AudioFrame, mono: np.ndarray, rms: float) -> None:
        agent = self.agent
        with agent._lock:
            chunks = agent._audio.setdefault(self.identity, collections.deque(maxlen=agent._max_chunks))
            chunks.append(mono)
        loud = rms >= agent.speech_threshold
        if self.speech_frames == 0:
            self.loud_run = self.loud_run + 1 if loud else 0
            if self.loud_run >= 2:  # 40 ms of sound starts an utterance
                self.speech_frames, self.quiet_frames = self.loud_run, 0
                if agent.session_events:
                    agent._post("_user_speech_started", self.identity, time.time() - self.loud_run * _FRAME_S)
            return
        self.speech_frames += 1
        self.quiet_frames = 0 if loud else self.quiet_frames + 1
        if self.quiet_frames * _FRAME_S >= agent.end_silence_s:
            seconds = (self.speech_frames - self.quiet_frames) * _FRAME_S
            self.speech_frames = self.quiet_frames = self.loud_run = 0
            agent._post("on_utterance", seconds, self.identity)


class _AgentPeer(Participant):
    """The agent as the room sees it (loop side)."""

    kind = models.ParticipantInfo.Kind.AGENT

    def __init__(self, agent: ScriptedAgent, room: Room) -> None:
        # as a dispatched LiveKit Agents job: the agent grant, may set its own attributes
        super().__init__(room, agent.identity, name=agent.name,
                         attributes={lk.ATTR_AGENT_NAME: ""} if agent.speaks_livekit else {},
                         permission=models.ParticipantPermission(
                             can_subscribe=True, can_publish=True, can_publish_data=True,
                             can_update_metadata=True, agent=True))
        self.agent = agent
        self.source = PacedSource(on_busy=self._on_speaking)
        self.listeners: dict[str, tuple[PublishedTrack, _Listener]] = {}
        self.known: set[str] = set()
        self.track_sid = ""
        self.agent_state = ""  # lk.agent.state as published
        topics = [lk.TOPIC_RPC_REQUEST, lk.TOPIC_RPC_RESPONSE] + ([lk.TOPIC_CHAT] if agent.speaks_livekit else [])
        self._streams = lk.StreamAssembler(topics)
        self._tasks: set[asyncio.Task[None]] = set()
        self._calls: dict[str, _PendingCall] = {}  # RPCs made, by request id
        self._spoken: list[_SpokenItem] = []  # lines being spoken, for the session stream
        self._busy_since = 0.0

    # -- LiveKit Agents' native protocol (loop side) --------------------------------
    def set_state(self, state: str) -> None:
        """Publish ``lk.agent.state`` (only on change), as LiveKit Agents does,
        and with session events an ``agent_state_changed`` to everyone."""
        if state == self.agent_state or not self.agent.speaks_livekit:
            return
        old, self.agent_state = self.agent_state, state
        self.room.update_metadata(self, rtc.UpdateParticipantMetadata(attributes={lk.ATTR_AGENT_STATE: state}))
        if self.agent.session_events:
            self.send_session(lk.session_message(lk.agent_state_changed(old or "initializing", state)), None)

    def _on_speaking(self, busy: bool) -> None:
        if busy:
            self._busy_since = time.time()
        elif self.agent.session_events:
            self._report_spoken()
        self.set_state("speaking" if busy else "listening")

    def _report_spoken(self) -> None:
        """The audio ran out: each line spoken since it started becomes a
        ``conversation_item_added``, before the state goes back to listening
        (the order LiveKit Agents sends them in)."""
        spoken, self._spoken = self._spoken, []
        start, now = self._busy_since or time.time(), time.time()
        for i, item in enumerate(spoken):
            stop = now if i == len(spoken) - 1 else min(now, start + item.seconds)
            metrics = lk.metrics_report(started_speaking_at=start, stopped_speaking_at=stop, **item.metrics)
            event = lk.chat_message(item.text, role="assistant", created_at=item.created_at, metrics=metrics)
            self.send_session(lk.session_message(event), item.to)
            start = stop

    # -- the agent session stream and RPC (loop side) ---------------------------------
    def send_session(self, message: AgentSessionMessage, to: Sequence[str] | None) -> None:
        """Send one session message as its own byte stream, now, in the format
        LiveKit SDKs pick for its recipients (everyone when ``to`` is None)."""
        self.send_packets(lk.session_stream(message, fmt=self.stream_format(to), destinations=to or ()))

    def stream_format(self, to: Sequence[str] | None) -> lk.StreamFormat:
        people = [self.room.participants.get(i) for i in to] if to else self.room.others(self)
        return lk.stream_format((p.client_protocol, p.capabilities) if p is not None else (0, []) for p in people)

    def send_packets(self, packets: list[models.DataPacket]) -> None:
        for packet in packets:
            self.room.route_data(self, packet)

    async def perform_rpc(self, identity: str, method: str, payload: str, response_timeout: float,
                          max_round_trip_latency: float, version: int | None) -> str:
        """Call ``method`` on ``identity`` as the Rust SDK's ``perform_rpc`` does:
        v2 (a stream) to a participant at client protocol 1 or above, else v1;
        CONNECTION_TIMEOUT without an ack within ``max_round_trip_latency``,
        RESPONSE_TIMEOUT without a response ``response_timeout`` after the ack.
        Raises ``livekit.rtc.RpcError``."""
        target = self.room.participants.get(identity)
        if version is None:
            protocol = target.client_protocol if target is not None else 0
            version = 2 if protocol >= lk.CLIENT_PROTOCOL_DATA_STREAM_RPC else 1
        if version == 1 and len(payload.encode()) > lk.MAX_RPC_V1_PAYLOAD_BYTES:
            raise rpc_error(1402)
        request_id = str(uuid.uuid4())
        timeout_ms = lk.rpc_effective_timeout_ms(response_timeout, max_round_trip_latency)
        call = _PendingCall(asyncio.Event(), asyncio.get_running_loop().create_future())
        self._calls[request_id] = call
        try:
            if version == 1:
                self.send_packets([lk.rpc_request(request_id, method, payload, timeout_ms, destination=identity)])
            else:
                self.send_packets(lk.rpc_request_stream(request_id, method, payload, timeout_ms, destination=identity,
                                                        fmt=self.stream_format([identity]), version=version))
            try:
                await within(call.ack.wait(), max_round_trip_latency)
            except asyncio.TimeoutError:
                raise rpc_error(1501) from None
            try:
                result, error = await within(asyncio.shield(call.response), response_timeout)
            except asyncio.TimeoutError:
                raise rpc_error(1502) from None
        finally:
            self._calls.pop(request_id, None)
        if error is not None:
            raise rpc_error(*error)
        return result

    def _on_rpc_packet(self, packet: models.DataPacket) -> None:
        which = packet.WhichOneof("value")
        if which == "rpc_ack":
            call = self._calls.get(packet.rpc_ack.request_id)
            if call is not None:
                call.ack.set()
        elif which == "rpc_response":
            response = packet.rpc_response
            error = response.error if response.HasField("error") else None
            self._resolve(response.request_id, response.payload,
                          (error.code, error.message, error.data) if error is not None else None)
        elif which == "rpc_request":  # nobody registers methods on a scripted agent
            request = packet.rpc_request
            self._refuse_rpc(request.id, packet.participant_identity, request.version, 1)

    def _refuse_rpc(self, request_id: str, caller: str, version: int, expected: int) -> None:
        """Ack a request and answer it as the SDK does for a method nobody
        registered (or a version it does not speak)."""
        code = 1400 if version == expected else 1404
        message = "Method not supported at destination" if code == 1400 else "Unsupported RPC version"
        self.send_packets([lk.rpc_ack(request_id, destination=caller),
                           lk.rpc_response(request_id, destination=caller, error=(code, message, ""))])

    def _resolve(self, request_id: str, payload: str, error: tuple[int, str, str] | None) -> None:
        call = self._calls.get(request_id)
        if call is not None and not call.response.done():
            call.response.set_result((payload, error))

    def _fail_calls(self) -> None:
        """The agent is gone: its calls end as the SDK's do when the room closes."""
        for call in self._calls.values():
            if not call.response.done():
                call.response.set_result(("", (1503, "Recipient disconnected", "")))
            call.ack.set()

    def track_of(self, identity: str) -> str:
        """The sid of the track of ``identity`` the agent listens to ("" if none)."""
        return next((track.sid for track, _ in self.listeners.values() if track.owner.identity == identity), "")

    def wants_legacy(self, identity: str) -> bool:
        """LiveKit Agents also sends legacy transcriptions to older clients."""
        p = self.room.participants.get(identity)
        return p is not None and p.client_protocol < lk.CLIENT_PROTOCOL_TRANSCRIPTION_STREAMS

    def send_paced(self, schedule: list[tuple[float, models.DataPacket]], to: list[str]) -> None:
        """Send each packet ``seconds`` from now, in order, to ``to``."""
        async def run() -> None:
            start = asyncio.get_running_loop().time()
            for at, packet in schedule:
                delay = start + at - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
                del packet.destination_identities[:]
                packet.destination_identities.extend(to)
                self.room.route_data(self, packet)
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_participants_changed(self, infos: list[models.ParticipantInfo]) -> None:
        for info in infos:
            if info.identity == self.identity:
                continue  # the echo of our own changes
            if info.state == models.ParticipantInfo.State.DISCONNECTED:
                if info.identity in self.known:
                    self.known.discard(info.identity)
                    self.agent._post("on_client_left", info.identity)
                continue
            mics = [t for t in info.tracks if t.type == models.TrackType.AUDIO]
            with self.agent._changed:
                if mics:
                    self.agent._muted[info.identity] = all(t.muted for t in mics)
                else:
                    self.agent._muted.pop(info.identity, None)
                self.agent._changed.notify_all()
            if info.identity not in self.known and info.kind != models.ParticipantInfo.Kind.AGENT:
                self.known.add(info.identity)
                self.agent._post("on_client_joined", info.identity)

    def on_track_available(self, track: PublishedTrack) -> None:
        listener = _Listener(self.agent, track.owner.identity)
        self.listeners[track.sid] = (track, listener)
        track.fanout.add_sink(listener)
        self.room.subscribed(track)

    def on_track_gone(self, track: PublishedTrack) -> None:
        entry = self.listeners.pop(track.sid, None)
        if entry is not None:
            track.fanout.remove_sink(entry[1])

    def on_data(self, packet: models.DataPacket) -> None:
        which = packet.WhichOneof("value")
        if which in ("rpc_ack", "rpc_response", "rpc_request"):
            self._on_rpc_packet(packet)
            return
        if not packet.HasField("user"):
            done = self._streams.feed(packet)
            if done is None:
                return
            sender = done.sender or packet.participant_identity
            if done.topic == lk.TOPIC_CHAT:
                self.agent._chat_received(done.text(), sender)
            elif done.topic == lk.TOPIC_RPC_RESPONSE:
                self._resolve(done.attributes.get(lk.ATTR_RPC_REQUEST_ID, ""), done.text(), None)
            elif done.topic == lk.TOPIC_RPC_REQUEST:
                version = done.attributes.get(lk.ATTR_RPC_VERSION, "")
                self._refuse_rpc(done.attributes.get(lk.ATTR_RPC_REQUEST_ID, ""), sender,
                                 int(version) if version.isdigit() else 0, 2)
            return
        raw = bytes(packet.user.payload)
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            parsed = None
        received = ReceivedPacket(raw=raw, data=parsed if isinstance(parsed, dict) else {},
                                  sender=packet.participant_identity, topic=packet.user.topic)
        self.agent._record(received)

    async def close(self, reason: int, *, send_leave: bool = True) -> None:
        for track, listener in self.listeners.values():
            track.fanout.remove_sink(listener)
        self.listeners.clear()
        for task in list(self._tasks):
            task.cancel()
        self._fail_calls()

    async def enter(self) -> None:
        if self.agent.speaks_livekit:
            self.agent_state = "initializing"
            self.attributes[lk.ATTR_AGENT_STATE] = self.agent_state
        await self.room.join(self)
        self.room.announce(self)
        self.on_participants_changed([p.info() for p in self.room.others(self)])
        track = PublishedTrack(self, Fanout(new_sid("TR"), self.source.next_frame),
                               name="agent_voice", cid="agent")
        self.track_sid = track.sid
        self.room.publish(track)
        self.set_state("listening")


class ScriptedAgent:
    """A scripted Speko agent in a room of a :class:`LocalServer`.

    Made by :meth:`LocalServer.add_agent`. It speaks two protocols, chosen with
    ``protocol``: LiveKit Agents' native one, as a real Speko worker does
    (``lk.agent.state``; transcripts as ``lk.transcription`` text streams, the
    user's published on the user's behalf, with legacy ``Transcription`` packets
    for clients below client protocol 3; typed turns read from ``lk.chat``), and
    the JSON data packets of the Speko v0.0.3 client (``agent_message``,
    ``transcript``, ``user_message_echo``). Default behaviour, each step a method
    to override in a subclass (hooks run on the agent's behaviour thread):

    - :meth:`on_client_joined`: once the client can hear it, wait up to
      ``greet_wait`` seconds for the client's microphone (a Speko client sends
      its overrides before publishing it), then :meth:`greet`;
    - :meth:`greet`: speak the greeting (the overrides' ``firstMessage`` if
      given): a tone, its transcript and an ``agent_message``;
    - :meth:`on_chat` (native): answer a typed turn, ``You said: <text>.``;
    - :meth:`on_user_message` (JSON): reply ``user_message_echo`` and an
      ``agent_message`` quoting the text;
    - :meth:`on_utterance`: after each utterance heard in a client's audio
      (energy up, then ``end_silence_s`` of quiet), the user's transcript partial
      then final describing its duration (``[speech, 1.20 s]``), then a reply;
    - overrides and ``contextual_update`` packets are recorded.

    It can call the client's tools (:meth:`call_tool`, LiveKit RPC as the SDK
    makes it) and send LiveKit Agents' session stream by hand
    (:meth:`send_session_event`, :meth:`send_session_message`,
    :meth:`send_raw_stream`). With ``session_events`` it sends that stream on
    its own as the real worker does: for each client that joins, the
    ``agent_handoff`` item and its state; ``agent_state_changed`` with every
    ``lk.agent.state`` change (to everyone); for the user's turns
    ``user_state_changed`` (speaking, then listening), for spoken ones
    ``user_input_transcribed``, and the user's ``conversation_item_added``;
    for each line it speaks, once spoken, an assistant
    ``conversation_item_added`` with its metrics (speaking times, the scripted
    LLM's and TTS's latencies, and ``e2e_latency`` after a spoken turn).

    Args (besides those :meth:`LocalServer.add_agent` fills in):
        protocol: ``"livekit"`` (default: what a real Speko worker speaks),
            ``"json"`` (the v0.0.3 packets only) or ``"both"`` (a client that
            reads both then hears every line twice).
        greeting: the greeting without overrides; ``None`` disables greeting.
        greet_wait: seconds to wait for the client's microphone before greeting.
        speech_threshold: RMS (0..1 of full scale) that counts as speech.
        end_silence_s: quiet seconds that end an utterance.
        keep_audio_s: how much of each client's audio :meth:`received_audio`
            keeps (the oldest is dropped beyond it).
        session_events: send LiveKit Agents' ``lk.agent.session`` stream as
            above (default false: none, as before). Needs the native protocol.
    """

    def __init__(self, server: ServerHandle, room: str, identity: str = "agent", *,
                 name: str = "Speko test agent",
                 greeting: str | None = "Hello! I'm the local Speko test agent.",
                 greet_wait: float = 1.0, greeting_tone_hz: float = 440.0,
                 greeting_tone_s: float = 0.6, speech_threshold: float = 0.02,
                 end_silence_s: float = 0.4, keep_audio_s: float = 600.0,
                 protocol: str = "livekit", session_events: bool = False) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        if session_events and protocol == "json":
            raise ValueError("session_events needs LiveKit Agents' native protocol (protocol 'livekit' or 'both')")
        self.protocol = protocol
        self.session_events = session_events
        self.server = server
        self.room = room
        self.identity = identity
        self.name = name
        self.greeting = greeting
        self.greet_wait = greet_wait
        self.greeting_tone_hz = greeting_tone_hz
        self.greeting_tone_s = greeting_tone_s
        self.speech_threshold = speech_threshold
        self.end_silence_s = end_silence_s
        self.overrides: dict[str, Any] | None = None
        self.contextual_updates: list[str] = []
        self.utterances: list[float] = []
        self.greeted: list[str] = []
        self.chats: list[tuple[str, str]] = []  # (sender, text) of lk.chat turns
        self.tool_calls: list[ToolCall] = []  # every call_tool, once it returned or failed
        self._lock = threading.RLock()  # wait_for conditions may call the getters
        self._changed = threading.Condition(self._lock)
        self._packets: list[ReceivedPacket] = []
        self._audio: dict[str, collections.deque[np.ndarray]] = {}
        self._max_chunks = max(1, int(keep_audio_s / _FRAME_S))
        self._muted: dict[str, bool] = {}
        self._events: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._peer: _AgentPeer | None = None
        self._thread = threading.Thread(target=self._behaviour_loop,
                                        name=f"speko-agent-{identity}", daemon=True)

    # -- life cycle -------------------------------------------------------------
    def _join(self) -> None:
        async def enter() -> None:
            core = self.server._require()[1]
            room = core.room(self.room, create=True)
            assert room is not None
            self._peer = _AgentPeer(self, room)
            await self._peer.enter()
        self._thread.start()
        self.server._call(enter())

    def leave(self) -> None:
        """Leave the room (clients see the participant go) and stop."""
        peer = self._peer
        if peer is not None:
            async def go() -> None:
                await peer.room.leave(peer, models.DisconnectReason.CLIENT_INITIATED)
                peer._fail_calls()
            self.server._call(go())
        self._shutdown()

    def _shutdown(self) -> None:
        self._events.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _post(self, hook: str, *args: Any) -> None:
        self._events.put((hook, args))

    def _behaviour_loop(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            hook, args = event
            try:
                getattr(self, hook)(*args)
            except Exception:
                log.exception("agent %s: %s failed", self.identity, hook)

    def _record(self, packet: ReceivedPacket) -> None:
        """On the loop: keep the packet, wake waiters, dispatch the behaviour."""
        with self._changed:
            self._packets.append(packet)
            if packet.type == "overrides" and isinstance(packet.data.get("overrides"), dict):
                self.overrides = packet.data["overrides"]
            self._changed.notify_all()
        self._post("on_packet", packet)

    # -- what the agent heard -------------------------------------------------------
    def packets(self) -> list[ReceivedPacket]:
        """Every data packet clients sent to this agent, in arrival order."""
        with self._lock:
            return list(self._packets)

    def wait_for_packet(self, predicate: Callable[[ReceivedPacket], bool] | str,
                        timeout: float = 10.0) -> ReceivedPacket:
        """Block until a packet (already received or arriving) matches ``predicate``
        (a callable, or a ``type`` string). Raises ``TimeoutError``."""
        match = predicate if callable(predicate) else (lambda p: p.type == predicate)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for packet in self._packets[seen:]:
                    if match(packet):
                        return packet
                seen = len(self._packets)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    types = [p.type for p in self._packets]
                    raise TimeoutError(f"no matching packet within {timeout} s (got types {types})")
                self._changed.wait(remaining)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``condition()`` is true; it is re-checked whenever the agent
        records something. Raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        # The condition runs outside the lock: it may ask the server's loop
        # (ready_clients, received_audio), which records under that lock.
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._changed:
                self._changed.wait(min(remaining, 0.05))
        else:
            return
        raise TimeoutError(f"condition not met within {timeout} s; room: {self.describe()}")

    def describe(self) -> dict[str, Any]:
        """The room as the agent sees it, for diagnostics: every participant with
        its tracks (sid, muted, frames forwarded so far) and what the agent heard."""
        peer = self._peer
        if peer is None:
            return {}

        async def snapshot() -> dict[str, Any]:
            return {p.identity: [(t.sid, t.muted, t.fanout.frames) for t in p.tracks.values()]
                    for p in peer.room.participants.values()}
        try:
            room = self.server._call(snapshot(), timeout=2)
        except (RuntimeError, TimeoutError) as exc:
            room = repr(exc)
        with self._lock:
            heard = {identity: sum(len(c) for c in chunks) / SAMPLE_RATE for identity, chunks in self._audio.items()}
        return {"participants": room, "heard_s": heard, "listening_to": list(peer.listeners)}

    def received_audio(self, identity: str | None = None) -> np.ndarray:
        """The decoded microphone audio of ``identity`` (default: the first client
        heard) as mono int16 at 48 kHz, from when the agent first heard it."""
        with self._lock:
            if identity is None:
                identity = next(iter(self._audio), None)
            chunks = list(self._audio.get(identity, ())) if identity is not None else []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def clear_audio(self) -> None:
        with self._lock:
            self._audio.clear()

    @property
    def client_muted(self) -> bool | None:
        """Whether the client's microphone track is muted (the only client, or the
        first one seen); ``None`` before a client published one."""
        with self._lock:
            return next(iter(self._muted.values()), None)

    def is_muted(self, identity: str) -> bool | None:
        with self._lock:
            return self._muted.get(identity)

    # -- speaking and sending ----------------------------------------------------------
    def _peer_or_raise(self) -> _AgentPeer:
        if self._peer is None:
            raise RuntimeError("the agent is not in a room")
        return self._peer

    def say(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, *, wait: bool = False,
            timeout: float | None = None) -> None:
        """Speak ``samples`` (mono int16, or float in -1..1) after anything already
        queued, paced in real time. With ``wait`` block until it has been sent."""
        pcm = load_pcm16(samples, sample_rate)
        peer = self._peer_or_raise()
        self.server._require()[0].call_soon(peer.source.enqueue, pcm)
        if wait:
            self.wait_until_quiet(timeout if timeout is not None else len(pcm) / SAMPLE_RATE + 5.0)

    def set_clock_ppm(self, ppm: float) -> None:
        """Send the agent's audio as if its clock ran ``ppm`` parts per
        million fast (negative: slow), from its next frame on."""
        peer = self._peer_or_raise()
        self.server._require()[0].call_soon(peer.source.set_clock_ppm, float(ppm))

    def say_tone(self, freq_hz: float, seconds: float, amplitude: float = 0.3, *,
                 wait: bool = False) -> None:
        """Speak a sine tone of ``freq_hz`` for ``seconds`` (amplitude 0..1)."""
        self.say(tone(freq_hz, seconds, amplitude), wait=wait)

    def wait_until_quiet(self, timeout: float = 30.0) -> None:
        """Block until all queued speech has been sent. Raises ``TimeoutError``."""
        self.server._call(self._peer_or_raise().source.wait_idle(), timeout=timeout)

    def send(self, message: dict[str, Any], *, to: list[str] | None = None) -> None:
        """Send ``message`` as JSON in a reliable data packet to the room's clients
        (or the identities in ``to``)."""
        self.send_raw(json.dumps(message).encode("utf-8"), to=to)

    def send_raw(self, payload: bytes, *, to: list[str] | None = None, topic: str = "",
                 reliable: bool = True) -> None:
        """Send arbitrary bytes as a user data packet (for malformed-input tests)."""
        self.flood(1, payload, to=to, topic=topic, reliable=reliable)

    def flood(self, count: int, payload: bytes = b'{"type":"flood"}', *, to: list[str] | None = None,
              topic: str = "", reliable: bool = True) -> None:
        """Send ``payload`` ``count`` times back to back. The server's loop is
        let go every 100 packets, so its media (the agent's audio among it)
        goes on meanwhile, as in an SFU, where data and media do not wait for
        each other."""
        peer = self._peer_or_raise()
        kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY

        async def go() -> None:
            for i in range(count):
                packet = models.DataPacket(kind=kind, destination_identities=to or [],
                                           user=models.UserPacket(payload=payload, topic=topic))
                peer.room.route_data(peer, packet)
                if i % 100 == 99:
                    await asyncio.sleep(0)
        self.server._call(go())

    def kick(self, reason: int | str = "PARTICIPANT_REMOVED", identity: str | None = None) -> int:
        """End the clients' sessions (or ``identity``'s) with a LiveKit leave carrying
        ``reason`` (a ``DisconnectReason`` name such as ``"ROOM_DELETED"`` or its
        value). Returns how many clients were removed."""
        return self.server.remove_participant(self.room, identity, reason)

    def ready_clients(self) -> list[str]:
        """Identities of clients that can hear the agent and receive its packets now."""
        async def ready() -> list[str]:
            room = self._peer_or_raise().room
            return [p.identity for p in room.participants.values()
                    if isinstance(p, RemoteClient) and p.is_ready]
        return self.server._call(ready())  # type: ignore[no-any-return]

    def _client_ready(self, identity: str, timeout: float) -> bool:
        async def ready() -> bool:
            room = self._peer_or_raise().room
            client = room.participants.get(identity)
            if isinstance(client, RemoteClient):
                return await client.wait_ready(timeout)
            return False
        try:
            return bool(self.server._call(ready(), timeout=timeout + 1))
        except (TimeoutError, RuntimeError):
            return False

    # -- LiveKit Agents' native protocol ---------------------------------------------
    @property
    def speaks_livekit(self) -> bool:
        return self.protocol in ("both", "livekit")

    @property
    def speaks_json(self) -> bool:
        return self.protocol in ("both", "json")

    def set_state(self, state: str) -> None:
        """Publish ``state`` as the agent's ``lk.agent.state`` attribute (one of
        initializing, idle, listening, thinking, speaking). Speaking and
        listening also follow the agent's audio on their own."""
        if state not in lk.AGENT_STATES:
            raise ValueError(f"agent state must be one of {lk.AGENT_STATES}, not {state!r}")
        peer = self._peer_or_raise()
        self.server._require()[0].call_soon(peer.set_state, state)

    def speak(self, text: str, to: Sequence[str], *, tone_hz: float | None = None,
              metrics: dict[str, float] | None = None) -> None:
        """Say ``text``: a tone (0.3 s plus 0.12 s a word, of ``tone_hz``, default
        the greeting's) with its transcript paced over it word by word, as
        LiveKit Agents' synchronised transcript, and legacy transcriptions for
        older clients. Native protocol only (nothing when ``protocol="json"``).
        With session events, once spoken it is reported as an assistant chat
        message whose metrics are its speaking times plus ``metrics`` (default
        a TTS time to first byte)."""
        words = text.split() or [text]
        seconds = 0.3 + 0.12 * len(words)
        created_at = time.time()
        self.say_tone(tone_hz or self.greeting_tone_hz, seconds)
        if not self.speaks_livekit:
            return
        peer = self._peer_or_raise()
        segment = lk.new_id("SG")
        legacy_segment = lk.legacy_id(segment)
        targets = list(to)
        item = _SpokenItem(text, targets, seconds, created_at,
                           dict(metrics) if metrics is not None else {"tts_node_ttfb": _TTS_TTFB_S})

        async def schedule() -> None:
            if self.session_events:
                peer._spoken.append(item)
            packets = lk.agent_transcript(words, segment_id=segment, track_sid=peer.track_sid)
            step = seconds / (len(words) + 1)
            timed = [(0.0, packets[0])] + [(step * (i + 1), p) for i, p in enumerate(packets[1:-1])]
            timed.append((seconds, packets[-1]))
            for who in targets:
                if peer.wants_legacy(who):
                    timed += [(step * (i + 1), lk.legacy_transcription(
                        participant_identity=self.identity, track_sid=peer.track_sid, segment_id=legacy_segment,
                        text=" ".join(words[:i + 1]), final=False)) for i in range(len(words))]
                    timed.append((seconds, lk.legacy_transcription(
                        participant_identity=self.identity, track_sid=peer.track_sid, segment_id=legacy_segment,
                        text=" ".join(words), final=True)))
                    break  # a legacy packet goes to all of ``to``
            timed.sort(key=lambda entry: entry[0])
            peer.send_paced(timed, targets)
        self.server._call(schedule())

    def transcribe_user(self, identity: str, text: str, *, final: bool, segment_id: str) -> None:
        """Publish one update of ``identity``'s transcript on their behalf: a
        ``lk.transcription`` stream (and a legacy packet for older clients)."""
        if not self.speaks_livekit:
            return
        peer = self._peer_or_raise()

        async def send() -> None:
            track = peer.track_of(identity)
            packets = lk.user_transcript(text, user_identity=identity, segment_id=segment_id,
                                         track_sid=track, final=final)
            if peer.wants_legacy(identity):
                packets.append(lk.legacy_transcription(participant_identity=identity, track_sid=track,
                                                       segment_id=lk.legacy_id(segment_id), text=text,
                                                       final=final))
            peer.send_paced([(0.0, p) for p in packets], [identity])
        self.server._call(send())

    # -- client tools (LiveKit RPC) and the agent session stream ------------------------
    def call_tool(self, identity: str, method: str, payload: str, response_timeout: float = 10.0, *,
                  max_round_trip_latency: float = lk.RPC_MAX_ROUND_TRIP_S, version: int | None = None) -> str:
        """Call the client tool ``method`` of ``identity`` (a LiveKit RPC method
        it registered) with ``payload``, as a LiveKit Agents function tool does
        with ``perform_rpc``, and block until it answers. Returns its result.

        On the wire as the Rust SDK makes it: to a client at client protocol 1
        or above (every current SDK) a text stream on ``lk.rpc_request``, else
        an ``RpcRequest`` packet (``version`` 1 or 2 forces one); the callee is
        told ``response_timeout - max_round_trip_latency`` (1 s at least) as its
        deadline. Recorded in :attr:`tool_calls`. Any thread but the server's.

        Raises ``livekit.rtc.RpcError``: the tool's own error (code, message,
        data), UNSUPPORTED_METHOD (1400) when the client has no such method,
        CONNECTION_TIMEOUT (1501) when no ack came within
        ``max_round_trip_latency`` seconds (nobody of that identity in the
        room), RESPONSE_TIMEOUT (1502) when no response came ``response_timeout``
        seconds after the ack, RECIPIENT_DISCONNECTED (1503) when the agent
        left meanwhile, REQUEST_PAYLOAD_TOO_LARGE (1402) for a v1 payload over
        15 KiB."""
        peer = self._peer_or_raise()
        try:
            result: str = self.server._call(
                peer.perform_rpc(identity, method, payload, response_timeout, max_round_trip_latency, version),
                timeout=max_round_trip_latency + response_timeout + 5)
        except Exception as exc:
            from livekit.rtc import RpcError

            if isinstance(exc, RpcError):
                self._record_tool_call(ToolCall(method, payload, exc))
            raise
        self._record_tool_call(ToolCall(method, payload, result))
        return result

    def _record_tool_call(self, call: ToolCall) -> None:
        with self._changed:
            self.tool_calls.append(call)
            self._changed.notify_all()

    def send_session_event(self, event: AgentSessionEvent, to: Sequence[str] | None = None) -> None:
        """Send ``event`` on LiveKit Agents' session stream (``lk.agent.session``)
        to ``to`` (default everyone), stamped with the time now unless it has
        one, as the worker's ``SessionHost`` does. Builders of events are in
        ``speko_sync.testing._lk_protocol`` (``agent_state_changed``,
        ``chat_message``...)."""
        self.send_session_message(lk.session_message(event), to)

    def send_session_message(self, message: AgentSessionMessage, to: Sequence[str] | None = None) -> None:
        """Send one ``AgentSessionMessage`` as its own byte stream on
        ``lk.agent.session``, as ``RoomSessionTransport.send_message`` does
        (inline in the header for clients at client protocol 2, else header,
        chunks and trailer). Messages sent one after another arrive in order."""
        peer = self._peer_or_raise()

        async def send() -> None:
            peer.send_session(message, list(to) if to is not None else None)
        self.server._call(send())

    def send_raw_stream(self, topic: str, data: bytes, *, to: Sequence[str] | None = None,
                        inline: bool | None = None, compress: bool = False, name: str = "raw") -> None:
        """Send ``data`` as a byte stream on ``topic`` whatever it holds (for
        malformed-stream tests): inline in the header or chunked (default: as
        the SDK would for the recipients), deflated if ``compress``."""
        peer = self._peer_or_raise()

        async def send() -> None:
            targets = list(to) if to is not None else None
            fmt = lk.StreamFormat(inline=peer.stream_format(targets).inline if inline is None else inline,
                                  compress=compress)
            peer.send_packets(lk.byte_stream(data, topic=topic, name=name, fmt=fmt, destinations=targets or ()))
        self.server._call(send())

    def _session(self, event: AgentSessionEvent, to: Sequence[str] | None, created_at: float | None = None) -> None:
        """With session events on: send ``event`` (on the loop, in order)."""
        if not self.session_events:
            return
        peer = self._peer_or_raise()
        message = lk.session_message(event, created_at)
        self.server._require()[0].call_soon(peer.send_session, message, list(to) if to is not None else None)

    def _chat_received(self, text: str, sender: str) -> None:
        """On the loop: a typed turn arrived on ``lk.chat``."""
        with self._changed:
            self.chats.append((sender, text))
            self._changed.notify_all()
        self._post("on_chat", text, sender)

    # -- behaviour (override in subclasses) ---------------------------------------
    def on_client_joined(self, identity: str) -> None:
        ready = self._client_ready(identity, 15.0)
        if ready and self.session_events:  # the session starting, as the joining client sees it
            self._session(lk.agent_handoff(), [identity])
            peer = self._peer_or_raise()
            self._session(lk.agent_state_changed("initializing", peer.agent_state or "listening"), [identity])
        if self.greeting is None or not ready:
            return
        try:  # a Speko client sends its overrides, then publishes its microphone
            self.wait_for(lambda: self.is_muted(identity) is not None, self.greet_wait)
        except TimeoutError:
            pass
        self.greet(identity)

    def greet(self, identity: str) -> None:
        agent_overrides = (self.overrides or {}).get("agent") or {}
        text = agent_overrides.get("firstMessage") or self.greeting
        with self._changed:
            self.greeted.append(identity)
            self._changed.notify_all()
        if self.speaks_json:
            self.send({"type": "agent_message", "text": text}, to=[identity])
        if self.speaks_livekit:
            self.speak(str(text), [identity])
        else:
            self.say_tone(self.greeting_tone_hz, self.greeting_tone_s)

    def on_client_left(self, identity: str) -> None:
        pass

    def on_packet(self, packet: ReceivedPacket) -> None:
        if packet.type == "user_message":
            self.on_user_message(str(packet.data.get("text", "")), packet.sender)
        elif packet.type == "contextual_update":
            self.on_contextual_update(str(packet.data.get("text", "")), packet.sender)
        elif packet.type == "overrides":
            self.on_overrides(packet.data.get("overrides") or {}, packet.sender)

    def on_overrides(self, overrides: dict[str, Any], sender: str) -> None:
        pass  # already remembered in self.overrides

    def on_chat(self, text: str, sender: str) -> None:
        """A typed turn (``lk.chat``), answered as LiveKit Agents answers one."""
        self._report_user_turn(text, sender)
        self.set_state("thinking")
        self.speak(f"You said: {text}.", [sender], metrics=self._reply_metrics())

    def _report_user_turn(self, text: str, sender: str, *, spoken: tuple[float, float] | None = None) -> None:
        """With session events: the user's turn on the session stream as LiveKit
        Agents reports one. ``spoken`` is (started, stopped) in epoch seconds for
        a spoken turn; a typed one passes through speaking at once."""
        if spoken is None:
            self._session(lk.user_state_changed("listening", "speaking"), [sender])
            self._session(lk.user_state_changed("speaking", "listening"), [sender])
            self._session(lk.chat_message(text, role="user"), [sender])
            return
        started, stopped = spoken
        now = time.time()
        self._session(lk.user_state_changed("speaking", "listening"), [sender], created_at=stopped)
        self._session(lk.user_input_transcribed(text, final=True), [sender])
        metrics = lk.metrics_report(started_speaking_at=started, stopped_speaking_at=stopped,
                                    transcription_delay=now - stopped, end_of_turn_delay=now - stopped,
                                    on_user_turn_completed_delay=0.0)
        self._session(lk.chat_message(text, role="user", metrics=metrics, transcript_confidence=0.0), [sender])

    def _reply_metrics(self, user_stopped_at: float | None = None) -> dict[str, float]:
        """The metrics of an answer: the scripted LLM's and TTS's latencies and,
        after a spoken turn, the time from the end of the user's speech to the
        answer's audio (``e2e_latency``, as measured here)."""
        metrics = {"llm_node_ttft": _LLM_TTFT_S, "llm_node_ttfs": _LLM_TTFS_S, "tts_node_ttfb": _TTS_TTFB_S}
        if user_stopped_at is not None:
            metrics["e2e_latency"] = time.time() - user_stopped_at
        return metrics

    def _user_speech_started(self, identity: str, at: float) -> None:
        self._session(lk.user_state_changed("listening", "speaking"), [identity], created_at=at)

    def on_user_message(self, text: str, sender: str) -> None:
        self.send({"type": "user_message_echo", "text": text}, to=[sender])
        self.send({"type": "agent_message", "text": f'You said: "{text}"'}, to=[sender])

    def on_contextual_update(self, text: str, sender: str) -> None:
        with self._changed:
            self.contextual_updates.append(text)
            self._changed.notify_all()

    def on_utterance(self, seconds: float, sender: str) -> None:
        with self._changed:
            self.utterances.append(seconds)
            self._changed.notify_all()
        description = f"[speech, {seconds:.2f} s]"
        reply = f"I heard {seconds:.1f} seconds of speech."
        stopped = time.time() - self.end_silence_s
        if self.speaks_livekit:
            segment = lk.new_id("SG")
            self.transcribe_user(sender, description, final=False, segment_id=segment)
            self.transcribe_user(sender, description, final=True, segment_id=segment)
            self._report_user_turn(description, sender, spoken=(stopped - seconds, stopped))
        if self.speaks_json:
            self.send({"type": "transcript", "source": "user", "text": description, "isFinal": False}, to=[sender])
            self.send({"type": "transcript", "source": "user", "text": description, "isFinal": True}, to=[sender])
            self.send({"type": "agent_message", "text": reply}, to=[sender])
        if self.speaks_livekit:
            self.set_state("thinking")
            self.speak(reply, [sender], metrics=self._reply_metrics(stopped))
