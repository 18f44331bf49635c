"""Client tools over real WebRTC: a raw ``livekit.rtc`` participant of kind
AGENT calls a Conversation's tools with ``perform_rpc``, as a LiveKit Agents
function tool does (the same against the real worker:
test_agent_session_worker.py). Arguments, results, errors, deadlines, the
refusal of callers that are not agents, and a slow tool that stops neither
audio nor events."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conv import Recorder, open_conversation
from livekit import rtc
from lk import connect, run

from speko_sync import ToolCallStatus, ToolError
from speko_sync.testing import LocalServer, ScriptedAgent

pytestmark = pytest.mark.webrtc


async def agent_call(server: LocalServer, room: str, method: str, payload: str, *, response_timeout: float = 15.0,
                     kind: str = "agent", identity: str = "tool-caller") -> str | rtc.RpcError:
    """Join as a participant of ``kind``, call ``method`` on "user", leave."""
    caller, _ = await connect(server, identity, room, token=server.token(identity, room, kind=kind))
    try:
        return await caller.local_participant.perform_rpc(destination_identity="user", method=method,
                                                          payload=payload, response_timeout=response_timeout)
    except rtc.RpcError as exc:
        return exc
    finally:
        await caller.disconnect()


def test_a_tool_gets_json_objects_as_keyword_arguments_and_its_result_goes_back(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    calls: list[tuple[Any, str]] = []

    def set_light(on: bool, room: str = "hall") -> dict[str, Any]:
        calls.append(((on, room), threading.current_thread().name))
        return {"on": on, "room": room}

    def say(text: str) -> str:
        return text.upper()

    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec, client_tools={"set_light": set_light}) as conv:
        assert conv.tools == ["set_light"]
        result = run(agent_call(speko_server, speko_agent.room, "set_light", '{"on": true, "room": "kitchen"}'))
        assert result == '{"on": true, "room": "kitchen"}'
        (args, thread), = calls
        assert args == (True, "kitchen") and thread.startswith("speko-tool-")
        call = rec.wait_for("tool_call")
        assert (call.name, call.arguments, call.status, call.result, call.error, call.caller) == (
            "set_light", {"on": True, "room": "kitchen"}, ToolCallStatus.OK, result, None, "tool-caller")
        assert call.duration_s > 0 and call.request_id

        conv.register_tool("say", say)  # added while connected: callable at once
        assert run(agent_call(speko_server, speko_agent.room, "say", "plain text")) == "PLAIN TEXT"
        assert conv.unregister_tool("say") and not conv.unregister_tool("say")
        gone = run(agent_call(speko_server, speko_agent.room, "say", "x"))
        assert isinstance(gone, rtc.RpcError) and gone.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD
        assert conv.stats().tool_calls == 2


def test_a_raising_tool_tells_the_agent_its_message_and_never_a_traceback(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    def broken(**_: Any) -> str:
        raise ToolError("the light is broken")

    def buggy(**_: Any) -> str:
        return {"a": 1}["b"]  # type: ignore[no-any-return]  # KeyError

    def strict(level: int) -> int:
        return level

    rec = Recorder()
    tools = {"broken": broken, "buggy": buggy, "strict": strict}
    with open_conversation(speko_server, speko_agent, rec, client_tools=tools) as conv:
        error = run(agent_call(speko_server, speko_agent.room, "broken", "{}"))
        assert isinstance(error, rtc.RpcError) and error.code == 1500 and error.message == "the light is broken"
        error = run(agent_call(speko_server, speko_agent.room, "buggy", "{}"))
        assert isinstance(error, rtc.RpcError) and error.message == "'b'" and "Traceback" not in error.message
        error = run(agent_call(speko_server, speko_agent.room, "strict", '{"level": 1, "volume": 3}'))
        assert isinstance(error, rtc.RpcError) and "bad arguments for strict" in error.message
        assert "volume" in error.message
        statuses = [(c.name, c.status, c.error) for c in rec.of("tool_call")]
        assert statuses == [("broken", ToolCallStatus.ERROR, "the light is broken"),
                            ("buggy", ToolCallStatus.ERROR, "'b'"),
                            ("strict", ToolCallStatus.ERROR, error.message)]
        assert conv.is_open() and rec.of("error") == []  # the session goes on


def test_calls_from_a_participant_that_is_not_an_agent_are_refused_and_never_run(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    ran = threading.Event()
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec, client_tools={"unlock": lambda **_: ran.set()}) as conv:
        error = run(agent_call(speko_server, speko_agent.room, "unlock", "{}", kind="", identity="intruder"))
        assert isinstance(error, rtc.RpcError) and "only agent participants" in error.message
        call = rec.wait_for("tool_call")
        assert (call.status, call.caller) == (ToolCallStatus.REFUSED, "intruder")
        assert not ran.is_set()
        stats = conv.stats()
        assert (stats.tool_calls, stats.tool_calls_refused) == (1, 1)


def test_a_tool_past_the_agents_deadline_is_answered_with_a_timeout(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    release = threading.Event()
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec, client_tools={"slow": lambda: release.wait(20)}):
        try:
            # response_timeout 8 s leaves the callee LiveKit's 8 - 7 = 1 s
            error = run(agent_call(speko_server, speko_agent.room, "slow", "", response_timeout=8))
        finally:
            release.set()
        assert isinstance(error, rtc.RpcError) and error.code == rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT
        call = rec.wait_for("tool_call")
        assert call.status == ToolCallStatus.TIMEOUT and "deadline" in (call.error or "")
        assert 0.8 < call.duration_s < 5


def test_a_slow_tool_stops_neither_audio_nor_events(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(10)
        return "done"

    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec, client_tools={"slow": slow}) as conv:
        rec.wait_for("message", lambda m: m.is_final)  # the greeting

        async def scenario() -> str | rtc.RpcError:
            import asyncio
            call = asyncio.ensure_future(agent_call(speko_server, speko_agent.room, "slow", ""))
            await asyncio.to_thread(entered.wait, 10)
            played = conv.stats().frames_played
            speko_agent.speak("spoken while the tool runs", to=["user"])
            await asyncio.to_thread(rec.wait_for, "message",
                                    lambda m: m.is_final and m.text == "spoken while the tool runs", 10)
            assert conv.stats().frames_played > played + 50  # half a second played meanwhile
            assert not call.done()
            release.set()
            return await call
        assert run(scenario()) == "done"
    assert rec.wait_for("tool_call").status == ToolCallStatus.OK


def test_bad_tools_are_refused_before_anything_starts(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    before = {t.name for t in threading.enumerate()}

    async def coroutine() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine function"):
        open_conversation(speko_server, speko_agent, client_tools={"x": coroutine})
    with pytest.raises(TypeError, match="mapping"):
        open_conversation(speko_server, speko_agent, client_tools=["x"])
    time.sleep(0)  # nothing to wait for: nothing was started
    assert speko_server.participants(speko_agent.room) == ["agent"]
    assert {t.name for t in threading.enumerate()} <= before | {"speko-loop", "speko-audio", "speko-dispatch"}


@pytest.mark.speko_server(ping_interval=1, ping_timeout=2)
@pytest.mark.speko_agent(greeting=None)
def test_tools_answer_the_scripted_agent_and_still_do_after_a_full_rejoin(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec, client_tools={"ping": lambda: "pong"}):
        speko_agent.wait_for(lambda: "user" in speko_agent.ready_clients())
        assert speko_agent.call_tool("user", "ping", "") == "pong"
        assert speko_server.drop_connections(speko_agent.room) == 1
        reconnection = rec.wait_for("reconnected", timeout=20)
        assert reconnection.resumed is False  # a new participant, and LiveKit kept its RPC methods
        speko_agent.wait_for(lambda: "user" in speko_agent.ready_clients())
        assert speko_agent.call_tool("user", "ping", "") == "pong"
        assert [c.status for c in rec.of("tool_call")] == [ToolCallStatus.OK, ToolCallStatus.OK]
