"""Device time in memory copies, and how much of it no compute hides: the `copies` entry
of the kernels section and the `kernels.copy_bound` finding (called by the kernels pass).

A step whose device time is mostly copies (weights streamed from the host every step,
activations offloaded and fetched back) is bound by the copy engine and the link, not
by kernels: faster kernels change nothing there. Per device and steady step: the union
of copy time inside the step, the part of it no compute kernel overlaps (exposed), the
bytes moved by direction and the achieved bandwidth.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from profkit import intervals
from profkit.findings import Finding

COPY_BOUND_MIN_PCT = 10.0  # exposed copy time per step, as a share of the step
NOT_COMPUTE = ("memory", "communication")
MAX_EXAMPLES = 5


def copy_time(store, trace_id: int, acts: dict, windows: list) -> list[dict]:
    """Per device with copies: median per steady step of copy time, exposed copy time,
    copies and bytes; per direction, bytes and copy time per step and the bandwidth over
    all the steps' copies (bytes / summed copy durations of that direction)."""
    copies = acts["kind"] == "memcpy"
    if not copies.any():
        return []
    info = {r["event_id"]: r for r in store.rows("""
        SELECT c.event_id, c.bytes, c.direction FROM copies c JOIN events e USING (event_id)
        WHERE e.trace_id = ? AND e.kind = 'memcpy'
    """, [trace_id])}
    out = []
    for d in np.unique(acts["device"][copies]):
        on_dev = acts["device"] == d
        mine = on_dev & copies
        compute = on_dev & (acts["kind"] == "kernel") & ~np.isin(acts["category"], NOT_COMPUTE)
        copy_set = intervals.union(acts["start_ns"][mine], acts["end_ns"][mine])
        exposed_set = intervals.subtract(copy_set, intervals.union(acts["start_ns"][compute], acts["end_ns"][compute]))
        per_step = []
        for _, lo, hi in windows:
            inside = mine & (acts["start_ns"] >= lo) & (acts["start_ns"] < hi)
            moved: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # direction -> [bytes, ns]
            for e, ns in zip(acts["event_id"][inside].tolist(), acts["dur_ns"][inside].tolist()):
                row = info.get(e) or {}
                entry = moved[row.get("direction") or "unknown"]
                entry[0] += int(row.get("bytes") or 0)
                entry[1] += int(ns)
            per_step.append({"copy_ns": intervals.covered(copy_set, lo, hi),
                             "exposed_ns": intervals.covered(exposed_set, lo, hi),
                             "copies": int(inside.sum()), "moved": dict(moved)})
        directions = sorted({k for s in per_step for k in s["moved"]})
        totals = {k: [sum(s["moved"].get(k, [0, 0])[i] for s in per_step) for i in (0, 1)] for k in directions}
        in_steps = mine & _in_windows(acts["start_ns"], windows)
        largest = np.argsort(-acts["dur_ns"][in_steps])[:MAX_EXAMPLES]
        out.append({
            "device": int(d),
            "copy_ns_per_step": _median(per_step, "copy_ns"),
            "exposed_ns_per_step": _median(per_step, "exposed_ns"),
            "copies_per_step": _median(per_step, "copies"),
            "bytes_per_step": int(np.median([sum(b for b, _ in s["moved"].values()) for s in per_step])),
            "by_direction": {k: {
                "bytes_per_step": int(np.median([s["moved"].get(k, [0, 0])[0] for s in per_step])),
                "ns_per_step": int(np.median([s["moved"].get(k, [0, 0])[1] for s in per_step])),
                "gb_per_s": round(totals[k][0] / totals[k][1], 3) if totals[k][1] and totals[k][0] else None,
            } for k in directions},
            "largest": [int(e) for e in acts["event_id"][in_steps][largest]],
        })
    return out


def _in_windows(starts: np.ndarray, windows: list) -> np.ndarray:
    inside = np.zeros(starts.size, dtype=bool)
    for _, lo, hi in windows:
        inside |= (starts >= lo) & (starts < hi)
    return inside


def _median(per_step: list[dict], key: str) -> int:
    return int(round(np.median([s[key] for s in per_step]))) if per_step else 0


def copy_bound_findings(ctx, copies: list[dict], windows: list, step_ref: int, share) -> list[Finding]:
    """`kernels.copy_bound` for each device whose exposed copy time is at least
    COPY_BOUND_MIN_PCT of a step. Impact: that exposed time (a bound: hiding or removing
    the copies wins back at most what no compute already overlaps)."""
    out = []
    for c in copies:
        impact = c["exposed_ns_per_step"]
        pct = 100.0 * impact / step_ref if step_ref else 0.0
        if pct < COPY_BOUND_MIN_PCT:
            continue
        d = c["device"]
        by_dir = c["by_direction"]
        main = max(by_dir, key=lambda k: by_dir[k]["ns_per_step"]) if by_dir else None
        moved = f"{c['bytes_per_step'] / 1e6:.1f} MB per step"
        if main:
            rate = by_dir[main]["gb_per_s"]
            moved += f"; most copy time {main}" + (f" at {rate:.1f} GB/s" if rate else "")
        out.append(Finding(
            rule="kernels.copy_bound",
            title=f"GPU {d} spends {pct:.0f}% of each step in memory copies no compute overlaps ({moved})",
            impact_ns=impact, share_pct=share(impact),
            scope=ctx.base_scope(device=d, steps=[w[0] for w in windows if w[0] is not None]),
            evidence={k: v for k, v in c.items() if k not in ("device", "largest")} | {"examples": c["largest"]},
            sql=(f"SELECT event_id, name, start_ns, dur_ns, bytes, direction, src_memory, dst_memory, bytes_per_s "
                 f"FROM copies_view WHERE trace_id = {ctx.trace_id} AND kind = 'memcpy' "
                 f"AND coalesce(device, -1) = {d} ORDER BY dur_ns DESC LIMIT 20"),
            recommendation=("The device waits on copies, not kernels. Keep what is copied every step resident "
                            "on the device (weights offloaded to the host are uploaded again each step: fit "
                            "them with quantisation or sharding instead); where copies must stay, issue them "
                            "early from pinned memory on a side stream (non_blocking=True, prefetch the next "
                            "layer while this one computes) so compute hides them; and copy less (lower "
                            "precision, only what changed)."),
            impact_basis="bound", count=c["copies_per_step"]))
    return out
