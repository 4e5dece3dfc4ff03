"""Low-level Perfetto protobuf writing for the timeline export: packets, interning, lanes.

Everything goes through the `perfetto` package's bundled protos (`perfetto_trace_pb2`);
`trace_processor` is never used (it downloads a binary at run time and fails offline).
Packets are appended to a `Trace` message and flushed to the file every few thousand
packets: consecutive serialised `Trace` messages concatenate into one valid `Trace`
(a repeated field), so memory stays bounded however large the export.
"""
from __future__ import annotations

from typing import IO, Any, Iterable

from .errors import ProfkitError

MISSING_PERFETTO = "writing .pftrace needs the perfetto package: pip install 'profkit[perfetto]'"

# One writer = one trusted packet sequence (interned names are scoped to it).
SEQUENCE_ID = 0x7072_6B74  # "prkt"
_SEQ_INCREMENTAL_STATE_CLEARED = 1
_SEQ_NEEDS_INCREMENTAL_STATE = 2
_FLUSH_EVERY = 4096

TYPE_SLICE_BEGIN = 1
TYPE_SLICE_END = 2
TYPE_INSTANT = 3
TYPE_COUNTER = 4


def load_protos():
    """The perfetto_trace_pb2 module, or the one-line error saying how to get it."""
    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2
    except ImportError:
        raise ProfkitError(MISSING_PERFETTO) from None
    return perfetto_trace_pb2


class PacketWriter:
    """Writes TracePackets on one sequence, interning event names."""

    def __init__(self, file: IO[bytes], pb=None):
        self.pb = pb or load_protos()
        self.file = file
        self._names: dict[str, int] = {}
        self._next_uuid = 1
        self._flushed_packets = 0
        self.bytes = 0
        self._first = True
        self._new_trace()

    # -- plumbing --------------------------------------------------------------
    def _new_trace(self) -> None:
        self._trace = self.pb.Trace()
        self._add = self._trace.packet.add
        self._pending = 0

    @property
    def packets(self) -> int:
        return self._flushed_packets + self._pending

    def _packet(self):
        """A new packet on the sequence (flushing the batch first when it is full)."""
        if self._pending >= _FLUSH_EVERY:
            self.flush()
        packet = self._add()
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        self._pending += 1
        if self._first:
            # The first packet resets the sequence's incremental state (interned names).
            packet.first_packet_on_sequence = True
            packet.sequence_flags = _SEQ_INCREMENTAL_STATE_CLEARED
            self._first = False
        return packet

    def flush(self) -> None:
        if self._pending:
            data = self._trace.SerializeToString()
            self.file.write(data)
            self.bytes += len(data)
            self._flushed_packets += self._pending
            self._new_trace()

    def new_uuid(self) -> int:
        uuid = self._next_uuid
        self._next_uuid += 1
        return uuid

    # -- tracks --------------------------------------------------------------------
    def track(self, name: str, parent: int | None = None, *, counter: bool = False,
              description: str | None = None, order_rank: int | None = None,
              explicit_children: bool = False, merge_key: str | None = None) -> int:
        """Emit a TrackDescriptor and return its uuid."""
        uuid = self.new_uuid()
        desc = self._packet().track_descriptor
        desc.uuid = uuid
        desc.name = name
        if parent is not None:
            desc.parent_uuid = parent
        if description:
            desc.description = description
        if counter:
            desc.counter.SetInParent()
        if order_rank is not None:
            desc.sibling_order_rank = order_rank
        if explicit_children:
            desc.child_ordering = self.pb.TrackDescriptor.EXPLICIT
        if merge_key is not None:
            # Lanes of one logical track share a key, so the UI draws them as one track.
            desc.sibling_merge_behavior = self.pb.TrackDescriptor.SIBLING_MERGE_BEHAVIOR_BY_SIBLING_MERGE_KEY
            desc.sibling_merge_key = merge_key
        return uuid

    # -- events --------------------------------------------------------------------
    def _event(self, ts: int, kind: int, track: int):
        # The hot path (two calls per slice): inlined rather than via _packet().
        if self._pending >= _FLUSH_EVERY or self._first:
            packet = self._packet()
        else:
            packet = self._add()
            packet.trusted_packet_sequence_id = SEQUENCE_ID
            self._pending += 1
        packet.timestamp = ts
        packet.sequence_flags |= _SEQ_NEEDS_INCREMENTAL_STATE
        event = packet.track_event
        event.type = kind
        event.track_uuid = track
        return packet, event

    def _name(self, packet, event, name: str) -> None:
        iid = self._names.get(name)
        if iid is None:
            iid = len(self._names) + 1  # iid 0 is invalid
            self._names[name] = iid
            packet.interned_data.event_names.add(iid=iid, name=name)
        event.name_iid = iid

    def begin(self, ts: int, track: int, name: str, flows_out: Iterable[int] | None = None,
              flows_in: Iterable[int] | None = None, annotations: dict[str, Any] | None = None,
              instant: bool = False) -> None:
        packet, event = self._event(ts, TYPE_INSTANT if instant else TYPE_SLICE_BEGIN, track)
        self._name(packet, event, name)
        if flows_out:
            event.flow_ids.extend(flows_out)
        if flows_in:
            event.terminating_flow_ids.extend(flows_in)
        if annotations:
            add_annotations(event, annotations)

    def end(self, ts: int, track: int) -> None:
        if self._pending >= _FLUSH_EVERY:
            self.flush()
        packet = self._add()
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        self._pending += 1
        packet.timestamp = ts
        event = packet.track_event  # an end needs no interned state
        event.type = TYPE_SLICE_END
        event.track_uuid = track

    def counter(self, ts: int, track: int, value: float) -> None:
        _, event = self._event(ts, TYPE_COUNTER, track)
        event.double_counter_value = value

    def close(self) -> None:
        self.flush()


def add_annotations(event, annotations: dict[str, Any]) -> None:
    """Debug annotations (the "Arguments" pane of a selected slice in the UI)."""
    for key, value in annotations.items():
        if value is None:
            continue
        note = event.debug_annotations.add(name=key)
        if isinstance(value, bool):
            note.bool_value = value
        elif isinstance(value, int):
            note.int_value = value
        elif isinstance(value, float):
            note.double_value = value
        else:
            note.string_value = str(value)


class LaneTrack:
    """One logical track (a host thread, a device stream, the critical path).

    Perfetto nests slices on a track by a begin/end stack, so slices on one track must
    nest strictly. Real traces sometimes overlap partially on one thread or stream; such
    an event goes to an extra lane: a sibling track with the same name and merge key,
    which the UI draws as part of the same track. Events must arrive sorted by
    (start, end descending).
    """

    def __init__(self, writer: PacketWriter, name: str, parent: int | None, merge_key: str,
                 order_rank: int | None = None, description: str | None = None):
        self.writer = writer
        self.name = name
        self.parent = parent
        self.merge_key = merge_key
        self.description = description
        self.lanes: list[tuple[int, list[int]]] = []  # (uuid, stack of open end times)
        self.slices = 0
        self._new_lane(order_rank)

    def _new_lane(self, order_rank: int | None = None) -> tuple[int, list[int]]:
        uuid = self.writer.track(self.name, self.parent, merge_key=self.merge_key,
                                 order_rank=order_rank, description=self.description)
        lane = (uuid, [])
        self.lanes.append(lane)
        return lane

    @property
    def extra_lanes(self) -> int:
        return len(self.lanes) - 1

    def add(self, start: int, end: int, name: str, flows_out=None, flows_in=None, annotations=None) -> None:
        writer = self.writer
        chosen = None
        for lane in self.lanes:
            uuid, stack = lane
            while stack and stack[-1] <= start:
                writer.end(stack.pop(), uuid)
            if not stack or end <= stack[-1]:
                chosen = lane
                break
        if chosen is None:
            chosen = self._new_lane()
        uuid, stack = chosen
        if end <= start:
            writer.begin(start, uuid, name, flows_out, flows_in, annotations, instant=True)
        else:
            writer.begin(start, uuid, name, flows_out, flows_in, annotations)
            stack.append(end)
        self.slices += 1

    def close(self) -> None:
        for uuid, stack in self.lanes:
            while stack:
                self.writer.end(stack.pop(), uuid)
