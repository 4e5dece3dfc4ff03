"""Low-level Perfetto protobuf writing for the timeline export: the packet sequence, track
descriptors, interned names.

Descriptors go through the `perfetto` package's bundled protos (`perfetto_trace_pb2`);
the many slice and counter packets are encoded in bulk to the same wire format
(profkit.timeline_slices). `trace_processor` is never used (it downloads a binary at run
time and fails offline). Packets are appended to a `Trace` message and flushed to the
file every few thousand packets: consecutive serialised `Trace` messages concatenate into
one valid `Trace` (a repeated field), so memory stays bounded however large the export.
"""
from __future__ import annotations

from typing import IO

from .errors import ProfkitError

MISSING_PERFETTO = "writing .pftrace needs the perfetto package: pip install 'profkit[perfetto]'"

# One writer = one trusted packet sequence (interned names are scoped to it).
SEQUENCE_ID = 0x7072_6B74  # "prkt"
_SEQ_INCREMENTAL_STATE_CLEARED = 1
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

    def write_encoded(self, data: bytes, packets: int) -> None:
        """Packets encoded elsewhere (profkit.timeline_slices), after those pending."""
        self.flush()
        self.file.write(data)
        self.bytes += len(data)
        self._flushed_packets += packets

    @property
    def names(self) -> dict[str, int]:
        """Event names interned so far, and their iids."""
        return self._names

    def intern(self, name: str) -> int:
        """A new iid for `name` (the packet that first uses it carries it: timeline_slices)."""
        iid = self._names[name] = len(self._names) + 1  # iid 0 is invalid
        return iid

    def new_uuid(self) -> int:
        uuid = self._next_uuid
        self._next_uuid += 1
        return uuid

    # -- tracks --------------------------------------------------------------------
    def track(self, name: str, parent: int | None = None, *, counter: bool = False,
              description: str | None = None, order_rank: int | None = None,
              explicit_children: bool = False, merge_key: str | None = None, uuid: int | None = None) -> int:
        """Emit a TrackDescriptor and return its uuid (a new one unless given)."""
        uuid = self.new_uuid() if uuid is None else uuid
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

    def close(self) -> None:
        self.flush()
