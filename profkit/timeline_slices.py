"""The timeline's slices (and counter samples) written in bulk: placed on lanes, then
encoded many packets at a time.

Perfetto nests slices on a track by a begin/end stack, so slices on one track must nest
strictly. Real traces sometimes overlap partially on one thread or stream; such a slice
goes to an extra lane: a sibling track with the same name and merge key, which the UI
draws as part of the same track. `Lanes` places each slice on the first lane it nests in
(events arriving sorted by start, then end descending), one small loop of integers a
slice; the packets (a begin and an end per slice, an instant for a zero-length one) are
then encoded column by column, 32k at a time (profkit.protobuf_columns): one protobuf
object a packet took 7 s to export a 1M-event trace, against 1.7 s now.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from . import protobuf_columns as pc
from .timeline_writer import SEQUENCE_ID, TYPE_COUNTER, TYPE_INSTANT, TYPE_SLICE_BEGIN, TYPE_SLICE_END, PacketWriter

_NEEDS_INCREMENTAL_STATE = 2
# Field numbers (perfetto_trace.proto); tests/test_protobuf_columns.py holds the encoding
# to the protobuf library's, tests/test_timeline.py the packets to the UI's needs.
_PACKET, _TIMESTAMP, _SEQUENCE_ID, _TRACK_EVENT, _INTERNED, _FLAGS = 1, 8, 10, 11, 12, 13
_ANNOTATION, _TYPE, _NAME_IID, _TRACK_UUID, _FLOWS_OUT, _FLOWS_IN = 4, 9, 10, 11, 47, 48
_COUNTER_VALUE = 44  # TrackEvent.double_counter_value
_EVENT_NAMES, _IID, _NAME = 2, 1, 2
_NOTE_BOOL, _NOTE_INT, _NOTE_DOUBLE, _NOTE_STRING, _NOTE_NAME = 2, 4, 5, 6, 10


@dataclass
class Track:
    """A logical track's descriptor, given to every lane of it."""
    name: str
    parent: int | None
    merge_key: str
    order_rank: int | None = None
    description: str | None = None


@dataclass
class Placed:
    """Packets of a batch, in the order written: `event` the batch position of a begin or
    instant (-1 for an end), `uuid` its lane, `end_ts` an end's time; `new_lanes` the lane
    descriptors to write before the packet at each position."""
    event: list[int] = field(default_factory=list)
    uuid: list[int] = field(default_factory=list)
    end_ts: list[int] = field(default_factory=list)
    new_lanes: list[tuple[int, int, Track]] = field(default_factory=list)  # (position, uuid, track)


class Lanes:
    """The lanes of the track being written and the slices still open on each."""

    def __init__(self, writer: PacketWriter):
        self.w = writer
        self.track: Track | None = None
        self.lanes: list[tuple[int, list[int]]] = []  # (uuid, ends of the open slices)
        self.slices = 0
        self.extra_lanes = 0

    def open(self, track: Track, placed: Placed) -> None:
        """Close the current track, and start `track` with its first lane."""
        self.close(placed)
        self.track = track
        self._new_lane(placed)

    def _new_lane(self, placed: Placed) -> tuple[int, list[int]]:
        lane = (self.w.new_uuid(), [])
        # An extra lane sorts beside the first by its merge key, not by a rank of its own.
        track = self.track if not self.lanes else replace(self.track, order_rank=None)
        placed.new_lanes.append((len(placed.event), lane[0], track))
        self.lanes.append(lane)
        return lane

    def place(self, starts: Sequence[int], ends: Sequence[int], lo: int, hi: int, placed: Placed) -> None:
        """Slices lo .. hi-1 of the batch, all of the current track."""
        event, uuid, end_ts = placed.event.append, placed.uuid.append, placed.end_ts.append
        lanes = self.lanes
        for i in range(lo, hi):
            start, end = starts[i], ends[i]
            for lane in lanes:
                lane_uuid, stack = lane
                while stack and stack[-1] <= start:
                    event(-1)
                    uuid(lane_uuid)
                    end_ts(stack.pop())
                if not stack or end <= stack[-1]:
                    break
            else:
                lane_uuid, stack = self._new_lane(placed)
                self.extra_lanes += 1
            event(i)
            uuid(lane_uuid)
            end_ts(0)
            if end > start:
                stack.append(end)
        self.slices += hi - lo

    def close(self, placed: Placed) -> None:
        """End every slice still open, lane by lane, innermost first."""
        for lane_uuid, stack in self.lanes:
            while stack:
                placed.event.append(-1)
                placed.uuid.append(lane_uuid)
                placed.end_ts.append(stack.pop())
        self.lanes = []


@dataclass
class Note:
    """A debug annotation of the slices of a batch where `present` (the "Arguments" pane of
    a selected slice). `kind`: "int" (int64 `values`), "double", "bool", or "string" (each
    slice's `values` a code into `table`)."""
    key: str
    kind: str
    values: np.ndarray
    present: np.ndarray
    table: Sequence[str] = ()


def table_codes(values: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct values in order of first appearance, and each value's code into them."""
    table = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(table)}
    return table, np.array([index[v] for v in values], np.int64)


def notes_of(annotations: Sequence[dict[str, Any]]) -> list[Note]:
    """Notes from one dict a slice: keys in order of first appearance, None values left
    out; bools, ints and floats as such, anything else as its str(); a key whose values
    differ in type gets a note a type, each present where its type is."""
    keys = list(dict.fromkeys(k for a in annotations for k in a))
    notes = []
    for key in keys:
        values = [a.get(key) for a in annotations]
        for kind, test in (("bool", lambda v: isinstance(v, bool)),
                           ("int", lambda v: isinstance(v, int) and not isinstance(v, bool)),
                           ("double", lambda v: isinstance(v, float)),
                           ("string", lambda v: v is not None and not isinstance(v, (bool, int, float)))):
            present = np.array([test(v) for v in values], bool)
            if not present.any():
                continue
            if kind == "string":
                table, codes = table_codes([str(v) for v, p in zip(values, present) if p])
                every = np.zeros(len(values), np.int64)
                every[present] = codes
                notes.append(Note(key, kind, every, present, table))
            else:
                dtype = {"bool": np.int64, "int": np.int64, "double": np.float64}[kind]
                notes.append(Note(key, kind, np.array([v if p else 0 for v, p in zip(values, present)], dtype),
                                  present))
    return notes


def _note_fields(notes: Sequence[Note], slices: np.ndarray) -> list[pc.Field]:
    """One DebugAnnotation message a note, for packets opening `slices`."""
    rows, fields = len(slices), []
    for note in notes:
        present = note.present[slices]
        everywhere = bool(present.all())
        mask = None if everywhere else present
        values = note.values[slices]
        if note.kind == "string":
            value: pc.Field = pc.Text(_NOTE_STRING, [t.encode() for t in note.table], values, mask)
        elif note.kind == "double":
            value = pc.Fixed64s(_NOTE_DOUBLE, present.astype(np.int64), values[present].view(np.uint64))
        else:
            value = pc.Varint(_NOTE_BOOL if note.kind == "bool" else _NOTE_INT, values, mask)
        key = pc.Constant(pc.text_field(_NOTE_NAME, note.key), mask)
        fields.append(pc.Message(_ANNOTATION, [value, key], rows, mask))
    return fields


_CHUNK = 1 << 15  # packets encoded at once: bounds the encoder's columns (~3 MB each)


def write_batch(w: PacketWriter, placed: Placed, starts: np.ndarray, ends: np.ndarray,
                names: Sequence[str], name_codes: np.ndarray,
                flows_out: tuple[np.ndarray, np.ndarray] | None = None,
                flows_in: tuple[np.ndarray, np.ndarray] | None = None,
                notes: Sequence[Note] = ()) -> None:
    """The packets `placed` for a batch of slices (`starts`, `ends`, each slice's name a
    code into `names`; flows as (count a slice, ids in slice order)), with the lane
    descriptors due between them, to the writer's file."""
    event = np.array(placed.event, np.int64)
    rows = len(event)
    opening = event >= 0
    iids, first_use, texts = _interned(w, names, name_codes, event[opening])
    iid = np.zeros(rows, np.int64)
    iid[opening] = iids
    interns = np.zeros(rows, bool)
    interns[np.flatnonzero(opening)[first_use]] = True
    packets = _Packets(event, np.array(placed.uuid, np.uint64), np.array(placed.end_ts, np.int64), iid, interns,
                       starts, ends, texts, name_codes, flows_out, flows_in, notes)
    lanes = iter(placed.new_lanes)
    lane = next(lanes, None)
    for lo in range(0, rows, _CHUNK):
        hi = min(lo + _CHUNK, rows)
        data, at = packets.encode(lo, hi)
        offsets = np.append(at, len(data)).tolist()
        done = lo
        while lane is not None and lane[0] < hi:  # each lane described before its first packet
            position, uuid, track = lane
            w.write_encoded(data[offsets[done - lo]:offsets[position - lo]], position - done)
            _describe(w, uuid, track)
            done = position
            lane = next(lanes, None)
        w.write_encoded(data[offsets[done - lo]:], hi - done)
    while lane is not None:  # lanes opened after the last packet (an empty batch)
        _describe(w, lane[1], lane[2])
        lane = next(lanes, None)


@dataclass
class _Packets:
    """A batch's packets by their columns, encoded a range at a time in three shapes, each
    column by column: ends; begins (and instants); begins that intern their name."""
    event: np.ndarray      # the slice a packet opens, -1 for an end
    uuid: np.ndarray       # its lane
    end_ts: np.ndarray     # an end's time
    iid: np.ndarray        # a begin's name
    interns: np.ndarray    # a begin carrying its name's first use
    starts: np.ndarray     # by slice, as the rest
    ends: np.ndarray
    texts: list[bytes]
    name_codes: np.ndarray
    flows_out: tuple[np.ndarray, np.ndarray] | None
    flows_in: tuple[np.ndarray, np.ndarray] | None
    notes: Sequence[Note]

    def encode(self, lo: int, hi: int) -> tuple[bytes, np.ndarray]:
        event, uuid, iid = self.event[lo:hi], self.uuid[lo:hi], self.iid[lo:hi]
        interns = self.interns[lo:hi]
        groups = []
        closing = np.flatnonzero(event < 0)
        if len(closing):
            # An end needs no interned state (no name): no sequence flags.
            groups.append((closing, _packet(self.end_ts[lo:hi][closing], [
                pc.Constant(pc.varint_field(_TYPE, TYPE_SLICE_END)), pc.Varint(_TRACK_UUID, uuid[closing])],
                needs_state=False)))
        for interning in (False, True):
            pick = np.flatnonzero((event >= 0) & (interns == interning))
            if not len(pick):
                continue
            n, slices = len(pick), event[pick]
            kind = np.where(self.ends[slices] > self.starts[slices], TYPE_SLICE_BEGIN, TYPE_INSTANT)
            fields = _note_fields(self.notes, slices) + [
                pc.Varint(_TYPE, kind), pc.Varint(_NAME_IID, iid[pick]), pc.Varint(_TRACK_UUID, uuid[pick])]
            for number, flows in ((_FLOWS_OUT, self.flows_out), (_FLOWS_IN, self.flows_in)):
                if flows is not None:
                    fields.append(pc.Fixed64s(number, flows[0][slices], _ragged_rows(flows, slices)))
            interned = pc.Message(_INTERNED, [pc.Message(_EVENT_NAMES, [
                pc.Varint(_IID, iid[pick]), pc.Text(_NAME, self.texts, self.name_codes[slices])], n)], n)
            groups.append((pick, _packet(self.starts[slices], fields, interned if interning else None)))
        return pc.encode(hi - lo, [(positions, [packet]) for positions, packet in groups])


def _packet(ts: np.ndarray, event: list[pc.Field], interned: pc.Field | None = None,
            needs_state: bool = True) -> pc.Message:
    """TracePackets on the writer's sequence, fields in number order: time, sequence,
    the TrackEvent of fields `event`, interned names if any, and the flag saying the
    packet reads interned state (any with a name or a counter value; not an end)."""
    n = len(ts)
    fields = [pc.Varint(_TIMESTAMP, ts), pc.Constant(pc.varint_field(_SEQUENCE_ID, SEQUENCE_ID)),
              pc.Message(_TRACK_EVENT, event, n)]
    if interned is not None:
        fields.append(interned)
    if needs_state:
        fields.append(pc.Constant(pc.varint_field(_FLAGS, _NEEDS_INCREMENTAL_STATE)))
    return pc.Message(_PACKET, fields, n)


def _ragged_rows(ragged: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The values of `rows` (increasing) of a ragged column (count a row, values in row order)."""
    counts, values = ragged
    wanted = np.zeros(len(counts), bool)
    wanted[rows] = True
    return values[np.repeat(wanted, counts)]


def write_counters(w: PacketWriter, ts: np.ndarray, tracks: np.ndarray, values: np.ndarray) -> None:
    """Counter samples (time, counter track, value), encoded at once."""
    n = len(ts)
    if not n:
        return
    packet = _packet(ts, [
        pc.Constant(pc.varint_field(_TYPE, TYPE_COUNTER)), pc.Varint(_TRACK_UUID, tracks.astype(np.uint64)),
        pc.Fixed64s(_COUNTER_VALUE, np.ones(n, np.int64), values.astype(np.float64).view(np.uint64))])
    w.write_encoded(pc.encode(n, [(np.arange(n), [packet])])[0], n)


def _describe(w: PacketWriter, uuid: int, track: Track) -> None:
    w.track(track.name, track.parent, merge_key=track.merge_key, order_rank=track.order_rank,
            description=track.description, uuid=uuid)


def _interned(w: PacketWriter, names: Sequence[str], codes: np.ndarray, of: np.ndarray):
    """(iid of each begin's name, positions among the begins where a name is first used
    and so interned there, the names' UTF-8 by code)."""
    used = codes[of]
    lookup = np.zeros(len(names), np.int64)
    first_use = np.zeros(0, np.int64)
    if len(used):
        codes_seen, first = np.unique(used, return_index=True)
        fresh = sorted((int(p), int(c)) for c, p in zip(codes_seen, first) if names[c] not in w.names)
        for _, code in fresh:  # iids in order of first use, as when written one by one
            w.intern(names[code])
        first_use = np.array([p for p, _ in fresh], np.int64)
        for code in codes_seen.tolist():
            lookup[code] = w.names[names[code]]
    return lookup[used], first_use, [n.encode() for n in names]
