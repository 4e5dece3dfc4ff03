"""As-soon-as-possible replay of a dependency graph, its longest (critical) path, and
step times, all on arrays.

The replay is one pass of a longest-path DP over the edges sorted by the topological
position of their destination (vertices are in observed-time order, which is a
topological order for a consistent graph): a vertex happens at the latest of its
predecessors' times plus the edges' latencies; a vertex without predecessors (a thread's
first event, a device activity nothing explains) keeps its observed time. The edge that
set a vertex's time is remembered, so the critical path to any vertex is a walk back.
networkx is not used here: at 1M vertices its build plus `dag_longest_path` takes ~30 s
(DESIGN.md section 5); this loop takes about a second in Python, ~30 ms compiled
(profkit/graph_kernels.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import intervals
from .columns import group_codes
from .compiled import compiled
from .graph_build import Graph
from .graph_model import CLASS_NAMES, E_LAUNCH

NEG = -(1 << 62)


@dataclass
class Schedule:
    time: np.ndarray     # replayed time of every vertex
    via: np.ndarray      # index of the edge that set it (-1 for sources)
    weight: np.ndarray   # the edge weights used


def replay(graph: Graph, weight: np.ndarray | None = None) -> Schedule:
    """Schedule every vertex as soon as its predecessors allow. With the graph's own
    weights the schedule is computed once and shared (treat it as read-only)."""
    if weight is None:
        if "replay" not in graph.memo:
            graph.memo["replay"] = _replay(graph, graph.weight)
        return graph.memo["replay"]
    return _replay(graph, weight)


# The compiled loops are chosen by the work an analysis will do on the graph: its edges
# times the replays it makes, about one for the schedule and seven per trace (the what-ifs
# that price each trace's findings; every replay covers all ranks, the graph being one).
REPLAYS_PER_TRACE = 7
# From this much work on they are waited for: the Python loop costs ~0.2-0.5 us an edge a
# replay, and numba's import and cache load cost ~0.55 s (profkit/compiled.py). One
# trace: 500k edges, as before; 16 synthetic ranks of 9k edges each (150k edges replayed
# 113 times) took 3.3 s in the Python loop.
COMPILED_MIN_WORK = 500_000 * (1 + REPLAYS_PER_TRACE)
# From this much work on they are used where loaded already: critical_path.prefetch
# builds the graph on a worker thread as the passes begin, and loads them there
# (`load_compiled`), so that the load overlaps the passes. On the 325k-edge v100 trace that
# saved 0.2-0.9 s; on the 141k-edge a100 one, loading them at every analysis's start cost
# 0.5-0.7 s more than the Python loop (first runs of `profkit analyze`, alternating).
PRELOAD_MIN_WORK = 250_000 * (1 + REPLAYS_PER_TRACE)


def replay_work(graph: Graph) -> int:
    """Edges times the replays an analysis of `graph` makes (see REPLAYS_PER_TRACE)."""
    return graph.n_edges * (1 + REPLAYS_PER_TRACE * max(len(graph.traces), 1))


@compiled
def _kernels():
    """profkit.graph_kernels with both loops loaded by a first call on a one-edge graph."""
    from . import graph_kernels

    one = np.zeros(1, np.int64)
    time, via = np.zeros(1, np.int64), np.full(1, -1, np.int64)
    graph_kernels.longest_path(one, one, one, time, via)
    graph_kernels.walk_back(via, one, time, 0, 0, 1)
    return graph_kernels


def load_compiled(graph: Graph) -> None:
    """Load the compiled loops where the analysis of `graph` is work enough to use them once
    loaded (for a worker thread: the replays on the main thread then find them ready)."""
    if replay_work(graph) >= PRELOAD_MIN_WORK:
        _kernels()


def _loop(name: str, graph: Graph, compiled: bool | None = None):
    """A compiled loop of graph_kernels, or None for the Python loop (numba not importable,
    too little work, or `compiled=False`); compiled=True waits for it at any size."""
    if compiled is False:
        return None
    work = replay_work(graph)
    wanted = compiled or work >= COMPILED_MIN_WORK or (work >= PRELOAD_MIN_WORK and _kernels.ready())
    kernels = _kernels() if wanted else None
    return getattr(kernels, name) if kernels is not None else None


def _replay(graph: Graph, w: np.ndarray, compiled: bool | None = None) -> Schedule:
    """compiled: None = by graph size, True = numba when importable, False = Python."""
    nv = graph.n_vertices
    has_pred = np.zeros(nv, dtype=bool)
    has_pred[graph.dst] = True
    loop = _loop("longest_path", graph, compiled)
    if loop is not None:
        time = np.where(has_pred, NEG, graph.vtime).astype(np.int64)
        via = np.full(nv, -1, dtype=np.int64)
        # No copies of the edge arrays per replay: they are int64 already.
        loop(graph.src.astype(np.int64, copy=False), graph.dst.astype(np.int64, copy=False),
             np.asarray(w, dtype=np.int64), time, via)
        return Schedule(time, via, np.asarray(w))
    time = np.where(has_pred, NEG, graph.vtime).tolist()
    via = [-1] * nv
    src, dst, wl = graph.src.tolist(), graph.dst.tolist(), w.tolist()
    for i in range(len(src)):
        c = time[src[i]] + wl[i]
        d = dst[i]
        if c > time[d]:
            time[d] = c
            via[d] = i
    return Schedule(np.asarray(time, dtype=np.int64), np.asarray(via, dtype=np.int64), np.asarray(w))


def critical_path(graph: Graph, sched: Schedule, end_vertex: int, window_start: int | None = None,
                  max_edges: int | None = None) -> dict:
    """The longest path into `end_vertex`, cut at `window_start` (replayed time).

    Returns the path's edges (latest first), the nanoseconds each contributes inside the
    window, and the time before the path's first vertex ("idle": nothing the graph knows
    of ran on the path then)."""
    t = sched.time
    start = NEG if window_start is None else int(window_start)
    walk = _loop("walk_back", graph)
    if walk is not None:
        edges, ns, v = walk(sched.via, graph.src, t, int(end_vertex), start,
                            max_edges if max_edges is not None else 1 << 62)
        return _path(edges, ns, int(v), t, end_vertex, start, window_start)
    edges, ns = [], []
    v = int(end_vertex)
    while True:
        e = int(sched.via[v])
        if e < 0 or t[v] <= start:
            break
        s = int(graph.src[e])
        part = int(t[v] - max(int(t[s]), start))
        edges.append(e)
        ns.append(part)
        v = s
        if max_edges is not None and len(edges) >= max_edges:
            break
    return _path(np.asarray(edges, dtype=np.int64), np.asarray(ns, dtype=np.int64), v, t, end_vertex, start,
                 window_start)


def _path(edges, ns, v, t, end_vertex, start, window_start) -> dict:
    lead_idle = max(0, int(t[v]) - start) if window_start is not None else 0
    return {"edges": edges, "ns": ns, "first_vertex": v, "idle_before_ns": lead_idle,
            "length_ns": int(t[end_vertex] - (start if window_start is not None else t[v]))}


def attribute(graph: Graph, path: dict) -> dict[str, int]:
    """Nanoseconds of a path by cause (edge class); the parts sum to the path's length."""
    out = dict.fromkeys(CLASS_NAMES, 0)
    if path["edges"].size:
        sums = np.bincount(graph.ecls[path["edges"]], weights=path["ns"], minlength=len(CLASS_NAMES))
        for i, name in enumerate(CLASS_NAMES):
            out[name] = int(round(sums[i]))
    out["idle"] += int(path["idle_before_ns"])
    return out


def top_contributors(graph: Graph, paths: list[dict], per: int = 1, limit: int = 10) -> list[dict]:
    """The largest contributors on the given paths, by (cause, event name), in ns per `per`."""
    if not paths:
        return []
    edges = np.concatenate([p["edges"] for p in paths])
    ns = np.concatenate([p["ns"] for p in paths])
    total = int(ns.sum()) + sum(int(p["idle_before_ns"]) for p in paths)
    if edges.size == 0 or total <= 0:
        return []
    keep = ns > 0
    edges, ns = edges[keep], ns[keep]
    ev, cls = graph.eevent[edges], graph.ecls[edges]
    # Group by (class, name code) in numpy; the few groups are then merged by their label.
    code = np.where(ev >= 0, graph.name_code[np.maximum(ev, 0)], graph.name_values.size)  # past the last: no event
    inv, first = group_codes(cls, code)
    sums = np.zeros(first.size, dtype=np.int64)
    np.add.at(sums, inv, ns)
    counts = np.bincount(inv, minlength=first.size)
    acc: dict[tuple, list] = {}
    for g in np.argsort(first, kind="stable").tolist():  # first occurrence order, as a walk would see them
        e, c = int(ev[first[g]]), int(cls[first[g]])
        name = graph.name[e] if e >= 0 else None
        if CLASS_NAMES[c] == "idle" and e >= 0:
            name = f"gap after {graph.name[e]}"
        slot = acc.setdefault((CLASS_NAMES[c], name), [0, 0, e])
        slot[0] += int(sums[g])
        slot[1] += int(counts[g])
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])[:limit]
    return [{"cause": k[0], "name": k[1], "ns": int(round(v[0] / per)), "count": v[1],
             "share_pct": round(100.0 * v[0] / total, 3),
             "example_event_id": int(graph.event_id[v[2]]) if v[2] >= 0 else None,
             "category": graph.category[v[2]] if v[2] >= 0 else None}
            for k, v in rows]


# -- steps --------------------------------------------------------------------------

@dataclass
class StepIndex:
    """Which events make up each step of each trace: a step is complete when its host
    window's last event and every device activity it launched have ended."""
    trace_id: np.ndarray   # per step; a trace's steps are consecutive, in step order
    step: np.ndarray
    members: list          # per step: event indices (never empty)
    first: np.ndarray      # per step: index of the step's first event (its begin)

    def __post_init__(self):
        # Every step's members end to end, for per-step reductions in one pass (a loop over
        # steps per replay grew with ranks squared: each what-if covers every rank).
        sizes = np.asarray([m.size for m in self.members], dtype=np.int64)
        runs = int(np.count_nonzero(self.trace_id[1:] != self.trace_id[:-1])) + 1 if self.trace_id.size else 0
        if (sizes == 0).any() or runs != np.unique(self.trace_id).size:
            raise ValueError("a step index needs members in every step and each trace's steps together")
        self.flat = np.concatenate(self.members) if self.members else np.zeros(0, np.int64)
        self.bounds = np.cumsum(sizes) - sizes   # where each step's members begin in flat
        self.of_flat = np.repeat(np.arange(sizes.size), sizes)  # step of each flat position
        self.baseline: tuple[list[dict], list[dict]] | None = None  # baseline_step_times
        self.median_latency: list[dict] | None = None  # median_latency_step_times


def step_index(graph: Graph, windows: dict[int, list[tuple[int, int, int]]]) -> StepIndex:
    """`windows`: trace id -> [(step, start_ns, end_ns)] on the trace's own clock. Host
    events belong to the window they start in, device activities to the window their
    launch call started in. Windows drawn on the device's own timeline (a fourth element
    true, as for steps inferred from a repeating kernel sequence) hold device activities
    only, each in the window it starts in: where the host runs far ahead, launches of one
    step fall into an earlier window, and a step would "finish" before the one before it.
    Traces without windows get one step: the whole trace.
    Memoised on the graph per windows: the report and every what-if ask for the same."""
    key = ("step_index", windows_key(windows))
    if key not in graph.memo:
        graph.memo[key] = _step_index(graph, windows)
    return graph.memo[key]


def windows_key(windows: dict) -> tuple:
    """Step windows as a hashable key, in the form `step_index` reads them: each trace's
    sorted, a missing fourth element (drawn on the device timeline) false. Windows that
    read alike have one key (a trace's steps pass gives 4-tuples, the steps table 3-tuples)."""
    return tuple((tid, tuple(sorted((w[0], w[1], w[2], bool(len(w) > 3 and w[3])) for w in rows)))
                 for tid, rows in sorted(windows.items()))


def _step_index(graph: Graph, windows: dict[int, list[tuple[int, int, int]]]) -> StepIndex:
    t_ids, steps, members, first = [], [], [], []
    offsets = {t["trace_id"]: int(t["clock_offset_ns"]) for t in graph.traces}
    for t in graph.traces:
        tid = t["trace_id"]
        mine = np.flatnonzero(graph.trace_id == tid)
        if mine.size == 0:
            continue
        wins = sorted(windows.get(tid) or [])
        device_time = bool(wins) and all(len(w) > 3 and w[3] for w in wins)
        if device_time:
            mine = mine[graph.is_device[mine]]
            if mine.size == 0:
                continue
        anchor = graph.start[mine] if device_time else graph.launch_time[mine]
        if not wins:
            t_ids.append(tid); steps.append(-1); members.append(mine)
            first.append(int(mine[np.argmin(graph.start[mine])]))
            continue
        starts = np.asarray([w[1] for w in wins], dtype=np.int64) + offsets[tid]
        ends = np.asarray([w[2] for w in wins], dtype=np.int64) + offsets[tid]
        k = intervals.containing(starts, ends, anchor)
        inside = k >= 0
        # Members of each window in index order: one stable sort by window, then split
        # (not a scan of the whole trace per window).
        kept, window = mine[inside], k[inside]
        order = np.argsort(window, kind="stable")
        kept, window = kept[order], window[order]
        bounds = np.flatnonzero(np.r_[True, window[1:] != window[:-1], True]) if kept.size else np.zeros(1, np.int64)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            sel = kept[lo:hi]
            t_ids.append(tid); steps.append(int(wins[int(window[lo])][0])); members.append(sel)
            first.append(int(sel[np.argmin(graph.start[sel])]))
    return StepIndex(np.asarray(t_ids, dtype=np.int64), np.asarray(steps, dtype=np.int64), members,
                     np.asarray(first, dtype=np.int64))


def step_times(graph: Graph, time: np.ndarray, index: StepIndex) -> list[dict]:
    """Per step: begin, completion (vertex and time) and duration = completion minus the
    previous step's completion (the first step: minus its own begin)."""
    if index.step.size == 0:
        return []
    ends = time[2 * index.flat + 1]
    done = np.maximum.reduceat(ends, index.bounds)
    # The first member reaching its step's completion (as argmax picks).
    at = np.minimum.reduceat(np.where(ends == done[index.of_flat], np.arange(ends.size), ends.size), index.bounds)
    begin = time[2 * index.first]
    after_own_trace = np.r_[False, index.trace_id[1:] == index.trace_id[:-1]]
    since = np.where(after_own_trace, np.r_[begin[:1], done[:-1]], begin)
    return [{"trace_id": tid, "step": step, "begin_ns": b, "done_ns": d, "done_vertex": v, "window_start_ns": w,
             "dur_ns": d - w}
            for tid, step, b, d, v, w in zip(index.trace_id.tolist(), index.step.tolist(), begin.tolist(),
                                             done.tolist(), (2 * index.flat[at] + 1).tolist(), since.tolist())]


def baseline_step_times(graph: Graph, index: StepIndex) -> tuple[list[dict], list[dict]]:
    """`step_times` on the observed times and on the replay without changes, which the
    critical path report and every what-if start from: computed once per step index
    (shared: treat the rows as read-only)."""
    if index.baseline is None:
        index.baseline = (step_times(graph, graph.vtime, index), step_times(graph, replay(graph).time, index))
    return index.baseline


def median_latency_step_times(graph: Graph, index: StepIndex) -> list[dict]:
    """`step_times` of the replay with every launch at the graph's median launch latency
    (time a measured latency absorbed, a wait the graph has no edge for, then shows up as
    replay error): computed once per step index (shared: treat the rows as read-only)."""
    if index.median_latency is None:
        weight = graph.weight.copy()
        launch = graph.ekind == E_LAUNCH
        weight[launch] = np.minimum(weight[launch], int(graph.stats.get("median_launch_latency_ns", 0)))
        index.median_latency = step_times(graph, replay(graph, weight).time, index)
    return index.median_latency


def steady(rows: list[dict]) -> list[dict]:
    """Steps after the first (warm-up) when a trace has at least three, else all."""
    by_trace: dict[int, list[dict]] = {}
    for r in rows:
        by_trace.setdefault(r["trace_id"], []).append(r)
    out = []
    for tid in sorted(by_trace):
        mine = by_trace[tid]
        out += mine[1:] if len(mine) >= 3 else mine
    return out
