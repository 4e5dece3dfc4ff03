"""The analysis as rich tables on a terminal: a summary per trace, then ranked findings."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .findings import (combined_lines, group_across_ranks, input_notes, path_parts, replay_note, trace_notes,
                       unusable_input_notes)
from .render import console as pipe_console, device_names, human_ns, warning_text


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}%"


def device_figures(trace: dict[str, Any]) -> dict[str, Any]:
    """Exact figures over all devices (the top-level breakdown follows HTA's rounding)."""
    return (trace.get("breakdown") or {}).get("all_devices") or {}


def summary_table(traces: list[dict[str, Any]]) -> Table:
    table = Table(title="Traces (device time over the span of device activity)", title_justify="left")
    for column in ("rank", "format", "device(s)", "steps", "step time (p50)", "busy", "idle",
                   "compute", "comm", "memory"):
        table.add_column(column, justify="right" if column not in ("format", "device(s)") else "left")
    for t in traces:
        figures = device_figures(t)
        steps = t.get("steps") or {}
        table.add_row(
            str(t.get("rank")), t.get("format") or "-", device_names(t)[:40],
            f"{steps.get('count', 0)}" + (f" ({steps['source']})" if steps.get("source") else ""),
            human_ns((steps.get("duration") or {}).get("p50_ns")),
            _pct(figures.get("busy_pct")), _pct(figures.get("idle_pct")), _pct(figures.get("compute_pct")),
            _pct(figures.get("communication_pct")), _pct(figures.get("memory_pct")),
        )
    return table


def scope_text(scope: dict[str, Any]) -> str:
    parts = []
    if scope.get("ranks"):
        parts.append(f"{len(scope['ranks'])} ranks")
    for key in ("rank", "device", "stream", "process_group", "op"):
        if key in ("rank", "device") and scope.get("ranks"):
            continue
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
                      scope_text(f.get("scope") or {}),
                      f["rule"] + "".join(f"\n(also {r})" for r in f.get("also_rules", [])))
    return table


def make_console() -> Console:
    """The terminal's width on a terminal; a wide page when piped (logs, CI)."""
    console = pipe_console()
    return console if console.is_terminal else pipe_console(width=160)


_BAR_COLOURS = {"compute": "green", "communication": "magenta", "host": "yellow", "launch_latency": "cyan",
                "sync": "red", "wait": "blue", "idle": "bright_black"}


def critical_path_bar(trace: dict[str, Any], width: int = 40) -> Text | None:
    """One line: the critical path's composition as a coloured bar with the shares."""
    cp = trace.get("critical_path") or {}
    parts = path_parts(cp)
    total = sum(parts.values())
    if not cp.get("available") or not total:
        return None
    line = Text(f"rank {trace.get('rank')} critical path {human_ns(cp.get('length_ns'))} "
                f"(replay error {cp.get('replay_error_pct', 0):+.1f}%): ")
    legend = []
    for cause, ns in sorted(parts.items(), key=lambda kv: -kv[1]):
        cells = max(1, round(width * ns / total))
        colour = _BAR_COLOURS.get(cause.split(":")[0], "white")
        line.append("█" * cells, style=colour)
        legend.append((cause, colour, f" {100 * ns / total:.0f}%"))
    line.append(" ")
    for i, (cause, colour, share) in enumerate(legend):
        line.append(", " if i else "")
        line.append(cause, style=colour)
        line.append(share)
    return line


def print_analysis(result: dict[str, Any], top: int = 10, console: Console | None = None) -> None:
    console = console or make_console()
    for line in unusable_input_notes(result["traces"]):
        console.print(warning_text(line))
    console.print(summary_table(result["traces"]))
    for trace in result["traces"]:
        line = critical_path_bar(trace)
        if line:
            console.print(line)
    for line in input_notes(result) + trace_notes(result["traces"]):
        console.print(Text(line, style="dim"))
    findings = group_across_ranks(result["findings"])
    if not findings:
        console.print("No findings above the noise floor.")
        return
    console.print(findings_table(findings, top))
    for line in combined_lines(result["traces"]):
        console.print(line)
    for i, f in enumerate(findings[:min(top, 5)], 1):
        console.print(Text(f"{i}. {f['title']}", style="bold"))
        console.print(Text.assemble("   ", ("Do:", "green"), " ", f["recommendation"]))
        note = replay_note(f)
        if note:
            console.print(Text.assemble("   ", (f"Why {human_ns(f['impact_ns'])}:", "yellow"), " ", note))
    console.print(Text("≤ marks an upper bound, ~ an estimate. `--format markdown` adds the SQL that shows each "
                       "finding's evidence in `profkit sql`; `--format json` has every finding of every rank.",
                       style="dim"))
