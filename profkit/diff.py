"""`profkit diff BASE NEW`: what changed between two profiles, per step, ranked by time.

Everything is normalised to one steady-state step so traces with different step counts
compare: the step time is the median steady-step duration (`steps.duration.p50_ns`),
else the device span when a trace has no steps; device time per step is the summed
duration of the device activities (kernels, copies, fills) that belong to the steady
steps, divided by their number. Sums, not unions: parts add up to the whole, and the
breakdown rows (interval unions, from the analysis) say how much of it overlapped.

Device work is matched across the two sides three ways:
- by normalised kernel key (`profkit.kernel_names`: `gemm:bf16`, `elementwise:add`, ...);
- by the framework operator that launched it: the outermost `cpu_op` above the launching
  runtime call (`aten::linear`), alone and with its input shapes (Kineto `Input Dims`).
  The same operator on the same shapes is the same work on any vendor, whatever kernels
  its libraries chose, so this is the most robust key across vendors.
The matching rate (share of device time per step whose key the other side also has)
tells how much of the comparison is like for like.

The result is a JSON-serialisable dict (schema `profkit.diff/1`, documented in
docs/diff.md); `profkit.report_diff` renders it.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import kernel_names
from .findings import steady_windows, unusable_input_notes
from .store import Store

DIFF_SCHEMA = "profkit.diff/1"
DEVICE_KINDS = ("kernel", "memcpy", "memset")
NO_OP = "(no cpu op)"
# A finding matched on both sides "grew" when its impact per step rose by more than this
# share of its base impact and by at least GROW_MIN_NS (below that it is noise).
GROW_PCT = 10.0
GROW_MIN_NS = 10_000
# Raw kernel names kept per key and launching ops kept per kernel key, for the reader.
EXAMPLE_NAMES = 3
EXAMPLE_OPS = 3
# Breakdown figures compared in percentage points: (section path, key).
BREAKDOWN_METRICS = (
    (("breakdown",), "idle_pct"),
    (("breakdown",), "compute_pct"),
    (("breakdown",), "non_compute_pct"),
    (("breakdown", "all_devices"), "busy_pct"),
    (("breakdown", "all_devices"), "communication_pct"),
    (("breakdown", "all_devices"), "exposed_communication_pct"),
    (("breakdown", "all_devices"), "memory_pct"),
)


# -- one side ------------------------------------------------------------------

def step_time(trace_result: dict[str, Any]) -> tuple[int, str]:
    """(step time in ns, basis): the median steady step, else the device span."""
    duration = ((trace_result.get("steps") or {}).get("duration") or {}).get("p50_ns")
    if duration:
        return int(duration), "median steady step"
    span = (trace_result.get("breakdown") or {}).get("span_ns") or 0
    return int(span), "device span (no steps)"


def _device_filter(store: Store, trace_id: int, windows: list[dict[str, Any]]) -> tuple[str, list]:
    """SQL condition selecting the trace's device events of the steady steps."""
    if not windows:
        return "TRUE", []
    steps_in_table = store.scalar("SELECT count(*) FROM steps WHERE trace_id = ?", [trace_id])
    ids = [int(w["step"]) for w in windows]
    if steps_in_table:
        # Device work belongs to the step that launched it (derive.assign_steps).
        return f"e.step IN ({', '.join('?' * len(ids))})", ids
    # Steps the analysis inferred are not in the store: take device events by start time.
    parts = " OR ".join("(e.start_ns >= ? AND e.start_ns < ?)" for _ in windows)
    return f"({parts})", [v for w in windows for v in (int(w["start_ns"]), int(w["end_ns"]))]


def device_work(store: Store, trace_id: int, windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every device activity of the steady steps with its key and launching operator."""
    cond, params = _device_filter(store, trace_id, windows)
    rows = store.rows(f"""
        SELECT e.event_id, e.kind, e.name, e.dur_ns, coalesce(e.category, 'other') AS category,
               e.device
        FROM events e
        WHERE e.trace_id = ? AND e.kind IN ('kernel', 'memcpy', 'memset') AND {cond}
    """, [trace_id, *params])
    ops = launching_ops(store, trace_id, cond, params)
    for r in rows:
        r["key"] = kernel_names.normalize(r["name"], r["kind"])
        op, dims = ops.get(r["event_id"], (None, None))
        r["op"] = op or NO_OP
        r["op_shape"] = f"{op} {dims}" if op and dims else r["op"]
    return rows


def launching_ops(store: Store, trace_id: int, cond: str, params: list) -> dict[int, tuple[str, str | None]]:
    """device event -> (outermost cpu_op above its launch call, that op's input dims).

    Walks parent_id up from the runtime call that launched the event (links/`launches`).
    The outermost operator is the one the model called (`aten::linear`); below it, the
    dispatch (`aten::mm`, `aten::addmm`) may differ by vendor for the same work.
    """
    chain = store.rows(f"""
        WITH RECURSIVE chain(dev, eid, lvl) AS (
            SELECT l.dst_event, l.src_event, 0
            FROM links l JOIN events e ON e.event_id = l.dst_event
            WHERE l.trace_id = ? AND l.kind = 'launch' AND {cond}
            UNION ALL
            SELECT c.dev, p.parent_id, c.lvl + 1
            FROM chain c JOIN events p ON p.event_id = c.eid
            WHERE p.parent_id IS NOT NULL AND c.lvl < 256
        ),
        outer_op AS (
            SELECT c.dev, arg_max(c.eid, c.lvl) AS op_event
            FROM chain c JOIN events h ON h.event_id = c.eid
            WHERE h.kind = 'cpu_op'
            GROUP BY c.dev
        )
        SELECT o.dev, h.name, h.args->>'Input Dims' AS dims
        FROM outer_op o JOIN events h ON h.event_id = o.op_event
    """, [trace_id, *params])
    return {r["dev"]: (r["name"], _compact(r["dims"])) for r in chain}


def _compact(dims: str | None) -> str | None:
    if dims is None:
        return None
    try:
        return json.dumps(json.loads(dims), separators=(",", ":"))
    except (TypeError, ValueError):
        return str(dims).replace(" ", "")


def side_profile(store: Store, trace_result: dict[str, Any]) -> dict[str, Any]:
    """Per-step aggregates of one trace, the raw material of a diff."""
    trace_id = trace_result["trace_id"]
    windows = steady_windows(trace_result)
    step_ns, basis = step_time(trace_result)
    work = device_work(store, trace_id, windows)
    n_steps = max(len(windows), 1)
    return {
        "trace": {
            "trace_id": trace_id, "path": trace_result.get("path"), "rank": trace_result.get("rank"),
            "world_size": trace_result.get("world_size"), "vendor": trace_result.get("vendor"),
            "format": trace_result.get("format"),
            "devices": sorted({d.get("name") or "unnamed" for d in trace_result.get("devices") or []}),
            "devices_used": sorted({r["device"] for r in work if r["device"] is not None}),
            "steps_total": (trace_result.get("steps") or {}).get("count", 0),
            "steady_steps": [w["step"] for w in windows],
            "step_source": (trace_result.get("steps") or {}).get("source"),
            "step_ns": step_ns, "step_basis": basis,
        },
        "n_steps": n_steps,
        "work": work,
    }


def _aggregate(work: list[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for r in work:
        g = groups.setdefault(r[field], {"count": 0, "total_ns": 0, "category": defaultdict(int),
                                         "names": defaultdict(int), "ops": defaultdict(int),
                                         "keys": defaultdict(int)})
        g["count"] += 1
        g["total_ns"] += r["dur_ns"]
        g["category"][r["category"]] += r["dur_ns"]
        g["names"][r["name"]] += r["dur_ns"]
        g["ops"][r["op"]] += r["dur_ns"]
        g["keys"][r["key"]] += r["dur_ns"]
    return groups


def _top(weights: dict[str, int], n: int) -> list[str]:
    return [k for k, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


# -- comparing -----------------------------------------------------------------

def _pct_change(base: float, new: float) -> float | None:
    return round(100.0 * (new - base) / base, 3) if base else None


def compare_groups(base: dict[str, Any], new: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """Rows per key of `field`, per step, ranked by |delta time per step|."""
    b_groups, n_groups = _aggregate(base["work"], field), _aggregate(new["work"], field)
    b_steps, n_steps = base["n_steps"], new["n_steps"]
    rows = []
    for key in set(b_groups) | set(n_groups):
        b, n = b_groups.get(key), n_groups.get(key)
        b_ns = b["total_ns"] / b_steps if b else 0.0
        n_ns = n["total_ns"] / n_steps if n else 0.0
        categories: dict[str, int] = defaultdict(int)
        for g in (b, n):
            for cat, ns in (g["category"].items() if g else ()):
                categories[cat] += ns
        row = {
            "key": key,
            "category": _top(categories, 1)[0],
            "status": "both" if b and n else ("new" if n else "vanished"),
            "base_count_per_step": round(b["count"] / b_steps, 3) if b else 0.0,
            "new_count_per_step": round(n["count"] / n_steps, 3) if n else 0.0,
            "base_ns_per_step": round(b_ns), "new_ns_per_step": round(n_ns),
            "base_mean_ns": round(b["total_ns"] / b["count"]) if b else None,
            "new_mean_ns": round(n["total_ns"] / n["count"]) if n else None,
            "delta_ns_per_step": round(n_ns - b_ns),
            "delta_pct": _pct_change(b_ns, n_ns),
        }
        if field == "key":
            row["base_names"] = _top(b["names"], EXAMPLE_NAMES) if b else []
            row["new_names"] = _top(n["names"], EXAMPLE_NAMES) if n else []
            ops: dict[str, int] = defaultdict(int)
            for g in (b, n):
                for op, ns in (g["ops"].items() if g else ()):
                    ops[op] += ns
            row["ops"] = _top(ops, EXAMPLE_OPS)
        else:
            row["base_kernels"] = _top(b["keys"], EXAMPLE_NAMES) if b else []
            row["new_kernels"] = _top(n["keys"], EXAMPLE_NAMES) if n else []
        rows.append(row)
    rows.sort(key=lambda r: (-abs(r["delta_ns_per_step"]), r["key"]))
    return rows


def compare_categories(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    def per_cat(side):
        out: dict[str, int] = defaultdict(int)
        for r in side["work"]:
            out[r["category"]] += r["dur_ns"]
        return {k: v / side["n_steps"] for k, v in out.items()}

    b, n = per_cat(base), per_cat(new)
    b_total, n_total = sum(b.values()), sum(n.values())
    rows = []
    for cat in set(b) | set(n):
        bv, nv = b.get(cat, 0.0), n.get(cat, 0.0)
        rows.append({"category": cat, "base_ns_per_step": round(bv), "new_ns_per_step": round(nv),
                     "delta_ns_per_step": round(nv - bv), "delta_pct": _pct_change(bv, nv),
                     "base_share_pct": round(100.0 * bv / b_total, 3) if b_total else 0.0,
                     "new_share_pct": round(100.0 * nv / n_total, 3) if n_total else 0.0})
    rows.sort(key=lambda r: (-abs(r["delta_ns_per_step"]), r["category"]))
    return rows


def matching(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Share of each side's device time per step whose key the other side also has."""
    def rate(side, other, field, only_with_op=False):
        keys = {r[field] for r in other["work"] if not only_with_op or r["op"] != NO_OP}
        total = sum(r["dur_ns"] for r in side["work"])
        hit = sum(r["dur_ns"] for r in side["work"]
                  if r[field] in keys and (not only_with_op or r["op"] != NO_OP))
        return round(100.0 * hit / total, 3) if total else 0.0

    def combined(side, other):
        # The launching operator and its shapes where there is one, else the kernel key.
        shapes = {r["op_shape"] for r in other["work"] if r["op"] != NO_OP}
        keys = {r["key"] for r in other["work"]}
        total = sum(r["dur_ns"] for r in side["work"])
        hit = sum(r["dur_ns"] for r in side["work"]
                  if (r["op_shape"] in shapes if r["op"] != NO_OP else r["key"] in keys))
        return round(100.0 * hit / total, 3) if total else 0.0

    def with_op(side):
        total = sum(r["dur_ns"] for r in side["work"])
        return round(100.0 * sum(r["dur_ns"] for r in side["work"] if r["op"] != NO_OP) / total, 3) if total else 0.0

    out = {}
    for name, side, other in (("base", base, new), ("new", new, base)):
        out[name] = {
            "kernel_key_pct": rate(side, other, "key"),
            "op_pct": rate(side, other, "op", only_with_op=True),
            "op_shape_pct": rate(side, other, "op_shape", only_with_op=True),
            "with_op_pct": with_op(side),
            "matched_pct": combined(side, other),
        }
    return out


def compare_breakdown(b_res: dict[str, Any], n_res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for path, key in BREAKDOWN_METRICS:
        bv, nv = _dig(b_res, path).get(key), _dig(n_res, path).get(key)
        if bv is None and nv is None:
            continue
        rows.append({"metric": key if path == ("breakdown",) else f"{'.'.join(path[1:])}.{key}",
                     "base": bv, "new": nv,
                     "delta_pts": None if bv is None or nv is None else round(nv - bv, 3)})
    return rows


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for part in path:
        data = (data or {}).get(part) or {}
    return data


# -- findings ------------------------------------------------------------------

IGNORED_SCOPE_KEYS = ("trace_id", "rank", "steps", "stream")


def finding_key(finding: dict[str, Any], devices_used: list[int]) -> str:
    """Rule and scope without trace ids, ranks, step numbers and stream ids (which differ
    between runs and vendors for the same problem); a device becomes its index among the
    devices the trace used, so GPU 3 of rank 3 matches GPU 1 of rank 1."""
    scope = {k: v for k, v in (finding.get("scope") or {}).items() if k not in IGNORED_SCOPE_KEYS}
    if scope.get("device") in devices_used:
        scope["device"] = devices_used.index(scope["device"])
    return finding["rule"] + " " + json.dumps(scope, sort_keys=True, default=str)


def compare_findings(b_findings: list[dict[str, Any]], n_findings: list[dict[str, Any]],
                     b_devices: list[int], n_devices: list[int]) -> dict[str, list[dict[str, Any]]]:
    def index(findings, devices):
        out: dict[str, dict[str, Any]] = {}
        for f in findings:
            key = finding_key(f, devices)
            if key in out:   # the same problem twice in one scope: add up
                out[key]["impact_ns"] += f.get("impact_ns") or 0
            else:
                out[key] = {"rule": f["rule"], "title": f.get("title"), "scope": f.get("scope"),
                            "impact_ns": f.get("impact_ns") or 0}
        return out

    b, n = index(b_findings, b_devices), index(n_findings, n_devices)
    result: dict[str, list[dict[str, Any]]] = {"appeared": [], "vanished": [], "grew": [],
                                               "shrank": [], "unchanged": []}
    for key in set(b) | set(n):
        bf, nf = b.get(key), n.get(key)
        b_ns, n_ns = (bf or {}).get("impact_ns", 0), (nf or {}).get("impact_ns", 0)
        row = {"rule": (nf or bf)["rule"], "title": (nf or bf)["title"],
               "base_title": (bf or {}).get("title"), "scope": (nf or bf)["scope"],
               "base_impact_ns": b_ns if bf else None, "new_impact_ns": n_ns if nf else None,
               "delta_ns": n_ns - b_ns}
        if not bf:
            status = "appeared"
        elif not nf:
            status = "vanished"
        elif n_ns - b_ns > max(GROW_MIN_NS, b_ns * GROW_PCT / 100):
            status = "grew"
        elif b_ns - n_ns > max(GROW_MIN_NS, b_ns * GROW_PCT / 100):
            status = "shrank"
        else:
            status = "unchanged"
        result[status].append(row)
    for rows in result.values():
        rows.sort(key=lambda r: (-abs(r["delta_ns"]), r["rule"]))
    return result


# -- pairs and the whole diff ----------------------------------------------------

def pair_traces(b_traces: list[dict], n_traces: list[dict]) -> tuple[str, str, list[tuple[dict, dict]]]:
    """(mode, note, pairs): rank to rank when both sides hold the same ranks, else the
    first trace of each side (the lowest rank: traces come in rank order)."""
    b_ranks = [t.get("rank") for t in b_traces]
    n_ranks = [t.get("rank") for t in n_traces]
    if (len(b_traces) > 1 and None not in b_ranks and len(set(b_ranks)) == len(b_ranks)
            and sorted(b_ranks) == sorted(n_ranks)):
        by_rank = {t["rank"]: t for t in n_traces}
        pairs = [(t, by_rank[t["rank"]]) for t in sorted(b_traces, key=lambda t: t["rank"])]
        return "rank_to_rank", f"ranks {sorted(b_ranks)} compared rank to rank", pairs
    b, n = b_traces[0], n_traces[0]
    if len(b_traces) == 1 and len(n_traces) == 1:
        note = f"one trace on each side: rank {b.get('rank')} vs rank {n.get('rank')}"
        return "single", note, [(b, n)]
    note = (f"ranks differ (base {b_ranks}, new {n_ranks}): comparing the first trace (lowest rank) of "
            f"each side, rank {b.get('rank')} vs rank {n.get('rank')}")
    return "first_trace", note, [(b, n)]


def diff_pair(base_store: Store, new_store: Store, b_res: dict, n_res: dict,
              b_findings: list[dict], n_findings: list[dict]) -> dict[str, Any]:
    base, new = side_profile(base_store, b_res), side_profile(new_store, n_res)
    b_step, n_step = base["trace"]["step_ns"], new["trace"]["step_ns"]
    b_dev = sum(r["dur_ns"] for r in base["work"]) / base["n_steps"]
    n_dev = sum(r["dur_ns"] for r in new["work"]) / new["n_steps"]
    kernels = compare_groups(base, new, "key")
    ops = compare_groups(base, new, "op")
    findings = compare_findings(
        [f for f in b_findings if (f.get("scope") or {}).get("trace_id") == b_res["trace_id"]],
        [f for f in n_findings if (f.get("scope") or {}).get("trace_id") == n_res["trace_id"]],
        base["trace"]["devices_used"], new["trace"]["devices_used"])
    return {
        "base": base["trace"], "new": new["trace"],
        "step": {"base_ns": b_step, "new_ns": n_step, "delta_ns": n_step - b_step,
                 "delta_pct": _pct_change(b_step, n_step),
                 "basis": base["trace"]["step_basis"] if base["trace"]["step_basis"] == new["trace"]["step_basis"]
                 else f"base: {base['trace']['step_basis']}, new: {new['trace']['step_basis']}"},
        "device_time": {"base_ns_per_step": round(b_dev), "new_ns_per_step": round(n_dev),
                        "delta_ns_per_step": round(n_dev - b_dev), "delta_pct": _pct_change(b_dev, n_dev),
                        "basis": "summed durations of kernels, copies and fills of the steady steps, per step"},
        "breakdown": compare_breakdown(b_res, n_res),
        "categories": compare_categories(base, new),
        "kernels": kernels,
        "new_kernels": [r for r in kernels if r["status"] == "new"],
        "vanished_kernels": [r for r in kernels if r["status"] == "vanished"],
        "ops": ops,
        "op_shapes": compare_groups(base, new, "op_shape"),
        "matching": matching(base, new),
        "findings": findings,
    }


def diff(base_store: Store, new_store: Store, base_result: dict[str, Any],
         new_result: dict[str, Any]) -> dict[str, Any]:
    """Compare two analysed stores (see the module doc); JSON-serialisable."""
    b_traces, n_traces = base_result.get("traces") or [], new_result.get("traces") or []
    if not b_traces or not n_traces:
        raise ValueError("both sides need at least one trace")
    mode, note, pairs = pair_traces(b_traces, n_traces)
    return {
        "schema": DIFF_SCHEMA,
        "base": {"traces": len(b_traces), "paths": sorted({t.get("path") for t in b_traces})},
        "new": {"traces": len(n_traces), "paths": sorted({t.get("path") for t in n_traces})},
        "pairing": {"mode": mode, "note": note},
        # A side whose parser could not use some records: its figures leave them out.
        "warnings": [f"base: {line}" for line in unusable_input_notes(b_traces)]
                    + [f"new: {line}" for line in unusable_input_notes(n_traces)],
        "thresholds": {"finding_grew_pct": GROW_PCT, "finding_grew_min_ns": GROW_MIN_NS},
        "pairs": [diff_pair(base_store, new_store, b, n, base_result.get("findings") or [],
                            new_result.get("findings") or []) for b, n in pairs],
    }


def diff_paths(base_path: str | Path, new_path: str | Path) -> dict[str, Any]:
    """Load (cached), analyse and compare two traces, directories or stores."""
    from . import load
    from .analyses import analyze

    base_store = load(base_path)
    same = Path(base_path).resolve() == Path(new_path).resolve()
    new_store = base_store if same else load(new_path)
    try:
        base_result = analyze(base_store)
        new_result = base_result if same else analyze(new_store)
        return diff(base_store, new_store, base_result, new_result)
    finally:
        base_store.close()
        if not same:
            new_store.close()


def regressions(result: dict[str, Any], pct: float) -> list[str]:
    """Why the new side regressed by more than `pct` percent (empty when it did not):
    step time, or device time per step where a side has no step time."""
    reasons = []
    for pair in result.get("pairs") or []:
        who = f"rank {pair['new'].get('rank')}"
        step, dev = pair["step"], pair["device_time"]
        if step.get("delta_pct") is not None:
            if step["delta_pct"] > pct:
                reasons.append(f"{who}: step time {step['base_ns']} ns -> {step['new_ns']} ns "
                               f"(+{step['delta_pct']:.1f}% > {pct:g}%)")
        elif dev.get("delta_pct") is not None and dev["delta_pct"] > pct:
            reasons.append(f"{who}: device time per step {dev['base_ns_per_step']} ns -> "
                           f"{dev['new_ns_per_step']} ns (+{dev['delta_pct']:.1f}% > {pct:g}%)")
    return reasons


def fail_on_regression(result: dict[str, Any], pct: float) -> bool:
    """True when step time (or device time per step) grew by more than `pct` percent."""
    return bool(regressions(result, pct))
