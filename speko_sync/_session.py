"""The transport-neutral core of a conversation, on the loops.

The room loop (process-wide, see :mod:`speko_sync._runtime`) runs the
transport and everything here; the audio loop runs the audio path
(:mod:`speko_sync._audio_path`) and the transport's sink and playback, so no
network work delays a frame. Methods say which loop they run on.

  transport (:mod:`speko_sync._livekit` or :mod:`speko_sync._realtime`)
    -> messages -> ``_transcript.reconcile`` -> the transcript; both -> dispatcher
    -> the agent's state, the mode, the user's state, turns, interruptions
       (barge-in), usage, errors -> dispatcher
  client tools -> ``_tools.ToolHost`` -> the tool pool
  all of it -> ``_turns.TurnTracker`` -> replies (``ask``) and latencies
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._audio_path import AudioPath, Emit
from ._livekit import LiveKitTransport
from ._loop import call_on, run_on, within
from ._realtime import RealtimeTransport
from ._sent import SendLog
from ._stats import session_stats
from ._tools import Tool, ToolHost
from ._transcript import SegmentUpdates, Transcript, reconcile
from ._transport import Transport
from ._turns import TurnTracker, is_barge_in
from .audio import (
    AudioBackend,
    AudioConstraints,
)
from .errors import ErrorCode, SpekoClientError
from .events import (
    AgentState,
    ConversationStats,
    DisconnectionDetails,
    Interruption,
    Message,
    MessageSource,
    Mode,
    ModelUsage,
    Reconnection,
    Reply,
    UserState,
)

TRANSPORTS = ("livekit", "realtime")


class Session:
    """One session over one transport (``"livekit"`` or ``"realtime"``).
    Created and used on the room loop, except the audio path, which runs on
    the audio loop (the same loop when none is given)."""

    #: After a LiveKit barge-in, the agent's audio plays as silence until it
    #: speaks again (its state goes back to speaking), for this long at most:
    #: what arrives meanwhile was sent before it stopped (LiveKit Agents 1.8
    #: keeps 200 ms queued; 0.1-0.8 s of it reaches the client after the state change).
    BARGE_IN_QUIET_S = 2.0

    def __init__(self, emit: Emit, audio: AudioBackend, constraints: AudioConstraints,
                 on_remote_end: Callable[[DisconnectionDetails], None], *, microphone: bool = True,
                 on_link: Callable[[Reconnection | None], None] = lambda _: None,
                 audio_loop: asyncio.AbstractEventLoop | None = None,
                 emit_latest: Callable[[str, Callable[[], Any]], None] | None = None,
                 client_tools: Mapping[str, Tool] | None = None, transport: str = "livekit") -> None:
        self._emit = emit
        # snapshots (the transcript) built when delivered, the newest only
        self._emit_latest = emit_latest or (lambda kind, make: emit(kind, make()))
        self.audio_loop = audio_loop  # None: the room's loop runs the audio too
        self._on_link = on_link  # None: the link is lost; a Reconnection: it is back
        self._on_remote_end = on_remote_end
        self.microphone = microphone  # false: a text-only session
        self._room_loop: asyncio.AbstractEventLoop | None = None
        self.turns = TurnTracker()
        self.path = AudioPath(emit, audio, constraints, microphone=microphone, turns=self.turns,
                              to_room_loop=self._to_room_loop)
        self.tools = ToolHost(client_tools or {}, emit, self._is_agent)
        self.tools.on_call.append(self.turns.on_tool_call)
        self.transport: Transport = _make_transport(transport, self)
        self.path.packets = lambda: self.transport.packets_received
        self._mode = Mode.LISTENING
        self._heard_mode = Mode.LISTENING  # what the transport hears (active speakers, playback)
        self.agent_state: AgentState | None = None
        self.user_state: UserState | None = None
        self.usage: tuple[ModelUsage, ...] = ()
        self.transcript = Transcript()
        self._updates = SegmentUpdates()
        self.sends = SendLog()  # messages sent lately (a full rejoin lists the ones it may have lost)
        self.closing = False
        self._closed: asyncio.Task[None] | None = None
        self._barged = False  # this speaking turn of the agent was cut off already
        self.barge_ins = 0

    @property
    def mode(self) -> Mode:
        return self._mode

    # -- connect ------------------------------------------------------------------
    async def connect(self, url: str, token: str, overrides: bytes | None, timeout: float) -> str:
        """Open the audio devices, join, send overrides, start the microphone.
        Raises :class:`SpekoClientError`; on failure everything taken is released.

        The devices come first: a device that fails raises MICROPHONE_FAILED
        before any network traffic, so the session's credentials stay usable (an
        agent that saw its caller join and leave may close the room)."""
        loop = self._room_loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        transport = self.transport
        await self.path.open(playback_slack_ms=transport.playback_slack_ms)
        try:
            conversation_id = await transport.join(url, token, timeout)
            if overrides is not None:
                try:
                    await transport.send_packet(overrides)
                except SpekoClientError as exc:
                    raise SpekoClientError(ErrorCode.CONNECTION_FAILED, f"could not send the overrides: {exc.message}",
                                           exc) from exc
            try:
                sink = await within(transport.start(timeout), max(0.1, deadline - loop.time()))
                await run_on(self.audio_loop, self._start_capture(sink))
            except BaseException as exc:
                if isinstance(exc, SpekoClientError) or not isinstance(exc, Exception):
                    raise
                if isinstance(exc, asyncio.TimeoutError):
                    raise SpekoClientError(ErrorCode.MICROPHONE_FAILED,
                                           f"microphone not published within {timeout:g} s") from None
                raise SpekoClientError(ErrorCode.MICROPHONE_FAILED, f"microphone failed: {exc}", exc) from exc
        except BaseException:
            await self.close()
            raise
        return conversation_id

    async def _start_capture(self, sink: Any) -> None:
        transport = self.transport
        self.path.start_capture(sink, transport.frame_clocked, drop_stale=transport.drop_stale_capture,
                                tick_frames=transport.tick_ms // 10, awaits=transport.sink_awaits)

    def _to_room_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Audio loop: have ``fn(*args)`` called on the room loop, in order."""
        call_on(self._room_loop, fn, *args)

    def _is_agent(self, identity: str) -> bool:
        return self.transport.is_agent(identity)

    # -- what the transport reports (room loop) -------------------------------------------
    def set_heard_mode(self, speaking: bool) -> None:
        """The transport hears the agent speak (active speakers, playback)."""
        self._heard_mode = Mode.SPEAKING if speaking else Mode.LISTENING
        self._update_mode()

    def _update_mode(self) -> None:
        """``mode`` follows the agent's own state when it publishes one (speaking
        iff ``speaking``), else what the transport hears."""
        if self.agent_state is not None:
            mode = Mode.SPEAKING if self.agent_state == AgentState.SPEAKING else Mode.LISTENING
        else:
            mode = self._heard_mode
        if mode != self._mode:
            self._mode = mode
            self._emit("mode_changed", mode)

    def set_agent_state(self, state: AgentState) -> None:
        """One agent state; events only on change."""
        old = self.agent_state
        if state == old:
            return
        self.agent_state = state
        self._emit("agent_state_changed", state)
        self._update_mode()
        self.turns.on_agent_state(state)
        if state == AgentState.THINKING:  # its answer's first audio is a start, however soon it comes
            call_on(self.audio_loop, self.path.agent_edges.reset)
        elif state == AgentState.SPEAKING:
            if self._barged:
                call_on(self.audio_loop, self.path.play_again)
            self._barged = False
        elif is_barge_in(old, state, user_speaking=self._user_speaking()):
            self.barge_in(Interruption(is_interruption=True), quiet_s=self.BARGE_IN_QUIET_S)

    def _user_speaking(self) -> bool:
        return self.user_state == UserState.SPEAKING or self.path.mic_edges.talking

    def session_event(self, kind: str, value: Any) -> None:
        """One event about the agent's session (LiveKit Agents' session stream,
        control packets)."""
        if kind == "user_state":
            if value != self.user_state:
                self.user_state = value
                self._emit("user_state_changed", value)
        elif kind == "turn":
            self._emit("turn", self.turns.on_turn(value))
        elif kind == "interruption":
            if value.is_interruption:
                self.barge_in(value, quiet_s=self.BARGE_IN_QUIET_S)
            else:
                self._emit("interruption", value)
        elif kind == "usage":
            self.set_usage(value)
        elif kind in ("agent_tools", "control"):
            self._emit(kind, value)
        elif kind == "error":
            self.report_error(SpekoClientError(ErrorCode.AGENT_ERROR, f"the agent reported: {value}"))

    def set_usage(self, usage: tuple[ModelUsage, ...]) -> None:
        if usage != self.usage:  # agents repeat it (LiveKit Agents about once a second)
            self.usage = usage
            self._emit("usage", usage)

    def report_error(self, error: SpekoClientError) -> None:
        self._emit("error", error)

    def barge_in(self, interruption: Interruption, *, quiet_s: float) -> None:
        """The user interrupted the agent: drop its queued audio (and what
        arrives in the next ``quiet_s`` seconds) and report it, once per agent
        turn (its state and its session stream may both say so)."""
        if self._barged:
            return
        self._barged = True
        self.barge_ins += 1
        call_on(self.audio_loop, self.path.drop_playback, quiet_s)
        self._emit("interruption", interruption)

    def agent_speaks_again(self) -> None:
        """A transport without agent states: a new agent turn may be cut off again."""
        self._barged = False

    def remote_end(self, details: DisconnectionDetails) -> None:
        self._on_remote_end(details)

    def link(self, reconnection: Reconnection | None) -> None:
        self._on_link(reconnection)

    # -- transcripts --------------------------------------------------------------------
    def deliver(self, message: Message) -> None:
        self.transcript = reconcile(self.transcript, message)
        self._emit("message", message)
        self.turns.on_message(message)
        transcript = self.transcript
        self._emit_latest("transcript", lambda: transcript.messages)

    def transcribed(self, source: MessageSource, segment_id: str, text: str, is_final: bool, *,
                    track: str, path: str) -> None:
        # LiveKit's two paths differ in trailing spaces ("Hi! " while the stream grows)
        message = self._updates.accept(source, segment_id, text.strip(), is_final, time.time(),
                                       track=track, path=path)
        if message is not None:
            self.deliver(message)

    # -- commands ----------------------------------------------------------------------
    async def send(self, payload: bytes, kind: str, text: str) -> None:
        """A packet of the message ``text``, sent by the method ``kind``."""
        await self.transport.send_packet(payload)
        self.sends.sent(kind, text)

    async def send_chat(self, text: str) -> None:
        """A typed user turn; it joins the transcript as the user's (agents do
        not transcribe typed turns back)."""
        started = time.time()  # the user's turn began when it was sent, before the agent could answer it
        await self.transport.send_chat(text)
        self.sends.sent("send_chat_message", text)
        self.deliver(Message(source=MessageSource.USER, text=text, is_final=True, started_at=started))

    async def ask(self, text: str) -> concurrent.futures.Future[Reply]:
        """Send a typed turn; a future of the agent's reply to it."""
        future = self.turns.expect(typed=True)  # before the send: nothing of the answer is missed
        try:
            await self.send_chat(text)
        except BaseException:
            future.cancel()
            raise
        return future

    async def expect_reply(self) -> concurrent.futures.Future[Reply]:
        """A future of the agent's next complete turn."""
        return self.turns.expect(typed=False)

    async def interrupt(self) -> None:
        self.transport.require_link()
        await self.transport.interrupt()

    async def commit(self) -> None:
        self.transport.require_link()
        await self.transport.commit()

    async def set_muted(self, muted: bool) -> None:
        self.path.muted = muted
        self.transport.set_muted(muted)

    def stats(self) -> ConversationStats:
        return session_stats(self.path.io, self.transport, self.tools, self.turns, self.barge_ins, self.usage)

    # -- closing ------------------------------------------------------------------------
    async def close(self) -> None:
        """Leave (if still connected) and release everything. Idempotent;
        concurrent calls (a cancelled connect cleaning up while the caller
        aborts) share one release."""
        self.closing = True
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_task(self._release())
        await asyncio.shield(self._closed)

    async def _release(self) -> None:
        self.turns.close()
        with contextlib.suppress(Exception):  # the audio loop is gone only at interpreter exit
            await run_on(self.audio_loop, self._stop_audio())
        await self.path.close()
        await self.transport.close()
        with contextlib.suppress(Exception):
            await run_on(self.audio_loop, self.transport.release_audio())

    async def _stop_audio(self) -> None:
        """Audio loop: stop the pumps and the playback."""
        await self.path.stop()
        await self.transport.stop_audio()


def _make_transport(name: str, core: Session) -> Transport:
    if name == "livekit":
        return LiveKitTransport(core)
    if name == "realtime":
        return RealtimeTransport(core)
    raise ValueError(f"transport must be one of {', '.join(map(repr, TRANSPORTS))}, got {name!r}")
