"""Measure the Kineto ingest in a fresh child process: parse only (derive switched off) or
the full `profkit.ingest.ingest`, with wall and CPU seconds and the child's peak RSS.

    python bench/kineto_profile.py TRACE [TRACE ...] [--mode parse|ingest|both] [--repeat N]
    python bench/kineto_profile.py TRACE --profile parse|ingest   # cProfile, top 40 by tottime

CPU time (user + sys of the child, from wait4) is the number to compare on a machine
shared with other jobs; wall time is given too. RSS / JSON is the peak RSS over the
uncompressed JSON size.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import json, sys, time
from pathlib import Path
# As the `profkit` command does: pyarrow would import pandas (installed here for HTA) on
# its first array, 0.15-0.5 s that no profkit command pays.
from profkit import no_pandas; no_pandas.block()
from profkit.store import Store
from profkit.ingest import ingest
from profkit import derive
mode, path = sys.argv[1], Path(sys.argv[2])
store = Store.open(None)
t = time.perf_counter()
if mode == "parse":
    derive.derive_trace = lambda st, tid: None  # the parse alone, as ingest runs it
ingest([path], store)
wall = time.perf_counter() - t
records, events = store.con.execute("SELECT source_records, event_count FROM traces").fetchone()
hwm = 0
with open("/proc/self/status") as fh:
    for line in fh:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
print(json.dumps({"records": records, "events": events, "inner_wall_s": wall, "vmhwm": hwm}))
"""


def json_bytes(path: Path) -> int:
    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return path.stat().st_size
    total = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            total += len(chunk)
    return total


def run_measured(mode: str, path: Path) -> dict:
    """Like run(), but with the child's rusage (CPU seconds, ru_maxrss)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, mode, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": (err.decode().strip().splitlines() or ["?"])[-1]}
    res = json.loads(out.decode().strip().splitlines()[-1])
    res.update(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
               peak_rss=max(usage.ru_maxrss * 1024, res.pop("vmhwm")))
    return res


def profile(mode: str, path: Path) -> None:
    import cProfile
    import pstats

    from profkit import derive
    from profkit.ingest import ingest
    from profkit.store import Store

    store = Store.open(None)
    prof = cProfile.Profile()
    if mode == "parse":
        derive.derive_trace = lambda st, tid: None  # the parse alone, as ingest runs it
    prof.runcall(ingest, [path], store)
    pstats.Stats(prof).sort_stats("tottime").print_stats(40)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--mode", choices=("parse", "ingest", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", choices=("parse", "ingest"))
    a = ap.parse_args()
    if a.profile:
        profile(a.profile, a.traces[0])
        return
    modes = ("parse", "ingest") if a.mode == "both" else (a.mode,)
    print("| trace | mode | records | wall s | CPU s | rec/s wall | rec/s CPU | peak RSS MB | RSS/JSON |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in a.traces:
        size = json_bytes(path)
        for mode in modes:
            for _ in range(a.repeat):
                r = run_measured(mode, path)
                if "error" in r:
                    print(f"| {path.name} | {mode} | error: {r['error']} |")
                    continue
                n = r["records"]
                print(f"| {path.name} | {mode} | {n} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                      f"{n / r['wall_s'] / 1e6:.2f}M | {n / r['cpu_s'] / 1e6:.2f}M | "
                      f"{r['peak_rss'] / 2**20:.0f} | {r['peak_rss'] / size:.2f} |", flush=True)


if __name__ == "__main__":
    main()
