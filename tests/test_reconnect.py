"""Lost links, end to end against the local server over real WebRTC: the
``reconnecting`` status, ``on_reconnect`` after a resume or a full rejoin, the
microphone published again, sends refused while reconnecting, and a server
that went away reported within ``reconnect_timeout``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from conv import Recorder, open_conversation
from test_runtime import wait_until

from speko_sync import (
    BufferAudio,
    Conversation,
    DisconnectReason,
    ErrorCode,
    Reconnection,
    SpekoClientError,
    Status,
)
from speko_sync._lk_link import LinkWatch
from speko_sync.testing import LocalServer, NetworkFaultUnavailable, ScriptedAgent, link_outage, packet_loss, tone

pytestmark = [pytest.mark.webrtc, pytest.mark.speko_agent(greeting=None)]


def statuses(rec: Recorder) -> list[Status]:
    return list(rec.of("status_changed"))


def talking_conversation(server: LocalServer, agent: ScriptedAgent, rec: Recorder | None = None,
                         **options: Any) -> Conversation:
    """A conversation whose microphone plays a 440 Hz tone for a minute."""
    return open_conversation(server, agent, rec, audio=BufferAudio(tone(440, 60.0, amplitude=0.3)), **options)


def agent_hears(agent: ScriptedAgent, identity: str = "user", timeout: float = 10.0) -> None:
    """Wait until the agent receives fresh, non-silent audio from ``identity``."""
    agent.clear_audio()
    agent.wait_for(lambda: float(np.abs(agent.received_audio(identity)).max(initial=0)) > 0.05
                   and len(agent.received_audio(identity)) > 4800, timeout=timeout)


@pytest.mark.speko_server(ping_interval=1, ping_timeout=2)
def test_a_dropped_connection_rejoins_fully_republishes_the_microphone_and_goes_on(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    conv = talking_conversation(speko_server, speko_agent, rec)
    try:
        agent_hears(speko_agent)
        assert speko_server.drop_connections(speko_agent.room) == 1
        wait_until(lambda: conv.status == Status.RECONNECTING, what="reconnecting")
        with pytest.raises(SpekoClientError) as err:
            conv.send_user_message("during the outage")
        assert err.value.code == ErrorCode.NOT_CONNECTED and "reconnecting" in err.value.message
        assert not conv.is_open()
        reconnection = rec.wait_for("reconnected", timeout=20)
        assert isinstance(reconnection, Reconnection)
        assert reconnection.resumed is False  # this server refuses to resume: a new participant
        assert reconnection.outage_s > 0
        assert conv.status == Status.CONNECTED
        assert statuses(rec)[-2:] == [Status.RECONNECTING, Status.CONNECTED]
        agent_hears(speko_agent)  # the microphone was published again
        conv.send_user_message("after the outage")
        speko_agent.wait_for_packet(lambda p: p.data.get("text") == "after the outage")
        assert [p.data.get("text") for p in speko_agent.packets()
                if p.data.get("type") == "user_message"] == ["after the outage"]
    finally:
        details = conv.end_session()
    assert details.reason == DisconnectReason.USER
    assert rec.of("error") == []


# a resume takes LiveKit a second or two (it waits for the ICE restart and
# pings nothing meanwhile): a ping timeout shorter than that fails the resume
@pytest.mark.speko_server(ping_interval=1, ping_timeout=5)
def test_unanswered_pings_resume_the_same_session_and_the_agent_still_speaks_after(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    audio = BufferAudio()
    conv = open_conversation(speko_server, speko_agent, rec, audio=audio)
    try:
        joins = speko_server.stats()["joins"]
        speko_server.pause_pongs(6)  # the client gives up on its link after 5 s, resumes on a new one
        rec.wait_for("status_changed", lambda s: s == Status.RECONNECTING, timeout=10)
        reconnection = rec.wait_for("reconnected", timeout=20)
        assert reconnection.resumed is True  # the same participant: no new join
        assert speko_server.stats()["resumes"] == 1 and speko_server.stats()["joins"] == joins
        assert conv.is_open()
        speko_agent.wait_for(lambda: "user" in speko_agent.ready_clients(), timeout=10)
        before = conv.stats().frames_played
        speko_agent.say_tone(660, 1.0)
        wait_until(lambda: float(np.abs(audio.played()[-4800 * 5:]).max(initial=0)) > 0.05,
                   what="agent audio after the reconnect")
        assert conv.stats().frames_played > before
    finally:
        conv.end_session()
    assert rec.of("error") == []


@pytest.mark.speko_server(ping_interval=1, ping_timeout=2)
def test_a_server_that_goes_away_is_reported_within_reconnect_timeout(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    conv = open_conversation(speko_server, speko_agent, rec, reconnect_timeout=3)
    started = time.monotonic()
    speko_server.stop_listening()  # the server is gone: connections refused
    speko_server.drop_connections(speko_agent.room)
    details = conv.wait_for_end(timeout=15)
    took = time.monotonic() - started
    assert (details.reason, details.message) == (DisconnectReason.TIMEOUT, "RECONNECT_TIMEOUT")
    assert took < 3 + 2, took
    (error,) = rec.of("error")
    assert error.code == ErrorCode.DISCONNECTED
    assert rec.of("disconnected") == [details]
    assert statuses(rec)[-3:] == [Status.RECONNECTING, Status.DISCONNECTING, Status.DISCONNECTED]
    with pytest.raises(SpekoClientError) as err:
        conv.send_user_message("anyone?")
    assert err.value.code == ErrorCode.NOT_CONNECTED


def test_end_session_while_reconnecting_ends_as_the_user_asked(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    conv = open_conversation(speko_server, speko_agent, rec, reconnect_timeout=30)
    speko_server.stop_listening()  # the server is gone: connections refused
    speko_server.drop_connections(speko_agent.room)
    wait_until(lambda: conv.status == Status.RECONNECTING, what="reconnecting")
    conv.set_mic_muted(True)  # local: allowed while reconnecting
    details = conv.end_session(timeout=15)
    assert details.reason == DisconnectReason.USER
    assert rec.of("error") == [] and rec.of("reconnected") == []
    assert rec.of("disconnected") == [details]


@pytest.mark.speko_server(ping_interval=1, ping_timeout=5)
def test_an_outage_longer_than_the_ping_timeout_resumes_and_delivers_each_message_once(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    conv = talking_conversation(speko_server, speko_agent, rec, reconnect_timeout=20)
    try:
        agent_hears(speko_agent)  # the microphone's negotiation is over
        with link_outage() as outage:
            conv.send_user_message("sent into the outage")  # LiveKit has not noticed: accepted
            speko_agent.send({"type": "agent_message", "text": "said during the outage"})
            rec.wait_for("status_changed", lambda s: s == Status.RECONNECTING, timeout=15)
            with pytest.raises(SpekoClientError) as err:
                conv.send_user_message("refused while reconnecting")
            assert err.value.code == ErrorCode.NOT_CONNECTED
            assert outage.dropped() > 0
        reconnection = rec.wait_for("reconnected", timeout=20)
        assert reconnection.resumed is True
        conv.send_user_message("after the outage")
        speko_agent.wait_for_packet(lambda p: p.data.get("text") == "after the outage")
        rec.wait_for("message", lambda m: m.text == "said during the outage")
        sent = [p.data.get("text") for p in speko_agent.packets() if p.data.get("type") == "user_message"]
        assert sent == ["sent into the outage", "after the outage"]  # once each, in order
        assert [m.text for m in rec.of("message")].count("said during the outage") == 1
        agent_hears(speko_agent)  # the same microphone track carries on
    finally:
        conv.end_session()


@pytest.mark.speko_server(ping_interval=1, ping_timeout=5)
def test_a_30_s_outage_rejoins_fully_with_the_defaults_and_lists_what_it_may_have_lost(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    """The link goes silent for 30 s: LiveKit notices after its ping timeout,
    the server gives the participant up, and LiveKit joins again as a new one
    (within the default ``reconnect_timeout``). What was sent into the outage
    before LiveKit noticed returned normally and never arrived: it is listed
    on ``on_reconnect``, nothing else is, and sent again it arrives once."""
    rec = Recorder()
    conv = talking_conversation(speko_server, speko_agent, rec)
    try:
        agent_hears(speko_agent)
        conv.send_user_message("well before the outage")
        sent_at = time.monotonic()
        speko_agent.wait_for_packet(lambda p: p.data.get("text") == "well before the outage")
        watch = conv._session.transport.link_watch
        wait_until(lambda: watch.unsure_since() > sent_at, timeout=4 * LinkWatch.POLL_S,
                   what="the link seen flowing after the first message")
        accepted: list[str] = []
        with link_outage():
            started = time.monotonic()
            i = 0
            while conv.status == Status.CONNECTED:
                try:
                    conv.send_user_message(f"into the outage {i}")
                    accepted.append(f"into the outage {i}")
                except SpekoClientError as exc:
                    assert exc.code == ErrorCode.NOT_CONNECTED
                i += 1
                time.sleep(0.2)  # (a message every 200 ms until LiveKit notices)
            assert accepted, "nothing was sent before LiveKit noticed"
            wait_until(lambda: time.monotonic() - started > 30, timeout=40, what="30 s of outage")
            assert conv.status == Status.RECONNECTING
        reconnection = rec.wait_for("reconnected", timeout=60)
        assert reconnection.resumed is False  # the server had given the participant up
        delivered = [p.data.get("text") for p in speko_agent.packets() if p.data.get("type") == "user_message"]
        lost = [text for text in accepted if text not in delivered]
        listed = [u.text for u in reconnection.unconfirmed]
        assert lost and listed == lost  # exactly what was lost, in order
        assert {u.kind for u in reconnection.unconfirmed} == {"send_user_message"}
        assert all(u.sent_at <= time.time() for u in reconnection.unconfirmed)
        for text in listed:  # the application sends them again
            conv.send_user_message(text)
        speko_agent.wait_for_packet(lambda p: p.data.get("text") == listed[-1])
        delivered = [p.data.get("text") for p in speko_agent.packets() if p.data.get("type") == "user_message"]
        assert delivered == ["well before the outage", *accepted]  # each once, in order
    finally:
        conv.end_session()


def test_network_faults_refuse_to_run_outside_the_test_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPEKO_SYNC_NETNS", raising=False)
    with pytest.raises(NetworkFaultUnavailable, match="namespace"), link_outage():
        pass
    with pytest.raises(ValueError, match="probability"):
        packet_loss(1.5)


def test_messages_survive_a_lossy_link_in_order(speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    rec = Recorder()
    conv = open_conversation(speko_server, speko_agent, rec)
    try:
        speko_agent.wait_for(lambda: "user" in speko_agent.ready_clients())
        texts = [f"lossy {i}" for i in range(40)]
        with packet_loss(0.1) as loss:
            for text in texts:
                conv.send_user_message(text)
            speko_agent.wait_for_packet(lambda p: p.data.get("text") == texts[-1], timeout=20)
            assert loss.dropped() > 0  # the rule bites
        received = [p.data.get("text") for p in speko_agent.packets() if p.data.get("type") == "user_message"]
        assert received == texts
        assert conv.is_open() and rec.of("error") == []
    finally:
        conv.end_session()


def test_the_server_forwards_audio_through_a_lossy_link_as_an_sfu_does(
        speko_server: LocalServer, speko_agent: ScriptedAgent) -> None:
    """At 5 % random loss on the link the agent keeps about 95 % of the
    microphone's frames (96 % on average here): a lost packet is a gap, never
    a reason to drop the packets after it. The bound leaves room for the
    randomness of the loss and the frames in flight; aiortc's own jitter buffer
    kept about 80 %."""
    conv = talking_conversation(speko_server, speko_agent)
    try:
        agent_hears(speko_agent)
        with packet_loss(0.05) as loss:
            speko_agent.clear_audio()
            first = conv.stats().frames_captured
            wait_until(lambda: conv.stats().frames_captured - first >= 1000, timeout=25, what="10 s of microphone")
            sent = conv.stats().frames_captured - first
            received = len(speko_agent.received_audio("user")) / 480  # 10 ms frames at 48 kHz
            assert loss.dropped() > 0
        print(f"at 5 % loss the agent got {received:.0f} of {sent} frames ({received / sent:.1%})")
        assert received / sent >= 0.90, (received, sent)
    finally:
        conv.end_session()
