"""Barge-in: how soon the agent's voice stops on the speaker when the user talks over it.

The real LiveKit Agents worker (the offline Speko agent) tells a long story; the
user speaks over it (espeak-ng through ``BufferAudio``, echo cancellation off:
the buffer has no acoustic path). Measured per trial, from the start of the
user's speech:

- ``speko_sync``: the last loud frame of the story that the Conversation's
  speaker played (``BufferAudio`` is clocked by the loop: its played audio is a
  timeline);
- ``raw``: the last loud frame of the story that a raw ``livekit.rtc`` client in
  the same room received on the agent's track, which is what it would play (a
  raw client drops nothing);
- when the agent's ``lk.agent.state`` left ``speaking``, as the raw client saw it.

The search ends 3 s after the speech began (LiveKit Agents may resume a turn it
judges not interrupted 2 s after the speech ended). Runs inside a private network namespace; the
worker from the agent environment (``make agent-env``).

    python benchmarks/bench_barge_in.py --trials 5
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import threading
import time

import numpy as np
from livekit import rtc

from speko_sync import AgentState, AudioConstraints, BufferAudio, Conversation, MessageSource
from speko_sync.testing import LocalServer, reexec_isolated

RATE = 48_000
STORY = "Once upon a time there was a robot who liked to talk for a very long time about many things. " * 4
LOUD = 1000  # peak of a frame that is the agent's voice
#: searched after the user's first word: LiveKit Agents resumes a turn it judges not interrupted 2 s
#: after the user's speech ended, so not before 3 s after it began
WINDOW_S = 3.0


def espeak(text: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True).stdout
    pcm = np.frombuffer(wav[44:], dtype=np.int16)  # 22050 Hz
    return np.interp(np.arange(0, len(pcm), 22050 / RATE), np.arange(len(pcm)), pcm).astype(np.int16)


class Listener:
    """A raw livekit.rtc client in the room, on a loop thread of its own: when
    each agent frame arrived and how loud it was, and the agent's state changes."""

    def __init__(self, server: LocalServer, room: str) -> None:
        self.frames: list[tuple[float, int]] = []
        self._tasks: list[asyncio.Future[None]] = []
        self.states: list[tuple[float, str]] = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._join(server, room), self.loop).result(30)

    async def _join(self, server: LocalServer, room: str) -> None:
        self.room = rtc.Room()

        def on_track(track: rtc.Track, *_: object) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self._tasks.append(asyncio.ensure_future(self._listen(track)))

        def on_attributes(changed: dict[str, str], who: rtc.Participant) -> None:
            if "lk.agent.state" in changed:
                self.states.append((time.monotonic(), changed["lk.agent.state"]))
        self.room.on("track_subscribed", on_track)
        self.room.on("participant_attributes_changed", on_attributes)
        await self.room.connect(server.url, server.token("listener", room))

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
            self.frames.append((time.monotonic(), int(np.abs(np.frombuffer(event.frame.data, np.int16)).max())))

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.room.disconnect(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def last_loud(frames: list[tuple[float, int]], start: float, end: float) -> float | None:
    loud = [t for t, peak in frames if start <= t <= end and peak > LOUD]
    return max(loud) if loud else None


def trial(server: LocalServer, n: int, speech: np.ndarray) -> dict[str, float] | None:
    room = f"barge-{n}"
    audio = BufferAudio()
    interrupted = threading.Event()
    with Conversation(server.token("user", room), server.url, audio=audio,
                      audio_constraints=AudioConstraints(echo_cancellation=False),
                      on_interruption=lambda i: interrupted.set() if i.is_interruption else None) as conv:
        greeting = conv.wait_for_reply(timeout=30)  # the agent is linked to this conversation's user now
        assert greeting.text, greeting
        listener = Listener(server, room)
        try:
            conv.send_chat_message("tell me a story")
            deadline = time.monotonic() + 30
            while not any(m.source == MessageSource.AGENT and m.text.startswith(STORY[:40])
                          for m in conv.transcript()):
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.01)  # a benchmark's poll, not a test's synchronisation
            lead = 0.3
            fed_at, played_at_feed = time.monotonic(), audio.played_seconds()
            audio.feed(np.concatenate([np.zeros(int(lead * RATE), np.int16), speech, np.zeros(RATE, np.int16)]))
            onset = fed_at + lead
            if not interrupted.wait(10):
                return None
            time.sleep(WINDOW_S + 0.5)
            played = audio.played()
            frame = RATE // 100
            frames = [(fed_at + i * frame / RATE - played_at_feed, int(np.abs(played[i * frame:(i + 1) * frame]).max()))
                      for i in range(int(played_at_feed * 100), len(played) // frame)]
            speko = last_loud(frames, onset, onset + WINDOW_S)
            raw = last_loud(listener.frames, onset, onset + WINDOW_S)
            stopped = next((t for t, state in listener.states if t > onset and state != AgentState.SPEAKING.value),
                           None)
            if speko is None or raw is None or stopped is None:
                return None
            return {"speko_sync": speko - onset, "raw": raw - onset, "state left speaking": stopped - onset,
                    "dropped ms": conv.stats().barge_in_dropped_ms}
        finally:
            listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("bench_barge_in needs espeak-ng (make setup installs it)")
    reexec_isolated()
    speech = espeak("what is the weather")
    results: list[dict[str, float]] = []
    with LocalServer() as server:
        server.start_agent_worker(greeting="Hello from the offline agent.", rules=[("story", STORY)])
        for n in range(args.trials):
            result = trial(server, n, speech)
            print(f"trial {n}: " + ("no interruption (the agent did not stop)" if result is None else
                                    "  ".join(f"{k} {v:.3f}" for k, v in result.items())), flush=True)
            if result is not None:
                results.append(result)
    if not results:
        raise SystemExit("no trial was interrupted")
    print(f"\nfrom the user's first word to the agent's voice gone from the speaker ({len(results)} trials, median):")
    for key in ("state left speaking", "speko_sync", "raw"):
        print(f"  {key:20s} {1000 * statistics.median(r[key] for r in results):6.0f} ms")
    saved = [r["raw"] - r["speko_sync"] for r in results]
    print(f"  speko_sync stops the voice {1000 * statistics.median(saved):.0f} ms sooner than a raw client "
          f"(min {1000 * min(saved):.0f}, max {1000 * max(saved):.0f} ms)")


if __name__ == "__main__":
    main()
