"""What-if: replay the dependency graph with a change and predict the step time.

    whatif(store, trace_ids=None, changes=["no-host-overhead", "speedup:gemm=2"])

Changes (strings as the CLI takes them, or dicts):
- `no-host-overhead`          host time to zero, as if the step were graph-captured
                              (every host-thread edge; launch latency and device work stay)
- `launch-latency[:NS]`       every launch (call start -> device start) takes at most NS (not the
                              waits over LAUNCH_LATENCY_MAX_NS that the graph attributes to `wait`)
                              (default 5 us, a typical launch to an idle stream)
- `host-gaps`                 Python/untraced host gaps after a step's first launch trimmed
                              to the trace's median gap (the gaps that starve launches)
- `speedup:CATEGORY=K`        kernels of a category (gemm, attention, communication, ...) K times faster
- `speedup-kernel:NAME=K`     kernels named NAME (exact, else substring) K times faster
- `comm-overlap`              communication fully overlapped: transfers cost nothing (ranks
                              still meet at each collective)
- `no-sync`                   host synchronisation removed: blocking calls do not wait for the device
- `straggler`                 the rank with the most compute time brought to the median rank

The replay lets a device's streams run side by side as far as their dependencies allow;
of the device's capacity it knows only the order of a device seen to run one kernel at a
time (graph_build._serial_device_edges). Streams that took turns on any other device would
all run at once once their launches came sooner. So no step is predicted shorter than its
busiest device's compute: the union of the step's compute kernels there (communication and
copies can hide behind compute, so they are left out), scaled by how much the changes
shrink those kernels' time (`capacity_floors`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .columns import per_value
from . import intervals as iv
from .graph_build import Graph, build_graph
from .graph_model import CLS, E_ARRIVE, E_DURATION, E_HOST, E_LAUNCH, E_STREAM, E_SYNC, E_TRANSFER
from .graph_replay import NEG, baseline_step_times, replay, steady, step_index, step_times
from .schema import CATEGORIES
from .store import Store

CHANGE_KINDS = ("no_host_overhead", "host_gaps", "launch_latency", "speedup", "comm_overlap", "no_sync",
                "straggler")
# What a launch to an idle stream usually costs (CUDA and HIP, call start to kernel start).
TYPICAL_LAUNCH_LATENCY_NS = 5_000
# The largest time a change may give: the graph's weights are int64 nanoseconds.
_MAX_NS = 2**63 - 1


def parse_change(spec: str | dict) -> dict[str, Any]:
    """A change from its CLI spelling (`speedup:gemm=2`) or a dict (`{"kind": "speedup", ...}`)."""
    if isinstance(spec, dict):
        if spec.get("kind") not in CHANGE_KINDS:
            raise ValueError(f"unknown what-if change {spec!r}; kinds: {', '.join(CHANGE_KINDS)}")
        return dict(spec)
    text = spec.strip()
    head, _, rest = text.partition(":")
    head = head.replace("-", "_")
    if head in ("speedup", "speedup_kernel"):
        target, _, factor = rest.rpartition("=")
        if not target or not factor:
            raise ValueError(f"what-if {spec!r}: expected {head.replace('_', '-')}:TARGET=FACTOR")
        key = "category" if head == "speedup" else "kernel"
        if key == "category" and target not in CATEGORIES:
            raise ValueError(f"what-if {spec!r}: unknown kernel category {target!r} "
                             f"(categories: {', '.join(CATEGORIES)}; a kernel by name: speedup-kernel)")
        try:
            return {"kind": "speedup", key: target, "factor": float(factor)}
        except ValueError:
            raise ValueError(f"what-if {spec!r}: the factor {factor!r} is not a number") from None
    if head == "launch_latency":
        try:
            return {"kind": head, "ns": int(rest) if rest else TYPICAL_LAUNCH_LATENCY_NS}
        except ValueError:
            raise ValueError(f"what-if {spec!r}: expected launch-latency or launch-latency:NS") from None
    if head in CHANGE_KINDS and not rest:
        return {"kind": head}
    raise ValueError(f"unknown what-if change {spec!r}")


def _edges_of_events(graph: Graph, per_event: np.ndarray) -> np.ndarray:
    """Edges whose time is attributed to an event for which `per_event` is True."""
    ev = graph.eevent
    return (ev >= 0) & per_event[np.maximum(ev, 0)]


def _speedup_edges(graph: Graph, change: dict) -> np.ndarray:
    """The device-time edges a speedup change shortens (their positions), kept on the graph:
    the ranks of a job price the same kernel at factors of their own (32 ranks: 30 what-ifs
    of one kernel name, 0.02 s each to find its edges again)."""
    category = change.get("category")
    key = ("speedup_edges", "category" if category else "kernel", category or change["kernel"])
    found = graph.memo.get(key)
    if found is None:
        timed = _device_time_edges(graph)
        # Events are matched per distinct name or category (codes), not per edge.
        if category:
            sel = timed & _edges_of_events(graph, per_value(lambda c: c == category, graph.category_code,
                                                            graph.category_values, bool))
        else:
            target = change["kernel"]
            exact = timed & _edges_of_events(graph, per_value(lambda n: n == target, graph.name_code,
                                                              graph.name_values, bool))
            sel = exact if exact.any() else timed & _edges_of_events(graph, per_value(
                lambda n: isinstance(n, str) and target in n, graph.name_code, graph.name_values, bool))
            if not sel.any():
                raise ValueError(f"speedup-kernel: no kernel is named {target!r} or has it in its name")
        found = graph.memo[key] = np.flatnonzero(sel)
    return found


def apply_changes(graph: Graph, changes: list[dict], weight: np.ndarray | None = None) -> np.ndarray:
    """Edge weights with the changes applied (the graph itself is not modified)."""
    w = np.array(graph.weight if weight is None else weight, dtype=np.int64)  # a copy
    for ch in changes:
        kind = ch["kind"]
        if kind == "no_host_overhead":
            w[graph.ekind == E_HOST] = 0
        elif kind == "host_gaps":
            trim = graph.gap_trim >= 0
            w[trim] = np.minimum(w[trim], graph.gap_trim[trim])
        elif kind == "launch_latency":
            ns = int(ch.get("ns", TYPICAL_LAUNCH_LATENCY_NS))
            if not 0 <= ns <= _MAX_NS:
                raise ValueError(f"launch latency must be 0 to {_MAX_NS:,} ns, not {ns:,}")
            launch = (graph.ekind == E_LAUNCH) & (graph.ecls == CLS["launch"])  # not the waits (graph_model)
            w[launch] = np.minimum(w[launch], ns)
        elif kind == "speedup":
            factor = float(ch.get("factor", 2.0))
            if not factor > 0:  # also nan
                raise ValueError("speedup factor must be a positive number")
            sel = _speedup_edges(graph, ch)
            w[sel] = np.round(w[sel] / factor).astype(np.int64)
        elif kind == "comm_overlap":
            # Transfers cost nothing; and collectives that compute waited on (exposed) no
            # longer hold it back at all, not even for the other ranks' arrival.
            comm = (graph.ecls == CLS["communication"]) & _device_time_edges(graph)
            w[comm] = 0
            exposed = (graph.exposed == 1) & np.isin(graph.ekind, (E_ARRIVE, E_TRANSFER))
            w[exposed] = NEG
        elif kind == "no_sync":
            w[graph.ekind == E_SYNC] = NEG
            own = graph.sync_min >= 0
            w[own] = np.minimum(w[own], graph.sync_min[own])
        elif kind == "straggler":
            _straggler(graph, w)
        else:
            raise ValueError(f"unknown what-if change {ch!r}")
    return w


def _device_time_edges(graph: Graph) -> np.ndarray:
    """Edges that carry device running time: durations, collective transfers, and the
    stream edges from an activity's start to the next one that overlapped its end (in the
    activity's compute or communication class; not the gaps inside a graph launch).
    The same for every change: memoised on the graph (read-only)."""
    if "device_time_edges" not in graph.memo:
        edges = ((graph.ekind == E_DURATION) | (graph.ekind == E_TRANSFER)
                 | ((graph.ekind == E_STREAM) & (graph.ecls <= CLS["communication"])))
        edges.flags.writeable = False
        graph.memo["device_time_edges"] = edges
    return graph.memo["device_time_edges"]


def _straggler(graph: Graph, w: np.ndarray) -> None:
    """Scale the compute kernels of the rank with the most compute time to the median rank's."""
    compute = (graph.ekind == E_DURATION) & (graph.ecls < CLS["communication"])
    per_trace = {}
    edge_trace = graph.trace_id[np.maximum(graph.eevent, 0)]
    for t in graph.traces:
        per_trace[t["trace_id"]] = int(w[compute & (edge_trace == t["trace_id"])].sum())
    if len(per_trace) < 2:
        return
    worst = max(per_trace, key=per_trace.get)
    median = float(np.median(list(per_trace.values())))
    if per_trace[worst] <= median or per_trace[worst] == 0:
        return
    # Totals count durations only; overlap edges of the same kernels are scaled with them.
    sel = _device_time_edges(graph) & (graph.ecls < CLS["communication"]) & (edge_trace == worst)
    w[sel] = np.round(w[sel] * (median / per_trace[worst])).astype(np.int64)


def straggler_trace(graph: Graph) -> int | None:
    compute = (graph.ekind == E_DURATION) & (graph.ecls < CLS["communication"])
    edge_trace = graph.trace_id[np.maximum(graph.eevent, 0)]
    totals = {t["trace_id"]: int(graph.weight[compute & (edge_trace == t["trace_id"])].sum()) for t in graph.traces}
    return max(totals, key=totals.get) if len(totals) >= 2 else None


def _within_steps(graph: Graph, index, weight: np.ndarray) -> np.ndarray:
    """`weight` (changed in place) with the edges into each trace's first step's begin,
    and into anything before it, back at their observed weights: changes apply from the
    first step on. A trace's first step is measured from its own first event, and changes
    before it moved that event earlier than the step's end, so a change could read as a
    longer step: on the SGLang decode capture (one step) removing the sync let the host
    reach the graph launch 463 ms sooner, into a copy that had waited as long for nothing
    recorded: 472.7 ms instead of 10 ms; on the MI300X Qwen step, fixing host time, syncs
    and gaps together won less than fixing the syncs alone. With the begin fixed, no change
    lengthens a step."""
    key = ("before_first_step", id(index))
    if key not in graph.memo:  # the same edges for every change
        begin = np.full(int(graph.trace_id.max()) + 1 if graph.n_events else 0, np.iinfo(np.int64).min)
        for i in np.unique(index.trace_id, return_index=True)[1]:  # each trace's first step
            begin[index.trace_id[i]] = graph.vtime[2 * index.first[i]]
        event = graph.vevent[graph.dst]
        trace = graph.trace_id[np.maximum(event, 0)]
        before = (event >= 0) & (graph.vtime[graph.dst] <= begin[trace])
        graph.memo[key] = (index, np.flatnonzero(before))  # the index kept alive: its id stays its own
    before = graph.memo[key][1]
    weight[before] = graph.weight[before]
    return weight


def capacity_floors(graph: Graph, index, weight: np.ndarray) -> np.ndarray:
    """Per step of `index`: the least time it can take with edge weights `weight`, by
    device capacity. Per device, the union of the step's compute kernels as observed, times
    the ratio of their durations under `weight` to their observed ones; the largest over
    the step's devices (0 for a step without compute kernels)."""
    durations, events, starts, step, union_ns, observed = _compute_groups(graph, index)
    per_event = np.zeros(graph.n_events, dtype=np.int64)
    per_event[graph.eevent[durations]] = weight[durations]
    changed = np.add.reduceat(per_event[events], starts) if events.size else np.zeros(0, dtype=np.int64)
    floors = np.zeros(index.step.size, dtype=np.int64)
    kept = np.flatnonzero(observed > 0)
    if not kept.size:
        return floors
    np.maximum.at(floors, step[kept], scaled(np.asarray(union_ns, np.int64)[kept], changed[kept], observed[kept]))
    return floors


def scaled(values: np.ndarray, now: np.ndarray, before: np.ndarray) -> np.ndarray:
    """values * now // before, exactly (before > 0): at once where every product fits in
    int64, else in Python ints."""
    if not values.size or int(values.max()) * int(now.max()) < 2 ** 63:
        return values * now // before
    return np.array([v * n // b for v, n, b in zip(values.tolist(), now.tolist(), before.tolist())], np.int64)


def _compute_groups(graph: Graph, index) -> tuple:
    """`_compute_unions` flat, for sums over every group at once: the duration edges, the
    groups' events one after another, where each group starts, its step, the length of
    its union and its events' observed duration. Memoised on the graph."""
    key = ("compute_groups", id(index))
    if key not in graph.memo:
        durations = np.flatnonzero(graph.ekind == E_DURATION)
        groups = [(i, events, union) for i, step in enumerate(_compute_unions(graph, index))
                  for events, union in step]
        events = np.concatenate([g[1] for g in groups]) if groups else np.zeros(0, dtype=np.int64)
        sizes = np.array([g[1].size for g in groups], dtype=np.int64)
        starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64) if groups else sizes
        observed_per_event = np.zeros(graph.n_events, dtype=np.int64)
        observed_per_event[graph.eevent[durations]] = graph.weight[durations]
        observed = np.add.reduceat(observed_per_event[events], starts) if events.size else sizes
        graph.memo[key] = (index, (durations, events, starts, np.array([g[0] for g in groups], dtype=np.int64),
                                   [int(g[2]) for g in groups], observed))
    return graph.memo[key][1]


def _compute_unions(graph: Graph, index) -> list[list[tuple[np.ndarray, int]]]:
    """Per step: per device, (its compute kernels, the length of their union). The
    observed part of `capacity_floors`, the same for every change: memoised on the graph."""
    key = ("compute_unions", id(index))
    if key not in graph.memo:
        compute = (graph.is_device & (graph.device >= 0) & (graph.kind == "kernel")
                   & ~per_value(lambda c: c == "communication", graph.category_code, graph.category_values, bool))
        steps = []
        for members in index.members:
            mine = members[compute[members]]
            by_device = mine[np.argsort(graph.device[mine], kind="stable")]
            bounds = np.flatnonzero(np.diff(graph.device[by_device])) + 1
            steps.append([(events, iv.length(graph.start[events], graph.end[events]))
                          for events in np.split(by_device, bounds) if events.size])
        graph.memo[key] = (index, steps)  # the index kept alive: its id stays its own
    return graph.memo[key][1]


def store_windows(store: Store, trace_ids: list[int]) -> dict[int, list[tuple[int, int, int]]]:
    ids = ",".join(str(int(t)) for t in trace_ids) or "NULL"
    out: dict[int, list] = {}
    for r in store.rows(f"SELECT trace_id, step, start_ns, end_ns FROM steps WHERE trace_id IN ({ids}) ORDER BY 1, 3"):
        out.setdefault(r["trace_id"], []).append((r["step"], r["start_ns"], r["end_ns"]))
    return out


def summarise(rows: list[dict]) -> dict[int, dict]:
    """Per trace: mean duration of the steady steps and the per-step durations."""
    out = {}
    for r in steady(rows):
        out.setdefault(r["trace_id"], []).append(r)
    return {tid: {"step_ns": int(round(np.mean([r["dur_ns"] for r in rs]))), "steps": rs} for tid, rs in out.items()}


def whatif(store: Store, trace_ids: list[int] | None = None, changes: list | None = None,
           windows: dict | None = None, graph: Graph | None = None) -> dict[str, Any]:
    """Predicted step time per trace (and per step) with the changes applied.

    Returns {"changes": [...], "traces": {trace_id: {observed_step_ns, replayed_step_ns,
    predicted_step_ns, saving_ns, saving_pct, steps: [{step, observed_ns, replayed_ns,
    predicted_ns}]}}, "mean": {...}}; with changes also capacity_floor_ns and capacity_bound
    per trace (and replayed_with_changes_ns where the floor held the prediction), and
    capacity_floor_ns per step. Step times are means over the steady steps (after the
    first when there are three or more)."""
    parsed = [parse_change(c) for c in (changes or [])]
    if trace_ids is None:
        trace_ids = store.trace_ids()
    if graph is None:
        graph = build_graph(store, trace_ids)
    if windows is None:
        windows = store_windows(store, trace_ids)
    index = step_index(graph, windows)
    observed, base = baseline_step_times(graph, index)
    pred = base
    if parsed:
        weight = _within_steps(graph, index, apply_changes(graph, parsed))
        pred = step_times(graph, replay(graph, weight).time, index)
        for row, floor in zip(pred, capacity_floors(graph, index, weight)):
            row["floor_ns"] = int(floor)
    so, sb, sp = summarise(observed), summarise(base), summarise(pred)
    traces = {}
    for tid in sb:
        steps = [{"step": o["step"], "observed_ns": o["dur_ns"], "replayed_ns": b["dur_ns"], "predicted_ns": p["dur_ns"],
                  **({"capacity_floor_ns": p["floor_ns"]} if "floor_ns" in p else {})}
                 for o, b, p in zip(so[tid]["steps"], sb[tid]["steps"], sp[tid]["steps"])]
        predicted, capacity = sp[tid]["step_ns"], {}
        if parsed:
            # The floor is held against the mean, not each step: a step's kernels may run
            # while the one before completes, so one step alone can beat its own floor.
            # Never above the replay without changes: a floor is no reason to predict a loss.
            floor = min(int(round(np.mean([st["capacity_floor_ns"] for st in steps]))), sb[tid]["step_ns"])
            capacity = {"capacity_floor_ns": floor, "capacity_bound": predicted < floor}
            if predicted < floor:
                capacity["replayed_with_changes_ns"], predicted = predicted, floor
        saving = sb[tid]["step_ns"] - predicted
        traces[tid] = {"observed_step_ns": so[tid]["step_ns"], "replayed_step_ns": sb[tid]["step_ns"],
                       "predicted_step_ns": predicted, "saving_ns": int(saving),
                       "saving_pct": round(100.0 * saving / sb[tid]["step_ns"], 3) if sb[tid]["step_ns"] else 0.0,
                       **capacity, "steps": steps}
    mean = {k: int(round(np.mean([t[k] for t in traces.values()]))) if traces else 0
            for k in ("observed_step_ns", "replayed_step_ns", "predicted_step_ns", "saving_ns")}
    return {"changes": parsed, "traces": traces, "mean": mean}
