"""``Conversation.stats()``: a snapshot of a session's counters."""

from __future__ import annotations

import numpy as np

from ._tools import ToolHost
from ._transport import Transport
from ._turns import TurnTracker
from .audio import (
    BARGE_IN_DROPPED,
    CAPTURE_DROPPED,
    CAPTURED,
    INPUT_OVERFLOWS,
    OUTPUT_UNDERFLOWS,
    OVERRUNS,
    PLAYBACK_DROPPED,
    PLAYBACK_OVERRUNS,
    PLAYED,
    SAMPLE_RATE,
    UNDERRUNS,
    AudioIO,
)
from .events import ConversationStats, ModelUsage


def session_stats(io: AudioIO | None, transport: Transport, tools: ToolHost, turns: TurnTracker, barge_ins: int,
                  usage: tuple[ModelUsage, ...]) -> ConversationStats:
    """A snapshot of one session's counters (any thread)."""
    counters = io.counters if io is not None else np.zeros(10, dtype=np.int64)
    frame = (io.rate // 100) if io is not None else SAMPLE_RATE // 100
    tokens = {key: int(value) for model in usage for key, value in model.values.items()
              if key in ("input_audio_tokens", "output_audio_tokens")}
    return ConversationStats(
        frames_captured=int(counters[CAPTURED]) // frame,
        frames_played=int(counters[PLAYED]) // frame,
        underruns=int(counters[UNDERRUNS]),
        overruns=int(counters[OVERRUNS]) + int(counters[PLAYBACK_OVERRUNS]),
        capture_dropped=int(counters[CAPTURE_DROPPED]) // frame,
        playback_dropped=int(counters[PLAYBACK_DROPPED]),
        input_overflows=int(counters[INPUT_OVERFLOWS]),
        output_underflows=int(counters[OUTPUT_UNDERFLOWS]),
        playback_buffer_ms=(io.playback_depth_ms() if io is not None else 0.0) + transport.queued_ms(),
        packets_sent=transport.packets_sent,
        packets_received=transport.packets_received,
        malformed_packets=transport.malformed,
        ignored_packets=transport.ignored,
        tool_calls=tools.calls,
        tool_calls_refused=tools.refused,
        session_messages=transport.session_messages,
        session_ignored=transport.session_ignored,
        response_latency_s=turns.response_latency_s,
        agent_e2e_latency_s=turns.agent_e2e_latency_s,
        barge_ins=barge_ins,
        barge_in_dropped_ms=1000.0 * int(counters[BARGE_IN_DROPPED]) / (io.rate if io is not None else SAMPLE_RATE),
        input_audio_tokens=tokens.get("input_audio_tokens", 0),
        output_audio_tokens=tokens.get("output_audio_tokens", 0),
    )
