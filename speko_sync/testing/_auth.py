"""LiveKit access tokens: mint and verify HS256 JWTs the way LiveKit does.

Pure functions, no I/O. A token's claims follow LiveKit's layout: ``iss`` is the
API key, ``sub`` the participant identity, ``nbf``/``exp`` in Unix seconds and a
``video`` grant with camelCase keys (``roomJoin``, ``room``, ``canPublish``...).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

#: Clock skew tolerated on ``nbf`` and ``exp``, seconds.
LEEWAY_S = 10


class TokenError(Exception):
    """A token was refused. ``str(err)`` is the reason LiveKit-style clients show."""


@dataclass(frozen=True)
class Grant:
    """What a verified token allows: who joins which room, and how."""

    identity: str
    room: str
    name: str = ""
    kind: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_metadata: bool = False
    agent: bool = False


def mint_token(
    api_key: str,
    api_secret: str,
    identity: str,
    room: str,
    *,
    ttl: float = 3600.0,
    name: str = "",
    kind: str = "",
    metadata: str = "",
    room_join: bool = True,
    can_publish: bool = True,
    can_subscribe: bool = True,
    can_publish_data: bool = True,
    can_update_own_metadata: bool = False,
    agent: bool = False,
    attributes: Mapping[str, str] | None = None,
    not_before: float | None = None,
) -> str:
    """Return a LiveKit JWT for ``identity`` in ``room``, valid for ``ttl`` seconds.

    ``ttl`` may be negative to mint an already expired token (for tests);
    ``not_before`` (Unix seconds) makes a token that is not yet valid.
    ``kind="agent"`` marks an agent participant; ``can_update_own_metadata``
    lets it change its own name, metadata and attributes (off by default, as in
    LiveKit); ``agent`` is the agent grant LiveKit gives dispatched agent jobs;
    ``attributes`` are the participant's initial attributes.
    Raises ``ValueError`` for an empty key, secret or identity.
    """
    if not api_key or not api_secret:
        raise ValueError("api_key and api_secret must be non-empty")
    if not identity:
        raise ValueError("identity must be non-empty")
    now = int(time.time())
    video: dict[str, Any] = {
        "room": room,
        "canPublish": can_publish,
        "canSubscribe": can_subscribe,
        "canPublishData": can_publish_data,
    }
    if room_join:
        video["roomJoin"] = True
    if can_update_own_metadata:
        video["canUpdateOwnMetadata"] = True
    if agent:
        video["agent"] = True
    claims: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": int(not_before) if not_before is not None else now,
        "exp": now + int(ttl),
        "video": video,
    }
    for key, value in (("name", name), ("kind", kind), ("metadata", metadata)):
        if value:
            claims[key] = value
    if attributes:
        claims["attributes"] = dict(attributes)
    return jwt.encode(claims, api_secret, algorithm="HS256")


def verify_token(token: str, keys: Mapping[str, str], *, room: str | None = None,
                 require_room_join: bool = True) -> Grant:
    """Check ``token`` against ``keys`` (API key -> secret) and return its grant.

    Checks the signature (HS256), ``nbf`` and ``exp`` (with :data:`LEEWAY_S`), the
    ``roomJoin`` grant, a non-empty identity and room and, if given, that the
    grant's room is ``room``. With ``require_room_join`` false (agent workers
    registering) only the signature and validity times are checked. Raises
    :class:`TokenError` naming what was wrong.
    """
    if not token:
        raise TokenError("missing access token")
    try:
        header_claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed access token: {exc}") from exc
    issuer = header_claims.get("iss")
    if not isinstance(issuer, str) or issuer not in keys:
        raise TokenError(f"unknown API key {issuer!r} in token")
    try:
        claims = jwt.decode(
            token,
            keys[issuer],
            algorithms=["HS256"],
            leeway=LEEWAY_S,
            options={"require": ["exp", "sub"] if require_room_join else ["exp"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("access token expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise TokenError("access token not valid yet (nbf)") from exc
    except jwt.InvalidSignatureError as exc:
        raise TokenError("invalid token signature (wrong API secret?)") from exc
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid access token: {exc}") from exc
    video = claims.get("video")
    if not isinstance(video, dict):
        video = {}
    identity = claims.get("sub", "")
    granted_room = video.get("room", "")
    if require_room_join:
        if not video.get("roomJoin"):
            raise TokenError("token has no roomJoin grant")
        if not isinstance(identity, str) or not identity:
            raise TokenError("token has no identity (sub)")
        if not isinstance(granted_room, str) or not granted_room:
            raise TokenError("token grants no room")
    if room is not None and room != granted_room:
        raise TokenError(f"token is for room {granted_room!r}, not {room!r}")
    attributes = claims.get("attributes")
    if isinstance(attributes, dict):
        attributes = {str(k): str(v) for k, v in attributes.items()}
    return Grant(
        identity=str(identity),
        room=str(granted_room),
        name=str(claims.get("name", "")),
        kind=str(claims.get("kind", "")),
        metadata=str(claims.get("metadata", "")),
        attributes=dict(attributes) if isinstance(attributes, dict) else {},
        can_publish=bool(video.get("canPublish", True)),
        can_subscribe=bool(video.get("canSubscribe", True)),
        can_publish_data=bool(video.get("canPublishData", True)),
        can_update_metadata=bool(video.get("canUpdateOwnMetadata", False)),
        agent=bool(video.get("agent", False)),
    )
