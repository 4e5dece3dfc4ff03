"""`profkit analyze --timeline out.pftrace`: the store as a Perfetto trace, with the
critical path and the findings drawn in, to open in https://ui.perfetto.dev.

Layout (custom-scoped TrackEvent tracks; see docs/timeline.md):

    Critical path                      one slice per path segment, arrows between its events
    Findings                           one slice per place a finding points at
    rank 0 (kineto) trace.json.gz      one group per trace
        process 4821 (python3.12)
            thread 4821 (python3.12)   host events, nested by time
        GPU 0 (NVIDIA H100)
            stream 7                   device events
        <counter name>                 counters

Launch links become flow arrows from the runtime call to the device activity. Host
threads and GPU streams are custom tracks rather than Perfetto process/thread tracks:
ranks of one job often reuse pids and tids, and Perfetto would merge them.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columns import run_starts
from .render import device_label
from .store import Store
from .timeline_marks import Marks, critical_path_marks, finding_marks
from .timeline_slices import Lanes, Placed, Track, write_batch, write_counters
from .timeline_writer import PacketWriter, load_protos

_BATCH_ROWS = 65536
# Link arrows get flow ids 1..N; the critical path's arrows count from here, apart.
CRITICAL_PATH_FLOW_BASE = 1 << 62
HOST, DEVICE, OTHER = 0, 1, 2


def write_timeline(store: Store, path: str | Path, critical_path: list[dict] | None = None,
                   findings: list[dict] | None = None, trace_ids: list[int] | None = None,
                   link_kinds: tuple[str, ...] = ("launch",)) -> dict[str, Any]:
    """Write the store's traces (all, or `trace_ids`) as a Perfetto trace at `path`.

    `critical_path`: segments in order, each {event_id, start_ns, end_ns, cause, name},
    times on the store's common clock (trace clock + clock_offset_ns, as profkit.graph_build).
    `findings`: Finding.to_dict() dicts (their evidence times on their trace's own clock).
    `link_kinds`: which `links` become arrows. Returns statistics of what was written.
    Raises ProfkitError if the `perfetto` package is missing.
    """
    pb = load_protos()
    started = time.perf_counter()
    path = Path(path)
    traces = _traces(store, trace_ids)
    exported = {t["trace_id"] for t in traces}
    offsets = {t["trace_id"]: int(t["clock_offset_ns"] or 0) for t in traces}

    cp_marks, cp_pairs, cp_skipped = critical_path_marks(store, critical_path or [], exported)
    f_marks, f_skipped = finding_marks(store, findings or [], offsets, exported)
    shift = _time_shift(store, traces, [cp_marks, f_marks])

    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as file:
            writer = PacketWriter(file, pb)
            stats = _Export(store, writer, traces, shift).run(cp_marks, cp_pairs, f_marks, link_kinds)
            writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    stats.update({
        "path": str(path), "bytes": path.stat().st_size, "packets": writer.packets,
        "traces": len(traces), "critical_path_segments_skipped": cp_skipped,
        "findings_skipped": f_skipped, "time_shift_ns": shift,
        "seconds": round(time.perf_counter() - started, 3),
    })
    return stats


def _traces(store: Store, trace_ids: list[int] | None) -> list[dict]:
    rows = store.rows("SELECT trace_id, rank, format, path, clock_offset_ns, start_ns, end_ns, vendor "
                      "FROM traces ORDER BY coalesce(rank, trace_id), trace_id")
    if trace_ids is not None:
        wanted = set(trace_ids)
        rows = [r for r in rows if r["trace_id"] in wanted]
    return rows


def _time_shift(store: Store, traces: list[dict], marks: list[Marks]) -> int:
    """Perfetto timestamps are unsigned: shift everything if anything would be negative."""
    lows = [int(t["start_ns"]) + int(t["clock_offset_ns"] or 0) for t in traces if t["start_ns"] is not None]
    ids = ",".join(str(t["trace_id"]) for t in traces) or "NULL"
    # The events too, not only the traces' recorded starts: a store edited since may have
    # an event earlier than its trace's start_ns.
    for table, column in (("counters", "ts_ns"), ("events", "start_ns")):
        low = store.con.execute(
            f"SELECT min(x.{column} + coalesce(t.clock_offset_ns, 0)) FROM {table} x "
            f"JOIN traces t USING (trace_id) WHERE trace_id IN ({ids})").fetchall()[0][0]
        if low is not None:
            lows.append(int(low))
    lows += [int(m.start.min()) for m in marks if len(m)]
    low = min(lows, default=0)
    return -low if low < 0 else 0


def trace_label(trace: dict) -> str:
    """The name of a trace's top-level group, e.g. `rank 0 (kineto) trace.json.gz`."""
    who = f"rank {trace['rank']}" if trace["rank"] is not None else f"trace {trace['trace_id']}"
    return f"{who} ({trace['format']}) {Path(str(trace['path'])).name}"


class _Export:
    def __init__(self, store: Store, writer: PacketWriter, traces: list[dict], shift: int):
        self.store = store
        self.w = writer
        self.traces = traces
        self.vendors = {t["trace_id"]: t.get("vendor") for t in traces}  # for devices without a row
        self.shift = shift
        self.ids_sql = ",".join(str(t["trace_id"]) for t in traces) or "NULL"
        self.groups: dict[tuple, int] = {}          # (trace_id, kind, key) -> group track uuid
        self.tracks: dict[tuple, tuple] = {}        # (trace_id, lane kind, k1, k2) -> (name, parent, rank)
        self.stats: dict[str, Any] = {"tracks": {}, "slices": 0, "extra_lanes": 0, "flows_launch": 0,
                                      "flows_critical_path": 0, "counter_tracks": 0, "counter_samples": 0}

    def run(self, cp_marks, cp_pairs, f_marks, link_kinds) -> dict[str, Any]:
        cp_flows = self._overlays(cp_marks, cp_pairs, f_marks)
        self._layout()
        self._events(cp_flows, link_kinds)
        self._counters()
        self.stats["tracks"] = len(self.tracks)
        return self.stats

    # -- overlays ------------------------------------------------------------------
    def _overlays(self, cp_marks, cp_pairs, f_marks) -> "_PathFlows":
        # The overlays come first in the file, so the UI lists them above the traces.
        self.stats["critical_path_slices"] = self._marks(
            "Critical path", cp_marks,
            "The longest dependency chain: each slice is a segment of the path, named by its cause; "
            "arrows join its events on the tracks below.")
        self.stats["finding_slices"] = self._marks(
            "Findings", f_marks,
            "One slice where each finding points: select it for impact, recommendation and the SQL "
            "that shows the evidence.")
        self.stats["flows_critical_path"] = len(cp_pairs)
        return _PathFlows(cp_pairs)

    def _marks(self, name: str, marks: Marks, description: str) -> int:
        """A top-level track of marks (only if there are any); returns the slices written."""
        if not len(marks):
            return 0
        order = np.lexsort((-marks.end, marks.start))  # by start, then end descending; stable
        starts, ends = marks.start[order] + self.shift, marks.end[order] + self.shift
        lanes, placed = Lanes(self.w), Placed()
        lanes.open(Track(name, None, f"profkit:{name}", description=description), placed)
        lanes.place(starts.tolist(), ends.tolist(), 0, len(order), placed)
        lanes.close(placed)
        notes = [replace(n, values=n.values[order], present=n.present[order]) for n in marks.notes]
        write_batch(self.w, placed, starts, ends, marks.names, marks.name_codes[order], notes=notes)
        return lanes.slices

    # -- track layout ----------------------------------------------------------------
    def _layout(self) -> None:
        """Descriptors for every group and lane track, before any event (from one GROUP BY)."""
        names = self._names()
        devices = {(r[0], r[1]): (r[2], r[3]) for r in self.store.con.execute(
            f"SELECT trace_id, device, any_value(name), any_value(vendor) FROM devices "
            f"WHERE trace_id IN ({self.ids_sql}) GROUP BY ALL"
        ).fetchall()}
        keys = self.store.con.execute(f"""
            SELECT trace_id, {_LANE_KIND} AS lk, {_K1} AS k1, {_K2} AS k2, count(*) AS n
            FROM events e WHERE trace_id IN ({self.ids_sql})
            GROUP BY ALL ORDER BY trace_id, lk, k1 NULLS FIRST, k2 NULLS FIRST
        """).fetchall()
        for trace in self.traces:
            tid = trace["trace_id"]
            root = self.w.track(trace_label(trace), description=str(trace["path"]), explicit_children=True)
            self.groups[(tid, "root", None)] = root
            ordered = sorted((k for k in keys if k[0] == tid), key=lambda k: (k[1], -k[4] if k[1] == HOST else 0))
            for rank, (_, lk, k1, k2, n) in enumerate(ordered):
                if lk == HOST:
                    parent = self._group(tid, "process", k1, _process_name(k1, names.get((tid, k1, None))), 0)
                    name = _thread_name(k2, names.get((tid, k1, k2)))
                elif lk == DEVICE:
                    name, vendor = devices.get((tid, k1), (None, None))
                    parent = self._group(tid, "device", k1, _device_name(k1, name, vendor or self.vendors[tid]), 1)
                    name = f"stream {k2}" if k2 is not None else "stream ?"
                else:
                    parent = self._group(tid, "process", k1, _process_name(k1, names.get((tid, k1, None))), 0)
                    name = "other events"
                self.tracks[(tid, lk, k1, k2)] = (name, parent, rank)

    def _group(self, trace_id: int, kind: str, key, name: str, band: int) -> int:
        found = self.groups.get((trace_id, kind, key))
        if found is None:
            # EXPLICIT order under the trace: host processes first, then devices, then counters.
            order = band * 1_000_000 + sum(1 for g in self.groups if g[0] == trace_id)
            found = self.w.track(name, self.groups[(trace_id, "root", None)], order_rank=order,
                                 explicit_children=True)
            self.groups[(trace_id, kind, key)] = found
        return found

    def _names(self) -> dict[tuple, str]:
        rows = self.store.con.execute(
            f"SELECT trace_id, pid, tid, any_value(name) FROM threads WHERE trace_id IN ({self.ids_sql}) "
            f"AND name IS NOT NULL AND name <> '' GROUP BY ALL").fetchall()
        return {(r[0], r[1], r[2]): r[3] for r in rows}

    # -- events --------------------------------------------------------------------
    def _events(self, cp_flows, link_kinds) -> None:
        con = self.store.con
        kinds = ",".join("'" + k.replace("'", "''") + "'" for k in link_kinds) or "NULL"
        # Arrow ids for the links: ids 1..N by link row; an event may start or end several.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _timeline_flows AS
            SELECT row_number() OVER (ORDER BY l.src_event, l.dst_event) AS flow_id, l.src_event, l.dst_event
            FROM links l
            JOIN events s ON s.event_id = l.src_event
            JOIN events d ON d.event_id = l.dst_event
            WHERE l.kind IN ({kinds}) AND s.trace_id IN ({self.ids_sql}) AND d.trace_id IN ({self.ids_sql})
        """)
        try:
            self.stats["flows_launch"] = con.execute("SELECT count(*) FROM _timeline_flows").fetchall()[0][0]
            batches = _batches(con, f"""
                SELECT e.event_id, e.trace_id, {_LANE_KIND} AS lk, {_K1} AS k1, {_K2} AS k2,
                       e.start_ns + coalesce(t.clock_offset_ns, 0) + {self.shift} AS ts,
                       e.start_ns + greatest(e.dur_ns, 0) + coalesce(t.clock_offset_ns, 0) + {self.shift} AS te,
                       coalesce(e.name, '(unnamed)') AS name, fo.ids AS flows_out, fi.ids AS flows_in
                FROM events e
                JOIN traces t USING (trace_id)
                LEFT JOIN (SELECT src_event, list(flow_id) AS ids FROM _timeline_flows GROUP BY src_event) fo
                       ON fo.src_event = e.event_id
                LEFT JOIN (SELECT dst_event, list(flow_id) AS ids FROM _timeline_flows GROUP BY dst_event) fi
                       ON fi.dst_event = e.event_id
                WHERE e.trace_id IN ({self.ids_sql})
                ORDER BY e.trace_id, lk, k1 NULLS FIRST, k2 NULLS FIRST, ts, te DESC, e.event_id
            """)
            self._stream(batches, cp_flows)
        finally:
            con.execute("DROP TABLE IF EXISTS _timeline_flows")

    def _stream(self, reader, cp_flows: "_PathFlows") -> None:
        lanes, current = Lanes(self.w), None
        for batch in reader:
            placed = Placed()
            starts = batch.column("ts").to_numpy()
            ends = batch.column("te").to_numpy()
            starts_list, ends_list = starts.tolist(), ends.tolist()
            for lo, hi, key in _key_runs(batch, ("trace_id", "lk", "k1", "k2")):
                if key != current:
                    name, parent, rank = self.tracks[key]
                    lanes.open(Track(name, parent, f"profkit:{key[0]}:{key[1]}:{key[2]}:{key[3]}", rank), placed)
                    current = key
                lanes.place(starts_list, ends_list, lo, hi, placed)
            names = pc.dictionary_encode(batch.column("name"))
            ids = batch.column("event_id").to_numpy()
            write_batch(self.w, placed, starts, ends, names.dictionary.to_pylist(), names.indices.to_numpy(),
                        cp_flows.joined(_flows(batch.column("flows_out")), ids, out=True),
                        cp_flows.joined(_flows(batch.column("flows_in")), ids, out=False))
        placed = Placed()
        lanes.close(placed)
        empty = np.zeros(0, np.int64)
        write_batch(self.w, placed, empty, empty, [], empty)
        self.stats["slices"] += lanes.slices
        self.stats["extra_lanes"] += lanes.extra_lanes

    # -- counters --------------------------------------------------------------------
    def _counters(self) -> None:
        series = self.store.con.execute(f"""
            SELECT trace_id, name, pid, device, count(*) FROM counters WHERE trace_id IN ({self.ids_sql})
            GROUP BY ALL ORDER BY ALL
        """).fetchall()
        if not series:
            return
        uuids = {}
        for n, (tid, name, pid, device, _) in enumerate(series):
            if device is not None:
                parent = self.groups.get((tid, "device", device)) or self._group(
                    tid, "device", device, _device_name(device, None, self.vendors[tid]), 1)
            else:
                parent = self.groups.get((tid, "process", pid)) or self.groups[(tid, "root", None)]
            uuids[(tid, name, pid, device)] = self.w.track(str(name), parent, counter=True,
                                                           order_rank=2_000_000 + n)
        batches = _batches(self.store.con, f"""
            SELECT c.trace_id, c.name, c.pid, c.device,
                   c.ts_ns + coalesce(t.clock_offset_ns, 0) + {self.shift} AS ts, c.value
            FROM counters c JOIN traces t USING (trace_id)
            WHERE c.trace_id IN ({self.ids_sql}) AND c.value IS NOT NULL
            ORDER BY ALL
        """)
        samples = 0
        for batch in batches:
            runs = _key_runs(batch, ("trace_id", "name", "pid", "device"))
            tracks = np.repeat([uuids[key] for _, _, key in runs], [hi - lo for lo, hi, _ in runs])
            write_counters(self.w, batch.column("ts").to_numpy(), tracks, batch.column("value").to_numpy())
            samples += batch.num_rows
        self.stats.update(counter_tracks=len(series), counter_samples=samples)


class _PathFlows:
    """The critical path's arrows (ids from CRITICAL_PATH_FLOW_BASE, one a pair of events
    it joins), added to the arrows an event has from `links`."""

    def __init__(self, pairs: np.ndarray):
        ids = CRITICAL_PATH_FLOW_BASE + np.arange(len(pairs), dtype=np.uint64)
        events = np.array(pairs, np.int64).reshape(-1, 2)
        self.sides = {}
        for out, column in ((True, 0), (False, 1)):
            order = np.argsort(events[:, column], kind="stable")  # an event's arrows in path order
            self.sides[out] = (events[order, column], ids[order])

    def joined(self, own: tuple[np.ndarray, np.ndarray], event_ids: np.ndarray, out: bool
               ) -> tuple[np.ndarray, np.ndarray]:
        """(count an event, ids in event order): each event's own arrows, then the path's."""
        events, ids = self.sides[out]
        lo = np.searchsorted(events, event_ids, side="left")
        hi = np.searchsorted(events, event_ids, side="right")
        counts, values = own
        extra = hi - lo
        if not extra.any():
            return counts, values
        total = counts + extra
        first = np.cumsum(total) - total
        merged = np.empty(int(total.sum()), np.uint64)
        own_rows = np.repeat(np.arange(len(counts)), counts)
        merged[first[own_rows] + np.arange(len(own_rows)) - (np.cumsum(counts) - counts)[own_rows]] = values
        extra_rows = np.repeat(np.arange(len(extra)), extra)
        within = np.arange(len(extra_rows)) - (np.cumsum(extra) - extra)[extra_rows]
        merged[first[extra_rows] + counts[extra_rows] + within] = ids[lo[extra_rows] + within]
        return total, merged


def _flows(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column of flow ids as (count a row, ids in row order)."""
    counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    return counts, pc.list_flatten(column).to_numpy().astype(np.uint64)


def _key_runs(batch: pa.RecordBatch, names: tuple[str, ...]) -> list[tuple[int, int, tuple]]:
    """(first row, end row, key) of each run of rows with the same values of the columns
    `names` (NULLs equal) in a batch sorted by them."""
    keys = [batch.column(c) for c in names]
    bounds = np.flatnonzero(run_starts(*(a for k in keys for a in _comparable(k)))).tolist() + [batch.num_rows]
    return [(lo, hi, tuple(k[lo].as_py() for k in keys)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _comparable(key: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A nullable column as (values with NULLs filled, validity): equal pairs, equal keys."""
    if str(key.type) == "string_view":  # no fill_null kernel for it
        key = key.cast(pa.string())
    text = pa.types.is_string(key.type) or pa.types.is_large_string(key.type)
    values = pc.fill_null(key, pa.scalar("" if text else 0, key.type)).to_numpy(zero_copy_only=False)
    return values, key.is_valid().to_numpy(zero_copy_only=False)


def _batches(con, query: str):
    """Arrow record batches of a query, without materialising it (DuckDB 1.x and 2.x)."""
    try:
        relation = con.sql(query)
    except duckdb.Error:
        # The caller left an execute() result unfinished, which con.sql() refuses to run
        # beside; the DB-API path still streams, at the cost of a copy per batch.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cursor = con.execute(query)
            reader = getattr(cursor, "to_arrow_reader", None) or cursor.fetch_record_batch
            return reader(_BATCH_ROWS)
    reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return reader(_BATCH_ROWS)


# Which track an event goes on: host thread (pid, tid), device stream (device, stream),
# else one "other events" track per process.
_LANE_KIND = f"CASE WHEN e.tid IS NOT NULL THEN {HOST} WHEN e.device IS NOT NULL THEN {DEVICE} ELSE {OTHER} END"
_K1 = "CASE WHEN e.tid IS NOT NULL THEN e.pid WHEN e.device IS NOT NULL THEN e.device ELSE e.pid END"
_K2 = "CASE WHEN e.tid IS NOT NULL THEN e.tid WHEN e.device IS NOT NULL THEN e.stream ELSE NULL END"


def _process_name(pid, name: str | None) -> str:
    label = f"process {pid}" if pid is not None else "process ?"
    return f"{label} ({name})" if name else label


def _thread_name(tid, name: str | None) -> str:
    if name and str(tid) in name:
        return name
    label = f"thread {tid}"
    return f"{label} ({name})" if name else label


def _device_name(device, name: str | None, vendor: str | None) -> str:
    label = device_label(device, vendor)
    return f"{label} ({name})" if name else label
