"""The process-wide runtime and the audio paths' latency rules, end to end
against the local server: one loop thread and one dispatcher for every
conversation, no microphone backlog after a stalled loop, no mixer for a single
agent track."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conv import Recorder, open_conversation

from speko_sync import BufferAudio, Conversation, DisconnectionDetails, NullAudio
from speko_sync._runtime import runtime
from speko_sync.audio import AudioIO
from speko_sync.testing import LocalServer, ScriptedAgent, tone

pytestmark = [pytest.mark.webrtc, pytest.mark.speko_agent(greeting=None)]


def library_threads() -> list[str]:
    """The library's threads but the process-wide tool pool's (``speko-tool-N``,
    started by the first client tool call, like the loop threads never per
    conversation)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("speko-") and
                  t.name != "speko-local-server" and not t.name.startswith(("speko-agent", "speko-tool-")))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def stall_loop(seconds: float, during: Callable[[], None] = lambda: None, *, audio: bool = True) -> None:
    """Block the shared audio loop (or, ``audio=False``, the room loop) for
    ``seconds``; ``during`` runs on this thread while it is blocked."""
    blocked, release = threading.Event(), threading.Event()

    def block() -> None:
        blocked.set()
        release.wait(seconds)

    (runtime().audio if audio else runtime().loop).call_soon(block)
    assert blocked.wait(5)
    during()
    release.wait(seconds)  # the stall's length: the loop sleeps in block() meanwhile
    release.set()


def test_conversations_share_one_loop_thread_and_one_dispatcher(speko_server: LocalServer) -> None:
    runtime()
    before = library_threads()
    assert before == ["speko-audio", "speko-dispatch", "speko-loop"]
    agents = [speko_server.add_agent(f"shared-{i}", greeting=f"hello {i}") for i in range(4)]
    recorders = [Recorder() for _ in agents]
    with contextlib.ExitStack() as stack:
        convs = [stack.enter_context(open_conversation(speko_server, agent, rec))
                 for agent, rec in zip(agents, recorders, strict=True)]
        for i, rec in enumerate(recorders):
            assert rec.wait_for("message", lambda m: m.is_final).text == f"hello {i}"
        assert library_threads() == before  # no thread per conversation
        rooms = {conv._session.transport.room for conv in convs}
        assert len(rooms) == 4 and all(room is not None and room._loop is runtime().loop.loop for room in rooms)
        streams = [stream for conv in convs for stream in conv._session.transport.tracks.streams.values()]
        assert streams and all(stream._loop is runtime().audio.loop for stream in streams)
    for rec in recorders:
        assert {thread for _, _, thread in rec.events} == {"speko-dispatch"}
        assert [kind for kind, _, _ in rec.events if kind == "disconnected"] == ["disconnected"]
    assert library_threads() == before


def test_a_stalled_loop_leaves_no_microphone_backlog_loop_clocked(speko_server: LocalServer,
                                                                  speko_agent: ScriptedAgent) -> None:
    audio = BufferAudio(tone(300, 10.0, 0.2))
    with open_conversation(speko_server, speko_agent, audio=audio) as conv:
        source = conv._session.transport.source
        assert source is not None
        wait_until(lambda: conv.stats().frames_captured > 30, what="capture")
        for stall in (0.08, 0.3):  # caught up (the backend keeps real time); resumed from now
            stall_loop(stall)
            captured = conv.stats().frames_captured
            wait_until(lambda c=captured: conv.stats().frames_captured > c + 10, what="capture after the stall")
            # the missed frames did not reach LiveKit's queue in a burst
            assert source.queued_duration <= 0.05
        assert 4 <= conv.stats().capture_dropped <= 30  # what the 80 ms catch-up could not send in time


class DeviceClocked(NullAudio):
    """A device with a clock of its own; the test plays its capture thread."""

    clocked_by_loop = False

    def open(self, io: AudioIO) -> None:
        super().open(io)
        self.opened = io


def test_a_stalled_loop_drops_stale_device_capture_and_counts_it(speko_server: LocalServer,
                                                                  speko_agent: ScriptedAgent) -> None:
    audio = DeviceClocked()
    with open_conversation(speko_server, speko_agent, audio=audio) as conv:
        source = conv._session.transport.source
        assert source is not None
        io = audio.opened
        # while the loop is stalled, the device goes on capturing: 300 ms pile up
        stall_loop(0.05, lambda: io.capture_samples(tone(300, 0.3, 0.2)))
        wait_until(lambda: io.capture.available() == 0, what="the capture ring drained")
        stats = conv.stats()
        assert 25 <= stats.capture_dropped <= 30  # all but the newest 40 ms
        assert source.queued_duration <= 0.05


def peak_at(samples: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(samples), 1 / 48000)
    band = (freqs > freq - 20) & (freqs < freq + 20)
    return float(spectrum[band].max() / (spectrum.mean() + 1e-9))


def test_one_agent_track_plays_without_a_mixer_and_two_are_mixed(speko_server: LocalServer,
                                                                 speko_agent: ScriptedAgent) -> None:
    audio = BufferAudio()
    conv: Conversation
    with open_conversation(speko_server, speko_agent, audio=audio) as conv:
        session = conv._session
        wait_until(lambda: len(session.transport.tracks.streams) == 1, what="the agent's track")
        start = audio.played_seconds()
        speko_agent.say_tone(440, 1.0, 0.3)
        assert audio.wait_for_played(start + 1.5, timeout=10)
        assert session.transport.tracks._mixer is None  # one track: straight from its stream
        assert peak_at(audio.played()[-int(1.5 * 48000):], 440) > 50

        second = speko_server.add_agent(speko_agent.room, "agent-2", greeting=None)
        wait_until(lambda: len(session.transport.tracks.streams) == 2, what="the second track")
        assert session.transport.tracks._mixer is not None
        start = audio.played_seconds()
        speko_agent.say_tone(440, 1.5, 0.3)
        second.say_tone(1000, 1.5, 0.3)
        assert audio.wait_for_played(start + 2.0, timeout=10)
        both = audio.played()[-int(2.0 * 48000):]
        assert peak_at(both, 440) > 50 and peak_at(both, 1000) > 50

        second.leave()
        tracks = session.transport.tracks
        wait_until(lambda: len(tracks.streams) == 1 and tracks._mixer is None, what="back to one track")


class WaitProbe(NullAudio):
    """Loop-clocked: records, at each tick, how long ago the newest agent frame
    reached the playback ring (``arrived`` is stamped by the session's ``_play``)."""

    arrived = 0.0

    def open(self, io: AudioIO) -> None:
        super().open(io)
        self.waits: list[float] = []

    def tick(self, samples: int) -> None:
        if self.io.playback.available():
            self.waits.append(time.monotonic() - self.arrived)
        super().tick(samples)


def test_one_agent_track_clocks_a_loop_clocked_backend_so_nothing_waits(speko_server: LocalServer,
                                                                         speko_agent: ScriptedAgent) -> None:
    audio = WaitProbe()
    with open_conversation(speko_server, speko_agent, audio=audio) as conv:
        session = conv._session
        wait_until(lambda: len(session.transport.tracks.streams) == 1, what="the agent's track")
        play = session.path.play

        def stamped(samples: np.ndarray) -> None:
            audio.arrived = time.monotonic()
            play(samples)

        session.path.play = stamped  # type: ignore[method-assign]
        speko_agent.say_tone(440, 2.0, 0.3)
        wait_until(lambda: len(audio.waits) > 150, what="agent audio played")
        waits = np.array(audio.waits[-100:])
    # each frame is rendered by the tick its arrival wakes, not by a free-running
    # 10 ms timer (which would leave it waiting 5 ms on average)
    assert np.median(waits) < 0.003


def test_remote_end_racing_end_session_ends_once_with_one_reason(speko_server: LocalServer,
                                                                  speko_agent: ScriptedAgent) -> None:
    from speko_sync import _protocol

    remote = _protocol.disconnection_details("ROOM_DELETED")
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the two threads as finely as the interpreter allows
    try:
        race(speko_server, speko_agent, remote)
    finally:
        sys.setswitchinterval(switch)


def race(speko_server: LocalServer, speko_agent: ScriptedAgent, remote: DisconnectionDetails) -> None:
    from speko_sync import Status

    for i in range(100):
        rec = Recorder()
        conv = open_conversation(speko_server, speko_agent, rec, identity=f"racer-{i}")
        both = threading.Barrier(2)

        def remote_end(conv: Conversation = conv, both: threading.Barrier = both) -> None:
            both.wait(5)
            conv._life.remote_end(remote)  # what LiveKit's "disconnected" leads to, on the loop

        runtime().loop.call_soon(remote_end)
        both.wait(5)
        details = conv.end_session()
        assert rec.of("disconnected") == [details]  # one end, one reason, everywhere
        assert rec.of("status_changed") == [Status.CONNECTING, Status.CONNECTED, Status.DISCONNECTING,
                                            Status.DISCONNECTED]
        assert conv.wait_for_end(1) == details


def test_oversized_or_unencodable_text_is_refused_before_sending_and_the_session_goes_on(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    with open_conversation(speko_server, speko_agent) as conv:
        with pytest.raises(ValueError, match="limit is 15360 bytes"):
            conv.send_user_message("x" * 20_000)
        with pytest.raises(ValueError, match="not valid Unicode"):
            conv.send_contextual_update("\ud800")
        with pytest.raises(ValueError, match="not valid Unicode"):
            conv.send_chat_message("\ud800")
        assert conv.stats().packets_sent == 0 and conv.is_open()
        conv.send_chat_message("x" * 20_000)  # a text stream: any length
        assert conv.stats().packets_sent == 1


class FailsOnce(NullAudio):
    """A loop-clocked backend whose 30th tick raises."""

    def open(self, io: AudioIO) -> None:
        super().open(io)
        self.ticks = 0

    def tick(self, samples: int) -> None:
        self.ticks += 1
        if self.ticks == 30:
            raise RuntimeError("device hiccup")
        super().tick(samples)


def test_an_audio_path_that_raises_is_reported_and_started_again(speko_server: LocalServer,
                                                                  speko_agent: ScriptedAgent) -> None:
    from speko_sync import ErrorCode

    rec, audio = Recorder(), FailsOnce()
    with open_conversation(speko_server, speko_agent, rec, audio=audio) as conv:
        error = rec.wait_for("error")
        assert error.code == ErrorCode.MICROPHONE_FAILED and "device hiccup" in error.message
        ticks = audio.ticks
        wait_until(lambda: audio.ticks > ticks + 20, what="the microphone path running again")

        session = conv._session
        wait_until(lambda: len(session.transport.tracks.streams) == 1, what="the agent's track")
        play, failed = session.path.play, []

        def fails_once(samples: np.ndarray) -> None:
            if not failed:
                failed.append(True)
                raise RuntimeError("bad frame")
            play(samples)

        session.path.play = fails_once  # type: ignore[method-assign]
        speko_agent.say_tone(440, 2.0, 0.3)
        wait_until(lambda: bool(failed), what="the speaker path failing")
        played = conv.stats().frames_played
        wait_until(lambda: conv.stats().frames_played > played + 30, what="the speaker path running again")
        assert conv.is_open() and rec.of("error") == [error]  # the speaker's failure is logged, not an event


def test_scripted_agent_wait_for_times_out_with_the_room_described(speko_server: LocalServer,
                                                                  speko_agent: ScriptedAgent) -> None:
    audio = BufferAudio(tone(300, 5.0, 0.2))
    with open_conversation(speko_server, speko_agent, audio=audio, identity="described"):
        with pytest.raises(TimeoutError) as err:
            speko_agent.wait_for(lambda: False, timeout=0.3)
    # the room was described (which asks the server's loop) without the lock the loop records under
    assert "described" in str(err.value) and "TimeoutError" not in str(err.value)


EXIT_WITHOUT_ENDING = """
import sys
from speko_sync import Conversation, NullAudio

class Marked(NullAudio):
    def close(self):
        with open(sys.argv[3], "w") as f:
            f.write("closed")

conv = Conversation(sys.argv[1], sys.argv[2], audio=Marked())
print(conv.status.value, flush=True)
"""


def test_interpreter_exit_ends_open_conversations(speko_server: LocalServer, speko_agent: ScriptedAgent,
                                                  tmp_path: Path) -> None:
    import subprocess

    marker = f"{tmp_path}/closed"
    proc = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_ENDING, speko_server.token("exiter", speko_agent.room),
                           speko_server.url, marker], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "connected"
    with open(marker) as f:
        assert f.read() == "closed"  # the devices were closed
    # and the room was left (not dropped by a ping timeout): gone from the server at once
    assert "exiter" not in speko_server.participants(speko_agent.room)


SLOW_CALLBACKS_AT_EXIT = """
import ctypes, sys, time
import livekit.rtc._ffi_client as ffi

original = ffi.ffi_event_callback

@ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t)
def slow(data, length):  # each native event takes 2 ms in Python (a slow log handler, say)
    time.sleep(0.002)
    original(data, length)

ffi.ffi_event_callback = slow  # (before the FFI client exists: it registers this one)
from speko_sync import Conversation, NullAudio
conv = Conversation(sys.argv[1], sys.argv[2], audio=NullAudio())
print(conv.status.value, flush=True)
"""


def test_exit_waits_for_livekits_callbacks_under_way(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    """LiveKit's native threads still call into Python as the interpreter
    exits (libwebrtc's teardown logs after the room is left); one that wants
    the GIL once finalizing has begun is ended by pthread_exit() and the
    process aborts ("panic in a function that cannot unwind"). With slow
    callbacks, that was most exits (8 of 12); each exit here must be clean."""
    import subprocess

    for i in range(4):
        proc = subprocess.run([sys.executable, "-c", SLOW_CALLBACKS_AT_EXIT,
                               speko_server.token(f"slow-exit-{i}", speko_agent.room), speko_server.url],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == "connected"


INTERRUPTED_JOIN = """
import signal, sys, time
from speko_sync import Conversation, NullAudio

def interrupt(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, interrupt)
signal.setitimer(signal.ITIMER_REAL, 0.5)  # Ctrl-C half a second into the constructor
try:
    Conversation(sys.argv[1], sys.argv[2], audio=NullAudio(), connect_timeout=10.0)
except KeyboardInterrupt:
    print("interrupted", flush=True)
time.sleep(20)  # LiveKit's FFI used to panic and SIGTERM the process 17-19 s later
print("alive", flush=True)
"""


def test_ctrl_c_during_a_held_join_leaves_no_ghost_and_no_later_signal(speko_server: LocalServer,
                                                                      speko_agent: ScriptedAgent) -> None:
    import subprocess

    speko_server.set_join_delay(3.0)
    try:
        proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_JOIN, speko_server.token("ghost", speko_agent.room),
                                 speko_server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        appeared = gone = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and gone is None:  # watch the room while the held join completes
            present = "ghost" in speko_server.participants(speko_agent.room)
            now = time.monotonic()
            if present and appeared is None:
                appeared = now
            elif not present and appeared is not None:
                gone = now
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        speko_server.set_join_delay(0)
    assert proc.returncode == 0 and out.split() == ["interrupted", "alive"], err[-2000:]
    # the join the server let through after the interrupt was left again at once
    assert appeared is None or (gone is not None and gone - appeared < 1.0)
    assert "ghost" not in speko_server.participants(speko_agent.room)


def test_connect_timeout_during_a_held_join_leaves_nothing_behind(speko_server: LocalServer,
                                                                 speko_agent: ScriptedAgent) -> None:
    from speko_sync import ErrorCode, SpekoClientError

    def python_threads() -> list[str]:
        # Dummy-N: LiveKit's native (tokio) threads, seen by Python when they log through it
        return sorted(t.name for t in threading.enumerate() if not isinstance(t, threading._DummyThread)
                      and not t.name.startswith("speko-tool-"))

    open_conversation(speko_server, speko_agent).end_session()  # the process-wide threads now exist
    threads_before = python_threads()
    speko_server.set_join_delay(2.0)
    try:
        started = time.monotonic()
        with pytest.raises(SpekoClientError) as err:
            open_conversation(speko_server, speko_agent, identity="impatient", connect_timeout=1.0)
        assert err.value.code == ErrorCode.CONNECTION_FAILED
        assert time.monotonic() - started < 3.0
        deadline = time.monotonic() + 3.5  # past the moment the server lets the held join through
        while time.monotonic() < deadline:
            assert "impatient" not in speko_server.participants(speko_agent.room)
            time.sleep(0.05)
    finally:
        speko_server.set_join_delay(0)
    assert library_threads() == ["speko-audio", "speko-dispatch", "speko-loop"]
    assert python_threads() == threads_before


def test_a_stalled_room_loop_does_not_stall_audio(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    """What a flood of packets or a burst of room events does to the room loop
    leaves the audio alone: the agent's frames keep playing, the microphone
    keeps being captured."""
    audio = BufferAudio(tone(300, 30.0, 0.2))
    with open_conversation(speko_server, speko_agent, audio=audio) as conv:
        wait_until(lambda: len(conv._session.transport.tracks.streams) == 1, what="the agent's track")
        speko_agent.say_tone(440, 5.0, 0.3)
        wait_until(lambda: conv.stats().frames_played > 50, what="agent audio")
        during: dict[str, int] = {}

        def measure() -> None:
            before = conv.stats()
            time.sleep(0.5)
            after = conv.stats()
            during["played"] = after.frames_played - before.frames_played
            during["captured"] = after.frames_captured - before.frames_captured

        stall_loop(0.6, measure, audio=False)
    assert during["played"] >= 40 and during["captured"] >= 40, during  # 50 each in real time


FORKS = """
import os, sys, time
from speko_sync import Conversation, NullAudio

early, used, late, url = sys.argv[1:5]

def fork(child):
    pid = os.fork()
    if pid == 0:
        try:
            code = child()
        except BaseException as exc:
            print("child raised", repr(exc), flush=True)
            code = 3
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def before_use():
    Conversation(early, url, audio=NullAudio()).end_session()
    return 0

print("forked before use:", fork(before_use), flush=True)
Conversation(used, url, audio=NullAudio()).end_session()  # this process now uses LiveKit

class Watched(NullAudio):
    prepared = False
    def prepare(self):
        Watched.prepared = True
        return super().prepare()

def after_use():
    started = time.monotonic()
    try:
        Conversation(late, url, audio=Watched())
    except RuntimeError as exc:
        print("forked after use:", "fork()" in str(exc) and "Celery" in str(exc),
              time.monotonic() - started < 0.5, Watched.prepared, flush=True)
        return 0
    return 2

print("exit", fork(after_use), flush=True)
"""


def test_a_process_forked_after_use_is_refused_at_once_and_one_forked_before_works(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    import subprocess

    room = speko_agent.room
    proc = subprocess.run([sys.executable, "-c", FORKS, speko_server.token("early", room),
                           speko_server.token("used", room), speko_server.token("late", room), speko_server.url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # before use: a whole conversation; after use: a RuntimeError saying what to do, at
    # once, before any device was opened
    assert proc.stdout.splitlines() == ["forked before use: 0", "forked after use: True True False", "exit 0"], \
        proc.stdout + proc.stderr[-2000:]
