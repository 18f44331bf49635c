"""pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:
    speko_server: a running :class:`~speko_sync.testing.LocalServer` for the test.
        Customise it with ``@pytest.mark.speko_server(single_pc=False, ...)``
        (keyword arguments of ``LocalServer``).
    speko_agent: a :class:`~speko_sync.testing.ScriptedAgent` in a room of its
        own on ``speko_server`` (``speko_agent.room``); customise it with
        ``@pytest.mark.speko_agent(greeting=None, ...)`` (markers on the module,
        class and test merge, the closest winning).

Option ``--speko-isolate`` (or ``speko_isolate = true`` in the ini file) runs the
whole session inside a private network namespace, which WebRTC needs. Where
none can be made, tests using the fixtures skip saying why, unless the
environment variable ``SPEKO_SYNC_REQUIRE_WEBRTC=1`` is set (CI): then they fail.

Imports of the testing stack are lazy, so the plugin costs nothing (and needs
no extra) in projects that do not use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from speko_sync.testing import LocalServer, ScriptedAgent

REQUIRE_ENV = "SPEKO_SYNC_REQUIRE_WEBRTC"
_isolation_error: str | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("speko_sync")
    group.addoption("--speko-isolate", action="store_true", default=None,
                    help="run the session inside a private network namespace (for WebRTC tests)")
    parser.addini("speko_isolate", type="bool", default=False,
                  help="run the session inside a private network namespace (for WebRTC tests)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Re-execute pytest inside a network namespace before any output is captured."""
    global _isolation_error
    wanted = "--speko-isolate" in args or early_config.getini("speko_isolate")
    if not wanted:
        return
    from speko_sync.testing._netns import (
        IsolationUnavailable,
        check_isolation,
        in_isolated_namespace,
        reexec_isolated,
    )

    if in_isolated_namespace():
        return
    try:
        check_isolation()
    except IsolationUnavailable as exc:
        _isolation_error = str(exc)
        return
    capture = early_config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()  # give the new process the real stdout and stderr
    try:
        reexec_isolated()
    except IsolationUnavailable as exc:
        _isolation_error = str(exc)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "speko_server(**kwargs): options for the speko_server fixture")
    config.addinivalue_line("markers", "speko_agent(**kwargs): options for the speko_agent fixture")
    config.addinivalue_line("markers", "webrtc: needs WebRTC in a private network namespace")


def pytest_report_header(config: pytest.Config) -> str:
    from speko_sync.testing._netns import in_isolated_namespace

    if in_isolated_namespace():
        return "speko_sync: running inside a private network namespace"
    return f"speko_sync: not isolated ({_isolation_error or 'isolation not requested'})"


def require_webrtc() -> None:
    """Skip (or, with ``SPEKO_SYNC_REQUIRE_WEBRTC=1``, fail) the current test when
    WebRTC cannot work here: no private network namespace could be made."""
    from speko_sync.testing._netns import IsolationUnavailable, check_isolation, in_isolated_namespace

    if in_isolated_namespace():
        return
    reason = _isolation_error
    if reason is None:
        try:
            check_isolation()
            reason = "not running inside a network namespace (run pytest with --speko-isolate)"
        except IsolationUnavailable as exc:
            reason = str(exc)
    message = f"WebRTC test needs a private network namespace: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """The options of every ``name`` marker on the test, its class and module,
    merged; the closest wins (a module-wide ``protocol=`` and a test's
    ``greeting=`` combine)."""
    merged: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(name))):
        merged.update(marker.kwargs)
    return merged


@pytest.fixture
def speko_server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """A running local LiveKit-compatible server, stopped after the test."""
    require_webrtc()
    from speko_sync.testing import LocalServer

    with LocalServer(**_marker_kwargs(request, "speko_server")) as server:
        yield server


@pytest.fixture
def speko_agent(request: pytest.FixtureRequest, speko_server: LocalServer) -> ScriptedAgent:
    """A scripted agent in a room named after the test, on ``speko_server``."""
    room = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:60]
    options = _marker_kwargs(request, "speko_agent")
    return speko_server.add_agent(room, **options)
