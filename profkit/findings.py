"""A finding: something a user can fix, how much time it costs, and how to see it.

Findings are ranked by `impact_ns`: the time per step that fixing the cause would save.
Until the dependency-graph replay exists, an impact is an estimate or an upper bound;
`impact_basis` says which, so nobody mistakes a bound for a prediction.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .render import human_ns, number_ranges, short_name

IMPACT_BASES = ("measured", "estimate", "bound", "replay")


@dataclass
class Finding:
    rule: str                 # stable id, e.g. "idle.host_bound"; budgets refer to it
    title: str                # one line a person reads: "GPU 3 idles 21% of each step waiting on host launches"
    impact_ns: int            # time per step a fix would save
    share_pct: float          # impact as a share of the (median) step time
    scope: dict[str, Any]     # trace_id, rank, device, stream, step(s) it applies to
    evidence: dict[str, Any]  # numbers, example event ids, time windows
    sql: str                  # a query for `profkit sql` that shows the evidence
    recommendation: str       # what to do about it
    impact_basis: str = "estimate"
    count: int = 1            # occurrences (calls, gaps, kernels) behind the finding
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.impact_basis not in IMPACT_BASES:
            raise ValueError(f"impact_basis must be one of {IMPACT_BASES}")
        self.impact_ns = max(0, int(self.impact_ns))
        self.share_pct = round(float(self.share_pct), 3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank(findings: list[Finding]) -> list[Finding]:
    """Largest impact first; ties by rule id, then rank (as a number: rank 2 before rank
    10), so the order is stable."""
    return sorted(findings, key=lambda f: (-f.impact_ns, f.rule, _rank_of(f.scope), str(f.scope)))


def _rank_of(scope: dict[str, Any]) -> int:
    rank = scope.get("rank") if isinstance(scope, dict) else None
    return rank if isinstance(rank, int) else -1


def replay_note(finding: dict[str, Any]) -> str | None:
    """Why a replayed impact is far below what the finding costs, when it is (set by
    analyses.critical_path.refine_impacts); renderers print it under the finding."""
    return ((finding.get("details") or {}).get("replay") or {}).get("note")


def combined_lines(traces: list[dict[str, Any]]) -> list[str]:
    """What the replay-priced findings win back together (`critical_path.combined_replay`),
    as one line for the renderers (ranks as a range). Their impacts overlap where they share
    a cause, so their sum says little; the joint replay is the figure to plan with."""
    rows = [(t.get("rank"), t["critical_path"]["combined_replay"]) for t in traces
            if (t.get("critical_path") or {}).get("combined_replay")]
    if not rows:
        return []

    def span(values, fmt):
        lo, hi = min(values), max(values)
        return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"

    won = span([c["saving_ns"] for _, c in rows], human_ns)
    pct = span([c["saving_pct"] for _, c in rows], lambda v: f"{v:.1f}%")
    summed = span([c["sum_of_impacts_ns"] for _, c in rows], human_ns)
    n = span([c["findings"] for _, c in rows], str)
    who = f"On {len(rows)} ranks, the" if len(rows) > 1 else "The"
    overlap = all(c["saving_ns"] <= c["sum_of_impacts_ns"] for _, c in rows)
    if won == summed:  # equal as shown: each finding's time is its own
        tail = "what their impacts add up to: they do not overlap"
    elif overlap:
        tail = f"less than their impacts add up to ({summed}), which overlap"
    else:
        tail = f"against {summed} for their impacts one by one: removing one lets the next matter"
    return [f"{who} {n} findings priced by replay, fixed together, win back {won} per step ({pct}); {tail}."]


def step_notes(traces: list[dict[str, Any]]) -> list[str]:
    """Where a trace's steps are not its host ranges as recorded (the steps pass's
    `adjusted_windows` and `partial_last_step`), one line each, so a step time that differs
    from the timeline's step range is explained where it is shown."""
    lines = []
    for t in traces:
        steps, who = t.get("steps") or {}, f"Rank {t.get('rank')}"
        for a in steps.get("adjusted_windows") or []:
            if a["kind"] == "cut_at_recording_end":
                lines.append(f"{who}: step {short_name(a['name'])} is cut at the last recorded event; its range runs on "
                             f"{human_ns(a['host_end_ns'] - a['end_ns'])} past it, with nothing recorded.")
            else:
                lines.append(f"{who}: the only step ({short_name(a['name'])}) ends with its device work, "
                             f"{human_ns(a['end_ns'] - a['host_end_ns'])} after its host range.")
        partial = steps.get("partial_last_step")
        if partial:
            lines.append(f"{who}: last step {short_name(partial['name'])} left out, cut short by the capture "
                         f"({partial['reason']}).")
    return lines


# A critical path this much waiting on what the trace does not record gets a note.
WAIT_NOTE_MIN_SHARE = 0.10


def path_parts(cp: dict[str, Any]) -> dict[str, int]:
    """The critical path's composition for the renderers' bars: `attribution`, with its
    `idle` split into gaps (`idle`) and waits on what the trace does not record (`wait`)."""
    parts = {k: v for k, v in (cp.get("attribution") or {}).items() if v and v > 0}
    wait = min((cp.get("attribution_detail") or {}).get("wait") or 0, parts.get("idle", 0))
    if wait > 0:
        parts["idle"] -= wait
        parts["wait"] = wait
    return {k: v for k, v in parts.items() if v > 0}


def steady_windows(trace_result: dict[str, Any]) -> list[dict[str, Any]]:
    """The steady-state steps the analysis chose (warm-up dropped), as step rows."""
    steps = trace_result.get("steps") or {}
    rows = sorted(steps.get("steps") or [], key=lambda s: s["start_ns"])
    first = steps.get("steady_first_step")
    count = steps.get("steady_count") or 0
    if not rows or not count:
        return []
    start = next((i for i, s in enumerate(rows) if s["step"] == first), 0)
    return rows[start:start + count]


# Idle outside the analysed steps above this share of device time gets a note.
OUTSIDE_STEP_NOTE_MIN_PCT = 25.0


def trace_notes(traces: list[dict[str, Any]], loaded: int | None = None) -> list[str]:
    """Every per-trace note the reports print under the summary, in this order."""
    return caveat_notes(traces) + wait_notes(traces, loaded) + outside_step_notes(traces) + step_notes(traces)


def input_notes(result: dict[str, Any]) -> list[str]:
    """Lines about the inputs as a whole, printed before the per-trace notes."""
    traces = result.get("traces") or []
    return (not_read_notes(result) + shared_rank_notes(traces) + mixed_format_notes(traces)
            + mixed_device_notes(traces))


def unusable_input_notes(traces: list[dict[str, Any]], shown: int = 3) -> list[str]:
    """One warning line per trace whose parser met records it could not use (malformed,
    inconsistent, of an unknown kind): every figure leaves them out, which a report must
    say before anything else."""
    lines = []
    for t in traces:
        accounting = t.get("input") or {}
        count = accounting.get("unusable_records") or 0
        if not count:
            continue
        reasons = [i for i in accounting.get("issues") or [] if i.get("unusable")]
        more = f"; {len(reasons) - shown} more reasons" if len(reasons) > shown else ""
        listed = "; ".join(f"{i['reason']} ({i['records']:,})" for i in reasons[:shown])
        lines.append(f"Rank {t.get('rank')} ({t.get('path')}): {count:,} input "
                     f"{'record' if count == 1 else 'records'} could not be used and every figure leaves "
                     f"{'it' if count == 1 else 'them'} out: {listed}{more}. profkit info shows an example of each.")
    return lines


def shared_rank_notes(traces: list[dict[str, Any]]) -> list[str]:
    """One line per rank that several traces claim (two runs' traces in one directory):
    the reports tell them apart only by file, and cross-rank figures take them for one job."""
    by_rank: dict[Any, list[str]] = {}
    for t in traces:
        by_rank.setdefault(t.get("rank"), []).append(Path(str(t.get("path"))).name)
    return [f"Rank {rank} is claimed by {len(names)} traces ({', '.join(names)}): cross-rank figures treat "
            "them as ranks of one job; for separate runs, analyse each alone or compare them with profkit diff."
            for rank, names in by_rank.items() if len(names) > 1]


def mixed_format_notes(traces: list[dict[str, Any]]) -> list[str]:
    """A line where the traces come from more than one tool (a directory holding a run's
    PyTorch profiler traces and an Nsight export of it, or traces of unrelated runs): each
    is analysed, but cross-rank figures take them for ranks of one job."""
    by_format = _ranks_by(traces, lambda t: str(t.get("format")))
    if len(by_format) < 2:
        return []
    return [f"The traces come from {len(by_format)} tools ({_listed(by_format)}): cross-rank figures treat "
            "them as ranks of one job; for separate runs, or the same run recorded twice, analyse each alone."]


def mixed_device_notes(traces: list[dict[str, Any]]) -> list[str]:
    """A line where the ranks ran on different device models (an A100 rank beside an H100
    one): the ranks of one job usually share one, so these are most likely traces of
    separate runs, which cross-rank figures would take for one job."""
    by_models = _ranks_by(traces, lambda t: " + ".join(sorted({str(d["name"]) for d in t.get("devices") or []
                                                              if d.get("name")})) or None)
    if len(by_models) < 2:
        return []
    return [f"The ranks ran on different devices ({_listed(by_models)}): cross-rank figures treat them as "
            "ranks of one job; for separate runs, analyse each alone or compare them with profkit diff."]


def _ranks_by(traces: list[dict[str, Any]], key) -> dict[str, list[str]]:
    """The traces' ranks grouped by `key(trace)` (traces whose key is None left out)."""
    groups: dict[str, list[str]] = {}
    for t in traces:
        if (value := key(t)) is not None:
            groups.setdefault(value, []).append(str(t.get("rank")))
    return groups


def _listed(groups: dict[str, list[str]]) -> str:
    return "; ".join(f"{value}: rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}" for value, ranks in groups.items())


def not_read_notes(result: dict[str, Any], shown: int = 3) -> list[str]:
    """One line naming the files under the input that were not read (`inputs_not_read`),
    so that a rank's trace profkit does not recognise is not left out unsaid."""
    files = result.get("inputs_not_read") or []
    if not files:
        return []
    parts = []
    for reason in sorted({f["reason"] for f in files}):
        names = [Path(f["path"]).name for f in files if f["reason"] == reason]
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"{len(names)} {'file' if len(names) == 1 else 'files'} ({reason}: "
                     f"{', '.join(names[:shown])}{more})")
    return [f"Not read: {'; '.join(parts)}. The store's table inputs_not_read lists them."]


def outside_step_notes(traces: list[dict[str, Any]]) -> list[str]:
    """Where most of a trace's device time is idle outside its steps (a capture much longer
    than the steps analysed), one line saying so and how busy the device is within the
    steady steps (those every per-step figure uses): the summary's idle share is over the
    whole span of device activity (HTA's definition)."""
    lines = []
    for t in traces:
        outside = ((t.get("idle") or {}).get("by_cause_pct") or {}).get("outside_step") or 0
        steps = (t.get("steps") or {}).get("steps") or []
        steady = steady_windows(t) or steps
        dur = sum(s.get("dur_ns") or 0 for s in steps)
        steady_dur = sum(s.get("dur_ns") or 0 for s in steady)
        if outside < OUTSIDE_STEP_NOTE_MIN_PCT or steady_dur <= 0:
            continue
        busy = sum(s.get("device_busy_ns") or 0 for s in steady)
        span = (t.get("breakdown") or {}).get("span_ns")
        which = "the step" if len(steps) == 1 else f"the {len(steps)} steps"
        within = ("it" if len(steps) == 1 else "them") if len(steady) == len(steps) else \
            f"the {len(steady)} steady steps" if len(steady) > 1 else "the steady step"
        cover = "covers" if len(steps) == 1 else "cover"
        lines.append(f"Rank {t.get('rank')}: {outside:.1f}% of device time is idle outside {which} analysed, "
                     f"which {cover} {human_ns(dur)} of a {human_ns(span)} span of device activity; within "
                     f"{within} the device is {100 * busy / steady_dur:.1f}% busy.")
    return lines


def caveat_notes(traces: list[dict[str, Any]]) -> list[str]:
    """A trace's `critical_path.caveat` (set where the replay does not reproduce its step)."""
    return [f"Rank {t.get('rank')}: {t['critical_path']['caveat']}." for t in traces
            if (t.get("critical_path") or {}).get("caveat")]


def wait_notes(traces: list[dict[str, Any]], loaded: int | None = None) -> list[str]:
    """Where a trace's critical path is mostly waiting on something the trace does not record
    (`attribution_detail.wait`), one line naming where the largest wait is and what it can be.
    `loaded`: how many ranks' traces the analysis had (default: `traces`)."""
    loaded = len(traces) if loaded is None else loaded
    lines = []
    for t in traces:
        cp = t.get("critical_path") or {}
        length, wait = cp.get("length_ns") or 0, (cp.get("attribution_detail") or {}).get("wait") or 0
        if not cp.get("available") or length <= 0 or wait < WAIT_NOTE_MIN_SHARE * length:
            continue
        line = (f"Rank {t.get('rank')}: {100 * wait / length:.0f}% of the critical path ({human_ns(wait)} per step) "
                f"waits on something this trace does not record")
        top = next((c for c in cp.get("top_contributors") or [] if c.get("cause") == "wait"), None)
        if top:
            line += f"; most of it before {short_name(top['name'])} ({top['count']} on the path, {human_ns(top['ns'])} per step)"
            if top.get("category") == "communication":
                line += ", a collective waiting for its peer ranks"
                world = t.get("world_size") or 0
                if world > loaded:
                    line += f": analyse all {world} ranks' traces together to see which rank arrives late"
            else:
                line += (", launched long before it ran: device work queued before the capture began, another "
                         "process on the device, or a dependency with no recorded event")
        lines.append(line + ".")
    return lines


# Scope that names a rank's own things: a device or stream number is that rank's (Nsight
# numbers streams across the whole report, so rank 1's compute stream is not rank 0's).
_PER_RANK_SCOPE = ("trace_id", "rank", "device", "stream", "steps")


def group_across_ranks(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For display: the same rule with the same scope on several ranks becomes one row
    (the worst rank's finding, with the list of ranks), so four ranks do not fill the top
    ten with copies. Where a rank has several findings of a rule (two streams), its largest
    groups with the other ranks' largest, its second with their second, and so on. The
    JSON output keeps every finding."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    nth: dict[tuple, int] = {}
    for f in sorted(findings, key=lambda f: -f["impact_ns"]):
        scope = f.get("scope") or {}
        shared = (f["rule"], tuple(sorted((k, str(v)) for k, v in scope.items() if k not in _PER_RANK_SCOPE)))
        rank_key = (shared, scope.get("trace_id"), scope.get("rank"))
        n = nth[rank_key] = nth.get(rank_key, -1) + 1
        groups.setdefault((shared, n), []).append(f)
    out = []
    for members in groups.values():
        worst = members[0]
        ranks = sorted({(m.get("scope") or {}).get("rank") for m in members} - {None})
        if len(ranks) > 1:
            # The title is the worst rank's (its GPU number is that rank's): say which rank.
            where = (worst.get("scope") or {}).get("rank")
            scope = {**worst.get("scope", {}), "ranks": ranks}
            if len({str((m.get("scope") or {}).get("stream")) for m in members}) > 1:
                scope.pop("stream", None)  # each rank's own stream: none of them names the row
            worst = {**worst, "title": f"{worst['title']} (rank {where}; worst of {_ranges(ranks)})", "scope": scope}
        out.append(worst)
    return _merge_same_cause(sorted(out, key=lambda f: (-f["impact_ns"], f["rule"])))


def _merge_same_cause(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings whose impact comes from the same what-if on the same ranks describe one
    cause seen from two passes (a sync call and the idle it causes): show the first, and
    name the others in its `also_rules`."""
    kept: dict[tuple, dict[str, Any]] = {}
    out = []
    for f in findings:
        replay = (f.get("details") or {}).get("replay")
        if f.get("impact_basis") != "replay" or not replay:
            out.append(f)
            continue
        scope = f.get("scope") or {}
        key = (tuple(map(str, replay.get("changes", []))), str(scope.get("ranks") or scope.get("rank")))
        if key in kept:
            # The same rule on another device of the trace shares the trace-level replay;
            # a different rule is the same cause seen by another pass.
            if f["rule"] != kept[key]["rule"] and f["rule"] not in kept[key].get("also_rules", []):
                kept[key].setdefault("also_rules", []).append(f["rule"])
            continue
        f = dict(f)
        kept[key] = f
        out.append(f)
    return out


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> 'ranks 0-2, 5'."""
    return "ranks " + number_ranges(ranks)
