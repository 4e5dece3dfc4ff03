"""Ingest benchmark for the rocprof parsers: rows/s and peak RSS on a synthetic
1M-dispatch rocprofv3 CSV directory and JSON file (built by bench/rocprof_synthetic.py).

Each input is ingested in its own subprocess so peak RSS is per input. CPU time (all
threads) is printed too: on a shared, loaded machine wall time says little. "parse" is the
parser writing into the store; "total" adds the derivations every format gets
(categories, launch links, nesting). Each input is ingested --repeat times (3 by
default; each a fresh process) and the median is printed with the range, because on a
shared 2-core machine one run can be 30% off the next.

The rates leave out the process's one-time start-up (imports), which is printed apart.

    python bench/ingest_rocprof.py [--dispatches N] [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from tile_trace import median_range  # shared by the benchmarks (this directory)


def measure(path: str) -> dict:
    started = time.perf_counter()
    import pyarrow as pa

    from profkit import derive, ingest as ingest_mod
    from profkit.parsers import parser_modules
    from profkit.store import Store

    # One-time start-up, timed apart from the ingest: the parser modules, and the pandas
    # import pyarrow makes on its first array when pandas is installed (HTA brings it).
    parser_modules()
    pa.array([0])
    imports = time.perf_counter() - started

    timings = {"derive": 0.0}
    original = derive.derive_trace

    def timed(store, trace_id):
        t = time.perf_counter()
        original(store, trace_id)
        timings["derive"] += time.perf_counter() - t

    ingest_mod.derive.derive_trace = timed
    store = Store.open(None)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    ingest_mod.ingest([path], store)
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rows = store.scalar("SELECT count(*) FROM events")
    dispatches = store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'")
    links = store.scalar("SELECT count(*) FROM links")
    return {"input": Path(path).name, "events": rows, "dispatches": dispatches, "links": links,
            "total_s": round(total, 2), "parse_s": round(total - timings["derive"], 2),
            "rows_per_s_parse": int(rows / max(total - timings["derive"], 1e-9)),
            "rows_per_s_total": int(rows / total), "cpu_s": round(cpu, 2), "imports_s": round(imports, 2),
            "rows_per_cpu_s": int(rows / cpu),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per input (median and range printed)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    # Built in a child process: a child's peak RSS starts at its parent's (Linux keeps
    # the high-water mark across fork and exec), so building here would inflate it.
    built = subprocess.run([sys.executable, str(Path(__file__).with_name("rocprof_synthetic.py")),
                            "--dispatches", str(args.dispatches)], capture_output=True, text=True, check=True)
    for path in built.stdout.splitlines():
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[0]

        def spread(key: str) -> str:
            return median_range([run[key] for run in runs], "g")

        def rate(key: str) -> str:  # rows per second
            return median_range([r["events"] / run[key] for run in runs], ",.0f")

        print(f"{r['input']}: {r['events']:,} events ({r['dispatches']:,} dispatches, {r['links']:,} links); "
              f"median of {len(runs)} runs (range): parse {spread('parse_s')} s = {rate('parse_s')} rows/s; "
              f"with derivations {spread('total_s')} s = {rate('total_s')} rows/s; CPU {spread('cpu_s')} s "
              f"(all threads); peak RSS {spread('peak_rss_mb')} MB; start-up (imports, not in the rates) "
              f"{spread('imports_s')} s")


if __name__ == "__main__":
    main()
