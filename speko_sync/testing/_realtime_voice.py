"""The offline realtime agent's settings, voice and ears: what a session is
told to do (:class:`AgentSettings`), the tones it speaks (:func:`speech_audio`)
and the energy detector that finds the user's utterances."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

RATES = (16000, 24000)
DEFAULT_GREETING = "Hello! I am the offline realtime agent."
_TONES_HZ = (330.0, 392.0, 440.0, 494.0, 523.0)
_SEGMENT_S = 0.12


class ToolTrigger(NamedTuple):
    """A heard text matching ``pattern`` (a regex, case-insensitive) makes the
    agent call the client's tool ``name`` with ``arguments`` (a mapping, or a
    function of the text giving one), then say ``reply`` with ``{name}`` and
    ``{output}`` filled in."""

    pattern: str
    name: str
    arguments: Mapping[str, Any] | Callable[[str], Mapping[str, Any]]
    reply: str = "The {name} tool said: {output}"

    def arguments_for(self, text: str) -> dict[str, Any] | None:
        """The call's arguments when ``text`` matches, else ``None``."""
        if re.search(self.pattern, text, re.IGNORECASE) is None:
            return None
        return dict(self.arguments(text) if callable(self.arguments) else self.arguments)


def _light_arguments(text: str) -> dict[str, Any]:
    return {"on": re.search(r"\bon\b", text, re.IGNORECASE) is not None}


def default_tools() -> list[ToolTrigger]:
    """``set_light`` with ``{"on": true}`` when a text with "light" says "on" (else false)."""
    return [ToolTrigger(r"\blight\b", "set_light", _light_arguments, "The light tool said: {output}")]


def check_rate(rate: int) -> int:
    if rate not in RATES:
        raise ValueError(f"unsupported sample rate {rate!r}; expected one of {RATES}")
    return rate


@dataclass(eq=False)
class AgentSettings:
    """How the offline agent behaves; a session takes a copy when it opens."""

    input_rate: int = 24000
    output_rate: int = 24000
    greeting: str | None = DEFAULT_GREETING  # None: no greeting
    reply_delay_s: float = 0.2
    no_ready: bool = False  # never send ready (nor greet, nor answer)
    ready_delay_s: float = 0.0
    burst_chunk_ms: int = 40
    burst_speed: float | None = 5.0  # times real time; None: as fast as possible
    ms_per_char: float = 60.0
    min_reply_s: float = 0.5
    speech_threshold_dbfs: float = -35.0
    speech_start_ms: int = 60
    speech_end_ms: int = 500
    tool_timeout_s: float = 10.0
    tools: list[ToolTrigger] = field(default_factory=default_tools)
    max_audio_s: float = 600.0  # client audio kept per session

    def check(self) -> None:
        check_rate(self.input_rate)
        check_rate(self.output_rate)
        if self.burst_chunk_ms <= 0 or (self.burst_speed is not None and self.burst_speed <= 0):
            raise ValueError("burst_chunk_ms and burst_speed must be positive (burst_speed None: no pacing)")


def speech_audio(text: str, rate: int, *, ms_per_char: float = 60.0, min_s: float = 0.5) -> np.ndarray:
    """The agent's voice for ``text``: a tone sequence picked by its characters
    (0.3 full scale, 5 ms fades), ``ms_per_char`` per character and at least
    ``min_s``, as mono int16 at ``rate``. Deterministic."""
    n = round(max(min_s, len(text) * ms_per_char / 1000) * rate)
    letters = text or " "
    segment = int(_SEGMENT_S * rate)
    index = [ord(letters[i % len(letters)]) % len(_TONES_HZ) for i in range(-(-n // segment))]
    freqs = np.repeat(np.asarray(_TONES_HZ)[index], segment)[:n]
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(freqs) / rate)
    fade = min(n // 2, int(0.005 * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return np.asarray(wave * 32767, dtype=np.int16)


class EnergyDetector:
    """Finds utterances in mono PCM16 by energy, in 10 ms frames: one starts
    after ``start_ms`` of frames whose peak is above ``threshold_dbfs`` and
    ends after ``end_ms`` of frames below it (or at :meth:`commit`)."""

    def __init__(self, rate: int, threshold_dbfs: float, start_ms: int, end_ms: int) -> None:
        self.frame = rate // 100
        self.threshold = 32768 * 10 ** (threshold_dbfs / 20)
        self.start_frames = max(1, math.ceil(start_ms / 10))
        self.end_frames = max(1, math.ceil(end_ms / 10))
        self.speaking = False
        self._pending = np.zeros(0, dtype=np.int16)
        self._loud = self._quiet = self._voiced = 0

    def feed(self, samples: np.ndarray) -> list[float | None]:
        """Analyse ``samples``; returns the events in order: ``None`` for an
        utterance that started, its length in seconds for one that ended."""
        data = np.concatenate((self._pending, samples))
        count = len(data) // self.frame
        self._pending = data[count * self.frame:]
        frames = data[:count * self.frame].reshape(count, self.frame).astype(np.int32)
        events: list[float | None] = []
        for peak in np.abs(frames).max(axis=1, initial=0).tolist():
            loud = peak >= self.threshold
            if not self.speaking:
                self._loud = self._loud + 1 if loud else 0
                if self._loud >= self.start_frames:
                    self.speaking, self._voiced, self._quiet = True, self._loud, 0
                    events.append(None)
            elif loud:
                self._voiced += self._quiet + 1
                self._quiet = 0
            else:
                self._quiet += 1
                if self._quiet >= self.end_frames:
                    events.append(self._end())
        return events

    def commit(self) -> float | None:
        """End the current utterance now; its length, or ``None`` if none."""
        return self._end() if self.speaking else None

    def _end(self) -> float:
        seconds = self._voiced / 100
        self.speaking = False
        self._loud = self._quiet = self._voiced = 0
        return seconds
