"""Helpers for tests that drive the raw ``livekit.rtc`` client (no speko_sync
Conversation): connect, publish a microphone, record events, collect audio."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from livekit import rtc

from speko_sync.testing import LocalServer, tone
from speko_sync.testing._media import rms_level

T = TypeVar("T")
RATE = 48_000

EVENTS = (
    "participant_connected", "participant_disconnected", "track_published", "track_unpublished",
    "track_subscribed", "track_unsubscribed", "track_muted", "track_unmuted", "data_received",
    "active_speakers_changed", "connection_state_changed", "disconnected", "reconnecting", "reconnected",
)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run an async scenario to completion with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Recorder:
    """Every event a Room emits, in order, with a way to wait for one."""

    def __init__(self, room: rtc.Room) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()
        for name in EVENTS:
            room.on(name, functools.partial(self._on, name))

    def _on(self, name: str, *args: Any) -> None:
        self.events.append((name, args))
        self._changed.set()

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.events if n == name]

    def data(self) -> list[tuple[str | None, dict[str, Any]]]:
        out = []
        for (packet,) in self.of("data_received"):
            sender = packet.participant.identity if packet.participant else None
            out.append((sender, json.loads(packet.data)))
        return out

    async def wait_for(self, name: str, predicate: Callable[..., bool] = lambda *a: True,
                       timeout: float = 10.0) -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        while True:
            for event, args in self.events[seen:]:
                if event == name and predicate(*args):
                    return args
            seen = len(self.events)
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {name!r} event within {timeout} s; saw {self.names()}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


async def connect(server: LocalServer, identity: str, room: str, *, token: str | None = None,
                  **options: Any) -> tuple[rtc.Room, Recorder]:
    lk_room = rtc.Room()
    recorder = Recorder(lk_room)
    await lk_room.connect(server.url, token or server.token(identity, room), rtc.RoomOptions(**options))
    return lk_room, recorder


class Mic:
    """A published microphone track fed from numpy arrays."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room
        self.source = rtc.AudioSource(RATE, 1)
        self.track = rtc.LocalAudioTrack.create_audio_track("microphone", self.source)
        self.publication: rtc.LocalTrackPublication | None = None
        self._feeder: asyncio.Task[None] | None = None

    async def publish(self) -> Mic:
        self.publication = await self.room.local_participant.publish_track(
            self.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        return self

    async def play(self, samples: np.ndarray) -> None:
        for i in range(0, len(samples) - 479, 480):
            await self.source.capture_frame(rtc.AudioFrame(samples[i:i + 480].tobytes(), RATE, 1, 480))

    async def silence_until(self, heard: Callable[[], bool], timeout: float = 10.0) -> None:
        """Play silence, 100 ms at a time, until ``heard()``: what is sent before
        the far end has subscribed and its stream has started is lost."""
        deadline = time.monotonic() + timeout
        while not heard():
            assert time.monotonic() < deadline, f"not heard within {timeout} s"
            await self.play(np.zeros(RATE // 10, np.int16))

    def play_forever(self, freq_hz: float, amplitude: float = 0.3) -> None:
        """Keep playing a tone (in real time, paced by the source's queue)."""
        chunk = tone(freq_hz, 1.0, amplitude)

        async def feed() -> None:
            while True:
                await self.play(chunk)
        self._feeder = asyncio.get_running_loop().create_task(feed())

    async def stop(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder


class Ear:
    """Collects the audio of one remote track as mono int16 at 48 kHz."""

    def __init__(self, track: rtc.Track) -> None:
        self.chunks: list[np.ndarray] = []
        self._task = asyncio.get_running_loop().create_task(self._collect(track))

    async def _collect(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
            self.chunks.append(np.frombuffer(event.frame.data, dtype=np.int16).copy())

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)

    async def wait_for_sound(self, freq_hz: float, timeout: float = 10.0, window_s: float = 0.5) -> float:
        """Wait until the last ``window_s`` of audio is dominated by ``freq_hz``
        (within 5 %); return the RMS level of that window."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        n = int(window_s * RATE)
        while True:
            audio = self.audio()
            if len(audio) >= n:
                window = audio[-n:]
                if abs(dominant_frequency(window) - freq_hz) <= 0.05 * freq_hz and rms(window) > 0.01:
                    return rms(window)
            if loop.time() > deadline:
                found = dominant_frequency(audio[-n:]) if len(audio) >= n else None
                raise TimeoutError(f"no {freq_hz} Hz tone within {timeout} s (dominant: {found})")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class AgentView:
    """What a client sees of the agent, by both transcript paths."""

    states: list[str] = field(default_factory=list)
    streams: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # sender, text, attributes
    opened: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # sender, header attributes
    legacy: list[tuple[str | None, str, bool]] = field(default_factory=list)  # participant, text, final
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def attach(self, room: rtc.Room) -> None:
        def on_attributes(changed: dict[str, str], who: rtc.Participant) -> None:
            if "lk.agent.state" in changed and who.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
                self.states.append(changed["lk.agent.state"])
                self.changed.set()

        def on_stream(reader: rtc.TextStreamReader, sender: str) -> None:
            self.opened.append((sender, dict(reader.info.attributes or {})))

            async def read() -> None:
                text = await reader.read_all()
                self.streams.append((sender, text, dict(reader.info.attributes or {})))
                self.changed.set()
            self.tasks.append(asyncio.ensure_future(read()))

        def on_legacy(segments: list[rtc.TranscriptionSegment], who: rtc.Participant | None,
                      _pub: rtc.TrackPublication | None) -> None:
            for s in segments:
                self.legacy.append((who.identity if who else None, s.text, s.final))
            self.changed.set()
        room.on("participant_attributes_changed", on_attributes)
        room.register_text_stream_handler("lk.transcription", on_stream)
        room.on("transcription_received", on_legacy)

    async def wait(self, what: str, condition: object, timeout: float = 20.0) -> None:
        assert callable(condition)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{what} not seen within {timeout} s; states {self.states}, "
                                   f"streams {self.streams}, legacy {self.legacy[-5:]}")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def final_texts(self, sender: str) -> list[str]:
        return [text for who, text, attrs in self.streams
                if who == sender and attrs.get("lk.transcription_final") == "true"]


async def join_with_agent(server: LocalServer, room_name: str) -> tuple[rtc.Room, Recorder, AgentView, rtc.Track,
                                                                         rtc.RemoteParticipant]:
    view = AgentView()
    room = rtc.Room()
    recorder = Recorder(room)
    view.attach(room)
    await room.connect(server.url, server.token("user", room_name))
    track, _pub, agent = await recorder.wait_for("track_subscribed", timeout=30)
    return room, recorder, view, track, agent


def dominant_frequency(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate / len(samples))


rms = rms_level


def speechlike(seconds: float) -> np.ndarray:
    """Voiced, syllable-paced harmonics (48 kHz int16): what an echo canceller is built for."""
    t = np.arange(int(seconds * RATE)) / RATE
    gate = (np.sin(2 * np.pi * 3 * t) > -0.2).astype(float)
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.7 * t)
    phase = np.cumsum(f0) / RATE
    wave = sum(np.sin(2 * np.pi * phase * k) / k for k in range(1, 8))
    return (0.25 * gate * wave / np.max(np.abs(wave)) * 32767).astype(np.int16)


class SessionView:
    """LiveKit Agents' session stream (``lk.agent.session``) as a client reads
    it: each byte stream decoded into an ``AgentSessionMessage``, in the order
    the streams opened (one reader, as LiveKit Agents' own transport reads)."""

    def __init__(self, room: rtc.Room) -> None:
        from livekit.protocol.agent_pb import agent_session

        self._pb = agent_session
        self.messages: list[Any] = []  # AgentSessionMessage
        self.raw: list[tuple[str, bytes]] = []  # sender, bytes
        self.senders: list[str] = []
        self.changed = asyncio.Event()
        self._queue: asyncio.Queue[tuple[rtc.ByteStreamReader, str]] = asyncio.Queue()
        room.register_byte_stream_handler("lk.agent.session", lambda r, who: self._queue.put_nowait((r, who)))
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            reader, sender = await self._queue.get()
            data = b"".join([chunk async for chunk in reader])
            self.raw.append((sender, data))
            message = self._pb.AgentSessionMessage()
            try:
                message.ParseFromString(data)
            except Exception:  # a malformed stream: kept raw only
                message = None
            if message is not None:
                self.messages.append(message)
                self.senders.append(sender)
            self.changed.set()

    def events(self) -> list[Any]:
        return [m.event for m in self.messages if m.HasField("event")]

    def kinds(self, *, skip: tuple[str, ...] = ("session_usage_updated",)) -> list[str]:
        """Each event as its kind and what it says: ``agent listening>speaking``,
        ``item assistant``, ``user speaking>listening``..."""
        pb = self._pb
        out = []
        for event in self.events():
            kind = event.WhichOneof("event")
            if kind in skip:
                continue
            if kind == "agent_state_changed":
                change = event.agent_state_changed
                out.append(f"agent {pb.AgentState.Name(change.old_state)[3:].lower()}>"
                           f"{pb.AgentState.Name(change.new_state)[3:].lower()}")
            elif kind == "user_state_changed":
                change = event.user_state_changed
                out.append(f"user {pb.UserState.Name(change.old_state)[3:].lower()}>"
                           f"{pb.UserState.Name(change.new_state)[3:].lower()}")
            elif kind == "conversation_item_added":
                item = event.conversation_item_added.item
                which = item.WhichOneof("item")
                role = f" {pb.ChatRole.Name(item.message.role).lower()}" if which == "message" else ""
                out.append(f"item {which}{role}")
            else:
                out.append(kind)
        return out

    def items(self, role: str | None = None) -> list[Any]:
        """The chat messages added, of ``role`` (user, assistant) if given."""
        pb = self._pb
        found = [e.conversation_item_added.item.message for e in self.events()
                 if e.WhichOneof("event") == "conversation_item_added"
                 and e.conversation_item_added.item.WhichOneof("item") == "message"]
        return [m for m in found if role is None or pb.ChatRole.Name(m.role).lower() == role]

    async def wait(self, what: str, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{what} not seen within {timeout} s; session events {self.kinds(skip=())}")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def metric_names(message: Any) -> list[str]:
    """The metrics a chat message carries (set fields of its MetricsReport)."""
    return sorted(field.name for field, _ in message.metrics.ListFields())


async def join_with_session(server: LocalServer, room_name: str,
                            identity: str = "user") -> tuple[rtc.Room, AgentView, SessionView]:
    """A raw client whose views of the agent (transcripts and states, and the
    session stream) are attached before it joins, so it misses nothing."""
    room = rtc.Room()
    view = AgentView()
    view.attach(room)
    session = SessionView(room)
    await room.connect(server.url, server.token(identity, room_name))
    return room, view, session
