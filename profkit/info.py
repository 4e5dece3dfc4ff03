"""What a store holds, per trace: format, rank, devices, span, counts by kind, issues."""
from __future__ import annotations

from typing import Any

from .store import Store


def summary(store: Store) -> list[dict[str, Any]]:
    traces = store.rows("""
        SELECT trace_id, path, format, format_version, producer, vendor, rank, rank_source,
               world_size, hostname, start_ns, end_ns, end_ns - start_ns AS span_ns,
               event_count, issue_count, source_records, ingest_seconds
        FROM traces ORDER BY rank, trace_id
    """)
    kinds = store.rows("SELECT trace_id, kind, count(*) AS n FROM events GROUP BY ALL ORDER BY kind")
    devices = store.rows("""
        SELECT trace_id, device, node_id, vendor, name, arch, sm_count, memory_bytes
        FROM devices ORDER BY trace_id, device
    """)
    issues = store.rows("SELECT trace_id, reason, count, unusable, example FROM ingest_issues "
                        "ORDER BY unusable DESC, count DESC, reason")
    used = store.rows("""
        SELECT trace_id, count(DISTINCT device) AS active_devices,
               min(start_ns) AS device_start_ns, max(end_ns) AS device_end_ns
        FROM events WHERE kind IN ('kernel', 'memcpy', 'memset') GROUP BY trace_id
    """)
    steps = store.rows("SELECT trace_id, count(*) AS n, any_value(source) AS source FROM steps GROUP BY trace_id")
    for trace in traces:
        tid = trace["trace_id"]
        trace["events_by_kind"] = {r["kind"]: r["n"] for r in kinds if r["trace_id"] == tid}
        trace["devices"] = [{k: v for k, v in d.items() if k != "trace_id"} for d in devices if d["trace_id"] == tid]
        trace["ingest_issues"] = [{k: v for k, v in i.items() if k != "trace_id"} for i in issues if i["trace_id"] == tid]
        activity = next((u for u in used if u["trace_id"] == tid), None)
        trace["active_devices"] = activity["active_devices"] if activity else 0
        trace["device_span_ns"] = (activity["device_end_ns"] - activity["device_start_ns"]) if activity else 0
        step = next((s for s in steps if s["trace_id"] == tid), None)
        trace["steps"] = step["n"] if step else 0
        trace["step_source"] = step["source"] if step else None
    return traces
