"""Figures for the offline Speko agent (a real LiveKit Agents worker).

For each of N rooms, one after another, a raw ``livekit.rtc`` client joins a
``LocalServer`` that has the offline worker registered, and the script times,
from the moment ``Room.connect`` returns:

- the agent participant joining (dispatch + job start + its own connect);
- the first ``lk.agent.state`` it publishes;
- the first audible frame of its greeting (goal: under 3 s);
- the greeting's final ``lk.transcription``.

Also: how long the worker takes to start and register. Everything runs inside a
private network namespace; the worker runs from the agent environment
(``make agent-env``).

    python benchmarks/bench_agent_worker.py --rooms 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
from livekit import rtc

from speko_sync.testing import LocalServer, reexec_isolated


async def one_room(server: LocalServer, name: str) -> dict[str, float]:
    room = rtc.Room()
    marks: dict[str, float] = {}
    done = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def mark(what: str) -> None:
        marks.setdefault(what, time.monotonic() - t0)

    def on_attributes(changed: dict[str, str], who: rtc.Participant) -> None:
        if "lk.agent.state" in changed:
            mark("first lk.agent.state")

    def on_track(track: rtc.Track, *_: object) -> None:
        async def listen() -> None:
            async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
                if np.abs(np.frombuffer(event.frame.data, dtype=np.int16)).max() > 1000:
                    mark("first greeting audio")
                    return
        tasks.append(asyncio.ensure_future(listen()))

    def on_stream(reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            await reader.read_all()
            if (reader.info.attributes or {}).get("lk.transcription_final") == "true":
                mark("greeting transcript (final)")
                done.set()
        tasks.append(asyncio.ensure_future(read()))

    room.on("participant_connected", lambda p: mark("agent joined"))
    room.on("participant_attributes_changed", on_attributes)
    room.on("track_subscribed", on_track)
    room.register_text_stream_handler("lk.transcription", on_stream)
    await room.connect(server.url, server.token("bench-user", name))
    t0 = time.monotonic()
    await asyncio.wait_for(done.wait(), 60)
    for task in tasks:
        task.cancel()
    await room.disconnect()
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=5)
    args = parser.parse_args()
    reexec_isolated()
    with LocalServer() as server:
        t0 = time.monotonic()
        server.start_agent_worker()
        print(f"worker started and registered in {time.monotonic() - t0:.2f} s")
        runs = [asyncio.run(one_room(server, f"bench-{i}")) for i in range(args.rooms)]
    for what in ("agent joined", "first lk.agent.state", "first greeting audio", "greeting transcript (final)"):
        values = [r[what] for r in runs if what in r]
        print(f"{what:30s} after the client joined: median {statistics.median(values):.2f} s, "
              f"min {min(values):.2f} s, max {max(values):.2f} s over {len(values)} rooms"
              + ("  (goal < 3 s)" if what == "first greeting audio" else ""))


if __name__ == "__main__":
    main()
