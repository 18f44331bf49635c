"""The seam between a session's core (:mod:`speko_sync._session`) and the
transport that moves its frames and messages: LiveKit
(:mod:`speko_sync._livekit`) or Speko's realtime WebSocket
(:mod:`speko_sync._realtime`).

A transport joins, feeds the agent's audio to :meth:`Core.path`'s ``play``
(10 ms frames at 48 kHz, at real time), takes the microphone's processed
frames through the sink it returns from :meth:`Transport.start`, and reports
what arrives through the :class:`Core` methods. It runs on the room loop,
except its sink and its playback, which run on the audio loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from .errors import ErrorCode, SpekoClientError
from .events import AgentState, DisconnectionDetails, Interruption, Message, MessageSource, ModelUsage, Reconnection

if TYPE_CHECKING:
    import asyncio

    from ._audio_path import AudioPath, PlainSink, Sink
    from ._sent import SendLog
    from ._tools import ToolHost
    from ._turns import TurnTracker


class Core(Protocol):
    """What a transport may tell the session, on the room loop."""

    path: AudioPath
    tools: ToolHost
    turns: TurnTracker
    microphone: bool
    closing: bool
    audio_loop: asyncio.AbstractEventLoop | None
    sends: SendLog

    def deliver(self, message: Message) -> None: ...
    def transcribed(self, source: MessageSource, segment_id: str, text: str, is_final: bool, *,
                    track: str, path: str) -> None: ...
    def set_agent_state(self, state: AgentState) -> None: ...
    def set_heard_mode(self, speaking: bool) -> None: ...
    def barge_in(self, interruption: Interruption, *, quiet_s: float) -> None: ...
    def agent_speaks_again(self) -> None: ...
    def session_event(self, kind: str, value: object) -> None: ...
    def set_usage(self, usage: tuple[ModelUsage, ...]) -> None: ...
    def report_error(self, error: SpekoClientError) -> None: ...
    def remote_end(self, details: DisconnectionDetails) -> None: ...
    def link(self, reconnection: Reconnection | None) -> None: ...


class Transport(Protocol):
    """One way of reaching the agent. Counters are read by ``stats()``."""

    name: ClassVar[str]
    #: the playback jitter policy's slack (ms), for a transport that paces the
    #: agent's audio itself; ``None``: the audio path's default
    playback_slack_ms: ClassVar[int | None]
    #: after a stall, microphone audio older than the capture backlog is
    #: dropped rather than sent in a burst
    drop_stale_capture: ClassVar[bool]
    #: how often the microphone pump runs (ms, a multiple of 10): the
    #: transport's own frame length
    tick_ms: ClassVar[int]
    #: the microphone's sink is a coroutine function (else a plain call,
    #: which the pump makes from the loop's timer)
    sink_awaits: ClassVar[bool]
    packets_sent: int

    @property
    def packets_received(self) -> int: ...
    @property
    def malformed(self) -> int: ...
    @property
    def ignored(self) -> int: ...

    @property
    def session_messages(self) -> int: ...
    @property
    def session_ignored(self) -> int: ...

    async def join(self, url: str, token: str, timeout: float) -> str:
        """Connect within ``timeout`` seconds; the conversation id. Raises
        :class:`SpekoClientError` CONNECTION_FAILED."""
    async def start(self, timeout: float) -> Sink | PlainSink | None:
        """After the join, with the devices open: publish what the microphone
        needs and start the agent's audio; the microphone's sink (``None``
        for a text-only session)."""
    def frame_clocked(self) -> bool:
        """Audio loop: the agent's frames arrive at real time, one stream."""
    def queued_ms(self) -> float:
        """Any thread: the agent's audio waiting before the speaker's ring."""
    async def send_packet(self, payload: bytes) -> None: ...
    async def send_chat(self, text: str) -> None: ...
    async def interrupt(self) -> None: ...
    async def commit(self) -> None: ...
    def set_muted(self, muted: bool) -> None: ...
    def is_agent(self, identity: str) -> bool: ...
    def require_link(self) -> None:
        """NOT_CONNECTED unless messages can go out now."""
    async def stop_audio(self) -> None:
        """Audio loop: stop the playback started by :meth:`start`."""
    async def close(self) -> None:
        """Leave (if still there) and release the connection. Idempotent."""
    async def release_audio(self) -> None:
        """Audio loop, after :meth:`close`: release what the microphone's sink held."""


def unsupported(transport: str, what: str) -> SpekoClientError:
    """The one error for what a transport cannot do (ErrorCode.UNSUPPORTED)."""
    return SpekoClientError(ErrorCode.UNSUPPORTED, f"the {transport} transport cannot {what}")
