"""traceEvents records -> rows of `events` (and kernel_info, copies, collectives,
counters, threads, links). One `EventBuilder` per trace, fed chunk by chunk.

Every record read is: stored as an event; kept elsewhere (M -> threads, C -> counters,
flows -> links or, for launch flows, the correlation links derive.py makes); or counted
with `w.issue(reason)`.
"""
from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from . import kineto_args as A
from .kineto_read import Ev, int_within, micros_to_ns, one_micros_to_ns
from .kineto_tables import (DEFAULT_FLOW_LINK_KIND, DEVICE_LANE_KINDS, FLOW_LINK_KIND,
                            category_table)

_THREAD_META = {"process_name": ("name", False), "thread_name": ("name", True),
                "process_sort_index": ("sort_index", False),
                "thread_sort_index": ("sort_index", True)}
_ANY = msgspec.json.Decoder()


def example(rec: Any) -> str:
    """A record as short JSON text for ingest_issues.example (absent fields left out)."""
    fields = {f: getattr(rec, f) for f in Ev.__struct_fields__ if f != "args"}
    fields = {k: v for k, v in fields.items() if v is not None}
    if rec.args:
        fields["args"] = msgspec.Raw(_compact(rec.args))
    try:
        return msgspec.json.encode(fields).decode("utf-8", "replace")[:300]
    except (TypeError, msgspec.EncodeError):
        return repr(fields)[:300]


def _compact(text: bytes) -> bytes:
    """JSON text without its whitespace (records reach EventBuilder as written)."""
    try:
        return msgspec.json.format(text, indent=-1)
    except (msgspec.DecodeError, TypeError, ValueError):
        return text


class EventBuilder:
    def __init__(self, writer):
        self.w = writer
        self.next_id = 0
        self.by_cat, self.by_name = category_table()
        self.name_cats = {c for c, _ in self.by_name}
        self.string_ids: dict[int, str] = {}     # negative id -> the string it stands for
        self.threads: dict[tuple, dict] = {}     # (pid, tid|None) -> name / sort_index
        self.open_b: dict[tuple, list] = defaultdict(list)
        self.flows: list[tuple] = []
        self.kind_counts: Counter[str] = Counter()
        self.cats_seen: set = set()
        self.runtime_prefixes: Counter[str] = Counter()
        self.counters: list[dict] = []

    # -- ids -----------------------------------------------------------------------
    def norm_id(self, v: Any) -> int | None:
        """pid/tid: ints stay; numeric strings -> int; other strings -> a stable
        negative id (the string is kept as the thread's name)."""
        if type(v) is int:
            return v
        n = A.as_int(v)
        if n is not None or not isinstance(v, str):
            return n
        key = -(2 ** 32 + zlib.crc32(v.encode("utf-8", "replace")))
        self.string_ids[key] = v
        return key

    def kind_of(self, cat: Any, name: Any) -> str | None:
        if cat is None:
            cat = ""
        elif not isinstance(cat, str):
            return None
        if cat in self.name_cats and isinstance(name, str):
            kind = self.by_name.get((cat, name))
            if kind:
                return kind
        return self.by_cat.get(cat)

    # -- a chunk ---------------------------------------------------------------------
    def add_chunk(self, recs: list[Ev], others: list[Any]) -> None:
        w = self.w
        w.read(len(recs) + len(others))
        if others:
            w.issue("trace event is not a JSON object", len(others), repr(others[0])[:300])
        self.add_records(recs)

    def add_records(self, recs: list[Ev]) -> None:
        """Store records already counted as read."""
        phs = [r.ph for r in recs]
        xs = [r for r, p in zip(recs, phs) if p == "X"]
        if len(xs) != len(recs):
            rest = [r for r, p in zip(recs, phs) if p != "X"]
            extra = self._other_records(rest)
        else:
            extra = None
        if xs:
            self._complete(xs, [r.ts for r in xs], [r.dur for r in xs])
        if extra:
            recs_e, starts, durs = extra
            self._emit(recs_e, np.array(starts, np.int64), np.array(durs, np.int64))

    def _complete(self, xs: list[Ev], ts: list, dur: list) -> None:
        start, ok_ts = micros_to_ns(ts)
        dur_ns, ok_dur = micros_to_ns(dur)
        # The end, start + dur, must fit int64 too (numpy would wrap it).
        ok_dur &= ~ok_ts | (dur_ns <= np.iinfo(np.int64).max - np.maximum(start, 0))
        keep = ok_ts & ok_dur & (dur_ns >= 0)
        if not keep.all():
            for i in np.flatnonzero(~keep):
                r = xs[i]
                if not ok_ts[i]:
                    reason = "missing ts" if r.ts is None else "ts not a finite number in range"
                elif not ok_dur[i]:
                    reason = "missing dur" if r.dur is None else "dur not a finite number in range"
                else:
                    reason = "negative duration"
                self.w.issue(reason, 1, example(r))
            xs = [r for r, k in zip(xs, keep) if k]
            start, dur_ns = start[keep], dur_ns[keep]
        self._emit(xs, start, dur_ns)

    def _emit(self, recs: list[Ev], start: np.ndarray, dur: np.ndarray) -> None:
        """Store records with known times; drops (and counts) unknown categories."""
        kind_of = self.kind_of
        kinds = [kind_of(r.cat, r.name) for r in recs]
        names = [r.name for r in recs]
        bad = [i for i, (k, nm) in enumerate(zip(kinds, names)) if k is None or type(nm) is not str]
        if bad:
            drop = np.zeros(len(recs), bool)
            for i in bad:
                r = recs[i]
                if kinds[i] is None:
                    self.w.issue(f"unknown category {r.cat!r}", 1, example(r))
                    drop[i] = True
                elif isinstance(r.name, (int, float)) and not isinstance(r.name, bool):
                    names[i] = str(r.name)
                else:
                    self.w.issue("missing name", 1, example(r))
                    drop[i] = True
            if drop.any():
                keep = ~drop
                recs = [r for r, k in zip(recs, keep) if k]
                kinds = [k for k, kk in zip(kinds, keep) if kk]
                names = [n for n, kk in zip(names, keep) if kk]
                start, dur = start[keep], dur[keep]
        n = len(recs)
        if n == 0:
            return
        raws = [r.args for r in recs]
        args = A.decode_batch(raws)
        norm = self.norm_id
        pids = [norm(r.pid) for r in recs]
        tids = [norm(r.tid) for r in recs]
        as_int = A.as_int
        corr = [v if type(v) is int else as_int(v) for v in [a.correlation for a in args]]
        ext = [v if type(v) is int else as_int(v if v is not None else a.external_id_lower)
               for v, a in zip([a.external_id for a in args], args)]
        devices = [v if type(v) is int else as_int(v) for v in [a.device for a in args]]
        streams: list = [None] * n
        base = self.next_id
        ki, cp, co = [], [], []
        lane = DEVICE_LANE_KINDS
        for i, k in enumerate(kinds):
            if k in lane:
                a = args[i]
                if devices[i] is None:
                    devices[i] = pids[i]
                s = self.norm_id(a.stream) if a.stream is not None else None
                streams[i] = tids[i] if s is None else s
                pids[i] = tids[i] = None
                if k == "kernel":
                    row = A.kernel_info_row(base + i, a)
                    if row:
                        ki.append(row)
                    if a.collective is not None:
                        co.append(A.collective_row(base + i, names[i], a))
                elif k == "memcpy" or k == "memset":
                    cp.append(A.copy_row(base + i, k, names[i], a))
            elif k == "runtime":
                self.runtime_prefixes[names[i][:4].lower()] += 1
        self.kind_counts.update(kinds)
        self.cats_seen.update(r.cat for r in recs[:: max(1, n // 64)])
        cats = [r.cat if isinstance(r.cat, str) else None for r in recs]
        self.w.add_events({
            "event_id": np.arange(base, base + n, dtype=np.int64),
            "kind": pa.array(kinds, pa.string()),
            "name": pa.array(names, pa.string()),
            "start_ns": start, "dur_ns": dur, "end_ns": start + dur,
            "pid": self._ints("pid", pids), "tid": self._ints("tid", tids),
            "device": self._ints("device", devices, pa.int32()), "stream": self._ints("stream", streams),
            "correlation": self._ints("correlation", corr),
            "external_id": self._ints("external_id", ext),
            "source_cat": pa.array(cats, pa.string()),
            # As the DuckDB path stores them: without whitespace (a record handed here by
            # the compiled scan, or read by this path alone, comes as written).
            "args": A.raw_text_array([_compact(r) if r else r for r in raws]),
        })
        self.next_id += n
        for table, rows in (("kernel_info", ki), ("copies", cp), ("collectives", co)):
            if rows:
                self.w.add_rows(table, rows)

    def _ints(self, column: str, values: list, typ: pa.DataType = pa.int64()) -> pa.Array:
        """Integers as a column; one beyond the column's type (an id of 2**63, a device
        of 2**31) is stored as NULL and counted."""
        try:
            return pa.array(values, typ)
        except (OverflowError, pa.ArrowInvalid):
            fits = [int_within(v, typ.bit_width) for v in values]
            self.w.issue(f"{column} beyond {typ} (stored as NULL)",
                         sum(v is not None for v in values) - sum(v is not None for v in fits))
            return pa.array(fits, typ)

    # -- everything but X ---------------------------------------------------------------
    def _other_records(self, recs: list[Ev]):
        """Instants, B/E pairs, flows, metadata, counters. Returns events to store."""
        out, starts, durs = [], [], []
        w = self.w
        for r in recs:
            ph = r.ph
            if ph == "M":
                self._metadata(r)
                continue
            if ph in ("s", "t", "f"):
                self._flow(r)
                continue
            if ph == "C":
                self._counter(r)
                continue
            if ph not in ("i", "I", "B", "E"):
                w.issue(f"unknown ph {ph!r}", 1, example(r))
                continue
            ts = one_micros_to_ns(r.ts)
            if ts is None:
                w.issue("missing ts" if r.ts is None else "ts not a finite number in range", 1, example(r))
                continue
            if ph in ("i", "I"):
                out.append(r), starts.append(ts), durs.append(0)
            elif ph == "B":
                self.open_b[(self.norm_id(r.pid), self.norm_id(r.tid))].append((r, ts))
            else:
                stack = self.open_b.get((self.norm_id(r.pid), self.norm_id(r.tid)))
                if not stack:
                    w.issue("E without a matching B", 1, example(r))
                    continue
                b, b_ts = stack.pop()
                if ts < b_ts:
                    w.issue("negative duration", 2, example(b))
                    continue
                # One stored interval; its E is kept in it (read, not an issue).
                out.append(b), starts.append(b_ts), durs.append(ts - b_ts)
        return out, starts, durs

    def _metadata(self, r: Ev) -> None:
        spec = _THREAD_META.get(r.name) if isinstance(r.name, str) else None
        if spec is None:
            self.w.not_stored(f"metadata record not stored ({r.name})", 1, example(r))
            return
        field, per_thread = spec
        a = A.decode_batch([r.args])[0]
        value = getattr(a, field)
        pid = int_within(self.norm_id(r.pid))
        tid = int_within(self.norm_id(r.tid)) if per_thread else None
        if value is not None:  # a sort index beyond BIGINT is no value
            value = str(value) if field == "name" else int_within(A.as_int(value))
        if pid is None or value is None:
            self.w.issue(f"metadata record without pid or value ({r.name})", 1, example(r))
            return
        self.threads.setdefault((pid, tid), {})[field] = value

    def _flow(self, r: Ev) -> None:
        cat = r.cat if isinstance(r.cat, str) else ""
        link = FLOW_LINK_KIND.get(cat, DEFAULT_FLOW_LINK_KIND)
        if link is None:
            return  # launch flow: derive.link_launches joins on correlation instead
        ts = one_micros_to_ns(r.ts)
        self.flows.append((cat, r.id if isinstance(r.id, (int, str)) else repr(r.id), r.ph,
                           self.norm_id(r.pid), self.norm_id(r.tid), ts, link))

    def _counter(self, r: Ev) -> None:
        ts = one_micros_to_ns(r.ts)
        values = _ANY.decode(r.args) if r.args else None
        rows = []
        if ts is not None and isinstance(values, dict):
            name = r.name if isinstance(r.name, str) else ""
            for key, v in values.items():
                f = A.as_float(v)
                if f is not None:
                    label = name if len(values) == 1 and key in (name, "value") else f"{name}.{key}"
                    rows.append({"name": label, "pid": int_within(self.norm_id(r.pid)), "ts_ns": ts, "value": f})
        if not rows:
            self.w.issue("counter record without a time or numeric values", 1, example(r))
            return
        self.counters.extend(rows)

    # -- end of input ---------------------------------------------------------------------
    def finish(self) -> None:
        w = self.w
        unmatched = sum(len(s) for s in self.open_b.values())
        if unmatched:
            first = next(s[0][0] for s in self.open_b.values() if s)
            w.issue("B without a matching E", unmatched, example(first))
        self._name_string_lanes()
        rows = [{"pid": pid, "tid": tid, "name": f.get("name"), "sort_index": f.get("sort_index")}
                for (pid, tid), f in self.threads.items()]
        if rows:
            w.add_rows("threads", rows)
        if self.counters:
            w.append("counters", {k: [r[k] for r in self.counters] for k in ("name", "pid", "ts_ns", "value")})
        self._resolve_flows()

    def _name_string_lanes(self) -> None:
        """A string pid/tid ("Spans", "PyTorch Profiler") names its lane unless an M
        record already did."""
        if not self.string_ids:
            return
        lanes = self.w.store.con.execute(
            "SELECT DISTINCT pid, tid FROM events WHERE trace_id = ? AND (pid < ? OR tid < ?)",
            [self.w.trace_id, -(2 ** 32) + 1, -(2 ** 32) + 1]).fetchall()
        for pid, tid in lanes:
            for lane, key in (((pid, None), pid), ((pid, tid), tid)):
                label = self.string_ids.get(key)
                fields = self.threads.setdefault(lane, {}) if label is not None else None
                if fields is not None and fields.get("name") is None:
                    fields["name"] = label

    def _resolve_flows(self) -> None:
        if not self.flows:
            return
        w = self.w
        # An end matches an event on its lane: a pid or tid beyond int64 is on none.
        ends = [(i, f) for i, f in enumerate(self.flows)
                if f[5] is not None and int_within(f[3]) is not None and int_within(f[4]) is not None]
        if not ends:
            return
        table = pa.table({
            "i": [i for i, _ in ends], "pid": [f[3] for _, f in ends],
            "tid": [f[4] for _, f in ends], "ts": [f[5] for _, f in ends],
        })
        with w.store.registered(table, "_kineto_flows"):
            hits = dict(w.store.con.execute("""
                SELECT i, event_id FROM (
                    SELECT f.i, e.event_id, row_number() OVER (
                        PARTITION BY f.i ORDER BY (e.kind = 'cpu_op') DESC, e.dur_ns DESC, e.event_id) AS rn
                    FROM _kineto_flows f JOIN events e
                      ON e.trace_id = ? AND e.pid = f.pid AND e.tid = f.tid AND e.start_ns = f.ts
                ) WHERE rn = 1
            """, [w.trace_id]).fetchall())
        starts = {(f[0], f[1]): hits[i] - w.event_base
                  for i, f in enumerate(self.flows) if f[2] == "s" and i in hits}
        links = []
        for i, (cat, fid, ph, _, _, _, kind) in enumerate(self.flows):
            if ph != "s" and i in hits and (cat, fid) in starts:
                links.append((starts[(cat, fid)], hits[i] - w.event_base, kind, fid))
        if links:
            w.append("links", {
                "src_event": [l[0] for l in links], "dst_event": [l[1] for l in links],
                "kind": [l[2] for l in links],
                "correlation": [l[3] if isinstance(l[3], int) else A.as_int(l[3]) for l in links],
            })
