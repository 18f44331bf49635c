"""A single-producer, single-consumer ring of int16 samples.

Lock-free under the GIL: the producer only advances ``_w`` after copying, the
consumer only advances ``_r`` after copying, and each index is written by one
side alone. Reads and writes copy through numpy views of one preallocated
array, so the audio callbacks that use it allocate no sample buffers.
"""

from __future__ import annotations

import numpy as np


class Ring:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._w = 0  # total samples ever written (producer-owned)
        self._r = 0  # total samples ever read or skipped (consumer-owned)

    def available(self) -> int:
        """Samples ready to read."""
        return self._w - self._r

    @property
    def total_read(self) -> int:
        """Samples ever read or skipped."""
        return self._r

    @property
    def total_written(self) -> int:
        """Samples ever written."""
        return self._w

    def space(self) -> int:
        """Samples that can be written without overwriting unread ones."""
        return self.capacity - (self._w - self._r)

    def write(self, data: np.ndarray) -> int:
        """Producer: copy as much of ``data`` as fits; return how many samples."""
        n = min(len(data), self.space())
        if n <= 0:
            return 0
        start = self._w % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start:start + first] = data[:first]
        if n > first:
            self._buf[:n - first] = data[first:n]
        self._w += n
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Consumer: fill the front of ``out``; return how many samples."""
        n = min(len(out), self.available())
        if n <= 0:
            return 0
        start = self._r % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start:start + first]
        if n > first:
            out[first:n] = self._buf[:n - first]
        self._r += n
        return n

    def skip(self, n: int) -> int:
        """Consumer: drop the ``n`` oldest samples (or all there are)."""
        n = max(0, min(n, self.available()))
        self._r += n
        return n

    def mark(self) -> int:
        """Producer: a mark of everything written so far (for :meth:`skip_to`)."""
        return self._w

    def skip_to(self, mark: int) -> int:
        """Consumer: drop whatever of what was written before ``mark`` is still
        unread; return how many samples."""
        return self.skip(mark - self._r)
