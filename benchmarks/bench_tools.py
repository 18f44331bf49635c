"""The client-tool round trip, side by side with a raw ``livekit.rtc`` RPC handler.

An agent participant (a raw ``livekit.rtc`` client joined with an agent
token, as a LiveKit Agents function tool calls) does ``perform_rpc`` to the
user, who answers:

- ``speko_sync``: a :class:`Conversation` with ``client_tools={"echo": fn}``
  (the payload parsed into keyword arguments, ``fn`` run on the tool pool, the
  result encoded, the call reported through ``on_tool_call``);
- ``raw``: a ``livekit.rtc.Room`` on a loop thread of its own, publishing a
  microphone fed every 10 ms as a Conversation does, with
  ``register_rpc_method("echo", handler)``, the handler answering on the loop.

Timed: from the agent's ``perform_rpc`` call to its result, in rounds that
alternate the two callees (so drift of the machine falls on both), over
WebRTC through a ``LocalServer`` in a child process (``ServerProcess``: its
Python would otherwise compete for this interpreter's lock), inside a private
network namespace. Goal: the median within 5 ms of raw's.

    python benchmarks/bench_tools.py --calls 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from livekit import rtc

from speko_sync import Conversation, NullAudio
from speko_sync.testing import ServerProcess, mint_token, reexec_isolated
from speko_sync.testing._server import DEFAULT_API_KEY, DEFAULT_API_SECRET


def token(identity: str, room: str, **grants: Any) -> str:
    return mint_token(DEFAULT_API_KEY, DEFAULT_API_SECRET, identity, room, **grants)


class RawCallee:
    """A raw livekit.rtc participant answering ``echo`` on a loop thread of its own."""

    def __init__(self, url: str, room: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="raw-callee", daemon=True)
        self.thread.start()
        self.room: rtc.Room | None = None
        self._call(self._join(url, room))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _join(self, url: str, room: str) -> None:
        self.room = rtc.Room()
        await self.room.connect(url, token("user", room))
        source = rtc.AudioSource(48000, 1, queue_size_ms=200)
        await self.room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("microphone", source),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self._mic = asyncio.ensure_future(self._feed(source))

        async def echo(data: rtc.RpcInvocationData) -> str:
            return str(json.loads(data.payload)["text"])
        self.room.local_participant.register_rpc_method("echo", echo)

    async def _feed(self, source: rtc.AudioSource) -> None:
        silence = np.zeros(480, dtype=np.int16).tobytes()
        due = time.monotonic()
        while True:
            await source.capture_frame(rtc.AudioFrame(silence, 48000, 1, 480))
            due += 0.01
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _leave(self) -> None:
        assert self.room is not None
        self._mic.cancel()
        await self.room.disconnect()

    def close(self) -> None:
        self._call(self._leave())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def calls(caller: rtc.Room, n: int) -> list[float]:
    out = []
    for i in range(n):
        payload = json.dumps({"text": f"call {i}"})
        t0 = time.perf_counter()
        result = await caller.local_participant.perform_rpc(destination_identity="user", method="echo",
                                                            payload=payload, response_timeout=15)
        out.append(time.perf_counter() - t0)
        assert result == f"call {i}", result
    return out


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(1000 * s for s in samples)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    return f"{name:10s} n={len(ms):4d}  median {statistics.median(ms):6.2f} ms  p95 {p95:6.2f} ms  max {ms[-1]:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls per callee (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two callees (default 5)")
    args = parser.parse_args()
    reexec_isolated()
    results: dict[str, list[float]] = {"raw": [], "speko_sync": []}
    per_round = max(1, args.calls // args.rounds)
    with ServerProcess() as server:
        async def run() -> None:
            for r in range(args.rounds):
                for name in ("raw", "speko_sync") if r % 2 == 0 else ("speko_sync", "raw"):
                    room = f"{name}-{r}"
                    caller = rtc.Room()
                    await caller.connect(server.url, token("agent", room, kind="agent"))
                    close: Callable[[], None]
                    if name == "raw":
                        callee = await asyncio.to_thread(RawCallee, server.url, room)
                        close = callee.close
                    else:
                        conv = await asyncio.to_thread(
                            Conversation, token("user", room), server.url, audio=NullAudio(),
                            client_tools={"echo": lambda text: text})
                        close = conv.end_session  # type: ignore[assignment]
                    await calls(caller, 5)  # warm up: the first call sets up the path
                    results[name] += await calls(caller, per_round)
                    await asyncio.to_thread(close)
                    await caller.disconnect()
        asyncio.run(run())
    print(f"tool round trip: agent perform_rpc -> result ({args.rounds} alternating rounds)")
    for name, samples in results.items():
        print(summary(name, samples))
    added = statistics.median(results["speko_sync"]) - statistics.median(results["raw"])
    print(f"speko_sync adds {1000 * added:+.2f} ms at the median (goal: at most +5 ms)")


if __name__ == "__main__":
    main()
