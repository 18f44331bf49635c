"""The server's HTTP front: admission checks and the v1 switch (no WebRTC needed)."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from speko_sync.testing import LocalServer


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer(auto_create_rooms=False) as s:
        s.create_room("open")
        yield s


def get(server: LocalServer, path: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_validate_accepts_a_good_token(server: LocalServer) -> None:
    assert get(server, "/rtc/validate", server.token("u", "open")) == (200, "success")
    assert get(server, "/rtc/v1/validate", server.token("u", "open")) == (200, "success")


@pytest.mark.parametrize(("token", "status", "reason"), [
    (None, 401, "missing access token"),
    ("garbage", 401, "malformed access token"),
    ("expired", 401, "access token expired"),
    ("elsewhere", 404, "requested room does not exist: elsewhere"),
])
def test_validate_gives_the_reason(server: LocalServer, token: str | None, status: int, reason: str) -> None:
    real = {"expired": server.token("u", "open", ttl=-60), "elsewhere": server.token("u", "elsewhere")}
    got_status, body = get(server, "/rtc/validate", real.get(token or "", token))
    assert got_status == status and body.startswith(reason)


def test_join_refusal_and_dropped_identities_show_in_validate(server: LocalServer) -> None:
    server.refuse_joins("down for maintenance", status=503)
    assert get(server, "/rtc/validate", server.token("u", "open")) == (503, "down for maintenance")
    server.refuse_joins(None)
    assert get(server, "/rtc/validate", server.token("u", "open"))[0] == 200


def test_bad_join_request_is_a_clear_400(server: LocalServer) -> None:
    status, body = get(server, "/rtc/v1?join_request=" + base64.urlsafe_b64encode(b"\x0a\xff").decode(),
                       server.token("u", "open"))
    assert status == 400 and body.startswith("invalid join_request")


def test_v1_answers_404_when_disabled() -> None:
    with LocalServer(single_pc=False) as s:
        status, _ = get(s, "/rtc/v1?join_request=", s.token("u", "r"))
        assert status == 404


def test_constructor_rejects_zero_ping_interval() -> None:
    with pytest.raises(ValueError, match="ping_interval"):
        LocalServer(ping_interval=0)


def test_methods_need_a_running_server() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = LocalServer().url


def test_worker_endpoint_needs_an_agent_grant(server: LocalServer) -> None:
    assert get(server, "/agent") == (401, "missing access token")
    assert get(server, "/agent", server.token("u", "open")) == (401, "token has no agent grant")
    # a worker token (agent grant, no room) passes admission; the websocket upgrade then needs a client
    status, _ = get(server, "/agent", server.token("worker", "", room_join=False, agent=True))
    assert status == 400  # not a websocket request, but admitted


def test_join_time_attributes_need_the_metadata_grant() -> None:
    import gzip

    from livekit.protocol import rtc

    with LocalServer() as s:
        join = rtc.JoinRequest(participant_attributes={"role": "caller"})
        wrapped = rtc.WrappedJoinRequest(join_request=gzip.compress(join.SerializeToString()),
                                         compression=rtc.WrappedJoinRequest.Compression.GZIP)
        query = base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")
        status, reason = get(s, f"/rtc/v1?join_request={query}", s.token("u", "r"))
        assert (status, reason) == (401, "setting metadata or attributes at join needs canUpdateOwnMetadata")
