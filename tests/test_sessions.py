"""Session credentials: reading POST /v1/sessions answers, minting sessions
against a local HTTP server that checks the request, and joining with them."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from speko_sync import Conversation, ErrorCode, NullAudio, SpekoClientError, create_session, session_credentials

FUTURE = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
PAST = "2020-01-01T00:00:00Z"


@pytest.mark.parametrize("response", [
    {"transportToken": "t", "transportUrl": "wss://u", "transport": "livekit", "expiresAt": FUTURE},
    {"conversationToken": "t", "livekitUrl": "wss://u", "roomName": "r", "identity": "i"},
    {"transport_token": "t", "transport_url": "wss://u", "expires_at": FUTURE},
    {"conversation_token": "t", "livekit_url": "wss://u"},
], ids=["camel", "older-camel", "snake", "older-snake"])
def test_every_response_shape_gives_token_and_url(response: dict[str, Any]) -> None:
    credentials = session_credentials(response)
    assert (credentials.token, credentials.url) == ("t", "wss://u")
    assert credentials.transport == "livekit" and credentials.raw == response


@dataclass
class WebJoinResult:  # the shape of spekoai's calls.web_join() result
    token: str
    url: str
    identity: str
    room_name: str
    expires_at: dt.datetime


def test_an_object_such_as_webjoinresult() -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
    credentials = session_credentials(WebJoinResult("t", "wss://u", "me", "room", when))
    assert (credentials.token, credentials.url, credentials.identity, credentials.room_name) == \
        ("t", "wss://u", "me", "room")
    assert credentials.expires_at == when


@pytest.mark.parametrize(("response", "error", "match"), [
    ({"transportToken": "t", "transportUrl": "u", "transport": "daily"}, ValueError, "'daily' is not supported"),
    ({"transportUrl": "u"}, ValueError, "no token"),
    ({"transportToken": "t"}, ValueError, "no URL"),
    ({"transportToken": "t", "transportUrl": "u", "expiresAt": "soon"}, ValueError, "ISO 8601"),
    (42, TypeError, "mapping"),
])
def test_bad_responses_say_what_is_wrong(response: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        session_credentials(response)


def test_an_expired_session_is_refused() -> None:
    with pytest.raises(SpekoClientError) as err:
        session_credentials({"transportToken": "t", "transportUrl": "u", "expiresAt": PAST})
    assert err.value.code == ErrorCode.CONNECTION_FAILED and "expired" in err.value.message


class FakeSpekoApi:
    """A local stand-in for Speko's API that records and checks requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.reply: tuple[int, bytes] = (201, b"{}")
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                api.requests.append(("POST", self.path, dict(self.headers), json.loads(raw or b"null")))
                status, body = api.reply
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api() -> Iterator[FakeSpekoApi]:
    fake = FakeSpekoApi()
    yield fake
    fake.close()


def session_reply(token: str = "tok", url: str = "wss://lk", expires: str = FUTURE) -> bytes:
    return json.dumps({"sessionId": "s1", "transportToken": token, "transportUrl": url, "roomName": "r1",
                       "identity": "user-1", "expiresAt": expires, "transport": "livekit"}).encode()


def test_create_session_posts_the_request_speko_expects(api: FakeSpekoApi) -> None:
    api.reply = (201, session_reply())
    credentials = create_session("sk_test", agent_id="ag_1", first_message="Hi!", ttl_seconds=600,
                                 metadata={"order": 7}, base_url=api.url + "/")
    assert (credentials.token, credentials.url, credentials.session_id) == ("tok", "wss://lk", "s1")
    (method, path, headers, body) = api.requests[0]
    assert (method, path) == ("POST", "/v1/sessions")
    assert headers["Authorization"] == "Bearer sk_test" and headers["Content-Type"] == "application/json"
    assert body == {"agentId": "ag_1", "firstMessage": "Hi!", "ttlSeconds": 600, "metadata": {"order": 7}}


def test_create_session_with_an_intent(api: FakeSpekoApi) -> None:
    api.reply = (201, session_reply())
    create_session("sk_test", intent={"language": "en-US", "optimizeFor": "latency"}, base_url=api.url)
    assert api.requests[0][3] == {"intent": {"language": "en-US", "optimizeFor": "latency"}}


@pytest.mark.parametrize(("reply", "status", "match"), [
    ((401, b'{"error": {"message": "invalid API key"}}'), 401, "invalid API key"),
    ((404, b'{"error": "agent not found"}'), 404, "agent not found"),
    ((500, b"<html>oops</html>"), 500, "HTTP 500"),
    ((201, b"not json"), 201, "not JSON"),
    ((201, b'{"sessionId": "s1"}'), 201, "no token"),
])
def test_create_session_failures_are_clear(api: FakeSpekoApi, reply: tuple[int, bytes], status: int,
                                           match: str) -> None:
    api.reply = reply
    with pytest.raises(SpekoClientError) as err:
        create_session("sk_test", agent_id="ag_1", base_url=api.url)
    assert err.value.code == ErrorCode.SESSION_REQUEST_FAILED and err.value.status == status
    assert match in err.value.message


def test_create_session_unreachable_api(api: FakeSpekoApi) -> None:
    url = api.url
    api.close()
    with pytest.raises(SpekoClientError) as err:
        create_session("sk_test", agent_id="ag_1", base_url=url, timeout=5)
    assert err.value.code == ErrorCode.SESSION_REQUEST_FAILED and err.value.status is None


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({}, ValueError, "exactly one of agent_id or intent"),
    ({"agent_id": "a", "intent": {"language": "en-US"}}, ValueError, "exactly one"),
    ({"agent_id": "a", "ttl_seconds": 100000}, ValueError, "ttl_seconds"),
    ({"agent_id": "a", "temperature": 0.3}, TypeError, "unknown session options"),
])
def test_bad_arguments_never_reach_the_api(api: FakeSpekoApi, kwargs: dict[str, Any], error: type[Exception],
                                           match: str) -> None:
    with pytest.raises(error, match=match):
        create_session("sk_test", base_url=api.url, **kwargs)
    assert api.requests == []


@pytest.mark.webrtc
def test_minted_session_joins_and_an_expired_one_never_connects(api: FakeSpekoApi) -> None:
    from speko_sync.testing import LocalServer
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    with LocalServer() as server:
        server.add_agent("minted", greeting=None)
        api.reply = (201, session_reply(server.token("user-1", "minted"), server.url))
        with Conversation.from_session(create_session("sk", agent_id="ag", base_url=api.url),
                                       audio=NullAudio()) as conv:
            assert conv.is_open() and conv.conversation_id == "minted"
        joins = server.stats()["joins"]
        expired = json.loads(session_reply(server.token("user-1", "minted"), server.url, PAST))
        with pytest.raises(SpekoClientError) as err:
            Conversation.from_session(expired, audio=NullAudio())
        assert err.value.code == ErrorCode.CONNECTION_FAILED
        with pytest.raises(ValueError, match="daily"):
            Conversation.from_session({**expired, "expiresAt": FUTURE, "transport": "daily"})
        assert server.stats()["joins"] == joins  # neither reached the server
