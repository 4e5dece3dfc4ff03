"""How `profkit analyze` scales with the number of ranks: synthetic multi-rank decode runs
(profkit.synthetic, 12 steps a rank, ~8k events and ~9k graph edges a rank) of 4 to 32
ranks, each analysed in a fresh process with no cache (`profkit --no-cache analyze DIR
--format json`): wall seconds, CPU seconds, peak RSS, and seconds per rank. A rank's
findings are priced by replays of the whole graph (every rank), so this is where work
that grows with ranks times ranks would show.

With `--tile-events N`, each rank is instead the largest shared Kineto trace (V100, NCCL)
tiled to about N events (rank r has N + 10,000 r, so that no two are the same recording),
for jobs whose ranks are large: there the graph of all ranks is large too.

With `--steps N`, synthetic ranks of N steps each (default 12): longer runs hold more
steps, collectives and cross-stream waits per rank. `--ranks 1 --steps 2000` times one
long trace, where work done per step over every event would grow with steps squared.

    python bench/ranks.py [--ranks 4,8,16,32] [--repeat N] [--steps N | --tile-events N]
    python bench/ranks.py --ranks 1 --steps 2000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import tile_trace as tt  # shared by the benchmarks (this directory)
from tile_trace import median_range


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="4,8,16,32", help="rank counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="runs per rank count (median and range printed)")
    parser.add_argument("--steps", type=int, default=12, help="steps of each synthetic rank")
    parser.add_argument("--tile-events", type=int, default=0,
                        help="ranks tiled from a real trace to about this many events each (default: synthetic ranks)")
    args = parser.parse_args()
    counts = [int(n) for n in args.ranks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="profkit-bench-ranks-") as tmp:
        for n in counts:
            run_dir = Path(tmp) / f"ranks{n}"
            if args.tile_events:
                for r in range(n):
                    tt.tile(tt.TILE_SOURCE, args.tile_events + 10_000 * r, run_dir / f"rank{r}.json", rank=(r, n))
            else:
                tt.measure([sys.executable, "-m", "profkit.synthetic", str(run_dir), "--ranks", str(n),
                            "--steps", str(args.steps)],
                           json_output=False)
            argv = [sys.executable, "-c", "import sys; from profkit.cli import main; sys.argv[0] = 'profkit'; main()",
                    "--no-cache", "analyze", str(run_dir), "--format", "json"]
            runs = [tt.measure(argv, timeout=1800, json_output=False) for _ in range(args.repeat)]
            failed = [r["error"] for r in runs if "error" in r]
            if failed:
                sys.exit(f"{n} ranks: {failed[0]}")
            wall = [r["wall_s"] for r in runs]
            rows.append({"ranks": n, "wall": median_range(wall, ".2f", " s"),
                         "cpu": median_range([r["cpu_s"] for r in runs], ".2f", " s"),
                         "per_rank": median_range([w / n for w in wall], ".3f", " s"),
                         "rss": median_range([r["peak_rss_bytes"] / 2**20 for r in runs], ".0f", " MB")})
            print(f"{n} ranks: {rows[-1]['wall']} wall, {rows[-1]['per_rank']} a rank, CPU {rows[-1]['cpu']}, "
                  f"peak RSS {rows[-1]['rss']}", flush=True)
    print()
    print(tt.table(rows, [("ranks", "ranks"), ("wall", "analyze, wall"), ("per_rank", "wall per rank"),
                          ("cpu", "CPU (all threads)"), ("rss", "peak RSS")]))


if __name__ == "__main__":
    main()
