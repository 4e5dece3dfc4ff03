"""Ingest speed of the Nsight parser on a synthetic export (1M kernels, 2M runtime rows
by default), built once per seed by bench/nsys_synthetic.py and cached in bench/out/.

    python bench/ingest_nsys.py [--kernels N] [--runtime N] [--seed S]
                                [--reader auto|adbc|sqlite3] [--store file|memory]

Prints rows/s (source rows read per second of total ingest, derive included), peak RSS
and the time per phase: the parser's own reading, then profkit's derive steps.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nsys_synthetic  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=1_000_000)
    ap.add_argument("--runtime", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-limit", default="",
                    help="DuckDB memory_limit for the store, e.g. 1GB (none by default: a limit "
                         "slowed the ingest and did not lower peak RSS in our runs)")
    ap.add_argument("--reader", choices=("auto", "adbc", "sqlite3", "duckdb"), default="auto")
    ap.add_argument("--store", choices=("file", "memory"), default="file",
                    help="file: a DuckDB file, as `profkit` builds its cache (default); memory: "
                         "an in-memory store, to see the parser without the cost of writing to disk")
    args = ap.parse_args()
    if args.reader != "auto":
        os.environ["PROFKIT_NSYS_READER"] = args.reader

    db = HERE / "out" / f"nsys_synth_k{args.kernels}_r{args.runtime}_s{args.seed}.sqlite"
    if not db.exists():
        t = time.perf_counter()
        nsys_synthetic.build(db, args.kernels, args.runtime, args.seed)
        print(f"built {db.name} in {time.perf_counter() - t:.1f}s")

    from profkit import derive
    from profkit.ingest import ingest
    from profkit.store import Store

    phases: dict[str, float] = {}
    rss_before: dict[str, float] = {}
    for name in ("categorise", "link_launches", "add_collectives", "nest", "find_steps", "assign_steps"):
        fn = getattr(derive, name)

        def timed(*a, _fn=fn, _name=name, **k):
            rss_before.setdefault(_name, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                phases[f"derive.{_name}"] = phases.get(f"derive.{_name}", 0.0) + time.perf_counter() - t0
        setattr(derive, name, timed)

    tmpdir = tempfile.mkdtemp(prefix="profkit-bench-")
    store = Store.open(Path(tmpdir) / "bench.duckdb" if args.store == "file" else None)
    if args.memory_limit:
        store.con.execute(f"SET memory_limit = '{args.memory_limit}'")
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    ingest([db], store)
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rows = store.scalar("SELECT sum(source_records) FROM traces")
    events = store.scalar("SELECT count(*) FROM events")
    parse_s = total - sum(phases.values())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reader = store.scalar("SELECT json_extract_string(metadata, '$.reader') FROM traces")
    print(f"input: {db.name} ({db.stat().st_size / 1e6:.0f} MB), reader: {reader}, store: {args.store}")
    print(f"rows read: {rows:,}  events stored: {events:,}")
    print(f"total {total:.2f}s  ->  {rows / total / 1e6:.2f}M rows/s (parse only: {rows / parse_s / 1e6:.2f}M rows/s)")
    print(f"peak RSS: {rss_mb:.0f} MB   CPU time: {cpu:.2f}s (wall {total:.2f}s; 2 cores, shared)")
    print(f"  parse (read + transform + insert): {parse_s:.2f}s, peak RSS by its end "
          f"{rss_before.get('categorise', rss_mb):.0f} MB")
    for name, seconds in phases.items():
        print(f"  {name}: {seconds:.2f}s (peak RSS before it: {rss_before[name.split('.')[1]]:.0f} MB)")
    store.close()
    shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
