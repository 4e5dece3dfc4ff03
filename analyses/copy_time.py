"""Device time in memory copies, and how much of it no compute hides: the `copies` entry
of the kernels section and the `kernels.copy_bound` finding (called by the kernels pass).

A step whose device time is mostly copies (weights streamed from the host every step,
activations offloaded and fetched back) is bound by the copy engine and the link, not
by kernels: faster kernels change nothing there. Per device and steady step: the union
of copy time inside the step, the part of it no compute kernel overlaps (exposed), the
bytes moved by direction and the achieved bandwidth.
"""
from __future__ import annotations

import numpy as np

from profkit import intervals
from profkit.findings import Finding

COPY_BOUND_MIN_PCT = 10.0  # exposed copy time per step, as a share of the step
NOT_COMPUTE = ("memory", "communication")
MAX_EXAMPLES = 5
# By framework (Context.advice): None is the general text, in runtime terms.
_ADVICE = {
    None: "The device waits on copies, not kernels. Keep what is copied every step resident on the device "
          "(data uploaded again each step: fit it with lower precision or by splitting the work instead); "
          "where copies must stay, issue them early from pinned memory on a side stream (asynchronous copies "
          "of the next part while this one computes) so compute hides them; and copy less (lower precision, "
          "only what changed).",
    "pytorch": "The device waits on copies, not kernels. Keep what is copied every step resident on the device "
               "(weights offloaded to the host are uploaded again each step: fit them with quantisation or "
               "sharding instead); where copies must stay, issue them early from pinned memory on a side stream "
               "(non_blocking=True, prefetch the next layer while this one computes) so compute hides them; and "
               "copy less (lower precision, only what changed).",
}


def copy_time(store, trace_id: int, acts: dict, windows: list) -> list[dict]:
    """Per device with copies: median per steady step of copy time, exposed copy time,
    copies and bytes; per direction, bytes and copy time per step and the bandwidth over
    all the steps' copies (bytes / summed copy durations of that direction). A copy
    belongs to the step window it starts in."""
    copies = acts["kind"] == "memcpy"
    if not copies.any() or not windows:
        return []
    info = {r["event_id"]: (r["direction"] or "unknown", int(r["bytes"] or 0)) for r in store.rows("""
        SELECT c.event_id, c.bytes, c.direction FROM copies c JOIN events e USING (event_id)
        WHERE e.trace_id = ? AND e.kind = 'memcpy'
    """, [trace_id])}
    lo = np.array([w[1] for w in windows], dtype=np.int64)
    hi = np.array([w[2] for w in windows], dtype=np.int64)
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    out = []
    for d in np.unique(acts["device"][copies]):
        on_dev = acts["device"] == d
        mine = np.flatnonzero(on_dev & copies)
        compute = on_dev & (acts["kind"] == "kernel") & ~np.isin(acts["category"], NOT_COMPUTE)
        copy_set = intervals.union(acts["start_ns"][mine], acts["end_ns"][mine])
        exposed_set = intervals.subtract(copy_set, intervals.union(acts["start_ns"][compute], acts["end_ns"][compute]))
        k = intervals.containing(lo, hi, acts["start_ns"][mine])  # the window each copy starts in
        mine, k = mine[k >= 0], k[k >= 0]
        rows = [info.get(int(e), ("unknown", 0)) for e in acts["event_id"][mine].tolist()]
        direction = np.array([r[0] for r in rows], dtype=object)
        moved_bytes = np.array([r[1] for r in rows], dtype=np.float64)
        dur = acts["dur_ns"][mine].astype(np.float64)
        n = lo.size
        count = np.bincount(k, minlength=n)
        per_dir = {}
        for name in sorted(set(direction.tolist())):
            sel = direction == name
            b = np.bincount(k[sel], weights=moved_bytes[sel], minlength=n)
            t = np.bincount(k[sel], weights=dur[sel], minlength=n)
            per_dir[name] = {
                "bytes_per_step": _median(b), "ns_per_step": _median(t),
                "gb_per_s": round(float(b.sum() / t.sum()), 3) if t.sum() and b.sum() else None,
            }
        largest = mine[np.argsort(-acts["dur_ns"][mine], kind="stable")[:MAX_EXAMPLES]]
        out.append({
            "device": int(d),
            "copy_ns_per_step": _median(intervals.overlap_sums(*copy_set, lo, hi)),
            "exposed_ns_per_step": _median(intervals.overlap_sums(*exposed_set, lo, hi)),
            "copies_per_step": _median(count),
            "bytes_per_step": _median(np.bincount(k, weights=moved_bytes, minlength=n)),
            "by_direction": per_dir,
            "largest": [int(e) for e in acts["event_id"][largest]],
        })
    return out


def copy_bound_findings(ctx, copies: list[dict], windows: list, step_ref: int, share, keep) -> list[Finding]:
    """`kernels.copy_bound` for each device whose exposed copy time is at least
    COPY_BOUND_MIN_PCT of a step and passes the kernels pass's noise floor (`keep`: on a
    step of tens of microseconds 10% is a few). Impact: that exposed time (a bound: hiding
    or removing the copies wins back at most what no compute already overlaps)."""
    out = []
    for c in copies:
        impact = c["exposed_ns_per_step"]
        pct = 100.0 * impact / step_ref if step_ref else 0.0
        if pct < COPY_BOUND_MIN_PCT or not keep(impact):
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
            title=f"{ctx.device_label(d)} spends {pct:.0f}% of each step in memory copies no compute overlaps ({moved})",
            impact_ns=impact, share_pct=share(impact),
            scope=ctx.base_scope(device=d, steps=[w[0] for w in windows if w[0] is not None]),
            evidence={k: v for k, v in c.items() if k not in ("device", "largest")} | {"examples": c["largest"]},
            sql=(f"SELECT event_id, name, start_ns, dur_ns, bytes, direction, src_memory, dst_memory, bytes_per_s "
                 f"FROM copies_view WHERE trace_id = {ctx.trace_id} AND kind = 'memcpy' "
                 f"AND coalesce(device, -1) = {d} ORDER BY dur_ns DESC LIMIT 20"),
            recommendation=ctx.advice(_ADVICE),
            impact_basis="bound", count=c["copies_per_step"]))
    return out


def _median(values) -> int:
    return int(round(float(np.median(values))))
