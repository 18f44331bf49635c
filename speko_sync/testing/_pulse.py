"""Virtual sound devices: a private PulseAudio daemon with a null-sink speaker
and a microphone fed from a second null sink, so real PortAudio (through
PyAudio and ALSA's pulse plugin) can be tested on a machine with no sound card.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RATE = 48_000


class PulseUnavailable(RuntimeError):
    """PulseAudio cannot be started here; ``str(err)`` says why."""


class Recording:
    """Audio captured from the virtual speaker in the background."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        while True:
            data = self._proc.stdout.read1(4800)  # type: ignore[attr-defined]
            if not data:
                return
            with self._lock:
                self._chunks.append(data)

    def audio(self) -> np.ndarray:
        """What was recorded so far, mono int16 at 48 kHz."""
        with self._lock:
            raw = b"".join(self._chunks)
        return np.frombuffer(raw[: len(raw) // 2 * 2], dtype=np.int16)

    def stop(self) -> np.ndarray:
        self._proc.terminate()
        self._proc.wait(5)
        self._thread.join(5)
        return self.audio()


class VirtualSoundDevices:
    """A private PulseAudio daemon for this process (and its children).

    While running, ``PULSE_RUNTIME_PATH``/``PULSE_SERVER`` point at it, so PortAudio's
    ``default``/``pulse`` devices play into the virtual speaker and record from
    the virtual microphone. Use as a context manager. Raises
    :class:`PulseUnavailable` when the ``pulseaudio`` tools are missing or the
    daemon does not come up.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> VirtualSoundDevices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> VirtualSoundDevices:
        for tool in ("pulseaudio", "pactl", "pacat"):
            if shutil.which(tool) is None:
                raise PulseUnavailable(f"'{tool}' is not installed (Debian: pulseaudio, pulseaudio-utils)")
        self._dir = Path(tempfile.mkdtemp(prefix="speko-pulse-"))
        env = {"PULSE_RUNTIME_PATH": str(self._dir), "HOME": str(self._dir),
               "PULSE_SERVER": f"unix:{self._dir / 'native'}"}
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._daemon = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
             "--use-pid-file=no", "--system=no",
             "-L", "module-native-protocol-unix",
             "-L", f"module-null-sink sink_name=speaker rate={RATE} channels=1",
             "-L", f"module-null-sink sink_name=micfeed rate={RATE} channels=1",
             "-L", "module-remap-source source_name=mic master=micfeed.monitor channels=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                err = self._daemon.stderr.read().decode(errors="replace") if self._daemon.stderr else ""
                self.stop()
                raise PulseUnavailable(f"the PulseAudio daemon did not start: {err.strip()[-500:]}")
            time.sleep(0.05)
        self.pactl("set-default-sink", "speaker")
        self.pactl("set-default-source", "mic")
        return self

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], capture_output=True, text=True, check=True).stdout.strip()

    def play_into_microphone(self, samples: np.ndarray) -> subprocess.Popen[bytes]:
        """Start playing int16 mono 48 kHz ``samples`` into the virtual microphone;
        returns the player process (wait on it to know it finished)."""
        proc = subprocess.Popen(["pacat", "--playback", "-d", "micfeed", "--raw", "--format=s16le",
                                 f"--rate={RATE}", "--channels=1", "--latency-msec=20"],
                                stdin=subprocess.PIPE)
        assert proc.stdin is not None
        threading.Thread(target=_write_all, args=(proc, samples.astype(np.int16).tobytes()), daemon=True).start()
        return proc

    def record_speaker(self) -> Recording:
        """Start recording what is played on the virtual speaker."""
        proc = subprocess.Popen(["pacat", "--record", "-d", "speaker.monitor", "--raw", "--format=s16le",
                                 f"--rate={RATE}", "--channels=1", "--latency-msec=20"],
                                stdout=subprocess.PIPE)
        return Recording(proc)

    def loop_speaker_into_microphone(self, latency_ms: int = 30) -> None:
        """Route everything played on the speaker into the microphone too, as
        open speakers next to a microphone would."""
        self.pactl("load-module", "module-loopback", "source=speaker.monitor", "sink=micfeed",
                   f"latency_msec={latency_ms}")

    def crash(self) -> None:
        """Kill the sound server at once (SIGKILL), as when a device or the audio
        stack dies mid-call: every stream on it stops. :meth:`stop` still cleans up."""
        if self._daemon is not None and self._daemon.poll() is None:
            self._daemon.kill()
            self._daemon.wait(5)

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.terminate()
            try:
                self._daemon.wait(5)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
                self._daemon.wait(5)
            self._daemon = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _write_all(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
