"""Client tools called by the real LiveKit Agents worker (the offline Speko
agent, whose scripted LLM calls a function tool that does ``perform_rpc`` to the
user): a round trip driven by a typed turn and by a spoken one, a raising tool,
a slow tool during which audio and events go on, and a participant that is not
an agent refused."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conv import Recorder
from livekit import rtc
from lk import connect, run
from test_livekit_agents_worker import _require_agent_env, espeak

from speko_sync import BufferAudio, Conversation, ToolCallStatus, ToolError
from speko_sync.testing import LocalServer
from speko_sync.testing.pytest_plugin import require_webrtc

pytestmark = pytest.mark.webrtc

RATE = 48_000
TOOLS = [
    ("light", "set_light", '{"on": true, "room": "hall"}', "Done: {result}"),
    # espeak's "what is the weather" through Opus reaches PocketSphinx as "what is the weather", "what is
    # that where the", "what is aware that"...: the words it keeps are the first two
    ("weather|what is", "get_forecast", '{"city": "Paris"}', "The forecast: {result}."),
    ("slow", "slow_lookup", "{}", "Found: {result}."),
]


@pytest.fixture(scope="module")
def tool_server() -> Iterator[LocalServer]:
    require_webrtc()
    _require_agent_env()
    with LocalServer() as server:
        server.start_agent_worker(greeting="Hi.", client_tools=TOOLS, tool_timeout=15)
        yield server


def test_a_typed_turn_makes_the_agent_call_a_client_tool_and_answer_with_its_result(tool_server: LocalServer) -> None:
    calls: list[tuple[dict[str, Any], str]] = []

    def set_light(on: bool, room: str) -> dict[str, Any]:
        calls.append(({"on": on, "room": room}, threading.current_thread().name))
        return {"room": room, "on": on}

    rec = Recorder()
    with Conversation(tool_server.token("caller", "tool-typed"), tool_server.url, audio=BufferAudio(),
                      client_tools={"set_light": set_light}, **rec.callbacks()) as conv:
        conv.wait_for_reply(timeout=30)  # the greeting
        reply = conv.ask("turn on the light please", timeout=30)
        assert reply.text == 'Done: {"room": "hall", "on": true}', reply
        (arguments, thread), = calls
        assert arguments == {"on": True, "room": "hall"} and thread.startswith("speko-tool-")
        (call,) = reply.tool_calls
        assert (call.name, call.status, call.arguments) == ("set_light", ToolCallStatus.OK, arguments)
        assert call.caller == next(p for p in tool_server.participants("tool-typed") if p != "caller")
        executed = rec.wait_for("agent_tools", timeout=10)
        assert [(c.name, c.output, c.is_error) for c in executed.calls] == [
            ("set_light", '{"room": "hall", "on": true}', False)]
        assert conv.stats().tool_calls == 1 and rec.of("error") == []


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng to speak to the agent")
def test_a_spoken_turn_makes_the_agent_call_a_client_tool(tool_server: LocalServer) -> None:
    audio = BufferAudio()
    rec = Recorder()
    with Conversation(tool_server.token("speaker", "tool-spoken"), tool_server.url, audio=audio,
                      client_tools={"get_forecast": lambda city: f"sunny in {city}"}, **rec.callbacks()) as conv:
        conv.wait_for_reply(timeout=30)  # the greeting
        silence = np.zeros(RATE // 2, dtype=np.int16)
        audio.feed(np.concatenate([silence, espeak("what is the weather"), silence, silence, silence]))
        reply = conv.wait_for_reply(timeout=40)
        assert reply.text == "The forecast: sunny in Paris.", reply
        assert [c.arguments for c in reply.tool_calls] == [{"city": "Paris"}]
        assert reply.turn is not None and reply.turn.response_latency_s is not None


def test_a_raising_tool_makes_the_agent_say_what_went_wrong(tool_server: LocalServer) -> None:
    def set_light(on: bool, room: str) -> str:
        raise ToolError(f"the {room} light is broken")

    rec = Recorder()
    with Conversation(tool_server.token("caller", "tool-error"), tool_server.url, audio=BufferAudio(),
                      client_tools={"set_light": set_light}, **rec.callbacks()) as conv:
        conv.wait_for_reply(timeout=30)
        reply = conv.ask("the light", timeout=30)
        assert reply.text == "The tool failed: the hall light is broken.", reply
        (call,) = reply.tool_calls
        assert (call.status, call.error) == (ToolCallStatus.ERROR, "the hall light is broken")
        executed = rec.wait_for("agent_tools", timeout=10)
        assert executed.calls[0].is_error and "Traceback" not in executed.calls[0].output
        assert conv.is_open()


def test_a_slow_tool_stops_neither_audio_nor_events(tool_server: LocalServer) -> None:
    entered, release = threading.Event(), threading.Event()
    during: dict[str, Any] = {}

    def slow_lookup() -> str:
        entered.set()
        release.wait(10)
        return "the answer"

    rec = Recorder()
    audio = BufferAudio()
    with Conversation(tool_server.token("caller", "tool-slow"), tool_server.url, audio=audio,
                      client_tools={"slow_lookup": slow_lookup}, **rec.callbacks()) as conv:
        conv.wait_for_reply(timeout=30)

        def watch() -> None:  # while the tool blocks its thread for 3 s
            assert entered.wait(20)
            before, spoken = conv.stats(), audio.played_seconds()
            time.sleep(3)  # the tool's duration: what is measured is what happened meanwhile
            after = conv.stats()
            during.update(captured=after.frames_captured - before.frames_captured,
                          played_s=audio.played_seconds() - spoken,
                          stream=after.session_messages + after.session_ignored
                          - before.session_messages - before.session_ignored)
            release.set()
        watcher = threading.Thread(target=watch)
        watcher.start()
        reply = conv.ask("a slow one", timeout=30)
        watcher.join(10)
        assert reply.text == "Found: the answer.", reply
        # the speaker kept its clock and the microphone was sent, 10 ms at a time
        assert during["played_s"] >= 2.5 and during["captured"] >= 250, during
        assert during["stream"] >= 1, during  # the agent's session stream was read meanwhile
        assert reply.tool_calls[0].duration_s >= 3


def test_a_participant_that_is_not_an_agent_cannot_call_tools(tool_server: LocalServer) -> None:
    ran = threading.Event()
    rec = Recorder()
    with Conversation(tool_server.token("caller", "tool-refused"), tool_server.url, audio=BufferAudio(),
                      client_tools={"set_light": lambda **_: ran.set()}, **rec.callbacks()) as conv:
        conv.wait_for_reply(timeout=30)

        async def intruder() -> rtc.RpcError | str:
            room, _ = await connect(tool_server, "intruder", "tool-refused")
            try:
                return await room.local_participant.perform_rpc(destination_identity="caller", method="set_light",
                                                                payload='{"on": true}')
            except rtc.RpcError as exc:
                return exc
            finally:
                await room.disconnect()
        error = run(intruder())
        assert isinstance(error, rtc.RpcError) and "only agent participants" in error.message
        assert not ran.is_set() and conv.stats().tool_calls_refused == 1
        assert rec.wait_for("tool_call").status == ToolCallStatus.REFUSED
