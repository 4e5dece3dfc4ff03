"""GitHub Actions output: workflow annotations and a Markdown job summary.

GitHub shows about ten annotations per step, so only the top findings and the failed
budgets become annotations; the full ranked table goes to $GITHUB_STEP_SUMMARY.
"""
from __future__ import annotations

import os
from typing import Any

from .check import Outcome
from .findings import group_across_ranks
from .render import human_ns

MAX_ANNOTATIONS = 10


def _escape(text: str) -> str:
    # Workflow command data escaping (%, CR, LF), per GitHub's toolkit.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape(text).replace(":", "%3A").replace(",", "%2C")


def annotations(outcomes: list[Outcome], findings: list[dict[str, Any]], top: int = 5) -> list[str]:
    lines = []
    for o in outcomes:
        if o.status == "fail":
            lines.append(f"::error title={_escape_property('profkit budget exceeded: ' + o.budget.metric)}::"
                         f"{_escape(o.budget.describe() + ': ' + o.message)}")
        elif o.status == "unanswerable":
            lines.append(f"::warning title={_escape_property('profkit budget not checked: ' + o.budget.metric)}::"
                         f"{_escape(o.message)}")
    for f in group_across_ranks(findings)[:top]:
        lines.append(f"::notice title={_escape_property(f['rule'] + ' (' + human_ns(f['impact_ns']) + '/step)')}::"
                     f"{_escape(f['title'] + '. ' + f['recommendation'])}")
    return lines[:MAX_ANNOTATIONS]


def write_step_summary(markdown: str) -> bool:
    """Append to the job summary when running in GitHub Actions; False when not."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(markdown)
    return True
