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
    "ControlEvent",
    "ControlEventType",
    "ConversationStats",
    "DisconnectReason",
    "DisconnectionDetails",
    "Event",
    "EventBatch",
    "Message",
    "MessageSource",
    "Mode",
    "Reconnection",
    "Status",
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
    once); false after a full rejoin: a new participant joined the room, the
    microphone was published again, and data sent before the outage was
    noticed may not have reached the agent. ``outage_s``: seconds spent
    ``reconnecting``.
    """

    resumed: bool
    outage_s: float


@dataclass(frozen=True)
class DisconnectionDetails:
    """``reason`` in Speko's vocabulary; ``message`` the raw LiveKit reason
    name (or ``RECONNECT_TIMEOUT``, speko_sync's own)."""

    reason: DisconnectReason
    message: str = ""


@dataclass(frozen=True)
class Event:
    """One event, as returned by :meth:`Conversation.poll_events`.

    ``kind`` is the signal's name (``"connected"``, ``"disconnected"``,
    ``"reconnected"``, ``"message"``, ``"transcript"``, ``"status_changed"``, ``"mode_changed"``,
    ``"agent_state_changed"``, ``"control"``, ``"error"``) and ``value`` its
    payload (the conversation id for ``connected``, a tuple of turn messages
    for ``transcript``).
    """

    kind: str
    value: (str | Message | tuple[Message, ...] | Status | Mode | AgentState | ControlEvent
            | DisconnectionDetails | Reconnection | SpekoClientError)


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
    ``playback_buffer_ms``: agent audio queued for the speaker now;
    ``packets_received``: data packets received; of those ``malformed_packets``
    (no topic, not a Speko JSON packet) and ``ignored_packets`` (other topics,
    unknown control events, malformed ones included): other publishers' data is
    ignored, never an error.
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
