"""Analysis benchmark (issue 5): end-to-end `profkit analyze` against HTA's load plus
temporal breakdown, on the same inputs.

    python bench/analyze.py [--no-hta] [--tiles 1,5]

Each measurement is one fresh process, timed from its start to its exit (interpreter start
and imports included, for both tools):
- profkit, first run: the command users run, `profkit analyze TRACE --format json`, with an
  empty cache directory (parse, derive, every analysis pass, and the cache file written);
- profkit, again: the same command once more, reading the cache;
- profkit, split: `analyze(load(path, cache=False))` in one process, timing load and passes
  apart (no cache file; imports not timed);
- HTA: `TraceAnalysis(...)` + `get_temporal_breakdown()` (imports included).
Inputs: the largest shared Kineto traces and tiles of v100_nccl_rank1_of2 (bench/tile_trace.py):
1M events by default, `--tiles 1,5` adds 5M. Prints a Markdown table and writes it with the
raw numbers to bench/out/. Target: >= 10x faster than HTA (first run against HTA).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tile_trace as tt  # noqa: E402

from tile_trace import OUT, TILE_SOURCE, TRACES  # noqa: E402  (shared by the benchmarks)


def worker(which: str, path: str) -> None:
    """Child process: one measurement, one JSON line on stdout."""
    if which == "profkit":
        import profkit
        from profkit import analyses

        passes = []
        for name in analyses.PASSES:  # passes still being written are skipped, and named
            try:
                analyses.pass_module(name)
                passes.append(name)
            except ModuleNotFoundError:
                pass
        t0 = time.perf_counter()
        store = profkit.load(path, cache=False)
        t1 = time.perf_counter()
        result = analyses.analyze(store, passes=tuple(passes))
        t2 = time.perf_counter()
        print(json.dumps({"seconds": t2 - t0, "load_s": t1 - t0, "analyze_s": t2 - t1, "passes": passes,
                          "findings": len(result["findings"]), "vmhwm_bytes": tt.own_peak_rss()}))
    else:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        from hta.trace_analysis import TraceAnalysis

        t0 = time.perf_counter()
        analysis = TraceAnalysis(trace_dir=path)
        t1 = time.perf_counter()
        analysis.get_temporal_breakdown(visualize=False)
        t2 = time.perf_counter()
        print(json.dumps({"seconds": t2 - t0, "load_s": t1 - t0, "analyze_s": t2 - t1,
                          "vmhwm_bytes": tt.own_peak_rss()}))


def child(which: str, path: Path) -> dict:
    return tt.measure([sys.executable, __file__, "--worker", which, str(path)], timeout=900)


def cli_runs(path: Path) -> tuple[dict, dict]:
    """`profkit analyze PATH --format json` with an empty cache directory, then again."""
    argv = [sys.executable, "-c", "import sys; from profkit.cli import main; sys.argv[0] = 'profkit'; main()",
            "analyze", str(path), "--format", "json"]
    cache = tempfile.mkdtemp(prefix="profkit-bench-cache-")
    env = {**os.environ, "PROFKIT_CACHE_DIR": cache}  # the cache goes there, not beside the input
    try:
        first = tt.measure(argv, timeout=900, json_output=False, env=env)
        again = tt.measure(argv, timeout=900, json_output=False, env=env)
        for run in (first, again):
            if "error" not in run and run["output_bytes"] == 0:
                run["error"] = "no output"
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return first, again


def run(with_hta: bool, tiles: list[int]) -> list[dict]:
    inputs = [(p.name.split(".json")[0], p, tt.count_events(p)) for p in TRACES]
    for millions in tiles:
        tile = OUT / f"tile_v100_{millions}M.json"
        if not tile.exists():
            print(f"tiling {TILE_SOURCE.name} to {millions}M events -> {tile}", file=sys.stderr)
            tt.tile(TILE_SOURCE, millions * 1_000_000, tile)
        inputs.append((f"v100 tile {millions}M", tile, millions * 1_000_000))
    rows = []
    for label, path, events in inputs:
        first, again = cli_runs(path)
        split = child("profkit", path)
        row = {"trace": label, "events": events, "profkit_first": first, "profkit_again": again, "profkit_split": split}
        if "error" in first:
            row["profkit_s"] = "error: " + first["error"]
        else:
            row.update(profkit_s=round(first["wall_s"], 2), profkit_cpu_s=round(first["cpu_s"], 1),
                       rss_mb=round(first["peak_rss_bytes"] / 1e6))
        if "error" not in again:
            row["profkit_again_s"] = round(again["wall_s"], 2)
        if "error" not in split:
            row.update(profkit_load_s=round(split["load_s"], 2), profkit_passes_s=round(split["analyze_s"], 2),
                       passes=",".join(split["passes"]))
        if with_hta:
            theirs = child("hta", tt.hta_dir(path, OUT / "hta_dirs"))
            row["hta"] = theirs
            if "error" in theirs:
                row["hta_s"] = "error: " + theirs["error"]
            else:
                row.update(hta_s=round(theirs["wall_s"], 2), hta_cpu_s=round(theirs["cpu_s"], 1),
                           hta_breakdown_s=round(theirs["analyze_s"], 2),
                           hta_rss_mb=round(theirs["peak_rss_bytes"] / 1e6))
                if "error" not in first:
                    row["ratio"] = f"{theirs['wall_s'] / first['wall_s']:.1f}x"
                if "error" not in again:
                    row["ratio_again"] = f"{theirs['wall_s'] / again['wall_s']:.1f}x"
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), file=sys.stderr)
    return rows


COLUMNS = [("trace", "trace"), ("events", "events"),
           ("profkit_s", "profkit analyze, first run s"), ("profkit_cpu_s", "CPU s"), ("rss_mb", "peak RSS MB"),
           ("profkit_load_s", "split: load s"), ("profkit_passes_s", "split: passes s"),
           ("profkit_again_s", "again (cached) s"),
           ("hta_s", "HTA load+breakdown s"), ("hta_cpu_s", "HTA CPU s"), ("hta_breakdown_s", "of which breakdown s"),
           ("hta_rss_mb", "HTA RSS MB"), ("ratio", "HTA / first run"), ("ratio_again", "HTA / again"),
           ("passes", "profkit passes run")]


def main() -> None:
    parser = argparse.ArgumentParser(description="profkit analyze vs HTA load + temporal breakdown")
    parser.add_argument("--no-hta", action="store_true", help="do not run HTA")
    parser.add_argument("--tiles", default="1", help="sizes of the tiled inputs in millions of events, "
                        "comma-separated (default 1; 1,5 adds the 5M tile: HTA needs ~5.5 GB and took 455 s "
                        "there on the project's machine)")
    parser.add_argument("--worker", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    OUT.mkdir(exist_ok=True)
    rows = run(not a.no_hta, [int(x) for x in a.tiles.split(",") if x])
    text = tt.table(rows, COLUMNS) + "\n"
    print(text)
    (OUT / "analyze.md").write_text(text)
    (OUT / "analyze.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
