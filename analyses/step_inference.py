"""Where steps come from when the trace has no step markers, and the device-event table
the steps and host passes share.

Inference order (the first that yields steps wins):
  (a) `annotation`: a top-level host annotation name (digits folded, so `step_3` and
      `step_4` are one name) that occurs at least `MIN_REPEATS` times without overlap;
  (b) `graph_replay`: runtime calls that launch a CUDA/HIP graph and that enqueue most of
      the device work: each launch is one step;
  (c) `kernel_pattern`: the period of the kernel-name sequence on the busiest stream;
  (d) `whole_trace`: the device span (or the trace span) as one step.
Every function here reads the store with SQL and returns plain windows; none writes.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from profkit import intervals
from profkit.classify import runtime_role
from profkit.columns import dictionary_codes, distinct_count, group_codes, lexsort, per_value, positions
from profkit.store import Store

MIN_REPEATS = 3                 # occurrences before a name or pattern makes steps
GRAPH_WORK_SHARE = 0.5          # graph-launched kernels must be at least this share of kernels
PATTERN_LENGTH_TOLERANCE = 0.2  # a cycle length within 20% of the median cycle is regular
PATTERN_REGULAR_SHARE = 0.75    # ... for at least 75% of the cycles
PATTERN_MIN_COVERAGE = 0.6      # the cycles must span at least 60% of the stream's kernels
PATTERN_SAME_CONTENT = 0.5      # at least half the cycles run the same set of kernel names
ANNOTATION_MIN_DEVICE_SHARE = 0.5  # step annotations must enclose half the device work (by launch)

# Ranges the profiler itself records, never the program's iterations.
PROFILER_RANGES = re.compile(r"^(PyTorch Profiler|Iteration Start|Lazy Function Loading|Activity Buffer Request)")

_DIGITS = re.compile(r"\d+")


@dataclass
class Window:
    start_ns: int
    end_ns: int
    name: str | None = None
    event_id: int | None = None
    number: int | None = None


def is_graph_launch(name: str | None) -> bool:
    """A runtime call that replays a captured graph (role graph_launch in data/runtime_calls.csv)."""
    return runtime_role(name) == "graph_launch"


# A null pid or tid among the launch links, as a number no real one takes.
NULL_ID = -(1 << 62)


@dataclass
class LaunchLinks:
    """The trace's launch links to its device activities, one row per link (an activity
    has one in almost every trace, several where correlation ids repeat): the activity (its
    index in DeviceEvents) and the calling event's id, start, end, pid and tid (nulls:
    NULL_ID) and name (codes into name_values, whose last entry is None)."""
    activity: np.ndarray
    call: np.ndarray
    start: np.ndarray
    start_known: np.ndarray  # bool: the call has a start
    end: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    name_code: np.ndarray
    name_values: np.ndarray

    def one_per_activity(self, keys: list[np.ndarray]) -> np.ndarray:
        """Rows (links) chosen one per activity: the last by `keys` (most significant
        last, as np.lexsort) among each activity's links."""
        if distinct_count(self.activity) == self.activity.size:
            return np.arange(self.activity.size)
        order = lexsort([*keys, self.activity])
        last = np.r_[self.activity[order][1:] != self.activity[order][:-1], True]
        return order[last]


@dataclass
class DeviceEvents:
    """Device activities of one trace in start order, with their launching call."""
    event_id: np.ndarray
    kind: np.ndarray        # object arrays of strings
    name: np.ndarray
    category: np.ndarray
    start: np.ndarray
    end: np.ndarray
    device: np.ndarray      # -1 where unknown
    stream: np.ndarray      # -1 where unknown
    launch_id: np.ndarray   # -1 where no launch link; of several, the call with the smallest id
    launch_start: np.ndarray  # launch call start, else the device start
    launch_name: np.ndarray
    graph: np.ndarray       # bool: enqueued by a graph replay
    category_code: np.ndarray    # category as codes into category_values (dictionary_codes)
    category_values: np.ndarray
    name_code: np.ndarray        # name as codes into name_values, likewise
    name_values: np.ndarray
    links: LaunchLinks      # every launch link, for passes that choose among several otherwise

    def __len__(self) -> int:
        return int(self.start.size)

    def anchor(self, host_side: bool) -> np.ndarray:
        """Time each event is placed in a step by: its launch call for host-defined steps."""
        return self.launch_start if host_side else self.start

    @cached_property
    def launch_order(self) -> np.ndarray:
        """The events' order by launch start (stable: ties in their own order)."""
        return np.argsort(self.launch_start, kind="stable")

    @cached_property
    def id_order(self) -> np.ndarray:
        """The order that sorts the events by id."""
        return np.argsort(self.event_id, kind="stable")

    def positions_of(self, event_ids: np.ndarray) -> np.ndarray:
        """Each id's index among these events, -1 where it is not one of them."""
        return positions(self.event_id, event_ids, sorter=self.id_order)

    @cached_property
    def lane_order(self) -> np.ndarray:
        """The events' order by stream: device, stream, start, end, id."""
        return lexsort((self.event_id, self.end, self.start, self.stream, self.device))


def load_device_events(store: Store, trace_id: int) -> DeviceEvents:
    # The activities, their launch links and their graph ids by three plain queries, joined
    # here: one query joining links and kernel_info to the events (twice) took 1.6 s at a
    # million dispatches, against ~0.5 s for these.
    table = store.arrow("""
        SELECT event_id, kind, name, coalesce(category, 'other') AS category, start_ns, end_ns,
               coalesce(device, -1) AS device, coalesce(stream, -1) AS stream
        FROM events WHERE trace_id = ? AND kind IN ('kernel', 'memcpy', 'memset')
        ORDER BY start_ns, event_id
    """, [trace_id])
    col = table.column
    strings, dictionaries = {}, {}
    for name in ("kind", "name", "category"):
        codes, values = dictionary_codes(col(name))
        strings[name], dictionaries[name] = values[codes], (codes, values)
    event_id = col("event_id").to_numpy().astype(np.int64)
    start = col("start_ns").to_numpy().astype(np.int64)
    links = _launch_links(store, trace_id, event_id)
    # Each activity's launch: its linked call with the smallest id.
    first = links.one_per_activity([-links.call])
    at = links.activity[first]
    launch_id = np.full(event_id.size, -1, dtype=np.int64)
    launch_id[at] = links.call[first]
    launch_start = start.copy()
    known = first[links.start_known[first]]
    launch_start[links.activity[known]] = links.start[known]
    name_code = np.full(event_id.size, links.name_values.size - 1, dtype=np.int64)  # None
    name_code[at] = links.name_code[first]
    graph_call = per_value(is_graph_launch, name_code, links.name_values, bool)  # once per distinct name
    return DeviceEvents(
        event_id=event_id, kind=strings["kind"], name=strings["name"], category=strings["category"],
        start=start, end=col("end_ns").to_numpy().astype(np.int64),
        device=col("device").to_numpy().astype(np.int64),
        stream=col("stream").to_numpy().astype(np.int64),
        launch_id=launch_id, launch_start=launch_start, launch_name=links.name_values[name_code],
        graph=recorded_in_graph(store, event_id) | graph_call,
        category_code=dictionaries["category"][0], category_values=dictionaries["category"][1],
        name_code=dictionaries["name"][0], name_values=dictionaries["name"][1],
        links=links,
    )


def _launch_links(store: Store, trace_id: int, event_id: np.ndarray) -> LaunchLinks:
    table = store.arrow("""
        SELECT l.dst_event, r.event_id, r.start_ns, r.end_ns, r.pid, r.tid, r.name
        FROM links l JOIN events r ON r.event_id = l.src_event AND r.trace_id = l.trace_id
        WHERE l.trace_id = ? AND l.kind = 'launch'
    """, [trace_id])
    at = positions(event_id, table.column("dst_event").to_numpy(), sorter=np.argsort(event_id, kind="stable"))
    rows = np.flatnonzero(at >= 0)  # links to the device activities
    ints = {name: table.column(name).fill_null(NULL_ID).to_numpy()[rows]
            for name in ("event_id", "start_ns", "end_ns", "pid", "tid")}
    name_code, name_values = dictionary_codes(table.column("name"))
    return LaunchLinks(activity=at[rows], call=ints["event_id"], start=ints["start_ns"],
                       start_known=table.column("start_ns").is_valid().to_numpy(zero_copy_only=False)[rows],
                       end=ints["end_ns"], pid=ints["pid"], tid=ints["tid"], name_code=name_code[rows], name_values=name_values)


def recorded_in_graph(store: Store, event_id: np.ndarray, columns: tuple[str, ...] = ("graph_id",)) -> np.ndarray:
    """Per activity: kernel_info gives it one of `columns` (the graph, or the graph node,
    it was launched as)."""
    if event_id.size == 0:
        return np.zeros(0, dtype=bool)
    graphed = store.arrow(f"""
        SELECT event_id FROM kernel_info
        WHERE event_id BETWEEN ? AND ? AND ({" OR ".join(f"{c} IS NOT NULL" for c in columns)})
    """, [int(event_id.min()), int(event_id.max())]).column("event_id").to_numpy()
    return np.isin(event_id, graphed)


def assign(anchor: np.ndarray, windows: list[Window]) -> np.ndarray:
    """Index of the window each anchor time falls in ([start, end)), -1 if none.
    Windows are sorted and do not overlap."""
    if not windows or anchor.size == 0:
        return np.full(anchor.size, -1, dtype=np.int64)
    return intervals.containing(np.array([w.start_ns for w in windows], dtype=np.int64),
                                np.array([w.end_ns for w in windows], dtype=np.int64), anchor)


# -- (a) repeating annotations ------------------------------------------------------

def annotation_steps(store: Store, trace_id: int, dev: DeviceEvents,
                     min_repeats: int = MIN_REPEATS, max_repeats: int | None = None) -> list[Window]:
    """Top-level annotations with one name (digits folded) occurring `min_repeats` to
    `max_repeats` times without overlap and enclosing most device work (by launch time)."""
    rows = store.con.execute("""
        SELECT event_id, name, start_ns, end_ns, pid, tid FROM events
        WHERE trace_id = ? AND kind = 'annotation' AND dur_ns > 0 AND name IS NOT NULL
        ORDER BY pid, tid, start_ns, end_ns DESC, event_id
    """, [trace_id]).fetchall()
    # Top level = not inside another annotation on the same thread (other kinds, such as
    # Python frames, may enclose it). The profiler's own ranges are not the program's.
    top = []
    lane, open_end = None, None
    for event_id, name, start, end, pid, tid in rows:
        if PROFILER_RANGES.search(name):
            continue
        if (pid, tid) != lane:
            lane, open_end = (pid, tid), None
        if open_end is not None and end <= open_end:
            continue
        top.append((event_id, name, start, end))
        open_end = end
    groups: dict[str, list] = defaultdict(list)
    for row in top:
        groups[_DIGITS.sub("#", row[1])].append(row)
    anchor = dev.anchor(True)
    best, best_cover = None, 0.0
    for key, occ in groups.items():
        if len(occ) < min_repeats or (max_repeats is not None and len(occ) > max_repeats):
            continue
        occ.sort(key=lambda r: r[2])
        if any(b[2] < a[3] for a, b in zip(occ, occ[1:])):
            continue  # overlapping occurrences are not a sequence of iterations
        windows = [Window(s, e, name, eid, _number(name)) for eid, name, s, e in occ]
        if len(dev):
            cover = float((assign(anchor, windows) >= 0).mean())
            if cover < ANNOTATION_MIN_DEVICE_SHARE:
                continue  # e.g. CUDA lazy-loading ranges: they repeat but hold no step's work
        else:
            cover = sum(w.end_ns - w.start_ns for w in windows) / 1e18
        if cover > best_cover:
            best, best_cover = windows, cover
    return best or []


def _number(name: str) -> int | None:
    found = _DIGITS.findall(name)
    return int(found[-1]) if found else None


# -- (b) graph replays ----------------------------------------------------------------

def graph_replay_steps(store: Store, trace_id: int, dev: DeviceEvents) -> list[Window]:
    kernels = dev.kind == "kernel"
    if not kernels.any():
        return []
    graph_kernels = dev.graph & kernels & (dev.launch_id >= 0)
    if graph_kernels.sum() < GRAPH_WORK_SHARE * kernels.sum():
        return []
    names = set(dev.launch_name[graph_kernels].tolist())
    launches = store.con.execute(f"""
        SELECT event_id, name, start_ns, end_ns FROM events
        WHERE trace_id = ? AND kind = 'runtime' AND name IN ({','.join('?' * len(names))})
        ORDER BY start_ns, event_id
    """, [trace_id, *sorted(names)]).fetchall()
    if not launches:
        return []
    last_device_end = {}
    for lid, end in zip(dev.launch_id[graph_kernels], dev.end[graph_kernels]):
        last_device_end[int(lid)] = max(int(end), last_device_end.get(int(lid), 0))
    windows = []
    for i, (eid, name, start, end) in enumerate(launches):
        if i + 1 < len(launches):
            stop = launches[i + 1][2]
        else:
            # The last replay ends when its device work does.
            stop = max(end, last_device_end.get(eid, end))
        windows.append(Window(start, stop, name, eid, i))
    return windows


# -- (c) repeating kernel sequence ----------------------------------------------------

def kernel_pattern_steps(dev: DeviceEvents) -> list[Window]:
    kernels = np.flatnonzero(dev.kind == "kernel")
    if kernels.size < 2 * MIN_REPEATS:
        return []
    # The busiest stream (by kernel time) carries the loop; of equally busy ones, the one
    # whose first kernel comes first.
    lane, first = group_codes(dev.device[kernels], dev.stream[kernels])
    busy = np.zeros(first.size, np.int64)
    np.add.at(busy, lane, dev.end[kernels] - dev.start[kernels])
    tied = np.flatnonzero(busy == busy.max())
    idx = kernels[lane == tied[np.argmin(first[tied])]]
    names = dev.name[idx].tolist()
    period = _cycle_count(names)
    if period is None:
        return []
    starts, ends = dev.start[idx], dev.end[idx]
    gaps = np.empty(len(names), dtype=np.int64)
    gaps[0] = -1
    gaps[1:] = starts[1:] - np.maximum.accumulate(ends)[:-1]
    boundary = _boundary_name(names, gaps, period)
    positions = [j for j, n in enumerate(names) if n == boundary]
    median_len = float(np.median(np.diff(positions))) if len(positions) > 1 else len(names)
    windows = []
    for k, j in enumerate(positions):
        if k + 1 < len(positions):
            stop = int(starts[positions[k + 1]])
        else:
            # The last cycle is one cycle long: what follows it is not part of the loop.
            last = min(len(names), j + int(round(median_len)))
            stop = int(ends[j:last].max())
        windows.append(Window(int(starts[j]), stop, boundary, int(dev.event_id[idx[j]]), k))
    # Kernels before the first boundary form a step of their own if they are a cycle's worth.
    head = positions[0]
    if head >= 0.5 * median_len:
        windows.insert(0, Window(int(starts[0]), int(starts[head]), names[0], int(dev.event_id[idx[0]]), -1))
    for k, w in enumerate(windows):
        w.number = k
    return windows


def _cycle_count(names: list[str]) -> int | None:
    """How many times the sequence repeats: the fewest occurrences of any name whose
    occurrences are evenly spaced and together span most of the sequence."""
    positions: dict[str, list[int]] = defaultdict(list)
    for j, n in enumerate(names):
        positions[n].append(j)
    best = None
    for n, pos in positions.items():
        if len(pos) < MIN_REPEATS or (best is not None and len(pos) >= best):
            continue
        lengths = np.diff(pos)
        median = float(np.median(lengths))
        if median < 2:
            continue
        regular = np.abs(lengths - median) <= PATTERN_LENGTH_TOLERANCE * median
        if regular.mean() < PATTERN_REGULAR_SHARE:
            continue
        if len(pos) * median < PATTERN_MIN_COVERAGE * len(names):
            continue
        contents = Counter(frozenset(names[a:b]) for a, b in zip(pos, pos[1:]))
        if contents.most_common(1)[0][1] < PATTERN_SAME_CONTENT * (len(pos) - 1):
            continue  # evenly spaced, but the cycles do different work
        best = len(pos)
    return best


def _boundary_name(names: list[str], gaps: np.ndarray, cycles: int) -> str:
    """Of the names that occur once per cycle, the one preceded by the longest device
    idle gap (median over its occurrences): where the host starts the next iteration."""
    counts = Counter(names)
    candidates = [n for n, c in counts.items() if abs(c - cycles) <= max(1, cycles // 20)]
    by_name: dict[str, list[int]] = defaultdict(list)
    for n, g in zip(names, gaps):
        if n in candidates and g >= 0:
            by_name[n].append(int(g))
    scored = [(float(np.median(v)) if v else -1.0, -names.index(n), n) for n, v in
              ((n, by_name.get(n, [])) for n in candidates)]
    return max(scored)[2]


# -- (d) the whole trace ----------------------------------------------------------------

def whole_trace_window(store: Store, trace_id: int, dev: DeviceEvents) -> list[Window]:
    if len(dev):
        return [Window(int(dev.start.min()), int(dev.end.max()), None, None, 0)]
    row = store.con.execute("SELECT start_ns, end_ns FROM traces WHERE trace_id = ?", [trace_id]).fetchone()
    if not row or row[0] is None:
        return []
    return [Window(int(row[0]), int(row[1]), None, None, 0)]
