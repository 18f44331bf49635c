"""What the agent says in a LiveKit room besides its audio, on the room
loop: ``lk.transcription`` text streams and legacy transcriptions (both
become messages through the core's segment updates), Speko's JSON data
packets (no topic) and control packets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from livekit import rtc

from . import _protocol
from ._protocol import ATTR_FINAL, ATTR_SEGMENT_ID, ATTR_TRACK_ID, TOPIC_CONTROL
from ._transport import Core
from .events import MessageSource

log = logging.getLogger("speko_sync")


class RoomText:
    """The transcripts and packets of one room; ``room()`` is the room joined
    (``None`` before the join)."""

    def __init__(self, core: Core, room: Callable[[], rtc.Room | None]) -> None:
        self._core = core
        self._room = room
        self._readers: set[asyncio.Task[None]] = set()  # lk.transcription streams being read
        self.packets_received = 0
        self.malformed = 0
        self.ignored = 0

    # -- transcripts --------------------------------------------------------------------
    def _source_of(self, identity: str | None, track_sid: str | None) -> MessageSource:
        """User speech is the transcript of our own microphone track, published
        on our behalf; everything else is the agent's."""
        room = self._room()
        if room is None:
            return MessageSource.AGENT
        local = room.local_participant
        if identity == local.identity or (track_sid and track_sid in local.track_publications):
            return MessageSource.USER
        return MessageSource.AGENT

    def on_transcription_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        task = asyncio.get_running_loop().create_task(self._read_transcription(reader, sender))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read_transcription(self, reader: rtc.TextStreamReader, sender: str) -> None:
        """One ``lk.transcription`` stream: the agent's speech grows chunk by chunk
        and turns final in its trailer; the user's comes whole, one stream per update."""
        info = reader.info
        attributes = dict(info.attributes or {})
        segment_id = attributes.get(ATTR_SEGMENT_ID) or info.stream_id
        track = attributes.get(ATTR_TRACK_ID, "")
        source = self._source_of(sender, track)
        final_at_open = attributes.get(ATTR_FINAL) == "true"
        text = ""
        try:
            async for chunk in reader:
                text += chunk
                if not final_at_open:
                    self._core.transcribed(source, segment_id, text, False, track=track, path="stream")
        except Exception as exc:  # the sender aborted it, or the room went
            log.debug("transcription stream %s ended early: %r", info.stream_id, exc)
            return
        final = final_at_open or (info.attributes or {}).get(ATTR_FINAL) == "true"
        self._core.transcribed(source, segment_id, text, final, track=track, path="stream")

    def on_legacy_transcription(self, segments: list[rtc.TranscriptionSegment],
                                 participant: rtc.Participant | None,
                                 publication: rtc.TrackPublication | None) -> None:
        identity = participant.identity if participant is not None else None
        track = publication.sid if publication is not None else ""
        source = self._source_of(identity, track)
        for segment in segments:
            self._core.transcribed(source, segment.id, segment.text, segment.final, track=track, path="legacy")

    # -- data packets -------------------------------------------------------------------
    def on_data(self, packet: rtc.DataPacket) -> None:
        """Speko's JSON packets (no topic) and control events; anything else in
        the room (other topics, other publishers' formats) is ignored."""
        self.packets_received += 1
        if packet.topic == TOPIC_CONTROL:
            self._on_control(packet.data)
            return
        if packet.topic:
            self.ignored += 1
            log.debug("ignoring a data packet on topic %r", packet.topic)
            return
        try:
            message = _protocol.decode(packet.data)
        except _protocol.InvalidPacket as exc:
            self.malformed += 1
            self.ignored += 1
            log.debug("ignoring a data packet that is not Speko's: %s", exc)
            return
        if message is None:
            self.ignored += 1  # a Speko packet type this client does not know
            return
        self._core.deliver(message)

    def _on_control(self, payload: bytes) -> None:
        try:
            event = _protocol.decode_control(payload)
        except _protocol.InvalidPacket as exc:
            self.ignored += 1
            log.debug("ignoring a control packet: %s", exc)
            return
        self._core.session_event("control", event)

    def close(self) -> None:
        for task in self._readers:
            task.cancel()
