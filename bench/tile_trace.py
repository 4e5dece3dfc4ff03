"""Shared helpers of bench/ingest.py and bench/analyze.py: tiling a real Kineto trace to N
events, and measuring a run in a fresh child process (wall time and the child's peak RSS).

    python bench/tile_trace.py SRC.json.gz N OUT.json      # tile SRC to N events

Tiling repeats the trace's `traceEvents` in time: copy k is shifted by k * (span + gap),
and the ids that join records (correlation, External id, flow ids, Python ids) and the
ProfilerStep numbers are offset per copy so they stay unique. Metadata records (ph M)
appear once. The result is plain JSON, written as it is produced (the copies are never all
in memory at once).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

GAP_US = 1000
_ARG_IDS = ("correlation", "External id", "Python id", "Python parent id", "Ev Idx", "Record function id")
_STEP = re.compile(r"^ProfilerStep#(\d+)$")

# Inputs shared by bench/ingest.py and bench/analyze.py: the largest shared Kineto traces,
# and the one tiled to 1M and 5M events.
OUT = Path(__file__).resolve().parent / "out"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces" / "kineto" / "cuda"
TRACES = [
    SHARED / "v100_nccl_rank1_of2.json.gz",
    SHARED / "a100_80gb_rank0_of16.json.gz",
    SHARED / "regression_pair" / "control_a100_rank3_of8.json.gz",
]
TILE_SOURCE = SHARED / "v100_nccl_rank1_of2.json.gz"


def read_trace(path: Path) -> dict:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return json.loads(data, strict=False)  # real traces carry control characters in strings


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def tile(src_trace_json_gz, n_events: int, out_path, rank: tuple[int, int] | None = None) -> dict:
    """Write a trace of exactly `n_events` records tiled from `src`; returns a summary.
    `rank`: (rank, world size) written into its distributedInfo, for a job of many ranks."""
    doc = read_trace(Path(src_trace_json_gz))
    if rank is not None:
        doc["distributedInfo"] = {**doc.get("distributedInfo", {}), "rank": rank[0], "world_size": rank[1]}
    events = doc.pop("traceEvents")
    meta = [e for e in events if e.get("ph") == "M"]
    body = [e for e in events if e.get("ph") != "M"]
    starts = [_num(e.get("ts")) for e in body]
    ends = [s + (_num(e.get("dur")) or 0) for s, e in zip(starts, body) if s is not None]
    lo, hi = min(s for s in starts if s is not None), max(ends)
    shift = int(hi - lo) + GAP_US + 1
    # Offsets: one more than the largest value each id takes, so copies never collide.
    top_id = max((_num(e.get("id")) or 0 for e in body), default=0) + 1
    arg_max = {k: 0 for k in _ARG_IDS}
    step_max = 0
    for e in body:
        args = e.get("args")
        if isinstance(args, dict):
            for k in _ARG_IDS:
                v = _num(args.get(k))
                if v is not None and v > arg_max[k]:
                    arg_max[k] = v
        m = _STEP.match(str(e.get("name", "")))
        if m:
            step_max = max(step_max, int(m.group(1)))
    arg_off = {k: int(v) + 1 for k, v in arg_max.items()}

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out_path, "wb") as out:
        head = msgspec.json.encode(doc)
        out.write(head[:-1] + (b"," if len(doc) else b"") + b'"traceEvents":[')
        first = True

        def emit(record):
            nonlocal first, written
            out.write((b"" if first else b",\n") + msgspec.json.encode(record))
            first = False
            written += 1

        for e in meta[:n_events]:
            emit(e)
        k = 0
        while written < n_events:
            for e in body:
                if written >= n_events:
                    break
                emit(_shifted(e, k, shift, top_id, arg_off, step_max + 1) if k else e)
            k += 1
        out.write(b"]}")
    return {"events": written, "copies": k, "source_events": len(events), "bytes": out_path.stat().st_size}


def _shifted(e: dict, k: int, shift: int, top_id: int, arg_off: dict, step_off: int) -> dict:
    c = dict(e)
    ts = _num(c.get("ts"))
    if ts is not None:
        c["ts"] = ts + k * shift
    if _num(c.get("id")) is not None:
        c["id"] = c["id"] + k * top_id
    m = _STEP.match(str(c.get("name", "")))
    if m:
        c["name"] = f"ProfilerStep#{int(m.group(1)) + k * step_off}"
    args = c.get("args")
    if isinstance(args, dict):
        new = None
        for key, off in arg_off.items():
            v = _num(args.get(key))
            if v is not None and v >= 0:
                new = new or dict(args)
                new[key] = v + k * off
        if new is not None:
            c["args"] = new
    return c


# --- measuring in a fresh child ------------------------------------------------------------

def own_peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM of its own address space. (ru_maxrss of a
    child also counts the parent's pages it held between fork and exec.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Memory states a measured child can start in. On a VM whose host takes back the memory the
# guest frees (virtio-balloon free page reporting, as on this project's machine), the first
# touch of that memory costs the host's fault on top of the guest's: 3-6 s a GB measured
# here, against ~0.2 s a GB for memory the guest freed a moment ago (and on bare metal).
# "cold": the child starts after COLD_PAUSE_S idle, so the host has taken back what earlier
# runs freed (its memory costs what it would after the machine sat idle); "warm": a
# throwaway child touches `warm_gb` GB and exits just before, so the measured one reuses
# memory the host still backs (what the software costs, as on a machine without this).
MEMORY_STATES = ("cold", "warm")
COLD_PAUSE_S = 5.0
_TOUCH = "import sys, numpy; numpy.ones(int(float(sys.argv[1]) * 2**30) // 8)"


def memory_states(text: str) -> list[str]:
    """The comma-separated states of a `--memory` option; ValueError for an unknown one."""
    states = [m.strip() for m in text.split(",") if m.strip()]
    if not set(states) <= set(MEMORY_STATES):
        raise ValueError(f"--memory: states are {', '.join(MEMORY_STATES)}")
    return states


def touch_memory(gigabytes: float) -> float:
    """Touch `gigabytes` of memory in a throwaway child, freed as it exits; seconds it took
    (python start-up, ~0.1 s, included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _TOUCH, str(gigabytes)], check=True)
    return time.perf_counter() - t0


def prepare_memory(state: str, warm_gb: float) -> dict:
    """Put memory in `state` (MEMORY_STATES) for the next child; what it cost, to print."""
    if state == "cold":
        time.sleep(COLD_PAUSE_S)
        return {"memory": "cold"}
    seconds = touch_memory(warm_gb)
    return {"memory": "warm", "warm_gb": warm_gb, "warm_s_per_gb": round(seconds / warm_gb, 2)}


def memory_costs(gigabytes: float = 1.0) -> str:
    """What first touching memory costs on this machine, cold and warm: a line to print
    beside the figures, which depend on it."""
    start_up = touch_memory(0)  # python and numpy, to take out
    costs = {}
    for state in MEMORY_STATES:
        prepare_memory(state, gigabytes + 0.5)  # the child's own start-up memory too
        costs[state] = max(touch_memory(gigabytes) - start_up, 0.0) / gigabytes
    return ("this machine, first touch of memory: "
            + ", ".join(f"{costs[state]:.2f} s/GB {state}" for state in MEMORY_STATES)
            + " (tile_trace.MEMORY_STATES)")


def measure(argv: list[str], timeout: float | None = None, json_output: bool = True,
            env: dict | None = None, memory: tuple[str, float] | None = None) -> dict:
    """Run `argv` (a Python worker printing one JSON line) in a fresh process: its JSON,
    plus wall seconds and the child's peak RSS (`peak_rss_bytes`: the VmHWM the worker
    reports, else wait4's ru_maxrss). `json_output=False`: any command, judged only by its
    exit status. `env`: the child's environment (default: this one's). `memory`: (state,
    warm GB) to start the child in (see MEMORY_STATES); default: as the machine is."""
    prepared = prepare_memory(*memory) if memory else {}
    # Output goes to files: a pipe nobody reads until the exit would block a chatty child.
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        return {**_measure(argv, timeout, json_output, env, out_file, err_file), **prepared}


def _measure(argv, timeout, json_output, env, out_file, err_file) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out_file, stderr=err_file, env=env)
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline and time.perf_counter() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            return {"error": f"timeout after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out_file.seek(0)
    err_file.seek(0)
    out, err = out_file.read().decode(), err_file.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    # CPU seconds of the child: less sensitive than wall time to other load on the machine.
    result = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or (json_output and not lines):
        result["error"] = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]
        return result
    if not json_output:
        result["output_bytes"] = len(out)
        return result
    result.update(json.loads(lines[-1]))
    result["ru_maxrss_bytes"] = result["peak_rss_bytes"]
    result["peak_rss_bytes"] = result.pop("vmhwm_bytes", result["peak_rss_bytes"])
    return result


def uncompressed_bytes(path: Path) -> int:
    if path.read_bytes()[:2] != b"\x1f\x8b":
        return path.stat().st_size
    total = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            total += len(chunk)
    return total


def count_events(path: Path) -> int:
    return len(read_trace(path)["traceEvents"])


def hta_dir(path: Path, root: Path) -> Path:
    """A directory holding only `path` (HTA reads every trace in a directory)."""
    d = root / f"hta_{path.name.replace('.', '_')}"
    d.mkdir(parents=True, exist_ok=True)
    link = d / path.name
    if not link.exists():
        link.symlink_to(path.resolve())
    return d


def median_range(values: list[float], fmt: str, unit: str = "") -> str:
    """`median (lowest-highest)` of several runs, or the one value; `unit` after each."""
    values = sorted(values)
    median = format(statistics.median(values), fmt) + unit
    return median if len(values) == 1 else f"{median} ({values[0]:{fmt}}-{values[-1]:{fmt}}{unit})"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of `rows` (dicts) with (key, heading) columns."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("n_events", type=int)
    parser.add_argument("out")
    a = parser.parse_args()
    print(json.dumps(tile(a.src, a.n_events, a.out)))
    sys.exit(0)
