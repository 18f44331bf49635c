"""``python -m speko_sync.testing serve``: run the local server standalone, with
the offline Speko agent (a LiveKit Agents worker) in every room;
``python -m speko_sync.testing agent-env``: create that agent's environment.

``serve`` needs the ``testing`` extra (it says so in one line without it);
``agent-env`` does not."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from ._worker_process import AgentEnvUnavailable, agent_python
from ._worker_process import main as worker_env_main

# the server's defaults, repeated so that --help and agent-env work without the testing extra
DEFAULT_API_KEY = "devkey"
DEFAULT_API_SECRET = "secret-for-local-testing-only-0123456789"

_AGENT_NOTE = {
    "worker": "the offline Speko agent (LiveKit Agents) joins every room",
    "scripted": "a scripted agent joins every new room",
    "none": "no agent",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speko_sync.testing",
                                     description="Offline LiveKit-compatible server with a scripted Speko agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server until interrupted")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7880, help="port to listen on (default 7880; 0 = any free)")
    serve.add_argument("--api-key", default=DEFAULT_API_KEY, help="API key tokens are checked against")
    serve.add_argument("--api-secret", default=DEFAULT_API_SECRET, help="API secret tokens are checked against")
    serve.add_argument("--agent", choices=("auto", "worker", "scripted", "none"), default="auto",
                       help="who joins each room: the offline LiveKit Agents worker, the in-process "
                            "scripted agent, or nobody (default auto: the worker when its environment exists)")
    serve.add_argument("--no-agent", action="store_true", help="same as --agent none")
    env = sub.add_parser("agent-env", help="create the LiveKit Agents environment the offline agent runs from")
    env.add_argument("path", nargs="?", default=None, help="where (default .venv-agent)")
    serve.add_argument("--room", default="speko_local", help="room of the printed token")
    serve.add_argument("--identity", default="user", help="identity of the printed token")
    serve.add_argument("--ttl", type=float, default=24 * 3600, help="lifetime of the printed token, seconds")
    serve.add_argument("--empty-room-timeout", type=float, default=60.0,
                       help="close a room (and stop its agent) this many seconds after its last client left")
    serve.add_argument("--no-v1", action="store_true",
                       help="answer /rtc/v1 with 404 so clients use the classic /rtc path")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every session")
    return parser


def _choose_agent(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    try:
        agent_python()
        return "worker"
    except AgentEnvUnavailable as exc:
        print(f"note: {exc}; using the scripted agent", file=sys.stderr)
        return "scripted"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "agent-env":
        return worker_env_main([args.path] if args.path else [])
    try:
        from ._server import LocalServer
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        print(f"speko_sync.testing serve needs the testing extra{f' (no {missing})' if missing else ''}: "
              "pip install 'speko_sync[testing]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    agent = _choose_agent("none" if args.no_agent else args.agent)
    server = LocalServer(host=args.host, port=args.port, api_key=args.api_key, api_secret=args.api_secret,
                         default_agent=agent == "scripted", single_pc=not args.no_v1,
                         empty_room_timeout=args.empty_room_timeout)
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    if agent == "worker":
        try:
            server.start_agent_worker(log_level="INFO" if args.verbose else "WARNING")
        except (AgentEnvUnavailable, TimeoutError, RuntimeError) as exc:
            server.stop()
            print(f"error: the offline agent worker did not start: {exc}", file=sys.stderr)
            return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"url:   {server.url}")
    print(f"token: {server.token(args.identity, args.room, ttl=args.ttl)}")
    print(f"(room {args.room!r}, identity {args.identity!r}; "
          f"{_AGENT_NOTE[agent]}; Ctrl-C stops)")
    # a realtime (speech-to-speech) session with the offline realtime agent, for
    # Conversation.from_session or `python -m speko_sync talk --session -`
    print(f"realtime session: {json.dumps(server.realtime_session(ttl_s=args.ttl))}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
