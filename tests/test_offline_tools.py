"""The offline Speko agent's function tools, against the real LiveKit Agents
worker and a raw livekit.rtc client: a matching user turn makes the scripted
LLM call a tool; a client tool is the client's LiveKit RPC method (its answer
spoken in the reply, its RpcError as "The tool failed: ..."); the agent-side
tool needs no RPC; the framework reports every call on the session stream."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from livekit import rtc
from livekit.protocol import models
from lk import RATE, Mic, join_with_session, run
from test_livekit_agents_worker import _require_agent_env, espeak

from speko_sync.testing import LocalServer
from speko_sync.testing._client import RemoteClient
from speko_sync.testing.pytest_plugin import require_webrtc

pytestmark = pytest.mark.webrtc

GREETING = "Hello from the offline agent."
RULES = [("weather", "It is always sunny here.")]


@pytest.fixture(scope="module")
def worker_server() -> Iterator[LocalServer]:
    """One server and one offline worker with its default tools for the
    module; each test uses a room of its own."""
    require_webrtc()
    _require_agent_env()
    with LocalServer() as server:
        server.start_agent_worker(greeting=GREETING, rules=RULES)
        yield server


@pytest.fixture
def rpc_packets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(receiver, what) of every RPC packet or stream the server delivers."""
    seen: list[tuple[str, str]] = []
    forward = RemoteClient.on_data

    def spy(self: RemoteClient, packet: models.DataPacket) -> None:
        which = packet.WhichOneof("value") or ""
        if which.startswith("rpc_"):
            seen.append((self.identity, which))
        elif which == "stream_header" and packet.stream_header.topic.startswith("lk.rpc_"):
            seen.append((self.identity, packet.stream_header.topic))
        forward(self, packet)
    monkeypatch.setattr(RemoteClient, "on_data", spy)
    return seen


def said(view_items: list[object]) -> list[str]:
    return [m.content[0].text for m in view_items]  # type: ignore[attr-defined]


async def typed_turn(room: rtc.Room, session: object, text: str) -> str:
    """Send ``text`` as a typed turn and return the agent's answer (its next assistant item)."""
    count = len(session.items("assistant")) + 1  # type: ignore[attr-defined]
    await room.local_participant.send_text(text, topic="lk.chat")
    await session.wait(f"reply to {text!r}",  # type: ignore[attr-defined]
                       lambda: len(session.items("assistant")) == count, timeout=30)  # type: ignore[attr-defined]
    return said(session.items("assistant"))[-1]  # type: ignore[attr-defined]


def tools_executed(session: object) -> list[tuple[str, str, str, bool]]:
    """(name, arguments, output, is_error) of each call the framework reported."""
    found = []
    for event in session.events():  # type: ignore[attr-defined]
        if event.WhichOneof("event") == "function_tools_executed":
            done = event.function_tools_executed
            for call, out in zip(done.function_calls, done.function_call_outputs, strict=True):
                found.append((call.name, call.arguments, out.output, out.is_error))
    return found


def test_a_typed_turn_that_matches_calls_the_clients_tool_and_the_reply_carries_its_result(
        worker_server: LocalServer, rpc_packets: list[tuple[str, str]]) -> None:
    async def scenario() -> None:
        room, _, session = await join_with_session(worker_server, "tool-ok")
        calls: list[rtc.RpcInvocationData] = []

        async def set_light(data: rtc.RpcInvocationData) -> str:
            calls.append(data)
            return "the light is on" if json.loads(data.payload) == {"on": True} else "the light is off"
        room.local_participant.register_rpc_method("set_light", set_light)
        await session.wait("greeting", lambda: said(session.items("assistant")) == [GREETING], timeout=30)
        assert await typed_turn(room, session, "please turn on the light") == "Done: the light is on"
        (call,) = calls
        agent = room.remote_participants[call.caller_identity]
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        assert json.loads(call.payload) == {"on": True} and call.method == "set_light"
        assert call.response_timeout == 8.0  # the worker's 15 s less the SDK's 7 s round trip
        await session.wait("tool report", lambda: tools_executed(session), timeout=10)
        assert tools_executed(session) == [("set_light", '{"on": true}', "the light is on", False)]
        # client protocol 2: a v2 request stream, the ack and a v2 response stream, between the two only
        assert rpc_packets == [("user", "lk.rpc_request"), (agent.identity, "rpc_ack"),
                               (agent.identity, "lk.rpc_response")]
        assert await typed_turn(room, session, "lights off") == "Done: the light is off"
        await session.close()
        await room.disconnect()
    run(scenario(), timeout=90)


def test_a_tool_that_raises_an_rpc_error_makes_the_agent_say_it_failed(worker_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _, session = await join_with_session(worker_server, "tool-error")

        async def set_light(data: rtc.RpcInvocationData) -> str:
            raise rtc.RpcError(1500, "light is broken")
        room.local_participant.register_rpc_method("set_light", set_light)
        await session.wait("greeting", lambda: len(session.items("assistant")) == 1, timeout=30)
        assert await typed_turn(room, session, "turn on the light") == "The tool failed: light is broken."
        await session.wait("tool report", lambda: tools_executed(session), timeout=10)
        assert tools_executed(session) == [("set_light", '{"on": true}', "light is broken", True)]
        # a client without the method: the SDK answers UNSUPPORTED_METHOD, and the agent says so
        room.local_participant.unregister_rpc_method("set_light")
        assert await typed_turn(room, session, "turn on the light") == \
            "The tool failed: Method not supported at destination."
        await session.close()
        await room.disconnect()
    run(scenario(), timeout=90)


def test_the_agent_side_tool_runs_without_rpc_and_other_turns_are_answered_as_before(
        worker_server: LocalServer, rpc_packets: list[tuple[str, str]]) -> None:
    async def scenario() -> None:
        room, _, session = await join_with_session(worker_server, "tool-agent")
        await session.wait("greeting", lambda: len(session.items("assistant")) == 1, timeout=30)
        assert await typed_turn(room, session, "what time is it") == "It is 12:00."
        await session.wait("tool report", lambda: tools_executed(session), timeout=10)
        assert tools_executed(session) == [("current_time", "{}", "12:00", False)]
        for text, reply in (("what is the weather", "It is always sunny here."),
                            ("the lightning was loud", "You said: the lightning was loud.")):
            assert await typed_turn(room, session, text) == reply
        assert rpc_packets == [] and len(tools_executed(session)) == 1
        await session.close()
        await room.disconnect()
    run(scenario(), timeout=90)


@pytest.fixture(scope="module")
def custom_server() -> Iterator[LocalServer]:
    """A worker given client tools of its own (they replace the defaults) and
    a tool timeout of 8.5 s: the client is told 1.5 s, after which its SDK
    answers RESPONSE_TIMEOUT. Its STT describes each utterance (``[speech,
    1.20 s]``), so a rule for that makes every spoken turn call a tool."""
    require_webrtc()
    _require_agent_env()
    with LocalServer() as server:
        server.start_agent_worker(greeting="", tool_timeout=8.5, stt="describe", client_tools=[
            ("open the door", "open_door", '{"door": "front"}', "The door is {result}."),
            ("open the gate", "open_door", '{"door": "gate"}', "The gate is {result}."),
            (r"^\[speech, ", "get_weather", '{"where": "here"}', "The forecast: {result}.")])
        yield server


def test_client_tools_given_to_the_worker_replace_the_defaults_and_its_timeout_is_the_clients_deadline(
        custom_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _, session = await join_with_session(custom_server, "custom-tools")
        never = asyncio.Event()
        deadlines: list[float] = []

        async def open_door(data: rtc.RpcInvocationData) -> str:
            deadlines.append(data.response_timeout)
            if json.loads(data.payload) == {"door": "gate"}:
                await never.wait()  # a tool that never answers
            return "open"
        await session.wait("the session", lambda: session.kinds()[:1] == ["item agent_handoff"], timeout=30)
        room.local_participant.register_rpc_method("open_door", open_door)
        steps = (("open the door", "The door is open."), ("turn on the light", "You said: turn on the light."),
                 ("open the gate", "The tool failed: Response timeout."))
        for text, reply in steps:
            assert await typed_turn(room, session, text) == reply
        assert deadlines == [1.5, 1.5]
        await session.close()
        await room.disconnect()
    run(scenario(), timeout=90)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng to speak to the agent")
def test_a_spoken_turn_that_matches_calls_the_tool_too(custom_server: LocalServer) -> None:
    async def scenario() -> None:
        room, _, session = await join_with_session(custom_server, "tool-spoken")
        calls: list[str] = []

        async def get_weather(data: rtc.RpcInvocationData) -> str:
            calls.append(data.payload)
            return "sunny"
        room.local_participant.register_rpc_method("get_weather", get_weather)
        mic = await Mic(room).publish()
        await session.wait("the session", lambda: session.kinds()[:1] == ["item agent_handoff"], timeout=30)
        silence = np.zeros(RATE // 2, dtype=np.int16)
        await mic.play(np.concatenate([silence, espeak("what is the weather"), silence, silence, silence]))
        await session.wait("user turn", lambda: session.items("user"), timeout=30)
        assert session.items("user")[0].content[0].text.startswith("[speech, ")
        await session.wait("reply", lambda: session.items("assistant"), timeout=30)
        assert calls == ['{"where": "here"}'] and said(session.items("assistant")) == ["The forecast: sunny."]
        await session.close()
        await room.disconnect()
    run(scenario(), timeout=90)


def test_a_malformed_client_tool_stops_the_worker_before_it_registers() -> None:
    _require_agent_env()
    with LocalServer() as server:
        with pytest.raises(RuntimeError, match="bad client tool: the arguments of tool 'm' must be a JSON object"):
            server.start_agent_worker(client_tools=[("x", "m", "[1]", "r")])
