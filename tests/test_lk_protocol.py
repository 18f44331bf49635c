"""LiveKit Agents' native protocol as packets (speko_sync.testing._lk_protocol), pure."""

from __future__ import annotations

import zlib

from livekit.protocol import models

from speko_sync.testing import _lk_protocol as lk


def test_text_stream_is_header_chunks_trailer_with_one_stream_id() -> None:
    packets = lk.text_stream(["Hello ", "there"], topic="lk.transcription", attributes={"a": "1"},
                             final_attributes={"lk.transcription_final": "true"}, sender_identity="user")
    kinds = [p.WhichOneof("value") for p in packets]
    assert kinds == ["stream_header", "stream_chunk", "stream_chunk", "stream_trailer"]
    header = packets[0].stream_header
    assert header.topic == "lk.transcription" and header.HasField("text_header")
    assert dict(header.attributes) == {"a": "1"}
    assert {p.participant_identity for p in packets} == {"user"}
    ids = {header.stream_id, packets[1].stream_chunk.stream_id, packets[3].stream_trailer.stream_id}
    assert len(ids) == 1
    assert [p.stream_chunk.chunk_index for p in packets[1:3]] == [0, 1]
    assert all(p.kind == models.DataPacket.Kind.RELIABLE for p in packets)


def test_agent_transcript_grows_and_turns_final_in_the_trailer() -> None:
    packets = lk.agent_transcript(["Hi", "you."], segment_id="SG_1", track_sid="TR_a")
    header, trailer = packets[0].stream_header, packets[-1].stream_trailer
    assert dict(header.attributes) == {"lk.segment_id": "SG_1", "lk.transcription_final": "false",
                                       "lk.transcribed_track_id": "TR_a"}
    assert b"".join(p.stream_chunk.content for p in packets[1:-1]) == b"Hi you."
    assert dict(trailer.attributes) == {"lk.transcription_final": "true"}


def test_user_transcript_is_a_whole_stream_on_the_users_behalf() -> None:
    packets = lk.user_transcript("[speech, 1.20 s]", user_identity="alice", segment_id="SG_2",
                                 track_sid="TR_mic", final=True)
    assert packets[0].participant_identity == "alice"
    assert packets[0].stream_header.attributes["lk.transcription_final"] == "true"
    assert packets[1].stream_chunk.content == b"[speech, 1.20 s]"


def test_legacy_transcription_names_who_was_transcribed() -> None:
    packet = lk.legacy_transcription(participant_identity="alice", track_sid="TR_mic", segment_id="SG_3",
                                     text="hello", final=False)
    t = packet.transcription
    assert (t.transcribed_participant_identity, t.track_id) == ("alice", "TR_mic")
    assert [(s.id, s.text, s.final) for s in t.segments] == [("SG_3", "hello", False)]


def test_assembler_rebuilds_wanted_topics_and_ignores_the_rest() -> None:
    assembler = lk.StreamAssembler(["lk.chat"])
    chat = lk.text_stream(["hel", "lo"], topic="lk.chat", attributes={}, final_attributes={"x": "y"})
    other = lk.text_stream(["no"], topic="lk.transcription", attributes={})
    done = [assembler.feed(p) for p in [other[0], chat[0], other[1], chat[1], chat[2], other[2], chat[3]]]
    assert done[:-1] == [None] * 6
    stream = done[-1]
    assert stream is not None and stream.topic == "lk.chat" and stream.text() == "hello"
    assert stream.attributes == {"x": "y"}
    assert assembler.feed(models.DataPacket(user=models.UserPacket(payload=b"{}"))) is None
    # a chunk or trailer of an unknown stream is ignored
    assert assembler.feed(chat[1]) is None and assembler.feed(chat[3]) is None


def test_assembler_takes_inline_and_compressed_content() -> None:
    assembler = lk.StreamAssembler(["lk.chat"])
    header = lk.text_stream([], topic="lk.chat", attributes={})[0]
    header.stream_header.inline_content = b"inline"
    stream = assembler.feed(header)
    assert stream is not None and stream.text() == "inline"
    packets = lk.text_stream([], topic="lk.chat", attributes={})
    packets[0].stream_header.compression = models.DataStream.CompressionType.DEFLATE_RAW
    compressor = zlib.compressobj(wbits=-15)
    packets.insert(1, models.DataPacket(stream_chunk=models.DataStream.Chunk(
        stream_id=packets[0].stream_header.stream_id,
        content=compressor.compress("zipped é".encode()) + compressor.flush())))
    results = [assembler.feed(p) for p in packets]
    assert results[-1] is not None and results[-1].text() == "zipped é"
