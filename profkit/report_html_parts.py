"""Building blocks of the HTML report: escaping, tables, inline SVG charts, the stylesheet.

Everything here returns strings of HTML. The report must open from disk with no network,
so there is no template engine, no external font, script or image: CSS and SVG are inline.
Every string that can come from a trace goes through `esc` (kernel names hold < > &).
"""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

from .render import human_bytes, human_ns

BAR_WIDTH = 600  # viewBox units of a stacked bar; the bar stretches to the page width

# Named colours for the causes and categories the analyses emit; anything else cycles.
COLOURS = {
    "compute": "#4caf50", "gemm": "#2e7d32", "attention": "#66bb6a", "elementwise": "#9ccc65",
    "reduction": "#c0ca33", "normalization": "#26a69a", "communication": "#ab47bc", "memory": "#29b6f6",
    "host": "#ffb300", "host_bound": "#ffb300", "launch": "#26c6da", "launch_latency": "#26c6da",
    "sync": "#e53935", "dependency": "#8d6e63", "wait": "#8d6e63", "idle": "#9e9e9e", "outside_step": "#bdbdbd",
    "other": "#78909c", "replay error": "#e0e0e0",
}
_CYCLE = ("#5c6bc0", "#ef6c00", "#d81b60", "#00897b", "#6d4c41", "#7cb342", "#3949ab", "#f4511e")


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute; None shows as a dash."""
    return "-" if value is None else html.escape(str(value), quote=True)


def colour(name: str, index: int = 0) -> str:
    return COLOURS.get(name) or COLOURS.get(name.split(".")[0]) or _CYCLE[index % len(_CYCLE)]


def pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}%"


def cell(text: Any, sort: Any = None, cls: str = "", title: str | None = None) -> str:
    """One <td>: `sort` is the raw value the optional sorting script orders by."""
    attrs = f' class="{cls}"' if cls else ""
    if sort is not None:
        attrs += f' data-v="{esc(sort)}"'
    if title:
        attrs += f' title="{esc(title)}"'
    return f"<td{attrs}>{text}</td>"


def num(value: Any, text: str | None = None) -> str:
    """A right-aligned numeric cell that sorts by its raw value."""
    return cell(esc(text if text is not None else value), sort=value if value is not None else "", cls="num")


def ns_cell(ns: Any) -> str:
    if ns is None:
        return cell("-", sort="", cls="num")
    return cell(esc(human_ns(ns)), sort=ns, cls="num", title=f"{ns} ns")


def table(headers: Sequence[str], rows: Iterable[str], cls: str = "sortable", numeric: Iterable[int] = ()) -> str:
    """A table from header labels and pre-rendered rows of cells (each row a string of <td>s)."""
    numeric = set(numeric)
    head = "".join(('<th class="num">' if i in numeric else "<th>") + f"{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _segments(parts: list[tuple[str, float]], width: float) -> list[tuple[str, float, float]]:
    """(label, x, width) per part; positions are rounded cumulatively so widths sum to `width`."""
    total = sum(v for _, v in parts)
    out, cum, x0 = [], 0.0, 0.0
    for label, value in parts:
        cum += value
        x1 = round(width * cum / total, 2)
        out.append((label, x0, round(x1 - x0, 2)))
        x0 = x1
    return out


def stacked_bar(parts: list[tuple[str, float]], label: str, fmt=human_ns) -> str:
    """A horizontal bar whose segments are `parts` (label, value) as shares of their sum,
    with a legend giving each share and its value formatted by `fmt`."""
    parts = [(k, float(v)) for k, v in parts if v and v > 0]
    if not parts:
        return '<p class="muted">nothing to show</p>'
    total = sum(v for _, v in parts)
    rects, legend = [], []
    for i, (name, x, w) in enumerate(_segments(parts, BAR_WIDTH)):
        value = parts[i][1]
        share = f"{100 * value / total:.1f}%"
        fill = colour(name, i)
        hatch = ' class="seg err"' if name == "replay error" else ' class="seg"'
        rects.append(f'<rect{hatch} x="{x:g}" y="0" width="{w:g}" height="18" fill="{fill}">'
                     f"<title>{esc(name)}: {esc(fmt(value))} ({share})</title></rect>")
        legend.append(f'<span class="key"><i style="background:{fill}"></i>{esc(name)} '
                      f'<b>{share}</b> <span class="muted">{esc(fmt(value))}</span></span>')
    return (f'<svg class="bar" data-width="{BAR_WIDTH}" viewBox="0 0 {BAR_WIDTH} 18" preserveAspectRatio="none" '
            f'role="img" aria-label="{esc(label)}">{"".join(rects)}</svg>'
            f'<div class="legend">{"".join(legend)}</div>')


def meter(share_pct: float | None, fill: str) -> str:
    """A single bar filled to `share_pct` of its width (capped at 100)."""
    w = max(0.0, min(100.0, share_pct or 0.0))
    return (f'<svg class="meter" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label="{w:.1f}%">'
            f'<rect x="0" y="0" width="100" height="10" class="track"/>'
            f'<rect x="0" y="0" width="{w:.2f}" height="10" fill="{fill}"/></svg>')


def step_chart(steps: list[dict[str, Any]], steady_first: int | None, p50_ns: int | None) -> str:
    """Step durations as bars (device-busy time drawn inside each); warm-up steps paler.
    Past 150 steps the bars would be sub-pixel, so it becomes a line."""
    steps = [s for s in steps if s.get("dur_ns")]
    if not steps:
        return '<p class="muted">no steps</p>'
    w, h, top = 600, 120, 14
    peak = max(s["dur_ns"] for s in steps)
    scale = (h - top) / peak
    slot = w / len(steps)
    marks = []
    if len(steps) <= 150:
        for i, s in enumerate(steps):
            x, bh = i * slot, s["dur_ns"] * scale
            warm = steady_first is not None and s.get("step") is not None and s["step"] < steady_first
            busy = min(s.get("device_busy_ns") or 0, s["dur_ns"]) * scale
            tip = (f"step {s.get('step')}: {human_ns(s['dur_ns'])}, device busy {human_ns(s.get('device_busy_ns'))}"
                   + (" (warm-up)" if warm else "") + (" (outlier)" if s.get("outlier") else ""))
            cls = "step warm" if warm else ("step outlier" if s.get("outlier") else "step")
            marks.append(f'<g><title>{esc(tip)}</title>'
                         f'<rect class="{cls}" x="{x + slot * 0.1:.2f}" y="{h - bh:.2f}" '
                         f'width="{slot * 0.8:.2f}" height="{bh:.2f}"/>'
                         f'<rect class="busy" x="{x + slot * 0.3:.2f}" y="{h - busy:.2f}" '
                         f'width="{slot * 0.4:.2f}" height="{busy:.2f}"/></g>')
    else:
        points = " ".join(f"{(i + 0.5) * slot:.1f},{h - s['dur_ns'] * scale:.1f}" for i, s in enumerate(steps))
        marks.append(f'<polyline class="steps" points="{points}"/>')
    if p50_ns:
        y = h - p50_ns * scale
        marks.append(f'<line class="p50" x1="0" x2="{w}" y1="{y:.2f}" y2="{y:.2f}"/>'
                     f'<text x="{w - 2}" y="{max(y - 3, 10):.2f}" text-anchor="end">p50 {esc(human_ns(p50_ns))}</text>')
    marks.append(f'<text x="2" y="10">max {esc(human_ns(peak))}</text>')
    first, last = steps[0].get("step"), steps[-1].get("step")
    outliers = any(s.get("outlier") for s in steps)
    return (f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="step time for steps {esc(first)} to {esc(last)}">'
            f'{"".join(marks)}</svg><div class="legend"><span class="key"><i class="k-step"></i>step time</span>'
            f'<span class="key"><i class="k-busy"></i>device busy in step</span>'
            f'<span class="key"><i class="k-warm"></i>warm-up</span>'
            + ('<span class="key"><i class="k-outlier"></i>outlier</span>' if outliers else "")
            + f'<span class="muted">steps {esc(first)} to {esc(last)}</span></div>')


_ABSOLUTE_WORDS = frozenset(("start", "end", "window", "event"))


def evidence_value(key: str, value: Any) -> str:
    """A number with its unit: *_ns as a duration (absolute times stay raw), *_bytes, *_pct."""
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
        return esc(value)
    # Whole words: "gap_start_ns" is a time, "dependency_ns_per_step" a duration.
    absolute = not _ABSOLUTE_WORDS.isdisjoint(key.split("_"))
    if (key.endswith("_ns") or "_ns_" in key) and not absolute:
        return f'<span title="{value} ns">{esc(human_ns(value))}</span>'
    if key.endswith("bytes_per_s"):
        return esc(human_bytes(int(value)) + "/s")
    if key.endswith("_bytes") or key.startswith("bytes"):
        return esc(human_bytes(int(value)))
    if key.endswith("_pct") or key.endswith("_share"):
        return esc(f"{value:.1f}%")
    return esc(f"{value:,.3g}" if isinstance(value, float) else value)


def _unit_key(parent: str, key: str) -> str:
    return key if key.endswith(_UNITS) or "_ns_" in key else parent


_UNITS = ("_ns", "_bytes", "bytes_per_s", "_pct", "_share")


def _compact(key: str, value: Any) -> str:
    if isinstance(value, dict):
        # A sub-key carries its own unit ("gap_ns") or is a label ("7", "cudaMemcpy") that
        # takes the parent's unit ("by_next_stream_ns").
        return ", ".join(f"{esc(k)}: {_compact(_unit_key(key, str(k)), v)}" for k, v in value.items())
    if isinstance(value, list):
        shown = ", ".join(f"{{{_compact(key, v)}}}" if isinstance(v, dict) else _compact(key, v) for v in value[:12])
        return shown + (f" … ({len(value)} in all)" if len(value) > 12 else "")
    return evidence_value(key, value)


def evidence_table(evidence: dict[str, Any], max_rows: int = 5) -> str:
    """Scalars and small dicts as a key/value list; lists of records as a small table."""
    items, records = [], []
    for key, value in evidence.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            records.append((key, value))
        else:
            items.append(f"<tr><th>{esc(key)}</th><td>{_compact(key, value)}</td></tr>")
    out = [f'<table class="kv"><tbody>{"".join(items)}</tbody></table>'] if items else []
    for key, rows in records:
        cols = list(dict.fromkeys(k for r in rows[:max_rows] for k in r))
        body = ("".join("<tr>" + "".join(f"<td>{_compact(c, r.get(c))}</td>" for c in cols) + "</tr>"
                        for r in rows[:max_rows]))
        more = f' <span class="muted">(first {max_rows} of {len(rows)})</span>' if len(rows) > max_rows else ""
        out.append(f'<p class="sub">{esc(key)}{more}</p><table class="records"><thead><tr>'
                   + "".join(f"<th>{esc(c)}</th>" for c in cols) + f"</tr></thead><tbody>{body}</tbody></table>")
    return "".join(out)


CSS = """
:root{--fg:#1d1d1f;--muted:#6b6b70;--bg:#fff;--panel:#f6f7f9;--line:#dcdfe4;--accent:#3949ab}
@media (prefers-color-scheme:dark){:root{--fg:#e6e6e6;--muted:#9a9aa0;--bg:#16171a;--panel:#1f2125;--line:#34373d;--accent:#8c9eff}}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg);margin:0}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:0 0 6px}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12.5px}
pre{background:var(--panel);border:1px solid var(--line);padding:8px 10px;white-space:pre-wrap;word-break:break-word;margin:4px 0}
table{border-collapse:collapse;margin:6px 0 12px;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
td.wrap,h3{overflow-wrap:anywhere}
th{background:var(--panel);font-weight:600;white-space:nowrap}
table.sortable th{cursor:pointer}
td.num,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
table.kv th{width:30%;font-weight:500;background:none;white-space:normal}
table.kv,table.records{font-size:12.5px;width:auto;min-width:50%}
.muted{color:var(--muted)}.sub{margin:8px 0 2px;font-weight:600}
.warning{border-left:4px solid #c77700;background:var(--panel);padding:6px 10px}
.meta{color:var(--muted);margin:0 0 8px}.meta b{color:var(--fg);font-weight:600}
.card{border:1px solid var(--line);border-left:4px solid var(--accent);border-radius:4px;padding:10px 14px;margin:12px 0;background:var(--bg)}
.card .help{color:var(--muted);font-size:13px}
.tag{display:inline-block;border:1px solid var(--line);border-radius:3px;padding:0 5px;font-size:12px;color:var(--muted)}
svg.bar{width:100%;height:18px;display:block;border-radius:2px;overflow:hidden}
svg.meter{width:160px;height:10px}svg.meter .track{fill:var(--panel);stroke:var(--line);stroke-width:.5}
svg.chart{width:100%;max-width:600px;height:auto;display:block;background:var(--panel);border:1px solid var(--line)}
svg.chart .step{fill:#7986cb}svg.chart .warm{fill:#c5cae9}svg.chart .outlier{fill:#e57373}svg.chart .busy{fill:#2e7d32;opacity:.75}
svg.chart .p50{stroke:var(--fg);stroke-dasharray:4 3;stroke-width:.8}svg.chart .steps{fill:none;stroke:#3949ab;stroke-width:1.2}
svg.chart text{font-size:10px;fill:var(--fg)}
rect.err{opacity:.6}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:4px 0 10px;font-size:12.5px}
.key i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:baseline;border-radius:2px}
.key i.k-step{background:#7986cb}.key i.k-outlier{background:#e57373}.key i.k-busy{background:#2e7d32}.key i.k-warm{background:#c5cae9}
.rankbars{display:grid;grid-template-columns:1fr 1fr;gap:8px 28px}
@media (max-width:900px){.rankbars{grid-template-columns:1fr}}
details{border:1px solid var(--line);border-radius:4px;padding:6px 12px;margin:10px 0}
summary{cursor:pointer;font-weight:600;font-size:15px}
a{color:var(--accent)}
@media print{details{break-inside:avoid}.card{break-inside:avoid}}
"""

# Optional: click a header to sort. The report reads the same without it.
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],i=th.cellIndex,up=th.dataset.dir!=='asc';th.dataset.dir=up?'asc':'desc';
function key(r){var c=r.cells[i];if(!c)return '';var v=c.hasAttribute('data-v')?c.getAttribute('data-v'):c.textContent;
var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?n:v.toLowerCase();}
Array.prototype.slice.call(b.rows).sort(function(x,y){var p=key(x),q=key(y);
if(typeof p!==typeof q){p=String(p);q=String(q);}return (p<q?-1:p>q?1:0)*(up?1:-1);}).forEach(function(r){b.appendChild(r);});});});
"""
