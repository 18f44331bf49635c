"""Speko's realtime (speech-to-speech) WebSocket frames, decoded and encoded.
Pure functions: no I/O.

Server text frames are JSON objects with a ``t`` field: ``ready``,
``transcript``, ``interruption``, ``error``, ``tool_call``, ``usage``,
``end``; other types are ignored. Binary frames are mono PCM16 little-endian
at the negotiated rates (16 or 24 kHz) both ways.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .events import DisconnectionDetails, DisconnectReason

RATES = (16000, 24000)
DEFAULT_RATE = 24000
#: the close the client sends when it ends the session (the browser client's reason)
CLIENT_CLOSE = (1000, "client_stopped")
INTERRUPT = '{"t":"interrupt"}'
COMMIT = '{"t":"control","action":"commit"}'


class InvalidFrame(ValueError):
    """A text frame that is not a JSON object with a string ``t``, or a known
    frame with a field of the wrong type."""


@dataclass(frozen=True)
class Ready:
    input_rate: int
    output_rate: int


@dataclass(frozen=True)
class Transcript:
    role: str  # "user" or "assistant"
    text: str
    final: bool


@dataclass(frozen=True)
class Interruption:
    pass


@dataclass(frozen=True)
class Error:
    code: str
    message: str


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, as the agent sent it


@dataclass(frozen=True)
class Usage:
    input_audio_tokens: int
    output_audio_tokens: int


@dataclass(frozen=True)
class End:
    reason: str


Frame = Ready | Transcript | Interruption | Error | ToolCall | Usage | End


def rate(value: Any, fallback: int) -> int:
    """A negotiated sample rate: 16000 or 24000, else ``fallback``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value in RATES else fallback


def _text(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise InvalidFrame(f"{data.get('t')} frame: {key!r} is not a string")
    return str(value)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidFrame(f"usage frame: {key!r} is not a count")
    return int(value)


def decode(text: str | bytes, *, default_rate: int = DEFAULT_RATE) -> Frame | None:
    """One server text frame; ``None`` for a frame type this client does not
    know. Raises :class:`InvalidFrame` for anything that is not a JSON object
    with a string ``t``, or a known frame whose fields have the wrong types."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidFrame(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidFrame(f"not a JSON object but {type(data).__name__}")
    kind = data.get("t")
    if not isinstance(kind, str):
        raise InvalidFrame("no string 't' field")
    if kind == "ready":
        return Ready(rate(data.get("inputSampleRate"), default_rate), rate(data.get("outputSampleRate"), default_rate))
    if kind == "transcript":
        role = "user" if data.get("role") == "user" else "assistant"
        return Transcript(role, _text(data, "text"), bool(data.get("final")))
    if kind == "interruption":
        return Interruption()
    if kind == "error":
        return Error(_text(data, "code", "ERROR") or "ERROR", _text(data, "message"))
    if kind == "tool_call":
        call_id, name = _text(data, "callId"), _text(data, "name")
        if not call_id or not name:
            raise InvalidFrame("tool_call frame without callId or name")
        arguments = data.get("arguments", "")
        if not isinstance(arguments, str):  # some proxies send the object itself
            arguments = json.dumps(arguments)
        return ToolCall(call_id, name, arguments)
    if kind == "usage":
        return Usage(_count(data, "inputAudioTokens"), _count(data, "outputAudioTokens"))
    if kind == "end":
        return End(_text(data, "reason"))
    return None


def tool_result(call_id: str, output: str) -> str:
    return json.dumps({"t": "tool_result", "callId": call_id, "output": output}, separators=(",", ":"))


def tool_error(message: str) -> str:
    """The ``output`` of a tool call that failed: the agent reads it as the result."""
    return json.dumps({"error": message}, separators=(",", ":"))


def close_details(code: int, reason: str, end_reason: str | None) -> DisconnectionDetails:
    """Why the server's close ended the session: 1000 or 1005 (no code) is the
    agent ending it (the ``end`` frame's reason, if it sent one, else the
    close reason); anything else is an error, with the code in the message."""
    if code in (1000, 1005):
        return DisconnectionDetails(reason=DisconnectReason.AGENT, message=end_reason or reason or "end")
    text = f"websocket closed with {code}" + (f": {reason}" if reason else "")
    return DisconnectionDetails(reason=DisconnectReason.ERROR, message=text)
