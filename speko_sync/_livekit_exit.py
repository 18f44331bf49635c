"""At interpreter exit: LiveKit's native callbacks stopped, and those under
way let return, before the interpreter finalizes (imported for its exit hook
by every part of speko_sync that uses ``livekit.rtc``)."""

from __future__ import annotations

import atexit
import os
import sys
import time

#: How long, at exit, LiveKit's native callbacks under way are given to return
QUIESCE_S = 0.05


def _quiesce_livekit() -> None:
    """Last at interpreter exit: stop LiveKit's native callbacks, and let those
    under way return before the interpreter finalizes.

    LiveKit's native threads call into Python (ctypes) for a while after a
    room is left: libwebrtc's teardown logs, one callback each, for 10-40 ms.
    CPython before 3.14 ends a thread that wants the GIL once finalization has
    begun with ``pthread_exit()``, whose forced unwind cannot cross Rust's
    non-unwinding thread entry: the process aborts ("panic in a function that
    cannot unwind"). LiveKit's own exit hook (``livekit_ffi_dispose``) stops
    new callbacks but does not wait for those already under way. A plain
    ``atexit`` hook runs after threading's (so after the runtime's, which
    ends the conversations left open); before or after LiveKit's own, it
    works the same."""
    module = sys.modules.get("livekit.rtc._ffi_client")
    client = getattr(getattr(module, "FfiClient", None), "_instance", None)
    if client is None or getattr(client, "_pid", os.getpid()) != os.getpid():
        return
    client._dispose()  # what LiveKit's own exit hook does (once only): no callback starts after it
    time.sleep(QUIESCE_S)  # with the GIL free, the callbacks under way take it and return


atexit.register(_quiesce_livekit)
