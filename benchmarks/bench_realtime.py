"""Realtime sessions: CPU per conversation and latency each way, speko_sync
side by side with a raw ``websockets`` client doing the same I/O.

Three kinds of process: the offline realtime endpoint
(``speko_sync.testing._realtime.RealtimeServer``) in a child of its own, and
each client under test in a fresh child process, one run at a time,
alternating (``--pairs`` runs of each). The far end is the same for both
clients: no greeting, an energy detector that never fires (so it neither
answers nor is interrupted), and a scripted timeline from the moment the
session connects: ``--onsets`` replies, one per period of
``--seconds / --onsets``, each about 45 % of the period long, sent as the
agent sends them (transcripts, then 40 ms binary frames at 5x real time, then
``usage``). Both clients:

- hand their microphone audio over in 10 ms blocks on a loop clock (silence
  with ``--onsets`` 30 ms tone bursts, 1 kHz at half scale, starting at their
  peak) and send it as 20 ms PCM16 frames at the input rate;
- render 10 ms blocks of the agent's audio on the same clock, into a
  recording, the bursts played at real time.

speko_sync is a ``Conversation.from_session(answer, audio=BenchAudio(...))``
with the audio processing off; ``BenchAudio`` is a loop-clocked
``AudioBackend`` at 48 kHz, like ``BufferAudio``, that notes the
``time.monotonic()`` of each tick (one captured block handed over to
``AudioIO.capture_samples``, one played block taken from ``AudioIO.render``).
The raw client is one asyncio loop: ``websockets`` with the token as the only
subprotocol (compression off, as speko_sync's), the ready frame awaited, each
text frame decoded with ``json.loads``, binary frames appended to a
``bytearray`` that the speaker drains 10 ms per tick, and the microphone at the
input rate directly (it has no resampling to do).

Measured, the same way for both, on one clock (CLOCK_MONOTONIC, shared by the
processes):

- CPU: ``time.process_time()`` of the client process over the ``--seconds``
  window (read on the device clock's ticks, after 1 s of settling), divided
  by the wall time: percent of one core. The server's process is not counted.
- mic -> server: a burst's first sample was captured ``10 ms - its offset in
  its block`` before its block was handed over; until the server's
  ``time.monotonic()`` on receiving the binary frame that holds the burst's
  first loud sample. A 20 ms frame leaves once its last sample is captured,
  so 0-20 ms of this is the frame size itself, for both clients.
- server -> speaker: the server's ``time.monotonic()`` when a reply's first
  binary frame was sent (``replies_started``); until that reply's first sample
  left the speaker: the render moment of its block plus its offset in the
  block, so the speaker's ring depth counts, as on a device. The reply is
  found in the recording by cross-correlation with its own first 250 ms, so
  the figure depends neither on a level threshold nor on what played just
  before it.
- Also: the device clock's ticks per second and the frames per second the
  server received in the window (real time: 100 and 50), the microphone
  frames speko_sync dropped (``stats().capture_dropped``), and the audio
  (above 2 % of full scale) each client played in the 100 ms before a reply,
  where the server sent silence.

Latencies are pooled over the runs (median and p95). Goals: speko_sync's CPU
at most 1.1x raw's (the median of the pairs' ratios), and at most 10 ms added
each way at the median. ``--apm`` adds a third client, speko_sync with its
default audio processing, for its CPU (the processing reshapes the bursts, so
some are not found at the server).

    python benchmarks/bench_realtime.py [--seconds 20] [--onsets 10] [--pairs 2] [--rate 24000] [--apm]

(about 100 s with the defaults)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DEVICE_RATE = 48_000  # speko_sync's backend, as BufferAudio
SETTLE_S = 1.0  # after the first tick, before the measured window
TAIL_S = 0.6  # after the window, so the last onsets are complete
BURST_S = 0.03
BURST_HZ = 1000.0
BURST_AMPLITUDE = 0.5
MIC_THRESHOLD = int(0.25 * 32767)  # the burst's first sample is at half scale
MIC_GAP = 0.2  # seconds below the threshold before a burst counts
TEMPLATE_S = 0.25  # of a reply, to find it in the recording
REPLY_SHARE = 0.45  # of each period, the agent talks
MS_PER_CHAR = 60.0  # the offline agent's default
STALE_THRESHOLD = int(0.02 * 32767)


# -- the timeline --------------------------------------------------------------------------
def plan(seconds: float, onsets: int) -> dict[str, Any]:
    """Reply times (from the session's start, on the server) and texts; burst
    times (in the microphone signal, from the first tick), on a 1/8000 s grid
    so they fall on a sample at 16, 24 and 48 kHz alike. Even bursts come
    while a reply is arriving, odd ones in silence. The bursts' offsets within
    a 20 ms frame, and the replies' within a 10 ms tick of the clients'
    clocks, are spread evenly, so no run is lucky or unlucky in its phase."""
    period = seconds / onsets
    reply_s = max(0.5, REPLY_SHARE * period)
    chars = round(reply_s * 1000 / MS_PER_CHAR)
    replies, texts, bursts = [], [], []
    for i in range(onsets):
        start = SETTLE_S + i * period
        spread = (i * 0.6180339887) % 1.0  # of a 20 ms frame (bursts) or a 10 ms tick (replies)
        replies.append(start + 0.05 * period + spread * 0.01)
        texts.append((f"reply {i} " + "la " * chars)[:chars])
        at = 0.05 * period + reply_s / 10 if i % 2 == 0 else 0.75 * period
        bursts.append(round((start + at + spread * 0.02) * 8000) / 8000)
    return {"seconds": seconds, "period": period, "reply_s": chars * MS_PER_CHAR / 1000,
            "reply_times": replies, "texts": texts, "bursts": bursts,
            "ticks": round((SETTLE_S + seconds + TAIL_S) * 100),
            "window": [round(SETTLE_S * 100), round((SETTLE_S + seconds) * 100)]}


def microphone(timeline: dict[str, Any], rate: int) -> np.ndarray:
    """The microphone signal at ``rate``: silence and the bursts."""
    out = np.zeros(timeline["ticks"] * rate // 100, dtype=np.int16)
    n = round(BURST_S * rate)
    burst = (BURST_AMPLITUDE * 32767 * np.cos(2 * np.pi * BURST_HZ * np.arange(n) / rate)).astype(np.int16)
    for t in timeline["bursts"]:
        p = round(t * rate)
        out[p:p + n] = burst[:len(out) - p]
    return out


# -- the server ------------------------------------------------------------------------------
def serve(rate: int) -> None:
    """The realtime endpoint; one command per line on stdin, one answer line each."""
    from speko_sync.testing._realtime import RealtimeEndpoint, RealtimeServer

    endpoint = RealtimeEndpoint(greeting=None, speech_threshold_dbfs=0.0, input_rate=rate, output_rate=rate,
                                ms_per_char=MS_PER_CHAR)
    with RealtimeServer(endpoint) as server:
        print(json.dumps({"url": server.url}), flush=True)
        driver: threading.Thread | None = None
        found: list[Any] = []
        for line in sys.stdin:
            command, _, rest = line.strip().partition(" ")
            if command == "mint":
                timeline = json.loads(rest)
                found.clear()
                driver = threading.Thread(target=drive, args=(endpoint, timeline, found), daemon=True)
                driver.start()
                print(json.dumps(server.mint()), flush=True)
            elif command == "report":
                assert driver is not None
                driver.join(120)
                session = found[0]
                session.closed.wait(30)
                frames = session.audio_frames
                np.savez(rest, frame_times=np.array([t for t, _ in frames]),
                         frame_bytes=np.array([n for _, n in frames], dtype=np.int64),
                         audio=session.received_audio(),
                         reply_times=np.array([t for t, _ in session.replies_started]),
                         reply_texts=np.array([text for _, text in session.replies_started]))
                print("ok", flush=True)


def drive(endpoint: Any, timeline: dict[str, Any], found: list[Any]) -> None:
    """The far end's script for one session: the replies at their times."""
    session = endpoint.wait_for_session(timeout=60)
    found.append(session)
    t0 = time.monotonic()
    for at, text in zip(timeline["reply_times"], timeline["texts"], strict=True):
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        session.say(text)


# -- the clients -------------------------------------------------------------------------------
def speko_client(answer: dict[str, Any], timeline: dict[str, Any], apm: bool) -> dict[str, Any]:
    from speko_sync import AudioBackend, AudioConstraints, Conversation
    from speko_sync.audio import AudioIO

    block = DEVICE_RATE // 100
    n_ticks = timeline["ticks"]
    first, last = timeline["window"]

    class BenchAudio(AudioBackend):
        """Loop-clocked at 48 kHz: the microphone signal in, a recording out,
        the monotonic time of every tick noted."""

        rate = DEVICE_RATE
        clocked_by_loop = True

        def __init__(self) -> None:
            self.mic = microphone(timeline, DEVICE_RATE)
            self.played = np.zeros(n_ticks * block, dtype=np.int16)
            self.ticks = np.zeros(n_ticks)
            self.cpu: list[float] = []
            self.k = 0
            self.done = threading.Event()

        def open(self, io: AudioIO) -> None:
            super().open(io)
            self.scratch = np.zeros(block, dtype=np.float32)
            self.spare = np.zeros(block, dtype=np.int16)
            self.silence = np.zeros(block, dtype=np.int16)

        def tick(self, samples: int) -> None:
            k = self.k
            if k >= n_ticks:  # the session is ending
                self.io.capture_samples(self.silence[:samples])
                self.io.render(self.spare[:samples], self.scratch[:samples])
                return
            self.ticks[k] = time.monotonic()
            if k in (first, last):
                self.cpu += [time.process_time(), self.ticks[k]]
            a = k * samples
            self.io.capture_samples(self.mic[a:a + samples])
            self.io.render(self.played[a:a + samples], self.scratch[:samples])
            self.k = k + 1
            if self.k == n_ticks:
                self.done.set()

    audio = BenchAudio()
    constraints = AudioConstraints() if apm else AudioConstraints(False, False, False)
    conv = Conversation.from_session(answer, audio=audio, audio_constraints=constraints)
    try:
        if not audio.done.wait(n_ticks / 100 + 30):
            raise RuntimeError(f"the device ticked {audio.k} of {n_ticks} times")
        stats = conv.stats()
    finally:
        conv.end_session()
    return {"ticks": audio.ticks, "played": audio.played, "cpu": audio.cpu, "rate": DEVICE_RATE,
            "mic_rate": DEVICE_RATE, "capture_dropped": stats.capture_dropped, "underruns": stats.underruns}


async def raw_client(answer: dict[str, Any], timeline: dict[str, Any]) -> dict[str, Any]:
    """A minimal asyncio client: the same device clock, no resampling, no processing."""
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    n_ticks = timeline["ticks"]
    first, last = timeline["window"]
    async with connect(answer["wsUrl"], subprotocols=[Subprotocol(answer["wsToken"])], compression=None,
                       max_size=2 ** 22) as ws:
        while True:
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message).get("t") == "ready":
                ready = json.loads(message)
                break
        in_rate, out_rate = ready["inputSampleRate"], ready["outputSampleRate"]
        mic = microphone(timeline, in_rate).tobytes()
        queue = bytearray()  # the agent's audio waiting for the speaker
        texts = 0

        async def read() -> None:
            nonlocal texts
            async for message in ws:
                if isinstance(message, bytes):
                    queue.extend(message)
                else:
                    json.loads(message)
                    texts += 1

        reader = asyncio.get_running_loop().create_task(read())
        mic_bytes, out_bytes = 2 * in_rate // 100, 2 * out_rate // 100
        played = np.zeros(n_ticks * out_bytes // 2, dtype=np.int16)
        speaker = memoryview(played).cast("B")
        ticks = np.zeros(n_ticks)
        cpu: list[float] = []
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + 0.01
        for k in range(n_ticks):
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:  # a stall: resume from now
                next_tick = loop.time()
            next_tick += 0.01
            ticks[k] = time.monotonic()
            if k in (first, last):
                cpu += [time.process_time(), ticks[k]]
            if k % 2:  # the second 10 ms block completes a 20 ms frame
                await ws.send(mic[(k - 1) * mic_bytes:(k + 1) * mic_bytes])
            n = min(len(queue), out_bytes)
            if n:
                speaker[k * out_bytes:k * out_bytes + n] = queue[:n]
                del queue[:n]
        reader.cancel()
    return {"ticks": ticks, "played": played, "cpu": cpu, "rate": out_rate, "mic_rate": in_rate,
            "capture_dropped": 0, "underruns": 0, "texts": texts}


def client(kind: str, plan_path: str, out: str) -> None:
    spec = json.loads(Path(plan_path).read_text())
    if kind == "raw":
        result = asyncio.run(raw_client(spec["answer"], spec["timeline"]))
    else:
        result = speko_client(spec["answer"], spec["timeline"], apm=kind == "speko-apm")
    np.savez(out, **{k: np.asarray(v) for k, v in result.items()})


# -- analysis ----------------------------------------------------------------------------------
def mic_latencies(timeline: dict[str, Any], c: Any, s: Any, in_rate: int) -> list[float]:
    """Per burst: the server's receipt of the frame holding its first loud
    sample, minus the moment the device captured that sample."""
    audio = np.abs(s["audio"].astype(np.int32))
    loud = np.flatnonzero(audio >= MIC_THRESHOLD)
    starts = loud[np.diff(loud, prepend=-10 ** 9) > MIC_GAP * in_rate]
    ends = np.cumsum(s["frame_bytes"] // 2)  # received samples after each frame
    received = [(j / in_rate, float(s["frame_times"][np.searchsorted(ends, j, side="right")])) for j in starts]
    rate = int(c["mic_rate"])
    block = rate // 100
    ticks = c["ticks"]
    out = []
    for t in timeline["bursts"]:
        k, offset = divmod(round(t * rate), block)
        if not ticks[k]:
            continue
        captured = ticks[k] - (block - offset) / rate
        arrived = [a for at, a in received if abs(at - t) < 0.1]
        if arrived:
            out.append(arrived[0] - captured)
    return out


def _best_match(segment: np.ndarray, template: np.ndarray) -> tuple[int, float]:
    """Where ``template`` best fits in ``segment`` (normalised cross-correlation)."""
    m = len(template)
    n = 1 << int(np.ceil(np.log2(len(segment) + m)))
    corr = np.fft.irfft(np.fft.rfft(segment, n) * np.conj(np.fft.rfft(template, n)), n)[:len(segment) - m + 1]
    energy = np.concatenate(([0.0], np.cumsum(segment ** 2)))
    window = np.sqrt(np.maximum(energy[m:] - energy[:-m], 1e-9)) * np.sqrt(float(np.sum(template ** 2)))
    ncc = corr / window
    j = int(np.argmax(ncc))
    return j, float(ncc[j])


def speaker_latencies(c: Any, s: Any) -> tuple[list[float], list[float]]:
    """Per reply: when its first sample left the speaker minus when the server
    sent its first frame; and how much audio (ms above 2 % of full scale)
    played in the 100 ms just before it, where the server sent silence."""
    from speko_sync.testing._realtime_voice import speech_audio

    rate = int(c["rate"])
    block = rate // 100
    ticks, played = c["ticks"], c["played"].astype(np.float64)
    latencies, stale = [], []
    for sent, text in zip(s["reply_times"], s["reply_texts"], strict=True):
        template = speech_audio(str(text), rate, ms_per_char=MS_PER_CHAR)[:round(TEMPLATE_S * rate)]
        k0 = int(np.searchsorted(ticks, sent - 0.05))
        k1 = int(np.searchsorted(ticks, sent + 0.5))
        segment = played[k0 * block:k1 * block + len(template)]
        if len(segment) < 2 * len(template):
            continue
        j, score = _best_match(segment, template.astype(np.float64))
        if score < 0.9:
            continue
        j += k0 * block
        latencies.append(ticks[j // block] + (j % block) / rate - float(sent))
        before = played[max(0, j - round(0.1 * rate)):j]
        stale.append(1000 * int(np.sum(np.abs(before) > STALE_THRESHOLD)) / rate)
    return latencies, stale


def analyse(timeline: dict[str, Any], client_npz: str, server_npz: str, in_rate: int) -> dict[str, Any]:
    c, s = np.load(client_npz), np.load(server_npz)
    cpu0, t0, cpu1, t1 = (float(v) for v in c["cpu"])
    first, last = timeline["window"]
    frames = s["frame_times"]
    down, stale = speaker_latencies(c, s)
    return {"cpu": (cpu1 - cpu0) / (t1 - t0), "ticks_per_s": (last - first) / (t1 - t0),
            "frames_per_s": int(np.sum((frames >= t0) & (frames < t1))) / (t1 - t0),
            "up": mic_latencies(timeline, c, s, in_rate), "down": down, "stale": stale,
            "capture_dropped": int(c["capture_dropped"]), "underruns": int(c["underruns"])}


# -- the runs ----------------------------------------------------------------------------------
class Server:
    def __init__(self, rate: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", "--rate", str(rate)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = json.loads(self._read())["url"]

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process ended ({self.proc.wait(5)})")
        return line

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def one_run(server: Server, kind: str, timeline: dict[str, Any], rate: int, tmp: str, tag: str) -> dict[str, Any]:
    answer = json.loads(server.ask("mint " + json.dumps(timeline)))
    plan_path, client_npz, server_npz = (os.path.join(tmp, f"{tag}-{what}") for what in
                                         ("plan.json", "client.npz", "server.npz"))
    Path(plan_path).write_text(json.dumps({"answer": answer, "timeline": timeline}))
    proc = subprocess.run([sys.executable, __file__, "--client", kind, plan_path, client_npz],
                          capture_output=True, text=True, timeout=timeline["ticks"] / 100 + 90)
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} client exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    if server.ask(f"report {server_npz}").strip() != "ok":
        raise RuntimeError("the server did not report")
    return analyse(timeline, client_npz, server_npz, rate)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


NAMES = {"raw": "raw websockets", "speko": "speko_sync", "speko-apm": "speko_sync, APM on"}


def report(runs: dict[str, list[dict[str, Any]]], onsets: int) -> None:
    print(f"{'client':20s} | CPU % of one core (runs) | mic->server ms med/p95 (n) | "
          f"server->speaker ms med/p95 (n) | ticks/s | frames/s at server | audio before a reply ms (max)")
    for kind, results in runs.items():
        cpus = [100 * r["cpu"] for r in results]
        up = [1000 * v for r in results for v in r["up"]]
        down = [1000 * v for r in results for v in r["down"]]
        stale = [v for r in results for v in r["stale"]]
        print(f"{NAMES[kind]:20s} | {statistics.median(cpus):5.1f} ({', '.join(f'{c:.1f}' for c in cpus)}) | "
              f"{pct(up, 50):5.1f}/{pct(up, 95):5.1f} ({len(up)}) | "
              f"{pct(down, 50):5.1f}/{pct(down, 95):5.1f} ({len(down)}) | "
              f"{min(r['ticks_per_s'] for r in results):5.1f} | {min(r['frames_per_s'] for r in results):4.1f} | "
              f"{max(stale, default=float('nan')):.1f}", flush=True)
        expected = onsets * len(results)
        if len(up) < expected or len(down) < expected:
            print(f"  ({NAMES[kind]}: {expected - len(up)} bursts and {expected - len(down)} replies not found)")
        dropped = sum(r["capture_dropped"] for r in results)
        underruns = sum(r["underruns"] for r in results)
        if dropped or underruns:
            print(f"  ({NAMES[kind]}: {dropped} microphone frames dropped, {underruns} underruns)")
    raw = runs["raw"]
    for kind in [k for k in runs if k != "raw"]:
        ours = runs[kind]
        ratio = statistics.median(o["cpu"] / r["cpu"] for o, r in zip(ours, raw, strict=True))

        def added(key: str, ours: list[dict[str, Any]] = ours) -> float:
            return 1000 * (statistics.median(v for r in ours for v in r[key])
                           - statistics.median(v for r in raw for v in r[key]))

        up, down = added("up"), added("down")
        verdict = {True: "met", False: "missed"}
        print(f"{NAMES[kind]} vs raw: CPU {ratio:.2f}x (goal <= 1.10x: {verdict[ratio <= 1.10]}); "
              f"mic->server {up:+.1f} ms (goal <= +10 ms: {verdict[up <= 10]}); "
              f"server->speaker {down:+.1f} ms (goal <= +10 ms: {verdict[down <= 10]})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run (default 20)")
    parser.add_argument("--onsets", type=int, default=10, help="bursts and replies per run, each (default 10)")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each client, alternating (default 2)")
    parser.add_argument("--rate", type=int, default=24000, choices=[16000, 24000],
                        help="the session's input and output rate (default 24000)")
    parser.add_argument("--apm", action="store_true", help="also run speko_sync with its audio processing on")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, metavar=("KIND", "PLAN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.rate)
        return 0
    if args.client:
        client(*args.client)
        return 0
    if args.onsets < 1 or args.seconds / args.onsets < 1.0:
        parser.error("--onsets must be at least 1, at most one per second of --seconds")
    timeline = plan(args.seconds, args.onsets)
    kinds = ["raw", "speko"] + (["speko-apm"] if args.apm else [])
    print(f"{os.cpu_count()} cores; {args.rate} Hz each way; window {args.seconds:g} s, {args.onsets} bursts and "
          f"{args.onsets} replies ({timeline['reply_s']:.2f} s each) per run; "
          f"{args.pairs} run(s) per client, alternating", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    server = Server(args.rate)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-realtime-") as tmp:
            for p in range(args.pairs):
                for kind in kinds if p % 2 == 0 else kinds[::-1]:
                    runs[kind].append(one_run(server, kind, timeline, args.rate, tmp, f"{kind}{p}"))
    finally:
        server.close()
    report(runs, args.onsets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
