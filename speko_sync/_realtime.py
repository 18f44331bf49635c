"""The realtime transport: Speko's speech-to-speech sessions over one
WebSocket (``wsUrl``, with ``wsToken`` as its only subprotocol).

  microphone frames (48 kHz, 10 ms, processed) -> resampled to the input
  rate, 20 ms frames -> binary frames (none while muted)
  binary frames (the output rate, bursts faster than real time) ->
  :class:`~speko_sync._realtime_audio.BurstPlayer` (a whole reply and more,
  played at the device's clock) -> the audio path
  text frames -> :mod:`speko_sync._realtime_protocol` -> the core

The socket, its reader and its writer live on the audio loop, beside the
sink and the player; text frames are decoded and handled on the room loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import ClassVar

import numpy as np
import websockets
from livekit import rtc
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State
from websockets.typing import Subprotocol

from . import _realtime_protocol as wire
from ._audio_path import PlainSink
from ._frames import Reframer, cancel_all
from ._loop import call_on, run_on, within
from ._realtime_audio import BurstPlayer
from ._tools import ToolHost
from ._transport import Core, unsupported
from .audio import CAPTURE_DROPPED, SAMPLE_RATE
from .errors import ErrorCode, SpekoClientError
from .events import Interruption, MessageSource, ModelUsage

log = logging.getLogger("speko_sync")

#: who calls client tools on a realtime session: the session's agent
AGENT = "agent"


class RealtimeTransport:
    """One realtime session's WebSocket. The socket, its reader and its writer
    run on the audio loop, beside the microphone pump and the player, so audio
    crosses no thread either way; text frames are handled on the room loop."""

    name: ClassVar[str] = "realtime"
    #: the jitter policy's slack, above the depth the burst player keeps
    playback_slack_ms: ClassVar[int | None] = BurstPlayer.SLACK_MS
    drop_stale_capture: ClassVar[bool] = False  # late frames go out late: the socket queues nothing
    tick_ms: ClassVar[int] = 20  # the microphone's frames on the wire
    sink_awaits: ClassVar[bool] = False  # the socket takes a frame in a plain call
    #: what a client tool may take before the agent is told it failed (seconds)
    TOOL_TIMEOUT_S = 30.0
    #: text frames waiting for the socket
    SEND_QUEUE = 200
    #: bytes the socket may hold unsent before microphone frames are dropped
    #: (about 0.6 s at 24 kHz): a stuck socket never stalls the pump
    WRITE_LIMIT = 30_000

    def __init__(self, core: Core) -> None:
        self._core = core
        self._ws: ClientConnection | None = None
        self.input_rate = wire.DEFAULT_RATE
        self.output_rate = wire.DEFAULT_RATE
        self._outbox: asyncio.Queue[str] | None = None  # audio loop: text frames for the writer
        self._tasks: list[asyncio.Task[None]] = []  # audio loop: the reader and the writer
        self._calls: set[asyncio.Task[None]] = set()  # room loop: tools running
        self._end_reason: str | None = None
        self._segments = {"user": 0, "assistant": 0}  # a new segment after each final, per role
        self._player: BurstPlayer | None = None
        self._mic_reframe: Reframer | None = None
        self._room_loop: asyncio.AbstractEventLoop | None = None
        self.packets_sent = 0
        self.packets_received = 0
        self.malformed = 0
        self.ignored = 0
        self.session_messages = 0
        self.session_ignored = 0

    # -- joining --------------------------------------------------------------------
    async def join(self, url: str, token: str, timeout: float) -> str:
        """Open the socket and wait for ``ready`` (see :func:`open_session`)."""
        self._room_loop = asyncio.get_running_loop()
        self._core.tools.attach(None)  # tool calls come as frames: the host needs only this loop
        await run_on(self._core.audio_loop, self._open(url, token, timeout))
        return ""

    async def _open(self, url: str, token: str, timeout: float) -> None:
        """Audio loop: the socket, then its reader and writer. The player
        queues the agent's audio from here on; it plays once started."""
        ws, ready = await open_session(url, token, timeout)
        if self._core.closing:  # ended while connecting (an interrupt, a give-up): leave at once
            with contextlib.suppress(Exception):
                await within(ws.close(*wire.CLIENT_CLOSE), 2)
            raise SpekoClientError(ErrorCode.CONNECTION_FAILED, "the conversation ended while connecting")
        self._ws = ws
        self.input_rate, self.output_rate = ready.input_rate, ready.output_rate
        self._player = BurstPlayer(self._core.path, self.output_rate,
                                   lambda speaking: call_on(self._room_loop, self._agent_audio, speaking))
        self._outbox = asyncio.Queue(self.SEND_QUEUE)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read(ws)), loop.create_task(self._write(ws, self._outbox))]

    async def start(self, timeout: float) -> PlainSink | None:
        path, player = self._core.path, self._player
        assert player is not None
        if self._core.microphone:
            path.make_processing()
            self._mic_reframe = Reframer(SAMPLE_RATE, self.input_rate, 20)
        path.start_playback(elastic=False)
        call_on(self._core.audio_loop, player.start)
        return self._send_frame if self._core.microphone else None

    def frame_clocked(self) -> bool:
        return False

    def queued_ms(self) -> float:
        player = self._player
        return player.queued_ms() if player is not None else 0.0

    def is_agent(self, identity: str) -> bool:
        return identity == AGENT

    # -- audio and the socket (audio loop) ---------------------------------------------------
    def _send_frame(self, samples: np.ndarray) -> None:
        """The microphone's 20 ms frame (48 kHz): resampled and sent, in a
        plain call from the pump's timer (the frame goes to the socket's
        protocol and transport at once: no task to wake, no await). A socket
        that cannot take more (:attr:`WRITE_LIMIT` waiting in its buffer)
        drops the frame, counted in ``stats().capture_dropped``, rather than
        queue latency; a closing one takes nothing (the reader reports the
        end)."""
        reframe, ws = self._mic_reframe, self._ws
        assert reframe is not None and ws is not None
        for chunk in reframe.push(samples):
            transport = ws.transport
            if ws.protocol.state is not State.OPEN or transport is None or transport.is_closing():
                return
            if transport.get_write_buffer_size() > self.WRITE_LIMIT:
                io = self._core.path.io
                if io is not None:
                    io.counters[CAPTURE_DROPPED] += 2 * io.rate // 100
                continue
            ws.protocol.send_binary(chunk.tobytes())
            for data in ws.protocol.data_to_send():
                if data:  # (an empty one means end of stream: only after a close, never while open)
                    transport.write(data)

    def _post(self, data: str) -> None:
        """A text frame, sent in order by the writer task."""
        outbox = self._outbox
        if outbox is None:
            return
        try:
            outbox.put_nowait(data)
        except asyncio.QueueFull:  # the socket is stuck: the oldest text goes
            outbox.get_nowait()
            outbox.task_done()
            outbox.put_nowait(data)

    async def _write(self, ws: ClientConnection, outbox: asyncio.Queue[str]) -> None:
        while True:
            data = await outbox.get()
            try:
                await ws.send(data)
            except websockets.ConnectionClosed:
                return
            finally:
                outbox.task_done()
            self.packets_sent += 1

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                if isinstance(data, bytes):
                    self._on_audio(data)
                else:
                    call_on(self._room_loop, self._on_text, data)
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must not leave the session half alive
            log.error("the realtime session's reader failed: %r", exc, exc_info=exc)
        received = ws.protocol.close_rcvd
        code, reason = (received.code, received.reason) if received is not None else (1006, "")
        call_on(self._room_loop, self._closed, code, reason)

    def _on_audio(self, data: bytes) -> None:
        if len(data) % 2:
            self.malformed += 1
            self.ignored += 1
            log.debug("ignoring an audio frame of %d bytes (not whole samples)", len(data))
        elif data and self._player is not None:
            self._player.push(np.frombuffer(data, dtype=np.int16))

    def _drop_queued(self, barge_in: bool) -> None:
        if self._player is not None:
            self._player.drop(barge_in=barge_in)

    # -- what the agent says (room loop) ---------------------------------------------------
    def _closed(self, code: int, reason: str) -> None:
        if not self._core.closing:
            self._core.remote_end(wire.close_details(code, reason, self._end_reason))

    def _agent_audio(self, speaking: bool) -> None:
        if speaking:
            self._core.agent_speaks_again()
        self._core.set_heard_mode(speaking)

    def _on_text(self, data: str) -> None:
        self.packets_received += 1
        try:
            frame = wire.decode(data)
        except wire.InvalidFrame as exc:
            self.malformed += 1
            self.ignored += 1
            log.debug("ignoring a realtime frame: %s", exc)
            return
        if frame is None or isinstance(frame, wire.Ready):
            self.ignored += 1
            return
        core = self._core
        if isinstance(frame, wire.Transcript):
            source = MessageSource.USER if frame.role == "user" else MessageSource.AGENT
            segment = f"{frame.role}-{self._segments[frame.role]}"
            if frame.final:
                self._segments[frame.role] += 1
            core.transcribed(source, segment, frame.text, frame.final, track="", path="realtime")
        elif isinstance(frame, wire.Interruption):
            core.barge_in(Interruption(is_interruption=True), quiet_s=0.0)
            call_on(core.audio_loop, self._drop_queued, True)
            core.set_heard_mode(False)
        elif isinstance(frame, wire.Error):
            core.report_error(SpekoClientError(ErrorCode.AGENT_ERROR, f"the agent reported {frame.code}: "
                                               f"{frame.message}"))
        elif isinstance(frame, wire.ToolCall):
            task = asyncio.get_running_loop().create_task(self._call_tool(frame))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif isinstance(frame, wire.Usage):
            core.set_usage((ModelUsage(kind="realtime", provider="speko", model="", values={
                "input_audio_tokens": frame.input_audio_tokens,
                "output_audio_tokens": frame.output_audio_tokens}),))
        elif isinstance(frame, wire.End):
            self._end_reason = frame.reason or "end"

    async def _call_tool(self, frame: wire.ToolCall) -> None:
        output = await run_tool(self._core.tools, frame, self.TOOL_TIMEOUT_S)
        if not self._core.closing:
            call_on(self._core.audio_loop, self._post, wire.tool_result(frame.call_id, output))

    # -- commands (room loop) ------------------------------------------------------------
    def require_link(self) -> None:
        ws = self._ws
        if self._core.closing or ws is None or ws.close_code is not None:
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, "the session is not connected")

    async def send_packet(self, payload: bytes) -> None:
        raise unsupported(self.name, "send data packets: realtime sessions carry only audio and tool results "
                          "from the client")

    async def send_chat(self, text: str) -> None:
        raise unsupported(self.name, "send text: realtime sessions carry only audio and tool results from "
                          "the client")

    async def interrupt(self) -> None:
        """Stop the agent's reply: the ``interrupt`` frame, and the speaker
        silenced within one device buffer."""
        call_on(self._core.audio_loop, self._post, wire.INTERRUPT)
        call_on(self._core.audio_loop, self._drop_queued, False)
        self._core.set_heard_mode(False)

    async def commit(self) -> None:
        call_on(self._core.audio_loop, self._post, wire.COMMIT)

    def set_muted(self, muted: bool) -> None:
        pass  # the core's microphone pump sends nothing while muted

    async def stop_audio(self) -> None:
        if self._player is not None:
            await self._player.stop()

    async def close(self) -> None:
        for task in self._calls:
            task.cancel()
        with contextlib.suppress(Exception):
            await run_on(self._core.audio_loop, self._close())

    async def _close(self) -> None:
        """Audio loop: what is queued goes first (a tool's answer), then the close."""
        ws, outbox = self._ws, self._outbox
        if ws is not None and outbox is not None:
            if not self._tasks[1].done():
                with contextlib.suppress(Exception):
                    await within(outbox.join(), 1)
            with contextlib.suppress(Exception):
                await within(ws.close(*wire.CLIENT_CLOSE), 3)
        await cancel_all(self._tasks)
        self._tasks = []

    async def release_audio(self) -> None:
        pass


async def open_session(url: str, token: str, timeout: float) -> tuple[ClientConnection, wire.Ready]:
    """Open a realtime session's socket and wait for ``ready``: CONNECTION_FAILED
    at once for a refused handshake (``status`` set), after ``timeout`` without
    ``ready`` (the socket is closed again), or for a close before it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        ws = await within(connect(
            url, subprotocols=[Subprotocol(token)], compression=None, proxy=None, open_timeout=None,
            max_size=2 ** 22, close_timeout=2), timeout)
    except asyncio.TimeoutError:
        raise SpekoClientError(ErrorCode.CONNECTION_FAILED,
                               f"could not connect to {url} within {timeout:g} s") from None
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
        error = SpekoClientError(ErrorCode.CONNECTION_FAILED, f"{url} refused the session (HTTP {status})", exc)
        error.status = status
        raise error from exc
    except (OSError, websockets.WebSocketException) as exc:
        raise SpekoClientError(ErrorCode.CONNECTION_FAILED, f"could not connect to {url}: {exc}", exc) from exc
    try:
        ready = await within(_wait_ready(ws), max(0.0, deadline - loop.time()))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await within(ws.close(*wire.CLIENT_CLOSE), 2)
        if isinstance(exc, asyncio.TimeoutError):
            raise SpekoClientError(ErrorCode.CONNECTION_FAILED,
                                   f"{url} sent no ready frame within {timeout:g} s") from None
        raise
    return ws, ready


async def _wait_ready(ws: ClientConnection) -> wire.Ready:
    error: str | None = None
    try:
        async for data in ws:
            if isinstance(data, bytes):
                continue  # audio before ready has no rate yet
            try:
                frame = wire.decode(data)
            except wire.InvalidFrame:
                continue
            if isinstance(frame, wire.Ready):
                return frame
            if isinstance(frame, wire.Error):
                error = f"{frame.code}: {frame.message}"
    except websockets.ConnectionClosed:
        pass
    said = f"; the agent said {error}" if error else ""
    raise SpekoClientError(ErrorCode.CONNECTION_FAILED, "the session closed before it was ready "
                           f"({ws.close_code} {ws.close_reason or ''}".rstrip() + f"){said}")


async def run_tool(tools: ToolHost, frame: wire.ToolCall, timeout: float) -> str:
    """Run one client tool for a ``tool_call`` frame: its result, or
    ``{"error": message}`` when it failed, was refused or took longer than
    ``timeout`` seconds (never a traceback)."""
    invocation = rtc.RpcInvocationData(request_id=frame.call_id, caller_identity=AGENT, payload=frame.arguments,
                                       response_timeout=timeout, method=frame.name)
    call = asyncio.get_running_loop().create_task(tools.call(frame.name, invocation))
    done, _ = await asyncio.wait({call}, timeout=timeout)
    if not done:
        invocation.cancel_reason = rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT
        call.cancel()
        output = wire.tool_error(f"no answer within {timeout:g} s")
    else:
        try:
            output = call.result()
        except rtc.RpcError as exc:
            output = wire.tool_error(exc.message)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(call, return_exceptions=True)
    return output
