"""speko_sync: real-time voice conversations with Speko agents from plain,
blocking Python.

    from speko_sync import Conversation

    with Conversation(token, url, on_message=print) as conv:
        conv.send_user_message("hello")
        conv.wait_for_end(timeout=60)
"""

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
from .errors import ErrorCode, SpekoClientError
from .events import (
    ConversationStats,
    DisconnectionDetails,
    DisconnectReason,
    Event,
    EventBatch,
    Message,
    MessageSource,
    Mode,
    Status,
)
from .overrides import AgentOverrides, Overrides, TtsOverrides

__version__ = "0.1.0.dev0"

__all__ = [
    "AgentOverrides",
    "AudioBackend",
    "AudioConstraints",
    "AudioDevice",
    "BufferAudio",
    "Conversation",
    "ConversationStats",
    "DisconnectReason",
    "DisconnectionDetails",
    "ErrorCode",
    "Event",
    "EventBatch",
    "Message",
    "MessageSource",
    "Mode",
    "NullAudio",
    "Overrides",
    "PyAudioBackend",
    "SpekoClientError",
    "Status",
    "TtsOverrides",
    "__version__",
    "list_audio_devices",
    "signals",
]
