"""The offline realtime agent, driven by a raw websockets client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from speko_sync.testing._realtime import RealtimeEndpoint, RealtimeServer, serve_realtime
from speko_sync.testing._realtime_agent import RealtimeAgentSession
from speko_sync.testing._realtime_voice import DEFAULT_GREETING, ToolTrigger, speech_audio

T = TypeVar("T")
FRAME_S = 0.02


@pytest.fixture
def server() -> Iterator[RealtimeServer]:
    with RealtimeServer(RealtimeEndpoint()) as srv:
        yield srv


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def reply_bytes(text: str, rate: int = 24000) -> int:
    return len(speech_audio(text, rate)) * 2


class Client:
    """A raw client: keeps every frame it receives, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any] | bytes] = []
        self.audio_times: list[float] = []
        self.closed: ConnectionClosed | None = None
        self.ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.audio_times.append(time.monotonic())
                    self.frames.append(message)
                else:
                    self.frames.append(json.loads(message))
                async with self._changed:
                    self._changed.notify_all()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self.ended = True
            async with self._changed:
                self._changed.notify_all()

    def json(self, t: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and (t is None or f.get("t") == t)
                and all(f.get(k) == v for k, v in fields.items())]

    @property
    def audio(self) -> bytes:
        return b"".join(f for f in self.frames if isinstance(f, bytes))

    async def wait_for(self, predicate: Callable[[], T], what: str, timeout: float = 10.0) -> T:
        async with self._changed:
            try:
                return await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                kinds = [f["t"] if isinstance(f, dict) else len(f) for f in self.frames]
                raise AssertionError(f"no {what} within {timeout} s; frames: {kinds}") from None

    async def frame(self, t: str, what: str | None = None, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        frames = await self.wait_for(lambda: self.json(t, **fields), what or f"{t} {fields}", timeout)
        return frames[0]

    async def wait_ended(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.ended, "end of the connection", timeout)

    async def send_audio(self, samples: np.ndarray, rate: int, until: Callable[[], object] | None = None) -> None:
        """Send ``samples`` in 20 ms frames at real time (stopping early once ``until()``)."""
        step = int(FRAME_S * rate)
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(samples), step)):
            if until is not None and until():
                return
            await self.ws.send(samples[offset:offset + step].astype("<i2").tobytes())
            await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_S - time.monotonic()))


@contextlib.asynccontextmanager
async def session_client(answer: dict[str, Any]) -> AsyncIterator[Client]:
    async with connect(answer["wsUrl"], subprotocols=[Subprotocol(answer["wsToken"])], proxy=None,
                       compression=None, open_timeout=5, max_size=None) as ws:
        client = Client(ws)
        try:
            yield client
        finally:
            await ws.close()
            await client._reader


async def utterance(client: Client, rate: int = 24000, seconds: float = 0.2) -> None:
    """Speak ``seconds`` of tone, then commit: the agent hears one utterance at once."""
    await client.send_audio(tone(seconds, rate), rate)
    await client.ws.send(json.dumps({"t": "control", "action": "commit"}))


async def answered(client: Client, text: str) -> dict[str, Any]:
    """The agent's answer ``text``, once all of its audio and its usage arrived."""
    final = await client.frame("transcript", role="assistant", text=text, final=True)
    index = client.frames.index(final)
    await client.wait_for(lambda: any(isinstance(f, dict) and f["t"] == "usage" for f in client.frames[index:]),
                          f"usage after {text!r}")
    return final


def test_ready_frame_and_echoed_subprotocol(server: RealtimeServer) -> None:
    server.endpoint.greeting = None
    answer = server.mint("s-1")
    assert answer["sessionId"] == "s-1" and answer["wsUrl"] == server.url + "/realtime"
    assert (answer["inputSampleRate"], answer["outputSampleRate"]) == (24000, 24000)
    expires = datetime.fromisoformat(answer["expiresAt"].replace("Z", "+00:00"))
    assert 890 < (expires - datetime.now(timezone.utc)).total_seconds() <= 900

    async def main() -> RealtimeAgentSession:
        async with session_client(answer) as client:
            assert client.ws.subprotocol == answer["wsToken"]
            ready = await client.frame("ready")
            assert client.frames[0] == ready == {"t": "ready", "inputSampleRate": 24000, "outputSampleRate": 24000}
            session = server.endpoint.wait_for_session(5)
        await client.wait_ended()
        assert client.closed is None  # a clean close
        return session

    session = run(main())
    session.wait_until(lambda s: s.closed.is_set(), 5)
    assert session.session_id == "s-1" and session.client_close == (1000, "")
    assert session.sent_frames == [{"t": "ready", "inputSampleRate": 24000, "outputSampleRate": 24000}]


@pytest.mark.parametrize("case", ["unknown", "expired", "none", "two", "rejected"])
def test_bad_tokens_are_refused_with_401(server: RealtimeServer, case: str) -> None:
    answer = server.mint(ttl_s=-1 if case == "expired" else 900)
    protocols = {"unknown": ["not-a-token"], "none": [], "two": [answer["wsToken"], "x"]}.get(case, [answer["wsToken"]])
    server.endpoint.reject_tokens = case == "rejected"

    async def main() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(answer["wsUrl"], subprotocols=[Subprotocol(p) for p in protocols] or None,
                               proxy=None, open_timeout=5):
                pass
        assert refused.value.response.status_code == 401

    run(main())
    assert server.endpoint.sessions == []


def test_greeting_transcript_then_audio_in_a_burst(server: RealtimeServer) -> None:
    duration = len(speech_audio(DEFAULT_GREETING, 24000)) / 24000

    async def main() -> Client:
        async with session_client(server.mint()) as client:
            await answered(client, DEFAULT_GREETING)
            return client

    client = run(main())
    transcripts = client.json("transcript")
    assert [t["final"] for t in transcripts] == [False, False, True]
    assert transcripts[0]["text"] == "Hello! I" and transcripts[1]["text"] == "Hello! I am the"
    assert all(t["role"] == "assistant" for t in transcripts)
    assert client.frames.index(transcripts[-1]) < next(i for i, f in enumerate(client.frames) if isinstance(f, bytes))
    audio = np.frombuffer(client.audio, dtype="<i2")
    assert len(client.audio) == reply_bytes(DEFAULT_GREETING)
    assert 0.28 * 32767 < np.abs(audio).max() <= 0.3 * 32767 + 1
    assert np.abs(audio[:24]).max() < 0.3 * 32767 * 0.25  # faded in
    span = client.audio_times[-1] - client.audio_times[0]
    assert span < duration / 2.5, f"{duration:.2f} s of audio took {span:.2f} s"  # 5x real time, with margin
    assert client.json("usage") == [{"t": "usage", "inputAudioTokens": 0,
                                     "outputAudioTokens": int(duration * 1000 // 20)}]
    session = server.endpoint.sessions[0]
    assert [text for _, text in session.replies_started] == [DEFAULT_GREETING]
    assert session.sent_audio_ms == pytest.approx(duration * 1000)


def test_an_utterance_is_heard_and_answered(server: RealtimeServer) -> None:
    sent = np.concatenate([tone(0.8, 24000), np.zeros(int(1.0 * 24000), dtype=np.int16)])

    async def main() -> tuple[Client, RealtimeAgentSession, float]:
        async with session_client(server.mint()) as client:
            session = server.endpoint.wait_for_session(5)
            session.will_hear("what time is it")
            await answered(client, DEFAULT_GREETING)
            await asyncio.to_thread(session.wait_until, lambda s: not s.agent_speaking, 10, "greeting played")
            heard = lambda: client.json("transcript", role="user")  # noqa: E731
            start = time.monotonic()
            await client.send_audio(sent, 24000, until=heard)
            user = await client.frame("transcript", role="user")
            latency = time.monotonic() - start
            assert user == {"t": "transcript", "role": "user", "text": "what time is it", "final": True}
            await answered(client, "You said: what time is it")
            return client, session, latency

    client, session, latency = run(main())
    assert 0.8 + 0.45 < latency < 0.8 + 1.2, latency  # heard after 500 ms of silence
    assert session.user_turns == ["what time is it"] and session.interruptions_sent == 0
    received = session.received_audio()
    assert np.array_equal(received, sent[:len(received)]) and len(received) >= int(1.3 * 24000)
    assert all(n == 960 for _, n in session.audio_frames)
    answer = "You said: what time is it"
    assert [text for _, text in session.replies_started] == [DEFAULT_GREETING, answer]
    assert session.replies_started[1][0] - session.audio_frames[0][0] > 0.8 + 0.5 + 0.2 - 0.05  # reply delay
    usage = client.json("usage")[-1]
    assert usage["outputAudioTokens"] == (reply_bytes(DEFAULT_GREETING) + reply_bytes(answer)) // 2 // 480
    assert usage["inputAudioTokens"] == int(session.received_audio_ms // 20)
    assert usage["inputAudioTokens"] >= 60


def test_commit_ends_an_utterance_at_once_and_unscripted_speech_is_labelled(server: RealtimeServer) -> None:
    server.endpoint.greeting = None
    server.endpoint.max_audio_s = 0.1

    async def main() -> Client:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            await utterance(client, seconds=0.3)
            await answered(client, "You said: (speech, 0.3 s)")
            return client

    client = run(main())
    assert client.json("transcript", role="user") == [
        {"t": "transcript", "role": "user", "text": "(speech, 0.3 s)", "final": True}]
    session = server.endpoint.sessions[0]
    assert session.commits == 1 and session.ignored == 0
    assert np.array_equal(session.received_audio(), tone(0.3, 24000)[-2400:])  # only the newest 0.1 s kept


@pytest.mark.parametrize(("heard", "on"), [("turn the light on please", True), ("light off", False)])
def test_tool_call_round_trip(server: RealtimeServer, heard: str, on: bool) -> None:
    server.endpoint.greeting = None
    server.endpoint.will_hear(heard)

    async def main() -> dict[str, Any]:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            await utterance(client)
            call = await client.frame("tool_call")
            assert call["name"] == "set_light" and json.loads(call["arguments"]) == {"on": on}
            await client.ws.send(json.dumps({"t": "tool_result", "callId": call["callId"], "output": "done, 3 lamps"}))
            await answered(client, "The light tool said: done, 3 lamps")
            return call

    call = run(main())
    assert isinstance(call["arguments"], str)
    session = server.endpoint.sessions[0]
    assert session.tool_results == {call["callId"]: "done, 3 lamps"}
    assert session.user_turns == [heard]


def test_an_unanswered_tool_call_times_out(server: RealtimeServer) -> None:
    server.endpoint.greeting = None
    server.endpoint.tool_timeout_s = 0.3
    server.endpoint.will_hear("the light")

    async def main() -> None:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            await utterance(client)
            await client.frame("tool_call")
            await answered(client, "The tool did not answer")

    run(main())
    assert server.endpoint.sessions[0].tool_results == {}


def test_custom_tool_triggers(server: RealtimeServer) -> None:
    server.endpoint.greeting = None
    server.endpoint.tools = [ToolTrigger(r"\bweather\b", "get_weather", {"city": "Oslo"}),
                             ToolTrigger(r"\btime\b", "get_time", lambda text: {"asked": text}, "It is {output}.")]
    server.endpoint.will_hear("what time is it")

    async def main() -> dict[str, Any]:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            await utterance(client)
            call = await client.frame("tool_call")
            await client.ws.send(json.dumps({"t": "tool_result", "callId": call["callId"], "output": "noon"}))
            await answered(client, "It is noon.")
            return call

    call = run(main())
    assert call["name"] == "get_time" and json.loads(call["arguments"]) == {"asked": "what time is it"}


LONG = "This is a long reply that the client will not let the agent finish, " * 3


def test_talking_over_the_agent_interrupts_it(server: RealtimeServer) -> None:
    server.endpoint.greeting = LONG
    server.endpoint.burst_speed = 2.0

    async def main() -> tuple[Client, int, int]:
        async with session_client(server.mint()) as client:
            await client.wait_for(lambda: client.audio_times, "agent audio")
            interrupted = lambda: client.json("interruption")  # noqa: E731
            await client.send_audio(tone(2.0, 24000), 24000, until=interrupted)
            frame = await client.frame("interruption")
            before = len(b"".join(f for f in client.frames[:client.frames.index(frame)] if isinstance(f, bytes)))
            await client.frame("usage")
            return client, before, len(client.audio)

    client, before, total = run(main())
    full = reply_bytes(LONG)
    assert before == total, "audio was sent after the interruption"
    assert total < full * 0.3, f"{total} of {full} bytes sent"
    session = server.endpoint.sessions[0]
    assert session.interruptions_sent == 1 and session.interrupts == 0 and not session.agent_speaking
    assert session.sent_audio_ms == pytest.approx(total / 48)
    assert client.json("usage")[0]["outputAudioTokens"] == int(total / 48 // 20)


def test_a_client_interrupt_stops_the_reply(server: RealtimeServer) -> None:
    server.endpoint.greeting = LONG
    server.endpoint.burst_speed = 2.0

    async def main() -> Client:
        async with session_client(server.mint()) as client:
            await client.wait_for(lambda: client.audio_times, "agent audio")
            await client.ws.send(json.dumps({"t": "interrupt"}))
            await client.frame("usage")
            return client

    client = run(main())
    assert len(client.audio) < reply_bytes(LONG) * 0.3
    assert client.json("interruption") == []
    session = server.endpoint.sessions[0]
    assert session.interrupts == 1 and session.interruptions_sent == 0 and not session.agent_speaking
    assert session.text_frames == [{"t": "interrupt"}]


def test_garbage_from_the_client_is_ignored(server: RealtimeServer) -> None:
    server.endpoint.greeting = None
    garbage: list[str | bytes] = ["not json", "[1,2]", '{"t":"nope"}', '"text"', '{"t":"tool_result","callId":7}',
                                  '{"t":"control","action":"jump"}', b"\x01\x02\x03"]

    async def main() -> None:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            for frame in garbage:
                await client.ws.send(frame)
            await utterance(client)
            await answered(client, "You said: (speech, 0.2 s)")

    run(main())
    session = server.endpoint.sessions[0]
    assert session.ignored == len(garbage)
    assert session.text_frames[:6] == ["not json", [1, 2], {"t": "nope"}, "text", {"t": "tool_result", "callId": 7},
                                       {"t": "control", "action": "jump"}]
    assert session.audio_frames[0][1] == 3 and session.received_audio_ms == pytest.approx(200)


def test_no_ready_then_the_agent_speaks_first(server: RealtimeServer) -> None:
    server.endpoint.no_ready = True

    async def main() -> Client:
        async with session_client(server.mint()) as client:
            session = server.endpoint.wait_for_session(5)
            await client.ws.send('{"t":"hello"}')
            await utterance(client)
            await asyncio.to_thread(session.wait_until, lambda s: s.user_turns, 5)
            await asyncio.wrap_future(session.say("late"))
            await client.frame("usage")
            return client

    client = run(main())
    assert client.frames[0] == {"t": "transcript", "role": "assistant", "text": "late", "final": True}
    assert client.json("ready") == [] and len(client.json("transcript")) == 1  # no greeting, no answer
    session = server.endpoint.sessions[0]
    assert session.user_turns == ["(speech, 0.2 s)"] and session.ignored == 1


def test_error_frame_and_raw_frames_keep_the_session(server: RealtimeServer) -> None:
    server.endpoint.greeting = None

    async def main() -> Client:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            session = server.endpoint.wait_for_session(5)
            assert await asyncio.wrap_future(session.send_error("rate_limited", "slow down"))
            await asyncio.wrap_future(session.send_raw('{"t":"nope"}'))
            await asyncio.wrap_future(session.send_raw(b"\x00"))
            await asyncio.wrap_future(session.say("still here"))
            await client.frame("usage")
            return client

    client = run(main())
    error = {"t": "error", "code": "rate_limited", "message": "slow down"}
    assert client.frames[1:4] == [error, {"t": "nope"}, b"\x00"]
    assert client.json("transcript", final=True)[0]["text"] == "still here"
    assert client.closed is None


@pytest.mark.parametrize("code", [4000, 1011])
def test_server_close_with_a_code(server: RealtimeServer, code: int) -> None:
    async def main() -> tuple[Client, RealtimeAgentSession]:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            session = server.endpoint.wait_for_session(5)
            session.close(code, "policy")
            await client.wait_ended()
            return client, session

    client, session = run(main())
    assert client.closed is not None and client.closed.rcvd is not None
    assert (client.closed.rcvd.code, client.closed.rcvd.reason) == (code, "policy")
    session.wait_until(lambda s: s.closed.is_set(), 5)
    assert session.server_close == (code, "policy") and session.client_close is None


def test_end_frame_then_close_1000(server: RealtimeServer) -> None:
    async def main() -> Client:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            server.endpoint.wait_for_session(5).end("done")
            await client.wait_ended()
            return client

    client = run(main())
    assert client.json()[-1] == {"t": "end", "reason": "done"}
    assert client.closed is None and client.ws.close_code == 1000


def test_drop_silently_closes_with_no_close_frame(server: RealtimeServer) -> None:
    async def main() -> Client:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            server.endpoint.wait_for_session(5).drop_silently()
            await client.wait_ended()
            return client

    client = run(main())
    assert client.closed is not None and client.closed.rcvd is None
    session = server.endpoint.sessions[0]
    session.wait_until(lambda s: s.closed.is_set(), 5)
    assert session.client_close is None


@pytest.mark.parametrize(("per_session", "rates"), [(True, (16000, 16000)), (False, (16000, 24000))])
def test_16k_rates_are_negotiated(server: RealtimeServer, per_session: bool, rates: tuple[int, int]) -> None:
    server.endpoint.greeting = "Hi."
    if per_session:
        answer = server.mint(input_rate=rates[0], output_rate=rates[1])
    else:
        server.endpoint.input_rate = 16000
        answer = server.mint()
    assert (answer["inputSampleRate"], answer["outputSampleRate"]) == rates

    async def main() -> Client:
        async with session_client(answer) as client:
            ready = await client.frame("ready")
            assert (ready["inputSampleRate"], ready["outputSampleRate"]) == rates
            await answered(client, "Hi.")
            session = server.endpoint.wait_for_session(5)
            await asyncio.to_thread(session.wait_until, lambda s: not s.agent_speaking, 5)
            await utterance(client, rate=16000, seconds=0.4)
            await answered(client, "You said: (speech, 0.4 s)")
            return client

    client = run(main())
    expected = reply_bytes("Hi.", rates[1]) + reply_bytes("You said: (speech, 0.4 s)", rates[1])
    assert len(client.audio) == expected
    session = server.endpoint.sessions[0]
    assert (session.input_rate, session.output_rate) == rates and session.interruptions_sent == 0
    assert session.received_audio_ms == pytest.approx(400) and len(session.received_audio()) == 6400


def test_the_endpoint_serves_on_the_callers_loop() -> None:
    endpoint = RealtimeEndpoint(greeting="Hi.", burst_speed=None)

    async def main() -> Client:
        runner, url = await serve_realtime(endpoint)
        try:
            async with session_client(endpoint.mint(base_url=url.replace("ws://", "http://"))) as client:
                await answered(client, "Hi.")
                assert endpoint.loop is asyncio.get_running_loop()
            return client
        finally:
            await runner.cleanup()

    client = run(main())
    assert len(client.audio) == reply_bytes("Hi.")  # the 0.5 s minimum
    assert endpoint.sessions[0].closed.is_set()


def test_wait_until_names_what_it_waited_for(server: RealtimeServer) -> None:
    server.endpoint.greeting = None

    async def main() -> RealtimeAgentSession:
        async with session_client(server.mint()) as client:
            await client.frame("ready")
            session = server.endpoint.wait_for_session(5)
        return session

    session = run(main())
    with pytest.raises(TimeoutError, match=r"s\.commits >= 1") as failed:
        session.wait_until(lambda s: s.commits >= 1, 0.05)
    assert "closed" in str(failed.value)
    with pytest.raises(TimeoutError, match="no new realtime session"):
        server.endpoint.wait_for_session(0.05)
