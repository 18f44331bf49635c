"""The realtime session's frames, decoded and encoded (pure functions)."""

from __future__ import annotations

import json

import pytest

from speko_sync import _realtime_protocol as wire
from speko_sync.events import DisconnectReason
from speko_sync.sessions import session_credentials


def test_every_server_frame_decodes_to_its_type() -> None:
    assert wire.decode('{"t":"ready","inputSampleRate":16000,"outputSampleRate":24000}') == wire.Ready(16000, 24000)
    assert wire.decode('{"t":"transcript","role":"user","text":"hi","final":true}') == \
        wire.Transcript("user", "hi", True)
    assert wire.decode('{"t":"transcript","role":"assistant","text":"Hel"}') == \
        wire.Transcript("assistant", "Hel", False)
    assert wire.decode('{"t":"interruption"}') == wire.Interruption()
    assert wire.decode('{"t":"error","code":"RATE_LIMITED","message":"slow down"}') == \
        wire.Error("RATE_LIMITED", "slow down")
    assert wire.decode('{"t":"tool_call","callId":"c1","name":"set_light","arguments":"{\\"on\\":true}"}') == \
        wire.ToolCall("c1", "set_light", '{"on":true}')
    assert wire.decode('{"t":"usage","inputAudioTokens":12,"outputAudioTokens":30}') == wire.Usage(12, 30)
    assert wire.decode('{"t":"end","reason":"goodbye"}') == wire.End("goodbye")


def test_lenient_where_the_sources_disagree() -> None:
    # an unknown rate falls back to 24 kHz, as the browser client does
    assert wire.decode('{"t":"ready","inputSampleRate":44100}') == wire.Ready(24000, 24000)
    # a role other than "user" is the agent's
    assert wire.decode('{"t":"transcript","role":"bot","text":"x","final":false}') == \
        wire.Transcript("assistant", "x", False)
    # tool arguments sent as an object are passed on as JSON text
    frame = wire.decode('{"t":"tool_call","callId":"c","name":"n","arguments":{"a":1}}')
    assert isinstance(frame, wire.ToolCall) and json.loads(frame.arguments) == {"a": 1}
    assert wire.decode('{"t":"error"}') == wire.Error("ERROR", "")


@pytest.mark.parametrize(("text", "match"), [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object but list"),
    ('"ready"', "not a JSON object but str"),
    ('{"type":"ready"}', "no string 't'"),
    ('{"t":5}', "no string 't'"),
    ('{"t":"tool_call","name":"n"}', "without callId"),
    ('{"t":"usage","inputAudioTokens":"many"}', "not a count"),
    ('{"t":"usage","inputAudioTokens":-1}', "not a count"),
    ('{"t":"transcript","text":{"a":1}}', "'text' is not a string"),
    (b"\xff\xfe", "not JSON"),
])
def test_malformed_frames_raise_invalid_frame_naming_the_problem(text: str | bytes, match: str) -> None:
    with pytest.raises(wire.InvalidFrame, match=match):
        wire.decode(text)


def test_unknown_frame_types_are_none() -> None:
    assert wire.decode('{"t":"session.updated","x":1}') is None


def test_client_frames() -> None:
    assert json.loads(wire.tool_result("c1", "done")) == {"t": "tool_result", "callId": "c1", "output": "done"}
    assert json.loads(wire.INTERRUPT) == {"t": "interrupt"}
    assert json.loads(wire.COMMIT) == {"t": "control", "action": "commit"}
    assert json.loads(wire.tool_error("boom")) == {"error": "boom"}
    assert wire.CLIENT_CLOSE == (1000, "client_stopped")


@pytest.mark.parametrize(("code", "reason", "end", "expected", "message"), [
    (1000, "", "goodbye", DisconnectReason.AGENT, "goodbye"),
    (1000, "bye", None, DisconnectReason.AGENT, "bye"),
    (1005, "", None, DisconnectReason.AGENT, "end"),
    (1011, "internal", None, DisconnectReason.ERROR, "websocket closed with 1011: internal"),
    (4000, "", "done", DisconnectReason.ERROR, "websocket closed with 4000"),
    (1006, "", None, DisconnectReason.ERROR, "websocket closed with 1006"),
])
def test_server_closes_map_to_reasons(code: int, reason: str, end: str | None, expected: DisconnectReason,
                                      message: str) -> None:
    details = wire.close_details(code, reason, end)
    assert details.reason == expected and details.message == message


def test_a_realtime_session_answer_is_read_as_realtime() -> None:
    answer = {"sessionId": "s-1", "wsUrl": "wss://rt.example/v1/realtime", "wsToken": "tok",
              "expiresAt": "2999-01-01T00:00:00Z", "inputSampleRate": 16000, "outputSampleRate": 24000}
    credentials = session_credentials(answer)
    assert (credentials.transport, credentials.token, credentials.url, credentials.session_id) == \
        ("realtime", "tok", "wss://rt.example/v1/realtime", "s-1")
    assert (credentials.input_sample_rate, credentials.output_sample_rate) == (16000, 24000)
    with pytest.raises(ValueError, match="no wsToken"):
        session_credentials({"transport": "realtime", "wsUrl": "wss://x"})
    with pytest.raises(ValueError, match="'daily' is not supported"):
        session_credentials({"transport": "daily", "transportToken": "t", "transportUrl": "u"})
    with pytest.raises(ValueError, match="'webrtc-x' is not supported"):
        session_credentials({"transport": "webrtc-x", "transportToken": "t", "transportUrl": "u"})
