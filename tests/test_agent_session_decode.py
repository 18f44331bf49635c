"""LiveKit Agents' session stream (``lk.agent.session``), pure decoding: each
``AgentSessionMessage`` kind the library surfaces, built with livekit-protocol's
own protobufs, and what it ignores."""

from __future__ import annotations

import pytest
from livekit.protocol.agent_pb import agent_session as pb

from speko_sync import AgentState, AgentToolCall, Interruption, MessageSource, TurnMetrics, UserState
from speko_sync._agent_session import InvalidSessionMessage, decode


def event_bytes(**kwargs: object) -> bytes:
    return pb.AgentSessionMessage(event=pb.AgentSessionEvent(**kwargs)).SerializeToString()


def test_agent_and_user_state_changes() -> None:
    E = pb.AgentSessionEvent
    assert decode(event_bytes(agent_state_changed=E.AgentStateChanged(
        old_state=pb.AS_THINKING, new_state=pb.AS_SPEAKING))) == ("agent_state", AgentState.SPEAKING)
    assert decode(event_bytes(user_state_changed=E.UserStateChanged(
        old_state=pb.US_LISTENING, new_state=pb.US_SPEAKING))) == ("user_state", UserState.SPEAKING)
    assert decode(event_bytes(user_state_changed=E.UserStateChanged(new_state=pb.US_AWAY))) == \
        ("user_state", UserState.AWAY)


def test_an_assistant_message_is_a_turn_with_the_agents_metrics_in_seconds() -> None:
    metrics = pb.MetricsReport(llm_node_ttft=0.25, tts_node_ttfb=0.125, e2e_latency=0.9, end_of_turn_delay=0.5)
    metrics.started_speaking_at.FromMilliseconds(1_700_000_000_250)
    message = pb.ChatMessage(id="item_1", role=pb.ASSISTANT, interrupted=True, metrics=metrics,
                             content=[pb.ChatMessage.ChatContent(text="Hello"),
                                      pb.ChatMessage.ChatContent(text="there.")])
    kind, turn = decode(event_bytes(conversation_item_added=pb.AgentSessionEvent.ConversationItemAdded(
        item=pb.ChatContext.ChatItem(message=message))))
    assert kind == "turn"
    assert (turn.source, turn.text, turn.interrupted, turn.id) == (MessageSource.AGENT, "Hello there.", True, "item_1")
    assert turn.metrics == TurnMetrics(started_speaking_at=1_700_000_000.25, llm_node_ttft=0.25,
                                       tts_node_ttfb=0.125, e2e_latency=0.9, end_of_turn_delay=0.5)
    assert turn.response_latency_s is None


def test_a_user_message_without_metrics_is_a_users_turn_and_system_items_are_not_turns() -> None:
    user = pb.ChatContext.ChatItem(message=pb.ChatMessage(role=pb.USER, content=[
        pb.ChatMessage.ChatContent(text="what is the weather")]))
    kind, turn = decode(event_bytes(conversation_item_added=pb.AgentSessionEvent.ConversationItemAdded(item=user)))
    assert kind == "turn"
    assert (turn.source, turn.text, turn.metrics) == (MessageSource.USER, "what is the weather", None)
    system = pb.ChatContext.ChatItem(message=pb.ChatMessage(role=pb.SYSTEM))
    call = pb.ChatContext.ChatItem(function_call=pb.FunctionCall(name="set_light"))
    for item in (system, call):
        assert decode(event_bytes(conversation_item_added=pb.AgentSessionEvent.ConversationItemAdded(
            item=item))) is None


def test_tools_the_agent_executed_pair_calls_with_their_outputs() -> None:
    executed = pb.AgentSessionEvent.FunctionToolsExecuted(
        function_calls=[pb.FunctionCall(call_id="c1", name="set_light", arguments='{"on": true}'),
                        pb.FunctionCall(call_id="c2", name="current_time", arguments="{}")],
        function_call_outputs=[pb.FunctionCallOutput(call_id="c2", output="12:00"),
                               pb.FunctionCallOutput(call_id="c1", output="broken", is_error=True)])
    kind, value = decode(event_bytes(function_tools_executed=executed))
    assert kind == "agent_tools"
    assert value.calls == (AgentToolCall("set_light", '{"on": true}', "broken", True, "c1"),
                           AgentToolCall("current_time", "{}", "12:00", False, "c2"))


def test_interruptions_usage_and_agent_errors() -> None:
    E = pb.AgentSessionEvent
    assert decode(event_bytes(overlapping_speech=E.OverlappingSpeech(is_interruption=True, detection_delay=0.3))) \
        == ("interruption", Interruption(is_interruption=True, detection_delay_s=0.3))
    assert decode(event_bytes(agent_false_interruption=E.AgentFalseInterruption(resumed=True))) == \
        ("interruption", Interruption(is_interruption=False, false_alarm=True, resumed=True))
    usage = pb.AgentSessionUsage(model_usage=[
        pb.ModelUsage(llm=pb.LLMModelUsage(provider="speko", model="m1", input_tokens=12, output_tokens=30)),
        pb.ModelUsage(tts=pb.TTSModelUsage(provider="speko", model="v1", characters_count=80, audio_duration=4.5))])
    kind, models = decode(event_bytes(session_usage_updated=E.SessionUsageUpdated(usage=usage)))
    assert kind == "usage"
    assert [(m.kind, m.provider, m.model, dict(m.values)) for m in models] == [
        ("llm", "speko", "m1", {"input_tokens": 12.0, "output_tokens": 30.0}),
        ("tts", "speko", "v1", {"characters_count": 80.0, "audio_duration": 4.5})]
    assert decode(event_bytes(error=E.Error(message="the TTS failed"))) == ("error", "the TTS failed")


def test_what_is_not_surfaced_decodes_to_none_and_garbage_is_an_error() -> None:
    E = pb.AgentSessionEvent
    assert decode(event_bytes(eot_prediction=E.EotPrediction(probability=0.5))) is None
    assert decode(event_bytes(user_input_transcribed=E.UserInputTranscribed(transcript="hi"))) is None
    assert decode(pb.AgentSessionMessage(request=pb.SessionRequest(request_id="r")).SerializeToString()) is None
    assert decode(pb.AgentSessionMessage().SerializeToString()) is None  # a kind of a newer protocol
    assert decode(event_bytes()) is None
    with pytest.raises(InvalidSessionMessage, match="not an AgentSessionMessage"):
        decode(b"\xff\xff\xff\xff not protobuf")
