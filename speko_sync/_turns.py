"""Turns: when the agent's answer is complete, the latency the user hears, and barge-in.

Three pieces, each pure and tested on its own:

- :class:`VoiceEdges` (audio loop): a cheap energy gate over 10 ms frames that
  finds where speech starts and ends; one watches the microphone (after audio
  processing), one the agent's audio as it goes to the speaker.
- :class:`TurnTracker` (room loop): resolves the blocking turn API's waiters
  (:meth:`Conversation.ask`, :meth:`Conversation.wait_for_reply`) and measures
  the response latency as heard: end of the user's speech at the microphone ->
  first agent audio out of the speaker.
- :func:`is_barge_in`: whether an agent state change means the user cut the agent off.

Times are ``time.monotonic()`` seconds unless named ``*_at`` epoch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import ErrorCode, SpekoClientError
from .events import AgentState, Message, MessageSource, Reply, ToolCall, Turn, UserState

#: Peak (int16) a 10 ms frame must reach to count as voiced: about -40 dBFS.
VOICED_PEAK = 330


class VoiceEdges:
    """Speech edges in a stream of 10 ms frames.

    ``push(frame, now)`` returns ``"start"`` on the first voiced frame after at
    least ``gap_s`` unvoiced, ``"end"`` once ``hangover_s`` passed after the
    last voiced frame of speech that lasted at least ``min_speech_s``, else
    ``None``. ``last_voiced`` is when the last voiced frame ended. No
    allocation: two reductions over the frame."""

    def __init__(self, *, gap_s: float = 0.2, hangover_s: float = 0.2, min_speech_s: float = 0.05,
                 peak: int = VOICED_PEAK) -> None:
        self.gap_s, self.hangover_s, self.min_speech_s, self.peak = gap_s, hangover_s, min_speech_s, peak
        self.talking = False  # within speech (voiced, or unvoiced for less than the hangover)
        self.last_voiced = -1e9
        self._began = 0.0
        self._voiced_s = 0.0

    def reset(self) -> None:
        """Whatever voiced frame comes next starts speech."""
        self.talking = False
        self.last_voiced = -1e9

    def push(self, frame: np.ndarray | None, now: float, frame_s: float = 0.01) -> str | None:
        """``frame`` None: a frame known to be silent (nothing to measure)."""
        voiced = frame is not None and len(frame) > 0 and (int(frame.max()) > self.peak
                                                          or -int(frame.min()) > self.peak)
        if voiced:
            edge = None
            # after a gap (quiet frames, or none at all: an agent track sends nothing between turns)
            if now - self.last_voiced >= self.gap_s - 1e-6:
                edge = "start"
                self._voiced_s = 0.0
            self.talking = True
            self._voiced_s += frame_s
            self.last_voiced = now + frame_s
            return edge
        if self.talking and now - self.last_voiced >= self.hangover_s - 1e-6:
            self.talking = False
            if self._voiced_s >= self.min_speech_s:
                return "end"
        return None


def is_barge_in(old: AgentState | None, new: AgentState, *, user_speaking: bool) -> bool:
    """The agent stopped speaking while the user spoke: it was interrupted
    (a turn that ends by itself goes speaking -> listening with the user quiet)."""
    return old == AgentState.SPEAKING and new in (AgentState.LISTENING, AgentState.IDLE) and user_speaking


@dataclass
class _Waiter:
    future: concurrent.futures.Future[Reply]
    since: float  # monotonic: sent, or asked
    since_epoch: float
    anchored: bool  # the user's turn it answers has been seen (or none is needed)
    typed: bool
    first_audio: float | None = None
    tools: list[ToolCall] = field(default_factory=list)
    message: Message | None = None  # the agent's final text (without a session stream)


class TurnTracker:
    """Room loop. Fed what the session sees; resolves reply waiters and keeps
    the response latency as heard.

    A waiter completes with the agent's next turn:

    - with the agent's session stream (LiveKit Agents 1.5+): on its
      ``conversation_item_added`` for the agent's message, after the user's
      item for a typed turn (so a greeting still under way is not taken for
      the answer);
    - without one: on the agent's final transcript of a segment that began
      after the waiter, once the agent is no longer speaking or thinking.
    """

    #: A user's speech end older than this is not matched with agent audio.
    MATCH_WINDOW_S = 30.0

    def __init__(self) -> None:
        self._waiters: list[_Waiter] = []
        self.stream = False  # the agent sends its session stream
        self.agent_state: AgentState | None = None
        self.user_state: UserState | None = None
        self._speech_end: float | None = None  # the user's, waiting for the agent's audio
        self._heard: float | None = None  # the latency measured since the last agent turn
        self.response_latency_s: float | None = None
        self.agent_e2e_latency_s: float | None = None
        self._closed: SpekoClientError | None = None

    # -- waiters ------------------------------------------------------------------
    def expect(self, *, typed: bool) -> concurrent.futures.Future[Reply]:
        """A future of the agent's next reply (``typed``: to a turn about to be sent)."""
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        if self._closed is not None:
            future.set_exception(self._closed)
            return future
        self._waiters.append(_Waiter(future, time.monotonic(), time.time(), anchored=not typed,
                                     typed=typed))
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Reply]) -> None:
        # any thread (a cancelled wait): only drop from the list by identity
        self._waiters = [w for w in self._waiters if w.future is not future]

    def close(self, reason: str = "the conversation ended before the agent answered") -> None:
        self._closed = SpekoClientError(ErrorCode.NOT_CONNECTED, reason)
        for waiter in list(self._waiters):
            if not waiter.future.done():
                waiter.future.set_exception(self._closed)
        self._waiters = []

    def _resolve(self, waiter: _Waiter, text: str, turn: Turn | None) -> None:
        now = time.monotonic()
        reply = Reply(text=text, interrupted=turn.interrupted if turn is not None else False,
                      metrics=turn.metrics if turn is not None else None,
                      first_audio_s=None if waiter.first_audio is None else waiter.first_audio - waiter.since,
                      final_s=now - waiter.since, tool_calls=tuple(waiter.tools), turn=turn)
        if not waiter.future.done():
            waiter.future.set_result(reply)

    # -- inputs ---------------------------------------------------------------------
    def on_turn(self, turn: Turn) -> Turn:
        """A conversation item from the session stream; returns it with the
        response latency as heard attached (agent turns that answered speech)."""
        self.stream = True
        if turn.source == MessageSource.USER:
            for waiter in self._waiters:
                waiter.anchored = True
            return turn
        if self._heard is not None:
            turn = dataclasses.replace(turn, response_latency_s=self._heard)
            self._heard = None
        if turn.metrics is not None and turn.metrics.e2e_latency is not None:
            self.agent_e2e_latency_s = turn.metrics.e2e_latency
        for waiter in list(self._waiters):
            if waiter.anchored:
                self._resolve(waiter, turn.text, turn)
        return turn

    def on_message(self, message: Message) -> None:
        """A delivered message (transcripts, chat)."""
        if self.stream or message.source != MessageSource.AGENT or not message.is_final:
            return
        began = message.started_at if message.started_at is not None else time.time()
        for waiter in self._waiters:
            if began >= waiter.since_epoch:
                waiter.message = message
        self._settle()

    def on_agent_state(self, state: AgentState) -> None:
        self.agent_state = state
        self._settle()

    def _settle(self) -> None:
        """Without a session stream: a final agent text completes a waiter once
        the agent is quiet."""
        if self.stream or self.agent_state in (AgentState.SPEAKING, AgentState.THINKING):
            return
        for waiter in list(self._waiters):
            if waiter.message is not None:
                self._resolve(waiter, waiter.message.text, None)

    def on_tool_call(self, call: ToolCall) -> None:
        for waiter in self._waiters:
            waiter.tools.append(call)

    def on_user_speech_end(self, at: float) -> None:
        """The user's speech ended at the microphone (monotonic ``at``): a
        spoken turn's reply is timed from here."""
        self._speech_end = at
        for waiter in self._waiters:
            if not waiter.typed and waiter.first_audio is None and at > waiter.since:
                waiter.since = at

    def on_agent_audio(self, played_at: float) -> None:
        """The agent's audio started again, reaching the speaker at ``played_at``."""
        for waiter in self._waiters:
            if waiter.first_audio is None and played_at >= waiter.since:
                waiter.first_audio = played_at
        end = self._speech_end
        if end is not None and 0 <= played_at - end <= self.MATCH_WINDOW_S:
            self._heard = self.response_latency_s = played_at - end
            self._speech_end = None
