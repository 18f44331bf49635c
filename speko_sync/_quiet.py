"""Keep native audio libraries quiet while they probe.

PortAudio's initialisation (and opening a stream) makes ALSA and JACK print dozens
of lines to the process's stderr ("ALSA lib confmisc.c:855:(parse_card) cannot find
card '0'", "jack server is not running or cannot be started", ...). They write to
file descriptor 2 directly, below Python, so :func:`quiet_native_output` points
fd 2 at a temporary file for exactly as long as such a call takes, then restores
it and logs what was said at debug level on the ``speko_sync.audio`` logger.
Python exceptions pass through unchanged; the library's own errors stay clear.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

log = logging.getLogger("speko_sync.audio")
_lock = threading.Lock()  # one redirection at a time: fd 2 is process-wide


@contextlib.contextmanager
def quiet_native_output(what: str) -> Iterator[None]:
    """Silence fd 2 while ``what`` (a native call) runs; log what it printed."""
    with _lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no fd 2 (or a closed stderr): nothing to protect
            yield
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                if log.isEnabledFor(logging.DEBUG):
                    sink.seek(0)
                    said = sink.read().decode("utf-8", errors="replace").strip()
                    if said:
                        log.debug("%s printed (suppressed):\n%s", what, said)
