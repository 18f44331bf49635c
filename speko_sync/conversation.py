"""``Conversation``: a Speko voice session for plain, blocking Python."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

from . import _protocol, signals
from ._lifecycle import Lifecycle
from ._loop import LoopStopped
from ._runtime import check_not_forked_after_use, runtime
from ._session import TRANSPORTS, Session
from ._tools import Tool, check_tool, check_tools
from .audio import AudioBackend, AudioConstraints, PyAudioBackend
from .errors import ErrorCode, SpekoClientError
from .events import (
    AgentState,
    AgentToolsExecuted,
    ControlEvent,
    ConversationStats,
    DisconnectionDetails,
    DisconnectReason,
    EventBatch,
    Interruption,
    Message,
    Mode,
    ModelUsage,
    Reconnection,
    Reply,
    Status,
    ToolCall,
    Turn,
    UserState,
)
from .overrides import OverridesLike, overrides_to_wire

__all__ = ["Conversation"]

_CALLBACKS = {
    "on_connect": "connected",
    "on_disconnect": "disconnected",
    "on_reconnect": "reconnected",
    "on_message": "message",
    "on_transcript": "transcript",
    "on_status_change": "status_changed",
    "on_mode_change": "mode_changed",
    "on_agent_state_change": "agent_state_changed",
    "on_user_state_change": "user_state_changed",
    "on_turn": "turn",
    "on_tool_call": "tool_call",
    "on_agent_tools": "agent_tools",
    "on_interruption": "interruption",
    "on_usage": "usage",
    "on_control": "control",
    "on_error": "error",
}


class Conversation:
    """A live voice conversation with a Speko agent.

    The constructor opens the audio devices first (a device failure raises
    before any network traffic, so the session's credentials stay usable), then
    blocks until the room is joined and the microphone track is published
    (status ``connected``); then audio flows both ways on background threads
    while the caller's code carries on. Every method is thread-safe.

    Threads: one asyncio loop thread per process, shared by every conversation
    and started by the first, owns the LiveKit rooms; a second one runs every
    conversation's audio pumps, so nothing the room does delays a frame; the
    audio backend's own threads (PortAudio callbacks) move audio; one
    dispatcher thread per process
    runs every receiver (the ``on_*`` callbacks and :mod:`speko_sync.signals`
    receivers), each conversation's in order. Receivers never run on the audio
    or network threads; one that blocks delays every conversation's events.

    Args:
        token: the session's LiveKit access token (``conversationToken``), or
            for a realtime session its ``wsToken``.
        url: the LiveKit URL (``livekitUrl``, ``wss://...``), or for a realtime
            session its ``wsUrl``.
        transport: ``"livekit"`` (the default: a LiveKit room with a LiveKit
            Agents worker) or ``"realtime"`` (Speko's speech-to-speech session
            over one WebSocket: audio, transcripts, interruptions, client
            tools and usage; no text from the client, no reconnection). What a
            transport cannot do raises ``SpekoClientError`` UNSUPPORTED naming
            it (see the README's transport table).
        conversation_id: the realtime session's id (``sessionId``), reported
            as :attr:`conversation_id`; LiveKit sessions use the room name.
        overrides: agent/TTS overrides, sent first thing after joining
            (LiveKit only).
        audio_constraints: microphone processing (all on by default).
        input_device, output_device: for the default PyAudio backend, a
            PortAudio index or device name.
        audio: an audio backend (:class:`~speko_sync.audio.NullAudio`,
            :class:`~speko_sync.audio.BufferAudio`...); default PyAudio.
        microphone: false for a text-only session: no microphone is opened or
            published; the agent's audio still plays and chat messages work.
        on_connect(conversation_id), on_disconnect(details),
        on_reconnect(reconnection), on_message(message),
        on_transcript(transcript), on_status_change(status), on_mode_change(mode),
        on_agent_state_change(state), on_control(event), on_error(error),
        on_user_state_change(state), on_turn(turn), on_tool_call(call),
        on_agent_tools(executed), on_interruption(interruption), on_usage(usage):
            callbacks with the payload alone, run on the dispatcher thread
            (see :mod:`speko_sync.signals`).
        client_tools: ``{name: function}``: plain blocking functions the agent
            may call (LiveKit RPC methods of those names, registered before
            the constructor returns). See :meth:`register_tool` for the rules.
        connect_timeout: seconds the constructor may take.
        reconnect_timeout: seconds the conversation may stay ``reconnecting``
            after LiveKit notices the link is lost (default 60: about the
            whole retry schedule of LiveKit's own clients, 10 attempts with
            backoff to 7 s, so a minute's outage on flaky Wi-Fi is survived;
            livekit-server keeps a silent participant about 20 s, after which
            LiveKit joins again as a new participant, and a LiveKit Agents
            worker keeps its session for it. A realtime session does not
            reconnect: a lost socket ends it).
            Past it the session ends with reason ``timeout``
            (``RECONNECT_TIMEOUT``) and an ``on_error`` ``DISCONNECTED``: a
            server that went away is reported this way within that time.

    Reconnection: when the link drops (the connection closes, or the server
    stops answering pings for the ping timeout), the status goes
    ``connected`` -> ``reconnecting`` while LiveKit resumes the session or
    joins it again (republishing the microphone), then back to ``connected``
    with ``on_reconnect(Reconnection)``. While reconnecting, sends raise
    ``NOT_CONNECTED`` at once and nothing is sent: nothing is queued, so
    nothing is delivered twice; send again after ``on_reconnect``.

    Raises:
        SpekoClientError: CONNECTION_FAILED if joining fails or times out;
            MICROPHONE_FAILED if the audio device cannot be opened or the
            microphone cannot be published (the room is left again). Every
            device taken is released and the room left before it is raised
            (the process-wide threads stay for later conversations).
        TypeError, ValueError: for bad arguments (overrides over 15 KiB as a
            packet included), before anything starts.
        RuntimeError: this process was forked from one that had already used
            LiveKit (its native threads do not survive fork()); raised before
            anything starts, with what to do instead (see the README's
            Celery and gunicorn section).
    """

    def __init__(self, token: str, url: str, *, overrides: OverridesLike | None = None,
                 audio_constraints: AudioConstraints | None = None,
                 input_device: int | str | None = None, output_device: int | str | None = None,
                 audio: AudioBackend | None = None, microphone: bool = True,
                 on_connect: Callable[[str], Any] | None = None,
                 on_disconnect: Callable[[DisconnectionDetails], Any] | None = None,
                 on_reconnect: Callable[[Reconnection], Any] | None = None,
                 on_message: Callable[[Message], Any] | None = None,
                 on_transcript: Callable[[tuple[Message, ...]], Any] | None = None,
                 on_status_change: Callable[[Status], Any] | None = None,
                 on_mode_change: Callable[[Mode], Any] | None = None,
                 on_agent_state_change: Callable[[AgentState], Any] | None = None,
                 on_control: Callable[[ControlEvent], Any] | None = None,
                 on_error: Callable[[SpekoClientError], Any] | None = None,
                 on_user_state_change: Callable[[UserState], Any] | None = None,
                 on_turn: Callable[[Turn], Any] | None = None,
                 on_tool_call: Callable[[ToolCall], Any] | None = None,
                 on_agent_tools: Callable[[AgentToolsExecuted], Any] | None = None,
                 on_interruption: Callable[[Interruption], Any] | None = None,
                 on_usage: Callable[[tuple[ModelUsage, ...]], Any] | None = None,
                 client_tools: Mapping[str, Tool] | None = None,
                 connect_timeout: float = 15.0, reconnect_timeout: float = 60.0,
                 transport: str = "livekit", conversation_id: str | None = None) -> None:
        # Validate everything before any thread or device is taken.
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(map(repr, TRANSPORTS))}, got {transport!r}")
        if conversation_id is not None and (not isinstance(conversation_id, str) or transport != "realtime"):
            raise ValueError("conversation_id is a realtime session's sessionId (a str); LiveKit sessions "
                             "report their room name")
        if overrides is not None and transport != "livekit":
            raise SpekoClientError(ErrorCode.UNSUPPORTED, f"the {transport} transport cannot send overrides: "
                                   "set them when the session is minted")
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token must be a non-empty string (the session's conversationToken)")
        if not isinstance(url, str) or urlparse(url).scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"url must be a ws://, wss://, http:// or https:// URL, got {url!r}")
        if not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")
        if isinstance(reconnect_timeout, bool) or not isinstance(reconnect_timeout, (int, float)) \
                or not reconnect_timeout > 0:
            raise ValueError(f"reconnect_timeout must be a positive number of seconds, got {reconnect_timeout!r}")
        overrides_packet = None
        if overrides is not None:
            overrides_to_wire(overrides)  # raises on bad overrides
            overrides_packet = _protocol.encode_overrides(overrides)
        if audio_constraints is not None and not isinstance(audio_constraints, AudioConstraints):
            raise TypeError("audio_constraints must be an AudioConstraints")
        if audio is not None and not isinstance(audio, AudioBackend):
            raise TypeError(f"audio must be an AudioBackend, got {type(audio).__name__}")
        if not isinstance(microphone, bool):
            raise TypeError(f"microphone must be a bool, got {type(microphone).__name__}")
        if audio is not None and (input_device is not None or output_device is not None):
            raise ValueError("input_device/output_device apply to the default backend; "
                             "pass them to the backend given as audio= instead")
        callbacks = {name: fn for name, fn in (
            ("on_connect", on_connect), ("on_disconnect", on_disconnect), ("on_reconnect", on_reconnect),
            ("on_message", on_message),
            ("on_transcript", on_transcript), ("on_status_change", on_status_change),
            ("on_mode_change", on_mode_change), ("on_agent_state_change", on_agent_state_change),
            ("on_control", on_control), ("on_error", on_error), ("on_user_state_change", on_user_state_change),
            ("on_turn", on_turn), ("on_tool_call", on_tool_call), ("on_agent_tools", on_agent_tools),
            ("on_interruption", on_interruption), ("on_usage", on_usage)) if fn is not None}
        for name, fn in callbacks.items():
            if not callable(fn):
                raise TypeError(f"{name} must be callable")
        tools = check_tools(client_tools)
        check_not_forked_after_use()

        self._conversation_id = conversation_id or ""
        self._transport = transport
        self._receivers: list[tuple[Any, Any]] = []
        self._audio = audio or PyAudioBackend(input_device, output_device)
        for name, fn in callbacks.items():
            signal = getattr(signals, _CALLBACKS[name])
            receiver = _payload_only(fn, signals.PAYLOAD_NAMES[_CALLBACKS[name]])
            signal.connect(receiver, sender=self, weak=False)
            self._receivers.append((signal, receiver))

        shared = self._runtime = runtime()  # one loop thread and one dispatcher thread for every conversation
        self._dispatcher = shared.dispatcher.channel(self)
        self._runner = shared.loop
        shared.open.add(self)  # ended at interpreter exit if still open
        self._life = Lifecycle(self._emit, self._runner, lambda: self._session.close(), self._release,
                               float(reconnect_timeout))
        self._session = Session(self._emit, self._audio, audio_constraints or AudioConstraints(),
                                self._life.remote_end, microphone=microphone, on_link=self._life.link,
                                audio_loop=shared.audio.loop, emit_latest=self._dispatcher.post_latest,
                                client_tools=tools, transport=transport)
        self._emit("status_changed", Status.CONNECTING)
        try:
            self._conversation_id = self._runner.call(
                self._session.connect(url, token, overrides_packet, float(connect_timeout)),
                timeout=connect_timeout + 10) or self._conversation_id
        except BaseException as exc:
            self._life.abort()
            self._dispatcher.wait_closed(5)
            if isinstance(exc, SpekoClientError) or not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and friends pass through unchanged
            raise SpekoClientError(ErrorCode.CONNECTION_FAILED, f"could not connect: {exc}", exc) from exc
        if self._life.connected(self._conversation_id):  # end_session() was called while connecting
            self.end_session()

    @classmethod
    def from_session(cls, response: object, **options: Any) -> Conversation:
        """Join the session your server minted: ``response`` is the ``POST
        /v1/sessions`` answer (a dict or an object; ``transportToken``/
        ``transportUrl`` or ``conversationToken``/``livekitUrl``, camelCase or
        snake_case), a :class:`~speko_sync.sessions.SessionCredentials`, or a
        ``spekoai`` ``WebJoinResult`` (``token``/``url``). ``options`` are the
        constructor's keyword arguments.

        An answer with ``wsUrl`` and ``wsToken`` (or ``transport``
        ``"realtime"``) joins a realtime session, whose ``sessionId`` becomes
        :attr:`conversation_id`.

        Raises ``ValueError`` for a response without token or URL or with a
        transport other than ``livekit`` or ``realtime`` (``daily`` included:
        Pipecat over Daily needs Daily's cloud), :class:`SpekoClientError`
        (CONNECTION_FAILED) for a session already expired, both before any
        connection; then as the constructor.
        """
        from .sessions import session_credentials

        credentials = session_credentials(response)
        if credentials.transport == "realtime":
            options.setdefault("transport", "realtime")
            options.setdefault("conversation_id", credentials.session_id)
        return cls(credentials.token, credentials.url, **options)

    # -- internals ----------------------------------------------------------------------
    def _emit(self, kind: str, value: Any) -> None:
        self._dispatcher.post(kind, value)

    def _release(self) -> None:
        """The last event is posted: let go of the receivers and the dispatcher
        channel (a receiver may be waiting for us: do not wait here)."""
        self._dispatcher.call(self._disconnect_receivers)
        self._dispatcher.close()
        self._runtime.open.discard(self)

    def _disconnect_receivers(self) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver, sender=self)
        self._receivers = []

    # -- public API -----------------------------------------------------------------------
    @property
    def conversation_id(self) -> str:
        """The conversation id (the LiveKit room name, or the realtime session's ``sessionId``)."""
        return self._conversation_id

    @property
    def transport(self) -> str:
        """``"livekit"`` or ``"realtime"``."""
        return self._transport

    @property
    def status(self) -> Status:
        """Where the conversation is (:class:`Status`); any thread."""
        return self._life.status

    @property
    def mode(self) -> Mode:
        """``speaking`` while the agent speaks, else ``listening``: the agent's own
        state when it publishes one, else LiveKit's active speakers."""
        return self._session.mode

    @property
    def agent_state(self) -> AgentState | None:
        """What the agent says it is doing (LiveKit Agents' ``lk.agent.state``:
        initializing, idle, listening, thinking, speaking); ``None`` until the
        agent publishes a state."""
        return self._session.agent_state

    @property
    def user_state(self) -> UserState | None:
        """What the agent says the user is doing (speaking, listening, away),
        from its session stream; ``None`` for an agent that sends none."""
        return self._session.user_state

    @property
    def usage(self) -> tuple[ModelUsage, ...]:
        """The agent's model usage as last reported (empty until it reports)."""
        return self._session.usage

    def transcript(self) -> tuple[Message, ...]:
        """The reconciled transcript so far: one message per speaker turn,
        ordered by when each turn began (see :mod:`speko_sync._transcript`);
        any thread, any status. Raises nothing."""
        return self._session.transcript.messages

    @property
    def mic_muted(self) -> bool:
        """Whether the microphone is muted (:meth:`set_mic_muted`)."""
        return self._session.path.muted

    @property
    def volume(self) -> float:
        """The agent's playback volume, 0..1 (:meth:`set_volume`)."""
        return self._session.path.volume

    def is_open(self) -> bool:
        """True while connected (sends go out); false while connecting,
        reconnecting and after the end. Raises nothing."""
        return self.status == Status.CONNECTED

    def _require_connected(self, *also: Status) -> None:
        status = self.status
        if status != Status.CONNECTED and status not in also:
            hint = ": nothing was sent; send again after on_reconnect" if status == Status.RECONNECTING else ""
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, f"the conversation is {status.value}{hint}")

    def _call(self, coro: Any) -> Any:
        """Run a session command on the loop. It waits for LiveKit as long as
        the session lives (a send caught by an outage LiveKit has not reported
        yet goes out once the link is back, or fails when the session ends);
        the bound is only a safety net."""
        try:
            return self._runner.call(coro, timeout=self._life.reconnect_timeout + 30)
        except LoopStopped as exc:  # the interpreter is shutting down
            raise SpekoClientError(ErrorCode.NOT_CONNECTED, "the conversation has ended", exc) from exc

    def set_mic_muted(self, muted: bool) -> None:
        """Mute or unmute the microphone: a LiveKit track mute the agent sees, and
        no audio is sent while muted. Works while reconnecting too.

        Raises:
            TypeError: ``muted`` is not a bool.
            SpekoClientError: NOT_CONNECTED while connecting and after the end.
        """
        if not isinstance(muted, bool):
            raise TypeError("muted must be a bool")
        self._require_connected(Status.RECONNECTING)
        self._call(self._session.set_muted(muted))

    def set_volume(self, volume: float) -> None:
        """Set the agent's playback volume, 0..1 (clamped), effective within one
        audio buffer; any status, any thread.

        Raises:
            TypeError: ``volume`` is not a number (a bool is not one).
            ValueError: ``volume`` is NaN.
        """
        if isinstance(volume, bool) or not isinstance(volume, (int, float)):
            raise TypeError(f"volume must be a number between 0 and 1, got {volume!r}")
        if volume != volume:
            raise ValueError("volume must be a number between 0 and 1, got NaN")
        self._session.path.set_volume(min(1.0, max(0.0, float(volume))))

    def send_chat_message(self, text: str) -> None:
        """Send a typed user turn the way today's Speko worker (LiveKit Agents)
        reads one: an ``lk.chat`` text stream; the agent answers it like a spoken
        turn, with audio and transcript. The turn is delivered as the user's
        message and joins the transcript (the agent does not echo typed turns).
        Blocks until LiveKit took the stream (an outage LiveKit has not noticed
        yet holds it until the link is back or the session ends).

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: ``text`` is empty or not valid Unicode (checked first).
            SpekoClientError: NOT_CONNECTED while connecting, while reconnecting
                (nothing was sent: send again after ``on_reconnect``), after the
                end, or when LiveKit could not send it ("not sent: ...").
        """
        _protocol.check_chat_text(text)
        self._require_connected()
        self._call(self._session.send_chat(text))

    def send_user_message(self, text: str) -> None:
        """Send a visible user turn as the v0.0.3 JSON packet (``user_message``).
        Today's Speko worker (LiveKit Agents) does not read it: use
        :meth:`send_chat_message` for a typed turn it answers; this stays for
        agents that read the JSON packets. Returns once LiveKit took the packet
        on its reliable channel.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: ``text`` is not valid Unicode, or the packet would exceed
                LiveKit's 15 KiB for one reliable packet (longer text goes
                through :meth:`send_chat_message`); checked before anything else.
            SpekoClientError: NOT_CONNECTED as for :meth:`send_chat_message`.
        """
        payload = _protocol.encode_user_message(text)
        self._require_connected()
        self._call(self._session.send(payload, "send_user_message", text))

    def send_contextual_update(self, text: str) -> None:
        """Send an invisible hint to the agent as the v0.0.3 JSON packet
        (``contextual_update``; not read by today's LiveKit Agents worker).

        Raises:
            TypeError, ValueError, SpekoClientError: as :meth:`send_user_message`.
        """
        payload = _protocol.encode_contextual_update(text)
        self._require_connected()
        self._call(self._session.send(payload, "send_contextual_update", text))

    # -- client tools ---------------------------------------------------------------------
    def register_tool(self, name: str, fn: Tool) -> None:
        """Let the agent call ``fn`` as the client tool ``name`` (a LiveKit RPC
        method), from now on; replaces a tool of that name. Any thread, any
        status before the end.

        The agent's payload, if a JSON object, is passed as keyword arguments
        (``fn(on=True)``), an empty one as none, any other as one string. A
        ``str`` result is sent as it is, anything else JSON-encoded. An
        exception sends ``str(exc)`` as the RPC error's message (raise
        :class:`~speko_sync.errors.ToolError` to choose it exactly); never a
        traceback. Only agent participants may call; others are refused (the
        function never runs) and counted. ``fn`` runs on a thread of the
        library's tool pool (``speko-tool-N``), never on the loop, audio or
        dispatcher thread, so a slow tool holds up neither audio nor events;
        at most 4 calls of one conversation run at once. One that outlives the
        agent's deadline (its ``response_timeout`` minus LiveKit's round-trip
        allowance) is answered with a timeout error. Every call is reported
        through ``on_tool_call`` / :data:`speko_sync.signals.tool_call`.

        Raises:
            TypeError: ``name`` is not a str, ``fn`` not callable, or a
                coroutine function (tools are plain blocking functions).
            ValueError: ``name`` is empty, over 128 characters, or padded.
            SpekoClientError: NOT_CONNECTED after the end.
        """
        check_tool(name, fn)
        self._require_connected(Status.CONNECTING, Status.RECONNECTING)
        self._session.tools.add(name, fn)

    def unregister_tool(self, name: str) -> bool:
        """Stop offering the client tool ``name``; later calls are refused.
        Returns False if there was none. Any thread, any status; raises nothing."""
        return self._session.tools.remove(name)

    @property
    def tools(self) -> list[str]:
        """The names of the client tools offered now, sorted."""
        return self._session.tools.names()

    # -- turns --------------------------------------------------------------------------
    def ask(self, text: str, timeout: float = 30.0) -> Reply:
        """Send ``text`` as a typed turn (as :meth:`send_chat_message`) and block
        until the agent's answer to it is final; return it as a :class:`Reply`
        (text, the agent's metrics, tools it called, client-measured latency).
        Any thread but the dispatcher's (a receiver waiting for a reply would
        hold up the events that complete it).

        The answer is the agent's next complete turn after this one: with
        LiveKit Agents' session stream, its conversation item (after the
        user's item for ``text``); without, its final transcript once it is
        no longer speaking.

        Raises:
            TypeError, ValueError: as :meth:`send_chat_message`, or a
                ``timeout`` that is not a positive number.
            SpekoClientError: NOT_CONNECTED as :meth:`send_chat_message`, or
                when the session ends before the answer.
            TimeoutError: no answer within ``timeout`` seconds (the turn was sent).
            RuntimeError: called on the dispatcher thread.
        """
        _protocol.check_chat_text(text)
        self._check_wait(timeout)
        self._require_connected()
        return self._wait_reply(self._call(self._session.ask(text)), timeout)

    def wait_for_reply(self, timeout: float = 30.0) -> Reply:
        """Block until the agent's next complete turn (a spoken question's
        answer, say) and return it as a :class:`Reply`; its latencies are
        timed from the end of the user's speech at the microphone when the
        user spoke meanwhile, else from this call.

        Raises:
            ValueError: ``timeout`` is not a positive number.
            SpekoClientError: NOT_CONNECTED when not connected or when the
                session ends first.
            TimeoutError: no complete turn within ``timeout`` seconds.
            RuntimeError: called on the dispatcher thread.
        """
        self._check_wait(timeout)
        self._require_connected(Status.RECONNECTING)
        return self._wait_reply(self._call(self._session.expect_reply()), timeout)

    def interrupt(self) -> None:
        """Stop the agent's reply now (realtime: the ``interrupt`` frame; the
        speaker goes quiet within one device buffer and what was queued is
        dropped).

        Raises:
            SpekoClientError: UNSUPPORTED on LiveKit (LiveKit Agents takes no
                interrupt request from the caller: it stops when the user
                speaks over it); NOT_CONNECTED when not connected.
        """
        self._require_connected()
        self._call(self._session.interrupt())

    def commit_user_turn(self) -> None:
        """Tell the agent the user's turn is over now, instead of waiting for
        its end-of-speech detection (realtime: the ``control`` ``commit`` frame).

        Raises:
            SpekoClientError: UNSUPPORTED on LiveKit (LiveKit Agents detects the
                end of a turn itself); NOT_CONNECTED when not connected.
        """
        self._require_connected()
        self._call(self._session.commit())

    def _check_wait(self, timeout: float) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if threading.current_thread() is self._runtime.dispatcher.thread:
            raise RuntimeError("ask() and wait_for_reply() cannot run in a receiver: the reply is delivered by "
                               "the thread that would be waiting; call them from your own thread")

    @staticmethod
    def _wait_reply(future: concurrent.futures.Future[Reply], timeout: float) -> Reply:
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the agent did not complete a turn within {timeout:g} s") from None

    def poll_events(self) -> EventBatch:
        """Return and clear the events since the last call, without blocking;
        any thread, any status. Keeps the newest 1000; ``EventBatch.dropped``
        counts the older ones lost. Raises nothing."""
        return self._dispatcher.poll()

    def stats(self) -> ConversationStats:
        """A snapshot of the audio, packet, tool and latency counters (see
        :class:`ConversationStats`); any thread, any status. Raises nothing."""
        return self._session.stats()

    def end_session(self, timeout: float = 10.0) -> DisconnectionDetails:
        """End the conversation and release everything (the OS microphone
        included) before returning. Idempotent; callable from any thread,
        receivers included, and while reconnecting. Called while the
        constructor is still connecting (from another thread), it ends the
        conversation as soon as it is connected. Returns the disconnection
        details.

        Raises:
            TimeoutError: release took longer than ``timeout`` seconds (it goes
                on; :meth:`wait_for_end` waits for it).
        """
        self._life.end()
        return self.wait_for_end(timeout)

    def wait_for_end(self, timeout: float | None = None) -> DisconnectionDetails:
        """Block until the conversation has ended and every event of it was
        delivered (at once on the dispatcher thread); return why.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._life.ended.wait(timeout):
            raise TimeoutError(f"the conversation did not end within {timeout} s")
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._dispatcher.wait_closed(remaining)  # every event delivered (at once on the dispatcher thread)
        details = self._life.details
        return details if details is not None else DisconnectionDetails(DisconnectReason.UNKNOWN, "")

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end_session()

    def __repr__(self) -> str:
        return f"<Conversation {self._conversation_id or '?'} {self.status.value}>"


def _payload_only(fn: Callable[[Any], Any], key: str) -> Callable[..., Any]:
    def receiver(sender: Any, **kwargs: Any) -> Any:
        return fn(kwargs[key])
    return receiver
