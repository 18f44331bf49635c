"""Session credentials: what your server gets from Speko's ``POST /v1/sessions``.

- :func:`session_credentials` reads a response in any of the shapes in use
  (``transportToken``/``transportUrl`` or the older ``conversationToken``/
  ``livekitUrl``, camelCase or snake_case, a dict or an object, or a ``spekoai``
  ``WebJoinResult`` with ``token``/``url``), checks the transport and the expiry,
  and gives :class:`SessionCredentials`; :meth:`Conversation.from_session` joins
  with them.
- :func:`create_session` posts to ``/v1/sessions`` (server side: it needs your
  API key) and returns the same credentials. It needs the ``api`` extra
  (``pip install 'speko_sync[api]'``, for httpx).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, SpekoClientError

__all__ = ["DEFAULT_API_BASE_URL", "SessionCredentials", "create_session", "session_credentials"]

#: Speko's public API origin.
DEFAULT_API_BASE_URL = "https://api.speko.dev"

_TOKEN_KEYS = ("transportToken", "transport_token", "conversationToken", "conversation_token", "token")
_URL_KEYS = ("transportUrl", "transport_url", "livekitUrl", "livekit_url", "url")
_WS_TOKEN_KEYS = ("wsToken", "ws_token")
_WS_URL_KEYS = ("wsUrl", "ws_url")


@dataclass(frozen=True)
class SessionCredentials:
    """What joining a Speko session takes, and what the server said about it.

    ``token`` and ``url``: the LiveKit access token and URL, or for a realtime
    session (``transport`` ``"realtime"``) its ``wsToken`` and ``wsUrl``;
    ``input_sample_rate``/``output_sample_rate`` the rates a realtime answer
    announced, if any. ``expires_at``: an
    aware ``datetime`` or ``None``. ``raw``: the response as given (a mapping).
    Raises nothing when made (:func:`session_credentials` checks a response).
    """

    token: str
    url: str
    session_id: str | None = None
    room_name: str | None = None
    identity: str | None = None
    expires_at: dt.datetime | None = None
    transport: str = "livekit"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    input_sample_rate: int | None = None
    output_sample_rate: int | None = None


def _as_mapping(response: object) -> Mapping[str, Any]:
    if isinstance(response, Mapping):
        return response
    names = set(_TOKEN_KEYS + _URL_KEYS + _WS_TOKEN_KEYS + _WS_URL_KEYS + (
        "sessionId", "session_id", "roomName", "room_name", "identity", "expiresAt", "expires_at", "transport",
        "inputSampleRate", "outputSampleRate"))
    values = {name: getattr(response, name) for name in names if getattr(response, name, None) is not None}
    if not values:
        raise TypeError(f"a session response must be a mapping or an object with token and url attributes, "
                        f"got {type(response).__name__}")
    return values


def _first(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, (int, float)):
        stamp = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    elif isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expiresAt is not an ISO 8601 time: {value!r}") from None
    else:
        raise ValueError(f"expiresAt must be an ISO 8601 string, got {type(value).__name__}")
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=dt.timezone.utc)


def session_credentials(response: object, *, now: float | None = None) -> SessionCredentials:
    """Read a ``POST /v1/sessions`` response (or a ``WebJoinResult``; a
    :class:`SessionCredentials` is returned as it is once its expiry is checked).

    Raises ``TypeError`` for something that is not a response, ``ValueError``
    naming what is missing or wrong (no token or URL, a ``transport`` other than
    ``livekit`` or ``realtime``, Daily's included, an unreadable
    ``expiresAt``), and :class:`SpekoClientError`
    (CONNECTION_FAILED) when ``expiresAt`` is already past (``now``: Unix seconds,
    default the clock).
    """
    if isinstance(response, SessionCredentials):  # already read: it may have expired since
        _require_unexpired(response.expires_at, now)
        return response
    data = _as_mapping(response)
    realtime = _first(data, _WS_URL_KEYS) is not None and _first(data, _WS_TOKEN_KEYS) is not None
    transport = _first(data, ("transport",)) or ("realtime" if realtime else "livekit")
    if transport == "daily":
        raise ValueError("session transport 'daily' is not supported: Pipecat over Daily needs Daily's cloud "
                         "client; speko_sync joins 'livekit' and 'realtime' sessions")
    if transport not in ("livekit", "realtime"):
        raise ValueError(f"session transport {transport!r} is not supported: speko_sync joins 'livekit' and "
                         "'realtime' sessions")
    if transport == "realtime":
        return _realtime_credentials(data, now)
    token, url, expires_at = _checked(data, now, (_TOKEN_KEYS, "session response has no token (transportToken or "
                                                  "conversationToken)"),
                                      (_URL_KEYS, "session response has no URL (transportUrl or livekitUrl)"))
    return SessionCredentials(
        token=token, url=url, session_id=_first(data, ("sessionId", "session_id")),
        room_name=_first(data, ("roomName", "room_name")), identity=_first(data, ("identity",)),
        expires_at=expires_at, transport=transport, raw=dict(data))


def _checked(data: Mapping[str, Any], now: float | None, *required: tuple[tuple[str, ...], str]) -> tuple[Any, ...]:
    """The first value of each ``(keys, missing)`` pair (a non-empty string,
    else ``ValueError("the " + missing)``), and the unexpired ``expiresAt``."""
    values = []
    for keys, missing in required:
        value = _first(data, keys)
        if not isinstance(value, str) or not value:
            raise ValueError(f"the {missing}")
        values.append(value)
    expires_at = _parse_time(_first(data, ("expiresAt", "expires_at")))
    _require_unexpired(expires_at, now)
    return (*values, expires_at)


def _realtime_credentials(data: Mapping[str, Any], now: float | None) -> SessionCredentials:
    token, url, expires_at = _checked(data, now, (_WS_TOKEN_KEYS, "realtime session response has no wsToken"),
                                      (_WS_URL_KEYS, "realtime session response has no wsUrl"))
    rates = [_first(data, (camel, snake)) for camel, snake in (("inputSampleRate", "input_sample_rate"),
                                                                ("outputSampleRate", "output_sample_rate"))]
    return SessionCredentials(
        token=token, url=url, session_id=_first(data, ("sessionId", "session_id")), expires_at=expires_at,
        transport="realtime", raw=dict(data),
        input_sample_rate=rates[0] if isinstance(rates[0], int) else None,
        output_sample_rate=rates[1] if isinstance(rates[1], int) else None)


def _require_unexpired(expires_at: dt.datetime | None, now: float | None) -> None:
    if expires_at is not None and expires_at.timestamp() <= (time.time() if now is None else now):
        raise SpekoClientError(ErrorCode.CONNECTION_FAILED,
                               f"the session expired at {expires_at.isoformat()}; mint a new one")


_OPTIONS = {
    "system_prompt": "systemPrompt", "first_message": "firstMessage", "voice": "voice", "llm": "llm",
    "tts_options": "ttsOptions", "stt_options": "sttOptions", "ttl_seconds": "ttlSeconds",
    "identity": "identity", "metadata": "metadata", "constraints": "constraints", "variables": "variables",
}


def create_session(api_key: str, *, agent_id: str | None = None, intent: Mapping[str, Any] | None = None,
                   base_url: str = DEFAULT_API_BASE_URL, timeout: float = 15.0,
                   **options: Any) -> SessionCredentials:
    """Mint a session with ``POST {base_url}/v1/sessions`` (server side).

    Give ``agent_id`` or ``intent`` (``{"language": "en-US", "optimizeFor":
    "balanced", ...}``); other options in snake_case (``system_prompt``,
    ``first_message``, ``voice``, ``llm``, ``tts_options``, ``stt_options``,
    ``ttl_seconds`` (1..86400, default 900 on Speko's side), ``identity``,
    ``metadata``, ``constraints``, ``variables``) go as their camelCase fields.
    Blocks up to ``timeout`` seconds.

    Raises ``TypeError``/``ValueError`` for bad arguments (before any request),
    ``ImportError`` without the ``api`` extra, and :class:`SpekoClientError`
    (SESSION_REQUEST_FAILED, with the HTTP ``status`` when there is one) when
    the API cannot be reached, refuses (the API's own message), or answers
    something that is not a session.
    """
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key must be a non-empty string (your Speko API key)")
    if (agent_id is None) == (intent is None):
        raise ValueError("give exactly one of agent_id or intent")
    if agent_id is not None and (not isinstance(agent_id, str) or not agent_id):
        raise ValueError("agent_id must be a non-empty string")
    if intent is not None and not isinstance(intent, Mapping):
        raise TypeError("intent must be a mapping such as {'language': 'en-US'}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unknown session options {unknown}; expected some of {sorted(_OPTIONS)}")
    ttl = options.get("ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= 86400):
        raise ValueError(f"ttl_seconds must be an int in 1..86400, got {ttl!r}")
    body: dict[str, Any] = {"agentId": agent_id} if agent_id is not None else {"intent": dict(intent or {})}
    body.update({_OPTIONS[k]: v for k, v in options.items() if v is not None})
    import httpx  # the api extra

    url = base_url.rstrip("/") + "/v1/sessions"
    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as exc:
        raise _request_failed(f"could not reach the Speko API at {url}: {exc}", None, exc) from exc
    if response.status_code >= 400:
        raise _request_failed(_api_message(response) or f"the Speko API answered HTTP {response.status_code}",
                              response.status_code)
    try:
        data = response.json()
    except ValueError as exc:
        raise _request_failed("the Speko API answered something that is not JSON", response.status_code,
                              exc) from exc
    try:
        return session_credentials(data)
    except (TypeError, ValueError) as exc:
        raise _request_failed(f"the Speko API's answer is not a session: {exc}", response.status_code,
                              exc) from exc


def _request_failed(message: str, status: int | None, cause: BaseException | None = None) -> SpekoClientError:
    error = SpekoClientError(ErrorCode.SESSION_REQUEST_FAILED, message, cause)
    error.status = status
    return error


def _api_message(response: Any) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    message = data.get("message")
    return message if isinstance(message, str) else None
