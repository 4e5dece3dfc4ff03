"""Host overheads in the steady state: synchronisation, pageable copies, allocator calls,
CPU time between launches, and the time from a step's start to its first device work.

The steady state is `ctx.steady_steps`; a trace with a single step is analysed whole.
API names of every vendor are matched through one table, `profkit/data/runtime_calls.csv`
(`classify.runtime_role`), never per vendor.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from profkit import intervals
from profkit.classify import PAGEABLE_DTOH_LAUNCHES, blocking_async_copies, runtime_role
from profkit.columns import contains, dictionary_codes, group_codes, per_value
from profkit.findings import Finding
from profkit.render import agreeing, human_ns, per_step_count, per_step_number

from . import Context, PassResult
from .host_work import call_sites

NAME = "host"

# Framework operators that block the host on a device value (`.item()`, `.tolist()`, ...).
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense")

MIN_IMPACT_NS = 5_000             # no finding below 5 us per step ...
MIN_SHARE_PCT = 0.5               # ... or below 0.5% of the median step
PAGEABLE_SAVING = 0.5             # pinned copies take about half the time of pageable ones
STEP_START_GAP_MIN_NS = 20_000    # host.step_start_gap only above 20 us of GPU idle per step ...
STEP_START_GAP_MIN_SHARE = 2.0    # ... and 2% of the median step
MAX_EXAMPLES = 5

# Recommendations by framework (Context.advice): None is the general text, in runtime terms.
_SYNC_ADVICE = {
    None: "Remove host synchronisation from the loop: synchronise only where the host needs a result, order "
          "work across streams with events (cudaEventRecord + cudaStreamWaitEvent, hipEventRecord + "
          "hipStreamWaitEvent) instead of device or stream synchronize, and copy results asynchronously "
          "(cudaMemcpyAsync/hipMemcpyAsync into pinned memory) instead of with blocking copies.",
    "pytorch": "Remove host synchronisation from the loop: keep values on the device instead of calling "
               ".item()/.cpu()/.tolist() every step, copy results with non_blocking=True into pinned memory and "
               "wait on an event only when the value is needed, and drop explicit torch.cuda.synchronize() "
               "outside timing code.",
}
_PINNED_ADVICE = {
    None: "Allocate host buffers in pinned (page-locked) memory (cudaMallocHost/cudaHostAlloc, hipHostMalloc, or "
          "cudaHostRegister/hipHostRegister on an existing buffer) so copies run at full bandwidth and stay "
          "asynchronous with respect to the host.",
    "pytorch": "Allocate host buffers in pinned (page-locked) memory (pin_memory=True in the DataLoader, "
               "tensor.pin_memory(), cudaHostAlloc/hipHostMalloc) so copies run at full bandwidth and stay "
               "asynchronous with respect to the host.",
}
_ALLOCATOR_ADVICE = {
    None: "Allocate once and reuse buffers across steps (a memory pool), or use stream-ordered allocation "
          "(cudaMallocAsync/hipMallocAsync with a pool that keeps memory); cudaFree/hipFree also synchronise "
          "the device.",
    "pytorch": "Let the caching allocator keep memory across steps: avoid emptying the cache "
               "(torch.cuda.empty_cache) in the loop, keep tensor shapes stable or preallocate, and use "
               "stream-ordered allocation (cudaMallocAsync) where raw allocations are needed; cudaFree/hipFree "
               "also synchronise the device.",
}
_STEP_START_ADVICE = {
    None: "Prepare the next step's inputs while the current one runs: read and stage them on another thread, "
          "copy them asynchronously from pinned memory, and build the next batch ahead of time.",
    "pytorch": "Prepare the next step's inputs while the current one runs: DataLoader workers with pin_memory "
               "and prefetching, non_blocking host-to-device copies, and a scheduler that builds the next batch "
               "ahead of time.",
}


def run(ctx: Context) -> PassResult:
    windows, steps = _windows(ctx)
    n_steps = max(1, len(windows))
    host_side = ctx.results.get("steps", {}).get("source") not in ("kernel_pattern", "whole_trace")
    dev = ctx.device_events()
    busy = intervals.union(dev.start, dev.end)
    calls = _runtime_calls(ctx)
    roles = per_value(runtime_role, calls["name_code"], calls["name_values"])
    roles[np.isin(calls["event_id"], blocking_async_copies(ctx.store, ctx.trace_id))] = "blocking_copy"
    step_of_call = _window_index(calls["start"], windows)

    metrics: dict = {"scope": "whole_trace" if steps is None else "steady_steps",
                     "steps_analysed": len(windows)}
    findings: list[Finding] = []

    sync = _sync_analysis(ctx, calls, roles, step_of_call, dev, busy, n_steps)
    metrics["sync"] = sync.pop("metrics")
    findings += sync["findings"]

    pageable = _pageable(ctx, dev, windows, host_side, n_steps)
    metrics["pageable_copies"] = pageable.pop("metrics")
    findings += pageable["findings"]

    alloc = _allocator(ctx, calls, roles)
    metrics["allocator"] = alloc.pop("metrics")
    findings += alloc["findings"]

    metrics["launches"] = _launch_gaps(ctx, calls, step_of_call, dev)
    start_gap = _step_start_gap(ctx, busy, sync["idle"])
    metrics["step_start_gap"] = start_gap.pop("metrics")
    findings += start_gap["findings"]
    return PassResult(metrics=metrics, findings=findings)


# -- windows and data ------------------------------------------------------------------------

def _windows(ctx: Context):
    """[(start, end)] analysed, and the steps they are (None for the whole trace)."""
    steady = ctx.steady_steps
    if len(ctx.steps) <= 1 and ctx.selected_step is None or not steady:
        lo, hi = ctx.trace.get("start_ns"), ctx.trace.get("end_ns")
        return ([(int(lo), int(hi))] if lo is not None else []), None
    return [(s.start_ns, s.end_ns) for s in steady], steady


def _window_index(times: np.ndarray, windows) -> np.ndarray:
    if not windows or times.size == 0:
        return np.full(times.size, -1, dtype=np.int64)
    starts = np.array([w[0] for w in windows], dtype=np.int64)
    ends = np.array([w[1] for w in windows], dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    idx = intervals.containing(starts, ends, times)
    return np.where(idx >= 0, order[np.clip(idx, 0, None)], -1)


def _runtime_calls(ctx: Context) -> dict:
    table = ctx.store.arrow("""
        SELECT event_id, name, start_ns, end_ns, coalesce(pid, -1) AS pid, coalesce(tid, -1) AS tid
        FROM events WHERE trace_id = ? AND kind = 'runtime' ORDER BY start_ns, event_id
    """, [ctx.trace_id])
    codes, values = dictionary_codes(table.column("name"))
    return {
        "event_id": table.column("event_id").to_numpy().astype(np.int64),
        "name": values[codes], "name_code": codes, "name_values": values,
        "start": table.column("start_ns").to_numpy().astype(np.int64),
        "end": table.column("end_ns").to_numpy().astype(np.int64),
        "pid": table.column("pid").to_numpy().astype(np.int64),
        "tid": table.column("tid").to_numpy().astype(np.int64),
    }


def _names_counted(calls: dict, sel: np.ndarray) -> Counter:
    """The names of the calls `sel` counted, in the order each first occurs there (as a
    Counter fed one by one), by their codes: a million calls in ~20 ms, not ~0.5 s."""
    codes = calls["name_code"][sel]
    counts = np.bincount(codes, minlength=len(calls["name_values"]))
    first = np.full(counts.size, codes.size, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(codes.size))
    used = np.flatnonzero(counts)
    return Counter({calls["name_values"][c]: int(counts[c]) for c in used[np.argsort(first[used], kind="stable")]})


def _per_step(value: float, n_steps: int) -> int:
    return int(round(value / n_steps)) if n_steps else 0


def _worth_reporting(ctx: Context, impact: float) -> bool:
    return impact >= MIN_IMPACT_NS and (not ctx.step_ns or ctx.share(impact) >= MIN_SHARE_PCT)


def _step_numbers(ctx: Context, idx: np.ndarray) -> list[int]:
    steady = ctx.steady_steps
    if len(ctx.steps) <= 1 and ctx.selected_step is None or not steady:  # as _windows: the whole trace
        return [s.step for s in ctx.steps]
    return sorted({steady[i].step for i in np.unique(idx[idx >= 0]).tolist()})


def _in_list(names) -> str:
    return ", ".join("'" + n.replace("'", "''") + "'" for n in sorted(set(names)))


# -- (i) synchronisation --------------------------------------------------------------------------

def _sync_analysis(ctx, calls, roles, step_of_call, dev, busy, n_steps) -> dict:
    is_sync = ((roles == "sync") | (roles == "blocking_copy")) & (step_of_call >= 0)
    sel = np.flatnonzero(is_sync)
    origin_ops = _sync_origins(ctx, calls, sel)
    origin = [o[0] if o else None for o in origin_ops]
    after_dtoh = _after_dtoh(ctx, calls, sel)
    idle_windows = []
    idle_each = []
    measured_windows = set()
    window_lo, window_hi, measurable = _idle_after_syncs(calls["start"][sel], calls["end"][sel], dev)
    for i, lo, hi, measured in zip(sel.tolist(), window_lo.tolist(), window_hi.tolist(), measurable.tolist()):
        idle_windows.append((lo, hi))
        idle_each.append(max(0, hi - lo - intervals.covered(busy, lo, hi)) if hi > lo else 0)
        if measured:
            measured_windows.add(int(step_of_call[i]))
    if idle_windows:
        lo_a = np.array([w[0] for w in idle_windows]); hi_a = np.array([w[1] for w in idle_windows])
        idle_union = intervals.subtract(intervals.union(lo_a, hi_a), busy)
        idle_total = intervals.total(idle_union)
    else:
        idle_union = (np.empty(0, np.int64), np.empty(0, np.int64))
        idle_total = 0
    # A step whose syncs are followed by no device work at all (the trace's last step)
    # cannot show the idle they cause: average over the steps that can.
    unmeasured = len(set(step_of_call[sel].tolist()) - measured_windows)
    n_measured = max(1, n_steps - unmeasured)
    blocked_total = intervals.length(calls["start"][sel], calls["end"][sel]) if sel.size else 0
    points = _sync_points(calls, sel, _launched(calls, dev))
    by_name = _names_counted(calls, sel)
    by_origin = Counter(o[0] for o in set(origin_ops) if o)  # an op whose copy and sync both block counts once
    metrics = {
        "calls": int(sel.size),
        "calls_per_step": round(sel.size / n_steps, 3),
        "points": points, "points_per_step": round(points / n_steps, 3),
        "by_name": dict(by_name.most_common()),
        "by_origin_op": dict(by_origin.most_common()),
        "after_dtoh_copy": int(sum(after_dtoh)),
        "blocked_ns_per_step": _per_step(blocked_total, n_steps),
        "gpu_idle_caused_ns_per_step": _per_step(idle_total, n_measured),
        "steps_without_measurable_idle": unmeasured,
    }
    findings = []
    impact = idle_total / n_measured
    if sel.size and _worth_reporting(ctx, impact):
        order = np.argsort(-np.array(idle_each)) if idle_each else []
        examples = [{"event_id": int(calls["event_id"][sel[k]]), "name": calls["name"][sel[k]],
                     "start_ns": int(calls["start"][sel[k]]), "blocked_ns": int(calls["end"][sel[k]] - calls["start"][sel[k]]),
                     "gpu_idle_ns": int(idle_each[k]), "origin_op": origin[k],
                     "idle_window": list(map(int, idle_windows[k]))} for k in list(order)[:MAX_EXAMPLES]]
        def each(count: int) -> str:  # per step, as the title's headline is
            return per_step_number(count / n_steps)

        sites = Counter(site for site in call_sites(ctx.store, ctx.trace_id, calls["event_id"][sel]) if site)
        names = ", ".join(f"{n} x{each(c)}" for n, c in by_name.most_common(3))
        # The headline counts waits; calls back to back with no launch between wait once.
        waits = per_step_count(points / n_steps, "host synchronisation", "host synchronisations")
        calls_text = "" if each(sel.size) == each(points) else f"{each(sel.size)} calls: "
        origin_text = f", from {', '.join(f'{n} x{each(c)}' for n, c in by_origin.most_common(2))}" if by_origin else ""
        # From the first enclosing op on, so that the SQL shows the op around the first call too.
        lo = int(min([calls["start"][sel].min()] + [o[1] for o in origin_ops if o])); hi = int(calls["end"][sel].max())
        device, stream = _waited_lane(dev, calls, sel)
        findings.append(Finding(
            rule="host.sync_in_steady_state",
            title=(f"{waits} per step ({calls_text}{names}{origin_text}) {agreeing(waits, 'leaves', 'leave')} "
                   f"the {ctx.device_noun(device)} idle {human_ns(impact)} per step ({ctx.share(impact):.1f}% of a step)"),
            impact_ns=int(impact), share_pct=ctx.share(impact),
            scope=ctx.base_scope(device=device, stream=stream, steps=_step_numbers(ctx, step_of_call[sel])),
            evidence={"calls": int(sel.size), "calls_per_step": round(sel.size / n_steps, 3),
                      "points_per_step": metrics["points_per_step"], "by_name": dict(by_name), "by_origin_op": dict(by_origin),
                      "after_dtoh_copy": int(sum(after_dtoh)),
                      "blocked_ns_per_step": metrics["blocked_ns_per_step"],
                      "bound_ns_per_step": metrics["blocked_ns_per_step"],
                      "gpu_idle_caused_ns_per_step": int(impact), "examples": examples,
                      "by_call_site": dict(sites.most_common(MAX_EXAMPLES))},
            sql=(f"SELECT event_id, kind, name, start_ns, dur_ns, tid FROM events WHERE trace_id = {ctx.trace_id} "
                 f"AND ((kind = 'runtime' AND {_blocking_calls_sql(ctx.trace_id, calls, sel)}) "
                 f"OR (kind = 'cpu_op' AND name IN ({_in_list(SYNC_OPS)}))) "
                 f"AND start_ns >= {lo} AND start_ns <= {hi} ORDER BY start_ns"),
            recommendation=_sites_sentence(sites, each) + ctx.advice(_SYNC_ADVICE),
            impact_basis="estimate", count=points,
        ))
    return {"metrics": metrics, "findings": findings, "idle": idle_union}


def _sites_sentence(sites: Counter, each) -> str:
    """Where in the user's code the calls come from, when the trace records Python frames."""
    if not sites:
        return ""
    return "Called from " + "; ".join(f"{site} (x{each(n)})" for site, n in sites.most_common(3)) + ". "


def _blocking_calls_sql(trace_id: int, calls, sel) -> str:
    """SQL for the calls `sel`: by name where the name blocks (roles sync, blocking_copy);
    asynchronous copies that blocked as the launches of copies to pageable memory
    (classify.blocking_async_copies)."""
    names = set(calls["name"][sel].tolist())
    blocking = sorted(n for n in names if runtime_role(n) in ("sync", "blocking_copy"))
    parts = [f"name IN ({_in_list(blocking)})"] if blocking else []
    if names - set(blocking):
        launches = " ".join(PAGEABLE_DTOH_LAUNCHES.format(trace_id=int(trace_id)).split())
        parts.append(f"event_id IN ({launches})")
    return "(" + " OR ".join(parts) + ")"


def _idle_after_syncs(starts: np.ndarray, ends: np.ndarray, dev) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sync call (`starts`, `ends`): the window it leaves the GPU idle, from the end of
    the work it waited for (device activity launched before it, including its own copy) to
    the first device activity launched after it returned; and whether anything follows it
    to measure that by. All syncs at once, over the activities in launch order (per sync,
    a pass over every activity grew with steps squared)."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    if not len(dev) or starts.size == 0:
        return starts, starts.copy(), np.zeros(starts.size, bool)
    order = dev.launch_order
    launched = dev.launch_start[order]
    latest_end = np.maximum.accumulate(dev.end[order])                 # of those launched so far
    earliest_start = np.minimum.accumulate(dev.start[order][::-1])[::-1]  # of those launched from here on
    before = np.searchsorted(launched, starts, side="right")  # how many launched at or before the call
    waited_end = np.where(before > 0, latest_end[np.maximum(before - 1, 0)], starts)
    first_after = np.searchsorted(launched, ends, side="left")
    measurable = first_after < launched.size
    next_start = earliest_start[np.minimum(first_after, launched.size - 1)]
    # Nothing pending when it was called (waited_end <= start): the sync returned at once
    # and the GPU, idle already, was not kept idle by it.
    idle = measurable & (waited_end > starts)
    return (np.where(idle, waited_end, starts), np.where(idle, np.maximum(waited_end, next_start), starts),
            measurable)


def _waited_lane(dev, calls, sel) -> tuple[int | None, int | None]:
    """Device and stream whose work the syncs most often waited for (the last activity
    launched before each sync), else the busiest device."""
    lanes = Counter()
    if len(dev) and len(sel):
        # Per sync, of the activities launched at or before it, the one ending last (the
        # first of them in `dev` order on a tie): a running maximum over the activities in
        # launch order of (end, earliest position) packed in one integer.
        n = len(dev)
        order = dev.launch_order
        end_rank = np.unique(dev.end, return_inverse=True)[1].reshape(-1).astype(np.int64)
        best = np.maximum.accumulate(end_rank[order] * n + (n - 1 - order))
        before = np.searchsorted(dev.launch_start[order], calls["start"][sel], side="right")
        for k in before[before > 0].tolist():
            last = n - 1 - int(best[k - 1] % n)
            lanes[(int(dev.device[last]), int(dev.stream[last]))] += 1
    if lanes:
        device, stream = lanes.most_common(1)[0][0]
        return (device if device >= 0 else None), (stream if stream >= 0 else None)
    return _waited_device(dev), None


def _waited_device(dev, *_unused) -> int | None:
    if not len(dev):
        return None
    devices = dev.device[dev.device >= 0]
    return int(Counter(devices.tolist()).most_common(1)[0][0]) if devices.size else None


def _launched(calls, dev) -> np.ndarray:
    """Per runtime call: did it launch device work (the launches of `ctx.device_events()`)."""
    return contains(np.sort(dev.launch_id[dev.launch_id >= 0]), calls["event_id"])


def _sync_points(calls, sel: np.ndarray, launched: np.ndarray) -> int:
    """How many times the host waited: blocking calls one after another on a thread with no
    launch between them wait once, as the later ones find nothing new queued (`.item()` is
    a blocking device-to-host copy, then a stream synchronize). `sel` in start order;
    `launched`: per call, whether it launched device work."""
    if sel.size == 0:
        return 0
    thread, _ = group_codes(calls["pid"], calls["tid"])
    points = 0
    for t in np.unique(thread[sel]):
        mine = sel[thread[sel] == t]
        starts = calls["start"][launched & (thread == t)]  # in start order, as calls are
        between = (np.searchsorted(starts, calls["start"][mine[1:]], "left")
                   - np.searchsorted(starts, calls["end"][mine[:-1]], "right"))
        points += 1 + int((between > 0).sum())
    return points


def _sync_origins(ctx, calls, sel) -> list[tuple | None]:
    """The framework op (`aten::item`, ...) enclosing each sync call on its thread, as
    (name, start, pid, tid)."""
    ops = ctx.store.con.execute(f"""
        SELECT name, start_ns, end_ns, coalesce(pid, -1), coalesce(tid, -1) FROM events
        WHERE trace_id = ? AND kind = 'cpu_op' AND name IN ({_in_list(SYNC_OPS)})
    """, [ctx.trace_id]).fetchall()
    out: list[tuple | None] = [None] * len(sel)
    if not ops or not len(sel):
        return out
    names = [o[0] for o in ops]
    op_start, op_end, op_pid, op_tid = (np.array([o[k] for o in ops], dtype=np.int64) for k in (1, 2, 3, 4))
    # The first op (in the order read) around each call on its thread, a block of calls at
    # a time against every op (a Python scan of the ops per call grew with steps squared).
    block = max(1, 4_000_000 // len(ops))
    for lo in range(0, len(sel), block):
        rows = np.asarray(sel[lo:lo + block])
        s, e = calls["start"][rows][:, None], calls["end"][rows][:, None]
        pid, tid = calls["pid"][rows][:, None], calls["tid"][rows][:, None]
        around = (op_start <= s) & (e <= op_end) & (op_tid == tid) & (op_pid == pid)
        first = np.argmax(around, axis=1)
        for k, (found, j) in enumerate(zip(around[np.arange(rows.size), first].tolist(), first.tolist())):
            if found:
                out[lo + k] = (names[j], int(op_start[j]), int(op_pid[j]), int(op_tid[j]))
    return out


def _after_dtoh(ctx, calls, sel) -> list[bool]:
    """Whether the copy launched just before each sync on its thread moved data to the host."""
    rows = ctx.store.con.execute("""
        SELECT r.start_ns, coalesce(r.tid, -1) FROM links l
        JOIN events r ON r.event_id = l.src_event AND r.trace_id = l.trace_id
        JOIN copies c ON c.event_id = l.dst_event
        WHERE l.trace_id = ? AND l.kind = 'launch' AND c.direction = 'DtoH'
    """, [ctx.trace_id]).fetchall()
    by_tid: dict = {}
    for start, tid in rows:
        by_tid.setdefault(tid, []).append(start)
    dtoh_of = {tid: np.sort(np.array(starts, dtype=np.int64)) for tid, starts in by_tid.items()}
    out = []
    launch_times = {}
    for i in sel:
        tid = int(calls["tid"][i])
        dtoh = dtoh_of.get(tid)
        if dtoh is None:
            out.append(False)
            continue
        if tid not in launch_times:
            launch_times[tid] = np.sort(calls["start"][calls["tid"] == tid])
        times = launch_times[tid]
        k = np.searchsorted(dtoh, calls["start"][i], side="right") - 1
        if k < 0:
            out.append(False)
            continue
        # Nothing else launched on the thread between the DtoH copy call and this sync.
        between = np.searchsorted(times, calls["start"][i]) - np.searchsorted(times, dtoh[k], side="right")
        out.append(bool(between <= 1))
    return out


# -- (ii) pageable copies ---------------------------------------------------------------------------

def _pageable(ctx, dev, windows, host_side, n_steps) -> dict:
    rows = ctx.store.rows("""
        SELECT c.event_id, c.bytes, c.direction, c.src_memory, c.dst_memory
        FROM copies c JOIN events e USING (event_id)
        WHERE e.trace_id = ? AND (c.src_memory = 'pageable' OR c.dst_memory = 'pageable')
    """, [ctx.trace_id])
    info = {r["event_id"]: r for r in rows}
    mask = np.isin(dev.event_id, np.fromiter(info, np.int64, len(info)))
    where = _window_index(dev.anchor(host_side)[mask], windows)
    ids = dev.event_id[mask][where >= 0]
    starts, ends = dev.start[mask][where >= 0], dev.end[mask][where >= 0]
    total_ns = intervals.length(starts, ends)
    total_bytes = sum(int(info[int(e)]["bytes"] or 0) for e in ids)
    directions = Counter(info[int(e)]["direction"] for e in ids)
    metrics = {"copies": int(ids.size), "copies_per_step": round(ids.size / n_steps, 3),
               "bytes_per_step": _per_step(total_bytes, n_steps), "device_ns_per_step": _per_step(total_ns, n_steps),
               "by_direction": dict(directions), "in_trace": len(info)}
    findings = []
    impact = PAGEABLE_SAVING * total_ns / n_steps
    if ids.size and _worth_reporting(ctx, impact):
        sql_ids = ", ".join(str(int(e)) for e in ids[:50])
        copies = per_step_count(ids.size / n_steps, "copy", "copies")
        findings.append(Finding(
            rule="host.pageable_memcpy",
            title=(f"{copies} per step {agreeing(copies, 'uses', 'use')} pageable host memory "
                   f"({total_bytes / n_steps / 1e6:.2f} MB, {human_ns(total_ns / n_steps)} of copy time per step)"),
            impact_ns=int(impact), share_pct=ctx.share(impact),
            scope=ctx.base_scope(device=_waited_device(dev)),
            evidence={"copies": int(ids.size), "bytes_per_step": metrics["bytes_per_step"],
                      "device_ns_per_step": metrics["device_ns_per_step"], "by_direction": dict(directions),
                      "examples": [int(e) for e in ids[:MAX_EXAMPLES]]},
            sql=(f"SELECT event_id, name, start_ns, dur_ns, bytes, direction, src_memory, dst_memory, bytes_per_s "
                 f"FROM copies_view WHERE event_id IN ({sql_ids}) ORDER BY start_ns"),
            recommendation=ctx.advice(_PINNED_ADVICE),
            impact_basis="estimate", count=int(ids.size),
        ))
    return {"metrics": metrics, "findings": findings}


# -- (iii) allocator calls after the first step ----------------------------------------------------

def _allocator(ctx, calls, roles) -> dict:
    is_alloc = roles == "allocator"
    metrics = {"calls_in_trace": int(is_alloc.sum())}
    later = [s for s in ctx.steps[1:] if ctx.selected_step is None or s.step == ctx.selected_step]
    if len(ctx.steps) < 2 or not later:
        metrics.update(calls_after_first_step=None, note="one step: no steady state to judge")
        return {"metrics": metrics, "findings": []}
    idx = _window_index(calls["start"], [(s.start_ns, s.end_ns) for s in later])
    sel = np.flatnonzero(is_alloc & (idx >= 0))
    host_ns = intervals.length(calls["start"][sel], calls["end"][sel]) if sel.size else 0
    by_name = _names_counted(calls, sel)
    steps_hit = sorted({later[i].step for i in idx[sel].tolist()})
    metrics.update(calls_after_first_step=int(sel.size), calls_per_step=round(sel.size / len(later), 3),
                   host_ns_per_step=_per_step(host_ns, len(later)), by_name=dict(by_name), steps=len(steps_hit))
    findings = []
    impact = host_ns / len(later)
    if sel.size and _worth_reporting(ctx, impact):
        findings.append(Finding(
            rule="host.allocator_in_steady_state",
            title=(f"{sel.size} device allocator calls after the first step ({', '.join(f'{n} x{c}' for n, c in by_name.most_common(3))}) "
                   f"take {human_ns(impact)} of host time per step"),
            impact_ns=int(impact), share_pct=ctx.share(impact),
            scope=ctx.base_scope(steps=steps_hit),
            evidence={"calls": int(sel.size), "by_name": dict(by_name), "host_ns_per_step": int(impact),
                      "examples": [int(calls["event_id"][i]) for i in sel[:MAX_EXAMPLES]]},
            sql=(f"SELECT event_id, name, start_ns, dur_ns, tid FROM events WHERE trace_id = {ctx.trace_id} "
                 f"AND kind = 'runtime' AND name IN ({_in_list(by_name)}) AND start_ns >= {later[0].start_ns} "
                 f"ORDER BY start_ns"),
            recommendation=ctx.advice(_ALLOCATOR_ADVICE),
            impact_basis="bound", count=int(sel.size),
        ))
    return {"metrics": metrics, "findings": findings}


# -- (iv) CPU time between launches ------------------------------------------------------------------

def _launch_gaps(ctx, calls, step_of_call, dev) -> dict:
    is_launch = _launched(calls, dev) & (step_of_call >= 0)
    sel = np.flatnonzero(is_launch)
    if not sel.size:
        return {"launch_calls": 0}
    # Gaps between consecutive launch calls of one thread within one step (calls are in
    # time order; the stable sort by group keeps that order inside each group).
    group, _ = group_codes(calls["pid"][sel], calls["tid"][sel], step_of_call[sel])
    order = np.argsort(group, kind="stable")
    by_group, group = sel[order], group[order]
    same = group[1:] == group[:-1]
    gaps = np.maximum(calls["start"][by_group][1:] - calls["end"][by_group][:-1], 0)[same]
    durations = calls["end"][sel] - calls["start"][sel]
    n_steps = max(1, len(set(step_of_call[sel].tolist())))
    return {"launch_calls": int(sel.size), "launch_calls_per_step": round(sel.size / n_steps, 3),
            "call_ns": _dist(durations), "gap_between_launches_ns": _dist(gaps),
            "by_name": dict(_names_counted(calls, sel).most_common(8))}


def _dist(a: np.ndarray) -> dict:
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "mean": int(round(float(a.mean()))), "p50": int(np.median(a)),
            "p95": int(np.percentile(a, 95)), "max": int(a.max()), "total": int(a.sum())}


# -- (v) time before a step's first device work ------------------------------------------------------

def _step_start_gap(ctx, busy, sync_idle) -> dict:
    """GPU idle from a step's start to its first device work, less the idle a sync in
    the previous step already accounts for (host.sync_in_steady_state)."""
    steps_metrics = ctx.results.get("steps", {})
    source = steps_metrics.get("source")
    facts = {f["step"]: f for f in steps_metrics.get("steps", [])}
    if source in ("kernel_pattern", "whole_trace") or not facts:
        return {"metrics": {"applicable": False}, "findings": []}
    rows = []
    for s in ctx.steady_steps:
        f = facts.get(s.step)
        if not f or f["device_start_ns"] is None:
            continue
        lo, hi = s.start_ns, max(s.start_ns, f["device_start_ns"])
        idle = hi - lo - intervals.covered(busy, lo, hi)
        idle -= intervals.covered(sync_idle, lo, hi)
        rows.append((s.step, hi - lo, max(0, idle), lo, hi))
    if not rows:
        return {"metrics": {"applicable": False}, "findings": []}
    gap = np.array([r[1] for r in rows]); idle = np.array([r[2] for r in rows])
    metrics = {"applicable": True, "steps": len(rows), "gap_ns": _dist(gap),
               "gpu_idle_ns": _dist(idle), "note": "gpu_idle_ns excludes idle caused by syncs"}
    impact = float(idle.sum()) / len(ctx.steady_steps)
    findings = []
    # With one step the gap is the program's start-up, not a per-step cost.
    if (len(ctx.steady_steps) >= 2 and impact >= STEP_START_GAP_MIN_NS
            and ctx.share(impact) >= STEP_START_GAP_MIN_SHARE):
        worst = max(rows, key=lambda r: r[2])
        values = ", ".join(f"({r[0]}, {r[3]}, {r[4]})" for r in rows[:20])
        findings.append(Finding(
            rule="host.step_start_gap",
            title=(f"Each step waits {human_ns(np.median(gap))} (median) before its first device work; the "
                   f"{ctx.device_noun()} "
                   f"is idle {human_ns(impact)} of it per step ({ctx.share(impact):.1f}%)"),
            impact_ns=int(impact), share_pct=ctx.share(impact),
            scope=ctx.base_scope(steps=[r[0] for r in rows if r[2] > 0]),
            evidence={"gap_ns": metrics["gap_ns"], "gpu_idle_ns": metrics["gpu_idle_ns"],
                      "worst": {"step": worst[0], "gap_ns": int(worst[1]), "gpu_idle_ns": int(worst[2])}},
            sql=(f"SELECT w.step, w.step_start_ns, w.first_device_ns, w.first_device_ns - w.step_start_ns AS gap_ns, "
                 f"count(h.event_id) AS host_events_in_gap FROM (VALUES {values}) w(step, step_start_ns, first_device_ns) "
                 f"LEFT JOIN events h ON h.trace_id = {ctx.trace_id} AND h.kind IN ('cpu_op', 'python', 'annotation', 'runtime') "
                 f"AND h.start_ns >= w.step_start_ns AND h.start_ns < w.first_device_ns GROUP BY ALL ORDER BY w.step"),
            recommendation=ctx.advice(_STEP_START_ADVICE),
            impact_basis="measured", count=len(rows),
        ))
    return {"metrics": metrics, "findings": findings}
