"""Analysis benchmark (issue 5): end-to-end `profkit analyze` against HTA's load plus
temporal breakdown, on the same inputs.

    python bench/analyze.py [--no-hta] [--tiles 1,5] [--repeat N] [--only WORDS] [--rocprof]

Each measurement is one fresh process, timed from its start to its exit (interpreter start
and imports included, for both tools):
- profkit, first run: the command users run, `profkit analyze TRACE --format json`, with an
  empty cache directory (parse, derive, every analysis pass, and the cache file written);
- profkit, again: the same command once more, reading the cache;
- profkit, split: `analyze(load(path, cache=False))` in one process, timing load and passes
  apart (no cache file; imports not timed);
- HTA: `TraceAnalysis(...)` + `get_temporal_breakdown()` (imports included).
Inputs: the largest shared Kineto traces and tiles of v100_nccl_rank1_of2 (bench/tile_trace.py):
1M events by default, `--tiles 1,5` adds 5M. With `--repeat N` each input gets N rounds
(profkit first run, again, then HTA), and the table gives medians with their ranges, the
ratio being the median of the rounds' ratios: this machine's speed drifts by 10-30% over
minutes, so one round can be off either way. Prints a Markdown table and writes it with
the raw numbers to bench/out/. Target: >= 10x faster than HTA (first run against HTA).
`--rocprof` adds the 1M-dispatch rocprofv3 JSON of bench/rocprof_synthetic.py (2M events,
no step annotations: the passes at scale on an AMD capture); HTA does not read rocprof, so
that row has no ratio.
`--memory cold,warm` runs every round in each memory state (tile_trace.MEMORY_STATES), a row
per state: on a VM whose host takes back freed memory, as here, fresh memory costs 3-6 s a
GB when cold and both tools touch 1-6 GB. Default: as the machine happens to be.
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

from tile_trace import OUT, TILE_SOURCE, TRACES, median_range  # noqa: E402  (shared by the benchmarks)


def worker(which: str, path: str) -> None:
    """Child process: one measurement, one JSON line on stdout."""
    if which == "profkit":
        from profkit import no_pandas

        # As the `profkit` command does: pyarrow would import pandas (installed here for
        # HTA) on its first array, 0.15-0.5 s that no profkit command pays.
        no_pandas.block()
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


def child(which: str, path: Path, memory: tuple[str, float] | None = None) -> dict:
    return tt.measure([sys.executable, __file__, "--worker", which, str(path)], timeout=900, memory=memory)


def cli_runs(path: Path, memory: tuple[str, float] | None = None) -> tuple[dict, dict]:
    """`profkit analyze PATH --format json` with an empty cache directory, then again."""
    argv = [sys.executable, "-c", "import sys; from profkit.cli import main; sys.argv[0] = 'profkit'; main()",
            "analyze", str(path), "--format", "json"]
    cache = tempfile.mkdtemp(prefix="profkit-bench-cache-")
    env = {**os.environ, "PROFKIT_CACHE_DIR": cache}  # the cache goes there, not beside the input
    try:
        first = tt.measure(argv, timeout=900, json_output=False, env=env, memory=memory)
        again = tt.measure(argv, timeout=900, json_output=False, env=env, memory=memory)
        for run in (first, again):
            if "error" not in run and run["output_bytes"] == 0:
                run["error"] = "no output"
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return first, again


def _rocprof_json() -> Path:
    """The 1M-dispatch rocprofv3 JSON, built (once, cached in bench/out) by its generator."""
    import subprocess

    built = subprocess.run([sys.executable, str(HERE / "rocprof_synthetic.py")], capture_output=True, text=True,
                           check=True)
    return next(Path(line) for line in built.stdout.splitlines() if line.endswith(".json"))


def run(with_hta: bool, tiles: list[int], repeat: int = 1, only: list[str] | None = None,
        rocprof: bool = False, memory: list[str] | None = None, warm_gb: float = 2.0) -> list[dict]:
    inputs = [(p.name.split(".json")[0], p, tt.count_events(p)) for p in TRACES]
    for millions in tiles:
        tile = OUT / f"tile_v100_{millions}M.json"
        if not tile.exists():
            print(f"tiling {TILE_SOURCE.name} to {millions}M events -> {tile}", file=sys.stderr)
            tt.tile(TILE_SOURCE, millions * 1_000_000, tile)
        inputs.append((f"v100 tile {millions}M", tile, millions * 1_000_000))
    if rocprof:
        inputs.append(("rocprofv3 JSON 1M dispatches", _rocprof_json(), 2_000_000))
    if only:
        inputs = [i for i in inputs if any(word in i[0] for word in only)]
    rows = []
    for (label, path, events), state in ((i, s) for i in inputs for s in (memory or [None])):
        prepared = (state, warm_gb) if state else None
        # Rounds alternate the tools, so the machine's drift over minutes hits both alike;
        # each round's ratio compares runs made minutes apart at most.
        rounds = []
        for _ in range(repeat):
            first, again = cli_runs(path, prepared)
            hta_reads = not label.startswith("rocprof")
            theirs = (child("hta", tt.hta_dir(path, OUT / "hta_dirs"), prepared) if with_hta and hta_reads
                      else None)
            rounds.append({"profkit_first": first, "profkit_again": again, "hta": theirs})
        split = child("profkit", path, prepared)
        row = {"trace": label, "memory": state or "as found", "events": events, "rounds": rounds,
               "profkit_split": split}
        row.update(_summary(rounds))
        if "error" not in split:
            row.update(profkit_load_s=round(split["load_s"], 2), profkit_passes_s=round(split["analyze_s"], 2),
                       passes=",".join(split["passes"]))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, (dict, list))}), file=sys.stderr)
    return rows


def _summary(rounds: list[dict]) -> dict:
    """Medians over the rounds (with the range when there are several); ratios per round."""
    out = {}
    firsts = [r["profkit_first"] for r in rounds]
    agains = [r["profkit_again"] for r in rounds]
    hta = [r["hta"] for r in rounds if r["hta"] is not None]
    errors = [r.get("error") for r in firsts + agains + hta if "error" in r]
    if errors:
        out["error"] = errors[0]
    ok_first = [r for r in firsts if "error" not in r]
    ok_again = [r for r in agains if "error" not in r]
    ok_hta = [r for r in hta if "error" not in r]
    if ok_first:
        out.update(profkit_s=median_range([r["wall_s"] for r in ok_first], ".2f"),
                   profkit_cpu_s=median_range([r["cpu_s"] for r in ok_first], ".1f"),
                   rss_mb=round(max(r["peak_rss_bytes"] for r in ok_first) / 1e6))
    if ok_again:
        out["profkit_again_s"] = median_range([r["wall_s"] for r in ok_again], ".2f")
    if ok_hta:
        out.update(hta_s=median_range([r["wall_s"] for r in ok_hta], ".2f"),
                   hta_cpu_s=median_range([r["cpu_s"] for r in ok_hta], ".1f"),
                   hta_breakdown_s=median_range([r["analyze_s"] for r in ok_hta], ".2f"),
                   hta_rss_mb=round(max(r["peak_rss_bytes"] for r in ok_hta) / 1e6))
        pairs = [r for r in rounds if r["hta"] and "error" not in r["hta"]]
        for key, run in (("ratio", "profkit_first"), ("ratio_again", "profkit_again")):
            ratios = [r["hta"]["wall_s"] / r[run]["wall_s"] for r in pairs if "error" not in r[run]]
            if ratios:
                out[key] = median_range(ratios, ".1f", "x")
    return out


COLUMNS = [("trace", "trace"), ("memory", "memory"), ("events", "events"),
           ("profkit_s", "profkit analyze, first run s"), ("profkit_cpu_s", "CPU s"), ("rss_mb", "peak RSS MB"),
           ("profkit_load_s", "split: load s"), ("profkit_passes_s", "split: passes s"),
           ("profkit_again_s", "again (cached) s"),
           ("hta_s", "HTA load+breakdown s"), ("hta_cpu_s", "HTA CPU s"), ("hta_breakdown_s", "of which breakdown s"),
           ("hta_rss_mb", "HTA RSS MB"), ("ratio", "HTA / first run"), ("ratio_again", "HTA / again"),
           ("passes", "profkit passes run")]


def _compile_profkit() -> None:
    """Byte-compile profkit's modules first, as pip does when it installs a wheel (and as it
    did for HTA here). An editable install, with PYTHONDONTWRITEBYTECODE set (as on this
    project's machine), would otherwise compile them from source in every run (~0.1-0.2 s)."""
    import compileall

    import profkit
    import profkit.analyses
    import profkit.parsers

    for package in (profkit, profkit.parsers, profkit.analyses):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description="profkit analyze vs HTA load + temporal breakdown")
    parser.add_argument("--no-hta", action="store_true", help="do not run HTA")
    parser.add_argument("--tiles", default="1", help="sizes of the tiled inputs in millions of events, "
                        "comma-separated (default 1; 1,5 adds the 5M tile: HTA needs ~5.5 GB and took 455 s "
                        "there on the project's machine)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per input, each profkit (first run, "
                        "again) then HTA; medians and ranges are printed (default 1)")
    parser.add_argument("--only", default="", help="comma-separated words: only inputs whose label has one "
                        "(e.g. 'tile 5M')")
    parser.add_argument("--rocprof", action="store_true", help="add the 1M-dispatch rocprofv3 JSON "
                        "(bench/rocprof_synthetic.py; profkit only: HTA does not read rocprof)")
    parser.add_argument("--memory", default="", help="comma-separated memory states to run each input in, "
                        "a row each (cold, warm; default: as the machine happens to be)")
    parser.add_argument("--warm-gb", type=float, default=2.0, help="GB touched before each warm run: above "
                        "the larger tool's peak (default 2, for the 1M tile; 6 for 5M)")
    parser.add_argument("--worker", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    try:
        states = tt.memory_states(a.memory)
    except ValueError as exc:
        parser.error(str(exc))
    OUT.mkdir(exist_ok=True)
    _compile_profkit()
    rows = run(not a.no_hta, [int(x) for x in a.tiles.split(",") if x], a.repeat,
               [w.strip() for w in a.only.split(",") if w.strip()], a.rocprof,
               states, a.warm_gb)
    text = tt.table(rows, COLUMNS) + "\n" + (f"\n{tt.memory_costs()}\n" if states else "")
    print(text)
    (OUT / "analyze.md").write_text(text)
    (OUT / "analyze.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
