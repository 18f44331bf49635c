"""LiveKit Agents' session stream: what the agent says about itself.

A LiveKit Agents worker (1.5 and later) sends byte streams on topic
``lk.agent.session`` to every participant, one serialized ``AgentSessionMessage``
(livekit-protocol's ``agent_pb.agent_session``) per stream, in order.
:func:`decode` turns one into a typed event, pure and I/O-free; the events
the library does not surface (requests, responses, console audio, predictions,
debug) and kinds it does not know decode to ``None`` and are counted.
:class:`SessionStream` reads the streams of agent participants on the room
loop, one at a time, so events keep their order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from livekit import rtc
from livekit.protocol.agent_pb import agent_session as pb

from ._frames import cancel_all
from .events import (
    AgentState,
    AgentToolCall,
    AgentToolsExecuted,
    Interruption,
    MessageSource,
    ModelUsage,
    Turn,
    TurnMetrics,
    UserState,
)

log = logging.getLogger("speko_sync")

TOPIC_SESSION = "lk.agent.session"
#: A session message longer than this is not read (a stream of events is a few hundred bytes).
MAX_MESSAGE = 256 * 1024

_AGENT_STATES = {
    pb.AS_INITIALIZING: AgentState.INITIALIZING, pb.AS_IDLE: AgentState.IDLE, pb.AS_LISTENING: AgentState.LISTENING,
    pb.AS_THINKING: AgentState.THINKING, pb.AS_SPEAKING: AgentState.SPEAKING,
}
_USER_STATES = {pb.US_SPEAKING: UserState.SPEAKING, pb.US_LISTENING: UserState.LISTENING, pb.US_AWAY: UserState.AWAY}
_ROLES = {pb.USER: MessageSource.USER, pb.ASSISTANT: MessageSource.AGENT}
_METRICS = ("transcription_delay", "end_of_turn_delay", "on_user_turn_completed_delay", "llm_node_ttft",
            "llm_node_ttfs", "llm_node_tps", "tts_node_ttfb", "e2e_latency")


class InvalidSessionMessage(ValueError):
    """The bytes are not an ``AgentSessionMessage``."""


def _seconds(timestamp: Any) -> float:
    return float(timestamp.seconds) + float(timestamp.nanos) / 1e9


def metrics_of(report: pb.MetricsReport) -> TurnMetrics:
    """The agent's ``MetricsReport`` as :class:`TurnMetrics` (absent fields ``None``)."""
    values: dict[str, float | None] = {name: getattr(report, name) if report.HasField(name) else None
                                       for name in _METRICS}
    for name in ("started_speaking_at", "stopped_speaking_at"):
        values[name] = _seconds(getattr(report, name)) if report.HasField(name) else None
    return TurnMetrics(**values)


def _turn(item: pb.ChatContext.ChatItem) -> Turn | None:
    if item.WhichOneof("item") != "message":
        return None  # function calls and outputs come as agent_tools; handoffs are not surfaced
    message = item.message
    source = _ROLES.get(message.role)
    if source is None:
        return None  # system and developer messages are the agent's own instructions
    text = " ".join(part.text for part in message.content if part.WhichOneof("payload") == "text" and part.text)
    metrics = metrics_of(message.metrics) if message.HasField("metrics") else None
    return Turn(source=source, text=text.strip(), interrupted=message.interrupted, metrics=metrics, id=message.id)


def _usage(usage: pb.AgentSessionUsage) -> tuple[ModelUsage, ...]:
    models = []
    for entry in usage.model_usage:
        kind = entry.WhichOneof("usage")
        if kind is None:
            continue
        part = getattr(entry, kind)
        values = {field.name: float(value) for field, value in part.ListFields()
                  if field.name not in ("provider", "model") and isinstance(value, (int, float))}
        models.append(ModelUsage(kind=kind, provider=part.provider, model=part.model, values=values))
    return tuple(models)


def decode(data: bytes) -> tuple[str, Any] | None:
    """One session message as ``(kind, value)``, or ``None`` for one not
    surfaced. Kinds: ``agent_state`` (:class:`AgentState`), ``user_state``
    (:class:`UserState`), ``turn`` (:class:`Turn`), ``agent_tools``
    (:class:`AgentToolsExecuted`), ``interruption`` (:class:`Interruption`),
    ``usage`` (a tuple of :class:`ModelUsage`), ``error`` (the agent's message,
    a str). Raises :class:`InvalidSessionMessage`."""
    message = pb.AgentSessionMessage()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:  # protobuf's C and Python parsers differ
        raise InvalidSessionMessage(f"not an AgentSessionMessage: {exc}") from None
    if message.WhichOneof("message") != "event":
        return None
    event = message.event
    which = event.WhichOneof("event")
    if which == "agent_state_changed":
        state = _AGENT_STATES.get(event.agent_state_changed.new_state)
        return ("agent_state", state) if state is not None else None
    if which == "user_state_changed":
        user = _USER_STATES.get(event.user_state_changed.new_state)
        return ("user_state", user) if user is not None else None
    if which == "conversation_item_added":
        turn = _turn(event.conversation_item_added.item)
        return ("turn", turn) if turn is not None else None
    if which == "function_tools_executed":
        executed = event.function_tools_executed
        outputs = {out.call_id: out for out in executed.function_call_outputs}
        calls = []
        for call in executed.function_calls:
            out = outputs.get(call.call_id)
            calls.append(AgentToolCall(name=call.name, arguments=call.arguments, call_id=call.call_id,
                                       output=out.output if out is not None else "",
                                       is_error=out.is_error if out is not None else False))
        return "agent_tools", AgentToolsExecuted(tuple(calls))
    if which == "overlapping_speech":
        overlap = event.overlapping_speech
        return "interruption", Interruption(is_interruption=overlap.is_interruption,
                                            detection_delay_s=overlap.detection_delay or None)
    if which == "agent_false_interruption":
        return "interruption", Interruption(is_interruption=False, false_alarm=True,
                                            resumed=event.agent_false_interruption.resumed)
    if which == "session_usage_updated":
        return "usage", _usage(event.session_usage_updated.usage)
    if which == "error":
        return "error", event.error.message or "the agent reported an error"
    return None


class SessionStream:
    """Reads ``lk.agent.session`` streams from agent participants, in the order
    they opened, and hands each decoded event to ``on_event(kind, value)``. Room
    loop only. Counts what it decoded (``messages``) and what it skipped
    (``ignored``: other senders, unknown kinds, malformed or oversized
    streams); nothing it reads can end the session."""

    def __init__(self, on_event: Callable[[str, Any], None], is_agent: Callable[[str], bool]) -> None:
        self._on_event = on_event
        self._is_agent = is_agent
        self._queue: asyncio.Queue[rtc.ByteStreamReader] | None = None
        self._task: asyncio.Task[None] | None = None
        self.messages = 0
        self.ignored = 0
        self.seen = False  # the agent sends its session stream

    def attach(self, room: rtc.Room) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._read_all())
        room.register_byte_stream_handler(TOPIC_SESSION, self._on_stream)

    def _on_stream(self, reader: rtc.ByteStreamReader, sender: str) -> None:
        queue = self._queue
        if queue is None or not self._is_agent(sender):
            self.ignored += 1
            log.debug("ignoring an %s stream from %r, not an agent", TOPIC_SESSION, sender)
            return
        queue.put_nowait(reader)

    async def _read_all(self) -> None:
        assert self._queue is not None
        while True:
            reader = await self._queue.get()
            data = await self._read(reader)
            if data is None:
                self.ignored += 1
                continue
            try:
                decoded = decode(data)
            except InvalidSessionMessage as exc:
                self.ignored += 1
                log.debug("ignoring an %s stream: %s", TOPIC_SESSION, exc)
                continue
            self.seen = True
            if decoded is None:
                self.ignored += 1
                continue
            self.messages += 1
            try:
                self._on_event(*decoded)
            except Exception:  # a bug of ours must not stop the stream
                log.exception("handling an agent session event failed")

    async def _read(self, reader: rtc.ByteStreamReader) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in reader:
                size += len(chunk)
                if size > MAX_MESSAGE:
                    log.debug("ignoring an %s stream over %d bytes", TOPIC_SESSION, MAX_MESSAGE)
                    return None
                chunks.append(chunk)
        except Exception as exc:  # the sender aborted it, or the room went
            log.debug("an %s stream ended early: %r", TOPIC_SESSION, exc)
            return None
        return b"".join(chunks)

    async def close(self) -> None:
        task = self._task
        if task is not None:
            await cancel_all([task])
