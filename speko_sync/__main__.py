"""Command line: ``python -m speko_sync demo``, ``talk`` and ``devices``.

``demo`` holds a whole voice conversation offline: it starts the local
LiveKit-compatible server with an agent (inside a private network namespace,
which WebRTC needs), opens a :class:`Conversation` and prints status, mode and
transcripts live. With sound devices it uses them; without, the microphone
asks a question (spoken by espeak-ng, or a tone) once the agent's greeting is
over, and the agent's audio goes to a WAV file. It needs the ``testing``
extra (it says so in one line without it). The agent is
the offline Speko agent, a real LiveKit Agents worker (``--agent worker``, the
default when its environment exists: it speaks real words and hears them), or
the scripted agent (``--agent scripted``). ``--transport realtime`` holds it
over Speko's realtime (speech-to-speech) WebSocket session with the local
server's offline realtime agent instead.

``talk`` joins a real Speko session with a URL and token from your server, or
with the server's JSON answer (``--session FILE``, ``-`` for stdin).

``devices`` lists the sound devices PortAudio sees.

Output is whole lines, in order, whichever thread prints them.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import (
    AgentState,
    AudioBackend,
    BufferAudio,
    Conversation,
    Message,
    MessageSource,
    Mode,
    SpekoClientError,
    Status,
    ToolCall,
    Turn,
)

_print_lock = threading.Lock()


def _line(text: str, stream: TextIO | None = None) -> None:
    """Write one whole line (receivers print from the dispatcher thread, the
    command from the main thread: a lock keeps lines whole and in order)."""
    out = stream if stream is not None else sys.stdout
    with _print_lock:
        out.write(text + "\n")
        out.flush()


def _printer(t0: float):  # type: ignore[no-untyped-def]
    def say(line: str) -> None:
        _line(f"[{time.monotonic() - t0:5.2f} s] {line}")
    return say


class _Progress:
    """How far the conversation got, for the command to wait on. The
    receivers set it (on the dispatcher thread); any thread waits."""

    def __init__(self) -> None:
        self.greeting_over = threading.Event()  # the agent spoke, then listened again
        self.asked = threading.Event()  # the microphone's question was queued
        self.user_spoke = threading.Event()  # a final user message after the question
        self.answered = threading.Event()  # a final agent message after that
        self.answer_played = threading.Event()  # and the speaker went quiet after it
        self._agent_spoke = False

    def agent_state(self, state: AgentState) -> None:
        if state == AgentState.SPEAKING:
            self._agent_spoke = True
        elif state == AgentState.LISTENING and self._agent_spoke:
            self.greeting_over.set()

    def mode(self, mode: Mode) -> None:  # an agent without states: what plays
        self.agent_state(AgentState.SPEAKING if mode == Mode.SPEAKING else AgentState.LISTENING)
        if mode == Mode.LISTENING and self.answered.is_set():
            self.answer_played.set()

    def message(self, message: Message) -> None:
        if not message.is_final or not self.asked.is_set():
            return
        if message.source == MessageSource.USER:
            self.user_spoke.set()
        elif self.user_spoke.is_set():
            self.answered.set()  # the agent answered what the user said


def _callbacks(say, progress: _Progress) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The Conversation receivers the commands print with: a dict of
    ``on_*`` keyword arguments (add an entry to print one more kind of event)."""
    def on_message(message: Message) -> None:
        partial = "" if message.is_final else " (partial)"
        say(f"{message.source.value}: {message.text}{partial}")
        progress.message(message)

    def on_agent_state_change(state: AgentState) -> None:
        say(f"agent is {state.value}")
        progress.agent_state(state)

    def on_mode_change(mode: Mode) -> None:
        say(f"mode: {mode.value}")
        progress.mode(mode)

    def on_tool_call(call: ToolCall) -> None:
        outcome = call.result if call.error is None else f"error: {call.error}"
        say(f"tool call | {call.name}({json.dumps(call.arguments)}) -> {outcome} "
            f"[{call.status.value}, {1000 * call.duration_s:.0f} ms, called by {call.caller}]")

    def on_turn(turn: Turn) -> None:
        if turn.source == MessageSource.AGENT:
            say(f"turn | agent: {_latencies(turn)}")

    return dict(
        on_tool_call=on_tool_call,
        on_turn=on_turn,
        on_status_change=lambda status: say(f"status: {status.value}"),
        on_mode_change=on_mode_change,
        on_agent_state_change=on_agent_state_change,
        on_message=on_message,
        on_error=lambda err: say(f"error: {err}"),
        on_disconnect=lambda details: say(f"disconnected: {details.reason.value} ({details.message})"),
    )


def _latencies(turn: Turn) -> str:
    """A turn's latencies, as the agent measured them and as heard here."""
    m = turn.metrics
    parts = [f"{name} {value:.2f} s" for name, value in (
        ("LLM first token", m.llm_node_ttft if m else None), ("TTS first byte", m.tts_node_ttfb if m else None),
        ("agent end-to-end", m.e2e_latency if m else None), ("heard here", turn.response_latency_s))
        if value is not None]
    interrupted = " (interrupted)" if turn.interrupted else ""
    return f"{turn.text!r}{interrupted}" + (f": {', '.join(parts)}" if parts else "")


def _demo_tools(say: Callable[[str], None]) -> dict[str, Callable[..., str]]:
    """The demo's client tool: the offline agent turns a pretend light on or off."""
    def set_light(on: bool = True) -> str:
        say(f"(the demo's light is now {'on' if on else 'off'})")
        return f"the light is {'on' if on else 'off'}"
    return {"set_light": set_light}


def _spoken(text: str) -> np.ndarray | None:
    """``text`` spoken by espeak-ng as int16 at 48 kHz, or ``None`` without it."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        return None
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True).stdout
    from .audio import load_pcm16

    return load_pcm16(np.frombuffer(wav[44:], dtype=np.int16), 22050)


def _audio_for_demo(say, words: bool = False) -> tuple[AudioBackend | None, BufferAudio | None, np.ndarray]:  # type: ignore[no-untyped-def]
    """The sound devices if there are some; else a microphone that is silent
    until the question (returned third) is fed to it, and a recording speaker."""
    from .audio import DeviceError, PyAudioBackend

    quiet = np.zeros(48000, dtype=np.int16)
    backend = PyAudioBackend()
    try:
        mic, speaker, _ = backend.probe()
        say(f"using sound devices: microphone {mic.name!r}, speaker {speaker.name!r}")
        return backend, None, quiet
    except (DeviceError, ImportError, OSError) as exc:
        say(f"no sound devices ({str(exc).split(';')[0]}): the microphone asks a question "
            "once the agent's greeting is over")
    finally:
        backend.close()
    from .testing import tone

    utterance = (_spoken("What is the weather like today?") if words else None)
    if utterance is None:
        utterance = tone(300, 1.2, 0.4)
    buffer = BufferAudio()
    return buffer, buffer, np.concatenate([quiet[:24000], utterance, quiet])


#: Most seconds the demo waits for the agent's greeting to end before it asks anyway.
GREETING_WAIT_S = 15.0
TESTING_EXTRA_HINT = "pip install 'speko_sync[testing]'"


def _missing_module(exc: ImportError) -> str:
    """The name of the module whose absence ``exc`` (or what caused it) reports."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ImportError) and cause.name:
            return cause.name
        cause = cause.__cause__
    return ""


def demo(wav_path: Path, seconds: float, agent: str = "auto", transport: str = "livekit") -> int:
    try:
        from .testing import AgentEnvUnavailable, IsolationUnavailable, LocalServer, agent_python, reexec_isolated
    except ImportError as exc:
        missing = _missing_module(exc)
        _line(f"speko_sync demo needs the testing extra{f' (no {missing})' if missing else ''}: "
              f"{TESTING_EXTRA_HINT}", sys.stderr)
        return 2
    # first, so that what follows is said once: the namespace runs this command again
    try:
        reexec_isolated()
    except IsolationUnavailable as exc:
        _line(f"warning: no private network namespace ({exc}); trying the host network", sys.stderr)
    if transport == "realtime":
        agent = "realtime"
    elif agent in ("auto", "worker"):
        try:
            agent_python()
            agent = "worker"
        except AgentEnvUnavailable as exc:
            if agent == "worker":
                _line(f"error: {exc}", sys.stderr)
                return 2
            _line(f"note: {exc}; using the scripted agent", sys.stderr)
            agent = "scripted"
    say = _printer(time.monotonic())
    audio, buffer, question = _audio_for_demo(say, words=agent == "worker")
    progress = _Progress()
    with LocalServer(default_agent=agent == "scripted") as server:
        if agent == "worker":
            server.start_agent_worker(greeting="Hi! This is the offline Speko agent. Ask me anything.")
            say(f"local server at {server.url} with the offline Speko agent (a LiveKit Agents worker)")
        elif agent == "realtime":
            server.realtime.will_hear("Please turn on the light.")  # what the question says: it has no ears
            say(f"local server at {server.url} with the offline realtime (speech-to-speech) agent")
        else:
            say(f"local server at {server.url} with a scripted agent")
        options: dict[str, Any] = dict(audio=audio, client_tools=_demo_tools(say), **_callbacks(say, progress))
        if agent == "realtime":
            conversation = Conversation.from_session(server.realtime_session("speko_demo"), **options)
        else:
            conversation = Conversation(server.token("demo-user", "speko_demo"), server.url, overrides={
                "agent": {"firstMessage": "Hi! This is the offline Speko demo agent."}}, **options)
        with conversation as conv:
            say(f"conversation {conv.conversation_id!r} is {conv.status.value}")
            if buffer is not None:
                deadline = time.monotonic() + seconds
                if not progress.greeting_over.wait(min(GREETING_WAIT_S, seconds)):
                    say("the agent did not finish a greeting; asking anyway")
                progress.asked.set()
                buffer.feed(question)  # the question, now that the agent listens
                progress.answered.wait(max(0.0, deadline - time.monotonic()))  # the agent answered it
                if agent != "realtime":  # realtime sessions take no typed turns: the question asked for the light
                    _ask(conv, say, "Please turn on the light.", max(1.0, deadline - time.monotonic()))
                else:
                    progress.answer_played.wait(max(0.0, deadline - time.monotonic()))
            else:
                say(f"speak into the microphone; ending in {seconds:.0f} s (Ctrl-C to end now)")
                _wait_interruptibly(conv, seconds)
            stats = conv.stats()
            for turn in conv.transcript():
                say(f"transcript | {turn.source.value}: {turn.text}")
        say(f"stats: {stats.frames_captured} frames captured, {stats.frames_played} played, "
            f"{stats.underruns} underruns, {stats.packets_received} packets received, "
            f"{stats.tool_calls} tool calls")
        if stats.response_latency_s is not None:
            agent_part = (f" (the agent's own part: {stats.agent_e2e_latency_s:.2f} s)"
                          if stats.agent_e2e_latency_s is not None else "")
            say(f"latency heard for the spoken question: {stats.response_latency_s:.2f} s from the end of "
                f"your speech to the agent's voice{agent_part}")
    if buffer is not None:
        buffer.save_wav(wav_path)
        say(f"saved {buffer.played_seconds():.1f} s of the agent's audio to {wav_path}")
    return 0


def _ask(conv: Conversation, say, text: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """A typed turn with the blocking turn API, and what it measured."""
    say(f"ask: {text!r}")
    try:
        reply = conv.ask(text, timeout=timeout)
    except (TimeoutError, SpekoClientError) as exc:
        say(f"ask: no answer ({exc})")
        return
    first = f"first audio after {reply.first_audio_s:.2f} s, " if reply.first_audio_s is not None else ""
    say(f"ask -> {reply.text!r} ({first}final after {reply.final_s:.2f} s, {len(reply.tool_calls)} tool call(s))")


def _wait_interruptibly(conv: Conversation, seconds: float) -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and conv.status == Status.CONNECTED and time.monotonic() < deadline:
            stop.wait(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)


def _read_session(source: str) -> object:
    """The server's JSON answer to ``POST /v1/sessions`` from a file or stdin (``-``)."""
    text = sys.stdin.readline() if source == "-" else Path(source).read_text(encoding="utf-8")
    return json.loads(text)


def talk(url: str | None, token: str | None, input_device: str | None, output_device: str | None,
         session: str | None = None) -> int:
    say = _printer(time.monotonic())
    options = dict(input_device=_device(input_device), output_device=_device(output_device),
                   **_callbacks(say, _Progress()))
    try:
        if session is not None:
            conv = Conversation.from_session(_read_session(session), **options)
        else:
            assert url is not None and token is not None
            conv = Conversation(token, url, **options)
    except (SpekoClientError, ValueError, TypeError, OSError) as exc:
        _line(f"error: {exc}", sys.stderr)
        return 1
    realtime = conv.transport == "realtime"  # it takes no text: Enter interrupts the agent instead
    say("talk now; " + ("Enter interrupts the agent" if realtime else
                        "type a line and Enter to send it as a chat message") + ", Ctrl-D or Ctrl-C to end")
    try:
        for line in sys.stdin:
            if conv.status != Status.CONNECTED:
                break
            if realtime:
                conv.interrupt()
            elif line.strip():
                conv.send_chat_message(line.strip())
    except KeyboardInterrupt:
        pass
    finally:
        conv.end_session()
    return 0


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def devices() -> int:
    """``python -m speko_sync devices``: inputs and outputs, defaults marked."""
    from .audio import list_audio_devices

    try:
        found = list_audio_devices()
    except (ImportError, OSError) as exc:
        _line(f"error: PortAudio is not usable here: {exc}", sys.stderr)
        return 1
    if not found:
        _line("error: PortAudio found no sound devices (no sound card, and no sound server such as "
              "PulseAudio or PipeWire running); NullAudio() or BufferAudio() work without one", sys.stderr)
        return 1
    for kind, channels, default in (("inputs", "max_input_channels", "default_input"),
                                    ("outputs", "max_output_channels", "default_output")):
        usable = [d for d in found if getattr(d, channels) > 0]
        _line(f"{kind}:" if usable else f"{kind}: none")
        for d in usable:
            mark = "*" if getattr(d, default) else " "
            _line(f" {mark} {d.index:3d}  {d.name}  ({d.host_api}, {getattr(d, channels)} ch, "
                  f"{d.default_sample_rate:g} Hz)")
    _line("(* = the default; select one with input_device=/output_device= by index or name)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speko_sync")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging (shows what the sound libraries printed while probing)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("devices", help="list the sound devices (index, name, host API, channels, rate, defaults)")
    demo_cmd = sub.add_parser("demo", help="a live conversation with the embedded local agent")
    demo_cmd.add_argument("--wav", type=Path, default=Path("speko_demo_agent.wav"),
                          help="where to save the agent's audio when there are no sound devices")
    demo_cmd.add_argument("--seconds", type=float, default=30.0,
                          help="how long the demo may last once connected (it ends when the agent has answered)")
    demo_cmd.add_argument("--agent", choices=("auto", "worker", "scripted"), default="auto",
                          help="the offline Speko agent, a real LiveKit Agents worker (needs `make agent-env`; "
                               "the default when it is there), or the scripted agent")
    demo_cmd.add_argument("--transport", choices=("livekit", "realtime"), default="livekit",
                          help="a LiveKit room (default) or Speko's realtime speech-to-speech WebSocket session")
    talk_cmd = sub.add_parser("talk", help="join a real Speko session")
    talk_cmd.add_argument("--url", help="the session's transportUrl (livekitUrl)")
    talk_cmd.add_argument("--token", help="the session's transportToken (conversationToken)")
    talk_cmd.add_argument("--session", metavar="FILE|-",
                          help="the server's JSON answer to POST /v1/sessions, instead of --url/--token")
    talk_cmd.add_argument("--input-device", help="microphone: index or name (see `python -m speko_sync devices`)")
    talk_cmd.add_argument("--output-device", help="speaker: index or name (see `python -m speko_sync devices`)")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
    if args.command == "devices":
        return devices()
    if args.command == "demo":
        return demo(args.wav, args.seconds, args.agent, args.transport)
    if args.session is None and (args.url is None or args.token is None):
        talk_cmd.error("give --url and --token, or --session")
    if args.session is not None and (args.url or args.token):
        talk_cmd.error("give --session or --url/--token, not both")
    return talk(args.url, args.token, args.input_device, args.output_device, args.session)



if __name__ == "__main__":
    sys.exit(main())
