"""One conversation, two transports: the same public-API conversation over
LiveKit (a ScriptedAgent in a room, over real WebRTC) and over Speko's
realtime WebSocket (the offline speech-to-speech agent), wherever the
features overlap."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from conv import Recorder
from test_realtime_conversation import silence, tone, wait_until

from speko_sync import BufferAudio, Conversation, DisconnectReason, ErrorCode, Mode, SpekoClientError, Status
from speko_sync.testing import LocalServer

TRANSPORTS = ["livekit", "realtime"]


class FarEnd:
    """The agent of a conversation, whichever the transport."""

    def __init__(self, server: LocalServer, transport: str, room: str) -> None:
        self.server, self.transport, self.room = server, transport, room
        self.agent = server.add_agent(room, greeting="Hello from the agent.") if transport == "livekit" else None
        if transport == "realtime":
            server.realtime.greeting = "Hello from the agent."
            server.realtime.will_hear("I have a question")

    def join(self, rec: Recorder, **options: Any) -> Conversation:
        callbacks = rec.callbacks()
        if self.transport == "livekit":
            return Conversation(self.server.token("user", self.room), self.server.url, **callbacks, **options)
        return Conversation.from_session(self.server.realtime_session(), **callbacks, **options)

    def voiced_ms(self) -> float:
        """Milliseconds of the user's audio the agent received with a voice in
        it (10 ms frames peaking above about -30 dBFS)."""
        if self.agent is not None:
            heard, rate = self.agent.received_audio("user"), 48000
        else:
            session = self.server.realtime.sessions[-1]
            heard, rate = session.received_audio(), session.input_rate
        frame = rate // 100
        frames = heard[:len(heard) // frame * frame].reshape(-1, frame)
        return 10.0 * float((np.abs(frames.astype(np.int32)).max(axis=1, initial=0) > 1000).sum())

    def call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        """The agent calls a client tool and returns what it answered."""
        if self.agent is not None:
            return self.agent.call_tool("user", name, json.dumps(arguments))
        session = self.server.realtime.sessions[-1]
        output = session.call_tool(name, arguments).result(15)
        assert output is not None, "the client did not answer the tool call"
        return output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_same_conversation_over_both_transports(speko_server: LocalServer, transport: str,
                                                    request: pytest.FixtureRequest) -> None:
    far = FarEnd(speko_server, transport, request.node.name.replace("[", "_").replace("]", ""))
    rec = Recorder()
    audio = BufferAudio(np.concatenate([silence(3.0), tone(0.8)]))
    lights: list[bool] = []
    done = threading.Event()

    def set_light(on: bool) -> str:
        lights.append(on)
        done.set()
        return "ok"

    conv = far.join(rec, audio=audio, client_tools={"set_light": set_light}, connect_timeout=15)
    with conv:
        assert conv.status == Status.CONNECTED and conv.transport == transport
        rec.wait_for("connected")
        # the greeting: transcribed, heard, and the mode follows it
        greeting = rec.wait_for("message", lambda m: m.is_final and m.source.value == "agent", timeout=15)
        assert greeting.text == "Hello from the agent."
        rec.wait_for("mode_changed", lambda m: m == Mode.SPEAKING, timeout=10)
        # the user speaks; the agent answers, with a user turn in the transcript first
        reply = conv.wait_for_reply(timeout=25)
        sources = [m.source.value for m in conv.transcript()]
        assert sources[:3] == ["agent", "user", "agent"] and reply.text == conv.transcript()[-1].text
        assert far.voiced_ms() > 500  # the user's 0.8 s
        # the microphone: muted, a voice is not sent
        conv.set_mic_muted(True)
        assert conv.mic_muted
        heard = far.voiced_ms()
        audio.feed(tone(1.5, 600))
        assert audio.wait_until_fed(10)
        conv.set_mic_muted(False)
        audio.feed(tone(1.0, 600))
        wait_until(lambda: far.voiced_ms() > heard + 500, timeout=10, what="the voice after unmuting")
        assert far.voiced_ms() - heard < 1200  # the unmuted second, not the muted 1.5 s
        # a client tool, called by the agent
        answer = far.call_tool("set_light", {"on": True})
        assert lights == [True] and "ok" in answer
        call = rec.wait_for("tool_call")
        assert call.name == "set_light" and call.status.value == "ok"
        # volume, stats, events
        conv.set_volume(0.5)
        assert conv.volume == 0.5
        stats = conv.stats()
        assert stats.frames_played > 100 and stats.frames_captured > 100 and stats.tool_calls == 1
        assert any(e.kind == "message" for e in conv.poll_events())
    details = conv.wait_for_end(5)
    assert details.reason == DisconnectReason.USER and conv.status == Status.DISCONNECTED
    assert rec.of("disconnected") == [details]
    with pytest.raises(SpekoClientError) as caught:
        conv.set_mic_muted(True)
    assert caught.value.code == ErrorCode.NOT_CONNECTED


def test_interrupt_is_a_clear_error_on_livekit(speko_server: LocalServer) -> None:
    far = FarEnd(speko_server, "livekit", "interrupt-livekit")
    conv = far.join(Recorder(), audio=BufferAudio())
    with conv:
        for method in (conv.interrupt, conv.commit_user_turn):
            with pytest.raises(SpekoClientError, match="the livekit transport cannot") as caught:
                method()
            assert caught.value.code == ErrorCode.UNSUPPORTED
        assert conv.status == Status.CONNECTED


def test_bad_transport_arguments_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="transport must be one of 'livekit', 'realtime'"):
        Conversation("t", "ws://127.0.0.1:1", transport="daily")
    with pytest.raises(ValueError, match="conversation_id"):
        Conversation("t", "ws://127.0.0.1:1", conversation_id="x")
    with pytest.raises(ValueError, match="'daily' is not supported"):
        Conversation.from_session({"transport": "daily", "transportToken": "t", "transportUrl": "wss://x"})
