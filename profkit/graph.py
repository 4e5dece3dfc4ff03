"""The dependency graph, its critical path, replay and what-if: the public API.

    from profkit.graph import build_graph, replay, critical_path_report, to_networkx
    g = build_graph(store)                    # arrays (profkit/graph_build.py)
    sched = replay(g)                         # ASAP schedule (profkit/graph_replay.py)
    report = critical_path_report(store, trace_id, graph=g)
    nx_graph = to_networkx(g)                 # for users who want networkx

The computation runs on numpy arrays and one Python loop over edges sorted by
destination; networkx is only an export (see docs/graph.md for why).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .graph_build import Graph, build_graph
from .graph_model import CLASS_NAMES, EDGE_KIND_NAMES
from .graph_replay import (Schedule, attribute, baseline_step_times, critical_path, median_latency_step_times,
                           replay, steady, step_index, top_contributors)
from .store import Store
from .whatif import apply_changes, parse_change, store_windows, whatif

__all__ = ["Graph", "Schedule", "build_graph", "replay", "critical_path", "critical_path_report",
           "to_networkx", "whatif", "apply_changes", "parse_change", "CAUSES"]

# The causes a critical path's time is attributed to (keys of `attribution`).
CAUSES = ("compute", "communication", "host", "launch", "sync", "idle")


def to_networkx(graph: Graph):
    """A networkx MultiDiGraph of the graph: vertices keyed by index with `time`, `event_id`,
    `is_start`; edges with `weight`, `kind`, `cause`. A multigraph, because two edges between
    the same vertices (a launch and a stream edge) must not overwrite each other's weight."""
    import networkx as nx

    g = nx.MultiDiGraph()
    for v in range(graph.n_vertices):
        e = int(graph.vevent[v])
        g.add_node(v, time=int(graph.vtime[v]), event_id=int(graph.event_id[e]) if e >= 0 else None,
                   is_start=bool(v % 2 == 0) if e >= 0 else None)
    for i in range(graph.n_edges):
        g.add_edge(int(graph.src[i]), int(graph.dst[i]), weight=int(graph.weight[i]),
                   kind=EDGE_KIND_NAMES[int(graph.ekind[i])], cause=CLASS_NAMES[int(graph.ecls[i])])
    return g


def _cause(cls_name: str) -> str:
    head = cls_name.split(".")[0]
    if head == "wait":
        return "idle"
    return head


def critical_path_report(store: Store, trace_id: int, graph: Graph | None = None,
                         windows: dict | None = None, top: int = 10) -> dict[str, Any]:
    """The per-trace `critical_path` section: per steady step, the longest path ending at
    the step's completion and starting at the previous step's completion; its time by
    cause; the observed, replayed step times and the replay error."""
    if graph is None:
        graph = build_graph(store)
    if windows is None:
        windows = store_windows(store, [t["trace_id"] for t in graph.traces])
    index = step_index(graph, windows)
    sched = replay(graph)
    observed_all, replayed_all = baseline_step_times(graph, index)
    observed = [r for r in observed_all if r["trace_id"] == trace_id]
    replayed = [r for r in replayed_all if r["trace_id"] == trace_id]
    obs_steady, rep_steady = steady(observed), steady(replayed)
    if not rep_steady:
        return {"available": False, "reason": "no events of this trace in the graph"}
    paths, per_step = [], []
    detail_total = dict.fromkeys(CLASS_NAMES, 0)
    for o, r in zip(obs_steady, rep_steady):
        path = critical_path(graph, sched, r["done_vertex"], r["window_start_ns"])
        paths.append(path)
        parts = attribute(graph, path)
        for k, v in parts.items():
            detail_total[k] += v
        err = 100.0 * (r["dur_ns"] - o["dur_ns"]) / o["dur_ns"] if o["dur_ns"] else 0.0
        per_step.append({"step": r["step"], "observed_ns": o["dur_ns"], "replayed_ns": r["dur_ns"],
                         "error_pct": round(err, 3), "length_ns": path["length_ns"]})
    # The same replay with every launch at the median latency (shared by every trace).
    strict = steady([r for r in median_latency_step_times(graph, index) if r["trace_id"] == trace_id])
    strict_ns = int(round(np.mean([r["dur_ns"] for r in strict]))) if strict else 0
    n = len(per_step)
    # Every cause is present (0 when absent) so a budget on one always has an answer.
    detail = {k: int(round(v / n)) for k, v in detail_total.items()}
    attribution: dict[str, int] = {}
    for k, v in detail.items():
        attribution[_cause(k)] = attribution.get(_cause(k), 0) + v
    observed_ns = int(round(np.mean([s["observed_ns"] for s in per_step])))
    replayed_ns = int(round(np.mean([s["replayed_ns"] for s in per_step])))
    length = int(round(np.mean([s["length_ns"] for s in per_step])))
    return {
        "available": True,
        "steps_source": "steps" if windows.get(trace_id) else "whole_trace",
        "length_ns": length,
        "observed_step_ns": observed_ns,
        "replayed_step_ns": replayed_ns,
        "replay_error_pct": round(100.0 * (replayed_ns - observed_ns) / observed_ns, 3) if observed_ns else 0.0,
        "max_step_error_pct": round(max(abs(s["error_pct"]) for s in per_step), 3),
        "median_latency_replayed_step_ns": strict_ns,
        "median_latency_replay_error_pct": round(100.0 * (strict_ns - observed_ns) / observed_ns, 3) if observed_ns else 0.0,
        "attribution": attribution,
        "attribution_detail": detail,
        "top_contributors": top_contributors(graph, paths, per=n, limit=top),
        "steps": per_step,
        "graph": {k: v for k, v in graph.stats.items()},
    }


def critical_path_segments(store: Store, trace_id: int, graph: Graph | None = None,
                           windows: dict | None = None) -> list[dict[str, Any]]:
    """The critical path of every steady step of a trace as timeline segments, in time
    order, on observed times (so they line up with the original tracks):
    {event_id, start_ns, end_ns, cause, name}."""
    if graph is None:
        graph = build_graph(store)
    if windows is None:
        windows = store_windows(store, [t["trace_id"] for t in graph.traces])
    index = step_index(graph, windows)
    sched = replay(graph)
    causes = [_cause(name) for name in CLASS_NAMES]
    segments: list[dict[str, Any]] = []
    for r in steady([r for r in baseline_step_times(graph, index)[1] if r["trace_id"] == trace_id]):
        edges = critical_path(graph, sched, r["done_vertex"], r["window_start_ns"])["edges"][::-1]
        start, end = graph.vtime[graph.src[edges]], graph.vtime[graph.dst[edges]]
        kept = end > start
        edges, start, end = edges[kept], start[kept], end[kept]
        ev, cls = graph.eevent[edges], graph.ecls[edges].tolist()
        has = ev >= 0
        ids = np.where(has, graph.event_id[np.where(has, ev, 0)], -1).tolist() if len(graph.event_id) else [-1] * len(ev)
        named = (str(n) for n in graph.name[ev[has]])
        # Column by column, then one dict a segment: a path has ~300k of them at 1M events.
        segments.extend({
            "event_id": i if h else None, "start_ns": s, "end_ns": t, "cause": causes[c],
            "name": next(named) if h else CLASS_NAMES[c],
        } for i, h, s, t, c in zip(ids, has.tolist(), start.tolist(), end.tolist(), cls))
    return segments
