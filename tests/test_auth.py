"""LiveKit token minting and verification (pure, no network)."""

from __future__ import annotations

import time

import jwt
import pytest

from speko_sync.testing import TokenError, mint_token, verify_token

KEY, SECRET = "key", "a-secret-that-is-long-enough-for-hs256!"
KEYS = {KEY: SECRET}


def test_round_trip_keeps_identity_room_and_grants() -> None:
    token = mint_token(KEY, SECRET, "alice", "r1", name="Alice", kind="agent", metadata="m",
                       can_publish=False)
    grant = verify_token(token, KEYS, room="r1")
    assert (grant.identity, grant.room, grant.name) == ("alice", "r1", "Alice")
    assert (grant.kind, grant.metadata) == ("agent", "m")
    assert grant.can_publish is False and grant.can_subscribe is True


def test_claims_use_livekit_layout() -> None:
    claims = jwt.decode(mint_token(KEY, SECRET, "bob", "r2", ttl=60), SECRET, algorithms=["HS256"])
    assert claims["iss"] == KEY and claims["sub"] == "bob"
    assert claims["video"]["roomJoin"] is True and claims["video"]["room"] == "r2"
    assert claims["exp"] - claims["nbf"] == 60


@pytest.mark.parametrize(("token", "reason"), [
    (mint_token(KEY, SECRET, "u", "r", ttl=-60), "expired"),
    (mint_token(KEY, "another-secret-that-is-long-enough!!", "u", "r"), "signature"),
    (mint_token("other-key", SECRET, "u", "r"), "unknown API key"),
    (mint_token(KEY, SECRET, "u", "r", room_join=False), "roomJoin"),
    (mint_token(KEY, SECRET, "u", "r", not_before=time.time() + 600), "nbf"),
    (mint_token(KEY, SECRET, "u", ""), "grants no room"),
    ("not-a-jwt", "malformed"),
    ("", "missing"),
])
def test_bad_tokens_name_what_is_wrong(token: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verify_token(token, KEYS)


def test_wrong_room_is_refused() -> None:
    with pytest.raises(TokenError, match="token is for room 'a', not 'b'"):
        verify_token(mint_token(KEY, SECRET, "u", "a"), KEYS, room="b")


def test_clock_skew_within_leeway_is_accepted() -> None:
    verify_token(mint_token(KEY, SECRET, "u", "r", not_before=time.time() + 5), KEYS)


@pytest.mark.parametrize(("key", "secret", "identity"), [("", SECRET, "u"), (KEY, "", "u"), (KEY, SECRET, "")])
def test_minting_rejects_empty_inputs(key: str, secret: str, identity: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        mint_token(key, secret, identity, "r")
