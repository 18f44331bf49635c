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


CAP_DEFLATE = models.ClientInfo.Capability.CAP_COMPRESSION_DEFLATE_RAW


def test_stream_format_is_what_livekit_sdks_pick_for_their_recipients() -> None:
    assert lk.stream_format([(2, [1, CAP_DEFLATE]), (2, [CAP_DEFLATE])]) == lk.StreamFormat(inline=True, compress=True)
    assert lk.stream_format([(2, [CAP_DEFLATE]), (2, [])]) == lk.StreamFormat(inline=True, compress=False)
    assert lk.stream_format([(2, [CAP_DEFLATE]), (1, [CAP_DEFLATE])]) == lk.StreamFormat()
    assert lk.stream_format([]) == lk.StreamFormat(inline=True, compress=True)  # nobody to refuse it


def test_a_small_stream_goes_inline_in_its_header_and_a_big_one_in_chunks() -> None:
    (inline,) = lk.byte_stream(b"abc", topic="lk.agent.session", name="AS_1", fmt=lk.StreamFormat(inline=True),
                               destinations=["u"])
    header = inline.stream_header
    assert (header.inline_content, header.total_length, header.byte_header.name) == (b"abc", 3, "AS_1")
    assert header.mime_type == "application/octet-stream" and list(inline.destination_identities) == ["u"]
    big = bytes(range(256)) * 100  # 25600 bytes: the header would not fit in one packet
    packets = lk.byte_stream(big, topic="t", name="n", fmt=lk.StreamFormat(inline=True))
    assert [p.WhichOneof("value") for p in packets] == ["stream_header", "stream_chunk", "stream_chunk",
                                                        "stream_trailer"]
    assert not packets[0].stream_header.inline_content and packets[0].stream_header.total_length == len(big)
    assert b"".join(p.stream_chunk.content for p in packets[1:-1]) == big
    assert max(len(p.stream_chunk.content) for p in packets[1:-1]) <= lk.STREAM_CHUNK_BYTES
    chunked = lk.byte_stream(b"abc", topic="t", name="n")  # recipients below client protocol 2
    assert [p.WhichOneof("value") for p in chunked] == ["stream_header", "stream_chunk", "stream_trailer"]


def test_streams_are_deflated_only_when_that_is_smaller() -> None:
    text = "words and words " * 100
    (packet,) = lk.whole_text_stream(text, topic="lk.rpc_response", fmt=lk.StreamFormat(inline=True, compress=True))
    header = packet.stream_header
    assert header.compression == models.DataStream.CompressionType.DEFLATE_RAW and header.total_length == len(text)
    assert zlib.decompress(header.inline_content, -15).decode() == text
    assert lk.StreamAssembler(["lk.rpc_response"]).feed(packet).text() == text  # type: ignore[union-attr]
    (tiny,) = lk.byte_stream(b"\x01", topic="t", name="n", fmt=lk.StreamFormat(inline=True, compress=True))
    assert tiny.stream_header.compression == models.DataStream.CompressionType.NONE


def test_text_chunks_never_cut_a_character() -> None:
    text = "é" * 10000  # 20000 bytes
    packets = lk.whole_text_stream(text, topic="t")
    pieces = [p.stream_chunk.content for p in packets[1:-1]]
    assert len(pieces) == 2 and all(piece.decode() for piece in pieces)
    assert b"".join(pieces).decode() == text


def test_rpc_packets_and_streams_as_the_rust_sdk_sends_them() -> None:
    assert lk.rpc_effective_timeout_ms(10.0) == 3000 and lk.rpc_effective_timeout_ms(15.0) == 8000
    assert lk.rpc_effective_timeout_ms(5.0) == 1000 and lk.rpc_effective_timeout_ms(1.5, 0.5) == 1000
    v1 = lk.rpc_request("id1", "set_light", '{"on": true}', 3000, destination="user")
    assert list(v1.destination_identities) == ["user"]
    assert (v1.rpc_request.id, v1.rpc_request.method, v1.rpc_request.payload,
            v1.rpc_request.response_timeout_ms, v1.rpc_request.version) == ("id1", "set_light", '{"on": true}', 3000, 1)
    (v2,) = lk.rpc_request_stream("id2", "set_light", "{}", 8000, destination="user", fmt=lk.StreamFormat(inline=True))
    header = v2.stream_header
    assert header.topic == "lk.rpc_request" and header.HasField("text_header") and header.inline_content == b"{}"
    assert dict(header.attributes) == {"lk.rpc_request_id": "id2", "lk.rpc_request_method": "set_light",
                                       "lk.rpc_request_response_timeout_ms": "8000", "lk.rpc_request_version": "2"}
    assert lk.rpc_ack("id2", destination="agent").rpc_ack.request_id == "id2"
    ok = lk.rpc_response("id2", destination="agent", payload="done").rpc_response
    assert ok.WhichOneof("value") == "payload" and ok.payload == "done"
    failed = lk.rpc_response("id2", destination="agent", error=(1500, "broken", "")).rpc_response
    assert failed.WhichOneof("value") == "error" and (failed.error.code, failed.error.message) == (1500, "broken")
    (answer,) = lk.rpc_response_stream("id2", "done", destination="agent", fmt=lk.StreamFormat(inline=True))
    assert answer.stream_header.topic == "lk.rpc_response"
    assert dict(answer.stream_header.attributes) == {"lk.rpc_request_id": "id2"}


def test_session_messages_are_one_serialized_message_per_byte_stream() -> None:
    event = lk.chat_message("Hi.", role="assistant", metrics=lk.metrics_report(
        started_speaking_at=1000.5, stopped_speaking_at=1001.0, tts_node_ttfb=0.1))
    message = lk.session_message(event, created_at=1002.0)
    assert message.event.created_at.ToNanoseconds() == 1002 * 10**9
    (packet,) = lk.session_stream(message, fmt=lk.StreamFormat(inline=True))
    header = packet.stream_header
    assert header.topic == "lk.agent.session" and header.byte_header.name.startswith("AS_")
    decoded = type(message)()
    decoded.ParseFromString(header.inline_content)
    item = decoded.event.conversation_item_added.item.message
    assert item.content[0].text == "Hi." and item.id.startswith("item_")
    assert item.metrics.started_speaking_at.ToNanoseconds() == 1000_500_000_000
    assert item.metrics.tts_node_ttfb == 0.1 and not item.metrics.HasField("e2e_latency")
    stamped = lk.session_message(lk.agent_state_changed("listening", "speaking"))
    assert stamped.event.HasField("created_at")  # now, unless given
    change = stamped.event.agent_state_changed
    assert (change.old_state, change.new_state) == (2, 4)  # AS_LISTENING, AS_SPEAKING
    user = lk.user_state_changed("listening", "speaking").user_state_changed
    assert (user.old_state, user.new_state) == (1, 0)  # US_LISTENING, US_SPEAKING
    handoff = lk.agent_handoff().conversation_item_added.item
    assert handoff.WhichOneof("item") == "agent_handoff" and handoff.agent_handoff.new_agent_id == "default_agent"
