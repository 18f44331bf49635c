"""Audio backends: where the microphone audio comes from and where the agent's
audio goes.

Every backend moves 16-bit mono audio between its device and two rings owned by
the conversation (capture and playback); the conversation's loop thread does the
rest (10 ms framing, resampling, audio processing, LiveKit). Backends:

- :class:`PyAudioBackend` (the default): a PyAudio input/output stream pair in
  callback mode on real sound devices;
- :class:`NullAudio`: no devices; a silent microphone, the agent's audio
  discarded (servers, CI);
- :class:`BufferAudio`: microphone audio from numpy arrays or WAV files, the
  agent's audio collected as numpy arrays (batch jobs, tests).
"""

from __future__ import annotations

import collections
import threading
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._quiet import quiet_native_output
from ._ring import Ring

__all__ = ["AudioBackend", "AudioConstraints", "AudioDevice", "BufferAudio", "NullAudio", "PyAudioBackend",
           "list_audio_devices"]

SAMPLE_RATE = 48_000
FRAME_MS = 10

# indices of AudioIO.counters; each is written by one thread only
(CAPTURED, PLAYED, UNDERRUNS, OVERRUNS, INPUT_OVERFLOWS, OUTPUT_UNDERFLOWS, PLAYBACK_DROPPED,
 PLAYBACK_OVERRUNS, CAPTURE_DROPPED, BARGE_IN_DROPPED) = range(10)


@dataclass(frozen=True)
class AudioConstraints:
    """Microphone processing (LiveKit's WebRTC audio processing on 10 ms frames),
    each on by default. Echo cancellation uses the played audio as reference, so
    it works on open speakers. Raises nothing."""

    echo_cancellation: bool = True
    noise_suppression: bool = True
    auto_gain_control: bool = True


class AudioIO:
    """What a backend exchanges with the conversation. Created by the
    conversation; the rings are sized for ``rate`` (the device rate).

    ``volume`` (0..1) is applied by the backend to everything it plays.
    ``counters`` is a preallocated int64 array indexed by the module constants.
    ``microphone`` false means a text-only session: a backend with a device
    opens the speaker only.

    Playback jitter policy (:meth:`render`): the agent's audio arrives in
    10 ms frames; the speaker takes it in buffers of its own size. The ring
    keeps a *slack* of ``playback_slack_ms`` beyond what each buffer needs (the
    conversation uses one 10 ms frame, widening to at most 60 ms, for
    device-clocked backends; none, widening to one frame, for loop-clocked ones,
    whose ticks share the loop with the arriving frames):
    whenever the least headroom seen over one second of playback (queued audio
    minus the buffer being filled) exceeds the slack, the excess, oldest first,
    is dropped, so latency cannot creep up after a burst. An underrun (the
    speaker found too little) widens the slack by 10 ms, up to
    ``playback_max_slack_ms``; thirty seconds without one (:attr:`CALM_S`) narrow it again by
    10 ms, down to ``playback_slack_ms`` (:attr:`ELASTIC_CALM_S`, longer, for
    an elastic playback, whose narrowing costs no cut): a jittery source buys
    itself a deeper buffer instead of repeated gaps. More than ``playback_max_ms`` queued is
    dropped at once. ``cushion`` (samples, written by the conversation's audio
    loop) is depth the conversation built on purpose by playing slower (see
    ``speko_sync._elastic``): it adds to the slack, so it is not trimmed.

    ``elastic`` (set by the conversation for a device with a clock of its own
    and agent audio that arrives at the sender's clock): no trims at all. The
    conversation resamples the agent's audio very slightly to hold the depth
    at the slack instead (``speko_sync._elastic``), so clock drift costs no
    cut and no gap. ``read_clock`` is what it measures the depth with: the
    ring's read count after the speaker's last buffer and that buffer's
    ``clock()`` (``time.monotonic``), the count written last (a reader that
    finds the count equal to the ring's has the time that goes with it).
    Playback (re)starts, at the beginning and after a barge-in or an
    underrun, once the ring holds the slack; silence plays until then
    (``playing`` is false).

    ``echo_reference`` (the conversation's echo cancellation): :meth:`render`
    also copies everything it hands the speaker, at the volume, into
    ``played`` (a one-second ring the conversation's microphone pump reads as
    the canceller's reference, in step with the microphone; when it is full,
    the newest is not kept).
    """

    #: calm seconds after which the slack narrows by a frame
    CALM_S = 30
    #: the same for an elastic playback: it remembers a stall for two
    #: minutes, as the next one may come as late
    ELASTIC_CALM_S = 120

    def __init__(self, rate: int, *, playback_slack_ms: int = 10, playback_max_slack_ms: int = 60,
                 playback_max_ms: int = 200, microphone: bool = True, echo_reference: bool = False) -> None:
        self.rate = rate
        self.microphone = microphone  # false: a text-only session, no microphone is opened
        self.capture = Ring(rate)  # 1 s: the loop drains it every 10 ms
        self.playback = Ring(rate // 2)
        self.played = Ring(rate) if echo_reference else None
        self.volume = 1.0
        self.counters = np.zeros(10, dtype=np.int64)
        self._frame = rate // 100
        self.playback_max = rate * playback_max_ms // 1000
        self.min_slack = rate * playback_slack_ms // 1000
        self.max_slack = max(self.min_slack, rate * playback_max_slack_ms // 1000)
        self.slack = self.min_slack
        self.cushion = 0
        self.elastic = False
        self.read_clock = np.zeros(2)  # [read count, clock()] after the last buffer
        self.clock = time.monotonic  # (a simulation may give its own)
        self._flush_mark = 0  # written by the loop (flush), read by render
        self._window = rate  # one second of rendered audio
        self._window_left = self._window
        self._window_min = self.playback.capacity
        self._clean = 0
        self._started = False

    def flush_playback(self) -> None:
        """Loop side: drop all agent audio queued so far (a barge-in). The
        speaker's side drops it at its next buffer, so the speaker goes quiet
        within one device buffer; the ring keeps one writer and one reader."""
        self._flush_mark = self.playback.mark()

    @property
    def playing(self) -> bool:
        """The speaker is playing from the ring (not waiting for it to fill)."""
        return self._started

    def playback_depth_ms(self) -> float:
        return 1000.0 * self.playback.available() / self.rate

    def render(self, out: np.ndarray, scratch: np.ndarray) -> None:
        """Fill ``out`` (int16) with the next played samples at ``volume``, using
        ``scratch`` (float32, same length); pads with silence on underrun and
        keeps latency bounded by the jitter policy in the class docstring.
        Allocation-free: safe in an audio callback (one thread at a time)."""
        ring = self.playback
        flushed = ring.skip_to(self._flush_mark)
        if flushed:  # a barge-in: the silence until new audio is no underrun
            self.counters[BARGE_IN_DROPPED] += flushed
            self._started = False
        need = len(out)
        if self.elastic and not self._started and ring.available() < need + self.slack:
            out[:] = 0  # (re)starting: the ring fills to the slack first, the depth the controller holds
            if self.played is not None:
                self.played.write(out)
            return
        headroom = ring.available() - need
        cushion = self.cushion
        if headroom > self.playback_max:  # a burst (the loop was stalled): drop at once
            ring.skip(headroom - self.slack - cushion)
            self.counters[PLAYBACK_DROPPED] += 1
            headroom = self.slack + cushion
        spare = headroom - cushion  # the cushion may change within the window: it is not spare at any time
        if spare < self._window_min:
            self._window_min = spare
        self._window_left -= need
        if self._window_left <= 0:  # one second without underrun
            if self._started and not self.elastic and self._window_min > self.slack:
                ring.skip(self._window_min - self.slack)
                self.counters[PLAYBACK_DROPPED] += 1
            self._clean += 1
            if self._clean >= (self.ELASTIC_CALM_S if self.elastic else self.CALM_S) and self.slack > self.min_slack:
                self.slack = max(self.min_slack, self.slack - self._frame)
                self._clean = 0
            self._window_left = self._window
            self._window_min = ring.capacity
        n = ring.read_into(out)
        restart = False
        if n < need:
            out[n:] = 0
            if self._started:
                self.counters[UNDERRUNS] += 1
                self.slack = min(self.max_slack, self.slack + self._frame)
                self._clean = 0
                self._window_left = self._window
                self._window_min = ring.capacity
                restart = self.elastic  # start again once the ring holds the (wider) slack
        if n:
            self._started = True
            self.counters[PLAYED] += n
        if restart:
            self._started = False
        clock = self.read_clock
        clock[1] = self.clock()
        clock[0] = ring.total_read
        volume = self.volume
        if volume != 1.0:  # three unbuffered in-place passes: no temporaries
            np.copyto(scratch, out, casting="unsafe")
            np.multiply(scratch, np.float32(volume), out=scratch)
            np.copyto(out, scratch, casting="unsafe")
        if self.played is not None:
            self.played.write(out)

    def capture_samples(self, data: np.ndarray) -> None:
        """Queue microphone samples (int16); counts an overrun if the ring is full."""
        if self.capture.write(data) < len(data):
            self.counters[OVERRUNS] += 1
        self.counters[CAPTURED] += len(data)


class AudioBackend:
    """Base of the audio backends.

    ``rate`` is the device sample rate in Hz (the conversation resamples to and
    from LiveKit's 48 kHz). A backend with ``clocked_by_loop`` true has no clock
    of its own: the conversation calls :meth:`tick` every 10 ms on its loop
    thread. :meth:`open` may raise any exception: the conversation reports it as
    MICROPHONE_FAILED.
    """

    rate: int = SAMPLE_RATE
    clocked_by_loop = True
    #: Seconds of audio between capture and playback the echo canceller should expect.
    latency_s: float = 0.0

    def prepare(self) -> int:
        """Find the device rate in Hz, before the rings are sized for it (called
        on a worker thread; may raise, reported as MICROPHONE_FAILED). A
        text-only session calls ``prepare(microphone=False)`` instead, on
        backends that accept it."""
        return self.rate

    def open(self, io: AudioIO) -> None:
        """Start moving audio between the devices and ``io``'s rings (called on
        a worker thread). Raises whatever the device raises; the conversation
        reports it as MICROPHONE_FAILED."""
        self.io = io

    def tick(self, samples: int) -> None:
        """Loop-clocked backends: move ``samples`` of microphone audio into the
        capture ring and take as many from the playback ring. Called on the
        audio loop thread; must not block. Raises nothing (an exception is
        logged and the audio path started again)."""

    def microphone_failure(self) -> str | None:
        """Why the open microphone stopped working, or ``None`` while it works.
        Called about twice a second on the audio loop thread; must not block.
        Raises nothing."""
        return None

    def close(self) -> None:
        """Release devices. Idempotent; called on a worker thread. Raises
        nothing."""


class NullAudio(AudioBackend):
    """No sound devices: a silent microphone, the agent's audio discarded.
    Loop-clocked; its methods raise nothing."""

    def open(self, io: AudioIO) -> None:
        """Size the silent buffers for ``io``. Raises nothing."""
        super().open(io)
        self._silence = np.zeros(io.rate // 100, dtype=np.int16)
        self._out = np.zeros(io.rate // 100, dtype=np.int16)
        self._scratch = np.zeros(io.rate // 100, dtype=np.float32)

    def tick(self, samples: int) -> None:
        """Capture ``samples`` of silence and discard as many of the agent's.
        Raises nothing."""
        self.io.capture_samples(self._silence[:samples])
        self.io.render(self._out[:samples], self._scratch[:samples])


def load_pcm16(source: np.ndarray | str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono int16 at 48 kHz from int16 or float (-1..1) samples at ``sample_rate``
    (a single-column 2-D array counts as mono) or from a 16-bit WAV file.
    Raises ``ValueError`` naming what is wrong."""
    if isinstance(source, (str, Path)):
        with wave.open(str(source), "rb") as f:
            if f.getsampwidth() != 2:
                raise ValueError(f"{source}: only 16-bit PCM WAV files are supported")
            rate, channels = f.getframerate(), f.getnchannels()
            data = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)
        if channels > 1:
            data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
        return _to_rate(data, rate)
    data = np.asarray(source)
    if data.ndim == 2 and 1 in data.shape:
        data = data.reshape(-1)
    if data.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        data = (np.clip(data, -1.0, 1.0) * 32767).astype(np.int16)
    elif data.dtype != np.int16:
        raise ValueError(f"audio must be int16 or float samples, got {data.dtype}")
    return _to_rate(data, sample_rate)


def _to_rate(data: np.ndarray, rate: int) -> np.ndarray:
    if rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {rate}")
    if rate == SAMPLE_RATE or not len(data):
        return data.astype(np.int16, copy=False)
    n = round(len(data) * SAMPLE_RATE / rate)
    resampled = np.interp(np.arange(n) * rate / SAMPLE_RATE, np.arange(len(data)), data.astype(np.float64))
    return resampled.astype(np.int16)


class BufferAudio(AudioBackend):
    """Microphone audio from numpy arrays or WAV files; the agent's audio as numpy.

    Args:
        microphone: audio to play into the microphone at the start (mono int16,
            or float in -1..1, at ``sample_rate``; or a 16-bit WAV file path).
            After it (and anything :meth:`feed` adds) the microphone is silent.
            Capture starts once the microphone is published; the agent hears it
            from when it has subscribed, a few hundred ms later on a fresh
            session, so lead with some silence (or :meth:`feed` after connecting).
        sample_rate: rate of ``microphone`` arrays, Hz.
        keep_seconds: how much of the agent's audio :meth:`played` keeps, the
            newest (default 600 s, about 55 MB); ``None`` keeps everything.

    Thread-safe: :meth:`feed`, :meth:`played` and the waits may be called from
    any thread while the conversation runs; :meth:`played` copies outside the
    lock the conversation's loop takes every 10 ms.

    Raises:
        ValueError: ``keep_seconds`` is not positive, or ``microphone`` is not
            mono int16/float audio or a 16-bit WAV file (as :meth:`feed`).
        OSError: the WAV file cannot be read.
    """

    rate = SAMPLE_RATE

    def __init__(self, microphone: np.ndarray | str | Path | None = None, sample_rate: int = SAMPLE_RATE, *,
                 keep_seconds: float | None = 600.0) -> None:
        if keep_seconds is not None and (isinstance(keep_seconds, bool) or not keep_seconds > 0):
            raise ValueError(f"keep_seconds must be positive seconds or None, got {keep_seconds!r}")
        self._lock = threading.Condition()
        self._pending: list[np.ndarray] = []
        self._offset = 0
        self._played: collections.deque[np.ndarray] = collections.deque()
        self._kept_samples = 0
        self._keep = None if keep_seconds is None else int(keep_seconds * SAMPLE_RATE)
        self._played_samples = 0
        if microphone is not None:
            self.feed(microphone, sample_rate)

    def feed(self, microphone: np.ndarray | str | Path, sample_rate: int = SAMPLE_RATE) -> None:
        """Queue more microphone audio after what is queued; any thread.

        Raises:
            ValueError: the audio is not mono int16/float or a 16-bit WAV file.
            OSError: the WAV file cannot be read.
        """
        data = load_pcm16(microphone, sample_rate)
        with self._lock:
            self._pending.append(data)

    def pending_seconds(self) -> float:
        """Microphone audio still to be captured, seconds. Raises nothing."""
        with self._lock:
            return (sum(len(p) for p in self._pending) - self._offset) / SAMPLE_RATE

    def wait_until_fed(self, timeout: float | None = None) -> bool:
        """Block until all queued microphone audio has been captured; false on
        timeout (seconds). Raises nothing."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending, timeout)

    def played(self) -> np.ndarray:
        """What was played (the agent's audio at the set volume, silence
        included), the newest ``keep_seconds`` of it, mono int16 at 48 kHz; a
        copy. Raises nothing."""
        with self._lock:
            chunks = list(self._played)  # references only: the copy happens outside the lock
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def played_seconds(self) -> float:
        """Seconds played since the start, kept or not. Raises nothing."""
        with self._lock:
            return self._played_samples / SAMPLE_RATE

    def wait_for_played(self, seconds: float, timeout: float | None = None) -> bool:
        """Block until at least ``seconds`` of audio has been played; false on
        timeout (seconds). Raises nothing."""
        with self._lock:
            return self._lock.wait_for(lambda: self._played_samples >= seconds * SAMPLE_RATE, timeout)

    def save_wav(self, path: str | Path) -> None:
        """Write what was played so far (:meth:`played`) to a 16-bit mono WAV
        file at 48 kHz.

        Raises:
            OSError: the file cannot be written.
        """
        with wave.open(str(path), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(SAMPLE_RATE)
            f.writeframes(self.played().tobytes())

    def open(self, io: AudioIO) -> None:
        """Size the buffers for ``io``. Raises nothing."""
        super().open(io)
        self._mic = np.zeros(io.rate // 100, dtype=np.int16)
        self._scratch = np.zeros(io.rate // 100, dtype=np.float32)

    def tick(self, samples: int) -> None:
        """Capture the next ``samples`` of the queued microphone audio (silence
        when none is left) and keep as many of the agent's. Raises nothing."""
        mic = self._mic[:samples]
        mic[:] = 0
        with self._lock:
            filled = 0
            while filled < samples and self._pending:
                head = self._pending[0]
                take = min(samples - filled, len(head) - self._offset)
                mic[filled:filled + take] = head[self._offset:self._offset + take]
                filled += take
                self._offset += take
                if self._offset >= len(head):
                    self._pending.pop(0)
                    self._offset = 0
            if not self._pending:
                self._lock.notify_all()
        self.io.capture_samples(mic)
        out = np.zeros(samples, dtype=np.int16)
        self.io.render(out, self._scratch[:samples])
        with self._lock:
            self._played.append(out)
            self._kept_samples += samples
            self._played_samples += samples
            if self._keep is not None:
                while self._kept_samples - len(self._played[0]) >= self._keep:
                    self._kept_samples -= len(self._played.popleft())
            self._lock.notify_all()


@dataclass(frozen=True)
class AudioDevice:
    """A PortAudio device: ``index`` and ``name`` select it; ``default_input`` and
    ``default_output`` say whether PortAudio uses it when none is named."""

    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: float
    host_api: str
    default_input: bool = False
    default_output: bool = False


def _default_index(pa: Any, kind: str) -> int | None:
    try:
        info = pa.get_default_input_device_info() if kind == "input" else pa.get_default_output_device_info()
        return int(info["index"])
    except OSError:
        return None


def _devices(pa: Any) -> list[AudioDevice]:
    default_in, default_out = _default_index(pa, "input"), _default_index(pa, "output")
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        devices.append(AudioDevice(
            index=i, name=str(info["name"]), max_input_channels=int(info["maxInputChannels"]),
            max_output_channels=int(info["maxOutputChannels"]),
            default_sample_rate=float(info["defaultSampleRate"]),
            host_api=str(pa.get_host_api_info_by_index(info["hostApi"])["name"]),
            default_input=i == default_in, default_output=i == default_out))
    return devices


def _portaudio() -> Any:
    """A PyAudio instance, initialised without ALSA's and JACK's probing noise."""
    import pyaudio

    with quiet_native_output("PortAudio initialisation"):
        return pyaudio.PyAudio()


def list_audio_devices() -> list[AudioDevice]:
    """Every PortAudio device, with which are the defaults (needs PyAudio).
    Prints nothing: the native libraries' probing noise is suppressed (logged
    at debug level on ``speko_sync.audio``).

    Raises:
        ImportError: PyAudio is not installed.
        OSError: PortAudio cannot be initialised.
    """
    pa = _portaudio()
    try:
        return _devices(pa)
    finally:
        with quiet_native_output("PortAudio shutdown"):
            pa.terminate()


class DeviceError(RuntimeError):
    """A sound device could not be found or opened; the message lists what exists."""


def _pick(devices: Sequence[AudioDevice], wanted: int | str | None, kind: str, default: int | None) -> AudioDevice:
    usable = [d for d in devices if (d.max_input_channels if kind == "input" else d.max_output_channels) > 0]
    listing = "; ".join(f"{d.index}: {d.name!r}" for d in usable) or "none"
    if wanted is None:
        if default is None or default < 0 or default >= len(devices):
            raise DeviceError(f"no default {kind} device; {kind} devices: {listing}")
        return devices[default]
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        match = [d for d in usable if d.index == wanted]
    elif isinstance(wanted, str):
        match = [d for d in usable if d.name == wanted] or [d for d in usable if wanted.lower() in d.name.lower()]
    else:
        raise TypeError(f"{kind}_device must be an index, a name or None, got {type(wanted).__name__}")
    if not match:
        raise DeviceError(f"no {kind} device {wanted!r}; {kind} devices: {listing}")
    return match[0]


class PyAudioBackend(AudioBackend):
    """Real sound devices through PyAudio, an input and an output stream in
    callback mode.

    The callbacks run on PortAudio's threads and only copy between the device
    buffers and the conversation's rings through preallocated numpy arrays
    (volume applied on the way out); they never block or log. Status flags are
    counted (input overflows, output underflows).

    Args:
        input_device, output_device: PortAudio index or (part of) the name;
            ``None`` for the defaults. Unknown ones raise with the list of devices.
        frames_per_buffer: PortAudio buffer size in samples (default: 20 ms);
            the conversation reframes to 10 ms whatever this is.

    Raises:
        TypeError, ValueError: ``frames_per_buffer`` is not a positive int.
            Devices are looked up only by :meth:`prepare`.
    """

    clocked_by_loop = False

    def __init__(self, input_device: int | str | None = None, output_device: int | str | None = None, *,
                 frames_per_buffer: int | None = None) -> None:
        if frames_per_buffer is not None:
            if isinstance(frames_per_buffer, bool) or not isinstance(frames_per_buffer, int):
                raise TypeError(f"frames_per_buffer must be an int or None, got {type(frames_per_buffer).__name__}")
            if frames_per_buffer <= 0:
                raise ValueError(f"frames_per_buffer must be positive, got {frames_per_buffer}")
        self.input_device = input_device
        self.output_device = output_device
        self.frames_per_buffer = frames_per_buffer
        self._pa: Any = None
        self._streams: list[Any] = []
        self.rate = SAMPLE_RATE

    def probe(self) -> tuple[AudioDevice, AudioDevice, int]:
        """Resolve the microphone, the speaker and the rate to use.

        Raises:
            DeviceError: a device is unknown, or there is no default one (the
                message lists the devices).
            TypeError: a device was given as neither an index nor a name.
        """
        mic, speaker, rate = self._resolve(microphone=True)
        assert mic is not None
        return mic, speaker, rate

    def _resolve(self, *, microphone: bool) -> tuple[AudioDevice | None, AudioDevice, int]:
        """:meth:`probe`, with no microphone when ``microphone`` is false."""

        if self._pa is None:
            self._pa = _portaudio()
        pa = self._pa
        devices = _devices(pa)
        default_in, default_out = _default_index(pa, "input"), _default_index(pa, "output")
        mic = _pick(devices, self.input_device, "input", default_in) if microphone else None
        speaker = _pick(devices, self.output_device, "output", default_out)
        rate = SAMPLE_RATE
        try:
            with quiet_native_output("probing the sample rate"):
                self._check_rate(pa, rate, mic, speaker)
        except ValueError:
            rate = int((mic or speaker).default_sample_rate)
        return mic, speaker, rate

    @staticmethod
    def _check_rate(pa: Any, rate: int, mic: AudioDevice | None, speaker: AudioDevice) -> None:
        """Raise ``ValueError`` unless the devices take ``rate``."""
        import pyaudio

        if mic is not None:
            pa.is_format_supported(rate, input_device=mic.index, input_channels=1, input_format=pyaudio.paInt16,
                                   output_device=speaker.index, output_channels=1, output_format=pyaudio.paInt16)
        else:
            pa.is_format_supported(rate, output_device=speaker.index, output_channels=1,
                                   output_format=pyaudio.paInt16)

    def prepare(self, *, microphone: bool = True) -> int:
        """Resolve the devices; the rate is 48 kHz when both take it, else the
        microphone's default rate (the conversation resamples). With
        ``microphone`` false only the speaker is resolved.

        Raises:
            DeviceError, TypeError: as :meth:`probe` (PortAudio is released
                first).
        """
        try:
            self.rate = self._resolve(microphone=microphone)[2]
        except BaseException:
            self.close()
            raise
        return self.rate

    def open(self, io: AudioIO) -> None:
        """Open and start the output stream and (unless text-only) the input
        stream, in callback mode.

        Raises:
            DeviceError, TypeError: as :meth:`probe`.
            OSError: PortAudio cannot open a stream. Whatever was opened is
                closed first.
        """
        import pyaudio

        super().open(io)
        try:
            mic, speaker, _ = self._resolve(microphone=io.microphone)
            fpb = self.frames_per_buffer or io.rate // 50
            self._out = np.zeros(fpb, dtype=np.int16)
            self._scratch = np.zeros(fpb, dtype=np.float32)
            self._out_bytes = self._out.view()  # a read-only view of the same memory,
            self._out_bytes.flags.writeable = False  # as PortAudio's callback wants
            self._continue = pyaudio.paContinue
            self._in_overflow = pyaudio.paInputOverflow
            self._out_underflow = pyaudio.paOutputUnderflow
            with quiet_native_output("opening the speaker"):
                out_stream = self._pa.open(format=pyaudio.paInt16, channels=1, rate=io.rate, output=True,
                                           output_device_index=speaker.index, frames_per_buffer=fpb,
                                           stream_callback=self._on_output, start=False)
            self._streams.append(out_stream)
            self.latency_s = float(out_stream.get_output_latency())
            in_stream = None
            if mic is not None:  # a text-only session opens no microphone
                with quiet_native_output("opening the microphone"):
                    in_stream = self._pa.open(format=pyaudio.paInt16, channels=1, rate=io.rate, input=True,
                                              input_device_index=mic.index, frames_per_buffer=fpb,
                                              stream_callback=self._on_input, start=False)
                self._streams.append(in_stream)
                self.latency_s += float(in_stream.get_input_latency())
            out_stream.start_stream()
            if in_stream is not None:
                in_stream.start_stream()
        except BaseException:
            self.close()
            raise

    def microphone_failure(self) -> str | None:
        """Why the microphone stream stopped (the device or the sound server
        went away), or ``None``. Raises nothing."""
        inputs = self._streams[1:]  # [output, input] while open
        if inputs and not inputs[0].is_active():
            return "the microphone stream stopped (the device or the sound server went away)"
        return None

    # Both callbacks run on PortAudio threads: copies through preallocated buffers only.
    def _on_input(self, data: bytes | None, frames: int, time_info: Any, status: int) -> tuple[None, int]:
        if status & self._in_overflow:
            self.io.counters[INPUT_OVERFLOWS] += 1
        if data is not None:
            self.io.capture_samples(np.frombuffer(data, dtype=np.int16))
        return None, self._continue

    def _on_output(self, data: bytes | None, frames: int, time_info: Any, status: int) -> tuple[Any, int]:
        if status & self._out_underflow:
            self.io.counters[OUTPUT_UNDERFLOWS] += 1
        if frames == len(self._out):
            self.io.render(self._out, self._scratch)
            return self._out_bytes, self._continue
        out = np.zeros(frames, dtype=np.int16)  # PortAudio changed the buffer size: rare
        self.io.render(out, np.zeros(frames, dtype=np.float32))
        return out.tobytes(), self._continue

    def close(self) -> None:
        """Stop and close the streams and release PortAudio. Idempotent.
        Raises nothing."""
        streams, self._streams = self._streams, []
        for stream in streams:
            try:
                stream.stop_stream()
            except OSError:
                pass
            stream.close()
        if self._pa is not None:
            with quiet_native_output("PortAudio shutdown"):
                self._pa.terminate()
            self._pa = None
