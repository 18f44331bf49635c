"""The offline realtime agent: one speech-to-speech session per websocket.

A :class:`RealtimeAgentSession` runs on the loop that serves its websocket. It
greets, finds the user's utterances by energy, answers each with a transcript
and a synthetic voice sent in bursts, calls tools on the client and can be
made to misbehave. Its records are guarded by one condition, so blocking code
reads and waits on them from any thread; its actions are scheduled on its
loop and return ``concurrent.futures.Future`` objects.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from aiohttp import WSMsgType, web

from .._loop import within
from ._realtime_voice import AgentSettings, EnergyDetector, ToolTrigger, speech_audio

log = logging.getLogger("speko_sync.testing")

_T = TypeVar("_T")
_R = TypeVar("_R", bound="SessionRecords")


class SessionRecords:
    """What one realtime session received and did; every read is thread-safe."""

    def __init__(self, input_rate: int, output_rate: int, max_audio_s: float) -> None:
        self.input_rate = input_rate
        self.output_rate = output_rate
        self._cond = threading.Condition(threading.RLock())
        self._max_samples = max(1, int(max_audio_s * input_rate))
        self._audio: collections.deque[np.ndarray] = collections.deque()
        self._audio_samples = self._received_samples = self._sent_samples = 0
        self._audio_frames: collections.deque[tuple[float, int]] = collections.deque(maxlen=100_000)
        self._text_frames: collections.deque[Any] = collections.deque(maxlen=10_000)
        self._sent_frames: collections.deque[Any] = collections.deque(maxlen=10_000)
        self._tool_results: dict[str, str] = {}
        self._replies_started: list[tuple[float, str]] = []
        self._user_turns: list[str] = []
        self._play_until = 0.0
        self.ignored = self.interrupts = self.commits = self.interruptions_sent = 0
        #: the close the client started, (code, reason); None when the agent closed
        #: first (aiohttp does not report the client's answer) or the link dropped
        self.client_close: tuple[int, str] | None = None
        #: the close the agent started (``close``, ``end``, a shutdown)
        self.server_close: tuple[int, str] | None = None
        self.closed = threading.Event()
        self._loop_thread = threading.get_ident()

    def received_audio(self) -> np.ndarray:
        """The client's audio (mono int16 at the input rate), its newest ``max_audio_s``."""
        with self._cond:
            return np.concatenate(list(self._audio)) if self._audio else np.zeros(0, dtype=np.int16)

    @property
    def received_audio_ms(self) -> float:
        return self._received_samples * 1000 / self.input_rate

    @property
    def sent_audio_ms(self) -> float:
        return self._sent_samples * 1000 / self.output_rate

    def usage(self) -> dict[str, Any]:
        """The ``usage`` frame for now: a token per 20 ms of audio, each way."""
        with self._cond:
            return {"t": "usage", "inputAudioTokens": self._received_samples * 50 // self.input_rate,
                    "outputAudioTokens": self._sent_samples * 50 // self.output_rate}

    @property
    def agent_speaking(self) -> bool:
        """Whether the client is playing the agent's audio now: from a reply's
        first chunk for its length, after what it was playing (gapless, at real time)."""
        with self._cond:
            return time.monotonic() < self._play_until

    @property
    def audio_frames(self) -> list[tuple[float, int]]:
        """``(time.monotonic(), byte count)`` of each binary frame received."""
        with self._cond:
            return list(self._audio_frames)

    @property
    def text_frames(self) -> list[Any]:
        """Each text frame received: its JSON value, or the raw string when invalid."""
        with self._cond:
            return list(self._text_frames)

    @property
    def sent_frames(self) -> list[Any]:
        """Each text frame the agent sent (its JSON value, or the raw string)."""
        with self._cond:
            return list(self._sent_frames)

    @property
    def tool_results(self) -> dict[str, str]:
        with self._cond:
            return dict(self._tool_results)

    @property
    def replies_started(self) -> list[tuple[float, str]]:
        """``(time.monotonic(), text)`` when each reply's first audio went out."""
        with self._cond:
            return list(self._replies_started)

    @property
    def user_turns(self) -> list[str]:
        """The text of each user utterance, in order."""
        with self._cond:
            return list(self._user_turns)

    def wait_until(self: _R, predicate: Callable[[_R], object], timeout: float = 10.0,
                   what: str | None = None) -> None:
        """Block until ``predicate(self)`` is true (re-checked whenever a record
        changes). Raises ``TimeoutError`` naming ``what`` (default: the
        predicate's source) and the records."""
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("wait_until called on the session's own loop thread")
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"not true within {timeout} s: {what or _describe(predicate)} "
                                   f"({self._summary()})")

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _keep_audio(self, samples: np.ndarray) -> None:
        self._received_samples += len(samples)
        self._audio.append(samples)
        self._audio_samples += len(samples)
        while self._audio_samples > self._max_samples:
            excess = self._audio_samples - self._max_samples
            if len(self._audio[0]) <= excess:
                self._audio_samples -= len(self._audio.popleft())
            else:
                self._audio[0] = self._audio[0][excess:]
                self._audio_samples -= excess

    def _summary(self) -> str:
        return (f"{self.received_audio_ms:.0f} ms audio in, {self.sent_audio_ms:.0f} ms out, "
                f"{len(self._text_frames)} text frames in, {self.ignored} ignored, turns {self._user_turns}, "
                f"replies {[text for _, text in self._replies_started]}, closed {self.closed.is_set()}")


def _describe(predicate: Callable[..., object]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


@dataclass
class _Reply:
    text: str
    stopped: bool = False


class _Voice:
    """The agent's side of one websocket, on its loop: every frame it sends,
    one reply at a time (transcript, then audio in bursts), and the close."""

    def __init__(self, ws: web.WebSocketResponse, records: SessionRecords, settings: AgentSettings) -> None:
        self.ws = ws
        self.records = records
        self.settings = settings
        self.current: _Reply | None = None
        self.close_done = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._speech_lock = asyncio.Lock()

    async def send(self, data: str | bytes, reply: _Reply | None = None) -> bool:
        """Send one frame; false when it was not sent (closed, or ``reply`` stopped)."""
        async with self._send_lock:
            if self.ws.closed or (reply is not None and reply.stopped):
                return False
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("realtime send failed: %s", exc)
                return False
        if isinstance(data, str):
            with self.records._cond:
                self.records._sent_frames.append(_parse(data))
        return True

    async def send_json(self, value: dict[str, Any]) -> bool:
        return await self.send(json.dumps(value))

    async def speak(self, text: str) -> None:
        """Say ``text`` after any reply in progress, then send the usage so far."""
        async with self._speech_lock:
            reply = self.current = _Reply(text)
            try:
                await self._burst(reply)
            finally:
                if self.current is reply:
                    self.current = None
            await self.send_json(self.records.usage())

    async def _burst(self, reply: _Reply) -> None:
        words = reply.text.split()
        for count in sorted({len(words) // 3, 2 * len(words) // 3} - {0, len(words)}):
            await self.send_json({"t": "transcript", "role": "assistant", "text": " ".join(words[:count]),
                                  "final": False})
        await self.send_json({"t": "transcript", "role": "assistant", "text": reply.text, "final": True})
        records, settings, rate = self.records, self.settings, self.records.output_rate
        pcm = speech_audio(reply.text, rate, ms_per_char=settings.ms_per_char, min_s=settings.min_reply_s)
        data = pcm.astype("<i2").tobytes()
        step = max(2, rate * settings.burst_chunk_ms // 1000 * 2)
        start = 0.0
        for offset in range(0, len(data), step):
            chunk = data[offset:offset + step]
            if not await self.send(chunk, reply):
                return
            now = time.monotonic()
            with records._cond:
                if offset == 0:
                    start = now
                    records._replies_started.append((now, reply.text))
                    records._play_until = max(now, records._play_until) + len(pcm) / rate
                    asyncio.get_running_loop().call_later(records._play_until - now, records._changed)
                records._sent_samples += len(chunk) // 2
                records._cond.notify_all()
            speed = settings.burst_speed
            due = start + (offset + len(chunk)) / (2 * rate) / speed if speed else now
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        """Stop the reply being sent; the client is taken to stop playing too."""
        if self.current is not None:
            self.current.stopped = True
        with self.records._cond:
            self.records._play_until = min(self.records._play_until, time.monotonic())
            self.records._cond.notify_all()

    async def close(self, code: int, reason: str) -> None:
        with self.records._cond:
            if self.records.server_close is None:
                self.records.server_close = (code, reason)
        self.stop()
        try:
            await self.ws.close(code=code, message=reason.encode())
        finally:
            self.close_done.set()


def _parse(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


class RealtimeAgentSession(SessionRecords):
    """The agent on one realtime websocket, and its records. Made and run on
    the loop serving the websocket; the public methods work from any thread.
    Actions return a future of their completion: blocking code may wait on
    it, code on an event loop must not (use ``asyncio.wrap_future``)."""

    def __init__(self, ws: web.WebSocketResponse, *, session_id: str, input_rate: int, output_rate: int,
                 settings: AgentSettings, script: Callable[[], str | None]) -> None:
        super().__init__(input_rate, output_rate, settings.max_audio_s)
        self.session_id = session_id
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self._ws = ws
        self._voice = _Voice(ws, self, settings)
        self._script = script
        self._will_hear: collections.deque[str] = collections.deque()
        self._detector = EnergyDetector(input_rate, settings.speech_threshold_dbfs,
                                        settings.speech_start_ms, settings.speech_end_ms)
        self._tasks: set[asyncio.Task[None]] = set()
        self._tool_waiters: dict[str, asyncio.Future[str]] = {}
        self._ready = False

    # -- any thread -------------------------------------------------------------------
    def will_hear(self, text: str) -> None:
        """Script the text of this session's next user utterance (before the endpoint's)."""
        with self._cond:
            self._will_hear.append(text)

    def say(self, text: str) -> concurrent.futures.Future[None]:
        """Speak ``text`` now (after any reply in progress): transcript, audio, usage."""
        return self._submit(self._voice.speak(text))

    def call_tool(self, name: str, arguments: dict[str, Any]) -> concurrent.futures.Future[str | None]:
        """Call the client's tool ``name`` now (a ``tool_call`` frame); the
        future is its ``tool_result`` output, ``None`` after ``tool_timeout_s``."""
        return self._submit(self._call_tool(name, arguments))

    def send_error(self, code: str, message: str) -> concurrent.futures.Future[bool]:
        return self._submit(self._voice.send_json({"t": "error", "code": code, "message": message}))

    def send_raw(self, data: str | bytes) -> concurrent.futures.Future[bool]:
        """Send ``data`` as it is, as one text (``str``) or binary frame."""
        return self._submit(self._voice.send(data))

    def end(self, reason: str = "done") -> concurrent.futures.Future[None]:
        """End the session: an ``end`` frame, then a close with 1000."""
        async def end() -> None:
            await self._voice.send_json({"t": "end", "reason": reason})
            await self._voice.close(1000, "")
        return self._submit(end())

    def close(self, code: int = 1000, reason: str = "") -> concurrent.futures.Future[None]:
        """Close the websocket with ``code`` and ``reason`` (no ``end`` frame)."""
        return self._submit(self._voice.close(code, reason))

    def drop_silently(self) -> concurrent.futures.Future[None]:
        """Abort the TCP connection with no close frame, as a crash would."""
        async def drop() -> None:
            request = self._ws._req  # aiohttp has no public way to abort a websocket
            if request is not None and request.transport is not None:
                request.transport.abort()
        return self._submit(drop())

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # -- the loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the websocket until it closes."""
        self._spawn(self._start())
        try:
            await self._receive()
            if self.server_close is not None:
                await self._voice.close_done.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            self._voice.stop()
            self.closed.set()
            self._changed()

    async def _start(self) -> None:
        if self.settings.no_ready:
            return
        if self.settings.ready_delay_s > 0:
            await asyncio.sleep(self.settings.ready_delay_s)
        await self._voice.send_json({"t": "ready", "inputSampleRate": self.input_rate,
                                     "outputSampleRate": self.output_rate})
        self._ready = True
        if self.settings.greeting:
            await self._voice.speak(self.settings.greeting)

    async def _receive(self) -> None:
        while True:
            msg = await self._ws.receive()
            if msg.type is WSMsgType.CLOSE:
                with self._cond:
                    self.client_close = (int(msg.data), str(msg.extra or ""))
                return
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return  # closing (from here), closed or failed
            try:
                if msg.type is WSMsgType.BINARY:
                    self._on_audio(msg.data)
                else:
                    self._on_text(msg.data)
            except Exception:
                log.exception("realtime session %s: a client frame failed", self.session_id)
                with self._cond:
                    self.ignored += 1
            self._changed()

    def _on_audio(self, data: bytes) -> None:
        with self._cond:
            self._audio_frames.append((time.monotonic(), len(data)))
            if len(data) % 2:
                self.ignored += 1
                log.debug("realtime session %s: odd-length audio frame ignored", self.session_id)
                return
            samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
            self._keep_audio(samples)
        for event in self._detector.feed(samples):
            if event is None:
                self._speech_started()
            else:
                self._utterance_ended(event)

    def _on_text(self, data: str) -> None:
        value = _parse(data)
        with self._cond:
            self._text_frames.append(value)
        kind = value.get("t") if isinstance(value, dict) else None
        if kind == "tool_result" and isinstance(value.get("callId"), str) and isinstance(value.get("output"), str):
            with self._cond:
                self._tool_results[value["callId"]] = value["output"]
            waiter = self._tool_waiters.pop(value["callId"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(value["output"])
        elif kind == "interrupt":
            with self._cond:
                self.interrupts += 1
            self._voice.stop()
        elif kind == "control" and value.get("action") == "commit":
            with self._cond:
                self.commits += 1
            seconds = self._detector.commit()
            if seconds is not None:
                self._utterance_ended(seconds)
        else:
            with self._cond:
                self.ignored += 1
            log.debug("realtime session %s: client frame ignored: %.80r", self.session_id, data)

    def _speech_started(self) -> None:
        if not self.agent_speaking:
            return
        self._voice.stop()

        async def tell() -> None:
            if await self._voice.send_json({"t": "interruption"}):
                with self._cond:
                    self.interruptions_sent += 1
        self._spawn(tell())

    def _utterance_ended(self, seconds: float) -> None:
        with self._cond:
            text = self._will_hear.popleft() if self._will_hear else self._script()
            if text is None:
                text = f"(speech, {seconds:.1f} s)"
            self._user_turns.append(text)
        self._spawn(self._answer(text))

    async def _answer(self, heard: str) -> None:
        if not self._ready:
            return  # an agent that never got ready hears but does not answer
        await self._voice.send_json({"t": "transcript", "role": "user", "text": heard, "final": True})
        await asyncio.sleep(self.settings.reply_delay_s)
        for trigger in (ToolTrigger(*t) for t in self.settings.tools):  # plain tuples too
            args = trigger.arguments_for(heard)
            if args is not None:
                output = await self._call_tool(trigger.name, args)
                await self._voice.speak("The tool did not answer" if output is None
                                        else trigger.reply.format(name=trigger.name, output=output))
                return
        await self._voice.speak(f"You said: {heard}")

    async def _call_tool(self, name: str, args: dict[str, Any]) -> str | None:
        call_id = f"call_{secrets.token_hex(6)}"
        waiter = self._tool_waiters[call_id] = self.loop.create_future()
        try:
            await self._voice.send_json({"t": "tool_call", "callId": call_id, "name": name,
                                         "arguments": json.dumps(args)})
            return await within(waiter, self.settings.tool_timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            self._tool_waiters.pop(call_id, None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime session %s: agent task failed", self.session_id, exc_info=task.exception())
