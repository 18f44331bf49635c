"""What was sent lately, for the messages a full rejoin may have lost."""

from __future__ import annotations

import collections
import time

from .events import UnconfirmedSend


class SendLog:
    """Room loop. The messages whose sends returned in the last
    :attr:`KEEP_S` seconds (at most :attr:`MOST`), with the monotonic time
    each returned."""

    KEEP_S = 120.0
    MOST = 2000

    def __init__(self) -> None:
        self._sent: collections.deque[tuple[float, UnconfirmedSend]] = collections.deque(maxlen=self.MOST)

    def sent(self, kind: str, text: str) -> None:
        now = time.monotonic()
        self._sent.append((now, UnconfirmedSend(kind=kind, text=text, sent_at=time.time())))
        while self._sent and self._sent[0][0] < now - self.KEEP_S:
            self._sent.popleft()

    def between(self, start: float, end: float) -> tuple[UnconfirmedSend, ...]:
        """Those whose sends returned from ``start`` to ``end`` (monotonic), in order."""
        return tuple(message for at, message in self._sent if start <= at <= end)
