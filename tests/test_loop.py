"""``within``: a timed await whose cancel is never lost, ``cancel_all``: a bounded stop, and the poll loop
(``LinkWatch``) that hung a session's release when it was (pure asyncio; the
room is a stand-in with the two methods the watch calls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from speko_sync._frames import cancel_all
from speko_sync._lk_link import LinkWatch
from speko_sync._loop import within


def test_a_cancel_in_the_same_pass_as_the_result_is_not_lost() -> None:
    """Cancelled in the very pass of the loop in which the awaited result
    arrives: ``asyncio.wait_for`` on 3.10/3.11 hands the task the result and it
    runs on; ``within`` raises ``CancelledError``."""
    async def main() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        arrived = loop.create_future()
        polls = 0

        async def poll() -> None:
            nonlocal polls
            while polls < 100:  # (bounded: where the cancel is lost, the test fails rather than hangs)
                polls += 1
                await within(arrived if polls == 1 else asyncio.sleep(0.001), 2)

        task = loop.create_task(poll())
        await asyncio.sleep(0.01)  # the poll waits for the result
        arrived.set_result(None)
        task.cancel()
        done, _ = await asyncio.wait((task,), timeout=2)
        return bool(done) and task.cancelled(), polls

    cancelled, polls = asyncio.run(main())
    assert cancelled and polls == 1, f"the poll ran on after its cancel ({polls} polls)"


def test_the_timeout_cancels_the_awaitable_and_raises_timeout_error() -> None:
    async def main() -> bool:
        slow = asyncio.ensure_future(asyncio.sleep(10))
        with pytest.raises(asyncio.TimeoutError):
            await within(slow, 0.02)
        return slow.cancelled()

    assert asyncio.run(main())


def test_a_result_or_an_exception_comes_through() -> None:
    async def fails() -> None:
        raise ValueError("bad frame")

    async def main() -> int:
        with pytest.raises(ValueError, match="bad frame"):
            await within(fails(), 1)
        return await within(asyncio.sleep(0, 7), 1)

    assert asyncio.run(main()) == 7


class _Room:
    """``isconnected`` and ``get_rtc_stats``; each call's stats are a future
    the test resolves."""

    def __init__(self) -> None:
        self.asked: asyncio.Queue[asyncio.Future[Any]] = asyncio.Queue()

    def isconnected(self) -> bool:
        return True

    def get_rtc_stats(self) -> asyncio.Future[Any]:
        stats = asyncio.get_running_loop().create_future()
        self.asked.put_nowait(stats)
        return stats


def test_the_link_watch_stops_when_its_stats_arrive_as_it_is_stopped() -> None:
    """The session's release stops the watch; the stats it asked for arrive
    in the same pass. With the lost cancel it polled for ever and the release
    (``end_session``) hung in ``disconnecting``."""
    class Fast(LinkWatch):
        POLL_S = 0.01

    async def main() -> bool:
        room = _Room()
        watch = Fast(lambda: False)
        watch.start(room)  # type: ignore[arg-type]
        stats = await asyncio.wait_for(room.asked.get(), 2)
        stats.set_result(type("Stats", (), {"publisher_stats": [], "subscriber_stats": []})())
        stopping = asyncio.ensure_future(watch.stop())
        done, _ = await asyncio.wait((stopping,), timeout=2)
        return bool(done)

    assert asyncio.run(main()), "LinkWatch.stop() did not return"


def test_cancel_all_leaves_a_task_that_ignores_its_cancel_rather_than_hang() -> None:
    """What stops the pumps and the link watch waits a second at most: a task
    that swallows its cancel cannot keep a session's release from leaving the
    room."""
    async def main() -> tuple[bool, bool, bool]:
        release = asyncio.Event()

        async def stubborn() -> None:
            while not release.is_set():
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    pass

        async def fails() -> None:
            raise ValueError("a pump's error, already reported")

        hard, broken, quiet = (asyncio.ensure_future(c) for c in (stubborn(), fails(), asyncio.sleep(10)))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(cancel_all([hard, broken, quiet], timeout=0.05))
        done, _ = await asyncio.wait((stopping,), timeout=2)
        left = not hard.done()
        release.set()
        hard.cancel()
        await asyncio.wait((hard,), timeout=2)
        return bool(done), left, quiet.cancelled() and broken.done()

    stopped, left, others = asyncio.run(main())
    assert stopped and left and others
