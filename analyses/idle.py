"""Idle attribution: why is each device stream idle between two activities?

Every gap between consecutive activities on a device stream (and on the device as a
whole: idle when no stream is busy) gets exactly one cause, so the causes of a stream or
device add up to its idle time to the nanosecond. The rules, in order of precedence
(docs/analysis/idle.md has the long version):

1. `outside_step`: less than half of the gap lies inside a step window.
2. The next activity has a known launch call (a `launch` link). The gap splits into a
   host part (from the gap's start to the launch call's start) and a device part (from
   the launch call's start, or the gap's start if the call came earlier, to the activity's
   start). The larger part decides; a tie goes to the host.
   - host part larger: `sync` if the launching thread sat in a blocking synchronisation
     call that overlapped the gap, returned before the launch began and waited for device
     work (it began before the gap, or while the device was busy), else `host_bound`.
   - device part larger: `dependency` if there is evidence the activity waited on other
     work (a recorded event-wait/sync link to it, a stream-wait call or record between
     the previous launch and this one, an activity on another stream of the device that
     ended at most DEPENDENCY_WINDOW_NS before it started, or it is a communication
     kernel), else `launch_latency`.
   A device-side wait longer than any launch takes (LAUNCH_LATENCY_MAX_NS), here or in
   rule 3, is `dependency` on work the trace does not record (`unrecorded_dependency_*`).
3. No known launch (a fallback, counted per reason in the metrics): `dependency` on the
   launch-free evidence above; `launch_latency` for graph-launched kernels or when the
   trace is a graph replay (gaps inside a replay are device-side); `sync` if any host
   thread's blocking synchronisation ended inside the gap; else `host_bound` (reason
   `host_launch_in_gap` when some host thread issued a launch during the gap, otherwise
   `no_host_record`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from profkit import intervals
from profkit.classify import blocking_async_copies, runtime_call_names
from profkit.columns import group_codes, lexsort, per_value, run_starts
from profkit.findings import Finding
from profkit.graph_model import LAUNCH_LATENCY_MAX_NS
from profkit.render import short_name

from . import Context, PassResult
from .host_work import host_work
from .step_inference import NULL_ID, DeviceEvents, LaunchLinks, load_device_events, recorded_in_graph

NAME = "idle"

CAUSES = ("host_bound", "launch_latency", "sync", "dependency", "outside_step")
HOST, LATENCY, SYNC, DEPENDENCY, OUTSIDE = range(len(CAUSES))

# Device records by which a stream waits on another stream's event (the calls that make a
# stream wait are roles stream_wait and device_wait in data/runtime_calls.csv).
WAIT_RECORD_PATTERN = r"(?i)wait"
# A next activity starting this soon after another stream's activity ended is taken to
# have waited on it (when the device side of the gap dominates).
DEPENDENCY_WINDOW_NS = 10_000
# Findings: a cause must cost at least this share of a step and this much time per step.
FINDING_MIN_PCT = 2.0
FINDING_MIN_NS = 10_000
EXAMPLE_GAPS = 5
# A dependency finding's recommendation names the activity that ends its gaps when that
# activity ends at least this share of them.
ENDED_BY_MIN_PCT = 50.0
# Above this share of the time before the launches in no host event, the trace cannot say
# what the launching thread did.
UNRECORDED_HOST_PCT = 90.0

FALLBACK_REASONS = ("dependency", "graph_replay", "sync", "host_launch_in_gap", "no_host_record")


@dataclass
class Gaps:
    """Idle gaps of one lane set (streams or devices), with their cause."""
    device: np.ndarray
    stream: np.ndarray     # -1 for device-level gaps
    next_stream: np.ndarray  # stream of the activity that ends the gap
    start: np.ndarray
    end: np.ndarray
    next_event: np.ndarray
    launch_event: np.ndarray  # -1 when the next activity has no known launch
    cause: np.ndarray
    fallback: np.ndarray   # 0 = rules applied to a known launch; else 1 + FALLBACK_REASONS index
    unrecorded: np.ndarray  # dependency only because the device-side wait exceeds any launch latency
    in_graph: np.ndarray   # the next activity is a node of a graph replay
    graph_head: np.ndarray  # ... and the first of its replay (launch call)

    @property
    def dur(self) -> np.ndarray:
        return self.end - self.start


# ---------------------------------------------------------------- loading ----------
def _load_activities(store, trace_id, dev: DeviceEvents):
    """Device activities (`dev`, the context's shared load) in lane order (device, stream,
    start, end, id), with their launch (one per activity) and evidence flags."""
    order = dev.lane_order
    ids = dev.event_id[order]
    acts = {"event_id": ids, "device": dev.device[order], "stream": dev.stream[order],
            "start_ns": dev.start[order], "end_ns": dev.end[order],
            "comm": per_value(lambda c: c == "communication", dev.category_code, dev.category_values, bool)[order]}
    launch = _launches(dev.links, order, acts["start_ns"])
    acts["launch_event"] = launch["event"]
    acts["dep_link"] = np.isin(ids, store.arrow("""
        SELECT DISTINCT dst_event FROM links WHERE trace_id = ? AND kind IN ('event_wait', 'sync')
    """, [trace_id]).column("dst_event").to_numpy())
    graph_names = set(runtime_call_names(store, trace_id, "graph_launch"))
    acts["in_graph"] = (recorded_in_graph(store, ids, ("graph_id", "graph_node_id"))
                        | per_value(lambda n: n in graph_names, *launch["name"], bool))
    has_launch = acts["launch_event"] >= 0
    acts["has_launch"] = has_launch
    acts["launch_start"] = np.where(has_launch, launch["start"], 0)
    threads: dict[tuple, int] = {}
    acts["thread"] = np.full(has_launch.size, -1, dtype=np.int64)
    acts["thread"][has_launch] = _thread_codes(launch["pid"], launch["tid"], threads, has_launch)
    # A graph replay's first node: the earliest activity of its launch call. The waits before
    # the others are the graph's own edges; the wait before it, on what precedes the replay.
    acts["graph_head"] = np.zeros(has_launch.size, dtype=bool)
    nodes = np.flatnonzero(acts["in_graph"] & has_launch)
    if nodes.size:
        order = nodes[np.lexsort((acts["start_ns"][nodes], acts["launch_event"][nodes]))]
        first = np.r_[True, acts["launch_event"][order][1:] != acts["launch_event"][order][:-1]]
        acts["graph_head"][order[first]] = True
    return acts, threads


def _launches(links: LaunchLinks, order: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    """Per activity (the device events in `order`, starting at `starts`): the launch call
    linked to it (event -1 where none), its start, pid and tid (null: NULL_ID), and its
    name as (codes, values). Where several calls are linked to one activity: the latest to
    start at or before it, else the latest."""
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)  # of each device event in `order`
    at = position[links.activity]
    rows = links.one_per_activity([links.call, links.start, links.start_known & (links.start <= starts[at])])
    at = at[rows]
    n = order.size
    out = {"event": np.full(n, -1, dtype=np.int64), "start": np.zeros(n, dtype=np.int64),
           "pid": np.full(n, NULL_ID, dtype=np.int64), "tid": np.full(n, NULL_ID, dtype=np.int64)}
    out["event"][at] = links.call[rows]
    out["start"][at] = np.where(links.start_known[rows], links.start[rows], 0)
    out["pid"][at], out["tid"][at] = links.pid[rows], links.tid[rows]
    name = np.full(n, links.name_values.size - 1, dtype=np.int64)  # the last value is None
    name[at] = links.name_code[rows]
    out["name"] = (name, links.name_values)
    return out


def _thread_codes(pid: np.ndarray, tid: np.ndarray, threads: dict[tuple, int], rows=None) -> np.ndarray:
    """A code per row (of `rows`) for its (pid, tid) (nulls as NULL_ID), from `threads`,
    which numbers the pairs not yet in it: the activities and the host calls share one
    numbering."""
    if rows is not None:
        pid, tid = pid[rows], tid[rows]
    code, first = group_codes(pid, tid)
    known = [threads.setdefault((int(pid[i]), int(tid[i])), len(threads)) for i in first.tolist()]
    return np.asarray(known, dtype=np.int64)[code]


def blocking_call_names(store, trace_id) -> list[str]:
    """Names of the trace's runtime calls that block the calling thread until device work
    finishes: explicit synchronisation and synchronous copies."""
    return runtime_call_names(store, trace_id, "sync", "blocking_copy")


def _load_host(store, trace_id, threads):
    """Per host thread: launch starts, blocking sync calls, stream-wait calls."""
    # Unordered (each thread's lists are sorted below): the sort, and a join where a semi
    # join does, cost more than the rest (1M calls: 0.23-0.39 s against 0.09-0.13 s).
    rows = store.arrow("""
        SELECT * FROM (
            SELECT e.pid, e.tid, e.start_ns, e.end_ns,
                   e.event_id IN (SELECT src_event FROM links
                                  WHERE trace_id = ? AND kind = 'launch' AND src_event IS NOT NULL) AS is_launch,
                   e.kind = 'sync' OR list_contains(?, e.name) OR list_contains(?, e.event_id) AS is_sync,
                   e.kind = 'runtime' AND list_contains(?, e.name) AS is_wait
            FROM events e
            WHERE e.trace_id = ? AND e.tid IS NOT NULL AND e.kind IN ('runtime', 'sync')
        ) WHERE is_launch OR is_sync OR is_wait
    """, [trace_id, blocking_call_names(store, trace_id), blocking_async_copies(store, trace_id),
          runtime_call_names(store, trace_id, "stream_wait", "device_wait"), trace_id])
    code = _thread_codes(rows.column("pid").fill_null(NULL_ID).to_numpy(),
                         rows.column("tid").fill_null(NULL_ID).to_numpy(), threads)
    start = rows.column("start_ns").to_numpy()
    end = rows.column("end_ns").to_numpy()
    is_launch = rows.column("is_launch").to_numpy(zero_copy_only=False)
    is_sync = rows.column("is_sync").to_numpy(zero_copy_only=False)
    is_wait = rows.column("is_wait").to_numpy(zero_copy_only=False)
    host = {}
    for t in np.unique(code):
        m = code == t
        s, e = start[m], end[m]
        sync = is_sync[m]
        order = np.lexsort((s[sync], e[sync]))  # by end, then start
        host[int(t)] = {
            "launch": np.sort(s[is_launch[m]]),
            "sync_start": s[sync][order], "sync_end": e[sync][order],
            "wait": np.sort(s[is_wait[m]]),
        }
    everything = {
        "launch": np.sort(start[is_launch]),
        "sync_end": np.sort(end[is_sync]),
    }
    return host, everything


def _load_wait_records(store, trace_id):
    """Device-side wait records (e.g. Kineto `Stream Wait Event`), by (device, stream)."""
    rows = store.rows("""
        SELECT coalesce(device, -1) AS device, coalesce(stream, -1) AS stream, list(start_ns ORDER BY start_ns) AS starts
        FROM events WHERE trace_id = ? AND kind = 'sync' AND tid IS NULL AND regexp_matches(name, ?)
        GROUP BY ALL
    """, [trace_id, WAIT_RECORD_PATTERN])
    return {(r["device"], r["stream"]): np.array(r["starts"], dtype=np.int64) for r in rows}


# ---------------------------------------------------------------- gaps -------------
def _lane_gaps(lane_keys, start, end):
    """Gaps within each lane of activities sorted by (lane, start): (index of next, gap start)."""
    idx, g0 = [], []
    boundaries = np.flatnonzero(np.r_[run_starts(*lane_keys.T), True])
    for a, b in zip(boundaries[:-1], boundaries[1:]):
        running = np.maximum.accumulate(end[a:b])
        inside = np.flatnonzero(start[a + 1:b] > running[:-1])
        idx.append(a + 1 + inside)
        g0.append(running[inside])
    if not idx:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(idx).astype(np.int64), np.concatenate(g0).astype(np.int64)


def _covered(union_s, union_e, t):
    """Length of the step-window union before time t (vectorised)."""
    if union_s.size == 0:
        return np.zeros_like(t)
    cum = np.r_[0, np.cumsum(union_e - union_s)]
    i = np.searchsorted(union_s, t, side="right") - 1
    ii = np.clip(i, 0, None)
    part = np.clip(t - union_s[ii], 0, union_e[ii] - union_s[ii])
    return np.where(i >= 0, cum[ii] + part, 0)


def _count_in(sorted_values, lo, hi):
    """How many values lie in [lo, hi], per query."""
    return np.searchsorted(sorted_values, hi, side="right") - np.searchsorted(sorted_values, lo, side="left")


def classify_gaps(acts, host, everything, wait_records, steps, graph_replay, device_level, busy):
    """Find and attribute the gaps on every stream (or, with device_level, every device).
    `busy`: per device, the union of its activities (`_device_busy`)."""
    order = lexsort((acts["end_ns"], acts["start_ns"], acts["device"])) if device_level \
        else np.arange(acts["start_ns"].size)
    a = {k: v[order] for k, v in acts.items()}
    keys = a["device"][:, None] if device_level else np.stack([a["device"], a["stream"]], axis=1)
    n, g0 = _lane_gaps(keys, a["start_ns"], a["end_ns"])
    g1 = a["start_ns"][n]
    dur = g1 - g0
    has = a["has_launch"][n]
    ls = a["launch_start"][n]
    thread = a["thread"][n]
    dev, stm = a["device"][n], a["stream"][n]

    # Evidence that the next activity waited on other work, needing no launch.
    other_stream = np.zeros(n.size, bool)
    lo = np.maximum(g0, g1 - DEPENDENCY_WINDOW_NS)
    for d in np.unique(dev):
        on_dev = acts["device"] == d
        dev_ends = np.sort(acts["end_ns"][on_dev])
        for s in np.unique(stm[dev == d]):
            q = (dev == d) & (stm == s)
            same = np.sort(acts["end_ns"][on_dev & (acts["stream"] == s)])
            other_stream[q] = (_count_in(dev_ends, lo[q], g1[q]) - _count_in(same, lo[q], g1[q])) > 0
    dep_free = a["dep_link"][n] | a["comm"][n] | other_stream

    # Evidence needing the launching thread: previous launch on it, waits, syncs.
    wait_ev = np.zeros(n.size, bool)
    sync_ev = np.zeros(n.size, bool)
    prev_launch = np.full(n.size, np.iinfo(np.int64).min)
    for t in np.unique(thread[has]):
        q = has & (thread == t)
        h = host.get(int(t))
        if h is None:
            continue
        i = np.searchsorted(h["launch"], ls[q], side="left") - 1
        prev_launch[q] = np.where(i >= 0, h["launch"][np.clip(i, 0, None)], np.iinfo(np.int64).min)
        wait_ev[q] = _count_in(h["wait"], prev_launch[q] + 1, ls[q] - 1) > 0 if h["wait"].size else False
        if h["sync_end"].size:
            j = np.searchsorted(h["sync_end"], ls[q], side="right") - 1
            jj = np.clip(j, 0, None)
            began = h["sync_start"][jj]
            # ... and it waited for device work: it began before the gap did (a blocking
            # copy waits for the copy it enqueued), or while the device was busy elsewhere.
            sync_ev[q] = (j >= 0) & (h["sync_end"][jj] > g0[q]) & (began < ls[q]) \
                & ((began < g0[q]) | _busy_at(busy, dev[q], began))
    for (d, s), starts in wait_records.items():
        q = (dev == d) & (stm == s)
        if q.any():
            since = np.where(has[q] & (prev_launch[q] > np.iinfo(np.int64).min), prev_launch[q], g0[q])
            wait_ev[q] |= _count_in(starts, since, g1[q]) > 0

    host_part = np.clip(ls - g0, 0, dur)
    host_wins = host_part * 2 >= dur
    dependency = dep_free | (wait_ev & has)
    cause = np.where(host_wins, np.where(sync_ev, SYNC, HOST), np.where(dependency, DEPENDENCY, LATENCY))
    fallback = np.zeros(n.size, np.int8)

    # No known launch: best evidence, recorded as a fallback.
    un = ~has
    if un.any():
        graph = a["in_graph"][n] | graph_replay
        any_sync = _count_in(everything["sync_end"], g0 + 1, g1) > 0 if everything["sync_end"].size else np.zeros(n.size, bool)
        any_launch = _count_in(everything["launch"], g0, g1 - 1) > 0 if everything["launch"].size else np.zeros(n.size, bool)
        reason = np.select([dep_free, graph, any_sync, any_launch], [1, 2, 3, 4], default=5)
        fb_cause = np.choose(reason - 1, [DEPENDENCY, LATENCY, SYNC, HOST, HOST])
        cause = np.where(un, fb_cause, cause)
        fallback = np.where(un, reason, 0).astype(np.int8)

    # Launched in time but waited longer than a launch takes: on something not recorded.
    device_part = np.where(has, dur - host_part, dur)
    unrecorded = (cause == LATENCY) & (device_part > LAUNCH_LATENCY_MAX_NS)
    cause = np.where(unrecorded, DEPENDENCY, cause)

    if steps:
        s, e = intervals.union([st.start_ns for st in steps], [st.end_ns for st in steps])
        inside = _covered(s, e, g1) - _covered(s, e, g0)
        outside = inside * 2 < dur
        cause = np.where(outside, OUTSIDE, cause)
        fallback = np.where(outside, 0, fallback).astype(np.int8)
        unrecorded &= ~outside

    return Gaps(device=dev, stream=np.full(n.size, -1) if device_level else stm, next_stream=stm, start=g0, end=g1,
                next_event=a["event_id"][n], launch_event=a["launch_event"][n],
                cause=cause.astype(np.int8), fallback=fallback, unrecorded=unrecorded, in_graph=a["in_graph"][n],
                graph_head=a["graph_head"][n])


def _busy_at(busy: dict, devices: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Whether each device had an activity running at time t. A synchronisation call that
    began inside a gap, on an idle device, waited for nothing there: the gap is the host's
    (on the A100 AlexNet trace an 11 us cudaDeviceSynchronize 17 ms into an 824 ms gap
    made all of it `sync`)."""
    out = np.zeros(t.size, bool)
    for d in np.unique(devices):
        m = devices == d
        out[m] = intervals.containing(*busy[int(d)], t[m]) >= 0
    return out


def _device_busy(acts) -> dict:
    """Per device, the union of its activities' intervals."""
    out = {}
    for d in np.unique(acts["device"]):
        mine = acts["device"] == d
        out[int(d)] = intervals.union(acts["start_ns"][mine], acts["end_ns"][mine])
    return out


def attribute(store, trace_id, steps, graph_replay=False, dev: DeviceEvents | None = None):
    """(activities, stream-level gaps, device-level gaps) of one trace. `dev`: its device
    activities (`Context.device_events`), loaded here when not given."""
    acts, threads = _load_activities(store, trace_id, dev if dev is not None else load_device_events(store, trace_id))
    host, everything = _load_host(store, trace_id, threads)
    waits = _load_wait_records(store, trace_id)
    busy = _device_busy(acts)
    per_stream = classify_gaps(acts, host, everything, waits, steps, graph_replay, device_level=False, busy=busy)
    per_device = classify_gaps(acts, host, everything, waits, steps, graph_replay, device_level=True, busy=busy)
    return acts, per_stream, per_device


# ---------------------------------------------------------------- metrics ----------
def _summary(gaps: Gaps, mask, span_ns, busy_ns, windows):
    dur = gaps.dur[mask]
    cause = gaps.cause[mask]
    by_ns = {c: int(dur[cause == i].sum()) for i, c in enumerate(CAUSES)}
    idle = int(dur.sum())
    fb = gaps.fallback[mask]
    out = {
        "span_ns": int(span_ns), "busy_ns": int(busy_ns), "idle_ns": idle,
        "idle_pct": _pct(idle, span_ns),
        "by_cause_ns": by_ns,
        "by_cause_pct": {c: _pct(v, span_ns) for c, v in by_ns.items()},
        "gaps": int(mask.sum()),
        "gaps_by_cause": {c: int((cause == i).sum()) for i, c in enumerate(CAUSES)},
        "fallback_gaps": int((fb > 0).sum()),
        "fallback_by_reason": {r: int((fb == i + 1).sum()) for i, r in enumerate(FALLBACK_REASONS)},
        "unrecorded_dependency_gaps": int(gaps.unrecorded[mask].sum()),
        "unrecorded_dependency_ns": int(dur[gaps.unrecorded[mask]].sum()),
    }
    s0, s1 = gaps.start[mask], gaps.end[mask]
    lo = np.array([w.start_ns for w in windows], dtype=np.int64)
    hi = np.array([w.end_ns for w in windows], dtype=np.int64)
    step_idle = intervals.overlap_sums(s0, s1, lo, hi).tolist()
    step_cause = {c: intervals.overlap_sums(s0[cause == i], s1[cause == i], lo, hi).tolist()
                  for i, c in enumerate(CAUSES)}
    per_step = [{"step": w.step, "idle_ns": step_idle[k], "by_cause_ns": {c: step_cause[c][k] for c in CAUSES}}
                for k, w in enumerate(windows)]
    out["per_step"] = per_step
    # Mean and median over the steady steps; findings use the median (robust to an
    # outlier step, and comparable with ctx.step_ns, itself a median).
    for stat, fn in (("mean", np.mean), ("median", np.median)):
        out[f"steady_step_{stat}_ns"] = {
            c: int(round(fn([p["by_cause_ns"][c] for p in per_step]))) if per_step else 0 for c in CAUSES}
        out[f"steady_step_{stat}_idle_ns"] = int(round(fn([p["idle_ns"] for p in per_step]))) if per_step else 0
    return out


def _pct(part, whole) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _span_busy(acts, mask):
    s, e = intervals.union(acts["start_ns"][mask], acts["end_ns"][mask])
    if s.size == 0:
        return 0, 0
    return int(e[-1] - s[0]), intervals.total((s, e))


def run(ctx: Context) -> PassResult:
    graph_replay = bool((ctx.results.get("steps") or {}).get("graph_replay", False))
    acts, per_stream, per_device = attribute(ctx.store, ctx.trace_id, ctx.steps, graph_replay, ctx.device_events())
    windows = ctx.steady_steps
    devices_out = []
    findings: list[Finding] = []
    for d in np.unique(acts["device"]):
        on_dev = acts["device"] == d
        span, busy = _span_busy(acts, on_dev)
        dev_windows = windows or [_WholeSpan(int(acts["start_ns"][on_dev].min()), int(acts["end_ns"][on_dev].max()))]
        summary = _summary(per_device, per_device.device == d, span, busy, dev_windows)
        streams = []
        for s in np.unique(acts["stream"][on_dev]):
            on_stream = on_dev & (acts["stream"] == s)
            s_span, s_busy = _span_busy(acts, on_stream)
            mask = (per_stream.device == d) & (per_stream.stream == s)
            streams.append({"stream": int(s), **_summary(per_stream, mask, s_span, s_busy, dev_windows)})
        devices_out.append({"device": int(d), **summary, "streams": streams})
        findings += _findings(ctx, int(d), summary, streams, per_device, per_stream, dev_windows, bool(windows))
    metrics = {
        "causes": list(CAUSES),
        "graph_replay": graph_replay,
        "steady_steps": [w.step for w in windows],
        "thresholds": {"dependency_window_ns": DEPENDENCY_WINDOW_NS,
                       "launch_latency_max_ns": LAUNCH_LATENCY_MAX_NS,
                       "finding_min_pct": FINDING_MIN_PCT, "finding_min_ns": FINDING_MIN_NS},
        **_worst_device(devices_out),
        "devices": devices_out,
    }
    return PassResult(metrics=metrics, findings=findings)


def _worst_device(devices: list[dict]) -> dict:
    """Trace-level figures for budgets: the worst device's value of each (lists are not
    addressable by a budget path)."""
    if not devices:
        return {}
    return {
        "idle_pct": max(d["idle_pct"] for d in devices),
        "idle_ns_per_step": max(d["steady_step_median_idle_ns"] for d in devices),
        "by_cause_pct": {c: max(d["by_cause_pct"][c] for d in devices) for c in CAUSES},
        "by_cause_ns_per_step": {c: max(d["steady_step_median_ns"][c] for d in devices) for c in CAUSES},
    }


@dataclass
class _WholeSpan:
    """The device-activity span, standing in for a step when the trace has none."""
    start_ns: int
    end_ns: int
    step: int | None = None

    @property
    def dur_ns(self) -> int:
        return self.end_ns - self.start_ns


# ---------------------------------------------------------------- findings ---------
_TITLES = {
    "host_bound": "{dev} idles {pct:.1f}% of each step waiting on host launches",
    "launch_latency": "{dev} idles {pct:.1f}% of each step in launch latency (kernels launched in time start late)",
    "sync": "{dev} idles {pct:.1f}% of each step while the host is blocked by synchronisation",
    "dependency": "{dev} idles {pct:.1f}% of each step waiting on other streams or ranks",
}
# By cause, then by framework (Context.advice): None is the general text, in runtime terms.
_RECOMMENDATIONS = {
    "host_bound": {
        None: "The {noun} runs out of queued work because the host launches too slowly: capture the "
              "repeated launch sequence as a CUDA/HIP graph (stream capture, then one graph launch per step), "
              "fuse small kernels, and move other host work off the launching thread.",
        "pytorch": "The {noun} runs out of queued work because the host launches too slowly: capture the step "
                   "with CUDA/HIP graphs (torch.compile mode='reduce-overhead', CUDA graph capture), fuse small "
                   "kernels, and move Python and data preparation off the launching thread.",
    },
    "launch_latency": {
        None: "Kernels were enqueued in time but started late: the runtime's per-launch latency adds up "
              "over many short kernels. Fewer, larger kernels (fusion) or graph replay remove it.",
    },
    "sync": {
        None: "The host blocks in synchronisation (stream/device/event synchronize, blocking copies) and the "
              "{noun} starves until it launches again: drop the syncs from the step loop, use asynchronous "
              "copies from pinned memory and events instead.",
        "pytorch": "The host blocks in synchronisation (stream/device/event synchronize, blocking copies, .item(), "
                   ".cpu()) and the {noun} starves until it launches again: drop the syncs from the step loop, use "
                   "non_blocking copies from pinned memory and events instead.",
    },
    "dependency": {
        None: "The device waits on another stream's or rank's work: start the producer earlier, overlap "
              "independent work on other streams, and check cross-stream event waits and collectives "
              "(the communication pass shows rank skew).",
    },
}

# Dependency gaps that mostly precede nodes of graph replays: the graph's own edges, which no
# trace records, hold them.
_GRAPH_DEPENDENCY_RECOMMENDATION = (
    "The device waits inside CUDA/HIP graph replays: a node starts only when the nodes it depends on "
    "are done (a branch on another stream, a copy, memset or host node), and the trace records none of "
    "the graph's edges. Print the graph's structure (cudaGraphDebugDotPrint / hipGraphDebugDotPrint) and "
    "look for serial chains through slow or host nodes; make independent branches independent, and move "
    "host callbacks out of the graph.")


def _findings(ctx, device, summary, streams, per_device, per_stream, windows, have_steps):
    out = []
    step_ref = ctx.step_ns if have_steps and ctx.step_ns else int(np.median([w.dur_ns for w in windows]))
    for cause in ("host_bound", "launch_latency", "sync", "dependency"):
        per_step = summary["steady_step_median_ns"][cause]
        pct = _pct(per_step, step_ref)
        if per_step < FINDING_MIN_NS or pct < FINDING_MIN_PCT:
            continue
        ci = CAUSES.index(cause)
        mask = (per_device.device == device) & (per_device.cause == ci)
        top = np.argsort(-per_device.dur[mask])[:EXAMPLE_GAPS]
        examples = [{"gap_start_ns": int(per_device.start[mask][i]), "gap_end_ns": int(per_device.end[mask][i]),
                     "gap_ns": int(per_device.dur[mask][i]), "next_event": int(per_device.next_event[mask][i]),
                     "launch_event": int(per_device.launch_event[mask][i])} for i in top]
        # The stream whose activity ended most of these gaps (>= half their time) is the scope.
        by_stream: dict[int, int] = {}
        for st, du in zip(per_device.next_stream[mask].tolist(), per_device.dur[mask].tolist()):
            by_stream[st] = by_stream.get(st, 0) + du
        total = sum(by_stream.values())
        best = max(by_stream, key=by_stream.get) if by_stream else None
        main_stream = best if best is not None and by_stream[best] * 2 >= total else None
        steps = [w.step for w in windows if w.step is not None]
        # Say so in the title when most of this time was attributed without launch records.
        fallback_ns = int(per_device.dur[mask][per_device.fallback[mask] > 0].sum())
        cause_ns = int(per_device.dur[mask].sum())
        guessed = fallback_ns * 2 > cause_ns
        unrecorded_ns = int(per_device.dur[mask][per_device.unrecorded[mask]].sum())
        graph_ns = int(per_device.dur[mask][per_device.in_graph[mask]].sum())
        head_ns = int(per_device.dur[mask][per_device.in_graph[mask] & per_device.graph_head[mask]].sum())
        in_graphs = not guessed and cause == "dependency" and graph_ns * 2 > cause_ns
        inside_graphs = in_graphs and (graph_ns - head_ns) * 2 > graph_ns
        note = (" (inferred: most gaps lack launch records)" if guessed else
                " (inside graph replays, whose edges the trace does not record)" if inside_graphs else
                " (before graph replays start, on something the trace does not record)" if in_graphs else
                " (no recorded wait: the work was queued in time but started later than any launch takes)"
                if unrecorded_ns * 2 > cause_ns else "")
        recommendation = (_GRAPH_DEPENDENCY_RECOMMENDATION if inside_graphs
                          else ctx.advice(_RECOMMENDATIONS[cause]).format(noun=ctx.device_noun(device)))
        evidence_extra = {}
        if cause == "host_bound":
            work = host_work(ctx.store, ctx.trace_id, per_device.launch_event[mask], per_device.start[mask],
                             per_device.end[mask], (np.array([w.start_ns for w in windows], dtype=np.int64),
                                                    np.array([w.end_ns for w in windows], dtype=np.int64)))
            evidence_extra["host_work"] = work
            if work and not guessed:
                recommendation = _host_work_sentence(work) + " " + recommendation
        if cause == "dependency":
            ended_by = _ended_by(ctx, per_device.next_event[mask], per_device.dur[mask])
            evidence_extra["ended_by"] = ended_by
            if ended_by and ended_by[0]["share_pct"] >= ENDED_BY_MIN_PCT and not inside_graphs:
                recommendation = _ended_by_sentence(ended_by[0]) + " " + recommendation
        out.append(Finding(
            rule=f"idle.{cause}",
            title=_TITLES[cause].format(dev=ctx.device_label(device), pct=pct) + note,
            impact_ns=per_step,
            share_pct=ctx.share(per_step) if ctx.step_ns else pct,
            scope=ctx.base_scope(device=device, stream=main_stream, steps=steps),
            evidence={
                "idle_ns_per_step": summary["steady_step_median_idle_ns"], f"{cause}_ns_per_step": per_step,
                "step_ns": step_ref, "gaps": summary["gaps_by_cause"][cause],
                "fallback_gaps": int((per_device.fallback[mask] > 0).sum()), "fallback_ns": fallback_ns,
                "inferred": guessed, "unrecorded_dependency_ns": unrecorded_ns, "graph_replay_ns": graph_ns,
                "before_graph_replays_ns": head_ns,
                "by_next_stream_ns": {str(k): int(v) for k, v in sorted(by_stream.items(), key=lambda kv: -kv[1])},
                "example_gaps": examples, **evidence_extra,
            },
            sql=_gap_sql(ctx.trace_id, device),
            recommendation=recommendation,
            impact_basis="bound",
            count=summary["gaps_by_cause"][cause],
        ))
    return out


def _ended_by(ctx, next_events: np.ndarray, durs: np.ndarray, top: int = 3) -> list[dict]:
    """The activities whose start ends these gaps, by name, largest share of the gap time
    first: what the device waited to run (the awaited work is what that activity's stream
    or its peers waited on)."""
    if next_events.size == 0:
        return []
    with ctx.store.registered(pa.table({"event_id": next_events, "dur": durs})) as gaps:
        rows = ctx.store.rows(f"""
            SELECT g.dur, e.name, e.category, e.stream
            FROM {gaps} g JOIN events e ON e.event_id = g.event_id AND e.trace_id = ?
        """, [ctx.trace_id])
    total = int(durs.sum())
    by_name: dict[str, dict] = {}
    for r in rows:
        entry = by_name.setdefault(r["name"] or "(unnamed)", {
            "name": r["name"] or "(unnamed)", "category": r["category"], "gaps": 0, "gap_ns": 0, "streams": {}})
        entry["gaps"] += 1
        entry["gap_ns"] += r["dur"]
        entry["streams"][r["stream"]] = entry["streams"].get(r["stream"], 0) + r["dur"]
    ranked = sorted(by_name.values(), key=lambda x: -x["gap_ns"])[:top]
    for entry in ranked:
        entry["share_pct"] = round(100.0 * entry["gap_ns"] / total, 1) if total else 0.0
        entry["streams"] = [s for s, _ in sorted(entry["streams"].items(), key=lambda kv: -kv[1])]
    return ranked


def _host_work_sentence(work: dict) -> str:
    top = work["by_event"][0]
    if top["kind"] is None and top["share_pct"] >= UNRECORDED_HOST_PCT:
        return (f"The trace records no host event on the launching thread for {top['share_pct']:.0f}% of the time "
                "before these launches: record host activity (the profiler's CPU activity with Python stacks, "
                "NVTX or roctx ranges) to see what it does.")
    parts = [f"{e['name'] if e['kind'] is None else short_name(e['name'], 60)} {e['share_pct']:.0f}%"
             for e in work["by_event"][:3] if e["share_pct"] >= 1]
    return f"Before these launches the launching thread is in {', '.join(parts)} of the time (innermost host event)."


def _ended_by_sentence(entry: dict) -> str:
    streams = entry["streams"]
    where = f"stream {streams[0]}" if len(streams) == 1 else f"streams {', '.join(map(str, streams[:3]))}"
    # A collective kernel starts when its stream reaches it; late peers make it long, not late.
    kind = ", a collective (late peers lengthen it; they do not delay its start)" \
        if entry["category"] == "communication" else ""
    return (f"{entry['share_pct']:.0f}% of this idle time ends when {short_name(entry['name'])} starts on "
            f"{where}{kind}: look at what that stream waits on before it.")


def _gap_sql(trace_id: int, device: int) -> str:
    """Device-level idle gaps, largest first, with the next activity's launch call."""
    return (
        "WITH a AS (SELECT event_id, stream, name, start_ns, max(end_ns) OVER (PARTITION BY device "
        "ORDER BY start_ns, end_ns ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS gap_start_ns "
        f"FROM device_events WHERE trace_id = {trace_id} AND coalesce(device, -1) = {device}) "
        "SELECT a.gap_start_ns, a.start_ns AS gap_end_ns, a.start_ns - a.gap_start_ns AS gap_ns, "
        "a.event_id AS next_event, a.stream, a.name AS next_name, l.runtime_name, l.launch_start_ns, "
        "l.launch_start_ns - a.gap_start_ns AS launch_after_gap_start_ns "
        "FROM a LEFT JOIN launches l ON l.device_event = a.event_id "
        "WHERE a.start_ns > a.gap_start_ns ORDER BY gap_ns DESC LIMIT 20"
    )
