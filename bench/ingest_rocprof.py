"""Ingest benchmark for the rocprof parsers: rows/s and peak RSS on a synthetic
1M-dispatch rocprofv3 CSV directory and JSON file (built by bench/rocprof_synthetic.py).

Each input is ingested in its own subprocess so peak RSS is per input. CPU time (all
threads) is printed too: on a shared, loaded machine wall time says little. "parse" is the
parser writing into the store; "total" adds the derivations every format gets
(categories, launch links, nesting). Each input is ingested --repeat times (3 by
default; each a fresh process) and the median is printed with the range, because on a
shared 2-core machine one run can be 30% off the next.

The rates leave out the process's one-time start-up (imports), which is printed apart.

Each run is made with memory cold and again warm (tile_trace.MEMORY_STATES, alternating): on
a VM whose host takes back the memory the guest frees, as here, first touching memory costs
4-10 s a GB cold against 0.2-0.6 s warm (printed first), and a run touches ~1 GB, so cold
runs spread more; warm figures are what the software costs, as on a machine without this.

    python bench/ingest_rocprof.py [--dispatches N] [--repeat N] [--memory cold,warm] [--warm-gb G]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import tile_trace as tt  # shared by the benchmarks (this directory)
from tile_trace import median_range


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
    parser.add_argument("--memory", default="cold,warm", help="memory states to run in, alternating "
                        "(tile_trace.MEMORY_STATES; default cold,warm)")
    parser.add_argument("--warm-gb", type=float, default=2.0, help="GB touched before a warm run (default 2, "
                        "above a 1M run's peak)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    # Built in a child process: a child's peak RSS starts at its parent's (Linux keeps
    # the high-water mark across fork and exec), so building here would inflate it.
    built = subprocess.run([sys.executable, str(Path(__file__).with_name("rocprof_synthetic.py")),
                            "--dispatches", str(args.dispatches)], capture_output=True, text=True, check=True)
    try:
        states = tt.memory_states(args.memory)
    except ValueError as exc:
        parser.error(str(exc))
    print(tt.memory_costs())
    for path in built.stdout.splitlines():
        runs = {state: [] for state in states}
        for _ in range(args.repeat):
            for state in states:
                run = tt.measure([sys.executable, __file__, "--one", str(path)], memory=(state, args.warm_gb))
                if "error" in run:
                    raise SystemExit(f"{path}: {run['error']}")
                runs[state].append(run)
        for state in states:
            report(runs[state], state)


def report(runs: list[dict], state: str) -> None:
    r = runs[0]

    def spread(key: str) -> str:
        return median_range([run[key] for run in runs], "g")

    def rate(key: str) -> str:  # rows per second
        return median_range([r["events"] / run[key] for run in runs], ",.0f")

    warmed = (f"; {r['warm_gb']:g} GB touched before each, at {spread('warm_s_per_gb')} s/GB"
              if state == "warm" else "")
    print(f"{r['input']}, memory {state}{warmed}: {r['events']:,} events ({r['dispatches']:,} dispatches, "
          f"{r['links']:,} links); median of {len(runs)} runs (range): parse {spread('parse_s')} s = "
          f"{rate('parse_s')} rows/s; with derivations {spread('total_s')} s = {rate('total_s')} rows/s; "
          f"CPU {spread('cpu_s')} s (all threads); peak RSS {spread('peak_rss_mb')} MB; start-up (imports, "
          f"not in the rates) {spread('imports_s')} s")


if __name__ == "__main__":
    main()
