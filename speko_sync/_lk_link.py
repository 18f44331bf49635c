"""Whether a LiveKit room's traffic is flowing: for the messages a full
rejoin may have lost (``Reconnection.unconfirmed``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from livekit import rtc

from ._frames import cancel_all
from ._loop import within


class LinkWatch:
    """Room loop. While joined (and not ``reconnecting()``), every
    :attr:`POLL_S` seconds: did any of the room's traffic (media, RTCP, data,
    on either peer connection) arrive since the last look? Then it was still
    flowing after that look. A message sent before that, less
    :attr:`IN_FLIGHT_S`, reached the server; one sent after may not have."""

    POLL_S = 2.0
    IN_FLIGHT_S = 1.0

    def __init__(self, reconnecting: Callable[[], bool]) -> None:
        self._reconnecting = reconnecting
        self._heard_after = 0.0  # monotonic
        self._task: asyncio.Task[None] | None = None

    def start(self, room: rtc.Room) -> None:
        self._heard_after = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._watch(room))

    def unsure_since(self) -> float:
        """Monotonic: messages sent from then on may not have reached the server."""
        return self._heard_after - self.IN_FLIGHT_S

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_all([task])

    async def _watch(self, room: rtc.Room) -> None:
        last, looked = -1, time.monotonic()
        while True:
            await asyncio.sleep(self.POLL_S)
            now = time.monotonic()
            if self._reconnecting() or not room.isconnected():
                last, looked = -1, now  # (the counters start again on a new session)
                continue
            try:
                stats = await within(room.get_rtc_stats(), self.POLL_S)
            except Exception:  # (a link going down): nothing learnt
                continue
            total = received(stats.publisher_stats) + received(stats.subscriber_stats)
            if total != last:
                if last >= 0:
                    self._heard_after = looked
                last = total
            looked = now


def received(stats: list[Any]) -> int:
    """The sum of every ``bytes_received`` and ``packets_received`` in a peer
    connection's stats: it grows while anything arrives on it."""
    total = 0
    for stat in stats:
        for _, kind in stat.ListFields():
            for _, part in kind.ListFields():
                for field in ("bytes_received", "packets_received"):
                    total += int(getattr(part, field, 0) or 0)
    return total
