"""``python -m speko_sync demo``: a whole voice session, offline.

Starts the local LiveKit-compatible server with its scripted agent (inside a
private network namespace, which WebRTC needs), joins the room with the real
``livekit.rtc`` client, speaks a synthetic utterance and a text message, prints
what the agent says and saves the agent's audio to a WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from pathlib import Path

import numpy as np


async def _session(url: str, token: str, wav_path: Path) -> None:
    from livekit import rtc

    from speko_sync.testing import tone

    room = rtc.Room()
    heard: list[np.ndarray] = []
    done = asyncio.Event()
    t0 = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - t0:5.2f} s] {line}", flush=True)

    def on_data(packet: rtc.DataPacket) -> None:
        try:
            message = json.loads(packet.data)
        except ValueError:
            say(f"unparsable packet: {packet.data!r}")
            return
        final = "" if message.get("isFinal", True) else " (partial)"
        say(f"{message.get('type')}: {message.get('text')}{final}")
        if message.get("type") == "agent_message" and "heard" in str(message.get("text")):
            done.set()

    async def listen(track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            heard.append(np.frombuffer(event.frame.data, dtype=np.int16).copy())

    tasks: list[asyncio.Task[None]] = []
    room.on("data_received", on_data)
    room.on("track_subscribed", lambda track, pub, p: tasks.append(asyncio.create_task(listen(track))))
    room.on("active_speakers_changed", lambda speakers: say(
        "mode: " + ("speaking" if any(s.identity != room.local_participant.identity for s in speakers)
                    else "listening")))
    say(f"connecting to {url}")
    await room.connect(url, token)
    say(f"connected to room {room.name!r}; participants: {', '.join(room.remote_participants) or 'none'}")
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    say("microphone published; status: connected")
    await room.local_participant.publish_data(json.dumps({"type": "user_message", "text": "Hi there!"}).encode())
    await asyncio.sleep(1.5)
    say("speaking a 1.2 s synthetic utterance")
    utterance = np.concatenate([tone(300, 1.2, 0.4), np.zeros(48000 // 2, dtype=np.int16)])
    for i in range(0, len(utterance), 480):
        await source.capture_frame(rtc.AudioFrame(utterance[i:i + 480].tobytes(), 48000, 1, 480))
    try:
        await asyncio.wait_for(done.wait(), 10)
    except asyncio.TimeoutError:
        say("the agent did not answer the utterance in time")
    await room.disconnect()
    for task in tasks:
        task.cancel()
    audio = np.concatenate(heard) if heard else np.zeros(0, dtype=np.int16)
    with wave.open(str(wav_path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(audio.tobytes())
    say(f"status: disconnected; saved {len(audio) / 48000:.1f} s of agent audio to {wav_path}")


def demo(wav_path: Path) -> int:
    from speko_sync.testing import IsolationUnavailable, LocalServer, reexec_isolated

    try:
        reexec_isolated()
    except IsolationUnavailable as exc:
        print(f"warning: no private network namespace ({exc}); trying the host network", file=sys.stderr)
    print("No sound devices are used: the microphone is a synthetic utterance and the agent's audio "
          "goes to a WAV file.")
    with LocalServer(default_agent=True) as server:
        asyncio.run(_session(server.url, server.token("demo-user", "speko_demo"), wav_path))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speko_sync")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_cmd = sub.add_parser("demo", help="a live conversation with the embedded local agent")
    demo_cmd.add_argument("--wav", type=Path, default=Path("speko_demo_agent.wav"),
                          help="where to save the agent's audio")
    args = parser.parse_args(argv)
    return demo(args.wav)


if __name__ == "__main__":
    sys.exit(main())
