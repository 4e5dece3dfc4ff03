"""Evaluating budgets against an analysis: the verdict behind `profkit check`.

Exit codes (stable, documented in docs/ci.md):
0 every budget holds; 1 at least one is exceeded; 2 usage or input error;
3 no budget is exceeded but the trace cannot answer at least one (no steps, no device
activity), so CI can warn instead of fail.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .budgets import FINDING_FIELDS, Budget
from .errors import ProfkitError

PASS, FAIL, ERROR, UNANSWERABLE = 0, 1, 2, 3


@dataclass
class Outcome:
    budget: Budget
    status: str                       # "pass", "fail", "unanswerable"
    value: float | None = None        # the worst (or chosen) rank's value
    rank: int | None = None           # the rank that value came from
    baseline: float | None = None
    message: str = ""
    per_rank: dict[int, float | None] = field(default_factory=dict)


def metric_value(trace: dict[str, Any], findings: list[dict[str, Any]], budget: Budget) -> float | None:
    """The budget's metric for one trace; None when the trace cannot answer it."""
    rule = budget.finding_rule
    if rule is not None:
        name, field_name = rule
        mine = [f for f in findings if f["rule"] == name and f.get("scope", {}).get("trace_id") == trace.get("trace_id")]
        if field_name == "count":
            return float(sum(f.get("count", 1) for f in mine))
        return float(max((f.get(field_name) or 0) for f in mine)) if mine else 0.0
    parts = budget.metric.split(".")
    node, found = _walk(trace, parts)
    if found < len(parts) or isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


def _walk(trace: dict[str, Any], parts: list[str]) -> tuple[Any, int]:
    """Follow a metric's path into a trace's results: (the node reached, how many parts
    were found before the path ended)."""
    node: Any = trace
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            return node, depth
        node = node[part]
    return node, len(parts)


def known_metric(budget: Budget, catalogue: set[str]) -> bool:
    from .metrics_catalogue import matches

    rule = budget.finding_rule
    if rule is not None:
        return rule[1] in FINDING_FIELDS and bool(rule[0])
    return budget.metric in catalogue or any(matches(budget.metric, p) for p in catalogue if "*" in p)


def evaluate(result: dict[str, Any], budgets: list[Budget], catalogue: set[str],
             baseline: dict[str, Any] | None = None) -> list[Outcome]:
    unknown = [b.metric for b in budgets if not known_metric(b, catalogue)]
    if unknown:
        raise ProfkitError(f"unknown budget metric(s): {', '.join(unknown)} "
                           f"(see docs/ci.md for every metric name profkit accepts)")
    outcomes = []
    for budget in budgets:
        outcomes.append(_evaluate_one(result, budget, baseline))
    return outcomes


def _values_by_rank(result: dict[str, Any], budget: Budget) -> dict[int, float | None]:
    values = {}
    for trace in result["traces"]:
        rank = trace.get("rank")
        if budget.rank is not None and rank != budget.rank:
            continue
        values[rank] = metric_value(trace, result["findings"], budget)
    return values


def _evaluate_one(result: dict[str, Any], budget: Budget, baseline: dict[str, Any] | None) -> Outcome:
    per_rank = _values_by_rank(result, budget)
    answered = {r: v for r, v in per_rank.items() if v is not None}
    if not answered:
        why = f"no rank {budget.rank} in the trace" if budget.rank is not None and not per_rank \
            else _missing(result, budget)
        return Outcome(budget, "unanswerable", message=why, per_rank=per_rank)
    # The worst rank decides: the largest value against a max, the smallest against a min.
    failures = []
    worst_rank, worst = max(answered.items(), key=lambda kv: kv[1])
    if budget.max is not None and worst > budget.max:
        failures.append(f"{_versus(budget, worst, '>', budget.max, 'max')} on rank {worst_rank}")
    if budget.min is not None:
        low_rank, low = min(answered.items(), key=lambda kv: kv[1])
        if low < budget.min:
            failures.append(f"{_versus(budget, low, '<', budget.min, 'min')} on rank {low_rank}")
            if budget.max is None:
                worst_rank, worst = low_rank, low
    base_value = None
    if budget.max_increase_pct is not None:
        if baseline is None:
            return Outcome(budget, "unanswerable", worst, worst_rank,
                           message="max_increase_pct needs --baseline", per_rank=per_rank)
        base_values = [v for v in _values_by_rank(baseline, budget).values() if v is not None]
        if not base_values:
            return Outcome(budget, "unanswerable", worst, worst_rank,
                           message="the baseline has no value for this metric", per_rank=per_rank)
        base_value = max(base_values)
        limit = base_value * (1 + budget.max_increase_pct / 100.0)
        if worst > limit and worst - base_value > 1e-9:
            growth = 100.0 * (worst - base_value) / base_value if base_value else float("inf")
            failures.append(f"{budget.show(worst)} is +{growth:.1f}% over baseline {budget.show(base_value)} "
                            f"(allowed +{budget.max_increase_pct:g}%)")
    status = "fail" if failures else "pass"
    message = "; ".join(failures) or f"{budget.show(worst)} on rank {worst_rank}"
    return Outcome(budget, status, worst, worst_rank, base_value, message, per_rank)


def _versus(budget: Budget, value: float, op: str, limit: float, name: str) -> str:
    """"2.1 ms > max 2 ms"; the exact values too where rounding would show them equal."""
    shown, bound = budget.show(value), budget.show(limit)
    if shown == bound:
        unit = f" {budget.unit}" if budget.unit == "ns" else budget.unit
        shown, bound = f"{shown} ({_exact(value)}{unit})", f"{bound} ({_exact(limit)}{unit})"
    return f"{shown} {op} {name} {bound}"


def _exact(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.8g}"


def _missing(result: dict[str, Any], budget: Budget) -> str:
    """Why no trace answers a metric: the first part of its path that the results lack
    (a single-GPU trace has `communication` but no `communication.exposed_pct`), or the
    null there, with the likely reason."""
    parts = budget.metric.split(".")
    for trace in result["traces"]:
        node, found = _walk(trace, parts)
        if found < len(parts):
            where = ".".join(parts[:found])
            held = ", ".join(sorted(node)[:8]) if isinstance(node, dict) else type(node).__name__
            return (f"the trace's results have no {budget.metric} "
                    + (f"({where} holds only {held})" if where else f"(no section {parts[0]})")
                    + _likely_reason(trace, parts[0]))
        return f"{budget.metric} is {'null' if node is None else 'not a number'} in the trace's results" \
            + _likely_reason(trace, parts[0])
    return "the results hold no trace"


def _likely_reason(trace: dict[str, Any], section: str) -> str:
    if trace.get("breakdown", {}).get("device_activity") is False:
        return ": the trace has no device activity"
    if section == "communication" and not trace.get("communication", {}).get("comm_kernels"):
        return ": the trace has no communication kernels"
    if section == "steps" and not trace.get("steps", {}).get("count"):
        return ": the trace has no steps"
    return ""


def exit_code(outcomes: list[Outcome]) -> int:
    if any(o.status == "fail" for o in outcomes):
        return FAIL
    if any(o.status == "unanswerable" for o in outcomes):
        return UNANSWERABLE
    return PASS


def metric_catalogue(result: dict[str, Any]) -> set[str]:
    """Every numeric leaf path in the per-trace results (lists are not addressable)."""
    paths: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            paths.add(prefix)

    for trace in result["traces"]:
        walk({k: v for k, v in trace.items() if k not in ("trace_id", "rank", "world_size")}, "")
    return paths


def known_metrics() -> set[str]:
    """Every metric path budgets accept: the catalogue in profkit/data/metrics.txt."""
    from importlib import resources

    text = resources.files("profkit.data").joinpath("metrics.txt").read_text(encoding="utf-8")
    return {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}


def benchmark_entries(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One object per budget in the custom-benchmark shape (name, unit, value) that
    benchmark-tracking actions read, with the verdict alongside."""
    entries = []
    for o in outcomes:
        metric = o.budget.metric
        unit = o.budget.unit
        entries.append({
            "name": metric + (f" (rank {o.budget.rank})" if o.budget.rank is not None else ""),
            "unit": unit, "value": o.value, "status": o.status, "rank": o.rank,
            "max": o.budget.max, "min": o.budget.min, "max_increase_pct": o.budget.max_increase_pct,
            "baseline": o.baseline, "message": o.message,
            "extra": f"{o.status}: {o.message}",
        })
    return entries
