"""The reconciled transcript: pure rules, no I/O.

A conversation's transcript is a tuple of *turns*: one :class:`Message` per
uninterrupted stretch of one speaker, however many recogniser segments it took.
:func:`reconcile` folds one incoming message (a transcript update, an agent
message, a user message echo) into it and returns the new transcript; the old
one is never changed.

Rules, for an incoming message with a segment id:

1. *Re-delivery.* If the id names a segment of the source's open run (its
   turns since the other source last spoke), that segment's text is replaced:
   updates of a segment are cumulative, and a final may come twice. Ids from
   before the other source spoke are history: recognisers restart their ids per
   track, so an id can come round again in a later turn.
2. *Supersession.* A final under an unknown id replaces the open (non-final)
   trailing segment of the source's latest turn: some recognisers commit the
   final under a fresh id.
3. *New segment.* Otherwise it joins the source's turn if that source spoke
   last, else it opens a new turn.

A message without a segment id replaces the last turn when that turn is the
same source's and not final, else it opens a new turn.

A turn's text is its segments' texts in arrival order, joined with a space
(none before ``, . ! ? ; : ) ] } % ' "``); it is final when its last segment
is; its ``segment_id`` and ``started_at`` are its first segment's. The result is
ordered by ``started_at``, stably; a turn without one keeps its place after its
predecessor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, pairwise
from typing import Final

from .events import Message, MessageSource

__all__ = ["Transcript", "reconcile"]

_NO_SPACE_BEFORE = tuple(",.!?;:)]}%'\"")


#: A segment: (id, text, is_final). A plain tuple of atoms, which the garbage
#: collector stops tracking, as it does the turn's tuple of them: a long
#: transcript adds little to every full collection's walk.
_Segment = tuple[str | None, str, bool]
_ID: Final = 0
_TEXT: Final = 1
_FINAL: Final = 2


def _message(source: MessageSource, segments: tuple[_Segment, ...], started_at: float | None) -> Message:
    """A turn as one message."""
    text = ""
    for segment in segments:
        piece = segment[_TEXT].strip()
        if not piece:
            continue
        text = piece if not text else text + (piece if piece.startswith(_NO_SPACE_BEFORE) else " " + piece)
    return Message(source=source, text=text, is_final=segments[-1][_FINAL], segment_id=segments[0][_ID],
                   started_at=started_at)


@dataclass(frozen=True, slots=True)
class _Turn:
    source: MessageSource
    segments: tuple[_Segment, ...]
    started_at: float | None
    _cached: Message | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def message(self) -> Message:
        """The turn as one message (worked out once, when first asked for:
        turns never change)."""
        message = self._cached
        if message is None:
            message = _message(self.source, self.segments, self.started_at)
            object.__setattr__(self, "_cached", message)
        return message

    @property
    def is_final(self) -> bool:
        return self.segments[-1][_FINAL]

    def with_segment(self, index: int, segment: _Segment) -> _Turn:
        segments = list(self.segments)
        if index == len(segments):
            segments.append(segment)
        else:
            segments[index] = segment
        return _Turn(self.source, tuple(segments), self.started_at)


#: Reconciling touches the newest turns only: past ``_TAIL`` of them, the oldest
#: ``_CHUNK`` are frozen, so a long transcript costs each update what a short
#: one does (a rule that must look further back takes the slow, whole path).
_TAIL = 128
_CHUNK = 64


#: A frozen turn: (source value, segments, started_at), atoms and tuples of
#: atoms only, which the garbage collector stops tracking: however long a
#: transcript grows, its frozen turns add nothing to a full collection's walk.
_Frozen = tuple[str, tuple[_Segment, ...], float | None]
_SOURCES = {source.value: source for source in MessageSource}


def _freeze(turn: _Turn) -> _Frozen:
    return (turn.source.value, turn.segments, turn.started_at)


class _Head:
    """Frozen old turns, shared by every transcript made from one another
    until the next chunk is frozen. Turns and messages are made from them when
    asked for, and not kept: kept, they would be objects the collector walks."""

    __slots__ = ("chunks", "key")

    def __init__(self, chunks: tuple[tuple[_Frozen, ...], ...] = (), key: float = float("-inf")) -> None:
        self.chunks = chunks
        self.key = key  # the ordering key after the last of these turns

    def turns(self) -> tuple[_Turn, ...]:
        return tuple(_Turn(_SOURCES[source], segments, started_at)
                     for source, segments, started_at in chain.from_iterable(self.chunks))

    def messages(self) -> tuple[Message, ...]:
        return tuple(_message(_SOURCES[source], segments, started_at)
                     for source, segments, started_at in chain.from_iterable(self.chunks))


_NO_HEAD = _Head()


@dataclass(frozen=True)
class Transcript:
    """An immutable transcript: its turns, and :attr:`messages`, one per turn.

    Held as frozen old turns (``head``), shared with the transcripts it was
    made from, and the newest turns (``tail``), which is all an update usually
    needs; :attr:`turns` and :attr:`messages` are worked out when asked for."""

    head: _Head = _NO_HEAD
    tail: tuple[_Turn, ...] = ()

    @cached_property
    def turns(self) -> tuple[_Turn, ...]:
        return self.head.turns() + self.tail

    @cached_property
    def messages(self) -> tuple[Message, ...]:
        return self.head.messages() + tuple(turn.message for turn in self.tail)


def reconcile(transcript: Transcript, incoming: Message) -> Transcript:
    """Return ``transcript`` with ``incoming`` folded in (see the module rules)."""
    head, tail = transcript.head, transcript.tail
    if incoming.segment_id is None:  # the common case of JSON packets: a new last turn, nothing to search
        last = tail[-1] if tail else None  # (a transcript with frozen turns always has newer ones)
        if (last is None and not head.chunks) or (
                last is not None and (last.source != incoming.source or last.is_final)):
            if incoming.started_at is None or incoming.started_at >= next(
                    (turn.started_at for turn in reversed(tail) if turn.started_at is not None), head.key):
                segment = (None, incoming.text, incoming.is_final)
                return _chunked(head, (*tail, _Turn(incoming.source, (segment,), incoming.started_at)))
    if head.chunks:
        turns = _apply(list(transcript.tail), incoming, head.key, complete=False)
        if turns is not None:
            return _chunked(head, turns)
    turns = _apply(list(transcript.turns), incoming, float("-inf"), complete=True)
    assert turns is not None
    return _chunked(_NO_HEAD, turns)


def _apply(turns: list[_Turn], incoming: Message, start_key: float, *,
           complete: bool) -> tuple[_Turn, ...] | None:
    """The rules on ``turns`` (the whole transcript when ``complete``, else its
    newest turns, after turns whose ordering key ends at ``start_key``); the
    new turns in order, or ``None`` when an answer needs older turns."""
    segment = (incoming.segment_id, incoming.text, incoming.is_final)
    if incoming.segment_id is None:
        if turns and turns[-1].source == incoming.source and not turns[-1].is_final:
            turns[-1] = _Turn(incoming.source, (segment,), turns[-1].started_at or incoming.started_at)
        else:
            turns.append(_Turn(incoming.source, (segment,), incoming.started_at))
        return _ordered(turns, start_key, complete)
    # 1. re-delivery inside the source's open run
    for i in range(len(turns) - 1, -1, -1):
        turn = turns[i]
        if turn.source != incoming.source:
            break
        for j, known in enumerate(turn.segments):
            if known[_ID] == incoming.segment_id:
                turns[i] = turn.with_segment(j, segment)
                return _ordered(turns, start_key, complete)
    else:
        if not complete:
            return None  # the open run may go on in older turns
    # 2. a final under a fresh id supersedes the latest open segment of the source
    if incoming.is_final:
        latest = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].source == incoming.source), None)
        if latest is None and not complete:
            return None
        if latest is not None and not turns[latest].is_final:
            turn = turns[latest]
            turns[latest] = turn.with_segment(len(turn.segments) - 1, segment)
            return _ordered(turns, start_key, complete)
    # 3. a new segment: the speaker's current turn goes on, or a new turn opens
    if turns and turns[-1].source == incoming.source:
        turns[-1] = turns[-1].with_segment(len(turns[-1].segments), segment)
    else:
        turns.append(_Turn(incoming.source, (segment,), incoming.started_at))
    return _ordered(turns, start_key, complete)


def _ordered(turns: list[_Turn], start_key: float, complete: bool) -> tuple[_Turn, ...] | None:
    """Stable order by ``started_at``; a turn without one sorts with its
    predecessor. ``None`` when a turn would sort before ``start_key`` (among
    older turns than these)."""
    keys: list[float] = []
    previous = start_key
    for turn in turns:
        previous = turn.started_at if turn.started_at is not None else previous
        keys.append(previous)
    if not complete and keys and min(keys) < start_key:
        return None
    if all(a <= b for a, b in pairwise(keys)):
        return tuple(turns)
    order = sorted(range(len(turns)), key=lambda i: keys[i])
    return tuple(turns[i] for i in order)


def _chunked(head: _Head, turns: tuple[_Turn, ...]) -> Transcript:
    """A transcript of ``head`` then ``turns``, freezing the oldest of ``turns``
    into chunks while more than ``_TAIL`` are left."""
    if len(turns) > _TAIL:
        chunks, key = head.chunks, head.key
        while len(turns) > _TAIL:
            chunk, turns = turns[:_CHUNK], turns[_CHUNK:]
            for turn in chunk:
                key = turn.started_at if turn.started_at is not None else key
            chunks = (*chunks, tuple(_freeze(turn) for turn in chunk))
        head = _Head(chunks, key)
    return Transcript(head, turns)


@dataclass
class _Seen:
    started_at: float
    latest: str
    final: bool
    delivered: set[tuple[str, bool]]


class SegmentUpdates:
    """Decides which inbound transcript updates are new, and stamps them.

    LiveKit Agents may send one update by two paths, a ``lk.transcription``
    stream and a legacy ``Transcription`` packet, each with segment ids of its
    own. An update on one path joins the segment the other path has open for the
    same source and track when their texts agree (one is the start of the
    other) and the path has not joined that segment already (a path's next id
    is always a new segment, however its text begins); that segment's id is
    the one delivered. :meth:`accept` then lets
    each update through once, drops stale ones (a shorter partial after a longer
    one, a partial after the final) and gives every update of a segment the time
    the segment was first received. A final segment is forgotten once the other
    source has spoken, since ids recur in later turns. Not thread-safe: one
    owner (the loop) calls it.
    """

    MAX_SEGMENTS = 256

    def __init__(self) -> None:
        self._seen: dict[tuple[MessageSource, str], _Seen] = {}
        self._alias: dict[tuple[str, str], str] = {}  # (path, id) -> the segment id delivered
        self._open: dict[tuple[MessageSource, str, str], str] = {}  # (source, track, path) -> delivered id

    def _canonical(self, source: MessageSource, segment_id: str, text: str, track: str, path: str) -> str:
        known = self._alias.get((path, segment_id))
        if known is not None:
            return known
        canonical = segment_id
        # segments this path already delivered its share of: its next id is a new segment
        taken = {delivered for (alias_path, _), delivered in self._alias.items() if alias_path == path}
        for (other_source, other_track, other_path), other_id in self._open.items():
            if (other_source, other_track) != (source, track) or other_path == path or other_id in taken:
                continue
            seen = self._seen.get((source, other_id))
            if seen is not None and (seen.latest.startswith(text) or text.startswith(seen.latest)):
                canonical = other_id  # the same segment, seen through the other path
        if len(self._alias) >= self.MAX_SEGMENTS * 2:
            self._alias.pop(next(iter(self._alias)))
        self._alias[(path, segment_id)] = canonical
        return canonical

    def accept(self, source: MessageSource, segment_id: str, text: str, is_final: bool, now: float, *,
               track: str = "", path: str = "") -> Message | None:
        """The message to deliver for this update, or ``None`` if it is not new.
        ``track`` is the transcribed track, ``path`` names the transport it came by."""
        segment_id = self._canonical(source, segment_id, text, track, path)
        self._open[(source, track, path)] = segment_id
        key = (source, segment_id)
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self.MAX_SEGMENTS:
                self._seen.pop(next(iter(self._seen)))
            seen = self._seen[key] = _Seen(now, text, is_final, set())
        elif (text, is_final) in seen.delivered:
            return None
        elif not is_final and (seen.final or (seen.latest.startswith(text) and len(text) < len(seen.latest))):
            return None  # stale: the other path is behind
        seen.delivered.add((text, is_final))
        if len(text) >= len(seen.latest) or is_final:
            seen.latest = text
        seen.final = seen.final or is_final
        for other in [k for k, v in self._seen.items() if k[0] != source and v.final]:
            del self._seen[other]
        return Message(source=source, text=text, is_final=is_final, segment_id=segment_id,
                       started_at=seen.started_at)
