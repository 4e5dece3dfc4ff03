"""The analysis as rich tables on a terminal: a summary per trace, then ranked findings."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .render import human_ns


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}%"


def summary_table(traces: list[dict[str, Any]]) -> Table:
    table = Table(title="Traces", title_justify="left")
    for column in ("rank", "format", "device(s)", "steps", "step time (p50)", "GPU busy", "idle",
                   "compute", "non-compute"):
        table.add_column(column, justify="right" if column not in ("format", "device(s)") else "left")
    for t in traces:
        breakdown = t.get("breakdown") or {}
        steps = t.get("steps") or {}
        names = sorted({d.get("name") or "?" for d in t.get("devices") or []})
        span = breakdown.get("span_ns") or 0
        busy = breakdown.get("busy_ns")
        table.add_row(
            str(t.get("rank")), t.get("format") or "-", ", ".join(names)[:40] or "-",
            f"{steps.get('count', 0)}" + (f" ({steps['source']})" if steps.get("source") else ""),
            human_ns((steps.get("duration") or {}).get("p50_ns")),
            _pct(100.0 * busy / span if busy is not None and span else None),
            _pct(breakdown.get("idle_pct")), _pct(breakdown.get("compute_pct")),
            _pct(breakdown.get("non_compute_pct")),
        )
    return table


def _scope_text(scope: dict[str, Any]) -> str:
    parts = []
    for key in ("rank", "device", "stream", "process_group", "op"):
        if scope.get(key) is not None:
            parts.append(f"{key} {scope[key]}")
    return ", ".join(parts) or "trace"


def findings_table(findings: list[dict[str, Any]], top: int) -> Table:
    table = Table(title=f"Findings, ranked by time that could be won back (top {min(top, len(findings))} of {len(findings)})",
                  title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("impact / step", justify="right")
    table.add_column("share", justify="right")
    table.add_column("finding")
    table.add_column("scope")
    table.add_column("rule")
    for i, f in enumerate(findings[:top], 1):
        basis = {"bound": "≤ ", "estimate": "~", "measured": "", "replay": ""}.get(f.get("impact_basis"), "")
        table.add_row(str(i), basis + human_ns(f["impact_ns"]), _pct(f.get("share_pct")), f["title"],
                      _scope_text(f.get("scope") or {}), f["rule"])
    return table


def print_analysis(result: dict[str, Any], top: int = 10, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(result["traces"]))
    findings = result["findings"]
    if not findings:
        console.print("No findings above the noise floor.")
        return
    console.print(findings_table(findings, top))
    for i, f in enumerate(findings[:min(top, 5)], 1):
        console.print(f"[bold]{i}. {f['title']}[/bold]")
        console.print(f"   [green]Do:[/green] {f['recommendation']}")
        console.print(f"   [dim]See: profkit sql TRACE \"{' '.join(f['sql'].split())}\"[/dim]")
    console.print("[dim]≤ marks an upper bound, ~ an estimate (see docs/analysis-json.md).[/dim]")
