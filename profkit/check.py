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
    node: Any = trace
    for part in budget.metric.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


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
            else "the trace has no value for this metric (no steps or no device activity?)"
        return Outcome(budget, "unanswerable", message=why, per_rank=per_rank)
    # The worst rank decides: the largest value against a max, the smallest against a min.
    failures = []
    worst_rank, worst = max(answered.items(), key=lambda kv: kv[1])
    if budget.max is not None and worst > budget.max:
        failures.append(f"{worst:g} > max {budget.max:g} on rank {worst_rank}")
    if budget.min is not None:
        low_rank, low = min(answered.items(), key=lambda kv: kv[1])
        if low < budget.min:
            failures.append(f"{low:g} < min {budget.min:g} on rank {low_rank}")
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
            failures.append(f"{worst:g} is +{growth:.1f}% over baseline {base_value:g} "
                            f"(allowed +{budget.max_increase_pct:g}%)")
    status = "fail" if failures else "pass"
    message = "; ".join(failures) or f"{worst:g} on rank {worst_rank}"
    return Outcome(budget, status, worst, worst_rank, base_value, message, per_rank)


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
        unit = "ns" if metric.endswith("_ns") else "%" if metric.endswith("_pct") else ""
        entries.append({
            "name": metric + (f" (rank {o.budget.rank})" if o.budget.rank is not None else ""),
            "unit": unit, "value": o.value, "status": o.status, "rank": o.rank,
            "max": o.budget.max, "min": o.budget.min, "max_increase_pct": o.budget.max_increase_pct,
            "baseline": o.baseline, "message": o.message,
            "extra": f"{o.status}: {o.message}",
        })
    return entries
