"""Typed, immutable values the library delivers: statuses, modes, messages,
disconnection details, and polled events."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SpekoClientError

__all__ = [
    "AgentState",
    "AgentToolCall",
    "AgentToolsExecuted",
    "ControlEvent",
    "ControlEventType",
    "ConversationStats",
    "DisconnectReason",
    "DisconnectionDetails",
    "Event",
    "EventBatch",
    "Interruption",
    "Message",
    "MessageSource",
    "Mode",
    "ModelUsage",
    "Reconnection",
    "Reply",
    "Status",
    "ToolCall",
    "ToolCallStatus",
    "Turn",
    "TurnMetrics",
    "UnconfirmedSend",
    "UserState",
]


class Status(str, enum.Enum):
    """Where a conversation is in its life: connecting -> connected ->
    disconnecting -> disconnected, with connected -> reconnecting -> connected
    while the link is lost and recovered.

    ``reconnecting`` means LiveKit lost the link to the server (its ping
    timeout passed, or the connection dropped) and is trying to resume the
    session or join it again. Meanwhile no audio flows and sends are refused
    with ``NOT_CONNECTED``; it ends in ``connected`` (``on_reconnect``) or,
    after the conversation's ``reconnect_timeout``, in ``disconnecting`` and
    ``disconnected`` with reason ``timeout``.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


class Mode(str, enum.Enum):
    """``speaking`` while the agent (any other participant) is an active
    speaker, else ``listening``."""

    SPEAKING = "speaking"
    LISTENING = "listening"


class AgentState(str, enum.Enum):
    """What the agent says it is doing (LiveKit Agents' ``lk.agent.state``)."""

    INITIALIZING = "initializing"
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class UserState(str, enum.Enum):
    """What the agent says the user is doing (LiveKit Agents' session stream,
    ``user_state_changed``): ``speaking``, ``listening`` (silent), or ``away``
    (silent for the agent's away timeout)."""

    SPEAKING = "speaking"
    LISTENING = "listening"
    AWAY = "away"


class ControlEventType(str, enum.Enum):
    """Speko server control events (data packets on topic ``speko.control``)."""

    TRANSFER_COMPLETED = "transfer_completed"
    TRANSFER_FAILED = "transfer_failed"
    CREDITS_EXHAUSTED = "credits_exhausted"


@dataclass(frozen=True)
class ControlEvent:
    """A control event from the Speko server: its ``type`` and the whole packet
    as sent (``data``, a JSON object)."""

    type: ControlEventType
    data: Mapping[str, Any]


class MessageSource(str, enum.Enum):
    USER = "user"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Message:
    """A transcript or chat line. ``is_final`` is false for partial transcripts
    that a later message of the same segment will replace.

    ``segment_id``: the transcript segment it updates (LiveKit Agents
    transcripts; ``None`` for the JSON packets): cumulative updates of a segment
    come as messages with the same id, and ids may recur in a later turn.
    ``started_at``: when the segment was first received, seconds since the epoch
    (``None`` when the transport gives no segment).
    """

    source: MessageSource
    text: str
    is_final: bool = True
    segment_id: str | None = None
    started_at: float | None = None


class DisconnectReason(str, enum.Enum):
    """Why a session ended, in Speko's vocabulary."""

    USER = "user"  # end_session() was called (LiveKit CLIENT_INITIATED)
    AGENT = "agent"  # the agent ended it (PARTICIPANT_REMOVED, ROOM_DELETED, ROOM_CLOSED)
    ERROR = "error"  # joining failed (JOIN_FAILURE)
    #: the link was lost and not recovered within ``reconnect_timeout``
    #: (message ``RECONNECT_TIMEOUT``; a dead server ends this way), or LiveKit
    #: gave up itself (``CONNECTION_TIMEOUT``)
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"  # anything else


@dataclass(frozen=True)
class Reconnection:
    """A lost link recovered (the ``reconnected`` signal, ``on_reconnect``).

    ``resumed``: true when LiveKit resumed the same session (same participant,
    subscriptions kept; reliable packets sent meanwhile are resent by LiveKit,
    once); false after a full rejoin: a new participant joined the room and
    the microphone was published again. ``outage_s``: seconds spent
    ``reconnecting``.

    ``unconfirmed`` (a full rejoin only; empty after a resume): the messages
    sent while the link was already down but LiveKit had not noticed yet.
    Their sends returned normally, but a full rejoin starts a new session, and
    what LiveKit had not delivered on the old one is gone: resend those that
    must arrive. Listed is every message sent after the last time the room's
    traffic was seen flowing (checked every 2 s) less a second, in the order
    sent; so a message sent in the last seconds before the outage may be
    listed though it arrived.
    """

    resumed: bool
    outage_s: float
    unconfirmed: tuple[UnconfirmedSend, ...] = ()


@dataclass(frozen=True)
class UnconfirmedSend:
    """A message a full rejoin may have lost (:attr:`Reconnection.unconfirmed`).
    ``kind``: the method that sent it (``"send_chat_message"``,
    ``"send_user_message"``, ``"send_contextual_update"``; ``ask`` sends with
    ``send_chat_message``); ``text`` as given; ``sent_at``: ``time.time()``
    when its send returned."""

    kind: str
    text: str
    sent_at: float


@dataclass(frozen=True)
class DisconnectionDetails:
    """``reason`` in Speko's vocabulary; ``message`` the raw LiveKit reason
    name (or ``RECONNECT_TIMEOUT``, speko_sync's own)."""

    reason: DisconnectReason
    message: str = ""


@dataclass(frozen=True)
class TurnMetrics:
    """The agent's own measures of one turn (LiveKit Agents' ``MetricsReport``),
    as it reports them; ``None`` where it reported nothing.

    Durations are in seconds: ``llm_node_ttft`` (LLM time to first token),
    ``llm_node_ttfs`` (to first sentence), ``tts_node_ttfb`` (TTS time to first
    byte), ``llm_node_tps`` (tokens per second, not seconds); for spoken turns
    ``e2e_latency`` (end of the user's speech, as the agent heard it, to the
    agent's first audio out), ``transcription_delay``, ``end_of_turn_delay``,
    ``on_user_turn_completed_delay``. ``started_speaking_at`` /
    ``stopped_speaking_at`` are seconds since the epoch on the agent's clock.
    """

    started_speaking_at: float | None = None
    stopped_speaking_at: float | None = None
    transcription_delay: float | None = None
    end_of_turn_delay: float | None = None
    on_user_turn_completed_delay: float | None = None
    llm_node_ttft: float | None = None
    llm_node_ttfs: float | None = None
    llm_node_tps: float | None = None
    tts_node_ttfb: float | None = None
    e2e_latency: float | None = None


@dataclass(frozen=True)
class Turn:
    """One completed conversation item, as the agent's session stream reports it
    (``conversation_item_added``): who spoke (``source``), the whole ``text``,
    whether the agent was ``interrupted``, the agent's ``metrics`` (``None``
    when it sent none), its ``id``.

    ``response_latency_s``, for an agent turn that answered speech: seconds from
    the end of the user's speech at the microphone (the library's own measure)
    to the first agent audio played on the speaker (its device latency
    included): the latency the user hears. ``None`` otherwise. Beside it,
    ``metrics.e2e_latency`` is the agent's own part of it.

    Turns are events, not transcript lines: the transcript is built from the
    live transcriptions, so each turn's text appears there once.
    """

    source: MessageSource
    text: str
    interrupted: bool = False
    metrics: TurnMetrics | None = None
    id: str = ""
    response_latency_s: float | None = None


@dataclass(frozen=True)
class Reply:
    """The agent's answer to a turn (:meth:`Conversation.ask`,
    :meth:`Conversation.wait_for_reply`).

    ``text``: the agent's whole answer; ``interrupted``: the user cut it short;
    ``metrics``: the agent's :class:`TurnMetrics` (``None`` without its session
    stream); ``tool_calls``: the client tools the agent called meanwhile.
    Client-measured seconds from when the turn was sent (:meth:`ask`) or the
    user's speech ended (a spoken turn): ``first_audio_s`` to the agent's first
    audio played on the speaker (``None`` if it played none), ``final_s`` to
    the final text. ``turn``: the agent's :class:`Turn`, if it sent one.
    """

    text: str
    interrupted: bool = False
    metrics: TurnMetrics | None = None
    first_audio_s: float | None = None
    final_s: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    turn: Turn | None = None


class ToolCallStatus(str, enum.Enum):
    """How a client tool call ended."""

    OK = "ok"  # the tool returned; its result was sent
    ERROR = "error"  # it raised (or its arguments or result were unusable); the message was sent
    TIMEOUT = "timeout"  # it outlived the agent's deadline; LiveKit answered RESPONSE_TIMEOUT
    REFUSED = "refused"  # never run: the caller is not an agent, the tool is unknown, or too many run


@dataclass(frozen=True)
class ToolCall:
    """One call of a client tool by the agent (``on_tool_call``), reported
    after it was answered.

    ``name``: the tool (the RPC method); ``arguments``: the keyword arguments
    it got (a JSON-object payload) or the raw payload string; ``result``: what
    was sent back, or ``None``; ``error``: the message sent back as the RPC
    error's, or ``None``; ``duration_s``: seconds from the request to the
    answer; ``caller``: the calling participant's identity; ``request_id``:
    LiveKit's id of the request.
    """

    name: str
    arguments: Mapping[str, Any] | str
    status: ToolCallStatus
    result: str | None = None
    error: str | None = None
    duration_s: float = 0.0
    caller: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class AgentToolCall:
    """A tool the agent ran itself or through a client (``function_tools_executed``):
    its ``name``, ``arguments`` (the JSON string the LLM produced), ``output``
    and whether that output is an error (``is_error``)."""

    name: str
    arguments: str
    output: str
    is_error: bool = False
    call_id: str = ""


@dataclass(frozen=True)
class AgentToolsExecuted:
    """The agent's report that it executed tools for one LLM step."""

    calls: tuple[AgentToolCall, ...]


@dataclass(frozen=True)
class Interruption:
    """The user talked over the agent (the ``interruption`` signal).

    ``is_interruption``: true when the agent was cut off: it stopped speaking
    while the user spoke, or said so (``overlapping_speech``); the library then
    dropped the agent audio queued for the speaker (a barge-in, reported once
    per agent turn). False for overlap the agent let pass (a backchannel),
    and for ``false_alarm``: the agent decided an earlier interruption was not
    one (``agent_false_interruption``); ``resumed``: it then resumed speaking.
    ``detection_delay_s``: seconds the agent took to decide, if it said.
    """

    is_interruption: bool
    false_alarm: bool = False
    resumed: bool = False
    detection_delay_s: float | None = None


@dataclass(frozen=True)
class ModelUsage:
    """What one model of the agent used so far (``session_usage_updated``):
    ``kind`` (``llm``, ``tts``, ``stt``, ``interruption``, ``eot``),
    ``provider``, ``model``, and its counters as reported (token counts,
    ``characters_count``, ``audio_duration`` and ``session_duration`` in
    seconds...)."""

    kind: str
    provider: str
    model: str
    values: Mapping[str, float]


@dataclass(frozen=True)
class Event:
    """One event, as returned by :meth:`Conversation.poll_events`.

    ``kind`` is the signal's name (``"connected"``, ``"disconnected"``,
    ``"reconnected"``, ``"message"``, ``"transcript"``, ``"status_changed"``, ``"mode_changed"``,
    ``"agent_state_changed"``, ``"user_state_changed"``, ``"turn"``,
    ``"tool_call"``, ``"agent_tools"``, ``"interruption"``, ``"usage"``,
    ``"control"``, ``"error"``) and ``value`` its
    payload (the conversation id for ``connected``, a tuple of turn messages
    for ``transcript``).
    """

    kind: str
    value: (str | Message | tuple[Message, ...] | Status | Mode | AgentState | UserState | ControlEvent
            | DisconnectionDetails | Reconnection | SpekoClientError | Turn | ToolCall | AgentToolsExecuted
            | Interruption | tuple[ModelUsage, ...])


@dataclass(frozen=True)
class EventBatch:
    """Events since the last poll, oldest first, and how many were dropped
    because the poll buffer was full (the oldest are dropped first)."""

    events: tuple[Event, ...]
    dropped: int = 0

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True)
class ConversationStats:
    """A snapshot of a conversation's counters (:meth:`Conversation.stats`).

    ``frames_*`` count 10 ms frames at the device rate. ``underruns``: playback
    callbacks that found too little agent audio (silence filled in);
    ``overruns``: microphone or playback audio dropped because a ring was full;
    ``playback_dropped``: times the oldest queued agent audio was dropped to keep
    latency bounded; ``capture_dropped``: 10 ms frames of microphone audio
    dropped because they were stale when the loop got to them (after a stall);
    ``input_overflows``/``output_underflows``: PortAudio status flags;
    ``playback_buffer_ms``: agent audio queued for the speaker now (on the
    realtime transport, the rest of the reply received so far included);
    ``packets_received``: data packets received; of those ``malformed_packets``
    (no topic, not a Speko JSON packet) and ``ignored_packets`` (other topics,
    unknown control events, malformed ones included): other publishers' data is
    ignored, never an error.

    Client tools: ``tool_calls`` answered (any status), of which
    ``tool_calls_refused`` were never run (a caller that is not an agent, an
    unknown tool, too many at once). Agent session stream: ``session_messages``
    decoded, ``session_ignored`` (unknown kinds, requests and responses, and
    malformed or oversized streams, counted and skipped).
    ``response_latency_s``: the last spoken turn's latency as heard (see
    :class:`Turn`), ``agent_e2e_latency_s``: the agent's own ``e2e_latency``
    for its last spoken turn; ``None`` until measured. ``barge_ins``: times
    queued agent audio was dropped because the user interrupted the agent;
    ``barge_in_dropped_ms``: how much agent audio those drops kept from the
    speaker (what was queued, and speech still in flight from before the
    agent stopped). ``input_audio_tokens``/``output_audio_tokens``: what a
    realtime session's ``usage`` frames last said (0 on LiveKit).

    On the realtime transport, ``packets_*`` count the WebSocket's text
    frames, and ``malformed_packets`` those that were not JSON objects.
    """

    frames_captured: int = 0
    frames_played: int = 0
    underruns: int = 0
    overruns: int = 0
    playback_dropped: int = 0
    capture_dropped: int = 0
    input_overflows: int = 0
    output_underflows: int = 0
    playback_buffer_ms: float = 0.0
    packets_sent: int = 0
    packets_received: int = 0
    malformed_packets: int = 0
    ignored_packets: int = 0
    tool_calls: int = 0
    tool_calls_refused: int = 0
    session_messages: int = 0
    session_ignored: int = 0
    response_latency_s: float | None = None
    agent_e2e_latency_s: float | None = None
    barge_ins: int = 0
    barge_in_dropped_ms: float = 0.0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
