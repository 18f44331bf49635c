"""The private network namespace the WebRTC tests run in."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from speko_sync.testing import VETH_ADDRESS, in_isolated_namespace, isolation_command, run_isolated


def test_isolation_command_uses_unshare_with_a_veth_pair() -> None:
    cmd = isolation_command(["echo", "hi"])
    assert cmd[1] == ("-n" if os.geteuid() == 0 else "-rn")
    assert "veth" in cmd[4] and cmd[-2:] == ["echo", "hi"]


@pytest.mark.webrtc
def test_suite_runs_isolated_with_only_private_addresses() -> None:
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    assert in_isolated_namespace()
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert "default" not in routes  # nothing can leave this namespace
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((VETH_ADDRESS, 0))  # the veth end exists here


@pytest.mark.webrtc
def test_run_isolated_gives_a_fresh_namespace() -> None:
    from speko_sync.testing.pytest_plugin import require_webrtc

    require_webrtc()
    proc = run_isolated(["sh", "-c", 'ip -br addr; echo "mark=$SPEKO_SYNC_NETNS"'],
                        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert VETH_ADDRESS in proc.stdout and "mark=1" in proc.stdout
