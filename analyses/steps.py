"""Steps (iterations): where they come from, how long they take, how they vary, which are
prefill and which decode, which are graph replays, and what the GPU waits for between them.

Runs first: it fills `ctx.steps`, which every later pass uses as its step windows, and
publishes per-step facts in its metrics (`steps[i].graph_replay`, `device_start_ns`, ...).
"""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from profkit import intervals
from profkit.columns import distinct_count, members_by_code
from profkit.findings import Finding
from profkit.render import human_ns

from . import Context, PassResult, Step
from .step_inference import (
    MIN_REPEATS, DeviceEvents, Window, annotation_steps, assign, graph_replay_steps, kernel_pattern_steps,
    whole_trace_window,
)

NAME = "steps"

MIN_STEPS_FOR_STATS = 5          # steady steps (of one phase) before variance and outliers are judged
OUTLIER_MAD_FACTOR = 3.0         # outlier: > p50 + 3 * MAD (and at least OUTLIER_MIN_EXCESS above p50) ...
OUTLIER_MIN_EXCESS = 0.10        # ... so identical steps (MAD 0) do not make noise outliers
OUTLIER_MEDIAN_FACTOR = 1.5      # ... or > 1.5 x the median, whatever the spread
VARIANCE_CV_THRESHOLD = 0.20     # steps.variance when the coefficient of variation exceeds this
INTER_STEP_GAP_MIN_NS = 20_000   # steps.inter_step_gap only above 20 us per step ...
INTER_STEP_GAP_MIN_SHARE = 2.0   # ... and 2% of the median step
GRAPH_KERNELS_PER_LAUNCH = 8.0   # a step is a graph replay when graph launches enqueue most of its
                                 # kernels and it averages this many kernels per launch call
PREFILL_GEMM_FACTOR = 3.0        # shape rule: prefill when GEMM time > 3x the median step's ...
PREFILL_DURATION_FACTOR = 1.5    # ... and the step lasts > 1.5x the median step
MAX_SQL_WINDOWS = 20             # windows listed in a finding's SQL

# Annotation names that say which phase of LLM serving a step is (the vLLM/TraceLens
# `execute_N_context_P(...)_generation_D(...)` form counts prefill and decode requests).
# Whole words only: a recommendation model's `## decoder ##` module is no decode step.
PHASE_PATTERNS = (
    ("decode", re.compile(r"(?<![a-z])decod(e|ing)(?![a-z])|context_0\b.*generation_[1-9]", re.IGNORECASE)),
    ("prefill", re.compile(r"(?<![a-z])(prefill(ing)?|extend)(?![a-z])|context_[1-9]\d*\b.*generation_0\b",
                           re.IGNORECASE)),
)
_PHASE_SQL = "prefill|decode|extend|generation_"


def run(ctx: Context) -> PassResult:
    dev = ctx.device_events()
    source, windows = find_windows(ctx, dev)
    host_side = source not in ("kernel_pattern", "whole_trace")
    adjusted = _clip_unrecorded_tail(ctx, windows) if host_side else []
    owner = assign(dev.anchor(host_side), windows)
    per_step = [_step_facts(w, dev, mine) for w, mine in zip(windows, members_by_code(owner, len(windows)))]
    if host_side:
        adjusted += _extend_lone_step(windows, per_step)
    partial = _partial_last_step(source, per_step, windows)
    if partial:
        windows, per_step = windows[:-1], per_step[:-1]
        owner = np.where(owner == len(windows), -1, owner)
    phases = classify_phases(ctx, windows, per_step, dev, owner)
    numbers = [w.number for w in windows]
    if None in numbers or len(set(numbers)) != len(numbers):
        numbers = list(range(len(windows)))  # step numbers must identify steps
    ctx.steps = [Step(step=int(numbers[i]), start_ns=int(w.start_ns), end_ns=int(w.end_ns),
                      source=source, phase=phases[i])
                 for i, w in enumerate(windows)]
    for facts, s in zip(per_step, ctx.steps):
        facts.update(step=s.step, start_ns=s.start_ns, end_ns=s.end_ns, dur_ns=s.dur_ns, phase=s.phase)
    steady = {s.step for s in ctx.steady_steps}
    steady_facts = [f for f in per_step if f["step"] in steady]
    busy = intervals.union(dev.start, dev.end)
    _inter_step_gaps(per_step, busy)
    outliers = _mark_outliers(steady_facts)

    metrics = {
        "source": source,
        "count": len(per_step),
        "steady_count": len(steady_facts),
        "steady_first_step": min(steady) if steady else None,
        "step_ns": ctx.step_ns,
        "duration": _stats([f["dur_ns"] for f in steady_facts]),
        "device_duration": _stats([f["device_dur_ns"] for f in steady_facts if f["device_events"]]),
        "graph_replay": bool(steady_facts) and sum(f["graph_replay"] for f in steady_facts) * 2 > len(steady_facts),
        "graph_replay_steps": sum(f["graph_replay"] for f in per_step),
        "phases": _phase_breakdown(per_step),
        "outliers": [f["step"] for f in outliers],
        "inter_step_gap": _stats([f["gap_before_ns"] for f in steady_facts if f["gap_before_ns"] is not None]),
        "device_events_outside_steps": int((owner < 0).sum()),
        "partial_last_step": partial,
        "adjusted_windows": adjusted,
        "steps": per_step,
    }
    findings = []
    findings += _outlier_findings(ctx, steady_facts, outliers)
    findings += _variance_findings(ctx, steady_facts)
    findings += _gap_findings(ctx, steady_facts)
    return PassResult(metrics=metrics, findings=findings)


# -- where the steps come from -------------------------------------------------------------

def find_windows(ctx: Context, dev: DeviceEvents) -> tuple[str, list[Window]]:
    """The steps table if the parser or derive filled it, else inference in a fixed order."""
    rows = ctx.store.rows("""
        SELECT step, name, start_ns, end_ns, source, event_id FROM steps
        WHERE trace_id = ? ORDER BY start_ns, step
    """, [ctx.trace_id])
    if rows:
        return rows[0]["source"], [Window(r["start_ns"], r["end_ns"], r["name"], r["event_id"], r["step"])
                                   for r in rows]
    for source, infer in (
        ("annotation", lambda: annotation_steps(ctx.store, ctx.trace_id, dev)),
        ("graph_replay", lambda: graph_replay_steps(ctx.store, ctx.trace_id, dev)),
        # One or two top-level ranges around most of the work (a single `generate`, an
        # `execute_model`) are the steps before a kernel pattern is, which inside one
        # forward pass would be the layer loop.
        ("annotation", lambda: annotation_steps(ctx.store, ctx.trace_id, dev, 1, MIN_REPEATS - 1)
         if len(dev) else []),
        ("kernel_pattern", lambda: kernel_pattern_steps(dev)),
        ("whole_trace", lambda: whole_trace_window(ctx.store, ctx.trace_id, dev)),
    ):
        windows = infer()
        if windows:
            return source, windows
    return "whole_trace", []


# -- a last step the capture cut short --------------------------------------------------------

# An inferred last window shorter than this share of the median of the others is the
# capture ending inside a step.
PARTIAL_STEP_MAX_SHARE = 0.5


def _partial_last_step(source: str, per_step: list[dict], windows: list[Window]) -> dict | None:
    """The last step when the capture cut it short, to leave out of every per-step figure
    (HTA leaves the last step out of its breakdown for the same reason): for steps the
    host marks, one without device work while earlier steps have some (the MI250 trace's
    second ProfilerStep, 49 us of host time after a 9.3 ms step, halved its replayed step
    time); for steps inferred from a repeating kernel sequence, a last window under half
    the others' median (the capture stopped mid-step: 2.5 ms of a 16.6 ms step). None
    otherwise, and never for the only step."""
    if len(per_step) < 2:
        return None
    last, others = per_step[-1], per_step[:-1]
    w = windows[-1]
    if source == "kernel_pattern":
        median = float(np.median([o["device_dur_ns"] for o in others]))
        if last["device_dur_ns"] >= PARTIAL_STEP_MAX_SHARE * median:
            return None
        reason = f"its device time is under {PARTIAL_STEP_MAX_SHARE:.0%} of the other steps' median"
    elif source not in ("whole_trace", "graph_replay") and last["device_events"] == 0 \
            and any(o["device_events"] for o in others):
        reason = "no device work, while the steps before it have some"
    else:
        return None
    return {"name": w.name, "start_ns": int(w.start_ns), "end_ns": int(w.end_ns),
            "dur_ns": int(w.end_ns - w.start_ns), "device_events": last["device_events"],
            "device_dur_ns": last["device_dur_ns"], "reason": reason}


# -- host windows that do not describe the recorded step ----------------------------------------

def _clip_unrecorded_tail(ctx: Context, windows: list[Window]) -> list[dict]:
    """A host step whose window runs on past the last recorded event by more than the
    part recorded is cut at that event's end: the step range stayed open after the
    profiler stopped recording (the A100 Triton trace's ProfilerStep#1 ends 13.3 s after
    its 1.5 ms of recorded work), so its length describes nothing in the trace. A short
    tail is kept: host time after the last event is still step time."""
    if not windows:
        return []
    recorded_end = ctx.store.con.execute(
        "SELECT max(end_ns) FROM events WHERE trace_id = ? AND kind NOT IN ('annotation', 'gpu_annotation')",
        [ctx.trace_id]).fetchone()[0]
    if recorded_end is None:
        return []
    changes = []
    for i, w in enumerate(windows):
        tail, recorded = w.end_ns - recorded_end, recorded_end - w.start_ns
        if recorded > 0 and tail > recorded:
            changes.append(_adjustment(w, recorded_end, "cut_at_recording_end"))
            windows[i] = replace(w, end_ns=int(recorded_end))
    return changes


def _extend_lone_step(windows: list[Window], per_step: list[dict]) -> list[dict]:
    """The only step of a trace ends with its device work: the host range around a call
    that runs asynchronously (a compiled graph called in 0.79 ms whose kernels run for
    12.5 ms on the MI300X) would otherwise leave most of that work outside its step.
    With several steps each step's work spills into the next step's host window, and
    host windows are the steps' lengths as HTA takes them."""
    if len(windows) != 1 or per_step[0]["device_end_ns"] is None:
        return []
    w, device_end = windows[0], per_step[0]["device_end_ns"]
    if device_end <= w.end_ns:
        return []
    windows[0] = replace(w, end_ns=int(device_end))
    return [_adjustment(w, device_end, "extended_to_device_work")]


def _adjustment(w: Window, end_ns: int, kind: str) -> dict:
    return {"name": w.name, "kind": kind, "start_ns": int(w.start_ns), "host_end_ns": int(w.end_ns),
            "end_ns": int(end_ns)}


# -- per step ------------------------------------------------------------------------------

def _step_facts(window: Window, dev: DeviceEvents, mine: np.ndarray) -> dict:
    """`mine`: the positions of the window's device events."""
    n = int(mine.size)
    facts = {"name": window.name, "event_id": window.event_id, "device_events": n,
             "device_start_ns": None, "device_end_ns": None, "device_dur_ns": 0, "device_busy_ns": 0,
             "gemm_ns": 0, "kernels": 0, "launch_calls": 0, "graph_kernels": 0,
             "kernels_per_launch": None, "graph_replay": False}
    if not n:
        return facts
    starts, ends = dev.start[mine], dev.end[mine]
    kernel = dev.kind[mine] == "kernel"
    gemm = dev.category[mine] == "gemm"
    launches = dev.launch_id[mine]
    kernels = int(kernel.sum())
    launch_calls = distinct_count(launches[launches >= 0])
    graph_kernels = int((dev.graph[mine] & kernel).sum())
    per_launch = kernels / launch_calls if launch_calls else None
    facts.update(
        device_start_ns=int(starts.min()), device_end_ns=int(ends.max()),
        device_dur_ns=int(ends.max() - starts.min()),
        device_busy_ns=intervals.length(starts, ends),
        gemm_ns=intervals.length(starts[gemm], ends[gemm]),
        kernels=kernels, launch_calls=launch_calls, graph_kernels=graph_kernels,
        kernels_per_launch=None if per_launch is None else round(per_launch, 2),
        graph_replay=bool(kernels and graph_kernels * 2 > kernels
                          and per_launch is not None and per_launch >= GRAPH_KERNELS_PER_LAUNCH),
    )
    return facts


def _inter_step_gaps(per_step: list[dict], busy) -> None:
    """gap_before_ns: GPU-idle time between the previous step's last device activity and
    this step's first (None for the first step or steps without device work)."""
    prev_end = None
    for f in per_step:
        f["gap_before_ns"] = None
        if f["device_start_ns"] is None:
            continue
        if prev_end is not None:
            lo, hi = prev_end, f["device_start_ns"]
            if hi > lo:
                covered = intervals.covered(busy, lo, hi)
                f["gap_before_ns"] = int(hi - lo - covered)
            else:
                f["gap_before_ns"] = 0
        prev_end = f["device_end_ns"] if prev_end is None else max(prev_end, f["device_end_ns"])


# -- phases -----------------------------------------------------------------------------------

def classify_phases(ctx: Context, windows: list[Window], per_step: list[dict],
                    dev: DeviceEvents, owner: np.ndarray) -> list[str | None]:
    """prefill / decode per step: from annotation names overlapping the step, else (for
    LLM inference traces: attention kernels and no backward pass) from the step's shape.
    A training trace (one with a backward pass) has no serving phases."""
    phases: list[str | None] = [None] * len(windows)
    if _has_backward(ctx):
        return phases
    named = ctx.store.con.execute("""
        SELECT name, start_ns, end_ns FROM events
        WHERE trace_id = ? AND kind = 'annotation' AND regexp_matches(name, ?, 'i')
        ORDER BY start_ns
    """, [ctx.trace_id, _PHASE_SQL]).fetchall()
    for i, w in enumerate(windows):
        found = set()
        for name, start, end in named:
            if start >= w.end_ns:
                break
            if end > w.start_ns:
                found |= {phase for phase, pattern in PHASE_PATTERNS if pattern.search(name)}
        if found:
            phases[i] = found.pop() if len(found) == 1 else "mixed"
    # Shape rule only for LLM inference: attention kernels (no backward pass: checked above).
    if any(phases) or len(windows) < 3 or "attention" not in set(dev.category):
        return phases
    durations = np.array([w.end_ns - w.start_ns for w in windows], dtype=np.float64)
    gemm = np.array([f["gemm_ns"] for f in per_step], dtype=np.float64)
    gemm_median, dur_median = float(np.median(gemm)), float(np.median(durations))
    prefill = (gemm > PREFILL_GEMM_FACTOR * max(gemm_median, 1.0)) & (durations > PREFILL_DURATION_FACTOR * dur_median)
    if prefill.sum() * 2 >= len(windows):
        return phases
    return ["prefill" if p else "decode" for p in prefill]


def _has_backward(ctx: Context) -> bool:
    return bool(ctx.store.scalar("""
        SELECT count(*) FROM events WHERE trace_id = ? AND name ILIKE '%backward%'
    """, [ctx.trace_id]))


def _phase_breakdown(per_step: list[dict]) -> dict:
    out = {}
    for phase in sorted({f["phase"] for f in per_step if f["phase"]}):
        chosen = [f for f in per_step if f["phase"] == phase]
        total = sum(f["dur_ns"] for f in chosen)
        busy = sum(f["device_busy_ns"] for f in chosen)
        out[phase] = {
            "count": len(chosen),
            "median_step_ns": int(np.median([f["dur_ns"] for f in chosen])),
            "total_ns": int(total),
            "device_busy_ns": int(busy),
            "device_busy_pct": round(100.0 * busy / total, 3) if total else 0.0,
        }
    return out


# -- statistics and findings ------------------------------------------------------------------

def _stats(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    return {
        "n": int(a.size), "mean_ns": int(round(mean)), "p50_ns": int(round(np.median(a))),
        "p95_ns": int(round(np.percentile(a, 95))), "max_ns": int(a.max()), "min_ns": int(a.min()),
        "cv": round(float(a.std() / mean), 4) if mean > 0 else 0.0,
    }


def _groups(facts: list[dict]) -> dict:
    """Steady steps grouped by phase: a prefill step is no outlier among decode steps."""
    groups: dict = {}
    for f in facts:
        groups.setdefault(f["phase"], []).append(f)
    return groups


def _mark_outliers(steady: list[dict]) -> list[dict]:
    outliers = []
    for f in steady:
        f["outlier"] = False
    for group in _groups(steady).values():
        if len(group) < MIN_STEPS_FOR_STATS:
            continue
        d = np.array([f["dur_ns"] for f in group], dtype=np.float64)
        p50 = float(np.median(d))
        mad = float(np.median(np.abs(d - p50)))
        for f, dur in zip(group, d):
            by_mad = dur > p50 + OUTLIER_MAD_FACTOR * mad and dur > (1 + OUTLIER_MIN_EXCESS) * p50
            if by_mad or dur > OUTLIER_MEDIAN_FACTOR * p50:
                f["outlier"] = True
                f["excess_ns"] = int(dur - p50)
                outliers.append(f)
    return outliers


def windows_sql(trace_id: int, facts: list[dict]) -> str:
    """A query listing the given step windows with the device work inside each."""
    rows = ", ".join(f"({f['step']}, {f['start_ns']}, {f['end_ns']})" for f in facts[:MAX_SQL_WINDOWS])
    return (f"SELECT w.step, w.start_ns, w.end_ns, w.end_ns - w.start_ns AS dur_ns, "
            f"count(e.event_id) AS device_events, min(e.start_ns) AS device_start_ns, "
            f"max(e.end_ns) AS device_end_ns "
            f"FROM (VALUES {rows}) w(step, start_ns, end_ns) "
            f"LEFT JOIN device_events e ON e.trace_id = {trace_id} "
            f"AND e.start_ns >= w.start_ns AND e.start_ns < w.end_ns "
            f"GROUP BY ALL ORDER BY dur_ns DESC, w.step")


def _outlier_findings(ctx: Context, steady: list[dict], outliers: list[dict]) -> list[Finding]:
    if not outliers or not steady:
        return []
    excess = sum(f["excess_ns"] for f in outliers)
    impact = excess / len(steady)
    worst = max(outliers, key=lambda f: f["dur_ns"])
    p50 = ctx.step_ns
    return [Finding(
        rule="steps.outliers",
        title=(f"{len(outliers)} of {len(steady)} steady steps "
               f"{'is an outlier' if len(outliers) == 1 else 'are outliers'} (worst: step {worst['step']} "
               f"{human_ns(worst['dur_ns'])} vs median {human_ns(p50)}), costing {human_ns(impact)} per step on average"),
        impact_ns=int(impact), share_pct=ctx.share(impact),
        scope=ctx.base_scope(steps=[f["step"] for f in outliers]),
        evidence={"outlier_steps": [{"step": f["step"], "dur_ns": f["dur_ns"], "excess_ns": f["excess_ns"],
                                     "phase": f["phase"]} for f in outliers[:MAX_SQL_WINDOWS]],
                  "median_step_ns": p50, "steady_steps": len(steady), "excess_total_ns": int(excess)},
        sql=windows_sql(ctx.trace_id, outliers),
        recommendation=("Look at what differs in the slow steps (garbage collection, checkpointing, "
                        "logging, data loading, recompilation, allocator growth, a longer batch) "
                        "and move it off the step path or make it periodic outside the timed loop."),
        impact_basis="measured", count=len(outliers),
    )]


def _variance_findings(ctx: Context, steady: list[dict]) -> list[Finding]:
    found = []
    for phase, group in _groups(steady).items():
        if len(group) < MIN_STEPS_FOR_STATS:
            continue
        d = np.array([f["dur_ns"] for f in group], dtype=np.float64)
        mean, p50 = float(d.mean()), float(np.median(d))
        cv = float(d.std() / mean) if mean else 0.0
        if cv <= VARIANCE_CV_THRESHOLD:
            continue
        # Spread that is all the outliers' is steps.outliers' finding, not a second one: the
        # FastVideo capture's 24 steps of 29.3 ms and one of 185.6 ms gave both.
        rest = np.array([f["dur_ns"] for f in group if not f.get("outlier")], dtype=np.float64)
        cv_rest = float(rest.std() / rest.mean()) if rest.size and rest.mean() else 0.0
        if rest.size < len(group) and cv_rest <= VARIANCE_CV_THRESHOLD:
            continue
        impact = float(np.clip(d - p50, 0, None).sum() / len(steady))
        label = f"{phase} steps" if phase else "Steps"
        found.append(Finding(
            rule="steps.variance",
            title=(f"{label} vary: CV {cv:.2f} over {len(group)} steps (p50 {human_ns(p50)}, "
                   f"p95 {human_ns(np.percentile(d, 95))}, max {human_ns(d.max())})"),
            impact_ns=int(impact), share_pct=ctx.share(impact),
            scope=ctx.base_scope(steps=[f["step"] for f in group], phase=phase),
            evidence={"cv": round(cv, 4), "cv_without_outliers": round(cv_rest, 4), "mean_ns": int(mean), "p50_ns": int(p50),
                      "p95_ns": int(np.percentile(d, 95)), "max_ns": int(d.max()), "steps": len(group)},
            sql=windows_sql(ctx.trace_id, sorted(group, key=lambda f: -f["dur_ns"])),
            recommendation=("Make steps uniform: fix input shapes or pad/bucket them, avoid host work that "
                            "runs only on some steps, and check for recompilation or allocator churn."),
            impact_basis="measured", count=len(group),
        ))
    return found


def _gap_findings(ctx: Context, steady: list[dict]) -> list[Finding]:
    gaps = [f for f in steady if f["gap_before_ns"]]
    if not gaps or not steady:
        return []
    total = sum(f["gap_before_ns"] for f in gaps)
    impact = total / len(steady)
    if impact < INTER_STEP_GAP_MIN_NS or ctx.share(impact) < INTER_STEP_GAP_MIN_SHARE:
        return []
    worst = max(gaps, key=lambda f: f["gap_before_ns"])
    rows = ", ".join(f"({f['step']}, {f['device_start_ns'] - f['gap_before_ns']}, {f['device_start_ns']})"
                     for f in gaps[:MAX_SQL_WINDOWS])
    sql = (f"SELECT w.step, w.idle_from_ns, w.next_device_start_ns, "
           f"w.next_device_start_ns - w.idle_from_ns AS gap_ns, count(r.event_id) AS host_calls_in_gap "
           f"FROM (VALUES {rows}) w(step, idle_from_ns, next_device_start_ns) "
           f"LEFT JOIN events r ON r.trace_id = {ctx.trace_id} AND r.kind IN ('runtime', 'cpu_op', 'annotation') "
           f"AND r.start_ns >= w.idle_from_ns AND r.start_ns < w.next_device_start_ns GROUP BY ALL ORDER BY w.step")
    return [Finding(
        rule="steps.inter_step_gap",
        title=(f"The {ctx.device_noun()} idles {human_ns(impact)} between steps on average ({ctx.share(impact):.1f}% of a step; "
               f"worst {human_ns(worst['gap_before_ns'])} before step {worst['step']})"),
        impact_ns=int(impact), share_pct=ctx.share(impact),
        scope=ctx.base_scope(steps=[f["step"] for f in gaps]),
        evidence={"mean_gap_ns": int(impact), "gaps": len(gaps), "steady_steps": len(steady),
                  "worst": {"step": worst["step"], "gap_ns": worst["gap_before_ns"]},
                  "examples": [{"step": f["step"], "gap_ns": f["gap_before_ns"]} for f in gaps[:5]]},
        sql=sql,
        recommendation=("Overlap the next step's host work (scheduling, sampling, input preparation, "
                        f"detokenisation) with the current step's {ctx.device_noun()} work: run the scheduler ahead, "
                        "use asynchronous output processing, prefetch inputs with pinned memory."),
        impact_basis="measured", count=len(gaps),
    )]
