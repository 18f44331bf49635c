"""Typed, immutable values the library delivers: statuses, modes, messages,
disconnection details, and polled events."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import SpekoClientError

__all__ = [
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
