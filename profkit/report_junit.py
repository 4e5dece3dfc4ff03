"""Budget outcomes as a JUnit XML report: one test case per budget.

The shape is the one CI systems read (Jenkins, GitLab, GitHub test reporters):
<testsuites><testsuite name tests failures errors skipped time><testcase classname name time>
with <failure message type> or <skipped message> children.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from .check import Outcome


def junit_xml(outcomes: list[Outcome], trace: str) -> str:
    failures = sum(o.status == "fail" for o in outcomes)
    skipped = sum(o.status == "unanswerable" for o in outcomes)
    suites = ET.Element("testsuites", name="profkit check", tests=str(len(outcomes)),
                        failures=str(failures), errors="0", skipped=str(skipped), time="0")
    suite = ET.SubElement(suites, "testsuite", name=f"profkit budgets: {trace}", tests=str(len(outcomes)),
                          failures=str(failures), errors="0", skipped=str(skipped), time="0")
    for outcome in outcomes:
        case = ET.SubElement(suite, "testcase", classname="profkit.budgets",
                             name=outcome.budget.describe(), time="0")
        if outcome.status == "fail":
            failure = ET.SubElement(case, "failure", message=outcome.message, type="BudgetExceeded")
            failure.text = _details(outcome)
        elif outcome.status == "unanswerable":
            ET.SubElement(case, "skipped", message=outcome.message)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = _details(outcome)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _details(outcome: Outcome) -> str:
    lines = [outcome.message]
    if outcome.budget.description:
        lines.append(outcome.budget.description)
    lines += [f"rank {rank}: {'-' if value is None else f'{value:g}'}" for rank, value in sorted(
        outcome.per_rank.items(), key=lambda kv: (kv[0] is None, kv[0]))]
    if outcome.baseline is not None:
        lines.append(f"baseline: {outcome.baseline:g}")
    return "\n".join(lines)
