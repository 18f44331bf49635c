"""Clock drift between a sound card and the sender, simulated: the speaker's
ring (``AudioIO``, with the device's buffers taken at a clock that runs off)
and the agent's frames arriving at the network's clock, through
``ElasticPlayback`` as the conversation's audio loop runs it. Minutes of
simulated clock run in a second or two, so hours' worth of drift is covered."""

from __future__ import annotations

import numpy as np
import pytest

from speko_sync._elastic import ElasticPlayback
from speko_sync.audio import PLAYBACK_DROPPED, UNDERRUNS, AudioIO

RATE = 48000


def simulate(device_ppm: float, seconds: float, *, elastic: bool = True, buffer: int = 960,
             jitter_s: float = 0.004, seed: int = 1, lead_ms: int = 0,
             stalls: tuple[tuple[float, float], ...] = ()) -> dict[str, object]:
    """The agent's 10 ms frames (a 440 Hz sine) arrive every 10 ms of the
    network's clock, each up to ``jitter_s`` late (in order); the device takes
    ``buffer`` samples at a clock ``device_ppm`` fast (negative: slow).
    ``lead_ms`` of audio is queued at the start (a burst); each of ``stalls``
    (start, seconds) holds back the frames due in it until it ends. Returns
    the counters, the least headroom of each second (ms, as the controller
    measures it), the controller's rate each second, the slack each second,
    and what was played."""
    rng = np.random.default_rng(seed)
    io = AudioIO(RATE, playback_slack_ms=10, playback_max_slack_ms=60)
    io.elastic = elastic
    now = [0.0]
    io.clock = lambda: now[0]
    control = ElasticPlayback()
    out, scratch = np.zeros(buffer, dtype=np.int16), np.zeros(buffer, dtype=np.float32)
    phase = 2 * np.pi * 440 / RATE
    n_frames = int(seconds * 100)
    arrivals = np.arange(n_frames) * 0.01 + rng.uniform(0, jitter_s, n_frames)
    for start, length in stalls:
        held = (arrivals >= start) & (arrivals < start + length)
        arrivals[held] = start + length
    arrivals = np.maximum.accumulate(arrivals)
    io.playback.write(np.zeros(RATE * lead_ms // 1000, dtype=np.int16))
    k, t_device = 0, 0.015
    spares: list[tuple[float, float]] = []
    rates, played, slacks = [], [], []
    observe = control.observe

    def noted(spare: float, at: float, slack: int, rate: int) -> None:
        spares.append((at, 1000 * spare / rate))
        observe(spare, at, slack, rate)

    control.observe = noted  # type: ignore[method-assign]
    while k < n_frames:
        if arrivals[k] <= t_device:
            now[0] = arrivals[k]
            frame = np.rint(8000 * np.sin(phase * (k * 480 + np.arange(480)))).astype(np.int16)
            if elastic:
                control.watch(io, now[0])
                frame = control.process(frame, 0)
                if not k % 100:
                    rates.append(control.ppm)
                    slacks.append(1000 * io.slack / RATE)
            io.playback.write(frame)
            k += 1
        else:
            now[0] = t_device
            io.render(out, scratch)
            played.append(out.copy())
            t_device += period(device_ppm, buffer)
    lows = np.full(int(seconds) + 1, np.inf)
    for at, spare in spares:
        lows[int(at)] = min(lows[int(at)], spare)
    return {"dropped": int(io.counters[PLAYBACK_DROPPED]), "underruns": int(io.counters[UNDERRUNS]),
            "lows": lows[np.isfinite(lows)], "rates": np.array(rates), "slacks": np.array(slacks),
            "played": np.concatenate(played)}


def period(device_ppm: float, buffer: int) -> float:
    return buffer / (RATE * (1 + device_ppm * 1e-6))


@pytest.mark.parametrize("device_ppm", [500.0, -500.0, 120.0, 0.0])
def test_drift_is_absorbed_without_trims_or_gaps_and_the_depth_stays_flat(device_ppm: float) -> None:
    """Ten minutes of a clock 500 ppm off: 300 ms of drift, which the trims
    would have cut about thirty times (or left as as many gaps)."""
    run = simulate(device_ppm, 600.0)
    assert run["dropped"] == 0 and run["underruns"] == 0
    lows, rates = run["lows"], run["rates"]
    assert isinstance(lows, np.ndarray) and isinstance(rates, np.ndarray)
    settled = lows[60:]  # after the first minute
    assert abs(float(np.median(settled)) - 10.0) < 2.0  # held at the slack
    assert np.abs(settled - 10.0).max() < 10.0  # flat within +-10 ms all the while
    assert np.abs(rates).max() <= ElasticPlayback.DRIFT_LIMIT_PPM  # never more than 0.08 % of rate change
    assert abs(float(np.median(rates[-120:])) - device_ppm) < 60  # the controller found the clocks' difference


@pytest.mark.parametrize("device_ppm", [500.0, -500.0])
def test_the_trim_policy_alone_cuts_or_gaps_under_the_same_drift(device_ppm: float) -> None:
    """The same simulation without the elastic playback: what it replaces."""
    run = simulate(device_ppm, 120.0, elastic=False)
    if device_ppm < 0:  # a slow device: depth creeps up and is cut
        assert isinstance(run["dropped"], int) and run["dropped"] >= 3
    else:  # a fast one: the ring runs dry
        assert isinstance(run["underruns"], int) and run["underruns"] >= 3


def test_the_resampled_waveform_stays_continuous() -> None:
    """The rate changes never show as a step in the played sine: every
    sample-to-sample difference stays within what a 440 Hz sine at this level
    has (2 pi 440 / 48000 * 8000, about 461)."""
    run = simulate(-500.0, 60.0, jitter_s=0.0)
    played = run["played"]
    assert isinstance(played, np.ndarray)
    start = int(np.flatnonzero(played)[0])
    steps = np.abs(np.diff(played[start:].astype(np.int32)))
    assert steps.max() < 480


def test_an_excess_after_a_burst_is_played_out_faster_not_cut() -> None:
    """A burst leaves 80 ms more than the slack: played out 5 % faster within
    a few seconds, nothing dropped, no gap."""
    run = simulate(0.0, 8.0, lead_ms=90)
    lows = run["lows"]
    assert isinstance(lows, np.ndarray)
    assert lows[0] > 70  # the excess, measured
    assert lows[-1] < 25  # and played out
    assert run["dropped"] == 0 and run["underruns"] == 0


def test_a_stall_widens_the_slack_for_minutes_so_the_next_like_it_plays_without_a_gap() -> None:
    """A 35 ms stall of the agent's frames underruns once and widens the slack;
    the same stall a minute later finds it still wide (a loop-clocked trim
    policy narrows after 30 s and would gap again); two minutes after that,
    it has narrowed back to 10 ms without a cut."""
    run = simulate(0.0, 300.0, stalls=((20.0, 0.035), (80.0, 0.035)))
    assert run["underruns"] == 1 and run["dropped"] == 0
    slacks = run["slacks"]
    assert isinstance(slacks, np.ndarray)
    assert slacks[30] == 20.0 and slacks[90] == 20.0 and slacks[-1] == 10.0


def test_a_small_excess_is_played_out_in_seconds_not_left_to_the_drift_controller() -> None:
    """20 ms more than the slack (what a burst of late frames leaves once the
    speaker has started again after an underrun) is gone within three seconds:
    at the drift controller's 0.08 % it would take 25 s, the depth standing
    20 ms high all that while."""
    run = simulate(0.0, 6.0, lead_ms=40)
    lows = run["lows"]
    assert isinstance(lows, np.ndarray)
    assert lows[0] > 25  # the excess, measured
    assert np.all(lows[3:] < 16)  # played out: within a few ms of the slack
    assert run["dropped"] == 0 and run["underruns"] == 0
