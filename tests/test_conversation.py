"""Conversation end to end: the real livekit.rtc client against the local server
and its scripted agent, with the buffer and null audio backends."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conv import Recorder, open_conversation
from lk import RATE, dominant_frequency, rms

from speko_sync import (
    BufferAudio,
    ControlEventType,
    Conversation,
    DisconnectReason,
    ErrorCode,
    Message,
    MessageSource,
    Mode,
    NullAudio,
    SpekoClientError,
    Status,
    signals,
)
from speko_sync._runtime import runtime
from speko_sync.testing import LocalServer, ScriptedAgent, tone

pytestmark = [pytest.mark.webrtc, pytest.mark.speko_agent(protocol="json")]


def speko_threads() -> set[str]:
    runtime()  # the process-wide loop and dispatcher threads stay; count everything else
    return {t.name for t in threading.enumerate() if t.name.startswith("speko-") and
            t.name not in ("speko-local-server",) and not t.name.startswith(("speko-agent", "speko-tool-"))}


def test_connect_greeting_and_status_sequence(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    conv = open_conversation(speko_server, speko_agent, rec)
    assert conv.status == Status.CONNECTED and conv.is_open()
    assert conv.conversation_id == speko_agent.room
    greeting = rec.wait_for("message")
    assert greeting == Message(MessageSource.AGENT, speko_agent.greeting or "", True)
    rec.wait_for("mode_changed", lambda m: m == Mode.SPEAKING)  # the greeting tone
    rec.wait_for("mode_changed", lambda m: m == Mode.LISTENING)
    assert conv.end_session().reason == DisconnectReason.USER
    assert rec.of("status_changed") == [Status.CONNECTING, Status.CONNECTED, Status.DISCONNECTING,
                                        Status.DISCONNECTED]
    assert rec.of("connected") == [speko_agent.room]
    assert all(thread == "speko-dispatch" for _, _, thread in rec.events)


def test_overrides_arrive_first_and_shape_the_greeting(speko_server: LocalServer,
                                                       speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    overrides = {"agent": {"firstMessage": "Welcome back!", "language": "fr"}, "tts": {"speed": 0.9}}
    with open_conversation(speko_server, speko_agent, rec, overrides=overrides):
        assert rec.wait_for("message").text == "Welcome back!"
    first = speko_agent.packets()[0]
    assert first.data == {"type": "overrides", "overrides": overrides}


@pytest.mark.speko_agent(greeting=None)
def test_user_message_echo_and_contextual_update(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec) as conv:
        conv.send_contextual_update("user is on the pricing page")
        conv.send_user_message("hello there")
        rec.wait_for("message", lambda m: m.source == MessageSource.AGENT)
        speko_agent.wait_for(lambda: speko_agent.contextual_updates == ["user is on the pricing page"])
    assert rec.of("message") == [Message(MessageSource.USER, "hello there", True),
                                 Message(MessageSource.AGENT, 'You said: "hello there"', True)]
    assert [p.type for p in speko_agent.packets()] == ["contextual_update", "user_message"]


@pytest.mark.speko_agent(greeting=None)
def test_utterance_gives_transcripts_partial_then_final(speko_server: LocalServer,
                                                         speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    speech = np.concatenate([np.zeros(RATE // 2, np.int16), tone(300, 1.0, 0.4), np.zeros(RATE, np.int16)])
    audio = BufferAudio(speech)
    with open_conversation(speko_server, speko_agent, rec, audio=audio,
                           audio_constraints=None) as conv:
        rec.wait_for("message", lambda m: m.source == MessageSource.AGENT)
        stats = conv.stats()
    transcripts = [m for m in rec.of("message") if m.source == MessageSource.USER]
    assert [m.is_final for m in transcripts] == [False, True]
    assert 0.8 <= speko_agent.utterances[0] <= 1.2
    assert stats.frames_captured >= 100 and stats.packets_received == 3


@pytest.mark.speko_agent(greeting=None)
def test_microphone_audio_reaches_the_agent(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    from speko_sync import AudioConstraints

    audio = BufferAudio(tone(1000, 3.0, 0.3))
    off = AudioConstraints(echo_cancellation=False, noise_suppression=False, auto_gain_control=False)
    with open_conversation(speko_server, speko_agent, audio=audio, audio_constraints=off):
        speko_agent.wait_for(lambda: len(speko_agent.received_audio()) > RATE)
    heard = speko_agent.received_audio()
    assert abs(dominant_frequency(heard[-RATE // 2:]) - 1000) < 10


@pytest.mark.speko_agent(greeting=None)
def test_mute_is_seen_by_the_agent_and_silences_the_microphone(speko_server: LocalServer,
                                                               speko_agent: ScriptedAgent) -> None:
    audio = BufferAudio(tone(600, 30.0, 0.3))
    with open_conversation(speko_server, speko_agent, audio=audio) as conv:
        speko_agent.wait_for(lambda: speko_agent.client_muted is False)
        speko_agent.wait_for(lambda: len(speko_agent.received_audio()) > RATE // 4
                             and rms(speko_agent.received_audio()[-RATE // 4:]) > 0.02)
        conv.set_mic_muted(True)
        assert conv.mic_muted
        speko_agent.wait_for(lambda: speko_agent.client_muted is True)
        time_muted = audio.pending_seconds()
        speko_agent.wait_for(lambda: time_muted - audio.pending_seconds() > 1.0)  # 1 s of muted capture
        speko_agent.clear_audio()  # what was in flight when muting is gone by now
        speko_agent.wait_for(lambda: time_muted - audio.pending_seconds() > 1.5)
        assert rms(speko_agent.received_audio()) < 0.005
        conv.set_mic_muted(False)
        speko_agent.wait_for(lambda: speko_agent.client_muted is False)
        speko_agent.wait_for(lambda: rms(speko_agent.received_audio()[-RATE // 4:]) > 0.02)


@pytest.mark.speko_agent(greeting=None)
def test_volume_scales_what_is_played(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    audio = BufferAudio()
    with open_conversation(speko_server, speko_agent, audio=audio) as conv:
        levels = []
        for volume in (1.0, 0.5, 2.0):
            conv.set_volume(volume)
            start = len(audio.played())
            speko_agent.say_tone(800, 1.0, 0.4, wait=True)
            assert audio.wait_for_played((start + RATE) / RATE + 0.2, 10)
            played = audio.played()[start:]
            levels.append(np.percentile(np.abs(played), 99))
        assert conv.volume == 1.0  # clamped
        with pytest.raises(TypeError, match="volume"):
            conv.set_volume("loud")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="NaN"):
            conv.set_volume(float("nan"))
        assert conv.volume == 1.0  # unchanged by the refused values
    assert levels[1] == pytest.approx(levels[0] / 2, rel=0.1)
    assert levels[2] == pytest.approx(levels[0], rel=0.1)


@pytest.mark.parametrize(("how", "reason", "message"), [
    ("kick", DisconnectReason.AGENT, "PARTICIPANT_REMOVED"),
    ("room_deleted", DisconnectReason.AGENT, "ROOM_DELETED"),
    ("drop", DisconnectReason.ERROR, "JOIN_FAILURE"),
    ("user", DisconnectReason.USER, "CLIENT_INITIATED"),
])
@pytest.mark.speko_agent(greeting=None)
def test_disconnect_reasons(speko_server: LocalServer, speko_agent: ScriptedAgent, how: str,
                            reason: DisconnectReason, message: str) -> None:
    rec = Recorder()
    conv = open_conversation(speko_server, speko_agent, rec)
    if how == "kick":
        speko_agent.kick()
    elif how == "room_deleted":
        speko_agent.kick("ROOM_DELETED")
    elif how == "drop":
        speko_server.drop_connections(speko_agent.room, refuse_rejoin=True)
    else:
        conv.end_session()
    details = conv.wait_for_end(timeout=30)
    assert (details.reason, details.message) == (reason, message)
    assert rec.of("disconnected") == [details]
    assert rec.of("status_changed")[-2:] == [Status.DISCONNECTING, Status.DISCONNECTED]
    assert not conv.is_open()
    with pytest.raises(SpekoClientError) as err:
        conv.send_user_message("anyone?")
    assert err.value.code == ErrorCode.NOT_CONNECTED
    assert conv.end_session() == details  # idempotent


@pytest.mark.speko_agent(greeting=None)
def test_malformed_and_unknown_packets_keep_the_session(speko_server: LocalServer,
                                                        speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    with open_conversation(speko_server, speko_agent, rec) as conv:
        speko_agent.send_raw(b"not json at all")
        speko_agent.send({"type": "agent_thinking", "text": "hmm"})
        speko_agent.send_raw(b'{"no_type": 1}')
        speko_agent.send_raw(b'{"type": "agent_message", "text": "elsewhere"}', topic="other.app")
        speko_agent.send_raw(b'{"type": "transfer_completed"}', topic="speko.control")
        speko_agent.send_raw(b'{"type": "no_such_control"}', topic="speko.control")
        speko_agent.send({"type": "agent_message", "text": "still here"})
        rec.wait_for("message", lambda m: m.text == "still here")
        rec.wait_for("control")
        # other publishers' data is not an error: ignored and counted
        assert rec.of("error") == []
        assert [(m.source, m.text) for m in rec.of("message")] == [(MessageSource.AGENT, "still here")]
        (control,) = rec.of("control")
        assert control.type == ControlEventType.TRANSFER_COMPLETED and control.data == {"type": "transfer_completed"}
        assert conv.is_open()
        stats = conv.stats()
        assert (stats.malformed_packets, stats.ignored_packets) == (2, 5)
        conv.send_user_message("ok")
        speko_agent.wait_for_packet("user_message")


def test_bad_token_fails_promptly_and_leaves_nothing(speko_server: LocalServer) -> None:
    before = speko_threads()
    started = time.monotonic()
    rec = Recorder()
    with pytest.raises(SpekoClientError) as err:
        Conversation(speko_server.token("u", "r", ttl=-60), speko_server.url, audio=NullAudio(),
                     **rec.callbacks())
    assert err.value.code == ErrorCode.CONNECTION_FAILED
    assert "expired" in err.value.message and err.value.cause is not None
    assert time.monotonic() - started < 5
    assert speko_threads() == before
    assert rec.of("status_changed") == [Status.CONNECTING, Status.DISCONNECTED]
    assert rec.of("connected") == [] and rec.of("disconnected") == []


def test_unreachable_url_fails_promptly(speko_server: LocalServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here once closed
    before = speko_threads()
    started = time.monotonic()
    with pytest.raises(SpekoClientError) as err:
        Conversation(speko_server.token("u", "r"), f"ws://127.0.0.1:{port}", audio=NullAudio(), connect_timeout=10)
    assert err.value.code == ErrorCode.CONNECTION_FAILED
    assert time.monotonic() - started < 10
    assert speko_threads() == before


def test_connect_timeout(speko_server: LocalServer) -> None:
    speko_server.set_join_delay(5.0)
    before = speko_threads()
    started = time.monotonic()
    with pytest.raises(SpekoClientError) as err:
        Conversation(speko_server.token("u", "slow"), speko_server.url, audio=NullAudio(), connect_timeout=1.0)
    elapsed = time.monotonic() - started
    assert err.value.code == ErrorCode.CONNECTION_FAILED
    assert elapsed < 3.0
    assert speko_threads() == before


def test_a_failing_device_raises_before_any_join(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    """Audio first: the agent never sees its caller come and go, so the session's
    credentials stay usable (here: a second try with a working device)."""
    class BrokenMic(NullAudio):
        closed = False

        def open(self, io: object) -> None:
            raise OSError("device busy")

        def close(self) -> None:
            BrokenMic.closed = True

    before = speko_threads()
    joins = speko_server.stats().get("joins", 0)
    with pytest.raises(SpekoClientError) as err:
        open_conversation(speko_server, speko_agent, audio=BrokenMic())
    assert err.value.code == ErrorCode.MICROPHONE_FAILED and "device busy" in err.value.message
    assert speko_server.stats().get("joins", 0) == joins  # no network traffic at all
    assert BrokenMic.closed
    assert speko_threads() == before
    with open_conversation(speko_server, speko_agent) as conv:  # same token, works
        assert conv.is_open()


def test_bad_arguments_raise_before_anything_starts() -> None:
    before = speko_threads()
    with pytest.raises(ValueError, match="token"):
        Conversation("", "ws://x")
    with pytest.raises(ValueError, match="url"):
        Conversation("t", "ftp://x")
    with pytest.raises(ValueError, match="unknown overrides key"):
        Conversation("t", "ws://x", overrides={"agent": {"first_message": "x"}})
    with pytest.raises(TypeError, match="on_message must be callable"):
        Conversation("t", "ws://x", on_message="print")  # type: ignore[arg-type]
    assert speko_threads() == before


@pytest.mark.speko_agent(greeting=None)
def test_end_session_from_inside_a_receiver(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    ended: list[object] = []
    holder: list[Conversation] = []

    def on_message(message: Message) -> None:
        ended.append(holder[0].end_session(timeout=10))

    conv = open_conversation(speko_server, speko_agent, on_message=on_message)
    holder.append(conv)
    speko_agent.send({"type": "agent_message", "text": "bye"})
    details = conv.wait_for_end(timeout=15)
    assert details.reason == DisconnectReason.USER and ended == [details]


@pytest.mark.speko_agent(greeting=None)
def test_many_threads_use_the_api_at_once(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    conv = open_conversation(speko_server, speko_agent)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                conv.send_user_message(f"{i}-{j}")
                conv.set_volume((i + j) / 10)
                conv.set_mic_muted(j % 2 == 0)
                conv.stats()
                conv.poll_events()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    speko_agent.wait_for(lambda: len([p for p in speko_agent.packets() if p.type == "user_message"]) == 40)
    enders = [threading.Thread(target=conv.end_session) for _ in range(4)]
    for t in enders:
        t.start()
    for t in enders:
        t.join(15)
    assert conv.status == Status.DISCONNECTED


@pytest.mark.speko_agent(greeting=None)
def test_poll_events_and_signals(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    conv = open_conversation(speko_server, speko_agent)
    heard: list[Message] = []

    def on_message(sender: Conversation, message: Message) -> None:
        assert sender is conv
        heard.append(message)

    signals.message.connect(on_message, sender=conv)
    batch = conv.poll_events()
    assert [e.kind for e in batch] == ["status_changed", "status_changed", "connected"]
    speko_agent.send({"type": "agent_message", "text": "polled"})
    deadline = time.monotonic() + 10
    events = []
    while not events and time.monotonic() < deadline:
        events = [e for e in conv.poll_events() if e.kind == "message"]
        time.sleep(0.01)
    assert events[0].value == Message(MessageSource.AGENT, "polled", True)
    conv.end_session()
    assert heard == [Message(MessageSource.AGENT, "polled", True)]
    signals.message.disconnect(on_message, sender=conv)


@pytest.mark.speko_agent(greeting=None)
def test_end_session_while_connecting_ends_right_after_connect(speko_server: LocalServer,
                                                                speko_agent: ScriptedAgent) -> None:
    results: list[object] = []
    holder: list[Conversation] = []

    def on_status(status: Status) -> None:
        if status == Status.CONNECTING and holder:
            results.append(holder[0].end_session(timeout=15))

    class Capture(Conversation):
        def __init__(self, *args: object, **kwargs: object) -> None:
            holder.append(self)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    conv = Capture(speko_server.token("u", speko_agent.room), speko_server.url, audio=NullAudio(),
                   on_status_change=on_status)
    details = conv.wait_for_end(timeout=15)
    assert details.reason == DisconnectReason.USER and results == [details]
    assert conv.status == Status.DISCONNECTED


@pytest.mark.speko_agent(greeting=None)
def test_sends_racing_the_end_fail_only_with_not_connected(speko_server: LocalServer,
                                                           speko_agent: ScriptedAgent) -> None:
    conv = open_conversation(speko_server, speko_agent)
    unexpected: list[BaseException] = []
    go = threading.Event()

    def sender() -> None:
        go.wait()
        for i in range(50):
            try:
                conv.send_user_message(str(i))
            except SpekoClientError as exc:
                if exc.code != ErrorCode.NOT_CONNECTED:
                    unexpected.append(exc)
                return
            except BaseException as exc:
                unexpected.append(exc)
                return

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    conv.end_session()
    for t in threads:
        t.join(30)
    assert unexpected == []
    assert conv.status == Status.DISCONNECTED
