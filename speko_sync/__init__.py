"""speko_sync: real-time voice conversations with Speko agents from plain,
blocking Python.

    from speko_sync import Conversation

    with Conversation(token, url, on_message=print) as conv:
        conv.send_user_message("hello")
        conv.wait_for_end(timeout=60)

Public names load on first use, so importing a submodule (the pytest plugin,
say) does not load LiveKit and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "AgentToolCall": "events",
    "AgentToolsExecuted": "events",
    "Interruption": "events",
    "ModelUsage": "events",
    "Reply": "events",
    "ToolCall": "events",
    "ToolCallStatus": "events",
    "Turn": "events",
    "TurnMetrics": "events",
    "UserState": "events",
    "ToolError": "errors",
    "AgentOverrides": "overrides",
    "AgentState": "events",
    "ControlEvent": "events",
    "ControlEventType": "events",
    "AudioBackend": "audio",
    "AudioConstraints": "audio",
    "AudioDevice": "audio",
    "BufferAudio": "audio",
    "Conversation": "conversation",
    "ConversationStats": "events",
    "DisconnectReason": "events",
    "DisconnectionDetails": "events",
    "ErrorCode": "errors",
    "Event": "events",
    "EventBatch": "events",
    "Message": "events",
    "MessageSource": "events",
    "Mode": "events",
    "NullAudio": "audio",
    "Overrides": "overrides",
    "PyAudioBackend": "audio",
    "Reconnection": "events",
    "UnconfirmedSend": "events",
    "SessionCredentials": "sessions",
    "create_session": "sessions",
    "session_credentials": "sessions",
    "SpekoClientError": "errors",
    "Status": "events",
    "TtsOverrides": "overrides",
    "list_audio_devices": "audio",
}

__all__ = [
    "AgentOverrides",
    "AgentState",
    "AgentToolCall",
    "AgentToolsExecuted",
    "AudioBackend",
    "AudioConstraints",
    "AudioDevice",
    "BufferAudio",
    "ControlEvent",
    "ControlEventType",
    "Conversation",
    "ConversationStats",
    "DisconnectReason",
    "DisconnectionDetails",
    "ErrorCode",
    "Event",
    "EventBatch",
    "Interruption",
    "Message",
    "MessageSource",
    "Mode",
    "ModelUsage",
    "NullAudio",
    "Overrides",
    "PyAudioBackend",
    "Reconnection",
    "Reply",
    "SessionCredentials",
    "SpekoClientError",
    "Status",
    "ToolCall",
    "ToolCallStatus",
    "ToolError",
    "TtsOverrides",
    "Turn",
    "TurnMetrics",
    "UnconfirmedSend",
    "UserState",
    "__version__",
    "create_session",
    "list_audio_devices",
    "session_credentials",
    "signals",
]

if TYPE_CHECKING:
    from . import signals
    from .audio import (
        AudioBackend,
        AudioConstraints,
        AudioDevice,
        BufferAudio,
        NullAudio,
        PyAudioBackend,
        list_audio_devices,
    )
    from .conversation import Conversation
    from .errors import ErrorCode, SpekoClientError, ToolError
    from .events import (
        AgentState,
        AgentToolCall,
        AgentToolsExecuted,
        ControlEvent,
        ControlEventType,
        ConversationStats,
        DisconnectionDetails,
        DisconnectReason,
        Event,
        EventBatch,
        Interruption,
        Message,
        MessageSource,
        Mode,
        ModelUsage,
        Reconnection,
        Reply,
        Status,
        ToolCall,
        ToolCallStatus,
        Turn,
        TurnMetrics,
        UnconfirmedSend,
        UserState,
    )
    from .overrides import AgentOverrides, Overrides, TtsOverrides
    from .sessions import SessionCredentials, create_session, session_credentials


def __getattr__(name: str) -> Any:
    if name == "signals":
        return importlib.import_module(".signals", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'speko_sync' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
