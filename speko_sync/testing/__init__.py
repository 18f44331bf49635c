"""Offline Speko: a LiveKit-compatible server and a scripted Speko agent.

Run apps and test suites against a voice agent with no account and no network::

    from speko_sync.testing import LocalServer, reexec_isolated

    reexec_isolated()            # WebRTC needs a private network namespace
    with LocalServer() as server:
        agent = server.add_agent(room="r1")
        token = server.token("alice", "r1")
        # connect any LiveKit client (or a speko_sync Conversation) to server.url

Also a pytest plugin (fixtures ``speko_server`` and ``speko_agent``) and a
command: ``python -m speko_sync.testing serve``.

Needs the ``testing`` extra: ``pip install speko_sync[testing]``.
"""

from ._agent import ReceivedPacket, ScriptedAgent, tone
from ._auth import Grant, TokenError, mint_token, verify_token
from ._netns import (
    VETH_ADDRESS,
    IsolationUnavailable,
    check_isolation,
    in_isolated_namespace,
    isolation_command,
    reexec_isolated,
    run_isolated,
)
from ._pulse import PulseUnavailable, Recording, VirtualSoundDevices
from ._server import DEFAULT_API_KEY, DEFAULT_API_SECRET, LocalServer, disconnect_reason

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "VETH_ADDRESS",
    "Grant",
    "IsolationUnavailable",
    "LocalServer",
    "PulseUnavailable",
    "ReceivedPacket",
    "Recording",
    "ScriptedAgent",
    "TokenError",
    "VirtualSoundDevices",
    "check_isolation",
    "disconnect_reason",
    "in_isolated_namespace",
    "isolation_command",
    "mint_token",
    "reexec_isolated",
    "run_isolated",
    "tone",
    "verify_token",
]
