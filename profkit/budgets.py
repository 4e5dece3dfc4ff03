"""Budgets for CI: limits on analysis metrics and findings, read from TOML.

A budget names a metric by its path into one trace's results of
`profkit analyze --format json` (`breakdown.idle_pct`) or a finding rule
(`findings.RULE.impact_ns`, `findings.RULE.count`, `findings.RULE.share_pct`), and limits
it with `max` and/or `min`; with `--baseline`, `max_increase_pct` limits growth against
the baseline's value. By default the worst rank must hold the limit; `rank = N` limits
one rank. Looked up as `profkit.toml` (table `[budgets]`) or `pyproject.toml`
(table `[tool.profkit.budgets]`) from the working directory upward.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ProfkitError
from .render import human_ns

FINDING_FIELDS = ("impact_ns", "count", "share_pct")
LIMIT_KEYS = {"max", "min", "max_increase_pct", "rank", "description"}


@dataclass(frozen=True)
class Budget:
    metric: str
    max: float | None = None
    min: float | None = None
    max_increase_pct: float | None = None
    rank: int | None = None
    description: str = ""

    @property
    def finding_rule(self) -> tuple[str, str] | None:
        """(rule, field) for a `findings.RULE.FIELD` metric, else None."""
        if not self.metric.startswith("findings."):
            return None
        rule, _, field = self.metric[len("findings."):].rpartition(".")
        return rule, field

    @property
    def unit(self) -> str:
        """"ns", "%" or "" (a count), from the metric's name: the last part of its path
        that names a unit (`idle.by_cause_ns_per_step.host_bound` is ns)."""
        return metric_unit(self.metric)

    def show(self, value: float) -> str:
        """A value of this budget's metric as people read it: "1.75 ms", "11.41%", "3"."""
        return show_value(value, self.unit)

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.show(self.min)}")
        if self.max is not None:
            parts.append(f"<= {self.show(self.max)}")
        if self.max_increase_pct is not None:
            parts.append(f"at most +{self.max_increase_pct:g}% over baseline")
        scope = f"rank {self.rank}" if self.rank is not None else "worst rank"
        return f"{self.metric} {' and '.join(parts)} ({scope})"


def metric_unit(metric: str) -> str:
    for part in reversed(metric.split(".")):
        words = part.split("_")
        if "ns" in words:
            return "ns"
        if "pct" in words:
            return "%"
    return ""


def show_value(value: float, unit: str) -> str:
    if unit == "ns":
        return human_ns(value)
    if unit == "%":
        return f"{value:.4g}%"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def find_config(start: Path | None = None) -> Path | None:
    """The nearest profkit.toml, or pyproject.toml with [tool.profkit], upward from start."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "profkit.toml").is_file():
            return folder / "profkit.toml"
        pyproject = folder / "pyproject.toml"
        tool = _read_toml(pyproject).get("tool") if pyproject.is_file() else None
        if isinstance(tool, dict) and "profkit" in tool:
            return pyproject
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfkitError(f"{path}: cannot read budget file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfkitError(f"{path}: invalid TOML: {exc}") from None


def _budget_table(path: Path, data: dict[str, Any]) -> Any:
    """The budgets table of a profkit.toml or pyproject.toml (each level checked to be a
    table: `tool = 5` or `budgets = [1, 2]` is a mistake to name, not a crash)."""
    def below(table: Any, key: str, where: str) -> Any:
        if not isinstance(table, dict):
            raise ProfkitError(f"{path}: {where} must be a table")
        return table.get(key)

    if path.name == "pyproject.toml" or "budgets" not in data:
        tool_profkit = below(below(data, "tool", "the file") or {}, "profkit", "[tool]") or {}
        table, where = below(tool_profkit, "budgets", "[tool.profkit]"), "[tool.profkit.budgets]"
    else:
        table, where = data["budgets"], "[budgets]"
    if table is not None and not isinstance(table, dict):
        raise ProfkitError(f"{path}: {where} must be a table of budgets like idle_pct = {{ max = 10 }}")
    return table


def _number(value: Any) -> bool:
    """A limit TOML can give: an int or float, not a bool (TOML's true is Python's 1) nor
    nan (no value is above or below it, so the budget could never fail)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def load(path: Path) -> list[Budget]:
    table = _budget_table(path, _read_toml(path))
    if not table:
        raise ProfkitError(f"{path}: no budgets (expected a [budgets] table, or [tool.profkit.budgets] in pyproject.toml)")
    budgets = []
    for metric, limit in table.items():
        if not isinstance(limit, dict):
            raise ProfkitError(f'{path}: budget "{metric}" must be a table like {{ max = 10 }}')
        unknown = set(limit) - LIMIT_KEYS
        if unknown:
            raise ProfkitError(f'{path}: budget "{metric}" has unknown keys {sorted(unknown)} '
                               f"(allowed: {sorted(LIMIT_KEYS)})")
        if not {"max", "min", "max_increase_pct"} & set(limit):
            raise ProfkitError(f'{path}: budget "{metric}" sets no limit (max, min or max_increase_pct)')
        for key in ("max", "min", "max_increase_pct"):
            if key in limit and not _number(limit[key]):
                raise ProfkitError(f'{path}: budget "{metric}": {key} must be a number')
        if "rank" in limit and (not isinstance(limit["rank"], int) or isinstance(limit["rank"], bool)
                                or limit["rank"] < 0):
            raise ProfkitError(f'{path}: budget "{metric}": rank must be a rank number (0, 1, ...)')
        budgets.append(Budget(metric=metric, max=limit.get("max"), min=limit.get("min"),
                              max_increase_pct=limit.get("max_increase_pct"), rank=limit.get("rank"),
                              description=str(limit.get("description", ""))))
    return budgets
