"""A diff (`profkit.diff`) as rich tables on a terminal, or as Markdown. No analysis here."""
from __future__ import annotations

from typing import Any, Callable

from .render import human_ns, markdown_text, markdown_warnings, warning_text


def _signed_ns(value: float | None) -> str:
    if value is None:
        return "-"
    return ("+" if value > 0 else "-" if value < 0 else "±") + human_ns(abs(value))


def _pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}%" if signed else f"{value:.1f}%"


def _count(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def _side(trace: dict[str, Any]) -> str:
    devices = ", ".join(trace.get("devices") or []) or "no device"
    steps = trace.get("steady_steps") or []
    step_text = f"{len(steps)} steady step(s)" if steps else "no steps (whole trace)"
    return f"{trace.get('path')} — rank {trace.get('rank')}, {devices}, {step_text}"


def _summary_rows(pair: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    step, dev = pair["step"], pair["device_time"]
    rows = [("step time", human_ns(step["base_ns"]), human_ns(step["new_ns"]),
             _signed_ns(step["delta_ns"]), _pct(step["delta_pct"])),
            ("device time / step", human_ns(dev["base_ns_per_step"]), human_ns(dev["new_ns_per_step"]),
             _signed_ns(dev["delta_ns_per_step"]), _pct(dev["delta_pct"]))]
    for r in pair["breakdown"]:
        rows.append((r["metric"].replace("_pct", " %"), _pct(r["base"], False), _pct(r["new"], False),
                     "-" if r["delta_pts"] is None else f"{r['delta_pts']:+.1f} pts", ""))
    return rows


def _category_rows(pair: dict[str, Any]) -> list[tuple[str, ...]]:
    return [(r["category"], human_ns(r["base_ns_per_step"]), human_ns(r["new_ns_per_step"]),
             _signed_ns(r["delta_ns_per_step"]), _pct(r["delta_pct"]),
             f"{r['base_share_pct']:.1f}% → {r['new_share_pct']:.1f}%") for r in pair["categories"]]


# Long framework-op prefixes shortened on screen only (the JSON keeps the full names).
OP_ABBREVIATIONS = (("autograd::engine::evaluate_function: ", "bwd: "), ("torch::autograd::", ""))


def _short(text: str) -> str:
    for long, short in OP_ABBREVIATIONS:
        text = text.replace(long, short)
    return text


def _status(row: dict[str, Any]) -> str:
    return {"new": "NEW", "vanished": "GONE"}.get(row["status"], "")


def _kernel_rows(rows: list[dict[str, Any]], top: int) -> list[tuple[str, ...]]:
    out = []
    for r in rows[:top]:
        mean = f"{human_ns(r['base_mean_ns']) if r['base_mean_ns'] is not None else '-'} → " \
               f"{human_ns(r['new_mean_ns']) if r['new_mean_ns'] is not None else '-'}"
        out.append((_short(r["key"]) + (f" [{_status(r)}]" if _status(r) else ""),
                    f"{_count(r['base_count_per_step'])} → {_count(r['new_count_per_step'])}",
                    human_ns(r["base_ns_per_step"]), human_ns(r["new_ns_per_step"]), mean,
                    _signed_ns(r["delta_ns_per_step"]), _pct(r["delta_pct"]),
                    _short(", ".join(r.get("ops") or r.get("new_kernels") or r.get("base_kernels") or []))[:90]))
    return out


def _finding_rows(findings: dict[str, list[dict[str, Any]]], top: int) -> list[tuple[str, ...]]:
    out = []
    for status in ("appeared", "grew", "vanished", "shrank"):
        for f in findings.get(status, [])[:top]:
            base = "-" if f["base_impact_ns"] is None else human_ns(f["base_impact_ns"])
            new = "-" if f["new_impact_ns"] is None else human_ns(f["new_impact_ns"])
            out.append((status, f["rule"], base, new, _signed_ns(f["delta_ns"]), f["title"] or ""))
    return out


def _matching_text(pair: dict[str, Any]) -> str:
    m = pair["matching"]
    return (f"Matched (share of device time per step whose operator+shapes, or kernel key where no "
            f"operator launched it, the other side also has): base {m['base']['matched_pct']:.1f}%, "
            f"new {m['new']['matched_pct']:.1f}%; by kernel key {m['base']['kernel_key_pct']:.1f}% / "
            f"{m['new']['kernel_key_pct']:.1f}%; launched by a framework op {m['base']['with_op_pct']:.1f}% / "
            f"{m['new']['with_op_pct']:.1f}%.")


SECTIONS: tuple[tuple[str, tuple[str, ...], Callable], ...] = (
    ("Step and breakdown", ("metric", "base", "new", "delta", "delta %"), lambda p, top: _summary_rows(p)),
    ("Device time per step by category (summed durations)",
     ("category", "base", "new", "delta", "delta %", "share"), lambda p, top: _category_rows(p)),
    ("Kernels (normalised key), ranked by |delta time per step|",
     ("kernel key", "count/step", "base/step", "new/step", "mean", "delta", "delta %", "launched by"),
     lambda p, top: _kernel_rows(p["kernels"], top)),
    ("Framework ops (outermost cpu op launching the work), ranked by |delta|",
     ("op", "kernels/step", "base/step", "new/step", "mean", "delta", "delta %", "kernel keys"),
     lambda p, top: _kernel_rows(p["ops"], top)),
    ("Findings that appeared, grew, vanished or shrank (impact per step)",
     ("status", "rule", "base", "new", "delta", "finding"), lambda p, top: _finding_rows(p["findings"], top)),
)


def _new_gone_text(pair: dict[str, Any], top: int) -> list[str]:
    lines = []
    for label, rows, field in (("New kernel keys", pair["new_kernels"], "new_ns_per_step"),
                               ("Vanished kernel keys", pair["vanished_kernels"], "base_ns_per_step")):
        shown = ", ".join(f"{r['key']} ({human_ns(r[field])}/step)" for r in rows[:top]) or "none"
        more = f" and {len(rows) - top} more" if len(rows) > top else ""
        lines.append(f"{label}: {shown}{more}.")
    return lines


def print_diff(result: dict[str, Any], top: int = 10, console=None) -> None:
    from rich.table import Table
    from rich.text import Text

    from .render import console as pipe_console

    console = console or pipe_console()
    for line in result.get("warnings") or []:
        console.print(warning_text(line))
    console.print(Text.assemble(("profkit diff", "bold"), f" — {result['pairing']['note']}"))
    for pair in result["pairs"]:
        console.print(f"base: {_side(pair['base'])}")
        console.print(f"new:  {_side(pair['new'])}")
        for title, columns, make in SECTIONS:
            rows = make(pair, top)
            if not rows:
                continue
            table = Table(title=title, title_justify="left")
            for i, column in enumerate(columns):
                table.add_column(column, justify="left" if i == 0 or column in
                                 ("launched by", "kernel keys", "finding", "rule", "status") else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
        for line in _new_gone_text(pair, top):
            console.print(line)
        console.print(_matching_text(pair))


def diff_markdown(result: dict[str, Any], top: int = 10) -> str:
    out = ["# profkit diff", "", *markdown_warnings(result.get("warnings") or [])]
    out += [markdown_text(result["pairing"]["note"]) + ".", ""]
    for pair in result["pairs"]:
        out += [f"- **base**: {markdown_text(_side(pair['base']))}", f"- **new**: {markdown_text(_side(pair['new']))}", ""]
        for title, columns, make in SECTIONS:
            rows = make(pair, top)
            if not rows:
                continue
            out += [f"## {title}", "", "| " + " | ".join(columns) + " |",
                    "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
            out += ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows]
            out.append("")
        out += [*(markdown_text(line) for line in _new_gone_text(pair, top)), "", markdown_text(_matching_text(pair)), ""]
    return "\n".join(out)
