"""Derivations every parser gets for free, run once per trace after it is parsed.

A parser stores what the input says; this module adds what follows from it, the same
way for every vendor: categories, launch links by correlation, collectives for
communication kernels the input gave no metadata for, host nesting, steps and the step
of every event.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import classify
from .columns import lexsort, positions
from .compiled import compiled
from .store import Store

# Annotation names that define steps, tried in order; the first that matches any
# annotation in the trace wins. The group captures the step number.
STEP_PATTERNS = (
    ("profiler_step", re.compile(r"^ProfilerStep#(\d+)$")),
)


def derive_trace(store: Store, trace_id: int) -> None:
    if "numba" in sys.modules and store.scalar(
            "SELECT count(*) FROM events WHERE trace_id = ?", [trace_id]) >= COMPILED_NEST_MIN_ROWS:
        _nest_kernel.start("profkit-nest-load")  # beside the derivations before nest
    no_stream(store, trace_id)
    categorise(store, trace_id)
    link_launches(store, trace_id)
    add_collectives(store, trace_id)
    nest(store, trace_id)
    find_steps(store, trace_id)
    assign_steps(store, trace_id)


# The stream id CUPTI gives a record on no stream (CUPTI_SYNCHRONIZATION_INVALID_VALUE: event
# and context syncs), which Nsight exports and some Kineto versions copy as written.
CUPTI_NO_STREAM = 0xFFFFFFFF


def no_stream(store: Store, trace_id: int) -> None:
    """A device record on no stream has stream -1, as most Kineto traces write it, whatever
    id the input used: no pass then takes it for a stream (the HTA-view breakdown counted
    Nsight's event syncs as GPU work)."""
    store.con.execute("UPDATE events SET stream = -1 WHERE trace_id = ? AND stream = ?", [trace_id, CUPTI_NO_STREAM])


def categorise(store: Store, trace_id: int) -> None:
    """events.category of device work the parser left uncategorised (rocprof parsers
    classify theirs as they write them), then `communication` for every kernel the parser
    recorded collective metadata for, whatever its name says."""
    con = store.con
    pairs = con.execute("""
        SELECT DISTINCT kind, name FROM events
        WHERE trace_id = ? AND kind IN ('kernel', 'memcpy', 'memset') AND category IS NULL
    """, [trace_id]).fetchall()
    if pairs:
        table = pa.table({
            "kind": [k for k, _ in pairs],
            "name": [n for _, n in pairs],
            "category": [classify.category(k, n) for k, n in pairs],
        })
        with store.registered(table, "_profkit_cat"):
            con.execute("""
                UPDATE events SET category = c.category FROM _profkit_cat c
                WHERE events.trace_id = ? AND events.category IS NULL
                  AND events.kind = c.kind AND events.name IS NOT DISTINCT FROM c.name
            """, [trace_id])
    if con.execute("SELECT count(*) FROM collectives").fetchone()[0]:  # none in most stores: no scan
        con.execute("""
            UPDATE events SET category = 'communication'
            WHERE trace_id = ? AND category IS DISTINCT FROM 'communication'
              AND event_id IN (SELECT event_id FROM collectives)
        """, [trace_id])


def link_launches(store: Store, trace_id: int) -> None:
    """Runtime call -> device activity with the same correlation id in the same process.

    Correlation ids are unique only within a process, so the process is part of the key;
    device events whose launching process the input does not name match any process.
    Parsers that record links themselves are left as they are.
    """
    con = store.con
    if con.execute("SELECT count(*) FROM links WHERE trace_id = ? AND kind = 'launch'",
                   [trace_id]).fetchone()[0]:
        return
    con.execute("""
        INSERT INTO links (trace_id, src_event, dst_event, kind, correlation)
        SELECT ?, r.event_id, d.event_id,
               CASE WHEN d.kind = 'sync' THEN 'sync' ELSE 'launch' END, d.correlation
        FROM events d
        JOIN events r
          ON r.trace_id = d.trace_id AND r.correlation = d.correlation
         AND (d.pid IS NULL OR r.pid IS NULL OR d.pid = r.pid)
        WHERE d.trace_id = ? AND r.trace_id = ?
          AND d.kind IN ('kernel', 'memcpy', 'memset', 'sync') AND d.tid IS NULL
          AND r.kind = 'runtime' AND d.correlation IS NOT NULL
    """, [trace_id, trace_id, trace_id])


def add_collectives(store: Store, trace_id: int) -> None:
    """A row in `collectives` for every communication kernel, op from its name."""
    con = store.con
    names = con.execute("""
        SELECT DISTINCT name FROM events e
        WHERE trace_id = ? AND kind = 'kernel' AND category = 'communication'
          AND NOT EXISTS (SELECT 1 FROM collectives c WHERE c.event_id = e.event_id)
    """, [trace_id]).fetchall()
    if not names:
        return
    table = pa.table({"name": [n for (n,) in names],
                      "op": [classify.collective_op(n) for (n,) in names]})
    with store.registered(table, "_profkit_ops"):
        con.execute("""
            INSERT INTO collectives (event_id, op)
            SELECT e.event_id, o.op FROM events e JOIN _profkit_ops o ON e.name = o.name
            WHERE e.trace_id = ? AND e.kind = 'kernel' AND e.category = 'communication'
              AND NOT EXISTS (SELECT 1 FROM collectives c WHERE c.event_id = e.event_id)
        """, [trace_id])


_UPDATE_ROWS = 1 << 19  # rows per UPDATE: bounds the join's hash table
_NO_TIME = np.iinfo(np.int64).min  # an event without a start falls in no step
# What makes a lane: host events nest per thread, device events per device and stream.
_LANE_KEYS = ("dev", "pid", "tid", "device", "stream")


def nest(store: Store, trace_id: int) -> None:
    """parent_id and depth: the innermost enclosing event on the same thread or stream."""
    con = store.con
    # Fetched unsorted, each event's lane as a 64-bit hash of its lane keys (NULL hashed
    # as a value of its own), which one hash pass here then numbers densely: DuckDB's join
    # on five nullable keys and its sort cost more, and fetching and coding the five key
    # columns here took twice as long (rocprofv3 CSV, 2M events: 0.30 s against 0.15 s).
    # Two lanes share a number only if their hashes collide: with L lanes the chance is
    # about L^2 / 2^65 (1e-10 at 100,000 lanes). An event whose lane flag is NULL (no kind,
    # no thread) belongs to no lane and gets only depth 0 below.
    table = store.arrow(f"""
        SELECT event_id, start_ns, end_ns, hash({', '.join(_LANE_KEYS)}) AS lane FROM (
            SELECT event_id, start_ns, end_ns,
                   kind IN ('kernel','memcpy','memset','gpu_annotation','sync') AND tid IS NULL AS dev,
                   pid, tid, device, stream
            FROM events WHERE trace_id = ? AND parent_id IS NULL
        ) WHERE dev IS NOT NULL
    """, [trace_id])
    if table.num_rows == 0:
        _top_level_depth(con, trace_id)
        return
    lanes = _dense_lanes(table.column("lane"))
    ids = table.column("event_id").to_numpy()
    starts = table.column("start_ns").to_numpy()
    ends = table.column("end_ns").to_numpy()
    del table
    order = _lane_order(lanes, starts, ends, ids)
    ids, ends, lanes = ids[order], ends[order], lanes[order]
    del order, starts
    parent_pos, depths = _nest_sorted(ends, lanes)
    del ends, lanes
    # Only events inside another are updated by a join; the top-level ones (usually most)
    # get depth 0 from one constant UPDATE afterwards, which costs far less per row.
    nested = np.flatnonzero(parent_pos >= 0)
    nested = nested[np.argsort(ids[nested], kind="stable")]  # in event order: much faster UPDATE
    result = pa.table({"event_id": ids[nested], "parent": ids[parent_pos[nested]],
                       "depth": pa.array(depths[nested], pa.int32())})
    del ids, parent_pos, depths, nested
    _update_events(store, result, "parent_id = u.parent, depth = u.depth")
    _top_level_depth(con, trace_id)


def _top_level_depth(con, trace_id: int) -> None:
    """depth 0 for what has no parent: the column's default, so only rows a parser wrote
    with a NULL depth are touched (DuckDB skips the row groups without NULLs)."""
    con.execute("UPDATE events SET depth = 0 WHERE trace_id = ? AND parent_id IS NULL AND depth IS NULL",
                [trace_id])


def _update_events(store: Store, rows: pa.Table, assignments: str) -> None:
    """UPDATE events SET `assignments` (reading `u.<column>`) for the rows' event ids, in
    slices of _UPDATE_ROWS. Rows in event order make the UPDATE's join far cheaper."""
    for lo in range(0, rows.num_rows, _UPDATE_ROWS):
        with store.registered(rows.slice(lo, _UPDATE_ROWS), "_profkit_update"):
            store.con.execute(
                f"UPDATE events SET {assignments} FROM _profkit_update u WHERE events.event_id = u.event_id")


def _dense_lanes(hashes: pa.ChunkedArray) -> np.ndarray:
    """Lane numbers 0 .. lanes-1 from per-event lane hashes, in the smallest integer type
    (small numbers sort fastest)."""
    encoded = pc.dictionary_encode(hashes.combine_chunks())
    lanes = encoded.indices.to_numpy()
    return lanes.astype(np.uint16 if len(encoded.dictionary) <= 1 << 16 else np.int64)


def _lane_order(lanes: np.ndarray, starts: np.ndarray, ends: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions sorted by (lane, start, end descending, event id). Events mostly arrive in
    time order within their lane, runs that numpy's stable sort (timsort) merges cheaply:
    so rows are sorted by start, only the runs of equal starts further by (end descending,
    id), and the result (stably) by lane, a radix sort of small lane numbers. On 3.5M rows
    of the 5M-event tile: 0.13 s, against 0.6-0.7 s for sorting out-of-order lanes whole."""
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    equal = sorted_starts[1:] == sorted_starts[:-1]
    del sorted_starts
    tie = np.zeros(order.size, dtype=bool)
    tie[1:] |= equal
    tie[:-1] |= equal
    if tie.any():
        # Each run of equal starts is contiguous; sorting all tied rows by (start, end
        # descending, id) keeps the runs in place and orders each within.
        tied = order[tie]
        order[tie] = tied[lexsort((ids[tied], -ends[tied], starts[tied]))]
    return order[np.argsort(lanes[order], kind="stable")]


# Nesting this many events or more takes the compiled stack walk (derive_kernels), where
# numba is imported already: the numpy form costs ~0.1 s a million events, the compiled
# one's cache load ~0.17 s, loaded beside the derivations before nest.
COMPILED_NEST_MIN_ROWS = 1_000_000


@compiled
def _nest_kernel():
    """profkit.derive_kernels, its loop loaded by a first call on two events."""
    from . import derive_kernels
    derive_kernels.nest_stack(np.array([2, 1], np.int64), np.array([True, False]),
                              np.empty(2, np.int32), np.empty(2, np.int32))
    return derive_kernels


def _nest_sorted(ends: np.ndarray, lanes: np.ndarray, use_compiled: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parent position (-1 for none) and depth of events sorted by (lane, start, end desc).
    `use_compiled`: None = the compiled walk for large inputs where numba is imported, True =
    wherever numba can be imported, False = numpy.

    Sorted by start, an earlier event encloses a later one exactly when it ends no
    earlier (partial overlaps are not nesting), so the parent is the nearest earlier event
    of the lane that ends no earlier: the classic stack walk, done here by pointer
    jumping so that every step is one numpy operation over all events (O(n log n)).
    Jumping from a candidate to the candidate's own candidate only skips events that
    end before the candidate, hence before the event."""
    n = len(ends)
    first = np.r_[True, lanes[1:] != lanes[:-1]] if n else np.zeros(0, bool)
    wanted = use_compiled if use_compiled is not None else n >= COMPILED_NEST_MIN_ROWS and "numba" in sys.modules
    kernels = _nest_kernel() if wanted and n < 2 ** 31 and ends.dtype == np.int64 else None
    if kernels is not None:
        parent, depth = np.empty(n, np.int32), np.empty(n, np.int32)
        kernels.nest_stack(ends, first, parent, depth)
        return parent, depth
    pos = np.arange(n, dtype=np.int64 if n >= 2 ** 31 else np.int32)
    lane_start = np.maximum.accumulate(np.where(first, pos, 0)) if n else pos
    cand = pos - 1
    cand[cand < lane_start] = -1
    # An event that ends after every earlier event of its lane has no parent. Most events
    # are such (a stream's kernels never nest); settling them now spares them the
    # log(lane length) jumping rounds they would otherwise take to run out of candidates.
    cand[~_ends_no_earlier_before(ends, first)] = -1
    # The first test compares each event with its predecessor: slices, no gather.
    active = np.flatnonzero(np.r_[False, ends[:-1] < ends[1:]] & (cand >= 0)) if n else pos
    while active.size:
        cand[active] = cand[cand[active]]
        active = active[cand[active] >= 0]
        if not active.size:
            break
        active = active[ends[cand[active]] < ends[active]]
    # Depth = number of ancestors: depth(i) = acc[i] + depth(anc[i]), halving the chains
    # every round (list ranking); each round reads the previous round's values.
    depth = (cand >= 0).astype(np.int32)
    anc = cand.copy()
    active = np.flatnonzero(anc >= 0)
    while active.size:
        up = anc[active]
        depth[active], anc[active] = depth[active] + depth[up], anc[up]
        active = active[anc[active] >= 0]
    return cand, depth


def _ends_no_earlier_before(ends: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per event: does an earlier event of its lane end no earlier than it (a running
    maximum of the ends, restarted at every lane)?"""
    out = np.zeros(len(ends), bool)
    bounds = np.r_[np.flatnonzero(first), len(ends)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo > 1:
            out[lo + 1:hi] = np.maximum.accumulate(ends[lo:hi - 1]) >= ends[lo + 1:hi]
    return out


def find_steps(store: Store, trace_id: int) -> None:
    """Steps from annotations named like `ProfilerStep#N`, unless the parser gave steps."""
    con = store.con
    if con.execute("SELECT count(*) FROM steps WHERE trace_id = ?", [trace_id]).fetchone()[0]:
        return
    for source, pattern in STEP_PATTERNS:
        # One INSERT ... SELECT: executemany cost ~0.6 ms a row (0.12 s for 200 steps).
        found = con.execute("""
            INSERT INTO steps
            SELECT trace_id, CAST(regexp_extract(name, $pattern, 1) AS INTEGER), name, start_ns, end_ns,
                   $source, event_id
            FROM events
            WHERE trace_id = $trace AND kind = 'annotation' AND regexp_matches(name, $pattern)
            ORDER BY start_ns
        """, {"pattern": pattern.pattern, "source": source, "trace": trace_id}).fetchone()[0]
        if found:
            return


def assign_steps(store: Store, trace_id: int) -> None:
    """events.step: host events by the step window they start in; device events by the
    step of the call that launched them, else by the window they start in."""
    con = store.con
    windows = con.execute("""
        SELECT start_ns, end_ns, step FROM steps WHERE trace_id = ? ORDER BY start_ns, step
    """, [trace_id]).fetchnumpy()
    if not len(windows["step"]):
        return
    events = store.arrow("SELECT event_id, start_ns FROM events WHERE trace_id = ?", [trace_id])
    ids = events.column("event_id").to_numpy()
    step = _window_steps(events.column("start_ns").fill_null(_NO_TIME).to_numpy(), windows)
    del events
    launches = store.arrow("""
        SELECT src_event, dst_event FROM links WHERE trace_id = ? AND kind = 'launch'
    """, [trace_id])
    if launches.num_rows:
        by_id = np.argsort(ids, kind="stable")
        src = positions(ids, launches.column("src_event").to_numpy(), by_id)
        dst = positions(ids, launches.column("dst_event").to_numpy(), by_id)
        inherit = (src >= 0) & (dst >= 0)
        src, dst = src[inherit], dst[inherit]
        inherit = step[src] >= 0
        step[dst[inherit]] = step[src[inherit]]
    # One pass in event order, against the two joins the ASOF and launch UPDATEs took
    # (5M events: 1.4 s in SQL).
    rows = np.flatnonzero(step >= 0)
    rows = rows[np.argsort(ids[rows], kind="stable")]
    result = pa.table({"event_id": ids[rows], "step": pa.array(step[rows], pa.int32())})
    del ids, step, rows
    _update_events(store, result, "step = u.step")


def _window_steps(starts: np.ndarray, windows: dict) -> np.ndarray:
    """The step whose window [start, end) holds each time, -1 for none; where windows
    overlap, the one that started last."""
    first = windows["start_ns"].astype(np.int64)
    last = windows["end_ns"].astype(np.int64)
    number = windows["step"].astype(np.int64)
    idx = np.searchsorted(first, starts, side="right") - 1
    held = np.clip(idx, 0, None)
    return np.where((idx >= 0) & (starts < last[held]), number[held], -1)

