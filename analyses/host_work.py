"""What the launching thread was doing while the device waited for its launches: the
host part of `idle.host_bound` gaps (from the gap's start to the next launch call),
attributed by exclusive time to the innermost host event the thread was in (called by the
idle pass for its host-bound findings).

Host events nest on their thread (`events.parent_id`), so at every instant the thread is
in at most one innermost event: an operator (`aten::nonzero`), a Python frame, a runtime
call (`cudaMalloc`) or, with none recorded, in no event at all (Python between operators
when the trace has no Python frames, or work the profiler does not see). Summed over the
gaps by name, that says what to move off the launch path. `call_sites` names the user's
Python line a host call came from (for the host pass's synchronisation finding).
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pyarrow as pa

from profkit import intervals
from profkit.columns import group_codes, sorted_distinct

HOST_KINDS = ("cpu_op", "python", "annotation", "runtime", "sync")
NO_EVENT = "(no host event recorded)"
TOP = 5
# Names that differ per call for the same work: PyTorch's NVTX operator ranges
# ("aten::addmm, seq = 47588, op_id = 999618, sizes = ...") and numbered ranges
# ("ProfilerStep#100").
_PER_CALL_SUFFIX = re.compile(r", (seq|op_id|sizes|input_op_ids) = .*$")
_NUMBER = re.compile(r"#\d+$")


def event_key(name: str | None) -> str:
    """The name of a host event, the same for every call of the same work."""
    return _NUMBER.sub("#N", _PER_CALL_SUFFIX.sub("", name or "(unnamed)"))


# Python frames of the framework itself (and built-ins): a call site is the innermost frame
# outside them, the user's line that led to the call.
_FRAMEWORK_FRAME = re.compile(r"(^|/)torch/|^<")
_PYTHON_FRAME = re.compile(r"\.py\(\d+\)")


def call_sites(store, trace_id: int, event_ids: np.ndarray) -> list[str | None]:
    """For each host event of the trace, the innermost enclosing Python frame outside the
    framework ("transformers/modeling_attn_mask_utils.py(243): _ignore_causal_mask_sdpa"),
    None where the trace records no such frame (no Python stacks, or not a Kineto trace)."""
    if event_ids.size == 0:
        return []
    with store.registered(pa.table({"event_id": event_ids.astype(np.int64)})) as calls:
        rows = store.con.execute(f"""
            WITH RECURSIVE up(call, id, level) AS (
                SELECT event_id, event_id, 0 FROM {calls}
                UNION ALL
                SELECT up.call, e.parent_id, up.level + 1 FROM up JOIN events e ON e.event_id = up.id
                WHERE e.trace_id = $trace AND e.parent_id IS NOT NULL
                  AND up.level < 256  -- a store from elsewhere may loop
            )
            SELECT up.call, e.name FROM up JOIN events e ON e.event_id = up.id
            WHERE e.trace_id = $trace AND e.kind = 'python' ORDER BY up.call, up.level
        """, {"trace": int(trace_id)}).fetchall()
    site: dict[int, str] = {}
    for call, name in rows:
        if call not in site and name and _PYTHON_FRAME.search(name) and not _FRAMEWORK_FRAME.search(name):
            site[call] = name
    return [site.get(int(e)) for e in event_ids]


def host_work(store, trace_id: int, launch_events: np.ndarray, gap_starts: np.ndarray,
              gap_ends: np.ndarray, steps: tuple[np.ndarray, np.ndarray]) -> dict | None:
    """Exclusive host time by innermost event name in each gap's host part (gap start to
    its launch call's start, within the gap) inside the step windows `steps` (starts,
    ends), over every gap with a known launch, per step (the mean over the windows).
    {"host_ns_per_step", "by_event": [{name, kind, time_ns_per_step, share_pct}, ...]} or None."""
    known = launch_events >= 0
    n_steps = len(steps[0])
    if not known.any() or not n_steps:
        return None
    gaps = pa.table({"launch": launch_events[known], "i": np.arange(int(known.sum()))})
    with store.registered(gaps) as table:
        launches = store.arrow(f"""
            SELECT g.i, r.pid, r.tid, r.start_ns FROM {table} g JOIN events r ON r.event_id = g.launch
            WHERE r.trace_id = ?
        """, [trace_id])
    i = launches.column("i").to_numpy()
    lo = gap_starts[known][i]
    hi = np.minimum(gap_ends[known][i], launches.column("start_ns").to_numpy())
    pid = launches.column("pid").fill_null(-1).to_numpy()
    tid = launches.column("tid").fill_null(-1).to_numpy()
    keep = hi > lo
    lo, hi, pid, tid = lo[keep], hi[keep], pid[keep], tid[keep]
    thread, first = group_codes(pid, tid)
    in_steps = intervals.union(*steps)
    by_name: Counter = Counter()
    for code, row in enumerate(first.tolist()):
        on = thread == code
        windows = intervals.intersect(intervals.union(lo[on], hi[on]), in_steps)
        if windows[0].size:
            _attribute(store, trace_id, int(pid[row]), int(tid[row]), *windows, by_name)
    total = sum(by_name.values())
    if not total:
        return None
    ranked = by_name.most_common(TOP)
    return {"host_ns_per_step": round(total / n_steps), "by_event": [
        {"name": name, "kind": kind, "time_ns_per_step": round(ns / n_steps),
         "share_pct": round(100.0 * ns / total, 1)} for (name, kind), ns in ranked]}


def _attribute(store, trace_id: int, pid: int, tid: int, lo: np.ndarray, hi: np.ndarray,
               out: Counter) -> None:
    """Add to `out` the time of windows [lo, hi) (sorted, disjoint) of one thread, by the
    (name, kind) of the innermost host event covering it."""
    events = store.arrow(f"""
        SELECT event_id, parent_id, start_ns, end_ns FROM events
        WHERE trace_id = ? AND pid = ? AND tid = ? AND kind IN ({", ".join(f"'{k}'" for k in HOST_KINDS)})
          AND start_ns < ? AND end_ns > ? AND end_ns > start_ns
    """, [trace_id, pid, tid, int(hi[-1]), int(lo[0])])
    if events.num_rows == 0:
        out[(NO_EVENT, None)] += int((hi - lo).sum())
        return
    ids = events.column("event_id").to_numpy()
    parent_id = events.column("parent_id").fill_null(-1).to_numpy()
    start, end = events.column("start_ns").to_numpy(), events.column("end_ns").to_numpy()
    # By start, the enclosing event of two that start together first.
    order = np.lexsort((ids, -end, start))
    ids, parent_id, start, end = ids[order], parent_id[order], start[order], end[order]
    # Elementary segments: between consecutive boundaries of windows and events.
    points = sorted_distinct(np.concatenate([lo, hi, start, end]))  # np.unique: 10x slower here
    seg_lo, seg_hi = points[:-1], points[1:]
    w = np.searchsorted(lo, seg_lo, side="right") - 1
    inside = (w >= 0) & (seg_lo < hi[np.clip(w, 0, None)])
    seg_lo, seg_hi = seg_lo[inside], seg_hi[inside]
    if seg_lo.size == 0:
        return
    innermost = _innermost(ids, parent_id, start, end, seg_lo)
    length = seg_hi - seg_lo
    none = innermost < 0
    if none.any():
        out[(NO_EVENT, None)] += int(length[none].sum())
    per_event = np.bincount(innermost[~none], weights=length[~none], minlength=ids.size)
    timed = np.flatnonzero(per_event)
    if timed.size == 0:
        return
    # Summed by name in the store: an operator runs thousands of times.
    with store.registered(pa.table({"event_id": ids[timed], "ns": per_event[timed].astype(np.int64)})) as table:
        by_name = store.con.execute(f"""
            SELECT e.name, e.kind, sum(t.ns) FROM {table} t JOIN events e USING (event_id)
            WHERE e.trace_id = ? GROUP BY ALL
        """, [trace_id]).fetchall()
    for name, kind, ns in by_name:
        out[(event_key(name), kind)] += int(ns)


def _innermost(ids: np.ndarray, parent_id: np.ndarray, start: np.ndarray, end: np.ndarray,
               at: np.ndarray) -> np.ndarray:
    """Index of the innermost event covering each time in `at` (-1 for none), events sorted
    by start: the latest one to start at or before it, else the nearest of its ancestors
    still open (events nest, so no other can be)."""
    by_id = np.argsort(ids, kind="stable")
    where = np.clip(np.searchsorted(ids, parent_id, sorter=by_id), 0, ids.size - 1)
    parent = np.where(ids[by_id[where]] == parent_id, by_id[where], -1)  # an ancestor fetched, else none
    cur = np.searchsorted(start, at, side="right") - 1
    open_ = np.zeros(at.size, bool)
    for _ in range(256):  # nesting depth; each pass climbs one level where still closed
        valid = cur >= 0
        open_ = valid & (end[np.clip(cur, 0, None)] > at)
        climb = valid & ~open_
        if not climb.any():
            break
        cur = np.where(climb, parent[np.clip(cur, 0, None)], cur)
    return np.where(open_, cur, -1)
