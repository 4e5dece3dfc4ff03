"""derive.nest against a plain stack walk: same parent and depth for any events, in any
insertion order, over many lanes (host threads, device streams, NULL keys), with ties
on start and end, zero-length events and partial overlaps."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import store_with_events

DEVICE_KINDS = ("kernel", "memcpy", "memset", "gpu_annotation", "sync")


def reference(events: list[dict]) -> dict[int, tuple[int | None, int]]:
    """event_id -> (parent_id, depth): per lane, in (start, end desc, id) order, the parent
    is the nearest earlier event of the lane that ends no earlier."""
    lanes: dict[tuple, list[dict]] = {}
    for e in events:
        dev = e["kind"] in DEVICE_KINDS and e["tid"] is None
        lanes.setdefault((dev, e["pid"], e["tid"], e["device"], e["stream"]), []).append(e)
    out = {}
    for members in lanes.values():
        members.sort(key=lambda e: (e["start_ns"], -(e["start_ns"] + e["dur_ns"]), e["event_id"]))
        for i, e in enumerate(members):
            end = e["start_ns"] + e["dur_ns"]
            parent = next((p for p in reversed(members[:i]) if p["start_ns"] + p["dur_ns"] >= end), None)
            if parent is None:
                out[e["event_id"]] = (None, 0)
            else:
                out[e["event_id"]] = (parent["event_id"], out[parent["event_id"]][1] + 1)
    return out


event = st.fixed_dictionaries({
    "kind": st.sampled_from(("cpu_op", "runtime", "kernel", "memcpy")),
    "start_ns": st.integers(0, 30),
    "dur_ns": st.integers(0, 12),
    "pid": st.sampled_from((None, 1, 2)),
    "tid": st.sampled_from((None, 1, 7)),
    "device": st.sampled_from((None, 0, 1)),
    "stream": st.sampled_from((None, 3, 10 ** 15)),
})


@settings(max_examples=40, deadline=None)
@given(st.lists(event, min_size=1, max_size=60))
def test_nest_matches_a_stack_walk(drawn):
    events = [{**e, "event_id": i, "name": f"e{i}"} for i, e in enumerate(drawn)]
    columns = {k: [e[k] for e in events] for k in events[0]}
    with tempfile.TemporaryDirectory() as tmp:
        store = store_with_events(columns, Path(tmp))
    got = {r[0]: (r[1], r[2]) for r in store.con.execute("SELECT event_id, parent_id, depth FROM events").fetchall()}
    assert got == reference(events)


def test_a_lane_in_time_order_and_one_out_of_order_nest_alike(tmp_path):
    # Lane (tid 1) arrives sorted, lane (tid 2) reversed: both must give the same tree.
    spans = [(0, 100), (10, 50), (20, 30), (60, 90), (200, 210)]
    rows = [(1, s, e) for s, e in spans] + [(2, s, e) for s, e in reversed(spans)]
    store = store_with_events({
        "event_id": list(range(len(rows))), "kind": ["cpu_op"] * len(rows), "name": ["x"] * len(rows),
        "start_ns": [s for _, s, _ in rows], "dur_ns": [e - s for _, s, e in rows],
        "pid": [1] * len(rows), "tid": [t for t, _, _ in rows],
    }, tmp_path)
    by_lane = {}
    for tid, start, parent_start, depth in store.con.execute("""
            SELECT e.tid, e.start_ns, p.start_ns, e.depth FROM events e
            LEFT JOIN events p ON p.event_id = e.parent_id ORDER BY e.tid, e.start_ns""").fetchall():
        by_lane.setdefault(tid, []).append((start, parent_start, depth))
    assert by_lane[1] == by_lane[2] == [(0, None, 0), (10, 0, 1), (20, 10, 2), (60, 0, 1), (200, None, 0)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(0, 15)), max_size=80))
def test_the_compiled_stack_walk_equals_the_numpy_form(spans):
    """derive_kernels.nest_stack (large traces, numba loaded) against the numpy pointer
    jumping, on events sorted as nest sorts them: by lane, start, end descending."""
    import numpy as np
    import pytest

    from profkit.derive import _nest_kernel, _nest_sorted

    if _nest_kernel() is None:
        pytest.skip("numba cannot be imported")
    rows = sorted((lane, start, -(start + dur)) for lane, start, dur in spans)
    ends = np.array([-neg_end for _, _, neg_end in rows], dtype=np.int64)
    lanes = np.array([lane for lane, _, _ in rows], dtype=np.uint16)
    got = _nest_sorted(ends, lanes, use_compiled=True)
    want = _nest_sorted(ends, lanes, use_compiled=False)
    assert [a.tolist() for a in got] == [a.tolist() for a in want]
    assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype


def test_a_large_trace_nests_alike_either_way(monkeypatch):
    """A real trace through the whole of derive with the compiled walk taken at any size
    (as a large input's is) and without it: the same parents and depths."""
    from conftest import shared_trace
    from profkit import derive
    from profkit.ingest import ingest
    from profkit.store import Store

    if derive._nest_kernel() is None:
        import pytest
        pytest.skip("numba cannot be imported")
    nested = []
    for threshold in (0, 10 ** 12):
        monkeypatch.setattr(derive, "COMPILED_NEST_MIN_ROWS", threshold)
        store = Store.open(None)
        ingest([shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")], store)
        nested.append(store.con.execute("SELECT event_id, parent_id, depth FROM events ORDER BY 1").fetchall())
    assert nested[0] == nested[1]
    assert sum(1 for _, parent, _ in nested[0] if parent is not None) > 10_000
