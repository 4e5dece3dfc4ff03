"""Benchmark: the Perfetto timeline export (`profkit analyze --timeline`) on the largest
shared Kineto trace, the V100 trace tiled to 1M events (bench/tile_trace.py) and the
4-rank synthetic sample, each in a fresh process, with its peak memory.

    python bench/timeline.py [--repeat 3] [--inputs v100,1M,4ranks] [--out bench/out]

The input is loaded and analysed first (not timed); then timed apart: the critical path's
segments as the CLI takes them from the analysis graph (`path_s`), and `write_timeline`
(`export_s`: tracks, slices, flows, counters, the critical path and findings drawn in).
The median of --repeat runs is printed with the range.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tile_trace import measure, median_range, own_peak_rss, tile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
V100 = ROOT.parent / "shared" / "traces" / "kineto" / "cuda" / "v100_nccl_rank1_of2.json.gz"


def worker(trace: str) -> None:
    from profkit.analyses import analyze
    from profkit.analyses.critical_path import store_graph
    from profkit.graph import critical_path_segments
    from profkit.ingest import ingest
    from profkit.store import Store
    from profkit.timeline import write_timeline

    store = Store.open(None)
    ingest([trace], store)
    result = analyze(store)
    t0 = time.perf_counter()
    graph = store_graph(store)
    segments = [s for trace_id in store.trace_ids() for s in critical_path_segments(store, trace_id, graph)]
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        stats = write_timeline(store, Path(tmp) / "t.pftrace", critical_path=segments, findings=result["findings"])
    t2 = time.perf_counter()
    print(json.dumps({"events": store.scalar("SELECT count(*) FROM events"), "slices": stats["slices"],
                      "segments": len(segments), "packets": stats["packets"], "bytes": stats["bytes"],
                      "path_s": round(t1 - t0, 3), "export_s": round(t2 - t1, 3), "vmhwm_bytes": own_peak_rss()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--inputs", default="v100,1M,4ranks")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = {"v100": V100, "4ranks": ROOT / "sample_traces" / "synthetic_llm_decode_4ranks"}
    if "1M" in args.inputs.split(","):
        inputs["1M"] = out / "tile_v100_1M.json"
        if not inputs["1M"].exists():
            tile(V100, 1_000_000, inputs["1M"])
    for label in args.inputs.split(","):
        runs = [measure([sys.executable, __file__, "--worker", str(inputs[label])]) for _ in range(args.repeat)]
        bad = [r for r in runs if "error" in r]
        if bad:
            raise SystemExit(f"{label}: {bad[0]['error']}")
        first = runs[0]
        print(f"{label}: {first['events']:,} events, {first['slices']:,} slices, {first['segments']:,} critical-path "
              f"segments, {first['packets']:,} packets, {first['bytes'] / 1e6:.1f} MB; median of {len(runs)} "
              f"(range): export {median_range([r['export_s'] for r in runs], '.2f', ' s')}, critical-path "
              f"segments {median_range([r['path_s'] for r in runs], '.2f', ' s')}; peak RSS of the whole run "
              f"{median_range([r['peak_rss_bytes'] / 2**20 for r in runs], '.0f', ' MB')}")


if __name__ == "__main__":
    main()
