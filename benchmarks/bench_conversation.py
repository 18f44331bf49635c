"""Figures for ``Conversation`` (run with ``make bench``).

1. Connect: median time for ``Conversation(...)`` to return (joined, microphone
   published) against the local server, compared in the same run with the raw
   ``rtc.Room.connect`` plus a microphone publish (goal: at most 1.15x).
2. Playback: playback buffer depth (mean, p95), underruns and trims over 60 s
   of agent speech, on real PortAudio with virtual PulseAudio devices.
3. CPU: the client process's CPU during 60 s of full-duplex audio with the
   buffer backend (the server runs in a child process and is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from speko_sync.testing import ServerProcess


async def raw_connect(url: str, token: str) -> float:
    from livekit import rtc

    room = rtc.Room()
    started = time.perf_counter()
    await room.connect(url, token)
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    elapsed = time.perf_counter() - started
    await room.disconnect()
    return elapsed


def connect_figures(child: ServerProcess, runs: int) -> tuple[float, float]:
    from speko_sync import Conversation, NullAudio

    ours, raw = [], []
    for i in range(runs):
        started = time.perf_counter()
        conv = Conversation(child.token(f"c{i}", f"conv{i}"), child.url, audio=NullAudio())
        ours.append(time.perf_counter() - started)
        conv.end_session()
        raw.append(asyncio.run(raw_connect(child.url, child.token(f"r{i}", f"raw{i}"))))
    return statistics.median(ours), statistics.median(raw)


def playback_figures(child: ServerProcess, seconds: float) -> tuple[float, float, int, int, float]:
    from speko_sync import Conversation
    from speko_sync.testing._pulse import VirtualSoundDevices

    with VirtualSoundDevices():
        child.add_agent("playback")
        conv = Conversation(child.token("listener", "playback"), child.url)
        child.say_tone("playback", seconds + 3)
        time.sleep(2.0)  # output stream start-up
        base = conv.stats()
        depths = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            depths.append(conv.stats().playback_buffer_ms)
            time.sleep(0.1)
        stats = conv.stats()
        conv.end_session()
    played_s = (stats.frames_played - base.frames_played) / 100
    return (float(np.mean(depths)), float(np.percentile(depths, 95)), int(stats.underruns - base.underruns),
            int(stats.playback_dropped - base.playback_dropped), played_s)


def cpu_figure(child: ServerProcess, seconds: float) -> float:
    from speko_sync import BufferAudio, Conversation
    from speko_sync.testing import tone

    child.add_agent("duplex")
    audio = BufferAudio(tone(300, seconds + 10, 0.3))
    conv = Conversation(child.token("duplexer", "duplex"), child.url, audio=audio)
    child.say_tone("duplex", seconds + 5)
    time.sleep(2.0)
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    conv.end_session()
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--only", choices=["playback"], help="run one figure only")
    args = parser.parse_args()
    from speko_sync.testing import ServerProcess, reexec_isolated

    reexec_isolated()
    child = ServerProcess()
    try:
        if args.only is None:
            ours, raw = connect_figures(child, args.runs)
            print(f"connect: Conversation median {ours * 1000:.0f} ms, raw Room.connect + publish median "
                  f"{raw * 1000:.0f} ms over {args.runs} runs each: {ours / raw:.2f}x (goal <= 1.15x)", flush=True)
        if args.only in (None, "playback"):
            depth, p95, underruns, dropped, played = playback_figures(child, args.seconds)
            print(f"playback over {args.seconds:.0f} s of agent speech (PyAudio, virtual PulseAudio devices, "
                  f"20 ms device buffers): buffer depth mean {depth:.1f} ms, p95 {p95:.1f} ms; {underruns} "
                  f"underruns; trimmed {dropped} times; {played:.1f} s played", flush=True)
        if args.only == "playback":
            return 0
        cpu = cpu_figure(child, args.seconds)
        print(f"client CPU during {args.seconds:.0f} s of full-duplex audio (buffer backend): "
              f"{cpu * 100:.1f} % of one core", flush=True)
        return 0
    finally:
        child.close()


if __name__ == "__main__":
    sys.exit(main())
