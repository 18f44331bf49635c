"""Typed, immutable values the library delivers: statuses, modes, messages,
disconnection details, and polled events."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import SpekoClientError

__all__ = [
    "ConversationStats",
    "DisconnectReason",
    "DisconnectionDetails",
    "Event",
    "EventBatch",
    "Message",
    "MessageSource",
    "Mode",
    "Status",
]


class Status(str, enum.Enum):
    """Where a conversation is in its life: connecting -> connected ->
    disconnecting -> disconnected."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


class Mode(str, enum.Enum):
    """``speaking`` while the agent (any other participant) is an active
    speaker, else ``listening``."""

    SPEAKING = "speaking"
    LISTENING = "listening"


class MessageSource(str, enum.Enum):
    USER = "user"
    AGENT = "agent"


@dataclass(frozen=True)
class Message:
    """A transcript or chat line. ``is_final`` is false for partial transcripts
    that a later message of the same turn will replace."""

    source: MessageSource
    text: str
    is_final: bool = True


class DisconnectReason(str, enum.Enum):
    """Why a session ended, in Speko's vocabulary."""

    USER = "user"  # end_session() was called (LiveKit CLIENT_INITIATED)
    AGENT = "agent"  # the agent ended it (PARTICIPANT_REMOVED, ROOM_DELETED, ROOM_CLOSED)
    ERROR = "error"  # joining failed (JOIN_FAILURE)
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"  # anything else


@dataclass(frozen=True)
class DisconnectionDetails:
    """``reason`` in Speko's vocabulary; ``message`` the raw LiveKit reason name."""

    reason: DisconnectReason
    message: str = ""


@dataclass(frozen=True)
class Event:
    """One event, as returned by :meth:`Conversation.poll_events`.

    ``kind`` is the signal's name (``"connected"``, ``"disconnected"``,
    ``"message"``, ``"status_changed"``, ``"mode_changed"``, ``"error"``) and
    ``value`` its payload (the conversation id for ``connected``).
    """

    kind: str
    value: str | Message | Status | Mode | DisconnectionDetails | SpekoClientError


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
    latency bounded; ``input_overflows``/``output_underflows``: PortAudio status
    flags; ``playback_buffer_ms``: agent audio queued for the speaker now.
    """

    frames_captured: int = 0
    frames_played: int = 0
    underruns: int = 0
    overruns: int = 0
    playback_dropped: int = 0
    input_overflows: int = 0
    output_underflows: int = 0
    playback_buffer_ms: float = 0.0
    packets_sent: int = 0
    packets_received: int = 0
    malformed_packets: int = 0
