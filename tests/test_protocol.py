"""Speko packet rules, overrides and disconnect mapping (pure)."""

from __future__ import annotations

import json

import pytest

from speko_sync import (
    AgentOverrides,
    ControlEventType,
    DisconnectReason,
    Message,
    MessageSource,
    Overrides,
    TtsOverrides,
    _protocol,
)
from speko_sync._protocol import (
    InvalidPacket,
    decode,
    disconnection_details,
    encode_contextual_update,
    encode_overrides,
    encode_user_message,
)


def test_outbound_shapes() -> None:
    assert json.loads(encode_user_message("hé")) == {"type": "user_message", "text": "hé"}
    assert json.loads(encode_contextual_update("x")) == {"type": "contextual_update", "text": "x"}
    with pytest.raises(TypeError, match="user message text must be a str"):
        encode_user_message(3)  # type: ignore[arg-type]


def test_outbound_packets_over_livekits_limit_or_not_unicode_are_value_errors() -> None:
    from speko_sync._protocol import MAX_PACKET_BYTES

    overhead = len(encode_user_message(""))
    fits = "x" * (MAX_PACKET_BYTES - overhead)
    assert len(encode_user_message(fits)) == MAX_PACKET_BYTES
    with pytest.raises(ValueError, match=f"the user message is {MAX_PACKET_BYTES + 1} bytes .* limit is "
                                         f"{MAX_PACKET_BYTES} bytes .*send_chat_message"):
        encode_user_message(fits + "x")
    with pytest.raises(ValueError, match=r"the contextual update is .* limit"):
        encode_contextual_update("é" * MAX_PACKET_BYTES)  # two bytes each in UTF-8
    for encode in (encode_user_message, encode_contextual_update):
        with pytest.raises(ValueError, match="not valid Unicode"):
            encode("lone \ud800 surrogate")


def test_overrides_from_dataclasses_omit_absent_keys() -> None:
    packet = json.loads(encode_overrides(Overrides(agent=AgentOverrides(first_message="Hi"),
                                                   tts=TtsOverrides(speed=1.2))))
    assert packet == {"type": "overrides", "overrides": {"agent": {"firstMessage": "Hi"}, "tts": {"speed": 1.2}}}


def test_overrides_from_a_mapping() -> None:
    raw = {"agent": {"prompt": "p", "language": "en-US"}, "tts": {"voiceId": "v"}}
    assert json.loads(encode_overrides(raw))["overrides"] == raw
    assert json.loads(encode_overrides({}))["overrides"] == {}


@pytest.mark.parametrize(("bad", "error", "match"), [
    ({"agent": {"firstmessage": "x"}}, ValueError, "unknown overrides key"),
    ({"voice": {}}, ValueError, "unknown overrides section"),
    ({"tts": {"speed": "fast"}}, TypeError, "speed"),
    ({"tts": {"speed": True}}, TypeError, "speed"),
    ({"agent": "x"}, TypeError, "must be a mapping"),
    (["agent"], TypeError, "Overrides or a mapping"),
])
def test_bad_overrides_name_the_problem(bad: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        encode_overrides(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("packet", "expected"), [
    ({"type": "transcript", "source": "user", "text": "hi", "isFinal": False},
     Message(MessageSource.USER, "hi", False)),
    ({"type": "transcript", "source": "agent", "text": "yo"}, Message(MessageSource.AGENT, "yo", True)),
    ({"type": "agent_message", "text": "a", "isFinal": False}, Message(MessageSource.AGENT, "a", False)),
    ({"type": "user_message_echo", "text": "u", "isFinal": False}, Message(MessageSource.USER, "u", True)),
    ({"type": "agent_tool_call", "name": "x"}, None),
])
def test_inbound_packets(packet: dict[str, object], expected: Message | None) -> None:
    assert decode(json.dumps(packet).encode()) == expected


@pytest.mark.parametrize(("raw", "match"), [
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"{nope", "not UTF-8 JSON"),
    (b"[1]", "not an object"),
    (b'{"text": "x"}', "no string 'type'"),
    (b'{"type": 5}', "no string 'type'"),
    (b'{"type": "transcript", "source": "robot", "text": "x"}', "source"),
    (b'{"type": "agent_message"}', "no string 'text'"),
    (b'{"type": "agent_message", "text": "x", "isFinal": "yes"}', "isFinal"),
])
def test_malformed_packets(raw: bytes, match: str) -> None:
    with pytest.raises(InvalidPacket, match=match):
        decode(raw)


@pytest.mark.parametrize(("livekit", "speko"), [
    ("CLIENT_INITIATED", DisconnectReason.USER),
    ("PARTICIPANT_REMOVED", DisconnectReason.AGENT),
    ("ROOM_DELETED", DisconnectReason.AGENT),
    ("ROOM_CLOSED", DisconnectReason.AGENT),
    ("JOIN_FAILURE", DisconnectReason.ERROR),
    ("SERVER_SHUTDOWN", DisconnectReason.UNKNOWN),
    (None, DisconnectReason.UNKNOWN),
])
def test_disconnect_reason_mapping(livekit: str | None, speko: DisconnectReason) -> None:
    details = disconnection_details(livekit)
    assert details.reason == speko
    assert details.message == (livekit or "UNKNOWN_REASON")


@pytest.mark.parametrize(("raw", "match"), [
    (b"not json", "not UTF-8 JSON"),
    (b"[1]", "not an object"),
    (b'{"type": "no_such_control"}', "unknown control event type"),
    (b'{"no_type": 1}', "unknown control event type"),
])
def test_malformed_control_packets(raw: bytes, match: str) -> None:
    with pytest.raises(_protocol.InvalidPacket, match=match):
        _protocol.decode_control(raw)


def test_control_packets_keep_the_whole_object() -> None:
    event = _protocol.decode_control(b'{"type": "transfer_failed", "reason": "busy"}')
    assert event.type == ControlEventType.TRANSFER_FAILED and event.data == {"type": "transfer_failed",
                                                                             "reason": "busy"}


@pytest.mark.parametrize(("text", "error"), [(b"bytes", TypeError), ("   ", ValueError), ("\ud800", ValueError)])
def test_chat_text_is_checked(text: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        _protocol.check_chat_text(text)


def test_every_public_callable_says_what_it_raises() -> None:
    """Conversation, the audio backends, the session helpers and the value
    classes: each public function, class and method has a docstring naming what
    it raises ("Raises nothing" included)."""
    import inspect

    import speko_sync

    documented: dict[str, object] = {}
    for name in ("Conversation", "BufferAudio", "NullAudio", "PyAudioBackend", "AudioBackend", "AudioConstraints",
                 "SessionCredentials", "Overrides", "AgentOverrides", "TtsOverrides"):
        cls = getattr(speko_sync, name)
        documented[name] = cls
        for member, fn in inspect.getmembers(cls, inspect.isfunction):
            if not member.startswith("_") and fn.__qualname__.split(".")[0] == name:
                documented[f"{name}.{member}"] = fn
    documented["Conversation.from_session"] = speko_sync.Conversation.from_session
    for name in ("create_session", "session_credentials", "list_audio_devices"):
        documented[name] = getattr(speko_sync, name)
    silent = [name for name, obj in documented.items() if "raise" not in (inspect.getdoc(obj) or "").lower()]
    assert silent == []
    assert len(documented) > 40
