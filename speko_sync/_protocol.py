"""The Speko protocols: pure encode/decode, no I/O.

- The v0.0.3 JSON data packets: outbound packets are UTF-8 JSON objects; inbound
  ones are decoded into :class:`~speko_sync.events.Message` values following the
  browser client's rules.
- The names LiveKit Agents' native protocol uses (topics and attributes), shared
  by the client and the offline agent of ``speko_sync.testing``.
- Speko server control events (topic ``speko.control``).
"""

from __future__ import annotations

import json
from typing import Any

from .events import ControlEvent, ControlEventType, DisconnectionDetails, DisconnectReason, Message, MessageSource
from .overrides import OverridesLike, overrides_to_wire

__all__ = ["InvalidPacket", "check_chat_text", "decode", "decode_control", "disconnection_details",
           "encode_contextual_update", "encode_overrides", "encode_user_message"]

# LiveKit Agents' native protocol (what a real Speko worker speaks)
TOPIC_TRANSCRIPTION = "lk.transcription"
TOPIC_CHAT = "lk.chat"
ATTR_SEGMENT_ID = "lk.segment_id"
ATTR_FINAL = "lk.transcription_final"
ATTR_TRACK_ID = "lk.transcribed_track_id"
ATTR_AGENT_STATE = "lk.agent.state"
ATTR_AGENT_NAME = "lk.agent.name"
#: Speko server control events.
TOPIC_CONTROL = "speko.control"


class InvalidPacket(ValueError):
    """An inbound packet broke the protocol; ``str(err)`` says how."""


#: The most user data one reliable LiveKit data packet carries (LiveKit's limit:
#: 16 KiB per packet, less its routing headers). Outbound JSON packets larger
#: than this are refused with ``ValueError`` before anything is sent.
MAX_PACKET_BYTES = 15 * 1024


def _encode(packet: dict[str, Any], what: str) -> bytes:
    data = json.dumps(packet, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_PACKET_BYTES:
        raise ValueError(f"{what} is {len(data)} bytes as a data packet; the limit is {MAX_PACKET_BYTES} bytes "
                         "(send long text with send_chat_message, a text stream)")
    return data


def encode_overrides(overrides: OverridesLike) -> bytes:
    return _encode({"type": "overrides", "overrides": overrides_to_wire(overrides)}, "the overrides packet")


def _text(text: object, what: str) -> str:
    """``TypeError`` unless a str; ``ValueError`` if not encodable as UTF-8
    (a lone surrogate)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} text is not valid Unicode: {exc}") from exc
    return text


def check_chat_text(text: object) -> str:
    """A typed turn's text, checked: ``TypeError`` if not a str, ``ValueError``
    if blank or not encodable as UTF-8."""
    _text(text, "chat message")
    assert isinstance(text, str)
    if not text.strip():
        raise ValueError("chat message text must not be empty")
    return text


def encode_user_message(text: str) -> bytes:
    """Raises ``TypeError`` for a non-str, ``ValueError`` for text that is not
    valid Unicode or makes a packet over :data:`MAX_PACKET_BYTES`."""
    return _encode({"type": "user_message", "text": _text(text, "user message")}, "the user message")


def encode_contextual_update(text: str) -> bytes:
    """As :func:`encode_user_message`."""
    return _encode({"type": "contextual_update", "text": _text(text, "contextual update")},
                   "the contextual update")


def _json_object(payload: bytes) -> dict[str, Any]:
    """The JSON object ``payload`` carries; :class:`InvalidPacket` otherwise."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidPacket(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPacket(f"JSON is not an object but {type(data).__name__}")
    return data


def decode(payload: bytes) -> Message | None:
    """Decode one inbound packet.

    Returns the :class:`Message` it carries, or ``None`` for a well-formed
    packet of a type this client does not know (ignored, for forward
    compatibility). Raises :class:`InvalidPacket` for bytes that are not UTF-8
    JSON, JSON that is not an object, an object without a string ``type``, or a
    known type whose ``text`` is not a string.
    """
    data = _json_object(payload)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise InvalidPacket("object has no string 'type'")
    if kind == "transcript":
        source_name = data.get("source")
        if source_name not in ("user", "agent"):
            raise InvalidPacket(f"transcript source must be 'user' or 'agent', got {source_name!r}")
        source = MessageSource(source_name)
    elif kind == "agent_message":
        source = MessageSource.AGENT
    elif kind == "user_message_echo":
        source = MessageSource.USER
    else:
        return None
    text = data.get("text")
    if not isinstance(text, str):
        raise InvalidPacket(f"{kind} has no string 'text'")
    is_final = data.get("isFinal", True)
    if kind == "user_message_echo":
        is_final = True
    if not isinstance(is_final, bool):
        raise InvalidPacket(f"{kind} isFinal must be a boolean, got {is_final!r}")
    return Message(source=source, text=text, is_final=is_final)


def decode_control(payload: bytes) -> ControlEvent:
    """Decode a ``speko.control`` packet. Raises :class:`InvalidPacket` for one
    that is not a JSON object with a known control ``type``."""
    data = _json_object(payload)
    try:
        return ControlEvent(ControlEventType(data.get("type")), data)
    except ValueError:
        raise InvalidPacket(f"unknown control event type {data.get('type')!r}") from None


_REASONS = {
    "CLIENT_INITIATED": DisconnectReason.USER,
    "PARTICIPANT_REMOVED": DisconnectReason.AGENT,
    "ROOM_DELETED": DisconnectReason.AGENT,
    "ROOM_CLOSED": DisconnectReason.AGENT,
    "JOIN_FAILURE": DisconnectReason.ERROR,
    "CONNECTION_TIMEOUT": DisconnectReason.TIMEOUT,
    "RECONNECT_TIMEOUT": DisconnectReason.TIMEOUT,  # speko_sync's own: the link was not recovered in time
}


def disconnection_details(livekit_reason_name: str | None) -> DisconnectionDetails:
    """Map a LiveKit ``DisconnectReason`` name (or ``None``) to Speko's reason,
    keeping the raw name as the message."""
    name = livekit_reason_name or "UNKNOWN_REASON"
    return DisconnectionDetails(reason=_REASONS.get(name, DisconnectReason.UNKNOWN), message=name)
