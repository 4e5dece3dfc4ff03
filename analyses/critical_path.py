"""Critical path and replay: the per-trace `critical_path` section, and finding impacts
from what-if replays (`refine_impacts`, called by the lead after every pass has run).

The graph spans every trace in the store (ranks meet at collectives), is built once per
store and cached on it. See docs/graph.md for the model and its limits.
"""
from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from profkit.findings import Finding, path_parts
from profkit.graph import build_graph, critical_path_report
from profkit.graph_replay import PRELOAD_MIN_WORK, load_compiled, replay, replay_work, windows_key
from profkit.render import human_ns
from profkit.store import Store
from profkit.whatif import parse_change, store_windows, whatif

from . import Context, PassResult

NAME = "critical_path"

# Findings whose cause a what-if removes: rule id -> change. idle.host_bound is about
# launches starved by host gaps, so its what-if trims those gaps; tiny-kernel storms are
# about per-launch host cost, so theirs removes host overhead as graph capture would;
# slow launches to an idle stream are about the launch itself, so theirs caps launches
# at a typical latency (removing all host time there priced a 38 us p50 at 361 ms).
RULE_CHANGES = {
    "idle.host_bound": ["host-gaps"],
    "host.launch_bound_idle": ["host-gaps"],
    "kernels.tiny_kernel_storm": ["no-host-overhead"],
    "kernels.launch_latency": ["launch-latency"],
    "host.sync_in_steady_state": ["no-sync"],
    "idle.sync": ["no-sync"],
    "comm.exposed": ["comm-overlap"],
    "comm.rank_skew": ["straggler"],
}
# The part of the critical path (report attribution) each change removes time from.
CHANGE_PATH_CAUSE = {"host-gaps": "host", "no-host-overhead": "host", "launch-latency": "launch",
                     "no-sync": "sync", "comm-overlap": "communication", "straggler": "compute"}
HOTSPOT_SPEEDUP = 2.0
# A replay whose steady step differs from the observed one by more than this has edges
# missing (device activities with no launch record: docs/graph.md); its savings are
# measured from the wrong baseline, so a finding keeps its own estimate.
REPLAY_FIDELITY_PCT = 2.0
# A critical path that is mostly unexplained waiting (vertices that keep their observed
# time because nothing in the graph leads to them) matches the observed step by pinning,
# not by modelling it: a change to the graph's edges can then move almost nothing.
REPLAY_MAX_UNEXPLAINED_PCT = 50.0


def prefetch(store) -> None:
    """Start building the store's graph on a worker thread (its own DuckDB cursor), so that
    it overlaps the passes before this one: numpy and DuckDB release the GIL for most of it."""
    ids = tuple(store.trace_ids())
    cached = getattr(store, "_profkit_graph", None)
    if cached is not None and cached[0] == ids:
        return
    cursor = Store(store.con.cursor(), store.path)
    pool = ThreadPoolExecutor(1, thread_name_prefix="profkit-graph")
    future = pool.submit(_build_and_replay, cursor, list(ids))
    pool.shutdown(wait=False)
    store._profkit_graph = (ids, future)
    # The worker's cursor shares the connection: closing the store under it (an analysis
    # stopped by an error) would fail, so closing waits for the worker.
    store.before_close.append(future.exception)


def _build_and_replay(store, trace_ids):
    """The graph and its baseline replay (memoised on it), which every report and what-if
    starts from; on the worker this also loads numba's compiled loops (~0.55 s) off the
    main thread, where the graph is large enough for them."""
    graph = build_graph(store, trace_ids)
    load_compiled(graph)
    replay(graph)
    return graph


def store_graph(store):
    """One graph per store (all traces), cached on the store object: the analysis's, for
    whatever draws or replays it afterwards (`profkit analyze --timeline`)."""
    ids = tuple(store.trace_ids())
    cached = getattr(store, "_profkit_graph", None)
    if cached is None or cached[0] != ids:
        cached = (ids, build_graph(store, list(ids)))
        store._profkit_graph = cached
    if isinstance(cached[1], Future):
        store._profkit_graph = cached = (ids, cached[1].result())
    return cached[1]


# Step sources whose windows are drawn on the device timeline, not by host annotations
# (a trace without steps: its device span, where it has device activity).
DEVICE_TIME_SOURCES = ("kernel_pattern", "whole_trace")


def _windows(ctx: Context) -> dict:
    """The steps pass's windows, so that replayed savings are per the step every other
    figure is per. A trace without steps used to be replayed whole, host time before its
    first kernel included: the CK batched GEMM's host-bound idle came out at 1.69 s "per
    step" beside a 15.7 ms step (its device span), the RTX 2070 capture's at 259 ms
    beside 5.3 ms."""
    if "windows" not in ctx.memo:  # the report and refine_impacts both ask
        SharedWindows(ctx.store).add(ctx)
    return ctx.memo["windows"]


class SharedWindows:
    """One windows dict for every trace analysed together: each trace's steps pass's windows
    (`add`, while its device events are loaded), set as every trace's replay windows. The
    graph replays all ranks at once, so a what-if priced for one rank's finding is the same
    replay for another's (cached on the graph per windows), and `profkit whatif` reads the
    same windows (`analysis_windows`)."""

    def __init__(self, store: Store):
        self.windows = store_windows(store, store.trace_ids())

    def add(self, ctx: Context) -> None:
        if ctx.steps:
            self.windows[ctx.trace_id] = _step_windows(ctx)
        ctx.memo["windows"] = self.windows


def _step_windows(ctx: Context) -> list[tuple]:
    """The steps pass's steps of ctx's trace as replay windows (step, start, end, drawn on
    the device timeline)."""
    device = len(ctx.device_events()) > 0
    return [(s.step, s.start_ns, s.end_ns, device and s.source in DEVICE_TIME_SOURCES) for s in ctx.steps]


def analysis_windows(store: Store) -> dict:
    """The step windows `profkit analyze` replays, for every trace (the steps pass's), so
    that `profkit whatif` predicts per the same step as the findings' replayed impacts
    (a store's own `steps` table has no steps for most traces: the whole capture)."""
    from . import pass_module

    shared = SharedWindows(store)
    for trace_id in store.trace_ids():
        ctx = Context.of(store, trace_id)
        pass_module("steps").run(ctx)
        shared.add(ctx)
    return shared.windows


def run(ctx: Context) -> PassResult:
    graph = store_graph(ctx.store)
    report = critical_path_report(ctx.store, ctx.trace_id, graph=graph, windows=_windows(ctx))
    caveat = _replay_caveat(report)
    if caveat:
        report["caveat"] = caveat
    return PassResult(metrics=report, findings=[])


def _replay_caveat(report: dict[str, Any]) -> str | None:
    """Why the path's composition is not to be read as the step's, when the replay does
    not reproduce the step (the renderers print it under the path's bar)."""
    error = report.get("replay_error_pct")
    if not report.get("available") or error is None or abs(error) <= REPLAY_FIDELITY_PCT:
        return None
    graph = report.get("graph") or {}
    missing, total = graph.get("device_without_launch") or 0, graph.get("device_events") or 0
    if not missing:
        why = ""
    elif missing == total:
        why = f": none of its {total:,} device activities has a launch record, so gaps between them collapse"
    else:
        why = f": {missing:,} of its {total:,} device activities have no launch record, so gaps before them collapse"
    return (f"the replay does not reproduce the step (error {error:+.1f}%){why}; the path's composition is "
            f"not a model of the step, and findings keep their own estimates")


def _hotspot_kernel(store, trace_id: int, f: Finding) -> str | None:
    ev = f.evidence
    row = store.rows("""
        SELECT name FROM events WHERE trace_id = ? AND kind = 'kernel' AND coalesce(device, -1) = ?
        GROUP BY name HAVING count(*) = ? AND sum(dur_ns) = ? LIMIT 1
    """, [trace_id, f.scope.get("device", -1), ev.get("count"), ev.get("total_ns")])
    if row:
        return row[0]["name"]
    m = re.search(r"name = '((?:[^']|'')*)'", f.sql or "")
    return m.group(1).replace("''", "'") if m else None


def refine_impacts(store, trace_id: int, findings: list[Finding], windows: dict | None = None,
                   report: dict[str, Any] | None = None) -> list[Finding]:
    """Replace the impacts of findings whose cause a what-if removes by the replayed saving
    per step (impact_basis 'replay'); the earlier estimate stays in `details`. Hotspots
    keep impact 0 (nothing says they can be faster) and get the 2x replay saving as evidence.
    `report`: the trace's critical_path section, whose attribution says how much of the
    path the graph explains (computed here when not given)."""
    graph = store_graph(store)
    if windows is None:
        windows = store_windows(store, store.trace_ids())
    if report is None:
        report = critical_path_report(store, trace_id, graph=graph, windows=windows)
    whatifs = WhatIfs(store, graph, windows)
    priced = [(f, whatifs.changes_for(trace_id, f)) for f in findings]
    whatifs.ahead([changes for _, changes in priced if changes])

    def saving(changes: list) -> dict[str, Any] | None:
        return whatifs.result(changes)["traces"].get(trace_id)

    for f, changes in priced:
        if not changes:
            continue
        r = saving(changes)
        if f.rule == "kernels.hotspot":
            if r:
                f.evidence["replay_saving_if_2x_faster_ns_per_step"] = r["saving_ns"]
            continue
        if r is None:
            continue
        replay = {"changes": changes, "observed_step_ns": r["observed_step_ns"],
                  "replayed_step_ns": r["replayed_step_ns"], "predicted_step_ns": r["predicted_step_ns"],
                  **{k: r[k] for k in ("capacity_bound", "replayed_with_changes_ns") if r.get(k)}}
        unused = _replay_unusable(f, r, report, windows.get(trace_id))
        if unused:
            f.details["replay"] = {**replay, "used": False, "reason": unused}
            continue
        f.details["estimate_before_replay"] = {"impact_ns": f.impact_ns, "impact_basis": f.impact_basis}
        won = max(0, int(r["saving_ns"]))
        note = (_small_saving_note(changes, _path_causes(graph, changes), f.impact_ns, won, report)
                or _large_saving_note(changes, f.impact_ns, won))
        f.details["replay"] = replay | ({"note": note} if note else {})
        f.impact_ns = won
        f.share_pct = round(100.0 * f.impact_ns / r["replayed_step_ns"], 3) if r["replayed_step_ns"] else 0.0
        f.impact_basis = "replay"
    combined = _combined_replay(trace_id, findings, saving)
    if combined:
        report["combined_replay"] = combined
    return findings


def replay_ahead(store, findings: list[tuple[int, list[Finding]]], windows: dict) -> None:
    """Start the what-ifs that refine_impacts will replay for these (trace id, findings),
    every trace's, so that they run beside the traces' critical-path reports and refinements."""
    whatifs = WhatIfs(store, store_graph(store), windows)
    whatifs.ahead([c for trace_id, fs in findings for f in fs if (c := whatifs.changes_for(trace_id, f))])


class WhatIfs:
    """The what-if replays of one analysis. Kept on the graph per windows: a what-if replays
    every rank (the graph is one), so its result serves every trace's findings and a
    change is replayed once per analysis, not once per trace that names it (32 ranks: 192
    replays of the whole graph, 4.2 s).

    `ahead` queues replays on a worker thread, latest needed first, while `result` takes
    those not yet started onto the calling thread in the order it needs them: the two
    meet in the middle. A replay is numpy and a compiled loop, which release the GIL, so
    two run side by side (32 ranks x 200 steps: 30 replays, 4.2 -> 2.3 s; the 1M-event
    tile: 4 replays, 0.12-0.15 -> 0.06 s). Graphs too small for the compiled loop replay in
    Python, on the calling thread only."""

    def __init__(self, store, graph, windows: dict):
        self.store, self.graph, self.windows = store, graph, windows
        self.cache: dict[tuple, Any] = graph.memo.setdefault(("whatif", windows_key(windows)), {})
        # Every trace of the graph, given: whatif would otherwise ask the store, and the
        # worker must not use the store's connection.
        self.trace_ids = [t["trace_id"] for t in graph.traces]
        # Hotspot kernels' names by their findings' evidence: looked up once, though both
        # replay_ahead and refine_impacts ask (32 ranks: 32 queries of ~3.5 ms saved).
        self.hotspot_kernels: dict[tuple, str | None] = graph.memo.setdefault("hotspot_kernels", {})

    def changes_for(self, trace_id: int, f: Finding) -> list | None:
        """The what-if that prices finding `f` of this trace, None where none does: a
        hotspot's kernel twice as fast (for its evidence), else its rule's change
        (RULE_CHANGES) or its own (`details.whatif`)."""
        if f.scope.get("trace_id") != trace_id:
            return None
        if f.rule == "kernels.hotspot":
            key = (trace_id, f.scope.get("device", -1), f.evidence.get("count"), f.evidence.get("total_ns"), f.sql)
            if key not in self.hotspot_kernels:
                self.hotspot_kernels[key] = _hotspot_kernel(self.store, trace_id, f)
            name = self.hotspot_kernels[key]
            return [{"kind": "speedup", "kernel": name, "factor": HOTSPOT_SPEEDUP}] if name else None
        return RULE_CHANGES.get(f.rule) or f.details.get("whatif") or None

    def _replay(self, changes: list) -> dict[str, Any]:
        return whatif(self.store, trace_ids=self.trace_ids, changes=changes, windows=self.windows, graph=self.graph)

    def ahead(self, change_lists: list[list]) -> None:
        pending, seen = [], set()
        for changes in change_lists:
            key = _key(changes)
            if key not in self.cache and key not in seen:
                seen.add(key)
                pending.append((key, changes))
        if len(pending) < 2 or replay_work(self.graph) < PRELOAD_MIN_WORK:
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="profkit-whatif")
        for key, changes in reversed(pending):
            self.cache[key] = pool.submit(self._replay, changes)
        pool.shutdown(wait=False)

    def result(self, changes: list) -> dict[str, Any]:
        key = _key(changes)
        value = self.cache.get(key)
        if isinstance(value, Future):
            value = None if value.cancel() else value.result()  # not started: replayed here
        if value is None:
            value = self._replay(changes)
        self.cache[key] = value
        return value


def _key(changes: list) -> tuple:
    return tuple(str(c) for c in changes)


def _combined_replay(trace_id: int, findings: list[Finding], saving) -> dict[str, Any] | None:
    """What the findings priced by replay win back together: one replay with all their
    changes. Their impacts overlap where they share a cause (a tiny-kernel storm and the
    host-bound idle it causes), so their sum says nothing; this does. None with fewer than
    two distinct changes."""
    used = [f for f in findings if f.scope.get("trace_id") == trace_id and f.impact_basis == "replay"
            and (f.details.get("replay") or {}).get("changes")]
    changes = sorted({c for f in used for c in f.details["replay"]["changes"]})
    if len(changes) < 2:
        return None
    r = saving(changes)
    if not r or not r["replayed_step_ns"]:
        return None
    won = max(0, int(r["saving_ns"]))
    return {"changes": changes, "rules": sorted({f.rule for f in used}), "findings": len(used),
            "saving_ns": won, "saving_pct": round(100.0 * won / r["replayed_step_ns"], 3),
            "predicted_step_ns": int(r["predicted_step_ns"]), "sum_of_impacts_ns": int(sum(f.impact_ns for f in used))}


# A replayed saving below this share of the finding's own estimate gets a note saying why,
# and so does one above this multiple of it.
SMALL_SAVING_FRACTION = 0.5
LARGE_SAVING_FACTOR = 1.5
# What each change of RULE_CHANGES does to the step, and why its saving can exceed what
# the finding measures, for the notes.
CHANGE_WORDS = {
    "host-gaps": ("with its host gaps after the first launch trimmed to the median gap",
                  "the launches after each trimmed gap, and what waits on them, move earlier too"),
    "no-host-overhead": ("with no host time between launches, as if it were captured as a graph,",
                         "that removes all of the step's host time, not only these launches'"),
    "launch-latency": ("with every launch at a typical latency", None),
    "no-sync": ("without its host synchronisation",
                "the host, no longer blocked, issues the work after it earlier too"),
    "comm-overlap": ("with its communication fully overlapped", None),
    "straggler": ("with the slowest rank's compute brought to the median rank's", None),
}
# What a change leaves of its own cause, for the note when it saves little.
CHANGE_LIMITS = {"host-gaps": "the host's own work, framework ops and launch calls, stays; only the gaps "
                              "between them shrink"}


def _path_causes(graph, changes: list[str]) -> set[str]:
    """The parts of the critical path (report attribution) the changes remove time from: by
    the table for the fixed changes; a speedup of kernels, from their category (a finding's
    own what-if, `details.whatif`, speeds up named collectives: communication)."""
    causes = set()
    for change in changes:
        if change in CHANGE_PATH_CAUSE:
            causes.add(CHANGE_PATH_CAUSE[change])
            continue
        spec = parse_change(change)
        if spec["kind"] == "speedup":
            category = spec.get("category") or next(iter(set(graph.category[graph.name == spec["kernel"]])), None)
            causes.add("communication" if category == "communication" else "compute")
    return causes


def _small_saving_note(changes: list, causes: set[str], estimate_ns: int, saving_ns: int,
                       report: dict[str, Any]) -> str | None:
    """Why a finding that costs `estimate_ns` per step wins back only `saving_ns` when
    replayed: something else holds the step's critical path (a collective 100% exposed on
    a host-bound step: overlapping it moves nothing until the host is faster), or the
    finding's own cause leads the path and the change removes only part of it (host gaps
    trimmed to the median on a step whose host time is mostly the host's own work)."""
    if estimate_ns <= 0 or saving_ns >= SMALL_SAVING_FRACTION * estimate_ns:
        return None
    length = report.get("length_ns") or 0
    parts = sorted(((ns, cause) for cause, ns in path_parts(report).items()), reverse=True)
    if length <= 0 or not parts:
        return None
    path = ", ".join(f"{cause} {100.0 * ns / length:.0f}%" for ns, cause in parts[:2] if ns >= 0.01 * length)
    if parts[0][1] in causes:
        how = " and ".join(what for what, _ in _change_words(changes))
        limit = "; ".join(CHANGE_LIMITS[str(c)] for c in changes if str(c) in CHANGE_LIMITS)
        return (f"Replaying the step {how} saves {human_ns(saving_ns)} of the {human_ns(estimate_ns)} it takes "
                f"per step: the critical path is {path}, and most of that {parts[0][1]} time is not what this "
                f"change removes" + (f" ({limit})." if limit else "."))
    return (f"Replaying the step without it saves {human_ns(saving_ns)} of the {human_ns(estimate_ns)} it takes "
            f"per step: the critical path is {path}, so this pays off only once that is shorter.")


def _large_saving_note(changes: list, estimate_ns: int, saving_ns: int) -> str | None:
    """Why a finding's replayed saving is well above what the finding measures itself (a
    sync's idle, a storm's launch calls): the replay also moves earlier whatever waited
    behind the cause, and for `no-host-overhead` it removes all the step's host time."""
    if estimate_ns <= 0 or saving_ns <= LARGE_SAVING_FACTOR * estimate_ns:
        return None
    words = _change_words(changes)
    how = " and ".join(what for what, _ in words)
    why = "; ".join(more for _, more in words if more) or "what waited behind it moves earlier too"
    return (f"Replaying the step {how} saves {human_ns(saving_ns)} per step, {saving_ns / estimate_ns:.1f}x "
            f"the {human_ns(estimate_ns)} this finding measures directly: {why}.")


def _change_words(changes: list) -> list[tuple[str, str | None]]:
    """CHANGE_WORDS of each change; a change not in it is named as it is."""
    return [CHANGE_WORDS.get(str(c), (f"with {c}", None)) for c in changes]


def _unexplained_pct(report: dict[str, Any]) -> float:
    """Share of the critical path that is waiting the graph does not explain."""
    length = report.get("length_ns") or 0
    if not report.get("available") or length <= 0:
        return 0.0
    return 100.0 * (report.get("attribution") or {}).get("idle", 0) / length


def _evidence_windows(f: Finding) -> list[tuple[int, int]]:
    """The idle the finding's examples show: sync calls' idle windows, gaps."""
    out = [tuple(ex["idle_window"]) for ex in f.evidence.get("examples") or []
           if isinstance(ex, dict) and ex.get("idle_window")]
    return out + [(g["gap_start_ns"], g["gap_end_ns"]) for g in f.evidence.get("example_gaps") or []
                  if isinstance(g, dict) and "gap_start_ns" in g]


def _replay_unusable(f: Finding, r: dict[str, Any], report: dict[str, Any],
                     windows: list[tuple] | None = None) -> str | None:
    """Why the replayed saving cannot stand for this finding's impact (every reason that
    applies), or None. `windows`: the trace's replayed steps."""
    observed = r.get("observed_step_ns")
    if not observed:
        return "no observed step to check the replay against: the estimate stands"
    reasons = []
    shown = _evidence_windows(f)
    if windows and shown:
        first, last = min(w[1] for w in windows), max(w[2] for w in windows)
        if all(end <= first or start >= last for start, end in shown):
            # E.g. the SGLang decode capture: its one step is a graph replay, and the sync's
            # idle comes 0.26 ms before it; the replay of the step cannot see it at all.
            reasons.append("the idle it causes lies before or after the replayed steps")
    error = 100.0 * (r["replayed_step_ns"] - observed) / observed
    if abs(error) > REPLAY_FIDELITY_PCT:
        # E.g. a kernel-only rocprof capture: the replay runs the kernels back to back,
        # so removing host gaps saves nothing there although they cost real time.
        reasons.append(f"the replay does not reproduce the observed step (error {error:+.1f}%, more than "
                       f"{REPLAY_FIDELITY_PCT:g}%): the graph lacks edges")
    unexplained_pct = _unexplained_pct(report)
    if unexplained_pct > REPLAY_MAX_UNEXPLAINED_PCT:
        reasons.append(f"{unexplained_pct:.0f}% of the critical path is waiting the graph does not explain "
                       "(activities without launch, stream or wait edges)")
    # Against the replay with measured latencies, not the observed step: a replay that is
    # off by itself is the first reason, and would otherwise be counted twice.
    replayed, strict = report.get("replayed_step_ns"), report.get("median_latency_replayed_step_ns")
    median_error = 100.0 * (strict - replayed) / replayed if replayed and strict is not None else None
    if median_error is not None and abs(median_error) > REPLAY_FIDELITY_PCT:
        # The replay matches only by the measured launch latencies, which hide waits the
        # graph has no edge for: a change upstream of a launch cannot move its kernel.
        reasons.append(f"measured launch latencies hide waits the graph does not model (with median "
                       f"latencies the replayed step changes by {median_error:+.1f}%)")
    if f.evidence.get("inferred"):
        # The what-if moves launches; gaps with no launch record are not in the graph.
        reasons.append("most of these gaps lack launch records, so the replay cannot move them")
    return "; ".join(reasons) + ": the estimate stands" if reasons else None
