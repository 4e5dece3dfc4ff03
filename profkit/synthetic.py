"""SYNTHETIC multi-rank GPU LLM-decode traces in PyTorch-profiler (Kineto) format.

No GPU runs: a small discrete-event simulation of a tensor-parallel decode loop on
simulated H100s writes, per rank, the JSON a real `torch.profiler` CUDA trace has (same
top-level keys, categories, args, flows), with four bottlenecks injected at known sizes.
A manifest next to the traces says what was injected and how large it came out, so
analyses can be checked against the truth.

The simulation, per rank, on one clock shared by all ranks:
- the host thread runs ops in program order; each costs measured-looking CPU time
  (operator dispatch, `cudaLaunchKernel`, Python between ops);
- a kernel starts at max(launch call start + launch latency, end of the previous work
  on its stream, the events its stream waits for);
- a collective's kernel starts on each rank when that rank gets to it (its arrival)
  and ends on every rank at max(arrivals) + its transfer time: early ranks wait inside it;
- `cudaStreamSynchronize` blocks the host until the stream drains.

Bottlenecks (each with a knob to switch it off and a size):
- `host_gaps`: Python overhead before the first operators of layer 0, so the compute
  stream idles waiting for their launches;
- `sync`: `aten::item` -> `cudaStreamSynchronize` at the end of every step, so the
  next step's host work (scheduling, `step_prologue_ns`) cannot overlap the GPU;
- `exposed_allreduce`: one all-reduce per step that the compute stream waits on at once;
- `straggler`: one rank's compute kernels are `straggler_slowdown` times longer, so the
  others wait inside every collective.

    python -m profkit.synthetic OUTDIR [--ranks N --steps N --seed N] [--no-sync ...]
"""
from __future__ import annotations

import argparse
import bisect
import gzip
import hashlib
import io
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .synthetic_sim import (BASE_TIME_NS, COMPUTE_STREAM, DEVICE_NAME, NCCL_STREAM, NUM_SMS, TRACE_START_NS,
                            Bottlenecks, Model, _Rank, simulate)

__all__ = ["Bottlenecks", "Model", "generate_decode_trace", "simulate", "build_manifest", "measured_sizes",
           "step_time_ns", "main"]

GENERATOR = "profkit.synthetic"
FILE_PATTERN = "synthetic_llm_decode_rank{rank}.json.gz"
MANIFEST = "manifest.json"


# --- files -------------------------------------------------------------------------

def _metadata_events(r: _Rank, world: int) -> list[dict]:
    def m(name: str, pid: int, tid: int, key: str, value) -> dict:
        return {"name": name, "ph": "M", "ts": TRACE_START_NS - 2_000_000, "pid": pid, "tid": tid, "args": {key: value}}

    out = []
    for pid, label, order in [(r.pid, "CPU", r.pid)] + [(d, f"GPU {d}", 16777216 + d) for d in range(world)]:
        out += [m("process_name", pid, 0, "name", "python3.12"), m("process_labels", pid, 0, "labels", label),
                m("process_sort_index", pid, 0, "sort_index", order)]
    for pid, tid, name in [(r.rank, COMPUTE_STREAM, f"stream {COMPUTE_STREAM} "), (r.rank, NCCL_STREAM, f"stream {NCCL_STREAM} "),
                           (r.pid, r.pid, f"thread {r.pid} (python3.12)")]:
        out += [m("thread_name", pid, tid, "name", name), m("thread_sort_index", pid, tid, "sort_index", tid)]
    return out


def _trace_document(r: _Rank, world: int, seed: int) -> dict:
    start = TRACE_START_NS - 2_500_000
    end = max(max(e["ts"] + e.get("dur", 0) for e in r.events), r.t) + 1_000_000
    events = _metadata_events(r, world) + r.events + [
        {"ph": "X", "cat": "Trace", "ts": start, "dur": end - start, "pid": "Spans", "tid": "PyTorch Profiler",
         "name": "PyTorch Profiler (0)", "args": {"Op count": 0}},
        {"name": "process_sort_index", "ph": "M", "ts": start, "pid": "Spans", "tid": 0, "args": {"sort_index": 536870912}},
        {"name": "Iteration Start: PyTorch Profiler", "ph": "i", "s": "g", "pid": "Traces",
         "tid": "Trace PyTorch Profiler", "ts": start},
        {"name": "Record Window End", "ph": "i", "s": "g", "pid": "", "tid": "", "ts": end + 5_000}]
    events = [_in_us(ev) for ev in events]  # simulated in integer ns; Kineto writes microseconds
    device = {"name": DEVICE_NAME, "totalGlobalMem": 85_029_158_912, "computeMajor": 9, "computeMinor": 0,
              "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048, "regsPerBlock": 65536,
              "warpSize": 32, "sharedMemPerBlock": 49152, "numSms": NUM_SMS, "regsPerMultiprocessor": 65536,
              "sharedMemPerBlockOptin": 232448, "sharedMemPerMultiprocessor": 233472}
    ranks = list(range(world))
    return {
        "schemaVersion": 1,
        "deviceProperties": [{"id": d, **device} for d in ranks],
        "distributedInfo": {"backend": "nccl", "rank": r.rank, "world_size": world, "pg_count": 2, "pg_config": [
            {"pg_name": "0", "pg_desc": "default_pg", "backend_config": "cuda:nccl", "pg_size": world, "ranks": ranks},
            {"pg_name": "1", "pg_desc": "tp", "backend_config": "cuda:nccl", "pg_size": world, "ranks": ranks}],
            "nccl_version": "2.21.5"},
        "cupti_version": 24, "cuda_runtime_version": 12040, "cuda_driver_version": 12080,
        "record_shapes": 1, "with_stack": 0,
        "synthetic": f"SYNTHETIC trace from {GENERATOR} (seed {seed}); no GPU ran",
        "trace_id": hashlib.blake2b(f"{seed}:{r.rank}".encode(), digest_size=16).hexdigest().upper(),
        "displayTimeUnit": "ms",
        "baseTimeNanoseconds": BASE_TIME_NS,
        "traceEvents": events,
        "traceName": f"/tmp/synthetic_llm_decode/{FILE_PATTERN.format(rank=r.rank)[:-3]}",
    }


def _in_us(ev: dict) -> dict:
    """ns -> us; ns / 1000 is correctly rounded, so its repr is the exact 3-decimal value."""
    return {**ev, "ts": ev["ts"] / 1000, **({"dur": ev["dur"] / 1000} if "dur" in ev else {})}


def _gzip_bytes(doc: dict) -> bytes:
    """Same input -> same bytes: no file name or time in the gzip header."""
    raw = json.dumps(doc, separators=(",", ":")).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


# --- what came out ------------------------------------------------------------------

def step_time_ns(sims: list[_Rank]) -> int:
    """Mean time between the starts of consecutive steps' first device work, over ranks."""
    periods = [s.stats[k + 1]["first_device_start"] - s.stats[k]["first_device_start"]
               for s in sims for k in range(len(s.stats) - 1)]
    return round(sum(periods) / len(periods)) if periods else 0


def _mean(values: list[int]) -> int:
    return round(sum(values) / len(values)) if values else 0


class _Busy:
    """A rank's compute-stream activity, sorted: the intervals the time of [lo, hi) it
    covers is summed over (by bisection where they do not overlap, as on one stream)."""

    def __init__(self, sim: _Rank):
        self.spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in sim.events
                            if e.get("tid") == COMPUTE_STREAM and e.get("cat") in ("kernel", "gpu_memcpy"))
        self.starts = [s for s, _ in self.spans]
        self.ends = [e for _, e in self.spans]
        self.disjoint = all(e <= s for e, s in zip(self.ends, self.starts[1:]))

    def uncovered(self, lo: int, hi: int) -> int:
        """Length of [lo, hi) not covered by the intervals."""
        if self.disjoint:  # ends sorted too: the overlapping ones are one run
            spans = self.spans[bisect.bisect_right(self.ends, lo):bisect.bisect_left(self.starts, hi)]
        else:
            spans = self.spans
        covered = sum(max(0, min(hi, e) - max(lo, s)) for s, e in spans if s < hi and e > lo)
        return max(0, hi - lo - covered)


def exposed_wait_ns(sim: _Rank, step: int, busy: _Busy | None = None) -> int:
    """Time this rank waited inside collectives for the last rank while its compute
    stream had nothing to run (the part of the skew that costs step time). `busy`: the
    rank's `_Busy`, built once for all its steps."""
    busy = busy or _Busy(sim)
    return sum(busy.uncovered(lo, hi) for lo, hi in sim.stats[step].get("waits", []))


def measured_sizes(sims: list[_Rank], b: Bottlenecks) -> dict[str, int]:
    """The size of each bottleneck as the simulation produced it (mean per step)."""
    steps = sorted(sims[0].stats)
    healthy = [s for s in sims if not (b.straggler and s.rank == b.straggler_rank)] or sims
    bubbles = [s.stats[k]["first_device_start"] - s.stats[k - 1]["last_device_end"] for s in sims for k in steps[1:]]
    last = [s for s in sims if b.straggler and s.rank == b.straggler_rank] or sims
    return {
        "host_gaps": _mean([s.stats[k].get("host_gap_idle_ns", 0) for s in sims for k in steps]),
        "sync": _mean(bubbles) if b.sync else 0,
        "sync_host_wait": _mean([s.stats[k].get("sync_wait_ns", 0) for s in sims for k in steps]),
        "exposed_allreduce": _mean([s.stats[k].get("exposed_allreduce_transfer_ns", 0) for s in last for k in steps]),
        "straggler": _mean([exposed_wait_ns(s, k, busy) for s in healthy for busy in [_Busy(s)] for k in steps])
        if b.straggler else 0,
        "straggler_total_wait": _mean([s.stats[k].get("collective_wait_ns", 0) for s in healthy for k in steps]),
    }


_PARAM_PREFIX = {"host_gaps": "host_gap", "sync": ("sync", "step_prologue"),
                 "exposed_allreduce": "exposed_allreduce", "straggler": "straggler"}
_DESCRIPTIONS = {
    "host_gaps": ("idle.host_bound", COMPUTE_STREAM,
                  "Python overhead of host_gap_ns before each of the first host_gap_ops kernel-launching "
                  "operators of layer 0, so the compute stream idles waiting for launches",
                  "sum per step of compute-stream idle before a kernel whose cudaLaunchKernel began after the "
                  "previous stream-7 device op ended, over the gap-preceded launches; mean over ranks and steps"),
    "sync": ("host.sync_in_steady_state", COMPUTE_STREAM,
             "aten::item -> aten::_local_scalar_dense -> Memcpy DtoH + cudaStreamSynchronize at the end of each "
             "step: the next step's host work (step_prologue_ns of scheduling) starts only after the GPU drained",
             "GPU bubble per step: first device op of step k starts this long after the last device op of "
             "step k-1 ended (steps 1..N-1); host-side wait in cudaStreamSynchronize is sync_host_wait_ns"),
    "exposed_allreduce": ("comm.exposed", NCCL_STREAM,
                          "one fp32 all-reduce of the logits after lm_head; the compute stream waits on it at once "
                          "(cudaStreamWaitEvent), so nothing overlaps it",
                          "its kernel time not overlapped by compute kernels, on the last-arriving rank (on the "
                          "other ranks it is longer by their wait for that rank, counted under the straggler)"),
    "straggler": ("comm.rank_skew", NCCL_STREAM,
                  "that rank's compute kernels take straggler_slowdown times longer; collectives end at the "
                  "last arrival plus the transfer time, so the other ranks wait inside their NCCL kernels",
                  "per step, over collectives, the part of [own arrival, last rank's arrival] (the wait inside "
                  "the NCCL kernel) not overlapped by compute-stream device ops; mean over the other ranks and "
                  "steps (the whole wait, overlapped or not, is wait_inside_collectives_ns_per_step)"),
}


def generate_decode_trace(outdir: str | Path, ranks: int = 4, steps: int = 12, seed: int = 0,
                          bottlenecks: Bottlenecks = Bottlenecks(), model: Model = Model()) -> dict:
    """Write one gzipped Kineto trace per rank and `manifest.json` into `outdir`.

    Returns the manifest. The same arguments give byte-identical files.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    sims = simulate(ranks, steps, seed, bottlenecks, model)
    files = {}
    for sim in sims:
        name = FILE_PATTERN.format(rank=sim.rank)
        data = _gzip_bytes(_trace_document(sim, ranks, seed))
        (outdir / name).write_bytes(data)
        files[name] = len(data)
    manifest = build_manifest(sims, ranks, steps, seed, bottlenecks, model)
    manifest["files"] = files
    (outdir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_manifest(sims, ranks: int, steps: int, seed: int, b: Bottlenecks, model: Model) -> dict:
    sizes = measured_sizes(sims, b)
    baseline = step_time_ns(sims)
    entries = []
    everyone = list(range(ranks))
    for key, (rule, stream, how, measure) in _DESCRIPTIONS.items():
        if not getattr(b, key):
            continue
        scope = {"ranks": [b.straggler_rank] if key == "straggler" else everyone, "stream": stream,
                 "steps": list(range(1 if key == "sync" else 0, steps))}
        if key == "straggler":
            scope["waiting_ranks"] = [r for r in everyone if r != b.straggler_rank]
        without = step_time_ns(simulate(ranks, steps, seed, replace(b, **{key: False}), model))
        entry = {"id": rule, "bottleneck": key, "scope": scope, "size_ns_per_step": sizes[key],
                 "measure": measure, "injected": how,
                 "params": {k: v for k, v in asdict(b).items() if k.startswith(_PARAM_PREFIX[key])},
                 "step_time_without_ns": without, "step_time_saving_ns": baseline - without}
        if key == "sync":
            entry["sync_host_wait_ns_per_step"] = sizes["sync_host_wait"]
        if key == "straggler":
            entry["rank"] = b.straggler_rank
            entry["wait_inside_collectives_ns_per_step"] = sizes["straggler_total_wait"]
        entries.append(entry)
    entries.sort(key=lambda e: -e["size_ns_per_step"])
    for rank_, entry in enumerate(entries, 1):
        entry["size_rank"] = rank_
    return {
        "synthetic": True,
        "generator": GENERATOR,
        "command": f"python -m {GENERATOR} OUTDIR --ranks {ranks} --steps {steps} --seed {seed}"
                   + "".join(f" --no-{k.replace('_', '-')}" for k in _DESCRIPTIONS if not getattr(b, k)),
        "ranks": ranks, "steps": steps, "seed": seed,
        "hardware": f"simulated {ranks}x {DEVICE_NAME} (no GPU ran)",
        "model": asdict(model),
        "streams": {"compute": COMPUTE_STREAM, "nccl": NCCL_STREAM},
        "step_time_ns": baseline,
        "step_time_definition": "mean time between the first device op of consecutive steps, over ranks",
        "bottlenecks": entries,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {GENERATOR}", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    for key in _DESCRIPTIONS:
        parser.add_argument(f"--no-{key.replace('_', '-')}", dest=key, action="store_false",
                            help=f"do not inject the {key.replace('_', ' ')} bottleneck")
    args = parser.parse_args(argv)
    b = Bottlenecks(**{k: getattr(args, k) for k in _DESCRIPTIONS})
    manifest = generate_decode_trace(args.outdir, args.ranks, args.steps, args.seed, b)
    for e in manifest["bottlenecks"]:
        print(f"{e['size_rank']}. {e['id']:28} {e['size_ns_per_step'] / 1000:8.1f} us/step "
              f"(step time -{e['step_time_saving_ns'] / 1000:.1f} us without it)")
    print(f"step time {manifest['step_time_ns'] / 1000:.1f} us; wrote {len(manifest['files'])} traces to {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
