"""``python -m speko_sync.testing serve``: run the local server standalone."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ._server import DEFAULT_API_KEY, DEFAULT_API_SECRET, LocalServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speko_sync.testing",
                                     description="Offline LiveKit-compatible server with a scripted Speko agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server until interrupted")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7880, help="port to listen on (default 7880; 0 = any free)")
    serve.add_argument("--api-key", default=DEFAULT_API_KEY, help="API key tokens are checked against")
    serve.add_argument("--api-secret", default=DEFAULT_API_SECRET, help="API secret tokens are checked against")
    serve.add_argument("--no-agent", action="store_true", help="no default agent in new rooms")
    serve.add_argument("--room", default="speko_local", help="room of the printed token")
    serve.add_argument("--identity", default="user", help="identity of the printed token")
    serve.add_argument("--ttl", type=float, default=24 * 3600, help="lifetime of the printed token, seconds")
    serve.add_argument("--empty-room-timeout", type=float, default=60.0,
                       help="close a room (and stop its agent) this many seconds after its last client left")
    serve.add_argument("--no-v1", action="store_true",
                       help="answer /rtc/v1 with 404 so clients use the classic /rtc path")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every session")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = LocalServer(host=args.host, port=args.port, api_key=args.api_key, api_secret=args.api_secret,
                         default_agent=not args.no_agent, single_pc=not args.no_v1,
                         empty_room_timeout=args.empty_room_timeout)
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"url:   {server.url}")
    print(f"token: {server.token(args.identity, args.room, ttl=args.ttl)}")
    print(f"(room {args.room!r}, identity {args.identity!r}; "
          f"{'no agent' if args.no_agent else 'a scripted agent joins every new room'}; Ctrl-C stops)",
          flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
