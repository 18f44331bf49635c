"""The offline Speko agent: a real LiveKit Agents worker with offline parts.

A Speko agent is a LiveKit Agents ``AgentSession`` with Speko's STT, LLM and
TTS. This program is the same framework, unmodified, with parts that need no
network and no account:

- VAD: Silero (``livekit-plugins-silero`` ships its model in the wheel);
- STT: PocketSphinx (``pocketsphinx`` ships an English model in the wheel),
  run on each utterance the VAD finds; without it, a description of the
  utterance such as ``[speech, 1.20 s]``;
- LLM: scripted. It greets, answers each user turn (typed or spoken) with
  ``You said: <text>.``, or with the first rule whose pattern matches, or
  calls a function tool (below);
- TTS: ``espeak-ng`` speaking real words when installed, else tones.

Function tools, as a Speko agent's LLM calls them (a real
``llm.FunctionToolCall`` the framework executes and reports: the session
stream's ``tool_execution_updated`` and ``function_tools_executed``):

- client tools: for a user turn matching REGEX, the LLM calls tool METHOD with
  ARGS_JSON (a JSON object); the tool calls the caller's LiveKit RPC method
  METHOD (``perform_rpc`` to the linked user, payload the arguments as JSON,
  ``response_timeout`` the tool timeout, 15 s by default, which leaves the
  client 8 s). Its answer is spoken as REPLY with ``{result}`` replaced by what
  the method returned; an ``RpcError`` becomes a ``ToolError`` and the agent
  says ``The tool failed: <message>.``. Rules: ``--client-tool REGEX METHOD
  ARGS_JSON REPLY`` (repeatable) or ``SPEKO_AGENT_CLIENT_TOOLS`` (a JSON list of
  4-lists). Without either, the defaults: ``turn on the light`` (or
  ``lights on``) calls ``set_light`` with ``{"on": true}``, ``turn off the
  light`` (or ``lights off``) with ``{"on": false}``, both answered
  ``Done: {result}``;
- one agent-side tool: ``what time is it`` calls ``current_time``, run in the
  agent itself, which returns ``12:00``: ``It is 12:00.``.

Tool rules are tried before the reply rules; a turn that matches none is
answered as before.

It runs from its own environment (LiveKit Agents pins its own ``livekit``),
registers with a LiveKit(-compatible) server as a worker and joins every room
it is dispatched to::

    .venv-agent/bin/python speko_sync/testing/offline_worker.py \\
        --url ws://127.0.0.1:7880 --api-key devkey --api-secret SECRET

Options also come from the environment (``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
``LIVEKIT_API_SECRET``, ``SPEKO_AGENT_GREETING``, ``SPEKO_AGENT_RULES`` as a
JSON list of ``[regex, reply]`` pairs, ``SPEKO_AGENT_CLIENT_TOOLS``,
``SPEKO_AGENT_TOOL_TIMEOUT`` in seconds, ``SPEKO_AGENT_TTS`` = ``espeak`` |
``tone``). It prints ``worker registered`` once the server has accepted it.

This file imports ``livekit.agents``, so it runs only in that environment;
nothing in ``speko_sync`` imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import wave
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    Agent,
    AgentServer,
    AgentSession,
    APIConnectOptions,
    JobContext,
    JobProcess,
    NotGivenOr,
    RunContext,
    function_tool,
    get_job_context,
    llm,
    stt,
    tts,
    utils,
)
from livekit.plugins import silero

log = logging.getLogger("speko_sync.offline_worker")

DEFAULT_GREETING = "Hello! I'm the offline Speko agent."
TTS_RATE = 22050  # espeak-ng's native rate; tones use it too
#: (regex, method, arguments as JSON, reply with {result}) used when none are given.
DEFAULT_CLIENT_TOOLS = [
    (r"\bturn on the lights?\b|\blights? on\b", "set_light", '{"on": true}', "Done: {result}"),
    (r"\bturn off the lights?\b|\blights? off\b", "set_light", '{"on": false}', "Done: {result}"),
]
#: The agent-side tool: (regex, tool, arguments, reply) and what it returns.
AGENT_TOOL = (r"\bwhat time is it\b", "current_time", "{}", "It is {result}.")
AGENT_TIME = "12:00"
#: Seconds a client tool's RPC may take (the client is told this less 7 s).
DEFAULT_TOOL_TIMEOUT = 15.0


# -- speech to text -----------------------------------------------------------------
def _to_mono_int16(buffer: Any) -> tuple[np.ndarray, int]:
    frame = rtc.combine_audio_frames(buffer) if isinstance(buffer, list) else buffer
    pcm = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    return pcm, frame.sample_rate


class _Sphinx:
    """PocketSphinx on 16 kHz audio; ``None`` when it is not installed."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder  # type: ignore[import-not-found]

        self._decoder = Decoder(samprate=16000, logfn=os.devnull)

    def __call__(self, pcm: np.ndarray, rate: int) -> str:
        if rate != 16000:
            resampler = rtc.AudioResampler(rate, 16000, num_channels=1)
            frames = resampler.push(rtc.AudioFrame(pcm.tobytes(), rate, 1, len(pcm))) + resampler.flush()
            pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames]) if frames else pcm[:0]
        self._decoder.start_utt()
        self._decoder.process_raw(pcm.tobytes(), full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


class OfflineSTT(stt.STT):
    """Recognises one VAD-delimited utterance at a time (the session wraps a
    non-streaming STT in a ``StreamAdapter`` with its VAD)."""

    def __init__(self, sphinx: _Sphinx | None) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._sphinx = sphinx

    @staticmethod
    def load_recogniser(recogniser: str = "auto") -> _Sphinx | None:
        """Load PocketSphinx (slow: do it before a session starts)."""
        if recogniser not in ("auto", "pocketsphinx"):
            return None
        try:
            return _Sphinx()
        except ImportError:
            if recogniser == "pocketsphinx":
                raise
            log.warning("pocketsphinx is not installed: transcripts describe utterances instead")
            return None

    async def _recognize_impl(self, buffer: utils.AudioBuffer, *, language: NotGivenOr[str] = NOT_GIVEN,
                              conn_options: APIConnectOptions) -> stt.SpeechEvent:
        pcm, rate = _to_mono_int16(buffer)
        text = ""
        if self._sphinx is not None:
            text = await asyncio.get_running_loop().run_in_executor(None, self._sphinx, pcm, rate)
        if not text:
            text = f"[speech, {len(pcm) / rate:.2f} s]"
        return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                               alternatives=[stt.SpeechData(language="en", text=text)])


# -- the scripted LLM -----------------------------------------------------------------
def _last_user_text(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if getattr(item, "type", "") == "message" and getattr(item, "role", "") == "user":
            return (item.text_content or "").strip()
    return ""


class ToolRule:
    """A user turn matching ``pattern`` makes the LLM call ``tool`` with
    ``arguments`` (a JSON object) and answer its output with ``reply``."""

    def __init__(self, pattern: str, tool: str, arguments: str, reply: str) -> None:
        self.pattern = re.compile(pattern, re.IGNORECASE)
        self.tool = tool
        parsed = json.loads(arguments)
        if not isinstance(parsed, dict):
            raise ValueError(f"the arguments of tool {tool!r} must be a JSON object, not {arguments!r}")
        self.arguments = json.dumps(parsed)  # as the framework writes them back
        self.reply = reply


class ScriptedLLM(llm.LLM):
    """Answers the last user turn: calls the tool of the first matching
    :class:`ToolRule` (then answers the tool's output with the rule's reply),
    else the first matching ``(regex, reply)`` rule, else ``You said: <text>.``
    (``\\1``-style groups work in replies)."""

    def __init__(self, rules: list[tuple[str, str]] | None = None,
                 tool_rules: list[ToolRule] | None = None) -> None:
        super().__init__()
        self.rules = [(re.compile(pattern, re.IGNORECASE), reply) for pattern, reply in rules or []]
        self.tool_rules = list(tool_rules or [])
        self._calls: dict[str, ToolRule] = {}  # call id -> the rule that made the call

    def reply_to(self, text: str) -> str:
        for pattern, reply in self.rules:
            match = pattern.search(text)
            if match:
                return match.expand(reply)
        return f"You said: {text}." if text else "I did not catch that."

    def respond(self, chat_ctx: llm.ChatContext) -> str | llm.FunctionToolCall:
        """What to say, or the tool to call, for the conversation so far."""
        last = chat_ctx.items[-1] if chat_ctx.items else None
        if isinstance(last, llm.FunctionCallOutput):  # a tool answered: say what it gave
            rule = self._calls.pop(last.call_id, None)
            if last.is_error:
                return f"The tool failed: {last.output.rstrip('.')}."
            return rule.reply.replace("{result}", last.output) if rule is not None else last.output
        text = _last_user_text(chat_ctx)
        for rule in self.tool_rules:
            if rule.pattern.search(text):
                call = llm.FunctionToolCall(name=rule.tool, arguments=rule.arguments,
                                            call_id=utils.shortuuid("call_"))
                self._calls[call.call_id] = rule
                return call
        return self.reply_to(text)

    def chat(self, *, chat_ctx: llm.ChatContext, tools: list[llm.Tool] | None = None,
             conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
             parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
             tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
             extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN) -> llm.LLMStream:
        return _ScriptedStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options,
                               reply=self.respond(chat_ctx))


class _ScriptedStream(llm.LLMStream):
    def __init__(self, model: ScriptedLLM, *, reply: str | llm.FunctionToolCall, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._reply = reply

    async def _run(self) -> None:
        request_id = utils.shortuuid("scripted-")
        if isinstance(self._reply, llm.FunctionToolCall):
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(
                role="assistant", tool_calls=[self._reply])))
            return
        words = self._reply.split(" ")
        for i, word in enumerate(words):
            chunk = word if i == len(words) - 1 else word + " "
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id,
                                                     delta=llm.ChoiceDelta(role="assistant", content=chunk)))


# -- function tools -------------------------------------------------------------------
def _raw_schema(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": {}, "additionalProperties": True}}


def client_tool(method: str, timeout: float) -> llm.RawFunctionTool:
    """A function tool that calls the user's LiveKit RPC method ``method`` with
    the call's arguments as JSON and returns its answer; an ``RpcError``
    becomes a ``ToolError`` with its message."""
    async def call(raw_arguments: dict[str, object], context: RunContext) -> str:
        participant = context.session.room_io.linked_participant
        if participant is None:
            raise llm.ToolError("no user to run the tool for")
        room = get_job_context().room
        try:
            return await room.local_participant.perform_rpc(
                destination_identity=participant.identity, method=method, payload=json.dumps(raw_arguments),
                response_timeout=timeout)
        except rtc.RpcError as error:
            raise llm.ToolError(error.message) from None
    return function_tool(call, raw_schema=_raw_schema(method, f"The client's {method} tool (LiveKit RPC)."))


async def _current_time(raw_arguments: dict[str, object]) -> str:
    return AGENT_TIME


def agent_tools(client_tools: list[ToolRule], timeout: float) -> list[llm.RawFunctionTool]:
    """The Agent's function tools: one per client method, and ``current_time``."""
    methods = list(dict.fromkeys(rule.tool for rule in client_tools if rule.tool != AGENT_TOOL[1]))
    tools = [client_tool(method, timeout) for method in methods]
    tools.append(function_tool(_current_time, raw_schema=_raw_schema(AGENT_TOOL[1], "The time now, in the agent.")))
    return tools


def client_tool_rules(configured: str | None) -> list[tuple[str, str, str, str]]:
    """The client tool rules from ``SPEKO_AGENT_CLIENT_TOOLS`` (a JSON list of
    4-lists), or the defaults when it is unset."""
    if configured is None:
        return list(DEFAULT_CLIENT_TOOLS)
    rules = json.loads(configured)
    if not isinstance(rules, list) or not all(isinstance(r, list) and len(r) == 4 for r in rules):
        raise ValueError(f"SPEKO_AGENT_CLIENT_TOOLS must be a JSON list of [regex, method, args, reply]: {configured}")
    return [tuple(r) for r in rules]  # type: ignore[misc]


# -- text to speech -------------------------------------------------------------------
def espeak_pcm(text: str) -> bytes:
    """``text`` spoken by espeak-ng: int16 mono PCM at 22050 Hz."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True,
                         timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as w:
        if w.getframerate() != TTS_RATE:
            raise RuntimeError(f"espeak-ng spoke at {w.getframerate()} Hz, expected {TTS_RATE}")
        return w.readframes(w.getnframes())


def tone_pcm(text: str) -> bytes:
    """A tone per word (0.15 s each, 440 Hz), for machines without espeak-ng."""
    seconds = 0.15 * max(1, len(text.split()))
    t = np.arange(int(seconds * TTS_RATE)) / TTS_RATE
    return (0.25 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).tobytes()


class OfflineTTS(tts.TTS):
    """Non-streaming: the session feeds it one sentence at a time."""

    def __init__(self, *, voice: str = "auto") -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=TTS_RATE, num_channels=1)
        use_espeak = voice == "espeak" or (voice == "auto" and shutil.which("espeak-ng") is not None)
        self.speak = espeak_pcm if use_espeak else tone_pcm

    def synthesize(self, text: str, *,
                   conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> tts.ChunkedStream:
        return _Synthesis(tts=self, input_text=text, conn_options=conn_options)


class _Synthesis(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        engine = self._tts
        assert isinstance(engine, OfflineTTS)
        pcm = await asyncio.get_running_loop().run_in_executor(None, engine.speak, self._input_text)
        output_emitter.initialize(request_id=utils.shortuuid(), sample_rate=TTS_RATE, num_channels=1,
                                  mime_type="audio/pcm")
        output_emitter.push(pcm)
        output_emitter.flush()


# -- the worker -----------------------------------------------------------------------
# port 0: no fixed health-check port, so several workers can run at once; no
# load threshold: a busy test machine must not make the worker refuse jobs
server = AgentServer(port=0, num_idle_processes=1, load_threshold=float("inf"))


def _prewarm(proc: JobProcess) -> None:
    """Runs once per job process, before any job: load the models."""
    proc.userdata["vad"] = silero.VAD.load()
    proc.userdata["sphinx"] = OfflineSTT.load_recogniser(os.environ.get("SPEKO_AGENT_STT", "auto"))


server.setup_fnc = _prewarm


@server.rtc_session(agent_name="")
async def entrypoint(ctx: JobContext) -> None:
    """One room: an AgentSession with the offline parts, greeting first."""
    rules = [tuple(rule) for rule in json.loads(os.environ.get("SPEKO_AGENT_RULES") or "[]")]
    client_tools = [ToolRule(*rule) for rule in client_tool_rules(os.environ.get("SPEKO_AGENT_CLIENT_TOOLS"))]
    timeout = float(os.environ.get("SPEKO_AGENT_TOOL_TIMEOUT") or DEFAULT_TOOL_TIMEOUT)
    session: AgentSession[None] = AgentSession(
        stt=OfflineSTT(ctx.proc.userdata["sphinx"]),
        llm=ScriptedLLM(rules, [*client_tools, ToolRule(*AGENT_TOOL)]),  # type: ignore[arg-type]
        tts=OfflineTTS(voice=os.environ.get("SPEKO_AGENT_TTS", "auto")),
        vad=ctx.proc.userdata["vad"],
        turn_handling={"turn_detection": "vad", "interruption": {"mode": "vad"}},
    )
    # like a Speko agent, leave once the caller has gone (the session closes then)
    session.on("close", lambda _event: ctx.shutdown(reason="session closed"))
    agent = Agent(instructions="You are the offline Speko agent.", tools=agent_tools(client_tools, timeout))
    await session.start(agent=agent, room=ctx.room)
    greeting = os.environ.get("SPEKO_AGENT_GREETING", DEFAULT_GREETING)
    if greeting:
        session.say(greeting)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The offline Speko agent (a LiveKit Agents worker).")
    parser.add_argument("--url", default=os.environ.get("LIVEKIT_URL", "ws://127.0.0.1:7880"))
    parser.add_argument("--api-key", default=os.environ.get("LIVEKIT_API_KEY", "devkey"))
    parser.add_argument("--api-secret", default=os.environ.get("LIVEKIT_API_SECRET"))
    parser.add_argument("--greeting", default=os.environ.get("SPEKO_AGENT_GREETING", DEFAULT_GREETING),
                        help="what the agent says first ('' for nothing)")
    parser.add_argument("--rule", nargs=2, action="append", metavar=("REGEX", "REPLY"), default=[],
                        help="answer user turns matching REGEX with REPLY (repeatable)")
    parser.add_argument("--client-tool", nargs=4, action="append", default=[],
                        metavar=("REGEX", "METHOD", "ARGS_JSON", "REPLY"),
                        help="for user turns matching REGEX call the client's RPC method METHOD with ARGS_JSON "
                             "and say REPLY, {result} replaced by its answer (repeatable; replaces the default "
                             "set_light tools)")
    parser.add_argument("--tool-timeout", type=float,
                        default=float(os.environ.get("SPEKO_AGENT_TOOL_TIMEOUT") or DEFAULT_TOOL_TIMEOUT),
                        help="seconds a client tool may take (the client is told this less 7 s)")
    parser.add_argument("--tts", choices=("auto", "espeak", "tone"), default=os.environ.get("SPEKO_AGENT_TTS", "auto"))
    parser.add_argument("--stt", choices=("auto", "pocketsphinx", "describe"),
                        default=os.environ.get("SPEKO_AGENT_STT", "auto"))
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if not args.api_secret:
        parser.error("--api-secret (or LIVEKIT_API_SECRET) is required")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rules = json.loads(os.environ.get("SPEKO_AGENT_RULES") or "[]") + [list(r) for r in args.rule]
    configured = os.environ.get("SPEKO_AGENT_CLIENT_TOOLS")
    tools = [list(r) for r in client_tool_rules(configured)] if configured is not None or not args.client_tool else []
    tools += [list(r) for r in args.client_tool]
    try:
        for rule in tools:
            ToolRule(*rule)
    except (ValueError, re.error) as exc:
        parser.error(f"bad client tool: {exc}")
    # the job processes read their settings from the environment they inherit
    os.environ.update({"SPEKO_AGENT_GREETING": args.greeting, "SPEKO_AGENT_RULES": json.dumps(rules),
                       "SPEKO_AGENT_CLIENT_TOOLS": json.dumps(tools),
                       "SPEKO_AGENT_TOOL_TIMEOUT": str(args.tool_timeout),
                       "SPEKO_AGENT_TTS": args.tts, "SPEKO_AGENT_STT": args.stt})
    server.update_options(ws_url=args.url, api_key=args.api_key, api_secret=args.api_secret)

    @server.on("worker_registered")
    def _registered(worker_id: str, server_info: Any) -> None:
        print(f"worker registered: {worker_id}", flush=True)

    async def run() -> None:
        try:
            await server.run(devmode=False)
        finally:
            await server.aclose()
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
