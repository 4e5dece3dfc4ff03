"""Skew between ranks: collective instances matched across the traces of one store, who
arrives last, and how long the others wait for it. Used by the communication pass.

A store with several ranks' traces shows what one rank cannot: who arrives last at each
collective. Passes run per trace, so the matching is computed once per store and cached
(keyed by the store object, invalidated when its traces or collectives change); each
rank's pass result carries its own wait, and the communication pass makes the finding
only on the smallest participating trace id, so it appears once per store.

Matching: by (process group, sequence number) where the input gives `collectives.seq`;
else by order of occurrence per (process group, op) on each rank; without a process group
name, the communicator's stream (numbered by first use on each rank) stands in for it.
Clocks: `traces.clock_offset_ns` aligns ranks (0 when the parser did not set it: Kineto
ranks on one host share the host's steady clock). Arrival = kernel start.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from profkit import intervals as iv
from profkit.graph_model import ARRIVAL_TOLERANCE_NS

# compute_unions(store, trace_id) -> {device: union of compute kernel intervals}
ComputeUnions = Callable[[Any, int], dict]
_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
EXAMPLES = 5


_SKEW_CACHE: "weakref.WeakKeyDictionary[Any, tuple[Any, dict | None]]" = weakref.WeakKeyDictionary()


def cross_rank(store, compute_unions: ComputeUnions, peer_steps: dict | None = None) -> dict[str, Any] | None:
    """Collective instances matched across the store's ranks, or None for one rank.
    `peer_steps`: each trace's steady steps as the steps pass found them (Context.peer_steps);
    a trace not in it has those of the steps table."""
    windows = {tid: tuple((s.step, s.start_ns, s.end_ns) for s in steps)
               for tid, steps in (peer_steps or {}).items()}
    signature = (tuple(store.trace_ids()), store.scalar("SELECT count(*) FROM collectives"),
                 tuple(sorted(windows.items())))
    cached = _SKEW_CACHE.get(store)
    if cached is not None and cached[0] == signature:
        return cached[1]
    result = _compute_cross_rank(store, compute_unions, windows)
    _SKEW_CACHE[store] = (signature, result)
    return result


def _compute_cross_rank(store, compute_unions: ComputeUnions, windows: dict[int, tuple]) -> dict[str, Any] | None:
    traces = store.rows("""
        SELECT trace_id, rank, world_size, coalesce(clock_offset_ns, 0) AS offset_ns,
               start_ns + coalesce(clock_offset_ns, 0) AS lo, end_ns + coalesce(clock_offset_ns, 0) AS hi
        FROM traces WHERE trace_id IN (SELECT DISTINCT trace_id FROM comms WHERE kind = 'kernel')
        ORDER BY trace_id
    """)
    ranks = [t["rank"] for t in traces]
    # Several ranks of one job: distinct ranks, one world size, overlapping time ranges.
    if len(traces) < 2 or None in ranks or len(set(ranks)) != len(ranks):
        return None
    if len({t["world_size"] for t in traces if t["world_size"] is not None}) > 1:
        return None
    if max(t["lo"] for t in traces) >= min(t["hi"] for t in traces):
        return None
    rank_of = {t["trace_id"]: t["rank"] for t in traces}
    rows = store.rows("""
        SELECT c.trace_id, c.event_id, c.start_ns + coalesce(t.clock_offset_ns, 0) AS arrival,
               c.end_ns + coalesce(t.clock_offset_ns, 0) AS finish, c.start_ns, c.step,
               coalesce(c.op, 'other') AS op, c.process_group, c.seq, c.stream, c.device,
               coalesce(t.clock_offset_ns, 0) AS offset_ns
        FROM comms c JOIN traces t USING (trace_id) WHERE c.kind = 'kernel'
        ORDER BY c.trace_id, c.start_ns, c.event_id
    """)
    instances: dict[tuple, dict[int, dict]] = {}
    ordinal: dict[tuple, int] = {}
    stream_index: dict[tuple, int] = {}
    basis_count: dict[str, int] = {}
    for row in rows:
        tid = row["trace_id"]
        if row["process_group"] is not None and row["seq"] is not None:
            key, basis = ("pg", row["process_group"], "seq", row["seq"]), "seq"
        else:
            if row["process_group"] is not None:
                comm = ("pg", row["process_group"])
                basis = "order_by_process_group"
            else:  # no group name: the communicator's stream, by order of first use, stands in
                comm = ("stream", stream_index.setdefault((tid, row["stream"]),
                                                          sum(1 for k in stream_index if k[0] == tid)))
                basis = "order_by_stream"
            n = ordinal.get((tid, comm, row["op"]), 0)
            ordinal[(tid, comm, row["op"])] = n + 1
            key = (*comm, row["op"], n)
        per_rank = instances.setdefault(key, {})
        if tid not in per_rank:  # the first kernel of an instance on a rank is its arrival
            per_rank[tid] = row
            basis_count[basis] = basis_count.get(basis, 0) + 1

    steady = _steady_steps_by_trace(store, list(rank_of), windows)
    steady_numbers = {tid: frozenset(s for s, _, _ in steps) for tid, steps in steady.items()}
    per_trace = {tid: {"rank": rank_of[tid], "instances": 0, "last_count": 0, "wait_ns_total": 0,
                       "wait_ns_steady": 0} for tid in rank_of}
    steady_waits: dict[int, list[tuple]] = {tid: [] for tid in rank_of}
    matched = consistent = 0
    last_ops: dict[int, dict[str, int]] = {tid: {} for tid in rank_of}
    examples = []
    for key, per_rank in instances.items():
        if len(per_rank) < 2:
            continue
        matched += 1
        arrivals = {tid: r["arrival"] for tid, r in per_rank.items()}
        last_tid = max(arrivals, key=arrivals.get)
        last = arrivals[last_tid]
        # Nobody finishes a collective before the last rank arrives: if someone did, the
        # match (or the clock alignment) is wrong, and the instance is left out.
        if last > min(r["finish"] for r in per_rank.values()) + ARRIVAL_TOLERANCE_NS:
            continue
        consistent += 1
        second = max(a for tid, a in arrivals.items() if tid != last_tid)
        if last - second > ARRIVAL_TOLERANCE_NS:
            per_trace[last_tid]["last_count"] += 1
            op = per_rank[last_tid]["op"]
            last_ops[last_tid][op] = last_ops[last_tid].get(op, 0) + 1
            if len(examples) < EXAMPLES:
                examples.append({"key": [str(k) for k in key], "last_rank": rank_of[last_tid],
                                 "waits_ns": {str(rank_of[t]): int(last - a) for t, a in arrivals.items()},
                                 "event_ids": {str(rank_of[t]): int(r["event_id"]) for t, r in per_rank.items()}})
        for tid, r in per_rank.items():
            wait = int(last - r["arrival"])
            per_trace[tid]["instances"] += 1
            per_trace[tid]["wait_ns_total"] += wait
            if _in_steady(steady[tid], steady_numbers[tid], r["step"], r["start_ns"]):
                per_trace[tid]["wait_ns_steady"] += wait
                if wait > 0:  # on the trace's own clock, to hold against its compute kernels
                    steady_waits[tid].append((r["device"], r["start_ns"], r["start_ns"] + wait))
    if not matched:
        return None
    for tid, facts in per_trace.items():
        n_steady = max(1, len(steady[tid]))
        facts["steady_steps"] = len(steady[tid])
        facts["wait_ns_per_step"] = int(round(facts.pop("wait_ns_steady") / n_steady))
        facts["exposed_wait_ns_per_step"] = int(round(_exposed_wait(compute_unions(store, tid), steady_waits[tid]) / n_steady))
        facts["last_pct"] = _pct(facts["last_count"], consistent)
    result = {"ranks": sorted(rank_of.values()), "trace_ids": sorted(rank_of), "matched": matched,
              "consistent": consistent, "match_basis": basis_count, "per_trace": per_trace,
              "examples": examples, "straggler": None}
    if consistent:
        straggler = max(per_trace, key=lambda t: (per_trace[t]["last_count"], -t))
        others = [f["wait_ns_per_step"] for t, f in per_trace.items() if t != straggler]
        others_exposed = [f["exposed_wait_ns_per_step"] for t, f in per_trace.items() if t != straggler]
        ops = last_ops[straggler]
        result["straggler"] = {
            "trace_id": straggler, "rank": rank_of[straggler],
            "last_share": per_trace[straggler]["last_count"] / consistent,
            "op": max(ops, key=ops.get) if ops else None,
            "others_wait_ns_per_step_median": int(np.median(others)) if others else 0,
            "others_exposed_wait_ns_per_step_median": int(np.median(others_exposed)) if others_exposed else 0,
        }
    return result


def _exposed_wait(compute: dict, waits: list[tuple]) -> int:
    """Wait time (union of [own arrival, last arrival) intervals) not overlapped by the
    trace's compute kernels on the same device: what the rank really loses to the skew."""
    if not waits:
        return 0
    total = 0
    for device in {w[0] for w in waits}:
        mine = [w for w in waits if w[0] == device]
        u = iv.union([w[1] for w in mine], [w[2] for w in mine])
        total += iv.total(iv.subtract(u, compute.get(device, _EMPTY)))
    return total


def _steady_steps_by_trace(store, trace_ids: list[int],
                           windows: dict[int, tuple]) -> dict[int, list[tuple[int, int, int]]]:
    """(step, start, end) of each trace's steady steps: those the steps pass found (`windows`,
    which include steps it inferred), else from the `steps` table by the same rule as
    Context.steady_steps (drop the first of three or more)."""
    out: dict[int, list] = {tid: [] for tid in trace_ids if tid not in windows}
    for row in store.rows("SELECT trace_id, step, start_ns, end_ns FROM steps ORDER BY trace_id, start_ns"):
        if row["trace_id"] in out:
            out[row["trace_id"]].append((row["step"], row["start_ns"], row["end_ns"]))
    found = {tid: (steps[1:] if len(steps) >= 3 else steps) for tid, steps in out.items()}
    return {tid: list(windows[tid]) if tid in windows else found[tid] for tid in trace_ids}


def _in_steady(steady: list[tuple[int, int, int]], numbers: frozenset, step, start_ns: int) -> bool:
    """Is a collective of step `step` starting at `start_ns` in the steady steps (whose
    step numbers are `numbers`)?"""
    if not steady:
        return True  # no steps: the whole trace is the one step
    if step is not None and step in numbers:
        return True
    return step is None and any(lo <= start_ns < hi for _, lo, hi in steady)


def trace_metrics(skew: dict[str, Any], trace_id: int) -> dict[str, Any]:
    mine = skew["per_trace"].get(trace_id, {})
    straggler = skew["straggler"] or {}
    return {"ranks": skew["ranks"], "matched_instances": skew["matched"],
            "consistent_instances": skew["consistent"], "match_basis": skew["match_basis"],
            "last_arrival_count": mine.get("last_count", 0), "last_arrival_pct": mine.get("last_pct", 0.0),
            "wait_ns_total": mine.get("wait_ns_total", 0), "wait_ns_per_step": mine.get("wait_ns_per_step", 0),
            "exposed_wait_ns_per_step": mine.get("exposed_wait_ns_per_step", 0),
            "straggler_rank": straggler.get("rank")}



def _pct(part, whole) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0
