"""Per-session overrides sent to the agent right after connecting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = ["AgentOverrides", "Overrides", "OverridesLike", "TtsOverrides"]


@dataclass(frozen=True)
class AgentOverrides:
    """``prompt``: system prompt; ``first_message``: what the agent greets with;
    ``language``: a BCP 47 tag such as ``"en-US"``. Raises nothing when made;
    ``Conversation(overrides=...)`` raises ``TypeError`` for a value of the
    wrong type."""

    prompt: str | None = None
    first_message: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class TtsOverrides:
    """``voice_id``: the voice; ``speed``: speaking rate (1.0 is normal). Raises
    nothing when made; ``Conversation(overrides=...)`` raises ``TypeError`` for
    a value of the wrong type."""

    voice_id: str | None = None
    speed: float | None = None


@dataclass(frozen=True)
class Overrides:
    """Per-session overrides for the agent and its voice, sent to the agent first
    thing after joining (``Conversation(overrides=...)``; a mapping with the
    wire's camelCase keys works too). Raises nothing when made."""

    agent: AgentOverrides = field(default_factory=AgentOverrides)
    tts: TtsOverrides = field(default_factory=TtsOverrides)


OverridesLike = Union[Overrides, Mapping[str, Any]]  # noqa: UP007 - a runtime alias

_AGENT_KEYS: dict[str, type | tuple[type, ...]] = {"prompt": str, "firstMessage": str, "language": str}
_TTS_KEYS: dict[str, type | tuple[type, ...]] = {"voiceId": str, "speed": (int, float)}


def overrides_to_wire(overrides: OverridesLike) -> dict[str, Any]:
    """The ``overrides`` object of the wire packet (camelCase, absent keys omitted).

    Accepts :class:`Overrides` or a mapping shaped like the browser client's
    (``{"agent": {"prompt", "firstMessage", "language"}, "tts": {"voiceId",
    "speed"}}``). Raises ``TypeError``/``ValueError`` naming the bad key.
    """
    if isinstance(overrides, Overrides):
        raw: dict[str, dict[str, Any]] = {
            "agent": {"prompt": overrides.agent.prompt, "firstMessage": overrides.agent.first_message,
                      "language": overrides.agent.language},
            "tts": {"voiceId": overrides.tts.voice_id, "speed": overrides.tts.speed},
        }
    elif isinstance(overrides, Mapping):
        unknown = set(overrides) - {"agent", "tts"}
        if unknown:
            raise ValueError(f"unknown overrides section(s) {sorted(unknown)}; expected 'agent' and/or 'tts'")
        raw = {}
        for section in ("agent", "tts"):
            value = overrides.get(section) or {}
            if not isinstance(value, Mapping):
                raise TypeError(f"overrides[{section!r}] must be a mapping, got {type(value).__name__}")
            raw[section] = dict(value)
    else:
        raise TypeError(f"overrides must be an Overrides or a mapping, got {type(overrides).__name__}")
    out: dict[str, Any] = {}
    for section, allowed in (("agent", _AGENT_KEYS), ("tts", _TTS_KEYS)):
        values = raw.get(section, {})
        unknown = set(values) - set(allowed)
        if unknown:
            raise ValueError(f"unknown overrides key(s) {sorted(unknown)} in {section!r}; "
                             f"expected {sorted(allowed)}")
        kept = {}
        for key, value in values.items():
            if value is None:
                continue
            kinds = allowed[key]
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise TypeError(f"overrides[{section!r}][{key!r}] has the wrong type ({type(value).__name__})")
            kept[key] = value
        if kept:
            out[section] = kept
    return out
