"""The analysis as Markdown (for PR comments, job summaries and reports)."""
from __future__ import annotations

from typing import Any

from .findings import combined_lines, group_across_ranks, input_notes, replay_note, trace_notes, unusable_input_notes
from .render import device_names, human_ns, markdown_text, markdown_warnings


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}%"


def analysis_markdown(result: dict[str, Any], top: int = 10) -> str:
    out = ["# profkit analysis", "", *markdown_warnings(unusable_input_notes(result["traces"]))]
    out += ["| rank | format | devices | steps | step p50 | idle | compute | communication |",
            "|---:|---|---|---:|---:|---:|---:|---:|"]
    for t in result["traces"]:
        b = (t.get("breakdown") or {}).get("all_devices") or {}
        s = t.get("steps") or {}
        names = device_names(t)
        out.append(f"| {t.get('rank')} | {markdown_text(t.get('format'))} | {markdown_text(names)} | {s.get('count', 0)} | "
                   f"{human_ns((s.get('duration') or {}).get('p50_ns'))} | {_pct(b.get('idle_pct'))} | {_pct(b.get('compute_pct'))} | "
                   f"{_pct(b.get('communication_pct'))} |")
    notes = input_notes(result) + trace_notes(result["traces"])
    if notes:
        out += [""] + [f"- {markdown_text(line)}" for line in notes]
    findings = group_across_ranks(result["findings"])
    out += ["", f"## Findings (top {min(top, len(findings))} of {len(findings)}, by time per step that could be won back)", ""]
    if not findings:
        out.append("No findings above the noise floor.")
        return "\n".join(out) + "\n"
    out += ["| # | impact / step | share | finding | rule |", "|---:|---:|---:|---|---|"]
    for i, f in enumerate(findings[:top], 1):
        out.append(f"| {i} | {human_ns(f['impact_ns'])} ({f.get('impact_basis')}) | {_pct(f.get('share_pct'))} | "
                   f"{markdown_text(f['title'])} | `{f['rule']}`" + "".join(f" (also `{r}`)" for r in f.get("also_rules", [])) + " |")
    out.append("")
    for line in combined_lines(result["traces"]):
        out += [markdown_text(line), ""]
    for i, f in enumerate(findings[:top], 1):
        out += [f"### {i}. {markdown_text(f['title'])}", "",
                f"**Recommendation:** {markdown_text(f['recommendation'])}", ""]
        if replay_note(f):
            out += [f"**Why {human_ns(f['impact_ns'])}:** {markdown_text(replay_note(f))}", ""]
        out += ["```sql", f["sql"].strip(), "```", ""]
    return "\n".join(out)
