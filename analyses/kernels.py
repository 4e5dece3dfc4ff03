"""Kernels: where device time goes (by category, by kernel name, by the CPU operator
that launched it), storms of tiny kernels, launch-to-start latency, hotspots and grids
too small for the device. docs/analysis/kernels.md documents every metric and rule.
"""
from __future__ import annotations

import numpy as np

from profkit import intervals
from profkit.classify import runtime_call_names
from profkit.columns import group_codes, per_value, run_starts
from profkit.findings import Finding
from profkit.render import UNIT_NOUNS, human_ns, short_name
from profkit.schema import CATEGORIES
from profkit.whatif import TYPICAL_LAUNCH_LATENCY_NS

from . import Context, PassResult
from .copy_time import copy_bound_findings, copy_time
from .op_attribution import attribute
from .step_inference import DeviceEvents, recorded_in_graph

NAME = "kernels"

TOP_N = 20                       # kernel names and operators listed
TOP_SHAPES = 3                   # input-shape variants listed per operator
TINY_KERNEL_NS = 10_000          # a kernel shorter than this is "tiny"
STORM_MIN_PER_STEP = 50          # tiny kernels per step before they are a storm
LAUNCH_LATENCY_HIGH_NS = 20_000  # p50 launch-to-start on an idle stream above this is high
LAUNCH_LATENCY_TYPICAL_NS = TYPICAL_LAUNCH_LATENCY_NS  # what a launch to an idle stream usually costs
HOTSPOT_SHARE_PCT = 30.0         # one kernel name above this share of busy time
HOTSPOT_SPEEDUP = 2.0            # the what-if behind a hotspot's impact
LONG_KERNEL_NS = 20_000          # grids/occupancy judged only for kernels this long
LOW_OCCUPANCY_PCT = 25.0
SMALL_GRID_MAX_FINDINGS = 3
FINDING_MIN_PCT = 1.0            # noise floor: share of a step ...
FINDING_MIN_NS = 10_000          # ... and time per step

# By framework (Context.advice): None is the general text, in runtime terms.
_TINY_KERNEL_ADVICE = {
    None: "Capture the step's launch sequence as a CUDA/HIP graph (stream capture, then one graph launch per "
          "step) so one launch replaces hundreds, and fuse chains of small kernels into fewer, larger ones.",
    "pytorch": "Capture the step with CUDA/HIP graphs (torch.compile mode='reduce-overhead' or torch.cuda.graphs) "
               "so one launch replaces hundreds, and fuse chains of small elementwise kernels (torch.compile, "
               "fused optimizers, fused norms).",
}


def _pct(part, whole) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _windows(ctx: Context, lo: int, hi: int):
    """Steady step windows, or the whole device span as one window when there are none."""
    steady = ctx.steady_steps
    if steady:
        return [(w.step, w.start_ns, w.end_ns) for w in steady], True
    return [(None, lo, hi)], False


def _device_activity(dev) -> dict:
    """The device activities (`Context.device_events`, loaded once for every pass) by
    device, then start, then id, as named columns."""
    order = np.argsort(dev.device, kind="stable")  # dev is in (start, id) order
    acts = {"event_id": dev.event_id[order], "device": dev.device[order], "kind": dev.kind[order],
            "start_ns": dev.start[order], "end_ns": dev.end[order], "category": dev.category[order],
            "category_code": dev.category_code[order], "category_values": dev.category_values,
            "name_code": dev.name_code[order], "name_values": dev.name_values}
    acts["dur_ns"] = acts["end_ns"] - acts["start_ns"]
    return acts


# ---------------------------------------------------------------- time by category ---
def by_category(acts) -> tuple[list[dict], dict]:
    devices = []
    totals = {c: {"count": 0, "sum_ns": 0, "union_ns": 0} for c in CATEGORIES}
    busy_total = 0
    # Each category's rows found once, by dictionary code (a million string comparisons per
    # category and device cost 0.4 s at 1M activities).
    code_of = {v: i for i, v in enumerate(acts["category_values"].tolist())}
    in_category = {c: acts["category_code"] == code_of[c] for c in CATEGORIES if c in code_of}
    for d in np.unique(acts["device"]):
        m = acts["device"] == d
        busy = intervals.length(acts["start_ns"][m], acts["end_ns"][m])
        busy_total += busy
        cats = {}
        for c, rows in in_category.items():  # in CATEGORIES order
            mc = m & rows
            if not mc.any():
                continue
            union = intervals.length(acts["start_ns"][mc], acts["end_ns"][mc])
            total = int(acts["dur_ns"][mc].sum())
            cats[c] = {"count": int(mc.sum()), "sum_ns": total, "union_ns": union,
                       "union_pct_of_busy": _pct(union, busy)}
            for k in ("count", "sum_ns", "union_ns"):
                totals[c][k] += cats[c][k]
        devices.append({"device": int(d), "busy_ns": busy, "sum_ns": int(acts["dur_ns"][m].sum()),
                        "activities": int(m.sum()), "by_category": cats})
    trace = {c: {**v, "union_pct_of_busy": _pct(v["union_ns"], busy_total)} for c, v in totals.items() if v["count"]}
    return devices, {"busy_ns": busy_total, "by_category": trace}


# ---------------------------------------------------------------- by kernel name -----
def top_kernels(store, trace_id, busy_ns):
    rows = store.rows(f"""
        SELECT name, any_value(category) AS category, count(*) AS count, sum(dur_ns) AS total_ns,
               avg(dur_ns) AS mean_ns, quantile_cont(dur_ns, 0.5) AS p50_ns,
               quantile_cont(dur_ns, 0.95) AS p95_ns, max(dur_ns) AS max_ns,
               list(DISTINCT coalesce(device, -1) ORDER BY coalesce(device, -1)) AS devices
        FROM events WHERE trace_id = ? AND kind = 'kernel'
        GROUP BY name ORDER BY total_ns DESC, name LIMIT {TOP_N}
    """, [trace_id])
    for r in rows:
        for k in ("total_ns", "mean_ns", "p50_ns", "p95_ns", "max_ns"):
            r[k] = int(round(r[k]))
        r["share_of_busy_pct"] = _pct(r["total_ns"], busy_ns)
    return rows


# ---------------------------------------------------------------- by CPU operator ----
# The attribution is op_attribution's; here its sums, ordered as SQL would (kernel time
# down, then names up, NULL last).
def by_op(store, trace_id, dev: DeviceEvents, kernel_sum_ns):
    """Kernel time by the framework op that launched it (the `by_op` section), and per
    device the ops that launched its tiny kernels, most first: [(op, kernels)]."""
    kops = attribute(store, trace_id, dev)
    dur = (dev.end - dev.start)[kops.kernel]
    names = kops.op_names
    code, first = group_codes(kops.op_code)  # a group per operator name
    kernels = np.bincount(code, minlength=first.size)
    kernel_ns = _sums(code, dur, first.size)
    op_calls = np.bincount(code[group_codes(kops.op_code, kops.op_event)[1]], minlength=first.size)
    top = sorted(range(first.size), key=lambda g: (-kernel_ns[g], _name_key(names[kops.op_code[first[g]]])))[:TOP_N]
    top_codes = kops.op_code[first[top]] if top else np.zeros(0, np.int64)
    in_top = np.flatnonzero(np.isin(kops.op_code, top_codes))
    shapes = _op_shapes(store, trace_id, kops, in_top, dur)
    kernel_names = _op_kernel_names(dev, kops, in_top, dur)
    ops = []
    for g, op in zip(top, top_codes.tolist()):
        ops.append({"op_name": names[op], "kernels": int(kernels[g]), "op_calls": int(op_calls[g]),
                    "kernel_ns": int(kernel_ns[g]), "share_of_kernel_time_pct": _pct(int(kernel_ns[g]), kernel_sum_ns),
                    "shapes": shapes.get(op, [])[:TOP_SHAPES], "top_kernels": kernel_names.get(op, [])[:3]})
    attributed = int(dur.sum())
    return ({"ops": ops, "attributed_ns": attributed, "unattributed_ns": int(kernel_sum_ns - attributed)},
            _tiny_ops(dev, kops, dur))


def _sums(code: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    """Per group code, the sum of its integer values (bincount sums in float64: exact while
    a sum stays below 2**53 ns, 104 days)."""
    return np.bincount(code, weights=values, minlength=groups).astype(np.int64)


def _name_key(name):
    """SQL's ascending order of names, NULL last."""
    return (name is None, name or "")


def _op_shapes(store, trace_id, kops, rows, dur) -> dict[int, list[dict]]:
    """Per operator (code), its input-shape variants, most kernel time first."""
    if rows.size == 0:
        return {}
    dims_code, dims = kops.input_dims(store, trace_id, rows)
    code, first = group_codes(kops.op_code[rows], dims_code)
    kernels, kernel_ns = np.bincount(code, minlength=first.size), _sums(code, dur[rows], first.size)
    out: dict[int, list[dict]] = {}
    for g in sorted(range(first.size), key=lambda g: (-kernel_ns[g], _name_key(dims[dims_code[first[g]]]))):
        text = dims[dims_code[first[g]]]
        if text:
            out.setdefault(int(kops.op_code[rows[first[g]]]), []).append(
                {"input_dims": text, "kernels": int(kernels[g]), "kernel_ns": int(kernel_ns[g])})
    return out


def _op_kernel_names(dev, kops, rows, dur) -> dict[int, list[str]]:
    """Per operator (code), the names of its kernels, most kernel time first."""
    name_code = dev.name_code[kops.kernel[rows]]
    code, first = group_codes(kops.op_code[rows], name_code)
    kernel_ns = _sums(code, dur[rows], first.size)
    out: dict[int, list[str]] = {}
    for g in sorted(range(first.size), key=lambda g: (-kernel_ns[g], _name_key(dev.name_values[name_code[first[g]]]))):
        out.setdefault(int(kops.op_code[rows[first[g]]]), []).append(dev.name_values[name_code[first[g]]])
    return out


def _tiny_ops(dev, kops, dur) -> dict[int, list[tuple[str, int]]]:
    """Per device, the operators that launched its tiny kernels: [(op, kernels)], most first."""
    tiny = np.flatnonzero(dur < TINY_KERNEL_NS)
    device = dev.device[kops.kernel[tiny]]
    code, first = group_codes(device, kops.op_code[tiny])
    kernels = np.bincount(code, minlength=first.size)
    out: dict[int, list[tuple[str, int]]] = {}
    for g in sorted(range(first.size), key=lambda g: (int(device[first[g]]), -kernels[g],
                                                      _name_key(kops.op_names[kops.op_code[tiny[first[g]]]]))):
        out.setdefault(int(device[first[g]]), []).append((kops.op_names[kops.op_code[tiny[first[g]]]], int(kernels[g])))
    return out


# ---------------------------------------------------------------- launches -----------
def launch_table(store, trace_id, dev: DeviceEvents):
    """Per launched device activity (`dev`, the context's shared load): latencies, and
    whether its stream was idle at launch (no earlier activity on it still running).

    Graph launches (one call enqueuing many activities) are left out: the time from the
    call to each node's start includes the nodes before it."""
    links = dev.links
    code, _ = group_codes(links.call)
    graph_names = set(runtime_call_names(store, trace_id, "graph_launch"))
    keep = ((np.bincount(code)[code] == 1)
            & ~per_value(lambda n: n in graph_names, links.name_code, links.name_values, bool)
            & ~recorded_in_graph(store, dev.event_id, ("graph_id", "graph_node_id"))[links.activity])
    rows = np.flatnonzero(keep)
    at = links.activity[rows]
    start, end = dev.start[at], dev.end[at]
    call_start, call_end = links.start[rows], links.end[rows]
    prev_end = _previous_end(dev)[at]
    return {"device": dev.device[at], "device_event": dev.event_id[at], "device_start_ns": start,
            "launch_start_ns": call_start, "launch_end_ns": call_end,
            "from_launch_start_ns": start - call_start, "from_launch_end_ns": start - call_end,
            "call_ns": call_end - call_start, "idle_stream": prev_end <= call_start,
            "tiny": (dev.kind[at] == "kernel") & (end - start < TINY_KERNEL_NS)}


def _previous_end(dev: DeviceEvents) -> np.ndarray:
    """Per device event: the latest end of the activities before it on its stream (by
    start, end, id), the smallest int64 for the first."""
    order = dev.lane_order
    lane_start = run_starts(dev.device[order], dev.stream[order])
    ends = dev.end[order]
    previous = np.full(ends.size, np.iinfo(np.int64).min, dtype=np.int64)
    bounds = np.r_[np.flatnonzero(lane_start), ends.size]
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        previous[a + 1:b] = np.maximum.accumulate(ends[a:b - 1])
    out = np.empty_like(previous)
    out[order] = previous
    return out


def _dist(values) -> dict:
    if len(values) == 0:
        return {"count": 0, "p50_ns": None, "p95_ns": None, "max_ns": None}
    v = np.asarray(values, dtype=np.float64)
    return {"count": int(v.size), "p50_ns": int(round(np.percentile(v, 50))),
            "p95_ns": int(round(np.percentile(v, 95))), "max_ns": int(v.max())}


def launch_latency(launches):
    out = []
    for d in np.unique(launches["device"]):
        m = launches["device"] == d
        idle = m & launches["idle_stream"]
        out.append({
            "device": int(d),
            "start_minus_launch_start": _dist(launches["from_launch_start_ns"][m]),
            "start_minus_launch_end": _dist(launches["from_launch_end_ns"][m]),
            "idle_stream_start_minus_launch_start": _dist(launches["from_launch_start_ns"][idle]),
            "launch_call": _dist(launches["call_ns"][m]),
        })
    return out


# ---------------------------------------------------------------- tiny kernels -------
def tiny_kernels(acts, launches, windows, device):
    m = (acts["device"] == device) & (acts["kind"] == "kernel")
    tiny = m & (acts["dur_ns"] < TINY_KERNEL_NS)
    lm = (launches["device"] == device) & launches["tiny"]
    lo, hi = _bounds(windows)
    count, total_ns = _starting_in(acts["start_ns"][tiny], acts["dur_ns"][tiny], lo, hi)
    one_by_one, _ = _starting_in(launches["device_start_ns"][lm], None, lo, hi)
    kernels, _ = _starting_in(acts["start_ns"][m], None, lo, hi)
    per_step = [{"step": w[0], "count": int(count[k]), "total_ns": int(total_ns[k]),
                 "launched_one_by_one": int(one_by_one[k]), "kernels": int(kernels[k])}
                for k, w in enumerate(windows)]
    call = launches["call_ns"][lm]
    return {
        "device": int(device), "threshold_ns": TINY_KERNEL_NS, "count": int(tiny.sum()),
        "total_ns": int(acts["dur_ns"][tiny].sum()),
        "per_launch_overhead_ns": int(np.median(call)) if call.size else 0,
        "median_per_step": {k: int(np.median([p[k] for p in per_step])) for k in
                            ("count", "total_ns", "launched_one_by_one", "kernels")},
        "per_step": per_step,
    }


def _starting_in(starts, values, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Per window [lo, hi): how many of the items start in it, and the sum of their
    `values` (zeros without values)."""
    order = np.argsort(starts, kind="stable")
    starts = np.asarray(starts)[order]
    first = np.searchsorted(starts, lo, side="left")
    last = np.maximum(np.searchsorted(starts, hi, side="left"), first)
    if values is None:
        return last - first, np.zeros(lo.size, dtype=np.int64)
    cumulative = np.concatenate([[0], np.cumsum(np.asarray(values, dtype=np.int64)[order])])
    return last - first, cumulative[last] - cumulative[first]


# ---------------------------------------------------------------- grids --------------
# The trace's kernels with their launch configuration: the `kernels` view, with kernel_info
# read over the trace's event ids only (it holds every rank's kernels and has no trace_id).
_TRACE_KERNELS = """(
    SELECT e.*, i.* EXCLUDE (event_id) FROM events e JOIN kernel_info i USING (event_id)
    WHERE e.trace_id = $trace AND e.kind = 'kernel' AND i.event_id BETWEEN $first AND $last)"""


def grids(store, trace_id, windows, event_ids: tuple[int, int]):
    """Long kernels whose grid has fewer blocks than the device has SMs, by name, and
    kernels of low occupancy; `event_ids` bound the trace's device activities' ids.

    `idle_sm_ns` = sum of dur x (1 - blocks / SMs): the SM-time left empty, as time on
    the whole device; `idle_sm_ns_per_step` is its median over the step windows."""
    params = {"trace": int(trace_id), "first": int(event_ids[0]), "last": int(event_ids[1])}
    t = store.arrow(f"""
        SELECT k.event_id, k.name, coalesce(k.device, -1) AS device, v.sm_count, k.start_ns, k.dur_ns,
               k.grid_x * coalesce(k.grid_y, 1) * coalesce(k.grid_z, 1) AS blocks
        FROM {_TRACE_KERNELS} k JOIN devices v ON v.trace_id = k.trace_id AND v.device = k.device
        WHERE k.dur_ns >= {LONG_KERNEL_NS} AND v.sm_count > 0 AND k.grid_x IS NOT NULL
          AND coalesce(k.category, '') <> 'communication'
          AND k.grid_x * coalesce(k.grid_y, 1) * coalesce(k.grid_z, 1) < v.sm_count
        ORDER BY k.dur_ns DESC, k.event_id
    """, params)
    k = {name: t.column(name).to_numpy(zero_copy_only=False) for name in t.column_names}
    rows = []
    names = k["name"]
    for key in sorted({(n, int(d)) for n, d in zip(names.tolist(), k["device"].tolist())}):
        m = (names == key[0]) & (k["device"] == key[1])
        empty = k["dur_ns"][m] * (1 - k["blocks"][m] / k["sm_count"][m])
        starts = k["start_ns"][m]
        per_step = [float(empty[(starts >= lo) & (starts < hi)].sum()) for _, lo, hi in windows]
        rows.append({"name": key[0], "device": key[1], "sm_count": int(k["sm_count"][m][0]), "count": int(m.sum()),
                     "total_ns": int(k["dur_ns"][m].sum()), "max_blocks": int(k["blocks"][m].max()),
                     "idle_sm_ns": int(empty.sum()), "idle_sm_ns_per_step": int(np.median(per_step)),
                     "examples": [int(e) for e in k["event_id"][m][:3]]})
    rows.sort(key=lambda r: -r["idle_sm_ns"])
    occupancy = store.rows(f"""
        SELECT name, coalesce(device, -1) AS device, count(*) AS count, sum(dur_ns) AS total_ns,
               min(occupancy_pct) AS min_occupancy_pct, avg(occupancy_pct) AS mean_occupancy_pct
        FROM {_TRACE_KERNELS} WHERE dur_ns >= {LONG_KERNEL_NS} AND occupancy_pct > 0 AND occupancy_pct < {LOW_OCCUPANCY_PCT}
        GROUP BY ALL ORDER BY total_ns DESC LIMIT {TOP_N}
    """, params)
    return rows, occupancy


# ---------------------------------------------------------------- the pass -----------
def run(ctx: Context) -> PassResult:
    store, tid = ctx.store, ctx.trace_id
    acts = _device_activity(ctx.device_events())
    if acts["event_id"].size == 0:
        return PassResult(metrics={"devices": [], "note": "no device activity in this trace"})
    devices, trace_cats = by_category(acts)
    kernel_sum = int(acts["dur_ns"][acts["kind"] == "kernel"].sum())
    top = top_kernels(store, tid, trace_cats["busy_ns"])
    ops, tiny_ops = by_op(store, tid, ctx.device_events(), kernel_sum)
    launches = launch_table(store, tid, ctx.device_events())
    latency = launch_latency(launches)
    windows, have_steps = _windows(ctx, int(acts["start_ns"].min()), int(acts["end_ns"].max()))
    tiny = [tiny_kernels(acts, launches, windows, d) for d in np.unique(acts["device"])]
    small_grids, low_occ = grids(store, tid, windows, (int(acts["event_id"].min()), int(acts["event_id"].max())))
    hot = hotspots(store, tid, devices)
    copies = copy_time(store, tid, acts, windows)
    metrics = {
        "busy_ns": trace_cats["busy_ns"], "kernel_sum_ns": kernel_sum,
        "by_category": trace_cats["by_category"], "devices": devices,
        "top_kernels": top, "by_op": ops, "launch_latency": latency, "tiny_kernels": tiny,
        "hotspots": hot, "small_grids": small_grids[:TOP_N], "low_occupancy": low_occ, "copies": copies,
        "steady_steps": [w[0] for w in windows if w[0] is not None],
    }
    step_ref = ctx.step_ns if have_steps and ctx.step_ns else int(np.median([hi - lo for _, lo, hi in windows]))
    findings = []
    findings += _storm_findings(ctx, tiny, step_ref, windows, tiny_ops)
    findings += _latency_findings(ctx, latency, launches, windows, step_ref)
    findings += _hotspot_findings(ctx, acts, hot, windows, step_ref)
    findings += _grid_findings(ctx, small_grids, acts, windows, step_ref)
    findings += copy_bound_findings(ctx, copies, windows, step_ref, lambda ns: _share(ctx, ns, step_ref),
                                    lambda ns: _keep(ns, step_ref))
    return PassResult(metrics=metrics, findings=findings)


def _keep(impact, step_ref) -> bool:
    return impact >= FINDING_MIN_NS and _pct(impact, step_ref) >= FINDING_MIN_PCT


def _share(ctx, impact, step_ref):
    return ctx.share(impact) if ctx.step_ns else _pct(impact, step_ref)


def _steps(windows):
    return [w[0] for w in windows if w[0] is not None]


def _device_idle(ctx, device, cause):
    """Median per-step idle of a cause on a device, from the idle pass (None if absent)."""
    for d in (ctx.results.get("idle") or {}).get("devices", []):
        if d["device"] == device:
            return d["steady_step_median_ns"][cause] if cause else d["steady_step_median_idle_ns"]
    return None


def _launching_ops_sentence(ops: list[tuple[str, int]], tiny_count: int) -> str:
    """The framework ops that launch most of the tiny kernels, where the trace links them."""
    top = [(op, n) for op, n in ops[:3] if tiny_count and 100 * n / tiny_count >= 1]
    if not top:
        return ""
    return ("Most are launched by " + ", ".join(f"{short_name(op, 60)} ({100 * n / tiny_count:.0f}%)" for op, n in top)
            + " (of this device's tiny kernels). ")


def _storm_findings(ctx, tiny, step_ref, windows, tiny_ops):
    out = []
    for t in tiny:
        med = t["median_per_step"]
        if med["count"] < STORM_MIN_PER_STEP:
            continue
        overhead = med["launched_one_by_one"] * t["per_launch_overhead_ns"]
        host_idle = _device_idle(ctx, t["device"], "host_bound")
        impact = overhead if host_idle is None else min(overhead, host_idle)
        if not _keep(impact, step_ref):
            continue
        out.append(Finding(
            rule="kernels.tiny_kernel_storm",
            title=(f"{ctx.device_label(t['device'])} runs {med['count']} kernels shorter than {TINY_KERNEL_NS // 1000} us "
                   f"per step ({med['launched_one_by_one']} launched one by one)"),
            impact_ns=impact, share_pct=_share(ctx, impact, step_ref),
            scope=ctx.base_scope(device=t["device"], steps=_steps(windows)),
            evidence={"tiny_kernels_per_step": med["count"], "tiny_kernel_ns_per_step": med["total_ns"],
                      "kernels_per_step": med["kernels"], "launched_one_by_one_per_step": med["launched_one_by_one"],
                      "per_launch_overhead_ns": t["per_launch_overhead_ns"], "launch_overhead_ns_per_step": overhead,
                      "host_bound_idle_ns_per_step": host_idle,
                      "basis": "one-by-one launches x median launch call time, capped by the host-bound idle "
                               "the idle pass measured on this device",
                      "by_launching_op": [{"op": op, "kernels": n, "share_pct": _pct(n, t["count"])}
                                          for op, n in tiny_ops.get(t["device"], [])[:5]]},
            sql=(f"SELECT name, count(*) AS n, sum(dur_ns) AS total_ns, median(dur_ns) AS p50_ns FROM kernels "
                 f"WHERE trace_id = {ctx.trace_id} AND coalesce(device, -1) = {t['device']} AND dur_ns < {TINY_KERNEL_NS} "
                 f"GROUP BY name ORDER BY n DESC LIMIT 20"),
            recommendation=_launching_ops_sentence(tiny_ops.get(t["device"], []), t["count"]) +
                           ctx.advice(_TINY_KERNEL_ADVICE),
            impact_basis="estimate", count=med["count"]))
    return out


def _latency_findings(ctx, latency, launches, windows, step_ref):
    out = []
    for lat in latency:
        idle = lat["idle_stream_start_minus_launch_start"]
        if not idle["count"] or idle["p50_ns"] <= LAUNCH_LATENCY_HIGH_NS:
            continue
        d = lat["device"]
        m = (launches["device"] == d) & launches["idle_stream"]
        counts, _ = _starting_in(launches["device_start_ns"][m], None, *_bounds(windows))
        per_step = float(np.median(counts))
        impact = int((idle["p50_ns"] - LAUNCH_LATENCY_TYPICAL_NS) * per_step)
        cap = _device_idle(ctx, d, None)
        if cap is not None:
            impact = min(impact, cap)
        if not _keep(impact, step_ref):
            continue
        out.append(Finding(
            rule="kernels.launch_latency",
            title=f"{ctx.device_label(d)}: kernels launched to an idle stream start {idle['p50_ns'] / 1000:.0f} us after the call (p50)",
            impact_ns=impact, share_pct=_share(ctx, impact, step_ref),
            scope=ctx.base_scope(device=d, steps=_steps(windows)),
            evidence={**lat, "idle_stream_launches_per_step": per_step, "typical_ns": LAUNCH_LATENCY_TYPICAL_NS},
            sql=(f"SELECT runtime_name, device_name, launch_start_ns, device_start_ns, launch_to_start_ns FROM launches "
                 f"WHERE trace_id = {ctx.trace_id} AND coalesce(device, -1) = {d} ORDER BY launch_to_start_ns DESC LIMIT 20"),
            recommendation="Launches to an idle GPU take long to start: check for a launch queue throttled by "
                           "the driver, lazy module loading (CUDA_MODULE_LOADING), or per-launch argument setup; "
                           "graph replay or fewer, fused kernels avoid the per-launch cost.",
            impact_basis="estimate", count=idle["count"]))
    return out


def _per_step_time(acts, mask, windows):
    """Median over the windows of the masked activities' time, by the window they start in."""
    _, per_window = _starting_in(acts["start_ns"][mask], acts["dur_ns"][mask], *_bounds(windows))
    return float(np.median(per_window))


def _bounds(windows) -> tuple[np.ndarray, np.ndarray]:
    """The starts and ends of (step, start, end) windows, as arrays."""
    return (np.array([w[1] for w in windows], dtype=np.int64),
            np.array([w[2] for w in windows], dtype=np.int64))


def hotspots(store, trace_id, devices):
    """Per device, kernel names above HOTSPOT_SHARE_PCT of that device's busy time.

    Communication kernels are left to the communication pass: their time includes the
    wait for other ranks, which a faster kernel would not remove."""
    busy = {d["device"]: d["busy_ns"] for d in devices}
    rows = store.rows("""
        SELECT coalesce(device, -1) AS device, name, any_value(category) AS category, count(*) AS count,
               sum(dur_ns) AS total_ns, quantile_cont(dur_ns, 0.5) AS p50_ns, max(dur_ns) AS max_ns
        FROM events WHERE trace_id = ? AND kind = 'kernel' AND coalesce(category, '') <> 'communication'
        GROUP BY ALL ORDER BY total_ns DESC, device, name
    """, [trace_id])
    out = []
    for r in rows:
        share = _pct(r["total_ns"], busy.get(r["device"], 0))
        if share > HOTSPOT_SHARE_PCT:
            out.append({**r, "total_ns": int(r["total_ns"]), "p50_ns": int(round(r["p50_ns"])),
                        "share_of_device_busy_pct": share})
    return out


def _hotspot_findings(ctx, acts, hot, windows, step_ref):
    out = []
    code_of = {v: i for i, v in enumerate(acts["name_values"].tolist()) if v is not None}
    is_kernel = acts["kind"] == "kernel"
    for k in hot:
        if k["name"] not in code_of:
            continue  # a kernel without a name: nothing to point at
        mine = is_kernel & (acts["name_code"] == code_of[k["name"]]) & (acts["device"] == k["device"])
        per_step = _per_step_time(acts, mine, windows)
        potential = int(per_step * (1 - 1 / HOTSPOT_SPEEDUP))
        if not _keep(potential, step_ref):
            continue
        short = short_name(k["name"])
        # A hotspot is where time goes, not time wasted: nothing says the kernel can be made
        # faster, so it ranks with impact 0 and carries the 2x what-if as evidence only.
        out.append(Finding(
            rule="kernels.hotspot",
            title=f"{ctx.device_label(k['device'])}: one kernel takes {k['share_of_device_busy_pct']:.0f}% of busy time "
                  f"({human_ns(per_step)} per step): {short}",
            impact_ns=0, share_pct=0.0,
            scope=ctx.base_scope(device=k["device"], steps=_steps(windows)),
            evidence={**{x: k[x] for x in ("count", "total_ns", "p50_ns", "max_ns", "share_of_device_busy_pct",
                                          "category")},
                      "ns_per_step": int(per_step), "what_if": f"{HOTSPOT_SPEEDUP:g}x faster",
                      "saving_if_2x_faster_ns_per_step": potential},
            sql=(f"SELECT event_id, start_ns, dur_ns, device, stream, grid_x, grid_y, grid_z, block_x FROM kernels "
                 f"WHERE trace_id = {ctx.trace_id} AND coalesce(device, -1) = {k['device']} "
                 f"AND name = '{_sql_str(k['name'])}' ORDER BY dur_ns DESC LIMIT 20"),
            recommendation=f"This kernel dominates {ctx.device_noun(k['device'])} time: check it is the right implementation for the shapes "
                           "(tuned GEMM/attention library, dtype, tensor-core friendly sizes) and whether its "
                           "work can be reduced. It is ranked as information (impact 0): a 2x faster kernel would save "
                           f"{human_ns(potential)} per step.",
            impact_basis="estimate", count=k["count"]))
    return out


def _grid_findings(ctx, small_grids, acts, windows, step_ref):
    out = []
    for g in small_grids[:SMALL_GRID_MAX_FINDINGS]:
        impact = g["idle_sm_ns_per_step"]
        if not _keep(impact, step_ref):
            continue
        short = short_name(g["name"])
        out.append(Finding(
            rule="kernels.small_grid",
            title=f"{ctx.device_label(g['device'])}: {short} runs at most {g['max_blocks']} "
                  f"{'block' if g['max_blocks'] == 1 else 'blocks'} on "
                  f"{g['sm_count']} {ctx.device_noun(g['device'], UNIT_NOUNS, 'compute units')}",
            impact_ns=impact, share_pct=_share(ctx, impact, step_ref),
            scope=ctx.base_scope(device=g["device"], steps=_steps(windows)),
            evidence={k: g[k] for k in ("count", "total_ns", "max_blocks", "sm_count", "idle_sm_ns",
                                        "idle_sm_ns_per_step", "examples")},
            sql=(f"SELECT event_id, name, dur_ns, grid_x, grid_y, grid_z, block_x, occupancy_pct FROM kernels "
                 f"WHERE trace_id = {ctx.trace_id} AND name = '{_sql_str(g['name'])}' AND dur_ns >= {LONG_KERNEL_NS} "
                 f"ORDER BY dur_ns DESC LIMIT 20"),
            recommendation="The grid leaves SMs/CUs empty for a long kernel: split the work further (split-K "
                           "GEMM, more blocks per row, a persistent kernel sized to the device) or run "
                           "independent work concurrently on another stream.",
            impact_basis="bound", count=g["count"]))
    return out


def _sql_str(text: str) -> str:
    return text.replace("'", "''")
