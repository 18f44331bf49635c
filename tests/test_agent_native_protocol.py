"""ScriptedAgent speaking LiveKit Agents' native protocol (here with the JSON packets
too, protocol="both"), heard by the real
livekit.rtc client: ``lk.agent.state``, ``lk.transcription`` streams (the user's on
the user's behalf), legacy transcriptions, typed turns on ``lk.chat``; the
protocol switch (``both``, ``livekit``, ``json``); client tools called over
LiveKit RPC (``call_tool``) and LiveKit Agents' session stream
(``lk.agent.session``)."""

from __future__ import annotations

import asyncio

import pytest
from livekit import rtc
from livekit.protocol.agent_pb import agent_session as agent_pb
from lk import Mic, join_with_agent, join_with_session, metric_names, run

from speko_sync.testing import LocalServer, ScriptedAgent, tone
from speko_sync.testing import _lk_protocol as lk

pytestmark = [pytest.mark.webrtc, pytest.mark.speko_agent(protocol="both")]

GREETING = "Hello! I'm the local Speko test agent."


def test_greeting_states_and_transcripts_by_both_paths(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, recorder, view, _, agent = await join_with_agent(speko_server, speko_agent.room)
        assert agent.attributes.get("lk.agent.state") in ("listening", "speaking")  # published at join
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await view.wait("listening", lambda: view.states[-1:] == ["listening"] and "speaking" in view.states)
        opened = next(attrs for who, attrs in view.opened if who == "agent")
        assert opened["lk.transcription_final"] == "false"  # final only in the trailer
        assert opened["lk.transcribed_track_id"] in [p.sid for p in agent.track_publications.values()]
        await view.wait("legacy final", lambda: ("agent", GREETING, True) in view.legacy)
        partials = [t for who, t, final in view.legacy if who == "agent" and not final]
        assert partials == [" ".join(GREETING.split()[:i + 1]) for i in range(len(GREETING.split()))]
        (data,) = [d for _, d in recorder.data()]  # and the JSON greeting, once
        assert data == {"type": "agent_message", "text": GREETING}
        await room.disconnect()
    run(scenario())


def test_typed_turn_on_lk_chat_is_answered(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _, view, _, _ = await join_with_agent(speko_server, speko_agent.room)
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await room.local_participant.send_text("how are you", topic="lk.chat")
        await view.wait("answer", lambda: "You said: how are you." in view.final_texts("agent"))
        assert speko_agent.chats == [("user", "how are you")]
        assert view.states.index("thinking") > view.states.index("speaking")
        await room.disconnect()
    run(scenario())


def test_spoken_turn_is_transcribed_on_the_users_behalf(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _, view, _, _ = await join_with_agent(speko_server, speko_agent.room)
        mic = await Mic(room).publish()
        assert mic.publication is not None
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await mic.play(tone(300, 1.0))
        await mic.play(tone(300, 0.6, amplitude=0.0))
        await view.wait("user transcript", lambda: view.final_texts("user"))
        user_streams = [attrs for who, attrs in view.opened if who == "user"]
        assert [a["lk.transcription_final"] for a in user_streams] == ["false", "true"]
        assert len({a["lk.segment_id"] for a in user_streams}) == 1
        assert {a["lk.transcribed_track_id"] for a in user_streams} == {mic.publication.sid}
        assert view.final_texts("user")[0].startswith("[speech, ")
        said = view.final_texts("user")[0]
        await view.wait("legacy user final", lambda: ("user", said, True) in view.legacy)
        await view.wait("reply", lambda: any(t.startswith("I heard ") for t in view.final_texts("agent")))
        await room.disconnect()
    run(scenario())


@pytest.mark.parametrize("protocol", ["livekit", "json"])
def test_one_protocol_only(speko_server: LocalServer, protocol: str) -> None:
    agent = speko_server.add_agent("only", protocol=protocol)

    async def scenario() -> None:
        room, recorder, view, _, remote = await join_with_agent(speko_server, "only")
        if protocol == "livekit":
            await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
            assert recorder.of("data_received") == []
        else:
            await recorder.wait_for("data_received")
            await room.local_participant.send_text("anyone there", topic="lk.chat")
            await room.local_participant.publish_data(b"marker")
            await asyncio.to_thread(agent.wait_for_packet, lambda p: p.raw == b"marker")
            assert view.streams == [] and view.states == [] and agent.chats == []
            assert "lk.agent.state" not in remote.attributes
        await room.disconnect()
    run(scenario())


def test_unknown_protocol_is_refused(speko_server: LocalServer) -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        speko_server.add_agent("bad", protocol="sip")
    with pytest.raises(ValueError, match="agent state"):
        speko_server.add_agent("ok").set_state("dancing")


def test_the_user_sees_state_changes_in_order(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, _, view, _, _ = await join_with_agent(speko_server, speko_agent.room)
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await view.wait("listening", lambda: view.states[-1:] == ["listening"])
        await asyncio.to_thread(speko_agent.set_state, "thinking")
        await view.wait("thinking", lambda: view.states[-1:] == ["thinking"])
        await asyncio.to_thread(speko_agent.say_tone, 500, 0.3)
        await view.wait("back to listening", lambda: view.states[-3:] == ["thinking", "speaking", "listening"])
        assert all(a != b for a, b in zip(view.states, view.states[1:], strict=False))  # changes only
        await room.disconnect()
    run(scenario())


def test_call_tool_runs_the_clients_rpc_method_and_returns_its_answer_or_error(speko_server: LocalServer) -> None:
    agent = speko_server.add_agent("tools", greeting=None)

    async def scenario() -> None:
        room, _, _, _, _ = await join_with_agent(speko_server, "tools")
        calls: list[rtc.RpcInvocationData] = []
        never = asyncio.Event()

        async def set_light(data: rtc.RpcInvocationData) -> str:
            calls.append(data)
            if data.payload == "fail":
                raise rtc.RpcError(1500, "light is broken")
            if data.payload == "hang":
                await never.wait()
            return f"light set: {data.payload}"
        room.local_participant.register_rpc_method("set_light", set_light)
        await asyncio.to_thread(agent.wait_for, lambda: "user" in agent.ready_clients())
        answer = await asyncio.to_thread(agent.call_tool, "user", "set_light", '{"on": true}')
        assert answer == 'light set: {"on": true}'
        # as the SDK computes it: the callee's deadline is response_timeout - max_round_trip_latency
        assert (calls[0].caller_identity, calls[0].response_timeout) == ("agent", 3.0)
        assert await asyncio.to_thread(agent.call_tool, "user", "set_light", "v1", version=1) == "light set: v1"
        with pytest.raises(rtc.RpcError) as failed:
            await asyncio.to_thread(agent.call_tool, "user", "set_light", "fail")
        assert (failed.value.code, failed.value.message) == (1500, "light is broken")
        with pytest.raises(rtc.RpcError) as unknown:
            await asyncio.to_thread(agent.call_tool, "user", "dim_light", "{}")
        assert unknown.value.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD
        with pytest.raises(rtc.RpcError) as nobody:
            await asyncio.to_thread(agent.call_tool, "ghost", "set_light", "{}", max_round_trip_latency=0.5)
        assert nobody.value.code == rtc.RpcError.ErrorCode.CONNECTION_TIMEOUT
        with pytest.raises(rtc.RpcError) as slow:
            await asyncio.to_thread(agent.call_tool, "user", "set_light", "hang", 1.5, max_round_trip_latency=0.5)
        assert slow.value.code == rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT
        outcomes = [(c.method, c.payload, c.outcome if isinstance(c.outcome, str) else c.outcome.code)
                    for c in agent.tool_calls]
        assert outcomes == [("set_light", '{"on": true}', 'light set: {"on": true}'),
                            ("set_light", "v1", "light set: v1"), ("set_light", "fail", 1500),
                            ("dim_light", "{}", 1400), ("set_light", "{}", 1501), ("set_light", "hang", 1502)]
        await room.disconnect()
    run(scenario())


def test_a_client_calling_the_scripted_agent_gets_unsupported_method(speko_server: LocalServer) -> None:
    speko_server.add_agent("callee", greeting=None)

    async def scenario() -> None:
        room, _, _, _, agent = await join_with_agent(speko_server, "callee")
        with pytest.raises(rtc.RpcError) as refused:
            await room.local_participant.perform_rpc(destination_identity=agent.identity, method="anything",
                                                     payload="{}")
        assert refused.value.code == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD
        await room.disconnect()
    run(scenario())


def test_by_default_no_session_stream(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    async def scenario() -> None:
        room, view, session = await join_with_session(speko_server, speko_agent.room)
        await view.wait("greeting", lambda: GREETING in view.final_texts("agent"))
        await room.local_participant.send_text("hello", topic="lk.chat")
        await view.wait("answer", lambda: "You said: hello." in view.final_texts("agent"))
        await view.wait("listening", lambda: view.states[-1:] == ["listening"])
        assert session.raw == []
        await session.close()
        await room.disconnect()
    run(scenario())


def test_session_events_follow_the_conversation_as_the_real_worker_sends_them(speko_server: LocalServer) -> None:
    speko_server.add_agent("session", session_events=True, greeting="Hi there.")

    async def scenario() -> None:
        room, view, session = await join_with_session(speko_server, "session")
        mic = await Mic(room).publish()
        await session.wait("greeting item", lambda: len(session.items("assistant")) == 1)
        await view.wait("listening", lambda: view.states[-1:] == ["listening"])
        await room.local_participant.send_text("what is the weather", topic="lk.chat")
        await session.wait("answer item", lambda: len(session.items("assistant")) == 2)
        await session.wait("listening", lambda: session.kinds()[-1] == "agent speaking>listening")
        await mic.play(tone(300, 1.0))
        await mic.play(tone(300, 0.6, amplitude=0.0))
        await session.wait("spoken answer", lambda: len(session.items("assistant")) == 3)
        await session.wait("listening", lambda: session.kinds()[-1] == "agent speaking>listening")
        turn = ["agent listening>thinking", "agent thinking>speaking", "item message assistant",
                "agent speaking>listening"]
        assert session.kinds() == [
            "item agent_handoff", "agent initializing>listening",
            "agent listening>speaking", "item message assistant", "agent speaking>listening",
            "user listening>speaking", "user speaking>listening", "item message user", *turn,
            "user listening>speaking", "user speaking>listening", "user_input_transcribed", "item message user",
            *turn]
        greeting, typed, spoken = session.items("assistant")
        assert greeting.content[0].text == "Hi there." and typed.content[0].text == "You said: what is the weather."
        assert metric_names(greeting) == ["started_speaking_at", "stopped_speaking_at", "tts_node_ttfb"]
        assert metric_names(typed) == ["llm_node_ttfs", "llm_node_ttft", "started_speaking_at",
                                       "stopped_speaking_at", "tts_node_ttfb"]
        assert metric_names(spoken) == ["e2e_latency", *metric_names(typed)]
        assert 0 < spoken.metrics.e2e_latency < 5
        for message in (greeting, typed, spoken):
            assert message.id.startswith("item_") and not message.interrupted
            started = message.metrics.started_speaking_at.ToNanoseconds()
            assert 0 < started < message.metrics.stopped_speaking_at.ToNanoseconds()
        user_typed, user_spoken = session.items("user")
        assert user_typed.content[0].text == "what is the weather" and metric_names(user_typed) == []
        assert user_typed.HasField("metrics")  # present and empty, as the worker sends it
        assert user_spoken.content[0].text.startswith("[speech, ")
        assert metric_names(user_spoken) == ["end_of_turn_delay", "on_user_turn_completed_delay",
                                             "started_speaking_at", "stopped_speaking_at", "transcription_delay"]
        assert set(session.senders) == {"agent"}
        assert all(e.HasField("created_at") for e in session.events())
        await session.close()
        await room.disconnect()
    run(scenario(), timeout=90)


def test_session_messages_arrive_in_order_inline_or_chunked_and_raw_streams_as_sent(
        speko_server: LocalServer) -> None:
    agent = speko_server.add_agent("order", greeting=None)

    async def scenario() -> None:
        room, _, session = await join_with_session(speko_server, "order")
        await asyncio.to_thread(agent.wait_for, lambda: "user" in agent.ready_clients())

        def send() -> None:
            for i in range(40):
                agent.send_session_event(lk.user_input_transcribed(f"line {i}", final=i % 2 == 1))
            big = "many words " * 4000  # 44 kB: no longer one packet
            agent.send_session_event(lk.user_input_transcribed(big, final=True), to=["user"])
            agent.send_session_message(agent_pb.AgentSessionMessage(
                event=lk.agent_state_changed("listening", "thinking")))
            agent.send_raw_stream("lk.agent.session", b"\xff\x00 not a message")
        await asyncio.to_thread(send)
        await session.wait("all", lambda: len(session.raw) == 43)
        transcripts = [e.user_input_transcribed.transcript for e in session.events()[:41]]
        assert transcripts[:40] == [f"line {i}" for i in range(40)] and len(transcripts[40]) == 44000
        assert session.kinds()[-1] == "agent listening>thinking"
        assert session.raw[-1] == ("agent", b"\xff\x00 not a message")
        await session.close()
        await room.disconnect()
    run(scenario())


def test_session_events_need_the_native_protocol(speko_server: LocalServer) -> None:
    with pytest.raises(ValueError, match="native protocol"):
        speko_server.add_agent("json-session", protocol="json", session_events=True)
