"""Where the critical path and the findings go on the timeline.

Pure placement logic (no protobuf): turns critical-path segments and finding dicts into
marks (time spans on the store's common clock, with a name and annotations, as columns)
and the pairs of events the critical path's arrows join.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from .store import Store
from .timeline_slices import Note, notes_of, table_codes

MAX_MARKS_PER_FINDING = 10
_EVIDENCE_TEXT_LIMIT = 4000
_EVENT_KEYS = ("event_id", "event", "next_event", "launch_event", "device_event", "runtime_event",
               "src_event", "dst_event")


@dataclass
class Mark:
    start: int                 # common clock (trace clock + clock_offset_ns)
    end: int
    name: str
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass
class Marks:
    """Spans for an overlay track, column by column: starts and ends (common clock), each
    one's name as a code into `names`, and their annotations."""
    start: np.ndarray
    end: np.ndarray
    names: list[str]
    name_codes: np.ndarray
    notes: list[Note]

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def of(cls, marks: list[Mark]) -> "Marks":
        names, codes = table_codes([m.name for m in marks])
        return cls(np.array([m.start for m in marks], np.int64), np.array([m.end for m in marks], np.int64),
                   names, codes, notes_of([m.annotations for m in marks]))


def event_times(store: Store, event_ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """event_id -> (trace_id, start_ns, end_ns) on the trace clock, for the ids that exist."""
    found = _EventTimes(store, np.array([int(e) for e in event_ids if e is not None], np.int64))
    return dict(zip(found.ids.tolist(), zip(found.trace.tolist(), found.start.tolist(), found.end.tolist())))


# -- critical path ---------------------------------------------------------------------

def critical_path_marks(store: Store, segments: list[dict], exported: set[int]
                        ) -> tuple[Marks, np.ndarray, int]:
    """(one mark per segment, event pairs for arrows (n x 2), segments skipped).

    Segment times are on the store's common clock (trace clock + `clock_offset_ns`), as
    `profkit.graph_build` computes them. A segment is skipped when its event (or, for an
    event-less segment, the nearest segment's event) is in a trace not exported. Column by
    column: a long path has hundreds of thousands of segments.
    """
    n = len(segments)
    event = np.array([_id_or(s.get("event_id")) for s in segments], np.int64)
    times = _EventTimes(store, event[event >= 0])
    own_trace, event_start, event_end, known = times.lookup(event)
    trace = _filled(own_trace, known)
    exported_ids = np.array(sorted(exported), np.int64)
    in_export = np.isin(trace, exported_ids)
    keep = in_export | (trace < 0)  # no event anywhere near: kept, as before
    starts = np.array([s["start_ns"] for s in segments], np.int64).reshape(n)
    ends = np.array([s["end_ns"] for s in segments], np.int64).reshape(n)
    causes = [str(s.get("cause") or "unknown") for s in segments]
    names = [f"{c}: {s['name']}" if s.get("name") else c for c, s in zip(causes, segments)]
    kept = np.flatnonzero(keep)
    cause_table, cause_codes = table_codes([causes[i] for i in kept.tolist()])
    name_table, name_codes = table_codes([names[i] for i in kept.tolist()])
    has_event = event[kept] >= 0
    has_trace = trace[kept] >= 0
    marks = Marks(starts[kept], np.maximum(starts[kept], ends[kept]), name_table, name_codes, [
        Note("segment", "int", kept.astype(np.int64), np.ones(len(kept), bool)),
        Note("cause", "string", cause_codes, np.ones(len(kept), bool), cause_table),
        Note("event_id", "int", np.where(has_event, event[kept], 0), has_event),
        Note("dur_ns", "int", ends[kept] - starts[kept], np.ones(len(kept), bool)),
        Note("trace_id", "int", np.where(has_trace, trace[kept], 0), has_trace),
    ])
    on_path = known & np.isin(own_trace, exported_ids)
    return marks, _path_pairs(event[on_path], event_start[on_path], event_end[on_path]), n - len(kept)


def _id_or(value) -> int:
    return int(value) if value is not None else -1


class _EventTimes:
    """Trace, start and end of events by id (on the trace clock), for the ids that exist."""

    def __init__(self, store: Store, event_ids: np.ndarray):
        ids = np.unique(event_ids)
        if len(ids):
            with store.registered(pa.table({"event_id": ids}), "_timeline_ids"):
                found = store.con.execute(
                    "SELECT e.event_id, e.trace_id, e.start_ns, e.end_ns FROM events e "
                    "JOIN _timeline_ids i ON i.event_id = e.event_id ORDER BY e.event_id").fetchnumpy()
        else:
            found = {k: np.zeros(0, np.int64) for k in ("event_id", "trace_id", "start_ns", "end_ns")}
        self.ids = np.asarray(found["event_id"], np.int64)
        self.trace = np.asarray(found["trace_id"], np.int64)
        self.start = np.asarray(found["start_ns"], np.int64)
        self.end = np.asarray(found["end_ns"], np.int64)

    def lookup(self, event: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(trace, start, end, known) per id; -1 / 0 / 0 / False where unknown."""
        at = np.clip(np.searchsorted(self.ids, event), 0, max(len(self.ids) - 1, 0))
        known = (event >= 0) & (len(self.ids) > 0)
        if len(self.ids):
            known &= self.ids[at] == event
        pick = lambda a: np.where(known, a[at], 0) if len(a) else np.zeros(len(event), np.int64)  # noqa: E731
        return np.where(known, pick(self.trace), -1), pick(self.start), pick(self.end), known


def _filled(trace: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Each segment's trace, an event-less one taking the last one's before it (or, before
    any, the first one's after it); -1 where no segment has an event."""
    n = len(trace)
    if not known.any():
        return np.full(n, -1, np.int64)
    last = np.maximum.accumulate(np.where(known, np.arange(n), -1))
    after = np.flatnonzero(known)[0]
    return trace[np.where(last >= 0, last, after)]


def _path_pairs(chain: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Consecutive distinct events of the path, earlier-starting first (n x 2).

    Perfetto binds a flow in timestamp order, so an arrow must go from the slice that
    begins first; on a well-formed path that is the earlier segment anyway.
    """
    distinct = np.r_[True, chain[1:] != chain[:-1]] if len(chain) else np.zeros(0, bool)
    chain, start, end = chain[distinct], start[distinct], end[distinct]
    a, b = chain[:-1], chain[1:]
    swap = (start[1:] < start[:-1]) | ((start[1:] == start[:-1]) & (end[1:] > end[:-1]))
    return np.stack([np.where(swap, b, a), np.where(swap, a, b)], axis=1) if len(a) else np.zeros((0, 2), np.int64)


# -- findings --------------------------------------------------------------------------

def finding_marks(store: Store, findings: list[dict], offsets: dict[int, int],
                  exported: set[int]) -> tuple[Marks, int]:
    """Marks for the findings (up to MAX_MARKS_PER_FINDING each) and how many were skipped."""
    located = []
    wanted_events: set[int] = set()
    for finding in findings:
        windows, events = evidence_locations(finding.get("evidence") or {})
        located.append((finding, windows, events))
        if not windows:
            wanted_events.update(events[:MAX_MARKS_PER_FINDING])
    times = event_times(store, wanted_events)
    traces = {r["trace_id"]: r for r in store.rows("SELECT trace_id, rank, start_ns, end_ns FROM traces")}
    marks, skipped = [], 0
    for finding, windows, events in located:
        scope = finding.get("scope") or {}
        trace_id = scope.get("trace_id")
        if trace_id is None and scope.get("rank") is not None:
            trace_id = next((t for t, row in traces.items() if row["rank"] == scope["rank"]), None)
        if trace_id is None or trace_id not in exported:
            skipped += 1
            continue
        spans, how = _finding_spans(store, trace_id, scope, windows, events, times, traces)
        if not spans:
            skipped += 1
            continue
        rank = scope.get("rank", traces[trace_id]["rank"])
        name = f"#{rank if rank is not None else '?'} {finding.get('rule')}: {finding.get('title')}"
        notes = _finding_annotations(finding, how)
        offset = offsets.get(trace_id, 0)
        for lo, hi in spans[:MAX_MARKS_PER_FINDING]:
            marks.append(Mark(int(lo) + offset, int(max(lo, hi)) + offset, name, notes))
    return Marks.of(marks), skipped


def _finding_spans(store, trace_id, scope, windows, events, times, traces):
    if windows:
        return windows, "evidence window"
    spans = [(times[e][1], times[e][2]) for e in events if e in times and times[e][0] == trace_id]
    if spans:
        return spans, "example event"
    steps = [s for s in scope.get("steps") or [] if isinstance(s, int)]
    if "step" in scope and isinstance(scope["step"], int):
        steps.append(scope["step"])
    if steps:
        rows = store.con.execute(
            f"SELECT start_ns, end_ns FROM steps WHERE trace_id = ? AND step IN ({','.join('?' * len(steps))}) "
            "ORDER BY start_ns", [trace_id, *steps]).fetchall()
        if rows:
            return [tuple(r) for r in rows], "step window"
    row = traces.get(trace_id)
    if row and row["start_ns"] is not None:
        return [(row["start_ns"], row["end_ns"])], "trace span"
    return [], None


def _finding_annotations(finding: dict, how: str) -> dict[str, Any]:
    impact = int(finding.get("impact_ns") or 0)
    evidence = json.dumps(finding.get("evidence"), default=str)
    if len(evidence) > _EVIDENCE_TEXT_LIMIT:
        evidence = evidence[:_EVIDENCE_TEXT_LIMIT] + "..."
    return {
        "rule": finding.get("rule"), "title": finding.get("title"),
        "impact_ns": impact, "impact_ms": round(impact / 1e6, 3),
        "share_pct": finding.get("share_pct"), "impact_basis": finding.get("impact_basis"),
        "count": finding.get("count"), "recommendation": finding.get("recommendation"),
        "sql": finding.get("sql"), "located_by": how,
        "scope": json.dumps(finding.get("scope"), default=str), "evidence": evidence,
    }


def evidence_locations(evidence: Any) -> tuple[list[tuple[int, int]], list[int]]:
    """Time windows and example event ids found anywhere in a finding's evidence.

    Windows: `windows` / `*window*` lists of [start_ns, end_ns], and dicts holding a
    `<x>start_ns` with its `<x>end_ns`. Events: `event_id`-like keys and `*example*`
    lists of ids.
    """
    windows: list[tuple[int, int]] = []
    events: list[int] = []
    _walk(evidence, None, windows, events, 0)
    return _dedupe(windows), _dedupe(events)


def _walk(value, key, windows, events, depth) -> None:
    if depth > 5:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k.endswith("start_ns") and isinstance(v, int):
                end = value.get(k[: -len("start_ns")] + "end_ns")
                if isinstance(end, int) and end >= v:
                    windows.append((v, end))
            _walk(v, k if isinstance(k, str) else None, windows, events, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        if key and "window" in key and _is_pair(value):
            windows.append((int(value[0]), int(value[1])))
            return
        if key and "window" in key and value and all(_is_pair(v) for v in value):
            windows.extend((int(v[0]), int(v[1])) for v in value)
            return
        if key and "example" in key and all(_is_int(v) for v in value):
            events.extend(int(v) for v in value)
            return
        for v in value:
            _walk(v, key, windows, events, depth + 1)
        return
    if key in _EVENT_KEYS and _is_int(value):
        events.append(int(value))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pair(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) for x in v) and v[0] <= v[1]


def _dedupe(items: list) -> list:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
