"""Messages encoded column by column (profkit.protobuf_columns) are the bytes the protobuf
library writes for the same messages: TracePackets of every shape the timeline writes,
drawn by hypothesis, built both ways and compared byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from profkit import protobuf_columns as pc

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")

U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
# More names than protobuf_columns writes one by one: its other way of writing texts.
NAMES = ["k", "", "ampere_sgemm_128x64_nn", "caf\u00e9 \u00fcber", "x" * 300] + [f"kernel_{i}" for i in range(70)]
ROW = st.fixed_dictionaries({
    "ts": U64, "type": st.sampled_from([1, 2, 3]), "track": U64,
    "name": st.none() | st.integers(0, len(NAMES) - 1), "iid": st.integers(1, 2**40),
    "out": st.lists(U64, max_size=3), "in": st.lists(U64, max_size=2),
    "note": st.none() | st.tuples(st.sampled_from(["cause", "segment"]), I64),
    "flags": st.booleans(),
})


def _by_library(rows) -> bytes:
    trace = pb.Trace()
    for r in rows:
        p = trace.packet.add()
        p.timestamp = r["ts"]
        p.trusted_packet_sequence_id = 7
        e = p.track_event
        if r["note"]:
            e.debug_annotations.add(name=r["note"][0]).int_value = r["note"][1]
        e.type = r["type"]
        e.track_uuid = r["track"]
        if r["name"] is not None:
            e.name_iid = r["iid"]
            p.interned_data.event_names.add(iid=r["iid"], name=NAMES[r["name"]])
        e.flow_ids.extend(r["out"])
        e.terminating_flow_ids.extend(r["in"])
        if r["flags"]:
            p.sequence_flags = 2
    return trace.SerializeToString()


def _by_columns(rows) -> bytes:
    """The rows in two groups (with a note or not), as the timeline writes them in shapes."""
    groups = []
    for noted in (False, True):
        positions = np.array([i for i, r in enumerate(rows) if (r["note"] is not None) == noted], np.int64)
        part = [rows[i] for i in positions]
        if len(part):
            groups.append((positions, [pc.Message(1, _packet_fields(part, noted), len(part))]))
    data, starts = pc.encode(len(rows), groups)
    sizes = np.diff(np.append(starts, len(data)))
    assert (sizes > 0).all()
    return data


def _packet_fields(rows, noted: bool) -> list:
    n = len(rows)
    col = lambda key: np.array([r[key] for r in rows], np.uint64)  # noqa: E731
    named = np.array([r["name"] is not None for r in rows], bool)
    iid = np.array([r["iid"] if r["name"] is not None else 0 for r in rows], np.uint64)
    event = []
    if noted:
        keys = [b"cause", b"segment"]
        note_key = np.array([keys.index(r["note"][0].encode()) for r in rows], np.int64)
        note_value = np.array([r["note"][1] for r in rows], np.int64)
        event.append(pc.Message(4, [pc.Varint(4, note_value), pc.Text(10, keys, note_key)], n))
    event += [
        pc.Varint(9, col("type")),
        pc.Varint(10, iid, named),
        pc.Varint(11, col("track")),
        pc.Fixed64s(47, [len(r["out"]) for r in rows], np.array([f for r in rows for f in r["out"]], np.uint64)),
        pc.Fixed64s(48, [len(r["in"]) for r in rows], np.array([f for r in rows for f in r["in"]], np.uint64)),
    ]
    names = [name.encode() for name in NAMES]
    interned = pc.Message(12, [pc.Message(2, [
        pc.Varint(1, iid, named), pc.Text(2, names, np.array([r["name"] or 0 for r in rows]), named)], n, named)],
        n, named)
    flags = np.array([r["flags"] for r in rows], bool)
    return [pc.Varint(8, col("ts")), pc.Constant(pc.varint_field(10, 7)), pc.Message(11, event, n), interned,
            pc.Constant(pc.varint_field(13, 2), flags)]


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, max_size=12))
def test_packets_are_the_bytes_protobuf_writes(rows):
    assert _by_columns(rows) == _by_library(rows)


def test_varint_sizes_at_every_boundary():
    values = np.array([0, 127, 128, 2**14 - 1, 2**14, 2**63 - 1, 2**63, 2**64 - 1], np.uint64)
    assert pc.varint_sizes(values).tolist() == [1, 1, 2, 2, 3, 9, 10, 10]
    assert pc.varint_sizes(np.array([-1, -(2**63)], np.int64)).tolist() == [10, 10]


def test_a_field_outside_its_message_is_refused():
    present = np.array([True, False])
    with pytest.raises(ValueError):
        pc.Message(11, [pc.Varint(9, np.array([1, 2]))], 2, present)


def test_small_table_texts_are_written_alike():
    table = [b"cause", b"", "caf\u00e9".encode()]
    codes = np.array([2, 0, 1, 2, 0])
    small = pc.encode(5, [(np.arange(5), [pc.Text(2, table, codes)])])[0]
    big = pc.encode(5, [(np.arange(5), [pc.Text(2, table + [b"x"] * 70, codes)])])[0]
    assert small == big == b"".join(pc.text_field(2, table[c]) for c in codes)
