"""Where the critical path and the findings go on the timeline.

Pure placement logic (no protobuf): turns critical-path segments and finding dicts into
marks (time spans on the store's common clock, with a name and annotations) and the
pairs of events the critical path's arrows join.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from .store import Store

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


def event_times(store: Store, event_ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """event_id -> (trace_id, start_ns, end_ns) on the trace clock, for the ids that exist."""
    ids = sorted({int(e) for e in event_ids if e is not None})
    if not ids:
        return {}
    with store.registered(_id_table(ids), "_timeline_ids"):
        rows = store.con.execute(
            "SELECT e.event_id, e.trace_id, e.start_ns, e.end_ns FROM events e "
            "JOIN _timeline_ids i ON i.event_id = e.event_id").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _id_table(ids: list[int]):
    import pyarrow as pa

    return pa.table({"event_id": pa.array(ids, pa.int64())})


# -- critical path ---------------------------------------------------------------------

def critical_path_marks(store: Store, segments: list[dict], exported: set[int]
                        ) -> tuple[list[Mark], list[tuple[int, int]], int]:
    """(one mark per segment, event pairs for arrows, segments skipped).

    Segment times are on the store's common clock (trace clock + `clock_offset_ns`), as
    `profkit.graph_build` computes them. A segment is skipped when its event (or, for an
    event-less segment, the nearest segment's event) is in a trace not exported.
    """
    times = event_times(store, (s.get("event_id") for s in segments))
    trace_of = _segment_traces(segments, times)
    marks, skipped = [], 0
    for i, seg in enumerate(segments):
        trace_id = trace_of[i]
        if trace_id is not None and trace_id not in exported:
            skipped += 1
            continue
        cause = str(seg.get("cause") or "unknown")
        name = str(seg.get("name") or "")
        start, end = int(seg["start_ns"]), int(seg["end_ns"])
        marks.append(Mark(start, max(start, end), f"{cause}: {name}" if name else cause, {
            "segment": i, "cause": cause, "event_id": seg.get("event_id"),
            "dur_ns": end - start, "trace_id": trace_id,
        }))
    return marks, _path_pairs(segments, times, exported), skipped


def _segment_traces(segments: list[dict], times: dict) -> list[int | None]:
    own = [times[s["event_id"]][0] if s.get("event_id") in times else None for s in segments]
    out = list(own)
    last = None
    for i, t in enumerate(own):           # forward fill, then backward fill the leading gap
        last = t if t is not None else last
        out[i] = last
    nxt = None
    for i in range(len(own) - 1, -1, -1):
        nxt = own[i] if own[i] is not None else nxt
        if out[i] is None:
            out[i] = nxt
    return out


def _path_pairs(segments, times, exported) -> list[tuple[int, int]]:
    """Consecutive distinct events of the path, earlier-starting first.

    Perfetto binds a flow in timestamp order, so an arrow must go from the slice that
    begins first; on a well-formed path that is the earlier segment anyway.
    """
    chain = []
    for seg in segments:
        eid = seg.get("event_id")
        if eid in times and times[eid][0] in exported and (not chain or chain[-1] != eid):
            chain.append(eid)
    pairs = []
    for a, b in zip(chain, chain[1:]):
        if (times[b][1], -times[b][2]) < (times[a][1], -times[a][2]):
            a, b = b, a
        pairs.append((a, b))
    return pairs


# -- findings --------------------------------------------------------------------------

def finding_marks(store: Store, findings: list[dict], offsets: dict[int, int],
                  exported: set[int]) -> tuple[list[Mark], int]:
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
    return marks, skipped


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
