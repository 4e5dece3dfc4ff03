"""Ingest benchmark (issue 2): profkit's Kineto ingest against HTA's TraceAnalysis load.

    python bench/ingest.py [--quick] [--no-hta]

For the largest shared Kineto traces and tiles of 1M and 5M events (of
v100_nccl_rank1_of2), each measurement runs in a fresh child process: profkit
`load(path, cache=False)` (parse + derive into an in-memory store) and HTA
`TraceAnalysis(trace_dir=...)`. Prints a Markdown table and writes it, with the raw
numbers as JSON, to bench/out/. Targets: >= 10x faster than HTA, >= 1M events/s, peak RSS
<= 2x the uncompressed JSON, linear from 1M to 5M events.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tile_trace as tt  # noqa: E402

from tile_trace import OUT, TILE_SOURCE, TRACES  # noqa: E402  (shared by the benchmarks)
HTA_TIME_LIMIT_S = 180.0
HTA_RSS_LIMIT = 16 << 30  # the machine has 24 GB


def worker(which: str, path: str) -> None:
    """Child process: one measurement, one JSON line on stdout."""
    if which == "profkit":
        from profkit import no_pandas

        # As the `profkit` command does: pyarrow would import pandas (installed here for
        # HTA) on its first array, 0.15-0.5 s that no profkit command pays.
        no_pandas.block()
        import profkit

        t0 = time.perf_counter()
        store = profkit.load(path, cache=False)
        seconds = time.perf_counter() - t0
        events = store.scalar("SELECT sum(source_records) FROM traces")
        print(json.dumps({"seconds": seconds, "stored_events": store.scalar("SELECT count(*) FROM events"),
                          "source_records": events, "vmhwm_bytes": tt.own_peak_rss()}))
    else:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        from hta.trace_analysis import TraceAnalysis

        t0 = time.perf_counter()
        TraceAnalysis(trace_dir=path)
        print(json.dumps({"seconds": time.perf_counter() - t0, "vmhwm_bytes": tt.own_peak_rss()}))


def child(which: str, path: Path, timeout: float | None = None) -> dict:
    return tt.measure([sys.executable, __file__, "--worker", which, str(path)], timeout)


def inputs(quick: bool) -> list[tuple[str, Path, int]]:
    """(label, path, records in traceEvents) of every input, tiling where needed."""
    out = [(p.name.split(".json")[0], p, tt.count_events(p)) for p in TRACES]
    for n in ([1_000_000] if quick else [1_000_000, 5_000_000]):
        target = OUT / f"tile_v100_{n // 1_000_000}M.json"
        if not target.exists():
            print(f"tiling {TILE_SOURCE.name} to {n:,} events -> {target}", file=sys.stderr)
            tt.tile(TILE_SOURCE, n, target)
        out.append((f"v100 tile {n // 1_000_000}M", target, n))
    return out


def run(quick: bool, with_hta: bool) -> list[dict]:
    rows = []
    hta_per_event = None  # seconds and bytes per event from the last HTA run, to predict the next
    for label, path, events in inputs(quick):
        raw = tt.uncompressed_bytes(path)
        print(f"{label}: {events:,} events, {raw / 1e6:.0f} MB JSON", file=sys.stderr)
        ours = child("profkit", path)
        row = {"trace": label, "events": events, "json_mb": round(raw / 1e6, 1), "profkit": ours}
        if "error" not in ours:
            row.update(profkit_s=round(ours["seconds"], 2), profkit_cpu_s=round(ours["cpu_s"], 1),
                       events_per_s=f"{events / ours['seconds'] / 1e6:.2f}M",
                       rss_mb=round(ours["peak_rss_bytes"] / 1e6), rss_ratio=round(ours["peak_rss_bytes"] / raw, 2))
        else:
            row["profkit_s"] = "error: " + ours["error"]
        if with_hta:
            predicted = None if hta_per_event is None else (hta_per_event[0] * events, hta_per_event[1] * events)
            if predicted and (predicted[0] > HTA_TIME_LIMIT_S or predicted[1] > HTA_RSS_LIMIT):
                row["hta_s"] = f"skipped (predicted {predicted[0]:.0f} s, {predicted[1] / 1e9:.1f} GB)"
            else:
                theirs = child("hta", tt.hta_dir(path, OUT / "hta_dirs"), timeout=2 * HTA_TIME_LIMIT_S)
                row["hta"] = theirs
                if "error" not in theirs:
                    hta_per_event = (theirs["seconds"] / events, theirs["peak_rss_bytes"] / events)
                    row.update(hta_s=round(theirs["seconds"], 2), hta_cpu_s=round(theirs["cpu_s"], 1),
                               hta_rss_mb=round(theirs["peak_rss_bytes"] / 1e6))
                    if "seconds" in ours:
                        row["ratio"] = f"{theirs['seconds'] / ours['seconds']:.1f}x"
                else:
                    row["hta_s"] = "error: " + theirs["error"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("profkit", "hta")}), file=sys.stderr)
    return rows


COLUMNS = [("trace", "trace"), ("events", "events"), ("json_mb", "JSON MB"),
           ("profkit_s", "profkit s"), ("profkit_cpu_s", "profkit CPU s"),
           ("events_per_s", "events/s"), ("rss_mb", "peak RSS MB"), ("rss_ratio", "RSS / JSON"),
           ("hta_s", "HTA load s"), ("hta_cpu_s", "HTA CPU s"), ("hta_rss_mb", "HTA RSS MB"),
           ("ratio", "HTA / profkit")]


def scaling(rows: list[dict]) -> str:
    by = {r["trace"]: r for r in rows}
    one, five = by.get("v100 tile 1M"), by.get("v100 tile 5M")
    if not (one and five and "seconds" in one["profkit"] and "seconds" in five["profkit"]):
        return "1M -> 5M scaling: not measured"
    t = five["profkit"]["seconds"] / one["profkit"]["seconds"]
    m = five["profkit"]["peak_rss_bytes"] / one["profkit"]["peak_rss_bytes"]
    return f"1M -> 5M scaling (5x the events): time x{t:.2f}, peak RSS x{m:.2f} (linear = x5.00)"


def main() -> None:
    parser = argparse.ArgumentParser(description="profkit ingest vs HTA load")
    parser.add_argument("--quick", action="store_true", help="skip the 5M-event tile")
    parser.add_argument("--no-hta", action="store_true", help="do not run HTA")
    parser.add_argument("--worker", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    OUT.mkdir(exist_ok=True)
    rows = run(a.quick, not a.no_hta)
    text = tt.table(rows, COLUMNS) + "\n\n" + scaling(rows) + "\n"
    print(text)
    (OUT / "ingest.md").write_text(text)
    (OUT / "ingest.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
