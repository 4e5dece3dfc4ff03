"""The analysis as one self-contained HTML file (for CI artifacts and sharing).

Same content and order as the terminal and Markdown views (summary, critical path,
findings grouped across ranks), plus charts and tables per rank. No network: inline CSS
and SVG only, so it opens from disk or from a CI artifact; it reads fine without
JavaScript (a few inline lines only make tables sortable).
"""
from __future__ import annotations

import os
from typing import Any

from . import __version__
from .findings import (combined_lines, group_across_ranks, input_notes, path_parts, replay_note, trace_notes,
                       unusable_input_notes)
from .render import device_names, human_bytes, human_ns
from .report_html_parts import (CSS, SORT_JS, cell, colour, esc, evidence_table, meter, ns_cell, num, pct,
                                stacked_bar, step_chart, table)
from .report_terminal import scope_text, device_figures
from .rules import describe

NO_ACTIVITY = '<p class="muted">no device activity</p>'
BASIS_MARK = {"bound": "≤ ", "estimate": "~", "measured": "", "replay": ""}


def _trace_arg(traces: list[dict[str, Any]]) -> str:
    """What to pass to `profkit sql`: the one trace, or the directory holding all ranks
    (trace ids in a finding's SQL number the traces of that same store)."""
    paths = [t.get("path") for t in traces if t.get("path")]
    if not paths:
        return "TRACE"
    if len(paths) == 1:
        return paths[0]
    try:
        return os.path.commonpath(paths)
    except ValueError:  # paths on different drives
        return "TRACE"


def _header(traces: list[dict[str, Any]]) -> str:
    formats = sorted({" ".join(str(x) for x in (t.get("format"), t.get("format_version")) if x) for t in traces})
    ranks = [t.get("rank") for t in traces]
    world = sorted({t.get("world_size") for t in traces if t.get("world_size")})
    # Kineto lists every GPU of the node in each rank's trace: say what is listed and
    # how many devices each rank actually used.
    names = sorted({d["name"] for t in traces for d in t.get("devices") or [] if d.get("name")})
    active = sorted({len(((t.get("breakdown") or {}).get("devices") or [])) for t in traces})
    device_text = (", ".join(names) or "unnamed") + (
        f"; {'/'.join(str(n) for n in active)} active per rank" if active else "")
    rows = [
        cell(esc(t.get("rank"))) + cell(esc(t.get("format"))) + cell(esc(t.get("format_version")))
        + cell(esc(t.get("vendor"))) + cell(esc(device_names(t)))
        + cell(f'<span class="mono">{esc(t.get("path"))}</span>')
        for t in traces
    ]
    return (f"<h1>profkit analysis</h1>"
            f'<p class="meta"><b>{len(traces)}</b> trace(s) · format <b>{esc(", ".join(formats) or "-")}</b> · '
            f'ranks <b>{esc(", ".join(str(r) for r in ranks))}</b>'
            + (f" of world size <b>{esc(', '.join(str(w) for w in world))}</b>" if world else "")
            + f" · devices <b>{esc(device_text)}</b></p>"
            + "<details><summary>Traces</summary>"
            + table(["rank", "format", "version", "vendor", "device(s)", "path"], rows, cls="")
            + "</details>")


def _summary(traces: list[dict[str, Any]]) -> str:
    rows = []
    for t in traces:
        f = device_figures(t)
        s = t.get("steps") or {}
        names = device_names(t)
        steps = f"{s.get('count', 0)}" + (f" ({s['source']})" if s.get("source") else "")
        rows.append(num(t.get("rank")) + cell(esc(t.get("format"))) + cell(esc(names))
                    + cell(esc(steps), sort=s.get("count", 0), cls="num")
                    + ns_cell((s.get("duration") or {}).get("p50_ns"))
                    + "".join(num(f.get(k), pct(f.get(k))) for k in
                              ("busy_pct", "idle_pct", "compute_pct", "communication_pct", "memory_pct")))
    return ("<h2>Summary</h2>"
            '<p class="muted">Device time over the span of device activity, all devices of a rank.</p>'
            + table(["rank", "format", "device(s)", "steps", "step time (p50)", "busy", "idle", "compute", "comm",
                     "memory"], rows, numeric=(0, 3, 4, 5, 6, 7, 8, 9)))


def _critical_path(t: dict[str, Any], loaded: int) -> str:
    cp = t.get("critical_path") or {}
    parts = list(path_parts(cp).items())
    if not cp.get("available") or not parts:
        reason = f": {esc(cp['reason'])}" if cp.get("reason") else ""
        return f'<p class="muted">critical path not available{reason}</p>'
    observed, replayed = cp.get("observed_step_ns"), cp.get("replayed_step_ns")
    if observed and replayed and observed != replayed:
        # What the replay does not explain, drawn pale after the composition.
        parts.append(("replay error", abs(observed - replayed)))
    caption = (f"length {human_ns(cp.get('length_ns'))}, observed step {human_ns(observed)}, replayed "
               f"{human_ns(replayed)} (replay error {cp.get('replay_error_pct') or 0:+.1f}%)")
    notes = "".join(f'<p class="muted">{esc(line)}</p>' for line in trace_notes([t], loaded))
    return (f'<p class="sub">Critical path of a step <span class="muted">{esc(caption)}</span></p>'
            + stacked_bar(parts, f"rank {t.get('rank')} critical path composition") + notes)


def _idle(t: dict[str, Any]) -> str:
    idle = t.get("idle") or {}
    by_cause = idle.get("by_cause_pct") or {}
    if idle.get("idle_pct") is None:
        return '<p class="muted">no idle attribution (no device activity)</p>'
    per_step = idle.get("idle_ns_per_step")
    # The trace-level figures are the worst device's (the summary table averages devices).
    devices = idle.get("devices") or []
    worst = max(devices, key=lambda d: d.get("idle_pct") or 0) if devices else {}
    who = (f"device {worst.get('device')}" + (f" (the most idle of {len(devices)})" if len(devices) > 1 else "")
           + " idles") if worst else "idle"
    caption = f"{who} {pct(idle.get('idle_pct'))} of its time"
    if per_step:
        caption += f", {human_ns(per_step)} per step"
    return (f'<p class="sub">Idle time by cause <span class="muted">{esc(caption)}; shares of the idle '
            f"time</span></p>"
            + stacked_bar(list(by_cause.items()), f"rank {t.get('rank')} idle by cause",
                          fmt=lambda v: f"{v:.2f}% of device time"))


def _where_time_goes(traces: list[dict[str, Any]]) -> str:
    blocks = [f'<div><h3>Rank {esc(t.get("rank"))}</h3>{_critical_path(t, len(traces))}{_idle(t)}</div>' for t in traces]
    return ("<h2>Where the time goes</h2>"
            '<p class="muted">The critical path of a steady-state step by what it waits on, and device idle '
            "time by its cause. Hover a segment for its time.</p>"
            f'<div class="rankbars">{"".join(blocks)}</div>')


def _scope(scope: dict[str, Any]) -> str:
    text = scope_text(scope)
    steps = scope.get("steps")
    if isinstance(steps, list) and steps:
        text += f", steps {steps[0]}–{steps[-1]}" if len(steps) > 1 else f", step {steps[0]}"
    return text


def _impact(f: dict[str, Any]) -> str:
    return BASIS_MARK.get(f.get("impact_basis"), "") + human_ns(f["impact_ns"])


def _findings(findings: list[dict[str, Any]], top: int, trace_arg: str, traces: list[dict[str, Any]] = ()) -> str:
    head = (f'<h2>Findings <span class="muted">top {min(top, len(findings))} of {len(findings)}, by time per step '
            "that could be won back</span></h2>")
    if not findings:
        return head + "<p>No findings above the noise floor.</p>"
    rows = [num(i) + cell(esc(_impact(f)), sort=f["impact_ns"], cls="num") + cell(esc(f.get("impact_basis")))
            + num(f.get("share_pct"), pct(f.get("share_pct")))
            + cell(f'<a href="#finding-{i}">{esc(f["title"])}</a>', cls="wrap")
            + cell(esc(_scope(f.get("scope") or {})))
            + cell(f"<code>{esc(f['rule'])}</code>")
            for i, f in enumerate(findings[:top], 1)]
    legend = ('<p class="muted">≤ marks an upper bound, ~ an estimate; <i>replay</i> is predicted by replaying the '
              "dependency graph with the cause removed; <i>measured</i> is the waste itself.</p>")
    cards = "".join(_card(i, f, trace_arg) for i, f in enumerate(findings[:top], 1))
    together = "".join(f"<p><b>{esc(line)}</b></p>" for line in combined_lines(list(traces)))
    return (head + table(["#", "impact / step", "basis", "share", "finding", "scope", "rule"], rows,
                         numeric=(0, 1, 3)) + legend + together + cards)


def _card(i: int, f: dict[str, Any], trace_arg: str) -> str:
    rule = describe(f["rule"])
    help_text = " ".join(x for x in (rule.summary, rule.help) if x and x != f["rule"])
    sql = (f.get("sql") or "").strip()
    return (f'<section class="card" id="finding-{i}"><h3>{i}. {esc(f["title"])}</h3>'
            f'<p class="meta"><code>{esc(f["rule"])}</code> <span class="tag">{esc(rule.name)}</span> · '
            f'impact <b>{esc(_impact(f))}</b> per step ({esc(f.get("impact_basis"))}, {esc(pct(f.get("share_pct")))} '
            f'of a step) · {esc(f.get("count"))} occurrence(s) · {esc(_scope(f.get("scope") or {}))}</p>'
            f'<p><b>Recommendation:</b> {esc(f.get("recommendation"))}</p>'
            + (f'<p><b>Why {esc(_impact(f))}:</b> {esc(replay_note(f))}</p>' if replay_note(f) else "")
            + (f'<p class="help">{esc(help_text)}</p>' if help_text else "")
            + (f'<p class="sub">Evidence</p>{evidence_table(f.get("evidence") or {})}' if f.get("evidence") else "")
            + (f'<p class="sub">Query <span class="muted">run it with <code>profkit sql {esc(trace_arg)} "QUERY"'
               f"</code></span></p><pre>{esc(sql)}</pre>" if sql else "")
            + "</section>")


def _kernel_categories(t: dict[str, Any]) -> str:
    k = t.get("kernels") or {}
    cats = k.get("by_category") or {}
    if not cats:
        return ""
    ordered = sorted(cats.items(), key=lambda kv: -(kv[1].get("union_ns") or 0))
    rows = [cell(esc(name)) + num(c.get("count")) + ns_cell(c.get("union_ns")) + ns_cell(c.get("sum_ns"))
            + num(c.get("union_pct_of_busy"), pct(c.get("union_pct_of_busy")))
            + cell(meter(c.get("union_pct_of_busy"), colour(name, i)))
            for i, (name, c) in enumerate(ordered)]
    return ('<p class="sub">Kernels by category <span class="muted">device busy '
            f"{esc(human_ns(k.get('busy_ns')))}; categories overlap (communication under compute), so shares of busy "
            "time can sum past 100%</span></p>"
            + table(["category", "kernels", "time (union)", "time (sum)", "of busy", ""], rows, numeric=(1, 2, 3, 4)))


def _top_kernels(t: dict[str, Any], limit: int = 20) -> str:
    kernels = (t.get("kernels") or {}).get("top_kernels") or []
    if not kernels:
        return ""
    rows = [cell(esc(k.get("name")), cls="name") + cell(esc(k.get("category"))) + num(k.get("count"))
            + ns_cell(k.get("total_ns")) + ns_cell(k.get("mean_ns")) + ns_cell(k.get("p50_ns"))
            + ns_cell(k.get("p95_ns")) + ns_cell(k.get("max_ns"))
            + num(k.get("share_of_busy_pct"), pct(k.get("share_of_busy_pct")))
            for k in kernels[:limit]]
    return ('<p class="sub">Top kernels by total time</p>'
            + table(["kernel", "category", "calls", "total", "mean", "p50", "p95", "max", "of busy"], rows,
                    numeric=(2, 3, 4, 5, 6, 7, 8)))


def _comm_groups(t: dict[str, Any]) -> str:
    groups = (t.get("communication") or {}).get("groups") or []
    if not groups:
        return ""
    rows = []
    for g in groups:
        bw = g.get("bandwidth") or {}
        pg = str(g.get("process_group") if g.get("process_group") is not None else "-")
        if g.get("process_group_desc"):
            pg += f" ({g['process_group_desc']})"
        busbw = bw.get("large_busbw_p50_bytes_per_s") or bw.get("busbw_p50_bytes_per_s")
        rows.append(cell(esc(g.get("op"))) + cell(esc(pg)) + num(g.get("group_size")) + num(g.get("count"))
                    + ns_cell(g.get("total_ns")) + ns_cell(g.get("p50_ns")) + ns_cell(g.get("exposed_ns"))
                    + num(g.get("exposed_pct"), pct(g.get("exposed_pct"))) + ns_cell(g.get("exposed_ns_per_step"))
                    + num(g.get("bytes_total"), human_bytes(g.get("bytes_total")))
                    + num(busbw, "-" if not busbw else human_bytes(int(busbw)) + "/s")
                    + num(bw.get("large_busbw_pct_of_peak"), pct(bw.get("large_busbw_pct_of_peak"))))
    return ('<p class="sub">Communication by operation and process group</p>'
            + table(["op", "process group", "size", "calls", "total", "p50", "exposed", "exposed %", "exposed / step",
                     "bytes", "bus bw p50", "of link peak"], rows, numeric=tuple(range(2, 12))))


def _step_time(t: dict[str, Any]) -> str:
    s = t.get("steps") or {}
    per_step = s.get("steps") or []
    if not per_step:
        return ""
    return (f'<p class="sub">Step time <span class="muted">{esc(s.get("count"))} steps from '
            f'{esc(s.get("source"))}; steady state from step {esc(s.get("steady_first_step"))}</span></p>'
            + step_chart(per_step, s.get("steady_first_step"), (s.get("duration") or {}).get("p50_ns")))


def _rank_details(traces: list[dict[str, Any]]) -> str:
    out = ["<h2>Per rank</h2>"]
    for i, t in enumerate(traces):
        body = _step_time(t) + _kernel_categories(t) + _top_kernels(t) + _comm_groups(t)
        out.append(f'<details{" open" if i == 0 else ""}><summary>Rank {esc(t.get("rank"))} '
                   f'<span class="muted">{esc(t.get("format"))} · {esc(os.path.basename(str(t.get("path") or "")))}'
                   f"</span></summary>{body or NO_ACTIVITY}</details>")
    return "".join(out)


def analysis_html(result: dict[str, Any], top: int = 10) -> str:
    """The whole report as one HTML document (a string)."""
    traces = result.get("traces") or []
    findings = group_across_ranks(result.get("findings") or [])
    notes = "".join(f'<p class="warning"><b>Warning:</b> {esc(line)}</p>' for line in unusable_input_notes(traces))
    notes += "".join(f'<p class="muted">{esc(line)}</p>' for line in input_notes(result))
    body = (_header(traces) + notes + _summary(traces) + _where_time_goes(traces)
            + _findings(findings, top, _trace_arg(traces), traces) + _rank_details(traces))
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>profkit analysis</title><style>{CSS}</style></head><body><main>{body}"
            f'<p class="muted">Generated by profkit {esc(__version__)} ({esc(result.get("schema"))}). '
            "Every finding of every rank is in <code>profkit analyze --format json</code>.</p>"
            f"</main><script>{SORT_JS}</script></body></html>\n")
