"""LiveKit Agents' native protocol as data packets, pure (no I/O).

What a LiveKit Agents worker puts on the wire, so that an in-process agent can
speak it too:

- text streams: a ``stream_header`` packet (topic, attributes, a text header),
  ``stream_chunk`` packets whose UTF-8 contents append, and a
  ``stream_trailer`` whose attributes are merged into the stream's;
- transcripts on topic ``lk.transcription`` with ``lk.segment_id``,
  ``lk.transcription_final`` and ``lk.transcribed_track_id``: the agent's own
  speech as one growing stream per segment (final in the trailer), the user's
  as a new full-text stream per update, published on the user's behalf;
- legacy ``Transcription`` packets (cumulative segment texts) for clients below
  client protocol 3;
- typed user turns arrive as text streams on ``lk.chat`` (see
  :class:`StreamAssembler`);
- the agent's state is its ``lk.agent.state`` attribute;
- the agent session stream: one serialized ``AgentSessionMessage`` per byte
  stream on ``lk.agent.session`` (LiveKit Agents' ``RoomSessionTransport``);
- LiveKit RPC, as the Rust SDK inside ``livekit.rtc`` does it: to a
  participant at client protocol 1 or above the request is a text stream on
  ``lk.rpc_request`` (v2; attributes carry id, method, timeout, version),
  else an ``RpcRequest`` packet (v1); the callee acks with an ``RpcAck``
  packet, answers a success with a text stream on ``lk.rpc_response`` (v2) or
  an ``RpcResponse`` packet (v1), and an error always with an ``RpcResponse``.

Streams go out as LiveKit SDKs send them (Data streams v2): when every
recipient is at client protocol 2 or above, a stream whose header packet fits
in one chunk (15000 bytes) is a lone header with its content inline (no chunk,
no trailer), deflated when every recipient advertises
``CAP_COMPRESSION_DEFLATE_RAW`` and that is smaller; otherwise a header,
chunks and a trailer (:func:`stream_format`).
"""

from __future__ import annotations

import secrets
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from livekit.protocol import models
from livekit.protocol.agent_pb import agent_session as agent_pb

from .._protocol import (  # the names the client reads are the ones the agent writes
    ATTR_AGENT_NAME,
    ATTR_AGENT_STATE,
    ATTR_FINAL,
    ATTR_SEGMENT_ID,
    ATTR_TRACK_ID,
    TOPIC_CHAT,
    TOPIC_TRANSCRIPTION,
)
from ..events import AgentState

__all__ = ["AGENT_STATES", "ATTR_AGENT_NAME", "ATTR_AGENT_STATE", "ATTR_FINAL", "ATTR_RPC_METHOD",
           "ATTR_RPC_REQUEST_ID", "ATTR_RPC_RESPONSE_TIMEOUT_MS", "ATTR_RPC_VERSION", "ATTR_SEGMENT_ID",
           "ATTR_TRACK_ID", "CLIENT_PROTOCOL_DATA_STREAM_RPC", "CLIENT_PROTOCOL_DATA_STREAM_V2",
           "CLIENT_PROTOCOL_TRANSCRIPTION_STREAMS", "MAX_RPC_V1_PAYLOAD_BYTES", "MAX_STREAM_BYTES",
           "RPC_MAX_ROUND_TRIP_S", "STREAM_CHUNK_BYTES", "TOPIC_AGENT_SESSION", "TOPIC_CHAT",
           "TOPIC_RPC_REQUEST", "TOPIC_RPC_RESPONSE", "TOPIC_TRANSCRIPTION", "IncomingStream", "StreamAssembler",
           "StreamFormat", "agent_handoff", "agent_state_changed", "agent_transcript", "byte_stream",
           "chat_message", "legacy_id", "legacy_transcription", "metrics_report", "new_id", "new_item_id",
           "rpc_ack", "rpc_effective_timeout_ms", "rpc_request", "rpc_request_stream", "rpc_response",
           "rpc_response_stream", "session_message", "session_stream", "stream_format", "text_stream",
           "timestamp", "transcript_attributes", "user_input_transcribed", "user_state_changed",
           "user_transcript", "whole_text_stream"]

AGENT_STATES = tuple(state.value for state in AgentState)
#: Clients at this client protocol or above rebuild transcripts from the streams;
#: below it LiveKit Agents also sends legacy ``Transcription`` packets.
CLIENT_PROTOCOL_TRANSCRIPTION_STREAMS = 3
#: Most bytes an assembler keeps for one incoming stream (longer ones are cut).
MAX_STREAM_BYTES = 1 << 20
_RELIABLE = models.DataPacket.Kind.RELIABLE

#: LiveKit Agents' session stream (``RoomSessionTransport``), one message per byte stream.
TOPIC_AGENT_SESSION = "lk.agent.session"
#: LiveKit RPC v2: requests and successful responses as text streams.
TOPIC_RPC_REQUEST = "lk.rpc_request"
TOPIC_RPC_RESPONSE = "lk.rpc_response"
ATTR_RPC_REQUEST_ID = "lk.rpc_request_id"
ATTR_RPC_METHOD = "lk.rpc_request_method"
ATTR_RPC_RESPONSE_TIMEOUT_MS = "lk.rpc_request_response_timeout_ms"
ATTR_RPC_VERSION = "lk.rpc_request_version"
#: From this client protocol on, LiveKit SDKs send RPC to a participant as streams (v2).
CLIENT_PROTOCOL_DATA_STREAM_RPC = 1
#: From this client protocol on, small streams go inline in their header packet.
CLIENT_PROTOCOL_DATA_STREAM_V2 = 2
#: Bytes per stream chunk, and the most a header packet with inline content may take.
STREAM_CHUNK_BYTES = 15000
#: Largest v1 RPC payload (bytes); v2 streams have no such limit.
MAX_RPC_V1_PAYLOAD_BYTES = 15360
#: The SDKs' default ``max_round_trip_latency`` (seconds): how long a caller waits
#: for the ack; the callee is told ``response_timeout`` minus this (1 s at least).
RPC_MAX_ROUND_TRIP_S = 7.0
_RPC_MIN_EFFECTIVE_TIMEOUT_S = 1.0
_DEFLATE_RAW = models.DataStream.CompressionType.DEFLATE_RAW


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def legacy_id(segment_id: str) -> str:
    """The id the legacy path gives a segment: LiveKit Agents' two transcript
    outputs number their segments independently, so the ids differ."""
    return f"{segment_id}_legacy"


def text_stream(chunks: Sequence[str], *, topic: str, attributes: Mapping[str, str],
                final_attributes: Mapping[str, str] | None = None, sender_identity: str = "",
                stream_id: str | None = None, timestamp_ms: int | None = None) -> list[models.DataPacket]:
    """A whole text stream: header, one chunk per entry of ``chunks`` (their
    texts append), trailer. ``sender_identity`` publishes it on someone else's
    behalf (agents only); ``final_attributes`` ride on the trailer."""
    stream_id = stream_id or new_id("ST")
    header = models.DataStream.Header(
        stream_id=stream_id, timestamp=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        topic=topic, mime_type="text/plain", attributes=dict(attributes),
        text_header=models.DataStream.TextHeader(operation_type=models.DataStream.OperationType.CREATE))
    packets = [models.DataPacket(kind=_RELIABLE, participant_identity=sender_identity, stream_header=header)]
    for index, chunk in enumerate(chunks):
        packets.append(models.DataPacket(kind=_RELIABLE, participant_identity=sender_identity,
                                         stream_chunk=models.DataStream.Chunk(
                                             stream_id=stream_id, chunk_index=index, content=chunk.encode())))
    packets.append(models.DataPacket(kind=_RELIABLE, participant_identity=sender_identity,
                                     stream_trailer=models.DataStream.Trailer(
                                         stream_id=stream_id, attributes=dict(final_attributes or {}))))
    return packets


def transcript_attributes(segment_id: str, track_sid: str, final: bool) -> dict[str, str]:
    return {ATTR_SEGMENT_ID: segment_id, ATTR_FINAL: "true" if final else "false", ATTR_TRACK_ID: track_sid}


def agent_transcript(words: Sequence[str], *, segment_id: str, track_sid: str) -> list[models.DataPacket]:
    """The agent's own speech of one segment: a single stream that grows word by
    word and turns final in its trailer, as LiveKit Agents' synchronised output."""
    chunks = [word if i == len(words) - 1 else word + " " for i, word in enumerate(words)]
    return text_stream(chunks, topic=TOPIC_TRANSCRIPTION,
                       attributes=transcript_attributes(segment_id, track_sid, False),
                       final_attributes={ATTR_FINAL: "true"})


def user_transcript(text: str, *, user_identity: str, segment_id: str, track_sid: str,
                    final: bool) -> list[models.DataPacket]:
    """One update of the user's transcript: a stream of its own with the whole
    text so far, published on the user's behalf."""
    return text_stream([text], topic=TOPIC_TRANSCRIPTION, sender_identity=user_identity,
                       attributes=transcript_attributes(segment_id, track_sid, final))


def legacy_transcription(*, participant_identity: str, track_sid: str, segment_id: str, text: str,
                         final: bool, language: str = "en") -> models.DataPacket:
    """A deprecated ``Transcription`` packet carrying one segment's text so far."""
    return models.DataPacket(kind=_RELIABLE, transcription=models.Transcription(
        transcribed_participant_identity=participant_identity, track_id=track_sid,
        segments=[models.TranscriptionSegment(id=segment_id, text=text, final=final, language=language)]))


# -- streams as LiveKit SDKs send them -------------------------------------------------
@dataclass(frozen=True)
class StreamFormat:
    """How a whole stream goes out: ``inline`` in a lone header packet (when it
    fits), its content ``compress``-ed with raw deflate (when that is smaller)."""

    inline: bool = False
    compress: bool = False


def stream_format(recipients: Iterable[tuple[int, Sequence[int]]]) -> StreamFormat:
    """The format LiveKit SDKs pick for the recipients' ``(client_protocol,
    capabilities)``: inline when all are at client protocol 2 or above, and
    compressed too when all also advertise ``CAP_COMPRESSION_DEFLATE_RAW``
    (no recipient at all counts as all of them)."""
    people = list(recipients)
    inline = all(protocol >= CLIENT_PROTOCOL_DATA_STREAM_V2 for protocol, _ in people)
    compress = inline and all(models.ClientInfo.Capability.CAP_COMPRESSION_DEFLATE_RAW in caps for _, caps in people)
    return StreamFormat(inline=inline, compress=compress)


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def _split(content: bytes, size: int, *, utf8: bool) -> list[bytes]:
    """``content`` in pieces of at most ``size`` bytes, not cutting a UTF-8
    character in two when ``utf8``."""
    pieces, start = [], 0
    while start < len(content):
        end = min(start + size, len(content))
        if utf8:
            while start + 1 < end < len(content) and content[end] & 0xC0 == 0x80:
                end -= 1
        pieces.append(content[start:end])
        start = end
    return pieces


def _whole_stream(header: models.DataStream.Header, data: bytes, fmt: StreamFormat, *,
                  destinations: Sequence[str], utf8: bool) -> list[models.DataPacket]:
    """A stream of ``data`` whole, in ``fmt``: a lone header with inline content
    when asked and it fits, else header, chunks and an empty trailer."""
    content = data
    if fmt.compress:
        deflated = _deflate(data)
        if len(deflated) < len(data):
            content = deflated
            header.compression = _DEFLATE_RAW
    header.total_length = len(data)  # always the uncompressed length

    def packet(**value: object) -> models.DataPacket:
        return models.DataPacket(kind=_RELIABLE, destination_identities=list(destinations), **value)  # type: ignore[arg-type]

    if fmt.inline:
        inline = models.DataStream.Header()
        inline.CopyFrom(header)
        inline.inline_content = content
        whole = packet(stream_header=inline)
        if whole.ByteSize() <= STREAM_CHUNK_BYTES:
            return [whole]
    packets = [packet(stream_header=header)]
    compressed = header.compression == _DEFLATE_RAW
    for index, piece in enumerate(_split(content, STREAM_CHUNK_BYTES, utf8=utf8 and not compressed)):
        packets.append(packet(stream_chunk=models.DataStream.Chunk(
            stream_id=header.stream_id, chunk_index=index, content=piece)))
    packets.append(packet(stream_trailer=models.DataStream.Trailer(stream_id=header.stream_id)))
    return packets


def byte_stream(data: bytes, *, topic: str, name: str, fmt: StreamFormat = StreamFormat(),
                destinations: Sequence[str] = (), mime_type: str = "application/octet-stream",
                attributes: Mapping[str, str] | None = None, stream_id: str | None = None,
                timestamp_ms: int | None = None) -> list[models.DataPacket]:
    """A whole byte stream (``send_bytes``) of ``data`` on ``topic``."""
    header = models.DataStream.Header(
        stream_id=stream_id or str(uuid.uuid4()),
        timestamp=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        topic=topic, mime_type=mime_type, attributes=dict(attributes or {}),
        byte_header=models.DataStream.ByteHeader(name=name))
    return _whole_stream(header, data, fmt, destinations=destinations, utf8=False)


def whole_text_stream(text: str, *, topic: str, fmt: StreamFormat = StreamFormat(),
                      destinations: Sequence[str] = (), attributes: Mapping[str, str] | None = None,
                      stream_id: str | None = None) -> list[models.DataPacket]:
    """A whole text stream (``send_text``) of ``text`` on ``topic``."""
    header = models.DataStream.Header(
        stream_id=stream_id or str(uuid.uuid4()), timestamp=int(time.time() * 1000),
        topic=topic, mime_type="text/plain", attributes=dict(attributes or {}),
        text_header=models.DataStream.TextHeader(operation_type=models.DataStream.OperationType.CREATE))
    return _whole_stream(header, text.encode(), fmt, destinations=destinations, utf8=True)


# -- LiveKit RPC -------------------------------------------------------------------
def rpc_effective_timeout_ms(response_timeout: float, max_round_trip_latency: float = RPC_MAX_ROUND_TRIP_S) -> int:
    """The deadline a caller tells the callee (ms): its ``response_timeout`` less
    ``max_round_trip_latency``, 1 s at least (as the Rust SDK computes it)."""
    return int(max(response_timeout - max_round_trip_latency, _RPC_MIN_EFFECTIVE_TIMEOUT_S) * 1000)


def rpc_request(request_id: str, method: str, payload: str, response_timeout_ms: int, *,
                destination: str, version: int = 1) -> models.DataPacket:
    """A v1 request packet."""
    return models.DataPacket(kind=_RELIABLE, destination_identities=[destination], rpc_request=models.RpcRequest(
        id=request_id, method=method, payload=payload, response_timeout_ms=response_timeout_ms, version=version))


def rpc_request_stream(request_id: str, method: str, payload: str, response_timeout_ms: int, *, destination: str,
                       fmt: StreamFormat = StreamFormat(), version: int = 2) -> list[models.DataPacket]:
    """A v2 request: the payload as a text stream on ``lk.rpc_request``."""
    return whole_text_stream(payload, topic=TOPIC_RPC_REQUEST, fmt=fmt, destinations=[destination], attributes={
        ATTR_RPC_REQUEST_ID: request_id, ATTR_RPC_METHOD: method,
        ATTR_RPC_RESPONSE_TIMEOUT_MS: str(response_timeout_ms), ATTR_RPC_VERSION: str(version)})


def rpc_ack(request_id: str, *, destination: str) -> models.DataPacket:
    return models.DataPacket(kind=_RELIABLE, destination_identities=[destination],
                             rpc_ack=models.RpcAck(request_id=request_id))


def rpc_response(request_id: str, *, destination: str, payload: str | None = None,
                 error: tuple[int, str, str] | None = None) -> models.DataPacket:
    """A v1 response packet: ``payload``, or ``error`` as (code, message, data)."""
    response = models.RpcResponse(request_id=request_id)
    if error is not None:
        response.error.CopyFrom(models.RpcError(code=error[0], message=error[1], data=error[2]))
    else:
        response.payload = payload or ""
    return models.DataPacket(kind=_RELIABLE, destination_identities=[destination], rpc_response=response)


def rpc_response_stream(request_id: str, payload: str, *, destination: str,
                        fmt: StreamFormat = StreamFormat()) -> list[models.DataPacket]:
    """A v2 success: the payload as a text stream on ``lk.rpc_response``."""
    return whole_text_stream(payload, topic=TOPIC_RPC_RESPONSE, fmt=fmt, destinations=[destination],
                             attributes={ATTR_RPC_REQUEST_ID: request_id})


# -- the agent session stream ------------------------------------------------------
_AGENT_STATE = {"initializing": agent_pb.AS_INITIALIZING, "idle": agent_pb.AS_IDLE,
                "listening": agent_pb.AS_LISTENING, "thinking": agent_pb.AS_THINKING,
                "speaking": agent_pb.AS_SPEAKING}
_USER_STATE = {"speaking": agent_pb.US_SPEAKING, "listening": agent_pb.US_LISTENING, "away": agent_pb.US_AWAY}
_ROLE = {"user": agent_pb.USER, "assistant": agent_pb.ASSISTANT, "system": agent_pb.SYSTEM,
         "developer": agent_pb.DEVELOPER}


def new_item_id() -> str:
    """A chat item id as LiveKit Agents makes them (``item_`` and 12 hex digits)."""
    return f"item_{secrets.token_hex(6)}"


def timestamp(seconds: float | None = None) -> Timestamp:
    """A protobuf timestamp of ``seconds`` since the epoch (default: now)."""
    ts = Timestamp()
    ts.FromNanoseconds(int((time.time() if seconds is None else seconds) * 1e9))
    return ts


def session_message(event: agent_pb.AgentSessionEvent, created_at: float | None = None) -> agent_pb.AgentSessionMessage:
    """``event`` as the one message of a session stream, stamped ``created_at``
    (epoch seconds, default now) unless it already has a time, as
    ``SessionHost`` stamps every event it sends."""
    message = agent_pb.AgentSessionMessage()
    message.event.CopyFrom(event)
    if created_at is not None or not event.HasField("created_at"):
        message.event.created_at.CopyFrom(timestamp(created_at))
    return message


def session_stream(message: agent_pb.AgentSessionMessage, *, fmt: StreamFormat = StreamFormat(),
                   destinations: Sequence[str] = ()) -> list[models.DataPacket]:
    """One session message as its byte stream on ``lk.agent.session`` (named
    ``AS_`` and 12 hex digits, as ``RoomSessionTransport.send_message``)."""
    return byte_stream(message.SerializeToString(), topic=TOPIC_AGENT_SESSION, name=f"AS_{secrets.token_hex(6)}",
                       fmt=fmt, destinations=destinations)


def agent_state_changed(old: str, new: str) -> agent_pb.AgentSessionEvent:
    """``old`` and ``new`` are ``lk.agent.state`` values (initializing, idle, listening...)."""
    return agent_pb.AgentSessionEvent(agent_state_changed=agent_pb.AgentSessionEvent.AgentStateChanged(
        old_state=_AGENT_STATE[old], new_state=_AGENT_STATE[new]))


def user_state_changed(old: str, new: str) -> agent_pb.AgentSessionEvent:
    """``old`` and ``new`` are speaking, listening or away."""
    return agent_pb.AgentSessionEvent(user_state_changed=agent_pb.AgentSessionEvent.UserStateChanged(
        old_state=_USER_STATE[old], new_state=_USER_STATE[new]))


def user_input_transcribed(transcript: str, *, final: bool) -> agent_pb.AgentSessionEvent:
    return agent_pb.AgentSessionEvent(user_input_transcribed=agent_pb.AgentSessionEvent.UserInputTranscribed(
        transcript=transcript, is_final=final))


def metrics_report(**values: float) -> agent_pb.MetricsReport:
    """A ``MetricsReport``: fields ending in ``_at`` are epoch seconds, the
    others seconds (``llm_node_ttft=0.05``, ``started_speaking_at=time.time()``)."""
    report = agent_pb.MetricsReport()
    for name, value in values.items():
        if name.endswith("_at"):
            getattr(report, name).CopyFrom(timestamp(value))
        else:
            setattr(report, name, value)
    return report


def chat_message(text: str, *, role: str, item_id: str | None = None, interrupted: bool = False,
                 created_at: float | None = None, metrics: agent_pb.MetricsReport | None = None,
                 transcript_confidence: float | None = None) -> agent_pb.AgentSessionEvent:
    """``conversation_item_added`` with a ``ChatMessage`` (``role`` user or
    assistant), as LiveKit Agents reports each turn once it is over."""
    message = agent_pb.ChatMessage(id=item_id or new_item_id(), role=_ROLE[role], interrupted=interrupted,
                                   metrics=metrics or agent_pb.MetricsReport(), created_at=timestamp(created_at))
    message.content.add(text=text)
    if transcript_confidence is not None:
        message.transcript_confidence = transcript_confidence
    return agent_pb.AgentSessionEvent(conversation_item_added=agent_pb.AgentSessionEvent.ConversationItemAdded(
        item=agent_pb.ChatContext.ChatItem(message=message)))


def agent_handoff(new_agent_id: str = "default_agent", *, old_agent_id: str = "",
                  item_id: str | None = None) -> agent_pb.AgentSessionEvent:
    """The first item of a session: the agent taking over (``agent_handoff``)."""
    handoff = agent_pb.AgentHandoff(id=item_id or new_item_id(), new_agent_id=new_agent_id,
                                    created_at=timestamp())
    if old_agent_id:
        handoff.old_agent_id = old_agent_id
    return agent_pb.AgentSessionEvent(conversation_item_added=agent_pb.AgentSessionEvent.ConversationItemAdded(
        item=agent_pb.ChatContext.ChatItem(agent_handoff=handoff)))


@dataclass
class IncomingStream:
    """A text stream being received."""

    topic: str
    sender: str
    attributes: dict[str, str]
    compressed: bool
    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    def text(self) -> str:
        data = b"".join(self.parts)
        if self.compressed:
            data = zlib.decompress(data, -15)
        return data.decode("utf-8", errors="replace")


class StreamAssembler:
    """Rebuilds incoming text streams from their packets.

    :meth:`feed` takes every data packet; it returns the finished stream when a
    packet completes one of the wanted ``topics`` (a header with inline content,
    or a trailer), else ``None``. Other packets are ignored.
    """

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = set(topics)
        self._open: dict[str, IncomingStream] = {}

    def feed(self, packet: models.DataPacket) -> IncomingStream | None:
        which = packet.WhichOneof("value")
        if which == "stream_header":
            header = packet.stream_header
            if header.topic not in self.topics or not header.HasField("text_header"):
                return None
            stream = IncomingStream(topic=header.topic, sender=packet.participant_identity,
                                    attributes=dict(header.attributes),
                                    compressed=header.compression == models.DataStream.CompressionType.DEFLATE_RAW)
            if header.inline_content:
                stream.parts.append(bytes(header.inline_content))
                return stream
            self._open[header.stream_id] = stream
        elif which == "stream_chunk":
            growing = self._open.get(packet.stream_chunk.stream_id)
            if growing is not None and growing.size < MAX_STREAM_BYTES:
                content = bytes(packet.stream_chunk.content)
                growing.parts.append(content)
                growing.size += len(content)
        elif which == "stream_trailer":
            done = self._open.pop(packet.stream_trailer.stream_id, None)
            if done is not None:
                done.attributes.update(packet.stream_trailer.attributes)
                return done
        return None
