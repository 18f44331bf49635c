"""Conversations as Celery tasks, on a prefork worker.

    python examples/celery_worker.py

With no broker given it starts everything itself, offline: a Redis server
(Debian's ``redis-server``), the local LiveKit-compatible server with a scripted
agent per room, and a Celery worker with the prefork pool; then it runs three
conversations as tasks and prints the transcripts they return.

The pattern that works with prefork (and with gunicorn's ``--preload``): the
worker's main process only imports this module, which uses no LiveKit; each
conversation runs inside a task, in a pool process, which starts speko_sync's
threads and LiveKit's native runtime on first use. A process forked after its
parent used LiveKit cannot (LiveKit's native threads do not survive fork), and
``Conversation`` says so at once with a ``RuntimeError``.

Your own worker: ``celery -A celery_worker worker --pool=prefork`` with
``SPEKO_CELERY_BROKER`` naming your broker, and tasks such as :func:`converse`
called with the token and URL your server minted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from celery import Celery

BROKER = os.environ.get("SPEKO_CELERY_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("speko_example", broker=BROKER, backend=BROKER)
app.conf.update(task_serializer="json", result_serializer="json", worker_prefetch_multiplier=1,
                broker_connection_retry_on_startup=True)


@app.task(name="speko_example.converse")
def converse(token: str, url: str, lines: list[str], timeout: float = 30.0) -> list[dict[str, str]]:
    """Hold one text conversation: send each line as a typed turn, wait for the
    agent's final answer to it, and return the transcript (one dict per turn)."""
    from speko_sync import Conversation, Message, MessageSource, NullAudio

    answered = threading.Semaphore(0)

    def on_message(message: Message) -> None:
        if message.source == MessageSource.AGENT and message.is_final:
            answered.release()

    with Conversation(token, url, audio=NullAudio(), microphone=False, on_message=on_message) as conv:
        for line in lines:
            conv.send_chat_message(line)
            if not answered.acquire(timeout=timeout):
                raise TimeoutError(f"no answer to {line!r} within {timeout} s")
        return [{"source": m.source.value, "text": m.text} for m in conv.transcript()]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_redis(port: int, deadline: float) -> None:
    import redis

    client = redis.Redis(port=port)
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    from speko_sync.testing import LocalServer, reexec_isolated

    reexec_isolated()  # WebRTC ignores loopback: run inside a private network namespace
    port = _free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no"], stdout=subprocess.DEVNULL)
    worker = None
    try:
        _wait_for_redis(port, time.monotonic() + 10)
        app.conf.broker_url = app.conf.result_backend = broker
        with LocalServer() as server:
            rooms = [f"celery-{i}" for i in range(3)]
            for room in rooms:
                server.add_agent(room, greeting=None)
            env = dict(os.environ, SPEKO_CELERY_BROKER=broker)
            worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_worker", "worker",
                                       "--pool=prefork", "--concurrency=2", "--loglevel=WARNING",
                                       "--without-gossip", "--without-mingle", "--without-heartbeat"],
                                      cwd=os.path.dirname(os.path.abspath(__file__)), env=env)
            results = [converse.delay(server.token(f"caller-{i}", room), server.url, ["hello", f"room {i}"])
                       for i, room in enumerate(rooms)]
            for room, result in zip(rooms, results, strict=True):
                for turn in result.get(timeout=120):
                    print(f"{room} {turn['source']}: {turn['text']}", flush=True)
    finally:
        if worker is not None:
            worker.terminate()  # a warm shutdown
            worker.wait(30)
        redis_server.terminate()
        redis_server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
