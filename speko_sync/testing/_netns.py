"""Run code inside a private network namespace that WebRTC can use.

libwebrtc (inside ``livekit.rtc``) and aioice both ignore loopback interfaces for
ICE, so a client and the local server on one machine cannot connect over
``127.0.0.1`` alone. A fresh network namespace with ``lo`` up and a veth pair
carrying private addresses gives both a usable interface, and it keeps every test
packet off the host's real interfaces. The namespace dies with the process that
made it, so nothing needs cleaning up.

Root uses ``unshare -n``; other users ``unshare -rn`` where user namespaces exist.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence

#: Set to "1" inside a namespace made by this module (and inherited by children).
ENV_MARK = "SPEKO_SYNC_NETNS"
#: The address of the namespace's veth end the server and clients use for ICE.
VETH_ADDRESS = "10.213.0.1"
_PEER_ADDRESS = "10.213.0.2"

_SETUP = f"""
set -e
ip link set lo up
ip link add sk0 type veth peer name sk1
ip addr add {VETH_ADDRESS}/24 dev sk0
ip addr add {_PEER_ADDRESS}/24 dev sk1
for dev in sk0 sk1; do
  echo 1 > /proc/sys/net/ipv6/conf/$dev/disable_ipv6 2>/dev/null || true
  ip link set $dev up
done
exec "$@"
"""


class IsolationUnavailable(RuntimeError):
    """No network namespace can be made here; ``str(err)`` says why."""


def in_isolated_namespace() -> bool:
    """True when this process runs inside a namespace made by this module."""
    return os.environ.get(ENV_MARK) == "1"


def _unshare_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None:
        raise IsolationUnavailable("the 'unshare' command (util-linux) is not installed")
    if ip is None:
        raise IsolationUnavailable("the 'ip' command (iproute2) is not installed")
    if os.geteuid() == 0:
        return [unshare, "-n"]
    return [unshare, "-rn"]


def isolation_command(argv: Sequence[str]) -> list[str]:
    """Return the command line that runs ``argv`` inside a fresh namespace.

    Raises :class:`IsolationUnavailable` if the tools are missing.
    """
    return [*_unshare_prefix(), "sh", "-c", _SETUP, "speko-netns", *argv]


_probe_result: str | None = None


def check_isolation() -> None:
    """Raise :class:`IsolationUnavailable` (with the reason) unless a namespace
    with a veth pair can be made here. The probe runs once per process."""
    global _probe_result
    if in_isolated_namespace():
        return
    if _probe_result is None:
        try:
            cmd = isolation_command(["true"])
        except IsolationUnavailable as exc:
            _probe_result = str(exc)
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            _probe_result = "" if proc.returncode == 0 else (
                f"'{' '.join(cmd[:2])}' with a veth pair failed "
                f"(exit {proc.returncode}): {proc.stderr.strip() or 'no message'}"
            )
    if _probe_result:
        raise IsolationUnavailable(_probe_result)


def run_isolated(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` inside a fresh namespace and wait for it (``subprocess.run``
    keyword arguments pass through). Raises :class:`IsolationUnavailable`."""
    check_isolation()
    env = dict(kwargs.pop("env", None) or os.environ)  # type: ignore[call-overload]
    env[ENV_MARK] = "1"
    return subprocess.run(isolation_command(argv), env=env, **kwargs)  # type: ignore[call-overload, no-any-return]


def reexec_isolated(argv: Sequence[str] | None = None) -> None:
    """Replace this process with itself (or ``argv``) inside a fresh namespace.

    Returns at once, doing nothing, when already isolated. Raises
    :class:`IsolationUnavailable` when no namespace can be made; never returns
    otherwise. Flush your output before calling it.
    """
    if in_isolated_namespace():
        return
    check_isolation()
    cmd = isolation_command(list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]])
    os.environ[ENV_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


class NetworkFaultUnavailable(RuntimeError):
    """Network faults cannot be made here; ``str(err)`` says why."""


def _require_fault_namespace() -> str:
    """The iptables binary, once sure this process is in a namespace this module
    made (faults must never touch the host's own rules)."""
    if not in_isolated_namespace():
        raise NetworkFaultUnavailable("network faults are made only inside a namespace made by "
                                      "speko_sync.testing (reexec_isolated / run_isolated)")
    probe = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "sk0"], capture_output=True, text=True)
    if VETH_ADDRESS not in probe.stdout:
        raise NetworkFaultUnavailable("this is not the namespace speko_sync.testing made (no sk0 with "
                                      f"{VETH_ADDRESS})")
    iptables = shutil.which("iptables")
    if iptables is None:
        raise NetworkFaultUnavailable("the 'iptables' command (Debian package iptables) is not installed")
    return iptables


class DropRule:
    """A drop rule in force (what :func:`link_outage` and :func:`packet_loss`
    yield); :meth:`dropped` tells whether it really bites."""

    def __init__(self, iptables: str) -> None:
        self._iptables = iptables

    def dropped(self) -> int:
        """Packets the rule has dropped so far (it is the first INPUT rule)."""
        out = subprocess.run([self._iptables, "-L", "INPUT", "1", "-v", "-x", "-n"], check=True,
                             capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else 0


@contextlib.contextmanager
def _drop_rule(match: Sequence[str]) -> Iterator[DropRule]:
    iptables = _require_fault_namespace()
    # INPUT, not OUTPUT: a DROP in OUTPUT fails the sender's own sendto() at once
    # (EPERM), which no real outage does. Client and server share lo here.
    rule = ["INPUT", "-i", "lo", *match, "-j", "DROP"]
    subprocess.run([iptables, "-I", rule[0], "1", *rule[1:]], check=True, capture_output=True)
    try:
        yield DropRule(iptables)
    finally:
        subprocess.run([iptables, "-D", *rule], check=True, capture_output=True)


def link_outage() -> contextlib.AbstractContextManager[DropRule]:
    """While the ``with`` block runs, every packet between the clients and the
    server in this namespace (signalling and media) is lost, as in a network
    outage: nothing is refused, nothing arrives. Raises
    :class:`NetworkFaultUnavailable` outside the namespace or without iptables."""
    return _drop_rule([])


def packet_loss(probability: float) -> contextlib.AbstractContextManager[DropRule]:
    """While the ``with`` block runs, each packet in this namespace is lost with
    ``probability`` (0..1), independently. Raises ``ValueError`` for a
    probability outside 0..1, :class:`NetworkFaultUnavailable` as
    :func:`link_outage`."""
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must be within 0..1, got {probability!r}")
    return _drop_rule(["-m", "statistic", "--mode", "random", "--probability", f"{probability:.4f}"])
