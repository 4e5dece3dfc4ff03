"""Communication: collectives by op and process group, time exposed versus hidden behind
compute, achieved bus bandwidth against the link's peak, and skew between ranks.

Reads the `comms` view (communication kernels joined with `collectives`), the compute
kernels of the same devices, and, for skew, the other ranks' traces of the same store.
Every figure is documented in docs/analysis/communication.md.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from profkit import intervals as iv
from profkit.columns import members_by_code, per_value
from profkit.findings import Finding
from profkit.render import human_ns

from . import Context, PassResult
from .comm_skew import cross_rank as _cross_rank, trace_metrics as _skew_trace_metrics
from .nccl_bandwidth import busbw, algbw, link_peak_from_name, message_bytes
from .step_inference import DeviceEvents

NAME = "communication"

# Noise floors and thresholds (documented in docs/analysis/communication.md).
EXPOSED_MIN_NS_PER_STEP = 20_000      # comm.exposed: at least 20 us exposed per step ...
EXPOSED_MIN_SHARE_PCT = 1.0           # ... and at least 1% of the step (when steps are known)
LARGE_MESSAGE_BYTES = 1 << 20         # comm.low_bus_bandwidth looks at collectives >= 1 MiB
LOW_BUSBW_FRACTION = 0.30             # ... whose median busbw is below 30% of the link peak
EXPECTED_BUSBW_FRACTION = 0.70        # a well-tuned collective reaches ~70% of peak busbw
LOW_BUSBW_MIN_NS_PER_STEP = 10_000    # ... and costing at least 10 us per step
MAX_HOST_GPUS_WITHOUT_DEVICE_LIST = 8  # larger groups are taken to cross hosts when unknown
EXAMPLES = 5

COMPUTE_EXCLUDED = ("communication", "memory")


def run(ctx: Context) -> PassResult:
    store, trace_id = ctx.store, ctx.trace_id
    dev = ctx.device_events()
    comms = _load_comms(store, trace_id, dev)
    if not comms["event_id"].size:
        metrics: dict[str, Any] = {"comm_kernels": 0, "groups": []}
        skew = _cross_rank(store, _compute_unions, ctx.peer_steps)
        if skew is not None:
            metrics["cross_rank"] = _skew_trace_metrics(skew, trace_id)
        return PassResult(metrics=metrics)

    compute = _own_compute_unions(dev, comms["event_id"])
    steps = _StepMap(ctx, comms)
    devices = _device_facts(store, trace_id)
    findings: list[Finding] = []

    # Totals per device and over the trace (device time, summed over devices).
    by_device = []
    total = exposed_total = 0
    per_step_exposed = np.zeros(len(steps.steady))
    per_step_comm = np.zeros(len(steps.steady))
    for device in sorted(set(comms["device"].tolist()), key=lambda d: (d is None, d)):
        mask = comms["device"] == device
        comm_u = iv.union(comms["start_ns"][mask], comms["end_ns"][mask])
        exposed_u = iv.subtract(comm_u, compute.get(device, _EMPTY))
        dev_total, dev_exposed = iv.total(comm_u), iv.total(exposed_u)
        total += dev_total
        exposed_total += dev_exposed
        by_device.append({"device": device, "total_ns": dev_total, "exposed_ns": dev_exposed,
                          "hidden_ns": dev_total - dev_exposed, "exposed_pct": _pct(dev_exposed, dev_total)})
        step_exp, step_comm = steps.per_step(comms, mask, compute.get(device, _EMPTY))
        per_step_exposed += step_exp
        per_step_comm += step_comm

    groups = []
    for key, mask in _groups(comms):
        group = _group_metrics(ctx, comms, mask, key, compute, steps, devices)
        groups.append(group)
        finding = _exposed_finding(ctx, group, steps)
        if finding:
            findings.append(finding)
        finding = _low_bandwidth_finding(ctx, group, comms)
        if finding:
            findings.append(finding)
    groups.sort(key=lambda g: -g["total_ns"])
    for g in groups:
        g.pop("_internal", None)

    n_steady = max(1, len(steps.steady))
    metrics = {
        "comm_kernels": int(comms["event_id"].size),
        "total_ns": total,
        "exposed_ns": exposed_total,
        "hidden_ns": total - exposed_total,
        "exposed_pct": _pct(exposed_total, total),
        "steady_steps": len(steps.steady) if steps.has_steps else 0,
        "comm_ns_per_step": int(round(per_step_comm.sum() / n_steady)),
        "exposed_ns_per_step": int(round(per_step_exposed.sum() / n_steady)),
        "by_device": by_device,
        "groups": groups,
        "link_peak": [{"device": d, **devices[d]} for d in sorted(set(comms["device"].tolist()) & set(devices),
                                                                  key=lambda d: (d is None, d))],
    }

    skew = _cross_rank(store, _compute_unions, ctx.peer_steps)
    if skew is not None:
        metrics["cross_rank"] = _skew_trace_metrics(skew, trace_id)
        finding = _skew_finding(ctx, skew)
        if finding:
            findings.append(finding)
    return PassResult(metrics=metrics, findings=findings)


_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))


# -- loading -------------------------------------------------------------------

def _load_comms(store, trace_id: int, dev: DeviceEvents) -> dict[str, np.ndarray]:
    table = store.arrow("""
        SELECT event_id, name, start_ns, end_ns, dur_ns, device, stream, step,
               coalesce(op, 'other') AS op, bytes, in_elems, out_elems, dtype,
               CAST(coalesce(group_size, json_array_length(try_cast(group_ranks AS JSON))) AS INTEGER) AS group_size,
               process_group, process_group_desc
        FROM comms
        WHERE trace_id = ? AND kind = 'kernel'
        ORDER BY start_ns, event_id
    """, [trace_id])
    out = {}
    for name in table.column_names:
        col = table.column(name)
        if name in ("event_id", "start_ns", "end_ns", "dur_ns"):
            out[name] = col.to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            out[name] = np.array(col.to_pylist(), dtype=object)
    out["launch_ns"] = _earliest_launch(dev, out["event_id"], out["start_ns"])
    return out


def _earliest_launch(dev: DeviceEvents, event_id: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per kernel, the earliest start of its launch calls, else its own start."""
    links = dev.links
    known = links.start_known
    earliest = np.full(len(dev), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(earliest, links.activity[known], links.start[known])
    at = dev.positions_of(event_id)
    launch = np.where(at >= 0, earliest[np.maximum(at, 0)], np.iinfo(np.int64).max)
    return np.where(launch == np.iinfo(np.int64).max, start, launch)


def _own_compute_unions(dev: DeviceEvents, comm_ids: np.ndarray) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """`_compute_unions` of the analysed trace, from its device events loaded once
    (`comm_ids`: its communication kernels, every kernel of it in `collectives`)."""
    excluded = per_value(lambda c: c in COMPUTE_EXCLUDED, dev.category_code, dev.category_values, bool)
    chosen = (dev.kind == "kernel") & (dev.end > dev.start) & ~excluded & ~np.isin(dev.event_id, comm_ids)
    devices, starts, ends = dev.device[chosen], dev.start[chosen], dev.end[chosen]
    return {None if d == -1 else d: iv.union(starts[devices == d], ends[devices == d])
            for d in np.unique(devices).tolist()}


def _compute_unions(store, trace_id: int) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """Per device, the union of compute kernels (every category but communication/memory)."""
    table = store.arrow(f"""
        SELECT device, start_ns, end_ns FROM events
        WHERE trace_id = ? AND kind = 'kernel' AND dur_ns > 0
          AND coalesce(category, 'other') NOT IN {COMPUTE_EXCLUDED}
          AND event_id NOT IN (SELECT event_id FROM collectives)
    """, [trace_id])
    devices = np.array(table.column("device").to_pylist(), dtype=object)
    starts = table.column("start_ns").to_numpy(zero_copy_only=False)
    ends = table.column("end_ns").to_numpy(zero_copy_only=False)
    return {d: iv.union(starts[devices == d], ends[devices == d]) for d in set(devices.tolist())}


def _device_facts(store, trace_id: int) -> dict[Any, dict[str, Any]]:
    """Link peak per device: from the store where known, else from the product name."""
    rows = store.rows("SELECT device, name, link_bandwidth_bytes_per_s FROM devices WHERE trace_id = ?", [trace_id])
    facts = {}
    for row in rows:
        if row["link_bandwidth_bytes_per_s"]:
            peak, source = float(row["link_bandwidth_bytes_per_s"]), "devices.link_bandwidth_bytes_per_s"
        else:
            peak, source = link_peak_from_name(row["name"])
            source = source and f"table: {source} (approximate)"
        facts[row["device"]] = {"name": row["name"], "link_peak_bytes_per_s": peak, "link_peak_source": source}
    return facts


# -- steps ---------------------------------------------------------------------

class _StepMap:
    """Which steady step each comm kernel belongs to: its own `events.step` when that is a
    known step, else the step window its launch call (for host-defined steps) or its start
    (for steps found on the device) falls in, as the steps pass does. Without steps, the
    whole trace is one step."""

    def __init__(self, ctx: Context, comms: dict[str, np.ndarray]):
        self.has_steps = bool(ctx.steady_steps)
        self.steady = [s.step for s in ctx.steady_steps] if self.has_steps else [None]
        known = {s.step for s in ctx.steps}
        order = sorted(ctx.steps, key=lambda s: s.start_ns)
        starts = np.array([s.start_ns for s in order], dtype=np.int64)
        ends = np.array([s.end_ns for s in order], dtype=np.int64)
        host_side = bool(order) and order[0].source not in ("kernel_pattern", "whole_trace")
        anchors = comms["launch_ns"] if host_side else comms["start_ns"]
        if not self.has_steps:
            self.assigned = np.full(anchors.size, None, dtype=object)
            return
        # The window each anchor falls in, for all kernels at once; kept where the kernel's
        # own step is a known one.
        at = np.searchsorted(starts, anchors, side="right") - 1
        inside = (at >= 0) & (anchors < ends[np.maximum(at, 0)]) if order else np.zeros(anchors.size, bool)
        numbers = np.array([s.step for s in order] + [-10**9], dtype=object)
        by_window = numbers[np.where(inside, at, len(order))]
        own = comms["step"]
        keep = np.array([step is not None and step in known for step in own.tolist()], dtype=bool)
        self.assigned = np.where(keep, own, by_window)
        # Per kernel, its steady step's position in `steady` (-1: none), for per_step.
        position = {step: i for i, step in enumerate(self.steady)}
        self.steady_position = np.array([position.get(a, -1) for a in self.assigned.tolist()], dtype=np.int64)

    def in_steady(self) -> np.ndarray:
        return np.isin(self.assigned, np.array(self.steady, dtype=object))

    def per_step(self, comms, mask, compute) -> tuple[np.ndarray, np.ndarray]:
        """Exposed and total comm time of the masked kernels in each steady step."""
        exposed = np.zeros(len(self.steady))
        total = np.zeros(len(self.steady))
        # The masked kernels of each step, in kernel order (a mask per step grew with steps
        # squared).
        groups = (members_by_code(np.where(mask, self.steady_position, -1), len(self.steady)) if self.has_steps
                  else [np.flatnonzero(mask)])
        for i, sel in enumerate(groups):
            if not sel.size:
                continue
            u = iv.union(comms["start_ns"][sel], comms["end_ns"][sel])
            total[i] = iv.total(u)
            exposed[i] = iv.total(iv.subtract(u, compute))
        return exposed, total

# -- groups --------------------------------------------------------------------

def _groups(comms) -> list[tuple[tuple[str, Any], np.ndarray]]:
    keys = list(zip(comms["op"].tolist(), comms["process_group"].tolist()))
    out = []
    for key in sorted(set(keys), key=lambda k: (k[0], str(k[1]))):
        out.append((key, np.array([k == key for k in keys], dtype=bool)))
    return out


def _group_metrics(ctx, comms, mask, key, compute, steps: _StepMap, devices) -> dict[str, Any]:
    op, pg = key
    durs = comms["dur_ns"][mask]
    descs = [d for d in comms["process_group_desc"][mask].tolist() if d is not None]
    sizes = [g for g in comms["group_size"][mask].tolist() if g is not None]
    n_steady = max(1, len(steps.steady))

    total = exposed = 0
    worst = {"device": None, "exposed_ns_per_step": 0, "exposed_steps": []}
    for device in sorted(set(comms["device"][mask].tolist()), key=lambda d: (d is None, d)):
        dmask = mask & (comms["device"] == device)
        u = iv.union(comms["start_ns"][dmask], comms["end_ns"][dmask])
        total += iv.total(u)
        exposed += iv.total(iv.subtract(u, compute.get(device, _EMPTY)))
        step_exp, _ = steps.per_step(comms, dmask, compute.get(device, _EMPTY))
        per_step = int(round(step_exp.sum() / n_steady))
        if worst["device"] is None or per_step > worst["exposed_ns_per_step"]:
            worst = {"device": device, "exposed_ns_per_step": per_step,
                     "exposed_steps": [int(x) for x in step_exp]}

    group: dict[str, Any] = {
        "op": op, "process_group": pg,
        "process_group_desc": descs[0] if descs else None,
        "group_size": int(max(sizes)) if sizes else None,
        "count": int(mask.sum()),
        "total_ns": total,
        "mean_ns": int(round(float(durs.mean()))),
        "p50_ns": int(round(float(np.percentile(durs, 50)))),
        "p95_ns": int(round(float(np.percentile(durs, 95)))),
        "exposed_ns": exposed, "hidden_ns": total - exposed,
        "exposed_pct": _pct(exposed, total),
        "exposed_ns_per_step": worst["exposed_ns_per_step"],
        "exposed_device": worst["device"],
        "streams": sorted({int(x) for x in comms["stream"][mask].tolist() if x is not None}),
    }
    group["bytes_total"], group["bandwidth"], large = _bandwidth(comms, mask, op, steps, devices)
    group["_internal"] = {"mask": mask, "exposed_steps": worst["exposed_steps"], "large": large}
    group["_internal"]["examples"] = _examples(comms, mask, compute)
    return group


def _bandwidth(comms, mask, op, steps: _StepMap, devices) -> tuple[int | None, dict[str, Any], list[int]]:
    """(bytes in all, bandwidth metrics, positions of the large collectives in `comms`)."""
    idx = np.flatnonzero(mask)
    sizes, algs, buses, large_idx = [], [], [], []
    size_of: dict[tuple, int | None] = {}  # per distinct description: kernels repeat a few
    described = zip(*(comms[c][idx].tolist() for c in ("bytes", "in_elems", "out_elems", "dtype", "group_size")))
    for i, dur, key in zip(idx.tolist(), comms["dur_ns"][idx].tolist(), described):
        if key not in size_of:
            size_of[key] = message_bytes(op, *key)
        size, n = size_of[key], key[4]
        if size is None:
            continue
        sizes.append(size)
        a, b = algbw(size, dur), busbw(op, size, dur, n)
        if a is not None:
            algs.append(a)
        if b is not None:
            buses.append(b)
            if size >= LARGE_MESSAGE_BYTES:
                large_idx.append((i, b))
    out: dict[str, Any] = {"sized_count": len(sizes)}
    if not sizes:
        return None, out, []
    out.update({
        "message_bytes_p50": int(np.percentile(sizes, 50)),
        "message_bytes_max": int(max(sizes)),
        "algbw_p50_bytes_per_s": float(np.percentile(algs, 50)) if algs else None,
        "busbw_p50_bytes_per_s": float(np.percentile(buses, 50)) if buses else None,
        "large_count": len(large_idx),
    })
    if large_idx:
        large_bus = float(np.percentile([b for _, b in large_idx], 50))
        out["large_busbw_p50_bytes_per_s"] = large_bus
        dev_list = [comms["device"][i] for i, _ in large_idx]
        device = max(set(dev_list), key=dev_list.count)
        facts = devices.get(device) or {}
        peak = facts.get("link_peak_bytes_per_s")
        n = max((comms["group_size"][i] or 0) for i, _ in large_idx)
        listed = len(devices)
        crosses = (n > listed) if listed >= 2 else (n > MAX_HOST_GPUS_WITHOUT_DEVICE_LIST)
        out.update({"device": device, "link_peak_bytes_per_s": peak,
                    "link_peak_source": facts.get("link_peak_source"),
                    "group_may_cross_hosts": bool(crosses) if op not in ("send", "recv", "send_recv") else None,
                    "large_busbw_pct_of_peak": _pct(large_bus, peak) if peak else None})
        # Time per steady step spent in the large collectives (union), for the impact.
        sel = np.zeros_like(mask)
        sel[[i for i, _ in large_idx]] = True
        if steps.has_steps:
            sel &= steps.in_steady()
        u = iv.union(comms["start_ns"][sel], comms["end_ns"][sel])
        out["large_ns_per_step"] = int(round(iv.total(u) / max(1, len(steps.steady))))
        out["large_examples"] = [int(comms["event_id"][i]) for i, _ in
                                 sorted(large_idx, key=lambda t: t[1])[:EXAMPLES]]
    return int(sum(sizes)), out, [i for i, _ in large_idx]


def _examples(comms, mask, compute) -> list[dict[str, int]]:
    """The kernels of the group with the most exposed time."""
    idx = np.flatnonzero(mask)
    starts, ends = comms["start_ns"][idx], comms["end_ns"][idx]
    exposed = ends - starts
    devices = comms["device"][idx]
    for device in set(devices.tolist()):
        # Per device at once: the compute union is disjoint, so the summed overlap of each
        # kernel with it is the time it covers (143k collectives: 5.7 s one by one).
        on = devices == device
        covered_s, covered_e = compute.get(device, _EMPTY)
        exposed[on] -= iv.overlap_sums(covered_s, covered_e, starts[on], ends[on])
    top = np.argsort(-exposed, kind="stable")[:EXAMPLES]
    return [{"event_id": int(comms["event_id"][idx[i]]), "start_ns": int(starts[i]),
             "dur_ns": int(ends[i] - starts[i]), "exposed_ns": int(exposed[i])} for i in top]


# -- findings ------------------------------------------------------------------

def _exposed_finding(ctx: Context, group, steps: _StepMap) -> Finding | None:
    impact = group["exposed_ns_per_step"]
    if impact < EXPOSED_MIN_NS_PER_STEP or _floor_share(ctx, impact) < EXPOSED_MIN_SHARE_PCT:
        return None
    op, pg = group["op"], group["process_group"]
    label = f"group {pg}" if pg is not None else "an unnamed group"
    internal = group["_internal"]
    return Finding(
        rule="comm.exposed",
        title=f"{_op_text(op)} on {label} is {group['exposed_pct']:.0f}% exposed: {human_ns(impact)} per step "
              f"not overlapped by compute",
        impact_ns=impact,
        share_pct=ctx.share(impact),
        scope=ctx.base_scope(device=group["exposed_device"], stream=group["streams"], op=op,
                             process_group=pg, steps=[s for s in steps.steady if s is not None]),
        evidence={"count": group["count"], "total_ns": group["total_ns"], "exposed_ns": group["exposed_ns"],
                  "hidden_ns": group["hidden_ns"], "exposed_pct": group["exposed_pct"],
                  "exposed_ns_by_step": dict(zip([str(s) for s in steps.steady], internal["exposed_steps"])),
                  "examples": internal["examples"]},
        sql=_group_sql(ctx.trace_id, op, pg),
        recommendation=(
            "Overlap this collective with independent compute: launch it asynchronously as soon as "
            "its input is ready (DDP gradient bucketing with a smaller bucket_cap_mb, FSDP "
            "forward/backward prefetch, async tensor-parallel matmul+collective fusion) and make sure "
            "the waiting kernel is not queued behind the compute it should overlap. If compute is "
            "idle meanwhile, shrink the message (lower precision, compression) or use a faster "
            "algorithm (NCCL_ALGO/NVLS, symmetric-memory all-reduce)."),
        impact_basis="bound",
        count=group["count"],
    )


def _speedup_whatif(comms, large: list[int], factor: float) -> dict[str, Any]:
    """{"whatif": [speedup-kernel:NAME=FACTOR, ...]} for the large collectives' kernel names,
    or {} when a collective outside them has one of those names."""
    names = set(comms["name"][large].tolist())
    outside = np.ones(comms["name"].size, dtype=bool)
    outside[large] = False
    if not names or any(n in names for n in comms["name"][outside].tolist()):
        return {}
    return {"whatif": [f"speedup-kernel:{n}={factor:.2f}" for n in sorted(names)]}


def _low_bandwidth_finding(ctx: Context, group, comms) -> Finding | None:
    """Also names the what-if that prices it (`details.whatif`): the group's large
    collectives sped up to the expected bandwidth, by kernel name, where no other
    collective of the trace shares those names (else the speedup would reach them too)."""
    bw = group["bandwidth"]
    achieved, peak = bw.get("large_busbw_p50_bytes_per_s"), bw.get("link_peak_bytes_per_s")
    if not achieved or not peak or bw.get("group_may_cross_hosts"):
        return None
    if achieved >= LOW_BUSBW_FRACTION * peak:
        return None
    expected = EXPECTED_BUSBW_FRACTION * peak
    impact = bw["large_ns_per_step"] * (1.0 - achieved / expected)
    if impact < LOW_BUSBW_MIN_NS_PER_STEP:
        return None
    op, pg = group["op"], group["process_group"]
    label = f"group {pg}" if pg is not None else "an unnamed group"
    return Finding(
        rule="comm.low_bus_bandwidth",
        title=f"{_op_text(op)} on {label} reaches {achieved / 1e9:.1f} GB/s bus bandwidth, "
              f"{100 * achieved / peak:.0f}% of the {peak / 1e9:.0f} GB/s link peak",
        impact_ns=int(impact),
        share_pct=ctx.share(impact),
        scope=ctx.base_scope(device=bw.get("device"), op=op, process_group=pg),
        evidence={"large_count": bw["large_count"], "message_bytes_p50": bw["message_bytes_p50"],
                  "busbw_p50_bytes_per_s": achieved, "link_peak_bytes_per_s": peak,
                  "link_peak_source": bw.get("link_peak_source"), "group_size": group["group_size"],
                  "large_ns_per_step": bw["large_ns_per_step"], "examples": bw.get("large_examples", [])},
        sql=_group_sql(ctx.trace_id, op, pg, min_bytes=LARGE_MESSAGE_BYTES),
        recommendation=(
            "Kernel time includes waiting for the slowest rank: check comm.rank_skew first. If ranks "
            "arrive together, check the transport NCCL picked (NCCL_DEBUG=INFO: NVLink/P2P, not "
            "SHM or sockets), NCCL_ALGO/NCCL_PROTO and channel counts, and that no other traffic "
            "shares the links; batch small collectives into larger ones (bucketing)."),
        impact_basis="estimate",
        count=bw["large_count"],
        details=_speedup_whatif(comms, group["_internal"]["large"], expected / achieved),
    )


def _group_sql(trace_id: int, op: str, pg, min_bytes: int | None = None) -> str:
    pg_sql = "IS NULL" if pg is None else f"= '{str(pg).replace(chr(39), chr(39) * 2)}'"
    extra = " AND coalesce(bytes, in_elems, out_elems) IS NOT NULL" if min_bytes else ""
    return (f"SELECT event_id, name, start_ns, dur_ns, device, stream, step, op, process_group, "
            f"group_size, bytes, in_elems, out_elems, dtype FROM comms "
            f"WHERE trace_id = {int(trace_id)} AND op = '{op}' AND process_group {pg_sql}{extra} "
            f"ORDER BY start_ns")


def _op_text(op: str) -> str:
    # RCCL's generic kernels (ncclDevKernel_Generic_1) do not name their collective.
    return "communication (op not in its kernel names)" if op == "other" else op


def _floor_share(ctx: Context, ns_per_step: float) -> float:
    """Share of the step for the noise floors; without steps, of the whole trace."""
    if ctx.step_ns:
        return ctx.share(ns_per_step)
    span = (ctx.trace.get("end_ns") or 0) - (ctx.trace.get("start_ns") or 0)
    return _pct(ns_per_step, span)


def _pct(part, whole) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0

# -- skew across ranks: the finding (matching lives in comm_skew) ----------------

SKEW_MIN_WAIT_NS_PER_STEP = 20_000  # comm.rank_skew: the others lose at least 20 us per step ...
SKEW_MIN_SHARE_PCT = 1.0            # ... and at least 1% of the step (when steps are known)
SKEW_MIN_LAST_SHARE = 0.5           # the straggler is last at >= 50% of collectives (75% with 2 ranks)
SKEW_MIN_CONSISTENT_SHARE = 0.5     # trust the matching only if most matched instances are consistent


def _skew_finding(ctx: Context, skew: dict[str, Any]) -> Finding | None:
    straggler = skew["straggler"]
    if not straggler or ctx.trace_id != min(skew["trace_ids"]):
        return None  # made once per store, by the smallest participating trace
    need = max(SKEW_MIN_LAST_SHARE, min(0.75, 2.0 / len(skew["ranks"])))
    impact = straggler["others_exposed_wait_ns_per_step_median"]
    if straggler["last_share"] < need or impact < SKEW_MIN_WAIT_NS_PER_STEP:
        return None
    if skew["consistent"] < SKEW_MIN_CONSISTENT_SHARE * skew["matched"]:
        return None
    if _floor_share(ctx, impact) < SKEW_MIN_SHARE_PCT:
        return None
    rank = straggler["rank"]
    op = straggler["op"] or "collective"
    waits = {str(f["rank"]): f["wait_ns_per_step"] for f in skew["per_trace"].values()}
    exposed_waits = {str(f["rank"]): f["exposed_wait_ns_per_step"] for f in skew["per_trace"].values()}
    partition = "c.stream" if max(skew["match_basis"], key=skew["match_basis"].get) == "order_by_stream" \
        else "c.process_group"
    sql = (f"WITH c AS (SELECT t.rank, c.op, c.process_group, c.stream, c.event_id, "
           f"c.start_ns + coalesce(t.clock_offset_ns, 0) AS arrival_ns, row_number() OVER "
           f"(PARTITION BY c.trace_id, {partition}, c.op ORDER BY c.start_ns) AS instance "
           f"FROM comms c JOIN traces t USING (trace_id) WHERE c.kind = 'kernel') "
           f"SELECT {partition.split('.')[1]}, op, instance, rank, event_id, arrival_ns, "
           f"max(arrival_ns) OVER (PARTITION BY {partition.split('.')[1]}, op, instance) - arrival_ns AS wait_ns "
           f"FROM c ORDER BY {partition.split('.')[1]}, op, instance, rank")
    return Finding(
        rule="comm.rank_skew",
        title=f"rank {rank} arrives last at {100 * straggler['last_share']:.0f}% of {op}s; the other "
              f"ranks wait {human_ns(straggler['others_wait_ns_per_step_median'])} per step for it, "
              f"{human_ns(impact)} of it with no compute to overlap",
        impact_ns=impact,
        share_pct=ctx.share(impact),
        scope={"trace_id": straggler["trace_id"], "rank": rank, "ranks": skew["ranks"]},
        evidence={"matched_instances": skew["matched"], "consistent_instances": skew["consistent"],
                  "match_basis": skew["match_basis"], "last_share": round(straggler["last_share"], 4),
                  "wait_ns_per_step_by_rank": waits, "exposed_wait_ns_per_step_by_rank": exposed_waits,
                  "others_wait_ns_per_step_median": straggler["others_wait_ns_per_step_median"],
                  "examples": skew["examples"]},
        sql=sql,
        recommendation=(
            f"Find what rank {rank} does before its collectives that the others do not: uneven data "
            "or sequence lengths (balance the batches), extra host work (logging, checkpointing, "
            "data loading on that rank), a slower or throttled GPU, or a noisy neighbour. Compare "
            "its step timeline with another rank's (profkit diff)."),
        impact_basis="estimate",
        count=straggler and skew["per_trace"][straggler["trace_id"]]["last_count"],
    )
