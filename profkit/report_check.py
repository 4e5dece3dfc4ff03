"""The verdict of `profkit check` for people: a terminal table and a Markdown summary."""
from __future__ import annotations

from typing import Any

from .check import Outcome
from .findings import unusable_input_notes
from .render import markdown_text, warning_text
from .report_markdown import analysis_markdown

_MARK = {"pass": "PASS", "fail": "FAIL", "unanswerable": "N/A"}
_VERDICT = {0: "all budgets hold", 1: "budget exceeded", 3: "some budgets could not be checked"}


def print_check(outcomes: list[Outcome], result: dict[str, Any], code: int) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("", "budget", "value", "details", title="profkit budgets", title_justify="left")
    style = {"pass": "green", "fail": "red", "unanswerable": "yellow"}
    for o in outcomes:
        table.add_row(Text(_MARK[o.status], style=style[o.status]), o.budget.describe(),
                      "-" if o.value is None else o.budget.show(o.value), o.message)
    from .report_terminal import make_console

    console = make_console()
    for line in unusable_input_notes(result.get("traces") or []):
        console.print(warning_text(line))
    console.print(table)
    console.print(f"{_VERDICT.get(code, '')} (exit {code})")


def check_markdown(outcomes: list[Outcome], result: dict[str, Any], code: int) -> str:
    lines = ["## profkit check", "", f"**{_VERDICT.get(code, '')}** (exit {code})", "",
             "| | budget | value | details |", "|---|---|---:|---|"]
    for o in outcomes:
        value = "-" if o.value is None else o.budget.show(o.value)
        lines.append(f"| {_MARK[o.status]} | {markdown_text(o.budget.describe())} | {markdown_text(value)} | "
                     f"{markdown_text(o.message)} |")
    lines += ["", analysis_markdown(result, top=10).replace("# profkit analysis", "### Analysis", 1)]
    return "\n".join(lines) + "\n"
