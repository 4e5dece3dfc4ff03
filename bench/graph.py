"""Benchmark: dependency-graph build, replay (ASAP schedule) and critical path on
scaled-up traces (1M and 5M events, tiled from the real v100 NCCL trace by
bench/tile_trace.py), each size in a fresh process, with its peak memory.

    python bench/graph.py [--sizes 1000000,5000000] [--out bench/out]

The store is ingested first (its time is not part of the graph figures) and cached as
OUT/graph_tile_N.duckdb so repeated runs measure the graph only. Writes OUT/graph.json
and OUT/graph.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tile_trace import measure, own_peak_rss, table, tile  # noqa: E402

SRC = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "kineto" / "cuda" / "v100_nccl_rank1_of2.json.gz"


def worker(store_path: str) -> None:
    from profkit.graph_build import build_graph
    from profkit.graph_replay import attribute, critical_path, replay, step_index, step_times
    from profkit.store import Store
    from profkit.whatif import apply_changes, store_windows

    store = Store.open(store_path, read_only=True)
    t0 = time.perf_counter()
    g = build_graph(store)
    t1 = time.perf_counter()
    sched = replay(g)
    t2 = time.perf_counter()
    end = int(sched.time.argmax())
    path = critical_path(g, sched, end)
    parts = attribute(g, path)
    t3 = time.perf_counter()
    rows = step_times(g, sched.time, step_index(g, store_windows(store, store.trace_ids())))
    t4 = time.perf_counter()
    # One more replay with a what-if's weights: the cost each further what-if adds (the
    # first replay above also pays for loading the compiled loop).
    replay(g, apply_changes(g, [{"kind": "no_host_overhead"}]))
    t5 = time.perf_counter()
    print(json.dumps({"events": g.n_events, "vertices": g.n_vertices, "edges": g.n_edges,
                      "build_s": round(t1 - t0, 3), "replay_s": round(t2 - t1, 3),
                      "critical_path_s": round(t3 - t2, 3), "steps_s": round(t4 - t3, 3),
                      "total_s": round(t4 - t0, 3), "whatif_replay_s": round(t5 - t4, 3), "path_edges": int(path["edges"].size),
                      "path_ns": int(sum(parts.values())), "steps": len(rows), "vmhwm_bytes": own_peak_rss()}))


def ingest_worker(trace: str, store_path: str) -> None:
    from profkit.ingest import ingest
    from profkit.store import Store

    store = Store.open(store_path)
    ingest([trace], store)
    store.close()
    print(json.dumps({"ok": True}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    ap.add_argument("--worker")
    ap.add_argument("--ingest", nargs=2)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.ingest:
        return ingest_worker(*args.ingest)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        label = f"{n // 1_000_000}M"
        trace = out / f"tile_v100_{label}.json"
        if not trace.exists():
            tile(SRC, n, trace)
        store = out / f"graph_tile_{label}.duckdb"
        if not store.exists():
            r = measure([sys.executable, __file__, "--ingest", str(trace), str(store)])
            if "error" in r:
                raise SystemExit(f"ingest of {trace} failed: {r['error']}")
        r = measure([sys.executable, __file__, "--worker", str(store)])
        r["size"] = label
        rows.append(r)
        print(json.dumps(r), flush=True)
    (out / "graph.json").write_text(json.dumps(rows, indent=2))
    md = table([{**r, "peak_rss_mb": round(r.get("peak_rss_bytes", 0) / 2**20)} for r in rows],
               [("size", "trace"), ("events", "events"), ("vertices", "vertices"), ("edges", "edges"),
                ("build_s", "build s"), ("replay_s", "replay s"), ("critical_path_s", "critical path s"),
                ("total_s", "total s"), ("whatif_replay_s", "each further what-if s"),
                ("peak_rss_mb", "peak RSS MB")])
    (out / "graph.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
