"""A loop-clocked microphone's lead over real time (pure arithmetic,
simulated clocks): a stall's catch-up reaches the network as at most
``CAPTURE_BACKLOG_S`` of burst, while ticks that are jittery, come in pairs
(an agent's frames arriving two at a time) or run a little fast never lose a
frame to it."""

import random

import pytest

from speko_sync._capture import CAPTURE_BACKLOG_S, SendLead

FRAME_S = 0.01


class Pump:
    """What the pump does with ``SendLead`` at each tick: drop the oldest
    frames beyond the room, send the rest."""

    def __init__(self) -> None:
        self.lead = SendLead(FRAME_S)
        self.waiting = 0
        self.sent = self.dropped = 0
        self.most_lead = 0.0

    def tick(self, now: float, captured: int) -> int:
        self.waiting += captured
        room = self.lead.room(now)
        drop = max(0, self.waiting - room)
        self.dropped += drop
        self.waiting -= drop
        sent, self.waiting = self.waiting, 0
        for _ in range(sent):
            self.lead.sent()
        self.sent += sent
        self.most_lead = max(self.most_lead, self.lead.lead)
        return drop


def test_a_stalls_catch_up_sends_at_most_the_backlog_and_drops_the_rest() -> None:
    pump, rng = Pump(), random.Random(1)
    t = 0.0
    for _ in range(100):  # a second of ticks on time, give or take a millisecond
        t += FRAME_S
        assert pump.tick(t + rng.uniform(0, 0.001), 1) == 0
    t += 0.08  # the loop stalls 80 ms, then runs the 8 missed ticks back to back
    for k in range(8):
        pump.tick(t + k * 1e-5, 1)
    assert pump.dropped == 4
    assert pump.lead.lead <= CAPTURE_BACKLOG_S + FRAME_S / 2
    pump.most_lead = 0.0
    for _ in range(1000):  # then real time again, with 4 ms of timer jitter: nothing more is lost
        t += FRAME_S
        assert pump.tick(t + rng.uniform(0, 0.004), 1) == 0
    assert pump.most_lead <= CAPTURE_BACKLOG_S + FRAME_S / 2
    assert pump.lead.lead < 0.015  # the burst's lead is forgotten within seconds


def test_a_burst_found_waiting_keeps_the_newest_backlog() -> None:
    pump = Pump()
    pump.tick(1.0, 30)  # 300 ms waited in the ring (a device-clocked capture during a stall)
    assert (pump.sent, pump.dropped) == (4, 26)
    assert pump.tick(1.0, 1) == 1  # and nothing more until time passes
    assert pump.tick(1.01, 1) == 0


@pytest.mark.parametrize(("ppm", "chunk"), [(0, 1), (0, 2), (-500, 2), (500, 1), (2000, 1)])
def test_jittery_paired_or_slightly_fast_ticks_never_lose_a_frame(ppm: int, chunk: int) -> None:
    """Thirty minutes of frames at a clock ``ppm`` off, ``chunk`` at a time,
    taken by a loop ticking every 10 ms with up to 4 ms of timer jitter."""
    pump, rng = Pump(), random.Random(ppm * 10 + chunk)
    produced = 0
    t = 0.0
    for _ in range(30 * 60 * 100):
        t += FRAME_S
        now = t + rng.uniform(0, 0.004)
        due = int(now * 100 * (1 + ppm * 1e-6)) // chunk * chunk  # the device's callbacks so far
        pump.tick(now, due - produced)
        produced = due
    assert pump.dropped == 0
    assert pump.sent == produced
