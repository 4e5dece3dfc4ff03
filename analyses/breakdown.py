"""Where device time goes: idle, compute, communication, memory, and their overlaps.

Two views of the same trace, side by side (docs/analysis/breakdown.md, docs/hta-differences.md):

- The top level of the section reproduces Holistic Trace Analysis's
  `get_temporal_breakdown` (HTA / `traceinsight` 0.6.1) so the numbers agree with HTA within
  0.1 percentage points: per rank (every device of the trace merged), over HTA's window
  (the last ProfilerStep's kernels left out when there are two or more steps), kernels
  classified by HTA's name patterns, event edges rounded inward to whole microseconds.
- `all_devices` and `devices` are profkit's own figures: the full span of device activity
  (first kernel/copy/fill start to last end), exact nanoseconds, the shared classifier's
  categories, per device and for all devices merged.

Sums of time are interval unions (profkit.intervals), never summed durations.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from profkit import intervals as iv
from profkit.derive import CUPTI_NO_STREAM
from profkit.columns import per_value

from . import Context, PassResult

NAME = "breakdown"

DEVICE_KINDS = ("kernel", "memcpy", "memset")
# Categories of the shared classifier that are not compute.
COMMUNICATION = "communication"
MEMORY = "memory"

# --- HTA's definitions, copied from hta/common/types.py and hta/utils/utils.py --------
# get_kernel_type: COMMUNICATION, else MEMORY, else COMPUTATION (inverse match), else OTHER.
# re.match semantics: anchored at the start of the name.
HTA_COMMUNICATION = re.compile(r"(^nccl.*)|(^hip)|(^hccl)|(.*ncclKernel.*)")
HTA_MEMORY = re.compile(r"(^(hip)?Memcpy)|(^(hip)?Memset)|(^dma)")
HTA_NOT_COMPUTE = re.compile(
    r"(^nccl)|(.*Memcpy)|(.*Memset)|(.*dma)|(^.*Sync)|(^Stream Wait Event)|(cuda.*LaunchKernel)"
    r"|(^runFunction)|(^hip)|(^job_exe)|(^packet)|(^pe_exe)|(^cpum_exe_subgraph)|(^hccl)"
    r"|(^collective_subgraph_execution)"
)
HTA_PROFILER_STEP = r"^ProfilerStep#\d+"
# Device-level sync records HTA counts as GPU work even without a stream (trace_filter.py).
HTA_DEVICE_SYNC_NAMES = ("Event Sync", "Context Sync")
# HTA rounds Kineto's float microsecond timestamps inward (ts up, ts+dur down) to whole
# microseconds (trace_parser.round_down_time_stamps). On integer-microsecond traces this is
# a no-op; on nanosecond-resolution traces it shortens every event by up to 1 us, which is
# what HTA reports. Set False to keep exact nanoseconds in the HTA-compatible view.
HTA_ROUND_TO_US = True
# HTA's test for "GPU kernel or device sync" (trace_filter._filter_gpu_kernels_with_cuda_sync);
# everything else (host ops, runtime calls, annotations) is on its host side.
_HTA_GPU_LIKE = ("(coalesce(stream >= 0 AND correlation >= 0, false) "
                 f"OR coalesce(name, '') IN {HTA_DEVICE_SYNC_NAMES})")
US = 1000


def run(ctx: Context) -> PassResult:
    dev = ctx.device_events()
    starts, ends, devices = dev.start, dev.end, dev.device
    is_comm = per_value(lambda c: c == COMMUNICATION, dev.category_code, dev.category_values, bool)
    is_mem = per_value(lambda c: c == MEMORY, dev.category_code, dev.category_values, bool)

    if starts.size == 0:
        # No device activity: a breakdown cannot be answered, and saying 0% idle would be
        # a claim (budgets on it report "cannot answer", exit 3).
        return PassResult(metrics={"device_activity": False, **{k: None for k in _NS_KEYS + _PCT_KEYS},
                                   "non_compute_ns": None, "non_compute_pct": None,
                                   "all_devices": None, "devices": []})
    metrics: dict[str, Any] = hta_breakdown(ctx)
    metrics["device_activity"] = True
    metrics["all_devices"] = profile(starts, ends, is_comm, is_mem)
    metrics["devices"] = []
    for d in np.unique(devices).tolist():
        on = devices == d
        metrics["devices"].append({"device": None if d < 0 else d,
                                   **profile(starts[on], ends[on], is_comm[on], is_mem[on])})
    return PassResult(metrics=metrics)


# --- profkit's own view ------------------------------------------------------------------

def profile(starts: np.ndarray, ends: np.ndarray, is_comm: np.ndarray, is_mem: np.ndarray) -> dict[str, Any]:
    """Busy, idle and per-category time over the span of the given device events (the
    masks: which are communication, which memory; the rest is compute)."""
    if starts.size == 0:
        return {"events": 0, "start_ns": None, "end_ns": None, **{k: 0 for k in _NS_KEYS},
                **{k: 0.0 for k in _PCT_KEYS}}
    lo, hi = int(starts.min()), int(ends.max())
    span = hi - lo
    is_compute = ~(is_comm | is_mem)
    busy = iv.union(starts, ends)
    compute = iv.union(starts[is_compute], ends[is_compute])
    comm = iv.union(starts[is_comm], ends[is_comm])
    mem = iv.union(starts[is_mem], ends[is_mem])
    out = {
        "events": int(starts.size),
        "start_ns": lo,
        "end_ns": hi,
        "span_ns": span,
        "busy_ns": iv.total(busy),
        "idle_ns": span - iv.total(busy),
        "compute_ns": iv.total(compute),
        "communication_ns": iv.total(comm),
        "memory_ns": iv.total(mem),
        "compute_communication_overlap_ns": iv.total(iv.intersect(compute, comm)),
        "compute_memory_overlap_ns": iv.total(iv.intersect(compute, mem)),
        # Communication not hidden behind compute: what a rank waits on collectives for.
        "exposed_communication_ns": iv.total(iv.subtract(comm, compute)),
    }
    for key in _PCT_KEYS:
        out[key] = _pct(out[key.replace("_pct", "_ns")], span)
    return out


_NS_KEYS = ("span_ns", "busy_ns", "idle_ns", "compute_ns", "communication_ns", "memory_ns",
            "compute_communication_overlap_ns", "compute_memory_overlap_ns", "exposed_communication_ns")
_PCT_KEYS = ("busy_pct", "idle_pct", "compute_pct", "communication_pct", "memory_pct",
             "compute_communication_overlap_pct", "exposed_communication_pct")


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


# --- HTA's view --------------------------------------------------------------------------

def hta_breakdown(ctx: Context) -> dict[str, Any]:
    """HTA's temporal breakdown of one rank: idle / compute / non-compute over its window."""
    store, trace_id = ctx.store, ctx.trace_id
    # The events HTA reads as GPU work: anything with a stream (kernels, copies, fills and
    # the sync records Kineto draws on stream lanes), plus device-wide syncs by name. HTA
    # reads the stream from the record's `stream` arg, where some Kineto versions write
    # CUPTI's invalid id for a sync on no stream: HTA takes that for a stream, so its view
    # does too (the store, as for other Kineto traces, says -1: derive.no_stream).
    # Names are not fetched: the device activities' names are coded in the context's shared
    # load already (5M events: coding them again cost 0.4 s).
    table = store.arrow(f"""
        SELECT event_id, kind = 'sync' AS is_sync, kind IN ('memcpy', 'memset') AS is_copy,
               start_ns, end_ns, stream, coalesce(correlation, -1) AS correlation,
               (stream >= 0 AND coalesce(correlation, -1) >= 0)
                   OR coalesce(name, '') IN {HTA_DEVICE_SYNC_NAMES} AS gpu_like
        FROM (SELECT event_id, kind, name, start_ns, end_ns, correlation, stream FROM events
              WHERE trace_id = ? AND (kind IN {DEVICE_KINDS} OR (kind = 'sync' AND tid IS NULL))
                AND stream IS NOT NULL AND stream <> -1
              UNION ALL
              SELECT event_id, kind, name, start_ns, end_ns, correlation, {CUPTI_NO_STREAM} AS stream FROM events
              WHERE trace_id = ? AND kind = 'sync' AND tid IS NULL AND stream = -1
                AND json_extract_string(args, '$.stream') = '{CUPTI_NO_STREAM}')
    """, [trace_id, trace_id])
    window = _hta_window(ctx)
    types = _hta_types(ctx.device_events(), table.column("event_id").to_numpy(),
                       table.column("is_sync").to_numpy(zero_copy_only=False),
                       table.column("is_copy").to_numpy(zero_copy_only=False))
    starts = table.column("start_ns").to_numpy().astype(np.int64)
    ends = table.column("end_ns").to_numpy().astype(np.int64)
    if HTA_ROUND_TO_US:
        starts, ends = -(-starts // US) * US, (ends // US) * US
    if window["last_step_excluded"]:
        keep = _hta_kept(ctx, table, window["last_step_start_ns"])
        starts, ends, types = starts[keep], ends[keep], types[keep]
    busy = iv.union(starts, ends)
    compute = iv.union(starts[types == _COMPUTE], ends[types == _COMPUTE])
    span = int(busy[1][-1] - busy[0][0]) if busy[0].size else 0
    busy_ns, compute_ns = iv.total(busy), iv.total(compute)
    out = {
        "span_ns": span,
        "busy_ns": busy_ns,
        "idle_ns": span - busy_ns,
        "compute_ns": compute_ns,
        "non_compute_ns": busy_ns - compute_ns,
        "idle_pct": _pct(span - busy_ns, span),
        "compute_pct": _pct(compute_ns, span),
        "non_compute_pct": _pct(busy_ns - compute_ns, span),
    }
    by_type = {t: iv.total(iv.union(starts[types == code], ends[types == code]))
               for code, t in enumerate(HTA_TYPES) if code != _COMPUTE}
    out["hta"] = {
        "definition": "HTA get_temporal_breakdown (traceinsight 0.6.1), per rank, all devices merged",
        "start_ns": int(busy[0][0]) if busy[0].size else None,
        "end_ns": int(busy[1][-1]) if busy[0].size else None,
        "events": int(starts.size),
        "rounded_to_us": HTA_ROUND_TO_US,
        **window,
        "communication_ns": by_type["communication"],
        "memory_ns": by_type["memory"],
        "other_ns": by_type["other"],
    }
    return out


def _hta_window(ctx: Context) -> dict[str, Any]:
    """HTA drops the last ProfilerStep's device work when the trace names two or more steps
    (Trace._filter_irrelevant_gpu_kernels, include_last_profiler_step=False)."""
    store, trace_id = ctx.store, ctx.trace_id
    step_names, last_start = store.con.execute(f"""
        SELECT count(DISTINCT name), max(start_ns) FILTER (WHERE NOT {_HTA_GPU_LIKE}) FROM events
        WHERE trace_id = ? AND regexp_matches(name, ?)
    """, [trace_id, HTA_PROFILER_STEP]).fetchall()[0]
    excluded = bool(step_names >= 2 and last_start is not None)
    return {"profiler_step_names": int(step_names), "last_step_excluded": excluded,
            "last_step_start_ns": int(last_start) if excluded else None}


def _hta_kept(ctx: Context, table, last_step_start: int) -> np.ndarray:
    """Which of HTA's GPU events survive its filter: those launched (same correlation id,
    any process) by a host event that starts before the last step, and stream events with
    no correlation that themselves start before it (HTA files those with host events)."""
    cut = -(-last_step_start // US) * US if HTA_ROUND_TO_US else last_step_start
    start_expr = f"-((-start_ns) // {US}) * {US}" if HTA_ROUND_TO_US else "start_ns"
    kept_correlations = ctx.store.arrow(f"""
        SELECT DISTINCT coalesce(correlation, -1) AS c FROM events
        WHERE trace_id = ? AND {start_expr} < ?
          AND NOT {_HTA_GPU_LIKE}
    """, [ctx.trace_id, cut]).column("c").to_numpy().astype(np.int64)
    gpu_like = table.column("gpu_like").to_numpy(zero_copy_only=False)
    correlation = table.column("correlation").to_numpy()
    starts = table.column("start_ns").to_numpy()
    if HTA_ROUND_TO_US:
        starts = -(-starts // US) * US
    launched_before = np.isin(correlation, kept_correlations)
    return np.where(gpu_like, launched_before, starts < cut)


HTA_TYPES = ("compute", "communication", "memory", "other")
_COMPUTE = HTA_TYPES.index("compute")


def _hta_types(dev, event_id: np.ndarray, is_sync: np.ndarray, is_copy: np.ndarray) -> np.ndarray:
    """HTA's get_kernel_type per event (codes into HTA_TYPES), decided once per distinct
    name: the events that are device activities take their name's code from `dev` (the
    context's shared load) by id. Copies and fills are memory whatever their name, unless
    it is a communication one (a no-op on Kineto, where they are named Memcpy/Memset, and
    sane on other inputs), and sync records are never compute."""
    at = dev.positions_of(event_id)
    null_code = dev.name_values.size - 1  # dictionary_codes: the last value is None
    code = np.where(at >= 0, dev.name_code[np.maximum(at, 0)], null_code)
    types = per_value(lambda name: HTA_TYPES.index(_hta_name_type(name)), code, dev.name_values, np.int8)
    types[is_copy & (types != HTA_TYPES.index("communication"))] = HTA_TYPES.index("memory")
    # A wait drawn on a stream is not compute. HTA decides by name, and its names miss
    # MTIA's event_wait / event_record and Nsight's "Event sync" (lower case), which it
    # would count as compute (docs/hta-differences.md).
    types[is_sync] = HTA_TYPES.index("other")
    return types


def _hta_name_type(name: str | None) -> str:
    text = name or ""
    if HTA_COMMUNICATION.match(text):
        return "communication"
    if HTA_MEMORY.match(text):
        return "memory"
    if not HTA_NOT_COMPUTE.match(text):
        return "compute"
    return "other"
