"""The one error type of speko_sync, with a code saying what went wrong."""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "SpekoClientError", "ToolError"]


class ErrorCode(str, enum.Enum):
    """What a :class:`SpekoClientError` is about (values match the browser client)."""

    #: Joining the room failed: bad token, unreachable server, timeout.
    CONNECTION_FAILED = "CONNECTION_FAILED"
    #: The session ended unexpectedly: neither ``end_session()`` nor the agent
    #: ended it (the link was not recovered, the server went away). Delivered
    #: through ``on_error`` just before ``on_disconnect``.
    DISCONNECTED = "DISCONNECTED"
    #: The microphone could not be opened or published.
    MICROPHONE_FAILED = "MICROPHONE_FAILED"
    #: An inbound data packet was not a JSON object with a string ``type``.
    INVALID_MESSAGE = "INVALID_MESSAGE"
    #: A send was attempted before the session connected, while it was
    #: reconnecting (nothing was sent) or after it ended.
    NOT_CONNECTED = "NOT_CONNECTED"
    #: The agent reported an error of its own (LiveKit Agents' session stream
    #: ``error`` event: its LLM, TTS or STT failed...). Delivered through
    #: ``on_error``; the session goes on.
    AGENT_ERROR = "AGENT_ERROR"
    #: The session's transport cannot do what was asked (the realtime
    #: transport sends no text; LiveKit Agents takes no interrupt request).
    #: The message names the transport; nothing was sent.
    UNSUPPORTED = "UNSUPPORTED"
    #: Minting a session (``create_session``) failed; ``status`` has the HTTP status.
    SESSION_REQUEST_FAILED = "SESSION_REQUEST_FAILED"


class SpekoClientError(Exception):
    """Raised (or delivered through the ``error`` signal) by speko_sync.

    Attributes:
        code: an :class:`ErrorCode`.
        message: a human-readable explanation.
        cause: the original exception, if any (also ``__cause__`` when raised).
        status: the HTTP status of a failed session request, else ``None``.
    """

    def __init__(self, code: ErrorCode, message: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.cause = cause
        self.status: int | None = None
        if cause is not None:
            self.__cause__ = cause

    def __reduce__(self) -> tuple[type[SpekoClientError], tuple[ErrorCode, str, BaseException | None]]:
        return (type(self), (self.code, self.message, self.cause))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SpekoClientError) and (self.code, self.message, self.cause)
                == (other.code, other.message, other.cause))

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class ToolError(Exception):
    """Raise it from a client tool to send the agent exactly ``message`` as the
    RPC error's message (any other exception sends ``str(exc)``; never a
    traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
