"""Figures for the local server (run with ``make bench``).

1. Connect: median wall time of ``rtc.Room.connect`` against the server
   (goal: under 300 ms on a 2-core machine).
2. CPU: the server process's CPU time while one room carries a client and a
   scripted agent both sending audio for 30 s (goal: under 15 % of one core).

The server runs in a child process so its CPU is measured alone; everything
runs inside a private network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time


def serve_child() -> None:
    """Child: a server with an agent that speaks continuously; prints url and token."""
    from speko_sync.testing import LocalServer

    with LocalServer() as server:
        agent = server.add_agent("bench", greeting=None)
        print(server.url, server.token("bench-client", "bench"), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "speak":
                agent.say_tone(440, 120.0, 0.3)
                print("speaking", flush=True)
            elif command == "quit":
                break


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_connect(url: str, make_token: list[str], runs: int) -> list[float]:
    from livekit import rtc

    times = []
    for i in range(runs):
        room = rtc.Room()
        started = time.perf_counter()
        await room.connect(url, make_token[i])
        times.append(time.perf_counter() - started)
        await room.disconnect()
    return times


async def full_duplex(url: str, token: str, child: subprocess.Popen[str], seconds: float) -> tuple[float, float]:
    from livekit import rtc

    from speko_sync.testing import tone

    room = rtc.Room()
    received = 0

    async def listen(track: rtc.Track) -> None:
        nonlocal received
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            received += event.frame.samples_per_channel
    tasks: list[asyncio.Task[None]] = []
    room.on("track_subscribed", lambda track, *_: tasks.append(asyncio.create_task(listen(track))))
    await room.connect(url, token)
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("speak\n")
    child.stdin.flush()
    child.stdout.readline()
    chunk = tone(300, 1.0, 0.3)
    frames = [chunk[i:i + 480] for i in range(0, len(chunk), 480)]

    async def feed() -> None:
        while True:
            for f in frames:
                await source.capture_frame(rtc.AudioFrame(f.tobytes(), 48000, 1, 480))
    feeder = asyncio.create_task(feed())
    await asyncio.sleep(2.0)  # let both directions settle before measuring
    cpu0, wall0, received0 = cpu_seconds(child.pid), time.monotonic(), received
    await asyncio.sleep(seconds)
    cpu1, wall1 = cpu_seconds(child.pid), time.monotonic()
    heard_s = (received - received0) / 48000
    feeder.cancel()
    for t in tasks:
        t.cancel()
    await room.disconnect()
    return (cpu1 - cpu0) / (wall1 - wall0), heard_s / (wall1 - wall0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=20, help="connects to time")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of the CPU measurement")
    args = parser.parse_args()
    if args.serve_child:
        serve_child()
        return 0
    from speko_sync.testing import reexec_isolated

    reexec_isolated()
    child = subprocess.Popen([sys.executable, __file__, "--serve-child"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        url, token = child.stdout.readline().split()
        from speko_sync.testing import mint_token
        from speko_sync.testing._server import DEFAULT_API_KEY, DEFAULT_API_SECRET

        tokens = [mint_token(DEFAULT_API_KEY, DEFAULT_API_SECRET, f"c{i}", "connect-bench") for i in range(args.runs)]
        times = asyncio.run(measure_connect(url, tokens, args.runs))
        print(f"connect: median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {args.runs} runs "
              f"(goal < 300 ms)")
        cpu, heard = asyncio.run(full_duplex(url, token, child, args.seconds))
        print(f"server CPU, one room, client and agent both sending audio for {args.seconds:.0f} s: "
              f"{cpu * 100:.1f} % of one core (goal < 15 %); client received {heard:.2f} s of agent audio per s")
        ok = statistics.median(times) < 0.3 and cpu < 0.15 and heard > 0.9
        print("within goals" if ok else "OUTSIDE GOALS")
        return 0 if ok else 1
    finally:
        if child.stdin:
            child.stdin.write("quit\n")
            child.stdin.close()
        child.wait(15)


if __name__ == "__main__":
    sys.exit(main())
