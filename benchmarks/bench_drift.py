"""A long call whose agent's clock is off: playback depth, cuts, gaps, memory.

The agent (the local server's scripted agent, in a child process) speaks
without a pause, its clock ``--ppm`` parts per million fast for the first half
of ``--minutes`` and as slow for the second. The conversation plays through
real PortAudio on virtual PulseAudio devices (20 ms device buffers) with its
microphone open, in this process. Every device callback notes the depth it
finds queued beyond the buffer it takes (ms), and every agent frame reaching
the speaker's queue its arrival. Per second: the depth (the median of what
the callbacks found: the level the jitter policy holds), its floor (the
least they found), the longest gap between two agent frames, the elastic
playback's rate change and the process's resident memory; at the end, the
trims, dropped microphone frames and underruns after the first 10 s.

The floor dips by as much as a frame is late: a frame 20 ms late leaves the
callback before it 20 ms less, whatever the slack. So the floor measures the
arrival jitter the policy absorbs (and the gaps column shows where it comes
from: LiveKit's stream hands frames over late for the raw client too); the
depth is what must stay flat.

    python benchmarks/bench_drift.py [--minutes 30] [--ppm 300] [--raw] [--save NPZ]

``--raw``: the raw ``livekit.rtc`` client side by side instead: its
``AudioStream`` written into a PortAudio output stream's queue as its examples
do (no jitter policy), the depth and memory the same way.

Where the agent's drift goes: LiveKit's receiver (WebRTC's NetEq, in the
native library) plays the agent's audio out on its own 10 ms clock, which is
this machine's, and absorbs a sender's clock by stretching or squeezing the
audio itself; so the agent's ppm reaches the speaker's ring as nothing. What
speko_sync absorbs is the sound card's clock against this machine's (the
PulseAudio null sink runs on the machine's clock, so it is not off here; the
test with a device clock 500 ppm off is ``tests/test_drift_live.py``). The
run shows the whole path staying flat for half an hour either way.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import threading
import time
from typing import Any

import numpy as np

SAMPLE_RATE = 48_000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Child:
    """The server process, one command at a time (its pipe is not shared
    safely between threads)."""

    def __init__(self, process: Any) -> None:
        self._process, self._lock = process, threading.Lock()
        self.url = process.url

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._process, name)

        def locked(*args: Any) -> Any:
            with self._lock:
                return method(*args)
        return locked


class Log:
    """Preallocated (time, value) pairs, appended from any one thread without
    allocating: the device callbacks' depths, the agent frames' arrivals."""

    def __init__(self, capacity: int, started: float) -> None:
        self.t = np.full(capacity, np.nan)  # (written now: resident from the start, so RSS shows the client)
        self.v = np.full(capacity, np.nan)
        self.n = 0
        self.started = started

    def note(self, value: float = 0.0) -> None:
        n = self.n
        if n < len(self.t):
            self.t[n] = time.monotonic() - self.started
            self.v[n] = value
            self.n = n + 1

    def restart(self, started: float) -> None:
        self.n, self.started = 0, started

    def per_second(self) -> dict[str, np.ndarray]:
        """After the first 10 s, for each whole second: the median and least
        value; the longest gap between notes (the times only grow)."""
        t, v = self.t[:self.n], self.v[:self.n]
        seconds = t.astype(int)
        keep = np.unique(seconds[seconds >= 10])[:-1]  # (the last second is cut short)
        gaps = np.diff(t, prepend=t[0] if len(t) else 0.0)
        bounds = np.searchsorted(seconds, np.append(keep, keep[-1] + 1 if len(keep) else 0))
        spans = [slice(a, b) for a, b in itertools.pairwise(bounds)]
        return {"second": keep.astype(float), "median": np.array([np.median(v[i]) for i in spans]),
                "least": np.array([v[i].min() for i in spans]), "gap": np.array([gaps[i].max() for i in spans])}


def logs(seconds: float, started: float) -> tuple[Log, Log]:
    """Room for a run's device callbacks (20 ms each) and agent frames (10 ms)."""
    return Log(int(seconds * 60) + 6000, started), Log(int(seconds * 150) + 6000, started)


def keep_talking(child: Any, room: str, until: float) -> None:
    """The agent's speech in minute-long pieces, queued before the last ends."""
    while time.monotonic() < until:
        child.say_tone(room, 60.0)
        time.sleep(55.0)


def speko_run(child: Any, room: str, seconds: float, ppm: float) -> dict[str, Any]:
    from speko_sync import Conversation

    conv = Conversation(child.token("user", room), child.url)
    try:
        started = time.monotonic()
        threading.Thread(target=keep_talking, args=(child, room, started + seconds), daemon=True).start()
        child.set_agent_clock(room, ppm)
        io = conv._session.path.io
        assert io is not None
        samples: list[tuple[float, float, float, float, float]] = []  # t, depth ms, rate ppm, rss MB, slack ms
        lows: dict[int, float] = {}  # second -> the least of the elastic playback's measure in it (ms)
        callbacks, arrivals = logs(seconds, started)
        render, path = io.render, conv._session.path
        play = path.play

        def rendered(out: Any, scratch: Any) -> None:
            callbacks.note(1000 * (io.playback.available() - len(out)) / io.rate)
            render(out, scratch)

        def played(samples: Any, *, silent: bool = False) -> None:
            arrivals.note()
            play(samples, silent=silent)
        io.render = rendered  # type: ignore[method-assign]
        path.play = played  # type: ignore[method-assign]
        elastic = conv._session.path._elastic
        if elastic is not None:
            observe = elastic.observe

            def noted(spare: float, at: float, slack: int, rate: int) -> None:
                second = int(at - started)
                lows[second] = min(lows.get(second, float("inf")), 1000 * spare / rate)
                observe(spare, at, slack, rate)
            elastic.observe = noted  # type: ignore[method-assign,assignment]
        flipped = False
        while (now := time.monotonic()) < started + seconds:
            if not flipped and now > started + seconds / 2:
                child.set_agent_clock(room, -ppm)
                flipped = True
            elastic = conv._session.path._elastic
            samples.append((now - started, io.playback_depth_ms(), elastic.ppm if elastic else float("nan"),
                            rss_mb(), 1000 * io.slack / io.rate))
            if len(samples) == 10:
                base = conv.stats()
            time.sleep(1.0)
        end = conv.stats()
    finally:
        conv.end_session()
    return {"samples": samples, "lows": lows, "callbacks": callbacks, "arrivals": arrivals,
            "trims": end.playback_dropped - base.playback_dropped,
            "capture_dropped": end.capture_dropped - base.capture_dropped,
            "underruns_after_start": end.underruns - base.underruns,
            "played_s": (end.frames_played - base.frames_played) / 100}


def raw_run(child: Any, room: str, seconds: float, ppm: float) -> dict[str, Any]:
    """The raw client: LiveKit's stream into a PortAudio callback's queue."""
    import collections

    import pyaudio
    from livekit import rtc

    queue: collections.deque[bytes] = collections.deque()
    pending = bytearray()
    underruns = [0]
    # bytes ever queued (by the loop) and ever taken from the queue (by the
    # callback): each counter has one writer, so the depth needs no lock
    queued, taken = [0], [0]
    callbacks, arrivals = logs(seconds, time.monotonic())  # (restarted once joined)

    def depth_bytes() -> int:
        return queued[0] - taken[0] + len(pending)

    def callback(_: Any, frames: int, __: Any, ___: int) -> tuple[bytes, int]:
        need = 2 * frames
        callbacks.note((depth_bytes() - need) / 2 / SAMPLE_RATE * 1000)
        while len(pending) < need and queue:
            chunk = queue.popleft()
            taken[0] += len(chunk)
            pending.extend(chunk)
        if len(pending) < need:
            underruns[0] += 1
            out = bytes(pending) + bytes(need - len(pending))
            pending.clear()
            return out, pyaudio.paContinue
        out = bytes(pending[:need])
        del pending[:need]
        return out, pyaudio.paContinue

    pa = pyaudio.PyAudio()
    stream = pa.open(format=pyaudio.paInt16, channels=1, rate=SAMPLE_RATE, output=True,
                     frames_per_buffer=960, stream_callback=callback)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    room_obj = rtc.Room(loop)
    tasks: set[asyncio.Task[None]] = set()  # kept referenced while they run

    async def join() -> None:
        def on_track(track: rtc.Track, *_: Any) -> None:
            async def play() -> None:
                async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
                    arrivals.note()
                    chunk = bytes(event.frame.data)
                    queue.append(chunk)
                    queued[0] += len(chunk)
            tasks.add(loop.create_task(play()))
        room_obj.on("track_subscribed", on_track)
        await room_obj.connect(child.url, child.token("raw", room))
    asyncio.run_coroutine_threadsafe(join(), loop).result(30)
    started = time.monotonic()
    callbacks.restart(started)
    arrivals.restart(started)
    threading.Thread(target=keep_talking, args=(child, room, started + seconds), daemon=True).start()
    child.set_agent_clock(room, ppm)
    samples = []
    flipped = False
    base = 0
    try:
        while (now := time.monotonic()) < started + seconds:
            if not flipped and now > started + seconds / 2:
                child.set_agent_clock(room, -ppm)
                flipped = True
            depth = depth_bytes() / 2 / SAMPLE_RATE * 1000
            samples.append((now - started, depth, float("nan"), rss_mb(), float("nan")))
            if len(samples) == 10:
                base = underruns[0]
            time.sleep(1.0)
    finally:
        asyncio.run_coroutine_threadsafe(room_obj.disconnect(), loop).result(10)
        stream.stop_stream()
        stream.close()
        pa.terminate()
    return {"samples": samples, "lows": {}, "callbacks": callbacks, "arrivals": arrivals, "trims": 0,
            "capture_dropped": 0, "underruns_after_start": underruns[0] - base,
            "played_s": float("nan")}


def save(path: str, r: dict[str, Any], per: dict[str, np.ndarray], arrived: dict[str, np.ndarray]) -> None:
    """Everything per second, for a closer look (``np.load``)."""
    np.savez(path, samples=np.array(r["samples"]), **{f"callback_{k}": v for k, v in per.items()},
             **{f"arrival_{k}": v for k, v in arrived.items()})


def report(name: str, r: dict[str, Any], per: dict[str, np.ndarray], arrived: dict[str, np.ndarray]) -> None:
    """``per``: the device callbacks' figures per second; ``arrived``: the agent frames'."""
    samples = np.array(r["samples"])
    settled = samples[samples[:, 0] >= 10]
    depth, rate, rss = settled[:, 1], settled[:, 2], settled[:, 3]
    median = float(np.median(depth))
    rates = f"{np.nanmin(rate):+.0f}..{np.nanmax(rate):+.0f} ppm" if np.isfinite(rate).any() else "none"
    print(f"{name}: {len(samples)} samples; after the first 10 s: trims {r['trims']}, microphone frames "
          f"dropped {r['capture_dropped']}, underruns {r['underruns_after_start']}; "
          f"playback depth median {median:.1f} ms, "
          f"range {depth.min() - median:+.1f}/{depth.max() - median:+.1f} ms; "
          f"rate change {rates}; "
          f"last sample at "
          f"{samples[-1, 0]:.0f} s; "
          f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB (max {rss.max():.1f})", flush=True)
    gaps = 1000 * arrived["gap"]
    for what, values in (("depth (each second's median)", per["median"]),
                         ("floor (each second's least)", per["least"])):
        if len(values):
            med = float(np.median(values))
            print(f"  {what} of what the device callbacks found beyond their buffer: median {med:.1f} ms, "
                  f"range {values.min() - med:+.1f}/{values.max() - med:+.1f} ms, "
                  f"seconds outside +-10 ms of the median {int(np.sum(np.abs(values - med) > 10))} of {len(values)}",
                  flush=True)
    if len(gaps):
        print(f"  agent frames' arrival, each second's longest gap: median {np.median(gaps):.1f} ms, "
              f"p99 {np.percentile(gaps, 99):.1f}, max {gaps.max():.1f}; seconds with a gap over 20 ms "
              f"{int(np.sum(gaps > 20))}, over 30 ms {int(np.sum(gaps > 30))}", flush=True)
        late = set(arrived["second"][gaps > 20])
        dipped = per["second"][per["least"] < np.median(per["least"]) - 10]
        print(f"  of the {len(dipped)} seconds whose floor dipped more than 10 ms, "
              f"{sum(second in late for second in dipped)} had a gap between frames over 20 ms", flush=True)
    if r["lows"]:
        lows = np.array([low for second, low in sorted(r["lows"].items()) if second >= 10])
        print(f"  least headroom each second (the controller's measure): median {np.median(lows):.1f} ms, "
              f"range {lows.min() - np.median(lows):+.1f}/{lows.max() - np.median(lows):+.1f} ms", flush=True)
    minutes = samples[:, 0] // 60
    for m in np.unique(minutes)[:: max(1, len(np.unique(minutes)) // 10)]:
        row = samples[minutes == m]
        print(f"  minute {int(m):3d}: depth {row[:, 1].min():5.1f}..{row[:, 1].max():5.1f} ms, "
              f"rate {np.nanmean(row[:, 2]) if np.isfinite(row[:, 2]).any() else 0:+6.0f} ppm, "
              f"RSS {row[:, 3].max():6.1f} MB"
              + (f", slack {row[:, 4].min():.0f}..{row[:, 4].max():.0f} ms" if np.isfinite(row[:, 4]).all() else ""),
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--ppm", type=float, default=300.0, help="the agent's clock: this fast, then this slow")
    parser.add_argument("--raw", action="store_true", help="the raw livekit.rtc client instead")
    parser.add_argument("--save", metavar="NPZ", help="also write the per-second figures there")
    args = parser.parse_args()
    from speko_sync.testing import ServerProcess, reexec_isolated
    from speko_sync.testing._pulse import VirtualSoundDevices

    reexec_isolated()
    with ServerProcess() as process, VirtualSoundDevices():
        child = Child(process)
        room = f"drift-{os.getpid()}"
        child.add_agent(room)
        run = raw_run if args.raw else speko_run
        result = run(child, room, args.minutes * 60, args.ppm)
        per, arrived = result["callbacks"].per_second(), result["arrivals"].per_second()
        report("raw livekit.rtc" if args.raw else "speko_sync", result, per, arrived)
        if args.save:
            save(args.save, result, per, arrived)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
