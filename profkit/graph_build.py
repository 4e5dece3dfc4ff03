"""The dependency graph of one or more traces, built from the store as arrays.

Vertices are the start and end points of timed intervals (host events on each thread,
device activities on each stream), plus one virtual vertex per cross-rank collective
instance. Edges say "could not happen before" and carry a minimal latency (ns):

- duration: a device activity's start -> its end (its measured duration);
- host: consecutive points on one host thread (host time between them is work, never
  latency: a thread is sequential, so the chain is its program order);
- launch: a runtime call's start -> the device activity it enqueued (by correlation);
- stream: consecutive activities on one stream;
- sync: the device activity a blocking call waited for -> the end of that call;
- event_wait: the activity an event recorded -> the next activity on the waiting stream;
- collective: every rank's arrival -> the instance's join vertex -> every rank's end
  (the transfer time, which is the last arriver's kernel duration).

Times are on the store's common clock (`traces.clock_offset_ns` added). Everything is
numpy arrays; `profkit.graph.to_networkx` turns a graph into a networkx DiGraph for users.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .columns import dictionary_codes, group_codes, lexsort, per_value, positions, run_starts
from .store import Store

from .graph_model import (CLS, has_role, is_one_of, DEVICE_KINDS, E_DURATION, E_LAUNCH, E_STREAM, HOST_KINDS,
                          LAUNCH_LATENCY_MAX_NS, SERIAL_DEVICE_MIN_SWITCHES, STREAM_GAP_MAX_NS, AWAITED_SCAN)
from .graph_host import HostEdges
from .graph_waits import WaitEdges


# The dtype of each of _Builder.add's edge columns (src, dst, weight, ekind, ecls, eevent,
# sync_min, gap_trim, exposed).
_EDGE_DTYPES = (np.int64, np.int64, np.int64, np.int8, np.int8, np.int64, np.int64, np.int64, np.int8)


@dataclass
class Graph:
    """Arrays describing the graph; index `i` of the event arrays is event `i` of the graph
    (vertices 2i and 2i+1 are its start and end); virtual vertices come after 2*n_events."""
    # events
    event_id: np.ndarray
    trace_id: np.ndarray
    kind: np.ndarray            # object array of kind names
    name: np.ndarray            # object array
    name_code: np.ndarray       # name as a code into name_values (for grouping by name)
    name_values: np.ndarray     # object array of the distinct names (last: None)
    category: np.ndarray        # object array (None for host events)
    category_code: np.ndarray   # category as a code into category_values
    category_values: np.ndarray
    start: np.ndarray           # common clock
    end: np.ndarray
    is_device: np.ndarray
    device: np.ndarray          # the activity's device (-1 for host events and an unknown device)
    launch_time: np.ndarray     # device: start of the launching call (else own start); host: start
    # vertices
    vtime: np.ndarray
    vevent: np.ndarray          # event index, -1 for virtual vertices
    order: np.ndarray           # vertex ids in topological order
    pos: np.ndarray             # position of each vertex in `order`
    # edges (sorted by the position of their destination)
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    ekind: np.ndarray
    ecls: np.ndarray
    eevent: np.ndarray          # event the edge's time is attributed to (-1 none)
    # per-edge what-if hooks
    sync_min: np.ndarray        # host edges inside blocked sync calls: their cost without the wait (else -1)
    gap_trim: np.ndarray        # host gap edges after a step's first launch: weight when trimmed (else -1)
    exposed: np.ndarray         # collective edges: 1 when compute waited on the instance (else 0)
    traces: list = field(default_factory=list)  # rows: trace_id, rank, clock_offset_ns
    stats: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict, repr=False)  # results derived once per graph (the base replay)

    @property
    def n_events(self) -> int:
        return int(self.event_id.size)

    @property
    def n_vertices(self) -> int:
        return int(self.vtime.size)

    @property
    def n_edges(self) -> int:
        return int(self.src.size)


def build_graph(store: Store, trace_ids: list[int] | None = None) -> Graph:
    """The dependency graph of the given traces (all by default), across ranks."""
    if trace_ids is None:
        trace_ids = store.trace_ids()
    traces = store.rows(f"""
        SELECT trace_id, rank, coalesce(clock_offset_ns, 0) AS clock_offset_ns FROM traces
        WHERE trace_id IN ({",".join(str(int(t)) for t in trace_ids) or "NULL"}) ORDER BY trace_id
    """)
    ev = _load_events(store, trace_ids, {t["trace_id"]: t["clock_offset_ns"] for t in traces})
    b = _Builder(store, traces, ev)
    return b.build()


def _load_events(store: Store, trace_ids: list[int], clock_offsets: dict[int, int]) -> dict[str, np.ndarray]:
    ids = ",".join(str(int(t)) for t in trace_ids) or "NULL"
    # No ORDER BY and no lane filter in SQL: both are cheaper on the arrays (1M-event tile:
    # 0.61 -> 0.34 CPU-s for the query). No join either (the clock offsets are added
    # below): a plain scan returns rows in the order they were stored, usually id order,
    # which spares re-ordering every column (2M rocprofv3 events: 0.2-0.4 s).
    table = store.arrow(f"""
        SELECT e.event_id, e.trace_id, e.kind, e.name, e.category, e.start_ns AS start,
               e.dur_ns AS dur, e.pid, e.tid, e.device, e.stream, e.parent_id, coalesce(e.depth, 0) AS depth,
               e.correlation
        FROM events e
        WHERE e.trace_id IN ({ids}) AND e.dur_ns >= 0 AND e.start_ns IS NOT NULL
          AND ((e.kind IN {HOST_KINDS} AND e.tid IS NOT NULL) OR (e.kind IN {DEVICE_KINDS} AND e.tid IS NULL))
    """)
    out = {}
    for name in table.column_names:
        col = table.column(name)
        if name in ("kind", "name", "category"):
            # Few distinct strings: decode each once (codes + values); rows index them below.
            out[name + "_code"], out[name + "_values"] = dictionary_codes(col)
        else:
            out[name] = col.to_numpy(zero_copy_only=False) if col.null_count == 0 else \
                np.asarray(col.fill_null(-1).to_numpy(), dtype=np.int64)
            if name in ("parent_id", "device", "stream", "pid", "tid", "correlation") and col.null_count:
                out[name + "_null"] = np.asarray(col.is_null().to_numpy(zero_copy_only=False))
    for name in ("event_id", "trace_id", "start", "dur", "pid", "tid", "device", "stream", "parent_id", "depth"):
        out[name] = np.asarray(out[name], dtype=np.int64)
    if any(clock_offsets.values()) and out["trace_id"].size:
        offset_of = np.zeros(int(out["trace_id"].max()) + 1, np.int64)
        for trace_id, offset in clock_offsets.items():
            if trace_id < offset_of.size:
                offset_of[trace_id] = offset
        out["start"] = out["start"] + offset_of[out["trace_id"]]
    keep, lane = _program_lanes(out)
    eid = out["event_id"]
    in_order = eid.size < 2 or bool((eid[1:] > eid[:-1]).all())
    if in_order:
        rows = keep
    else:
        by_id = np.argsort(eid, kind="stable")
        rows = by_id[keep[by_id]]
    if not (in_order and keep.all()):
        out = {k: v if k.endswith("_values") else v[rows] for k, v in out.items()}
    # The lanes are the graph's threads (_thread_codes), numbered again over the rows kept,
    # unless a pid is negative: NULL pids (-1 in `pid`) then might not sort as they do here.
    recorded_pids = out["pid"][~out["pid_null"]] if "pid_null" in out else out["pid"]
    if lane is not None and not (recorded_pids < 0).any():
        out["thread"] = _renumbered(lane[rows])
    for name in ("kind", "name", "category"):
        out[name] = out[name + "_values"][out[name + "_code"]]
    return out


def _program_lanes(ev: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows to keep: device activities, and host events on lanes (trace, pid, tid) with
    an op, Python frame or runtime call. Lanes holding nothing but annotations (the
    profiler's own spans and markers) are left out: they are not program order of anything.
    Also each row's lane code (group_codes; None where every row is a device activity)."""
    device = is_one_of(ev, "kind", DEVICE_KINDS)
    program = is_one_of(ev, "kind", ("cpu_op", "python", "runtime"))
    if device.all():
        return device, None
    # NULL pids form lanes of their own (the SQL this replaces compared them as equal too).
    pid = np.where(ev.get("pid_null", np.zeros(device.size, bool)), np.iinfo(np.int64).min, ev["pid"])
    lane, _ = group_codes(ev["trace_id"], pid, ev["tid"])
    has_program = np.bincount(lane, weights=program, minlength=int(lane.max()) + 1) > 0
    return device | has_program[lane], lane


def _renumbered(codes: np.ndarray) -> np.ndarray:
    """Codes numbered 0.. again, in the same order, over those still present."""
    present = np.zeros(int(codes.max()) + 1 if codes.size else 0, dtype=bool)
    present[codes] = True
    return (np.cumsum(present) - 1)[codes]


def _thread_codes(ev: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A small integer per (trace, pid, tid) for every event (device events get their own
    lanes' values, unused), and the trace of each code. Where _load_events kept the lane
    codes it grouped the rows by (the same keys, NULL pids apart), they are used: a second
    grouping took 0.3 s at 3.5M events."""
    code = ev.get("thread")
    if code is None:
        code, first = group_codes(ev["trace_id"], ev["pid"], ev["tid"])
        return code, ev["trace_id"][first]
    one_row = np.zeros(int(code.max()) + 1 if code.size else 0, dtype=np.int64)
    one_row[code] = np.arange(code.size)  # any row of a code: they all have its trace
    return code, ev["trace_id"][one_row]


def _id_table(event_ids: np.ndarray) -> np.ndarray:
    """Index by (event id - first id), -1 for ids not in the graph; empty when the sorted
    ids are too sparse for a table to pay (over 4 slots per event). Kineto stores leave
    ~2.8 ids per graph event (ids are handed out per batch, annotations are not in the
    graph): a 4-byte slot each still costs less than the 8-byte id array itself, and a
    lookup is one gather instead of a binary search."""
    if event_ids.size == 0 or event_ids[-1] - event_ids[0] >= 4 * event_ids.size:
        return np.empty(0, dtype=np.int32)
    table = np.full(int(event_ids[-1] - event_ids[0]) + 1, -1,
                    dtype=np.int32 if event_ids.size < 2 ** 31 else np.int64)
    table[event_ids - event_ids[0]] = np.arange(event_ids.size)
    return table


class _Builder(WaitEdges, HostEdges):
    def __init__(self, store: Store, traces: list[dict], ev: dict[str, np.ndarray]):
        self.store, self.traces, self.ev = store, traces, ev
        self._id_table = _id_table(ev["event_id"])
        self.n = ev["event_id"].size
        self.edges: list[tuple] = []   # (src, dst, weight, kind, cls, event, sync_min, gap_trim, exposed) arrays
        self.stats: dict[str, int] = {}
        self.is_device = is_one_of(ev, "kind", DEVICE_KINDS)
        self.start = ev["start"]
        self.end = ev["start"] + ev["dur"]
        self.launch_time = self.start.copy()
        self.launcher = np.full(self.n, -1, dtype=np.int64)
        self.extra_vertices: list[int] = []   # times of virtual vertices
        self.dropped_duration = np.zeros(self.n, dtype=bool)
        self.thread, self.thread_trace = _thread_codes(ev)

    # -- helpers ---------------------------------------------------------------
    def idx(self, event_ids) -> np.ndarray:
        """Graph index of store event ids (-1 where the event is not in the graph)."""
        ids = np.asarray(event_ids, dtype=np.int64)
        if self._id_table.size:
            # Ids are nearly dense: a table lookup instead of a binary search per id.
            first = self.ev["event_id"][0]
            at = ids - first
            inside = (at >= 0) & (at < self._id_table.size)
            return np.where(inside, self._id_table[np.where(inside, at, 0)], -1).astype(np.int64, copy=False)
        return positions(self.ev["event_id"], ids)

    def add(self, src, dst, weight, kind, cls, event, sync_min=None, gap_trim=None, exposed=0):
        """Edges from per-edge arrays or scalars. Arrays of the right dtype are kept, not
        copied (the host chain's columns are 48 MB each at 5M events): callers pass arrays
        they do not change afterwards."""
        src = np.asarray(src, dtype=np.int64)
        m = src.size
        if m == 0:
            return

        def full(v, d=-1, dtype=np.int64):
            if v is None:
                return np.full(m, d, dtype=dtype)
            v = np.asarray(v, dtype=dtype)
            return v if v.shape == (m,) else np.full(m, v, dtype=dtype)
        # Kinds, classes and the exposed flag are small codes: one byte an edge, not eight.
        self.edges.append((src, np.asarray(dst, dtype=np.int64), np.asarray(weight, dtype=np.int64),
                           full(kind, dtype=np.int8), full(cls, dtype=np.int8), full(event), full(sync_min),
                           full(gap_trim), full(exposed, dtype=np.int8)))

    # -- the graph -------------------------------------------------------------
    def build(self) -> Graph:
        self._launches()
        self._device_lanes()
        self._event_waits()
        self._collectives()
        self._device_edges()
        self._host_chains_and_syncs()
        return self._finish()

    def _launches(self):
        ids = ",".join(str(int(t["trace_id"])) for t in self.traces) or "NULL"
        rows = self.store.arrow(f"""
            SELECT src_event, dst_event FROM links WHERE kind = 'launch' AND trace_id IN ({ids})
        """)
        src = self.idx(rows.column("src_event").to_numpy())
        dst = self.idx(rows.column("dst_event").to_numpy())
        ok = (src >= 0) & (dst >= 0)
        src, dst = src[ok], dst[ok]
        ok = self.is_device[dst] & ~self.is_device[src]
        src, dst = src[ok], dst[ok]
        self.launcher[dst] = src
        self.launch_time[dst] = self.start[src]
        self.launch_src, self.launch_dst = src, dst
        self._launch_times_from_correlation()

    def _launch_times_from_correlation(self):
        """A device activity whose launch call is not in the trace (made before the capture
        began, or not recorded) was launched before every recorded runtime call with a larger
        correlation id: the ids number a process's runtime calls as they are made (CUPTI,
        roctracer). Its launch time is taken as just before the earliest of those calls where
        that is before its start; a sync's awaited activity is chosen by launch time. On the
        H100 Qwen trace a cudaDeviceSynchronize waited 14 ms for 509 kernels queued before the
        capture; by their start they seemed launched after it, and the sync seemed to wait for
        a kernel that ended 14 ms before it returned (29% of the path "sync")."""
        ev = self.ev
        corr = ev["correlation"]
        known = ~ev["correlation_null"] if "correlation_null" in ev else np.ones(self.n, dtype=bool)
        orphans = np.flatnonzero(self.is_device & (self.launcher < 0) & known)
        calls = np.flatnonzero(is_one_of(ev, "kind", ("runtime",)) & known)
        moved = 0
        for tid in np.unique(ev["trace_id"][orphans]).tolist():
            c = calls[ev["trace_id"][calls] == tid]
            o = orphans[ev["trace_id"][orphans] == tid]
            if c.size == 0:
                continue
            c = c[np.argsort(corr[c], kind="stable")]
            # The earliest start among the calls with an id at least this one's.
            earliest = np.minimum.accumulate(self.start[c][::-1])[::-1]
            k = np.searchsorted(corr[c], corr[o], side="right")
            o, k = o[k < c.size], k[k < c.size]
            bound = earliest[k] - 1
            earlier = bound < self.launch_time[o]
            self.launch_time[o[earlier]] = bound[earlier]
            moved += int(earlier.sum())
        self.stats["launch_times_from_correlation"] = moved

    def _device_lanes(self):
        """Device activities per (trace, device, stream), sorted by start; and per lane the
        activities in launch order with a running max of their ends (what a sync waits for)."""
        ev = self.ev
        dev = np.flatnonzero(self.is_device)
        order = lexsort((self.end[dev], self.start[dev], ev["stream"][dev], ev["device"][dev], ev["trace_id"][dev]))
        self.dev_sorted = s = dev[order]
        # Where each stream's run starts (the stream edges in _device_edges use it too).
        self.lane_start = run_starts(ev["trace_id"][s], ev["device"][s], ev["stream"][s])
        self.lanes: dict[tuple, dict] = {}
        if s.size:
            bounds = np.append(np.flatnonzero(self.lane_start), s.size)
            for a, z in zip(bounds[:-1], bounds[1:]):
                members = self.dev_sorted[a:z]
                by_launch = members[np.argsort(self.launch_time[members], kind="stable")]
                ends = self.end[by_launch]
                run = np.maximum.accumulate(ends)
                # Where the running max is reached, the latest such activity (ties: the later one).
                arg = np.maximum.accumulate(np.where(ends == run, np.arange(ends.size), 0))
                first = s[a]
                self.lanes[(int(ev["trace_id"][first]), int(ev["device"][first]), int(ev["stream"][first]))] = {
                    "members": members, "by_launch": by_launch, "ltime": self.launch_time[by_launch],
                    "runmax": run, "runarg": by_launch[arg]}
        self.lane_of = {}
        for key, lane in self.lanes.items():
            self.lane_of.setdefault(key[0], []).append(key)
        self.waiting_start = np.full(self.n, np.iinfo(np.int64).min, dtype=np.int64)  # event-wait pred end

    def awaited(self, lane_keys, cutoff: int, not_after: int | None, skew: int = 0) -> int:
        """The activity with the latest end among those launched before `cutoff` on the
        lanes (that ended by `not_after`, if given): what a sync on those lanes waits for.
        Where an activity launched before `cutoff` ended after `not_after`, the lane is
        skipped (the sync did not wait for it), unless by at most `skew` (device and host
        clocks disagree): then its latest end by `not_after` among its last AWAITED_SCAN launches."""
        best, best_end = -1, None
        for key in lane_keys:
            lane = self.lanes.get(key)
            if lane is None:
                continue
            k = int(np.searchsorted(lane["ltime"], cutoff, side="left")) - 1
            if k < 0:
                continue
            end, arg = int(lane["runmax"][k]), int(lane["runarg"][k])
            if not_after is not None and end > not_after:
                if end > not_after + skew:
                    continue
                tail = lane["by_launch"][max(0, k + 1 - AWAITED_SCAN):k + 1]
                ends = np.where(self.end[tail] <= not_after, self.end[tail], np.iinfo(np.int64).min)
                if ends.size == 0 or ends.max() == np.iinfo(np.int64).min:
                    continue
                at = int(np.flatnonzero(ends == ends.max())[-1])
                end, arg = int(ends[at]), int(tail[at])
            if best_end is None or end > best_end:
                best, best_end = arg, end
        return best

    def next_on_lane(self, key, after: int) -> int:
        lane = self.lanes.get(key)
        if lane is None:
            return -1
        k = int(np.searchsorted(lane["ltime"], after, side="left"))
        return int(lane["by_launch"][k]) if k < lane["by_launch"].size else -1

    def _device_edges(self):
        ev = self.ev
        dev = np.flatnonzero(self.is_device & ~self.dropped_duration)
        cls = per_value(lambda c: CLS["communication"] if c == "communication" else
                        CLS.get(f"compute.{c}", CLS["compute.other"]),
                        ev["category_code"][dev], ev["category_values"], np.int64)
        self.add(2 * dev, 2 * dev + 1, self.end[dev] - self.start[dev], E_DURATION, cls, dev)
        cls_of = np.full(self.n, CLS["compute.other"], dtype=np.int64)
        cls_of[dev] = cls
        follows, first_delta = self._launch_followers()
        held = self._serial_device_edges(cls_of)
        held |= self._synchronous_copy_edges(held)
        # stream order
        s = self.dev_sorted
        if s.size > 1:
            same = ~self.lane_start[1:]
            prev, nxt = s[:-1][same], s[1:][same]
            gap = self.start[nxt] - self.end[prev]
            ok = gap >= 0
            self.stats["stream_overlaps"] = int((~ok).sum())
            # An activity that starts before the previous one on its stream ends (programmatic
            # dependent launch on Hopper and Blackwell, or clocks a few ns apart) still follows
            # it: start -> start, the observed offset, which is the previous activity's running
            # time (its class; speedups scale it). Without an edge the stream falls apart into
            # independent chains, and a what-if could run them all at once (a B200 step of
            # 11.7 ms of kernels on one stream replayed in 0.7 ms with host time removed).
            over_prev, over_next = prev[~ok], nxt[~ok]
            self.add(2 * over_prev, 2 * over_next, self.start[over_next] - self.start[over_prev], E_STREAM,
                     cls_of[over_prev], over_prev)
            prev, nxt, gap = prev[ok], nxt[ok], gap[ok]
            short = gap <= STREAM_GAP_MAX_NS
            # A longer gap before an activity that was already enqueued when the one ahead
            # of it ended (a graph launch's follower, or launched before that end) is a wait
            # for something the trace does not record: device-side dispatch, or a dependency
            # with no event wait. It is kept whole on the stream edge, as `wait`. A collective
            # too: its wait for the other ranks has edges of its own, after its start, and
            # without this a SendRecv 2.3 us behind the kernel ahead of it was pinned by its
            # launch 9.5 ms earlier (a two-rank Nsight report: 3.9 ms of "wait" per step).
            # As a launch latency it put the whole queueing time on the critical path as
            # launch (SGLang's decode step: an argmax launched 8.26 ms before it ran, behind a
            # graph replay, made the path 82% launch) and pinned the activity, so that no
            # faster kernel ahead of it could move it.
            enqueued = follows[nxt] | ((self.launcher[nxt] >= 0) & (self.launch_time[nxt] < self.end[prev]))
            queued = ~short & enqueued & ~held[nxt] & (self.waiting_start[nxt] == np.iinfo(np.int64).min)
            # A wait is the waiting activity's (as a launch's wait is); a gap, the one before it's.
            self.add(2 * prev + 1, 2 * nxt, np.where(short | queued, gap, 0), E_STREAM,
                     np.where(queued, CLS["wait"], CLS["idle"]), np.where(queued, nxt, prev))
            self.stats["queued_waits"] = int(queued.sum())
            blocked = np.zeros(self.n, dtype=bool)
            blocked[nxt[short | queued]] = True
            blocked[over_next] = True  # held by the stream, as a short gap is
        else:
            blocked = np.zeros(self.n, dtype=bool)
        blocked |= held
        waited = self.waiting_start > np.iinfo(np.int64).min
        blocked[waited] |= self.start[waited] - self.waiting_start[waited] <= STREAM_GAP_MAX_NS
        # launch: measured latency where the stream did not hold the activity back, else
        # the trace's median unblocked latency (never more than was observed)
        src, dst = self.launch_src, self.launch_dst
        delta = self.start[dst] - self.start[src]
        ok = delta >= 0
        self.stats["launch_before_call"] = int((~ok).sum())
        src, dst, delta = src[ok], dst[ok], delta[ok]
        free = ~blocked[dst]
        median = int(np.median(delta[free])) if free.any() else 0
        weight = np.where(free, delta, np.minimum(delta, median))
        # A follower is released with its call's first activity on the stream, not later.
        first = first_delta[dst]
        weight = np.where(follows[dst] & (first >= 0), np.minimum(weight, first), weight)
        # A "latency" longer than any launch takes is a wait for something the trace does not
        # record (vLLM's decode capture: its first copy ran 7.8 ms after its call, behind
        # device work from before the capture, which made 39% of the step's path "launch").
        self.add(2 * src, 2 * dst, weight, E_LAUNCH,
                 np.where(weight > LAUNCH_LATENCY_MAX_NS, CLS["wait"], CLS["launch"]), dst)
        self.stats["launches"] = int(src.size)
        self.stats["median_launch_latency_ns"] = median
        self.stats["device_without_launch"] = int((self.is_device & (self.launcher < 0)).sum())

    def _serial_device_edges(self, cls_of: np.ndarray) -> np.ndarray:
        """Device order on devices that ran one compute kernel at a time: where a device's
        compute kernels (not communication, not copies) on several streams never overlapped
        (at least SERIAL_DEVICE_MIN_SWITCHES times a kernel followed one of another stream),
        each follows the one before it on the device, whatever its stream: end -> start, the
        gap if at most 2 us, as a stream's. Without them the replay let streams that took
        turns run at once: the MTIA trace's 12 streams, kernels never two at once, gave a
        critical path of host 70%, compute 0% on a device 95% busy. Returns per event
        whether such an edge holds it (its gap is short)."""
        ev = self.ev
        held = np.zeros(self.n, dtype=bool)
        kern = np.flatnonzero(is_one_of(ev, "kind", ("kernel",)) & self.is_device & ~self.dropped_duration
                              & (cls_of != CLS["communication"]))
        if kern.size < 2:
            return held
        kern = kern[lexsort((self.end[kern], self.start[kern], ev["device"][kern], ev["trace_id"][kern]))]
        bounds = np.r_[np.flatnonzero(run_starts(ev["trace_id"][kern], ev["device"][kern])), kern.size]
        prev_all, next_all = [], []
        for a, z in zip(bounds[:-1], bounds[1:]):
            k = kern[a:z]
            switches = ev["stream"][k[1:]] != ev["stream"][k[:-1]]
            if switches.sum() < SERIAL_DEVICE_MIN_SWITCHES:
                continue
            if (self.start[k[1:]] < np.maximum.accumulate(self.end[k[:-1]])).any():
                continue  # two kernels ran at once: streams can overlap here
            prev_all.append(k[:-1][switches])
            next_all.append(k[1:][switches])
        self.stats["serial_devices"] = len(prev_all)
        if not prev_all:
            return held
        prev, nxt = np.concatenate(prev_all), np.concatenate(next_all)
        gap = self.start[nxt] - self.end[prev]
        short = gap <= STREAM_GAP_MAX_NS
        self.add(2 * prev + 1, 2 * nxt, np.where(short, gap, 0), E_STREAM, CLS["idle"], prev)
        held[nxt[short]] = True
        return held

    def _synchronous_copy_edges(self, held_already: np.ndarray) -> np.ndarray:
        """A copy made by a synchronous copy call (cudaMemcpy, hipMemcpy: the legacy default
        stream; on AMD it may be a copy kernel) starts after the device's earlier work, whatever
        its stream. Where such a copy did not wait on its own stream and starts at most
        LAUNCH_LATENCY_MAX_NS after the end of the latest activity launched before its call on
        another stream of its device, that activity's end -> the copy's start, the gap, as a
        stream edge (a copy engine takes microseconds to start: 5 us on rocprof v1's MI300X).
        Without it, rocprof v1 (copies and kernels on different lanes) had a 332 s kernel off
        the critical path and the copy after it "waiting" 332 s on its launch. Returns per
        event whether such an edge holds it."""
        ev = self.ev
        held = np.zeros(self.n, dtype=bool)
        src, dst = self.launch_src, self.launch_dst
        self.stats["synchronous_copy_waits"] = 0
        if src.size == 0:
            return held
        # Held by its own stream: it follows the activity before it there closely (or overlaps it).
        s = self.dev_sorted
        same = ~self.lane_start[1:]
        close = np.zeros(self.n, dtype=bool)
        close[s[1:][same]] = self.start[s[1:][same]] - self.end[s[:-1][same]] <= STREAM_GAP_MAX_NS
        m = has_role(ev, src, "blocking_copy") & ~held_already[dst] & ~close[dst]
        prev_all, next_all = [], []
        for d in dst[m].tolist():
            key = (int(ev["trace_id"][d]), int(ev["device"][d]), int(ev["stream"][d]))
            others = [k for k in self.lane_of.get(key[0], []) if k[1] == key[1] and k != key]
            p = self.awaited(others, int(self.launch_time[d]), int(self.start[d]))
            if p >= 0 and self.start[d] - self.end[p] <= LAUNCH_LATENCY_MAX_NS:
                prev_all.append(p)
                next_all.append(d)
        self.stats["synchronous_copy_waits"] = len(next_all)
        if next_all:
            prev, nxt = np.array(prev_all, dtype=np.int64), np.array(next_all, dtype=np.int64)
            self.add(2 * prev + 1, 2 * nxt, self.start[nxt] - self.end[prev], E_STREAM, CLS["idle"], prev)
            held[nxt] = True
        return held

    def _launch_followers(self) -> tuple[np.ndarray, np.ndarray]:
        """Per event: is it a graph launch's follower, i.e. not the first activity that its
        launch call enqueued on its stream? One call (cudaGraphLaunch, hipGraphLaunch)
        releases all of a graph's nodes; after the first, each starts when the device has
        dispatched it after the one before, whatever the call's latency. Measured launch
        latencies for those pinned every node at its observed start: a 2x faster GEMM moved
        nothing in a graph-replayed decode step. Also returns, per event, the latency of its
        call's first activity on its stream (-1 where none)."""
        ev = self.ev
        src, dst = self.launch_src, self.launch_dst
        follows = np.zeros(self.n, dtype=bool)
        first_delta = np.full(self.n, -1, dtype=np.int64)
        if src.size < 2:
            return follows, first_delta
        order = lexsort((self.start[dst], ev["stream"][dst], ev["device"][dst], ev["trace_id"][dst], src))
        src, dst = src[order], dst[order]
        same = ~run_starts(src, ev["trace_id"][dst], ev["device"][dst], ev["stream"][dst])
        follows[dst[same]] = True
        head = np.maximum.accumulate(np.where(same, 0, np.arange(dst.size)))
        first_delta[dst] = self.start[dst[head]] - self.start[src[head]]
        self.stats["launch_followers"] = int(same.sum())
        return follows, first_delta

    def _finish(self) -> Graph:
        n = self.n
        nv = 2 * n + len(self.extra_vertices)
        vevent = np.concatenate([np.repeat(np.arange(n, dtype=np.int64), 2), np.full(len(self.extra_vertices), -1)])
        is_start = np.concatenate([np.tile([True, False], n), np.ones(len(self.extra_vertices), bool)])
        ev_t = np.stack([self.start, self.end], 1).reshape(-1)
        vtime = np.concatenate([ev_t, np.asarray(self.extra_vertices, dtype=np.int64)]).astype(np.int64)
        zero = np.concatenate([np.repeat(self.start == self.end, 2), np.zeros(len(self.extra_vertices), bool)])
        cls_key = np.where(is_start, 1, np.where(zero, 2, 0))
        depth = np.concatenate([np.repeat(self.ev["depth"], 2), np.full(len(self.extra_vertices), 1 << 30)])
        sub = np.where(is_start, depth, -depth)
        order = lexsort((sub, cls_key, vtime))  # stable: ties keep vertex order
        pos = np.empty(nv, dtype=np.int64)
        pos[order] = np.arange(nv)
        parts = list(zip(*self.edges)) if self.edges else [[np.empty(0, np.int64)]] * 9
        # Each edge column is joined, selected and its parts dropped in turn: with all of
        # them joined at once a 5M-event graph held three copies of its edges.
        self.edges = []

        def column(i: int) -> np.ndarray:
            joined = np.concatenate(parts[i]).astype(_EDGE_DTYPES[i], copy=False)
            parts[i] = None
            return joined

        src, dst = column(0), column(1)
        # Observed data satisfy t(src) <= t(dst) for real dependencies: an edge that runs
        # backwards in time is inconsistent with the trace and is left out.
        forward = pos[src] < pos[dst]
        self.stats["inconsistent_edges"] = int((~forward).sum())
        sel = np.flatnonzero(forward)
        sel = sel[np.argsort(pos[dst[sel]], kind="stable")]
        edges = {"src": src[sel], "dst": dst[sel]}
        del src, dst, forward
        for i, name in enumerate(("weight", "ekind", "ecls", "eevent", "sync_min", "gap_trim", "exposed"), start=2):
            edges[name] = column(i)[sel]
        self.stats.update(vertices=int(nv), edges=int(sel.size), events=int(n),
                          device_events=int(self.is_device.sum()))
        return Graph(
            event_id=self.ev["event_id"], trace_id=self.ev["trace_id"], kind=self.ev["kind"], name=self.ev["name"],
            name_code=self.ev["name_code"], name_values=self.ev["name_values"],
            category=self.ev["category"], category_code=self.ev["category_code"],
            category_values=self.ev["category_values"], start=self.start, end=self.end, is_device=self.is_device,
            device=np.where(self.is_device, self.ev["device"], -1),
            launch_time=self.launch_time, vtime=vtime, vevent=vevent, order=order, pos=pos,
            **edges, traces=self.traces, stats=self.stats)
