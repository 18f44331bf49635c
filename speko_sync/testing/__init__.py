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

Needs the ``testing`` extra: ``pip install speko_sync[testing]``. Names load on
first use, so the pytest plugin costs nothing where they are not used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .. import _livekit_exit  # noqa: F401  (a process that runs the offline agents quiesces LiveKit at exit)

_EXPORTS = {
    "AGENT_REQUIREMENTS": "_worker_process",
    "AgentEnvUnavailable": "_worker_process",
    "AgentWorker": "_worker_process",
    "JobRecord": "_workers",
    "agent_python": "_worker_process",
    "create_agent_env": "_worker_process",
    "DEFAULT_API_KEY": "_server",
    "DEFAULT_API_SECRET": "_server",
    "Grant": "_auth",
    "IsolationUnavailable": "_netns",
    "DropRule": "_netns",
    "LocalServer": "_server",
    "NetworkFaultUnavailable": "_netns",
    "PulseUnavailable": "_pulse",
    "ReceivedPacket": "_agent",
    "Recording": "_pulse",
    "ScriptedAgent": "_agent",
    "ServerProcess": "_process",
    "TokenError": "_auth",
    "VETH_ADDRESS": "_netns",
    "VirtualSoundDevices": "_pulse",
    "check_isolation": "_netns",
    "disconnect_reason": "_server",
    "in_isolated_namespace": "_netns",
    "isolation_command": "_netns",
    "link_outage": "_netns",
    "mint_token": "_auth",
    "packet_loss": "_netns",
    "reexec_isolated": "_netns",
    "run_isolated": "_netns",
    "tone": "_agent",
    "verify_token": "_auth",
}

__all__ = [
    "AGENT_REQUIREMENTS",
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "VETH_ADDRESS",
    "AgentEnvUnavailable",
    "AgentWorker",
    "DropRule",
    "Grant",
    "IsolationUnavailable",
    "JobRecord",
    "LocalServer",
    "NetworkFaultUnavailable",
    "PulseUnavailable",
    "ReceivedPacket",
    "Recording",
    "ScriptedAgent",
    "ServerProcess",
    "TokenError",
    "VirtualSoundDevices",
    "agent_python",
    "check_isolation",
    "create_agent_env",
    "disconnect_reason",
    "in_isolated_namespace",
    "isolation_command",
    "link_outage",
    "mint_token",
    "packet_loss",
    "reexec_isolated",
    "run_isolated",
    "tone",
    "verify_token",
]

if TYPE_CHECKING:
    from ._agent import ReceivedPacket, ScriptedAgent, tone
    from ._auth import Grant, TokenError, mint_token, verify_token
    from ._netns import (
        VETH_ADDRESS,
        DropRule,
        IsolationUnavailable,
        NetworkFaultUnavailable,
        check_isolation,
        in_isolated_namespace,
        isolation_command,
        link_outage,
        packet_loss,
        reexec_isolated,
        run_isolated,
    )
    from ._process import ServerProcess
    from ._pulse import PulseUnavailable, Recording, VirtualSoundDevices
    from ._server import DEFAULT_API_KEY, DEFAULT_API_SECRET, LocalServer, disconnect_reason
    from ._worker_process import (
        AGENT_REQUIREMENTS,
        AgentEnvUnavailable,
        AgentWorker,
        agent_python,
        create_agent_env,
    )
    from ._workers import JobRecord


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'speko_sync.testing' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ImportError as exc:
        raise ImportError(f"speko_sync.testing.{name} needs the testing extra "
                          f"(pip install 'speko_sync[testing]'): {exc}") from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
