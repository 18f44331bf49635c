"""Does an inbound packet flood starve the agent's audio?

The agent speaks without a pause while it sends ``--packets`` data packets back
to back; the same session without the flood is the baseline. The conversation
plays through real PortAudio on virtual PulseAudio devices (20 ms device
buffers), so an underrun is a callback that found too little agent audio. The
server runs in a child process; the conversation runs here.

    python benchmarks/bench_flood.py [--packets 100000] [--seconds 20] [--kind ignored|message]

``ignored``: packets of a type speko_sync does not know (counted, dropped);
``message``: ``agent_message`` packets, each delivered as a message and
reconciled into the transcript. Diagnostics: ``--timeline`` (per second, the
longest gap between agent frames and their delay jitter), ``--trace-ffi`` (when
LiveKit's FFI thread hands each audio event over), ``--no-microphone``,
``--gc freeze|off``, ``--switch-interval S`` (the interpreter's),
``--server-nice N`` (the server child's priority). Prints each loop's lag, when
the underruns came, the playback depth and flood cushion, and the garbage
collector's pauses.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speko_sync.testing import ServerProcess

PAYLOADS = {
    "ignored": b'{"type":"flood"}',
    "message": json.dumps({"type": "agent_message", "text": "flood"}).encode(),
}


def print_timeline(arrivals: list[float], started: float, underrun_at: list[float]) -> None:
    """Per second of the session: the longest gap between agent frames reaching the
    ring, and their delay jitter (each frame's arrival against the 10 ms cadence,
    relative to the earliest frame of the second before and this one)."""
    delays = [t - k * 0.01 for k, t in enumerate(arrivals)]
    second = int(arrivals[0] - started) if arrivals else 0
    previous_min = float("inf")
    rows = []
    while True:
        lo, hi = started + second, started + second + 1
        idx = [k for k, t in enumerate(arrivals) if lo <= t < hi]
        if not idx:
            if lo > arrivals[-1]:
                break
            second += 1
            continue
        this_min = min(delays[k] for k in idx)
        base = min(previous_min, this_min)
        jitter = max(delays[k] - base for k in idx)
        gap = max((arrivals[k] - arrivals[k - 1] for k in idx if k), default=0.0)
        n = sum(lo <= u < hi for u in underrun_at)
        rows.append(f"{second:>3}s gap {gap * 1000:4.0f} jitter {jitter * 1000:4.0f}" + (f" U{n}" if n else ""))
        previous_min = this_min
        second += 1
    for i in range(0, len(rows), 4):
        print("   " + " | ".join(rows[i:i + 4]), flush=True)


def raw_session(child: ServerProcess, room: str, seconds: float, packets: int, kind: str,
                prebuffer_ms: int = 20) -> dict[str, Any]:
    """The same session with the raw ``livekit.rtc`` client, written as its
    examples do: the room, its events and the agent's ``AudioStream`` on one
    asyncio loop; each packet's JSON decoded; a PyAudio output stream in
    callback mode (20 ms buffers) taking 10 ms frames from a queue once
    ``prebuffer_ms`` beyond a buffer are queued. No microphone."""
    import asyncio
    import collections
    import threading

    import numpy as np
    import pyaudio
    from livekit import rtc

    child.add_agent(room)
    token = child.token("raw", room)
    lock = threading.Lock()
    frames: collections.deque[np.ndarray] = collections.deque()
    state = {"queued": 0, "underruns": 0, "played": 0, "started": False, "received": 0}
    depths: list[float] = []
    buffer, prebuffer = 960, 48 * prebuffer_ms

    def callback(_in: bytes | None, count: int, _time: Any, _status: int) -> tuple[bytes, int]:
        out = np.zeros(count, dtype=np.int16)
        with lock:
            if not state["started"]:
                while frames and state["queued"] - len(frames[0]) >= count + prebuffer:  # stale: before we play
                    state["queued"] -= len(frames.popleft())
                state["started"] = state["queued"] >= count + prebuffer
            if state["started"]:
                filled = 0
                while filled < count and frames:
                    frame = frames[0]
                    n = min(len(frame), count - filled)
                    out[filled:filled + n] = frame[:n]
                    filled += n
                    if n == len(frame):
                        frames.popleft()
                    else:
                        frames[0] = frame[n:]
                state["queued"] -= filled
                state["played"] += filled
                if filled < count:
                    state["underruns"] += 1
        return out.tobytes(), pyaudio.paContinue

    async def run() -> dict[str, Any]:
        room_ = rtc.Room()
        subscribed: asyncio.Queue[rtc.Track] = asyncio.Queue()

        def on_data(packet: rtc.DataPacket) -> None:
            state["received"] += 1
            json.loads(packet.data)

        room_.on("data_received", on_data)
        room_.on("track_subscribed", lambda track, *_: subscribed.put_nowait(track)
                 if track.kind == rtc.TrackKind.KIND_AUDIO else None)
        await room_.connect(child.url, token)
        stream = rtc.AudioStream(await subscribed.get(), sample_rate=48000, num_channels=1)

        async def pump() -> None:
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16)
                with lock:
                    frames.append(samples)
                    state["queued"] += len(samples)
        pumping = asyncio.get_running_loop().create_task(pump())
        try:
            await asyncio.to_thread(child.say_tone, room, seconds + 4)
            deadline = time.monotonic() + 5
            while state["played"] < 48000 and time.monotonic() < deadline:  # output stream started
                await asyncio.sleep(0.05)
            base = dict(state)
            started = time.monotonic()
            sent_in = await asyncio.to_thread(child.flood, room, packets, PAYLOADS[kind]) if packets else 0.0
            arrived_in = float("nan")
            while time.monotonic() < started + seconds:
                await asyncio.sleep(0.05)
                depths.append(1000 * state["queued"] / 48000)
                if arrived_in != arrived_in and packets and state["received"] - base["received"] >= packets:
                    arrived_in = time.monotonic() - started
            return {
                "underruns": state["underruns"] - base["underruns"],
                "trims": 0,
                "played_s": (state["played"] - base["played"]) / 48000,
                "wall_s": time.monotonic() - started,
                "received": state["received"] - base["received"],
                "server_sent_s": sent_in,
                "arrived_s": arrived_in,
                "underrun_at": [],
                "depth_ms": sum(depths) / max(1, len(depths)),
                "cushion_ms": 0.0,
                "cushion_end_ms": 0.0,
            }
        finally:
            pumping.cancel()
            await stream.aclose()
            await room_.disconnect()

    pa = pyaudio.PyAudio()  # opened first: it takes up to 2 s, which would stall the loop
    out = pa.open(format=pyaudio.paInt16, channels=1, rate=48000, output=True, frames_per_buffer=buffer,
                  stream_callback=callback)
    try:
        return asyncio.run(run())
    finally:
        out.stop_stream()
        out.close()
        pa.terminate()


def session(child: ServerProcess, room: str, seconds: float, packets: int, kind: str,
            microphone: bool = True, trace_ffi: bool = False, timeline: bool = False) -> dict[str, Any]:
    from speko_sync import Conversation

    child.add_agent(room)
    conv = Conversation(child.token("listener", room), child.url, microphone=microphone)
    try:
        child.say_tone(room, seconds + 4)
        deadline = time.monotonic() + 5
        while conv.stats().frames_played < 100 and time.monotonic() < deadline:  # output stream started
            time.sleep(0.05)
        base = conv.stats()
        arrivals: list[float] = []  # when each agent frame reached the playback ring (audio loop)
        play = conv._session.path.play

        def stamped(samples: Any) -> None:
            arrivals.append(time.monotonic())
            play(samples)

        conv._session.path.play = stamped  # type: ignore[method-assign]
        handed: list[float] = []  # when LiveKit's FFI thread handed each audio event over (--trace-ffi)
        if trace_ffi:
            from livekit.rtc._ffi_client import FfiClient

            ffi_queue = FfiClient.instance.queue
            put = ffi_queue.put

            def traced(item: Any) -> None:
                if item.WhichOneof("message") == "audio_stream_event":
                    handed.append(time.monotonic())
                put(item)

            ffi_queue.put = traced  # type: ignore[method-assign]
        import asyncio

        from speko_sync._runtime import runtime

        lags: dict[str, list[float]] = {"room": [], "audio": []}

        async def heartbeat(into: list[float]) -> None:
            loop = asyncio.get_running_loop()
            while True:
                t = loop.time()
                await asyncio.sleep(0.005)
                into.append(loop.time() - t - 0.005)
        beats = [runtime().loop.submit(heartbeat(lags["room"])), runtime().audio.submit(heartbeat(lags["audio"]))]
        started = time.monotonic()
        sent_in = child.flood(room, packets, PAYLOADS[kind]) if packets else 0.0
        deadline = started + seconds
        underrun_at: list[float] = []
        depths: list[float] = []  # ms queued for the speaker, every 50 ms
        cushion: list[float] = []  # ms of it built on purpose for the flood
        io = conv._session.path.io
        assert io is not None

        def watch() -> None:
            time.sleep(0.05)
            depths.append(io.playback_depth_ms())
            cushion.append(1000 * io.cushion / io.rate)
            now = conv.stats().underruns - base.underruns
            if now > len(underrun_at):
                underrun_at.extend([time.monotonic() - started] * (now - len(underrun_at)))
        while time.monotonic() < deadline and conv.stats().packets_received - base.packets_received < packets:
            watch()
        arrived_in = time.monotonic() - started
        while time.monotonic() < deadline:
            watch()
        stats = conv.stats()
        wall = time.monotonic() - started
        for beat in beats:
            beat.cancel()
        if trace_ffi:
            ffi_queue.put = put  # type: ignore[method-assign]
            handed_gaps = sorted(((b - a, b - started) for a, b in itertools.pairwise(handed) if b > started),
                                 reverse=True)[:3]
            print("  longest gaps between audio events handed over by LiveKit's FFI thread: "
                  + ", ".join(f"{g * 1000:.0f} ms at {t:.1f} s" for g, t in handed_gaps), flush=True)
        if timeline:
            print_timeline(arrivals, started, underrun_at)
        gaps = [(b - a, b - started) for a, b in itertools.pairwise(arrivals) if b > started]
        worst = sorted(gaps, reverse=True)[:3]
        print("  longest gaps between agent frames reaching the ring: "
              + ", ".join(f"{g * 1000:.0f} ms at {t:.1f} s" for g, t in worst), flush=True)
        import numpy as np
        for name, lag in lags.items():
            print(f"  {name} loop lag: p50 {np.percentile(lag, 50)*1000:.1f} ms, p99 {np.percentile(lag, 99)*1000:.1f} "
                  f"ms, max {max(lag)*1000:.1f} ms, >20 ms: {sum(x > 0.02 for x in lag)}", flush=True)
    finally:
        conv.end_session()
    return {
        "underruns": stats.underruns - base.underruns,
        "trims": stats.playback_dropped - base.playback_dropped,
        "played_s": (stats.frames_played - base.frames_played) / 100,
        "wall_s": wall,
        "received": stats.packets_received - base.packets_received,
        "server_sent_s": sent_in,
        "arrived_s": arrived_in,
        "underrun_at": underrun_at,
        "depth_ms": sum(depths) / max(1, len(depths)),
        "cushion_ms": max(cushion, default=0.0),
        "cushion_end_ms": cushion[-1] if cushion else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kind", choices=sorted(PAYLOADS), default="ignored")
    parser.add_argument("--server-nice", type=int, default=0,
                        help="run the server child at this nice value, to tell the machine's load from ours")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the client process (seconds; default: Python's 0.005)")
    parser.add_argument("--no-microphone", action="store_true", help="text-only sessions (nothing captured)")
    parser.add_argument("--raw", action="store_true",
                        help="the raw livekit.rtc client instead (playback only, as its examples do it)")
    parser.add_argument("--timeline", action="store_true",
                        help="per second: longest gap between agent frames and their delay jitter (ms)")
    parser.add_argument("--trace-ffi", action="store_true",
                        help="also time the audio events as LiveKit's FFI thread hands them over")
    parser.add_argument("--gc", choices=["default", "freeze", "off"], default="default",
                        help="the cyclic garbage collector during the sessions (freeze: gc.freeze() first)")
    args = parser.parse_args()
    from speko_sync.testing import ServerProcess, reexec_isolated
    from speko_sync.testing._pulse import VirtualSoundDevices

    reexec_isolated()
    child = ServerProcess(nice=args.server_nice)
    import gc

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.gc == "freeze":
        gc.freeze()
    elif args.gc == "off":
        gc.disable()
    pauses: list[tuple[float, int, int]] = []  # each collection: seconds, generation, objects tracked
    gc_started = [0.0]

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            pauses.append((time.perf_counter() - gc_started[0], info["generation"], 0))
    gc.callbacks.append(gc_timer)
    try:
        with VirtualSoundDevices():
            for name, packets in (("quiet", 0), ("flood", args.packets), ("quiet", 0)):
                pauses.clear()
                if args.raw:
                    r = raw_session(child, f"raw-{name}-{time.monotonic_ns()}", args.seconds, packets, args.kind)
                else:
                    r = session(child, f"{name}-{time.monotonic_ns()}", args.seconds, packets, args.kind,
                                microphone=not args.no_microphone, trace_ffi=args.trace_ffi,
                                timeline=args.timeline)
                print(f"{name:5}: {r['underruns']:.0f} underruns, {r['trims']:.0f} trims, "
                      f"{r['played_s']:.1f} s played in {r['wall_s']:.1f} s; "
                      f"depth mean {r['depth_ms']:.1f} ms (flood cushion up to {r['cushion_ms']:.0f} ms, "
                      f"{r['cushion_end_ms']:.0f} ms at the end); "
                      f"{r['received']:.0f} packets received"
                      + (f" ({args.kind}; server sent them in {r['server_sent_s']:.1f} s, all arrived "
                         f"{r['arrived_s']:.1f} s after the flood began)" if packets else "")
                      + (f"; underruns at {', '.join(f'{t:.1f}' for t in r['underrun_at'])} s"
                         if r["underrun_at"] else ""), flush=True)
                longest = sorted(pauses, reverse=True)[:3]
                print(f"  garbage collector: {len(pauses)} collections, {sum(p[0] for p in pauses) * 1000:.0f} ms; "
                      "longest " + ", ".join(f"{p[0] * 1000:.0f} ms (generation {p[1]})" for p in longest)
                      + f"; {len(gc.get_objects())} objects tracked after", flush=True)
        return 0
    finally:
        child.close()


if __name__ == "__main__":
    sys.exit(main())
