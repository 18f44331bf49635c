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
- the agent's state is its ``lk.agent.state`` attribute.
"""

from __future__ import annotations

import secrets
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from livekit.protocol import models

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

__all__ = ["AGENT_STATES", "ATTR_AGENT_NAME", "ATTR_AGENT_STATE", "ATTR_FINAL", "ATTR_SEGMENT_ID", "ATTR_TRACK_ID",
           "CLIENT_PROTOCOL_TRANSCRIPTION_STREAMS", "MAX_STREAM_BYTES", "TOPIC_CHAT", "TOPIC_TRANSCRIPTION",
           "IncomingStream", "StreamAssembler", "agent_transcript", "legacy_id", "legacy_transcription", "new_id",
           "text_stream", "transcript_attributes", "user_transcript"]

AGENT_STATES = tuple(state.value for state in AgentState)
#: Clients at this client protocol or above rebuild transcripts from the streams;
#: below it LiveKit Agents also sends legacy ``Transcription`` packets.
CLIENT_PROTOCOL_TRANSCRIPTION_STREAMS = 3
#: Most bytes an assembler keeps for one incoming stream (longer ones are cut).
MAX_STREAM_BYTES = 1 << 20
_RELIABLE = models.DataPacket.Kind.RELIABLE


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
