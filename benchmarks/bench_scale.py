"""Many conversations in one process: speko_sync side by side with the raw
``livekit.rtc`` client doing identical work.

Three processes besides this one: the local server, whose scripted agents
speak a quiet tone in rooms 1..N-1; the far end, a raw ``livekit.rtc``
participant in room 0 publishing a quiet tone with a 20 ms marker every 500 ms
and listening to room 0's microphone for the client's markers; and the client
under test, which holds N conversations
in one process, speko_sync ``Conversation`` objects or raw ``rtc.Room`` objects
on one asyncio loop. Both clients:

- feed each microphone 10 ms frames at real time (a quiet tone; in room 0 a
  marker every 500 ms),
- consume each agent's audio at real time (speko_sync through a loop-clocked
  ``AudioBackend``, the raw client by iterating its ``AudioStream``),
- run the same WebRTC audio processing when APM is on (echo cancellation with
  the played audio as reference, noise suppression, high-pass, gain control).

Each configuration runs speko_sync and raw alternately (``--pairs`` times) and
reports:

- CPU of the client process per conversation (% of one core) and the ratio;
- real time: every conversation moved >= 97 frames/s each way;
- added latency each way in room 0 (agent -> application, application
  microphone -> agent; median and p95 over the markers; the path through the
  server and the far end is the same for both, so the difference is what the
  client adds);
- after one 150 ms stall of the client's loop: the microphone -> agent latency
  of the markers 1-3 s later, and how long after the stall the latency was back
  within 20 ms of its median before.

Run: ``python benchmarks/bench_scale.py`` (about 17 minutes; ``--pairs 3`` as
in ``benchmarks/README.md``; ``--quick`` for N = 1 and 4, one pair).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

RATE = 48_000
FRAME = RATE // 100
MARKER_EVERY = 50  # frames: a marker every 500 ms
MARKER_FRAMES = 2  # 20 ms
THRESHOLD = 0.3 * 32767
QUIET_GAP = 10  # frames of no marker before a new onset counts


def _tone(freq: float, amplitude: float, n: int, offset: int = 0) -> np.ndarray:
    t = (np.arange(n) + offset) / RATE
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


class Signal:
    """Per-frame generator: a quiet 300 Hz tone; a 2 kHz marker every 500 ms
    when ``markers``. Frames come from two preallocated periods."""

    def __init__(self, markers: bool) -> None:
        self.markers = markers
        self.quiet = _tone(300, 0.05, FRAME * 100)  # 1 s; 300 Hz fits a 10 ms frame 3 times
        self.loud = _tone(2000, 0.8, FRAME * MARKER_FRAMES)
        self.n = 0

    def next(self) -> tuple[np.ndarray, bool]:
        """The next 10 ms frame and whether a marker starts in it."""
        k = self.n % MARKER_EVERY
        i = self.n % 100
        self.n += 1
        if self.markers and k < MARKER_FRAMES:
            return self.loud[k * FRAME:(k + 1) * FRAME], k == 0
        return self.quiet[i * FRAME:(i + 1) * FRAME], False


class Detector:
    """Marker onsets in a stream of frames: loud after at least QUIET_GAP quiet frames."""

    def __init__(self) -> None:
        self.quiet = QUIET_GAP
        self.onsets: list[float] = []

    def feed(self, samples: np.ndarray, now: float) -> None:
        if len(samples) and int(np.abs(samples).max()) > THRESHOLD:
            if self.quiet >= QUIET_GAP:
                self.onsets.append(now)
            self.quiet = 0
        else:
            self.quiet += 1


# -- the server ---------------------------------------------------------------------------
def serve() -> None:
    from speko_sync.testing import LocalServer

    with LocalServer() as server:
        print(json.dumps({"url": server.url, "key": server.api_key, "secret": server.api_secret}), flush=True)
        agents: dict[str, Any] = {}
        for line in sys.stdin:  # until the parent closes it
            command, *rooms = line.split()
            for room in rooms:
                if command == "agents":  # a quiet tone for five minutes, from the server itself
                    agents[room] = server.add_agent(room, greeting=None)
                    agents[room].say_tone(300, 300.0, 0.05)
                elif command == "leave":
                    agents.pop(room).leave()
            print("ok", flush=True)


# -- the far end ---------------------------------------------------------------------------
async def far_end(url: str, tokens: list[str], out: str) -> None:
    from livekit import rtc

    loop = asyncio.get_running_loop()
    rooms, sources = [], []
    sent: list[float] = []
    heard = Detector()
    tasks: set[asyncio.Task[None]] = set()
    keep: list[Any] = []

    def on_track(track: rtc.Track, *_: Any) -> None:
        async def listen() -> None:
            stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=10)
            async for event in stream:
                heard.feed(np.frombuffer(event.frame.data, dtype=np.int16), time.monotonic())
        tasks.add(loop.create_task(listen()))

    for i, token in enumerate(tokens):
        room = rtc.Room(loop)
        if i == 0:
            room.on("track_subscribed", on_track)
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=i == 0))
        source = rtc.AudioSource(RATE, 1, queue_size_ms=50)
        track = rtc.LocalAudioTrack.create_audio_track("agent", source)
        await room.local_participant.publish_track(track, rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_MICROPHONE))
        rooms.append(room)
        sources.append(source)
        keep.append(track)  # a track that is garbage-collected while published crashes the FFI
    signals = [Signal(markers=i == 0) for i in range(len(tokens))]
    print("ready", flush=True)
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)

    async def speak() -> None:
        next_tick = time.monotonic()
        while not stop.is_set():
            for source, signal in zip(sources, signals, strict=True):
                samples, marker = signal.next()
                if marker and source is sources[0]:
                    sent.append(time.monotonic())
                await source.capture_frame(rtc.AudioFrame(samples.tobytes(), RATE, 1, FRAME))
            next_tick += 0.01
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                next_tick = time.monotonic()

    speaker = loop.create_task(speak())
    await stop.wait()
    speaker.cancel()
    with open(out, "w") as f:
        json.dump({"agent_sent": sent, "mic_heard": heard.onsets}, f)
    for room in rooms:
        await room.disconnect()


# -- the client under test ------------------------------------------------------------------
class Probe:
    """What one client conversation records: frames each way, marker times."""

    def __init__(self, markers: bool) -> None:
        self.mic = Signal(markers)
        self.heard = Detector()
        self.mic_sent: list[float] = []
        self.mic_frames = 0
        self.played_frames = 0

    def next_mic(self) -> np.ndarray:
        samples, marker = self.mic.next()
        if marker:
            self.mic_sent.append(time.monotonic())
        self.mic_frames += 1
        return samples

    def played(self, samples: np.ndarray) -> None:
        self.played_frames += 1
        self.heard.feed(samples, time.monotonic())


def speko_client(url: str, tokens: list[str], apm: bool, run: Any) -> Any:
    from speko_sync import AudioBackend, AudioConstraints, Conversation
    from speko_sync.audio import AudioIO

    class BenchAudio(AudioBackend):
        """Loop-clocked: the application's microphone and speaker."""

        def __init__(self, probe: Probe) -> None:
            self.probe = probe

        def open(self, io: AudioIO) -> None:
            super().open(io)
            self.out = np.zeros(FRAME, dtype=np.int16)
            self.scratch = np.zeros(FRAME, dtype=np.float32)

        def tick(self, samples: int) -> None:
            self.io.capture_samples(self.probe.next_mic())
            self.io.render(self.out, self.scratch)
            if self.io.playback.available() or self.io.counters[1]:  # counting from the agent's first audio
                self.probe.played(self.out)

    probes = [Probe(markers=i == 0) for i in range(len(tokens))]
    constraints = AudioConstraints(apm, apm, apm)
    convs = [Conversation(token, url, audio=BenchAudio(probe), audio_constraints=constraints)
             for token, probe in zip(tokens, probes, strict=True)]
    loop = convs[0]._runner.loop

    def stall() -> None:
        loop.call_soon_threadsafe(time.sleep, 0.15)

    hops = instrument(convs[0])
    try:
        result = run(probes, stall)
        result["stream_heard"], result["source_sent"] = hops[0].onsets, hops[1].onsets
        return result
    finally:
        for conv in convs:
            conv.end_session()


def instrument(conv: Any) -> tuple[Detector, Detector]:
    """Marker onsets where LiveKit hands the agent's audio to speko_sync (the
    ``AudioStream``) and where speko_sync hands the microphone to LiveKit
    (``AudioSource.capture_frame``): what the library itself adds each way."""
    transport = conv._session.transport
    deadline = time.monotonic() + 10
    while not transport.tracks.streams and time.monotonic() < deadline:
        time.sleep(0.01)
    stream = next(iter(transport.tracks.streams.values()))
    from_stream, to_source = Detector(), Detector()

    class ProbedStream(type(stream)):  # type: ignore[misc]
        async def __anext__(self) -> Any:
            event = await super().__anext__()
            from_stream.feed(np.frombuffer(event.frame.data, dtype=np.int16), time.monotonic())
            return event

    stream.__class__ = ProbedStream
    source = transport.source
    original = source.capture_frame

    async def capture_frame(frame: Any) -> None:
        to_source.feed(np.frombuffer(frame.data, dtype=np.int16), time.monotonic())
        await original(frame)

    source.capture_frame = capture_frame
    return from_stream, to_source


def raw_client(url: str, tokens: list[str], apm: bool, run: Any) -> Any:
    from livekit import rtc

    probes = [Probe(markers=i == 0) for i in range(len(tokens))]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rooms: list[rtc.Room] = []
    tasks: set[asyncio.Task[None]] = set()  # kept referenced while they run
    keep: list[Any] = []
    to_source = Detector()

    async def start(token: str, probe: Probe) -> None:
        room = rtc.Room(loop)
        processor = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=True,
                                              high_pass_filter=True, auto_gain_control=True) if apm else None
        if processor is not None:
            processor.set_stream_delay_ms(40)

        async def play(track: rtc.Track) -> None:
            stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=10)
            async for event in stream:
                if processor is not None:  # as speko_sync does: the reference is a frame of its own
                    processor.process_reverse_stream(rtc.AudioFrame(event.frame.data.tobytes(), RATE, 1, FRAME))
                probe.played(np.frombuffer(event.frame.data, dtype=np.int16))

        def on_track(track: rtc.Track, *_: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                tasks.add(loop.create_task(play(track)))

        room.on("track_subscribed", on_track)
        await room.connect(url, token)
        source = rtc.AudioSource(RATE, 1, queue_size_ms=200)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        await room.local_participant.publish_track(track, rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_MICROPHONE))
        rooms.append(room)
        keep.append((track, processor))  # as a Conversation keeps them

        async def capture() -> None:
            next_tick = time.monotonic()
            while True:
                next_tick += 0.01
                delay = next_tick - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.02:
                    next_tick = time.monotonic()  # behind (a stall): resume, do not burst
                frame = rtc.AudioFrame(probe.next_mic().tobytes(), RATE, 1, FRAME)
                if processor is not None:
                    processor.process_stream(frame)
                if probe.mic.markers:  # the same probe as speko_sync's: where the frame reaches LiveKit
                    to_source.feed(np.frombuffer(frame.data, dtype=np.int16), time.monotonic())
                await source.capture_frame(frame)
        tasks.add(loop.create_task(capture()))

    for token, probe in zip(tokens, probes, strict=True):
        asyncio.run_coroutine_threadsafe(start(token, probe), loop).result(30)

    def stall() -> None:
        loop.call_soon_threadsafe(time.sleep, 0.15)

    try:
        result = run(probes, stall)
        result["stream_heard"] = result["agent_heard"]  # the application reads the AudioStream itself
        result["source_sent"] = to_source.onsets
        return result
    finally:
        async def leave() -> None:
            for task in tasks:  # a task left pending on a stopped loop crashes the interpreter's exit
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for room in rooms:
                await room.disconnect()
        asyncio.run_coroutine_threadsafe(leave(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def client(kind: str, apm: bool, seconds: float) -> None:
    import faulthandler

    faulthandler.enable()
    spec = json.loads(sys.stdin.readline())
    url, tokens = spec["url"], spec["tokens"]

    def run(probes: list[Probe], stall: Any) -> dict[str, Any]:
        time.sleep(2.0)  # settle: the far end's first audio arrives
        frames0 = [(p.mic_frames, p.played_frames) for p in probes]
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        rates = [((p.mic_frames - m) / wall, (p.played_frames - q) / wall)
                 for p, (m, q) in zip(probes, frames0, strict=True)]
        stalled_at = time.monotonic()
        stall()
        time.sleep(4.0)
        return {"cpu": cpu / wall, "rates": rates, "window": [wall0, wall0 + wall], "stall": stalled_at,
                "mic_sent": probes[0].mic_sent, "agent_heard": probes[0].heard.onsets}

    result = (speko_client if kind == "speko" else raw_client)(url, tokens, apm, run)
    print(json.dumps(result), flush=True)


class ClientCrashed(RuntimeError):
    pass


# -- the report --------------------------------------------------------------------------------
def latencies(sent: list[float], heard: list[float]) -> list[tuple[float, float]]:
    """(sent time, latency) for each heard onset, paired with the last marker sent before it."""
    pairs = []
    sent_sorted = sorted(sent)
    for t in heard:
        before = [s for s in sent_sorted if s <= t]
        if before and t - before[-1] < 0.49:
            pairs.append((before[-1], t - before[-1]))
    return pairs


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Server:
    """The local server in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        spec = json.loads(self.stdout.readline())
        self.url, self.key, self.secret = spec["url"], spec["key"], spec["secret"]

    def ask(self, *words: str) -> None:
        self.stdin.write(" ".join(words) + "\n")
        self.stdin.flush()
        if self.stdout.readline().strip() != "ok":
            raise RuntimeError(f"the server did not do {words[0]}")

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(30)


def one_run(server: Server, kind: str, n: int, apm: bool, seconds: float, tag: str) -> dict[str, Any]:
    from speko_sync.testing import mint_token

    def token(identity: str, room: str) -> str:
        return mint_token(server.key, server.secret, identity, room)

    rooms = [f"{tag}-{i}" for i in range(n)]
    out = f"/tmp/bench-scale-{os.getpid()}-{tag}.json"
    far = subprocess.Popen([sys.executable, __file__, "--far-end", out], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    server.ask("agents", *rooms[1:])
    try:
        assert far.stdin is not None and far.stdout is not None
        far.stdin.write(json.dumps({"url": server.url, "tokens": [token("agent", rooms[0])]}) + "\n")
        far.stdin.flush()
        if far.stdout.readline().strip() != "ready":
            raise RuntimeError("the far end did not start")
        proc = subprocess.run([sys.executable, __file__, "--client", kind, "--apm", "on" if apm else "off",
                               "--seconds", str(seconds)],
                              input=json.dumps({"url": server.url, "tokens": [token("user", r) for r in rooms]})
                              + "\n", capture_output=True, text=True, timeout=seconds + 120)
        if proc.returncode < 0:
            raise ClientCrashed(f"{kind} client killed by signal {-proc.returncode}:\n{proc.stderr[-1500:]}")
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} client exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if far.stdin is not None:
            far.stdin.close()
        far.wait(30)
        server.ask("leave", *rooms[1:])
    with open(out) as f:
        far_result = json.load(f)
    os.unlink(out)
    start, end = result["window"]
    stall = result["stall"]
    down = latencies(far_result["agent_sent"], result["agent_heard"])
    up = latencies(result["mic_sent"], far_result["mic_heard"])
    up_before = [lat for t, lat in up if start <= t < end]
    base = statistics.median(up_before) if up_before else float("nan")
    after = [(t - stall, lat) for t, lat in up if t >= stall]
    late = [t for t, lat in after if lat > base + 0.02]
    return {
        "cpu": result["cpu"] / n,
        "realtime": all(m >= 97 and p >= 97 for m, p in result["rates"]),
        "min_rate": min(min(m, p) for m, p in result["rates"]),
        "down": [lat for t, lat in down if start <= t < end],
        "up": up_before,
        "after_stall": [lat for t, lat in after if 1.0 <= t < 3.0],
        "hop_down": [lat for t, lat in latencies(result.get("stream_heard", []), result["agent_heard"])
                     if start <= t < end],
        "hop_up": [lat for t, lat in latencies(result["mic_sent"], result.get("source_sent", [])) if start <= t < end],
        "recovery": (max(late) if late else 0.0) if after else float("nan"),
    }


CRASHES: dict[str, int] = {"speko": 0, "raw": 0}


def run_with_retries(server: Server, kind: str, n: int, apm: bool, seconds: float,
                     tag: str) -> dict[str, Any]:
    """A client killed by a signal (the native SDK crashes now and then) is run
    again, up to twice, and counted in the report."""
    for attempt in range(3):
        try:
            return one_run(server, kind, n, apm, seconds, f"{tag}r{attempt}")
        except ClientCrashed:
            CRASHES[kind] += 1
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--far-end", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["speko", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--apm", choices=["on", "off"], default="off", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per run (default 10)")
    parser.add_argument("--pairs", type=int, default=2, help="alternating speko/raw pairs per configuration")
    parser.add_argument("--n", type=int, nargs="*", default=[1, 4, 8, 16], help="conversation counts")
    parser.add_argument("--quick", action="store_true", help="N = 1 and 4, one pair")
    parser.add_argument("--kinds", nargs="+", default=["speko", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--apm-modes", nargs="+", default=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    if args.far_end:
        spec = json.loads(sys.stdin.readline())
        asyncio.run(far_end(spec["url"], spec["tokens"], args.far_end))
        return 0
    if args.client:
        client(args.client, args.apm == "on", args.seconds)
        return 0
    from speko_sync.testing import reexec_isolated

    reexec_isolated()
    if args.quick:
        args.n, args.pairs = [1, 4], 1
    server = Server()
    print(f"{os.cpu_count()} cores; window {args.seconds:g} s; {args.pairs} alternating pair(s) per row", flush=True)
    print("N  APM | CPU %/conv speko  raw  ratio | real time speko/raw | agent->app ms med/p95 speko, raw "
          "| mic->agent ms med/p95 speko, raw | after 150 ms stall: mic->agent med ms, back within s "
          "| in-process hop: AudioStream->app, app->AudioSource", flush=True)
    try:
        for n in args.n:
            for apm in (mode == "on" for mode in args.apm_modes):
                runs: dict[str, list[dict[str, Any]]] = {"speko": [], "raw": []}
                for p in range(args.pairs):
                    for kind in (args.kinds if p % 2 == 0 else args.kinds[::-1]):
                        runs[kind].append(run_with_retries(server, kind, n, apm, args.seconds,
                                                           f"{kind}{n}{int(apm)}{p}"))
                report(n, apm, runs)
    finally:
        server.close()
    print(f"clients killed by a signal and run again: speko_sync {CRASHES['speko']}, raw {CRASHES['raw']}")
    return 0


def report(n: int, apm: bool, runs: dict[str, list[dict[str, Any]]]) -> None:
    def cpu(kind: str) -> float:
        return statistics.median(r["cpu"] for r in runs[kind]) * 100

    ratios = [s["cpu"] / r["cpu"] for s, r in zip(runs["speko"], runs["raw"], strict=True)]

    def rt(kind: str) -> str:
        ok = all(r["realtime"] for r in runs[kind])
        return "yes" if ok else f"no ({min(r['min_rate'] for r in runs[kind]):.0f}/s)"

    def lat(kind: str, key: str) -> str:
        values = [v for r in runs[kind] for v in r[key]]
        return f"{pct(values, 50) * 1000:.0f}/{pct(values, 95) * 1000:.0f}"

    def stall(kind: str) -> str:
        values = [v for r in runs[kind] for v in r["after_stall"]]
        rec = max(r["recovery"] for r in runs[kind])
        return f"{pct(values, 50) * 1000:.0f} ms, {rec:.2f} s"

    hops = (f"down {lat('speko', 'hop_down')} ({lat('raw', 'hop_down')}), "
            f"up {lat('speko', 'hop_up')} ({lat('raw', 'hop_up')})")
    print(f"{n:<2} {'on ' if apm else 'off'} | {cpu('speko'):5.1f} {cpu('raw'):5.1f} "
          f"{statistics.median(ratios):5.2f} | {rt('speko')} / {rt('raw')} | "
          f"{lat('speko', 'down')}, {lat('raw', 'down')} | {lat('speko', 'up')}, {lat('raw', 'up')} | "
          f"speko {stall('speko')}; raw {stall('raw')} | in-process hop ms med/p95 speko (raw): {hops}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
