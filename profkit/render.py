"""Turning results into text: JSON, CSV, rich tables. No analysis happens here."""
from __future__ import annotations

import csv
import io
import re
import sys
from typing import Any, Iterable, Sequence

import msgspec


def _default(value: Any) -> Any:
    return str(value)


def to_json(data: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(data, enc_hook=_default), indent=2).decode()


# A terminal table shows at most this many rows (DuckDB's own shell shows 40): a query over
# all events would otherwise draw hundreds of thousands of rows nobody reads. CSV and JSON
# give every row.
TABLE_MAX_ROWS = 100


def rows(names: Sequence[str], values: Iterable[Sequence[Any]], fmt: str, out=None) -> None:
    """Query results as a table (the first TABLE_MAX_ROWS), CSV, or a JSON array of objects
    keyed by column name."""
    out = out or sys.stdout
    values = list(values)
    if fmt == "json":
        out.write(to_json([dict(zip(names, row)) for row in values]) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(values)
        out.write(buf.getvalue())
    else:
        from rich.table import Table

        table = Table(*names, show_lines=False)
        for row in values[:TABLE_MAX_ROWS]:
            table.add_row(*("" if v is None else str(v) for v in row))
        console(file=out).print(table)
        if len(values) > TABLE_MAX_ROWS:
            out.write(f"{len(values):,} rows, the first {TABLE_MAX_ROWS} shown (--format csv or json gives "
                      f"them all; LIMIT, WHERE or GROUP BY narrow them)\n")
        else:
            out.write(f"{len(values)} row(s)\n")


def console(file=None, **options):
    """A rich Console whose output into a closed pipe (`profkit sql ... | head`) ends the
    command the way profkit's own writes do (BrokenPipeError: exit 0, see cli.main); rich's
    default is SystemExit(1).

    Markup is off: every string printed is data (kernel names such as Nsight's
    `...::[lambda(int) (instance 1)]`, Kineto's `[memory]`, paths, SQL results), which
    rich would otherwise read as style tags, dropping text or failing on `[/x]`. Styled
    text is built as `rich.text.Text`."""
    from rich.console import Console

    options.setdefault("markup", False)

    class _PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _PipeConsole(file=file, **options)


# Characters that start Markdown formatting anywhere in a line: emphasis, code, raw HTML,
# links, strikethrough, table cells, escapes; `_` only where it can open or close emphasis
# (intraword underscores, as in aten::native_layer_norm, never do).
_MARKDOWN_SPECIAL = re.compile(r"[\\`*<>\[\]~|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def markdown_warnings(lines: list[str]) -> list[str]:
    """Warnings as Markdown quote blocks, each followed by a blank line."""
    return [part for line in lines for part in (f"> **Warning:** {markdown_text(line)}", "")]


def warning_text(line: str):
    """A warning for a rich console: the reports print them before anything else."""
    from rich.text import Text

    return Text(f"Warning: {line}", style="bold yellow")


def markdown_text(text: Any) -> str:
    """Data (kernel names, paths, titles built from them) as one line of Markdown that
    renders as itself: GitHub would take `FillFunctor<float>` for an HTML tag and drop it,
    and `__omp_offloading_...__` for bold."""
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), str(text).replace("\n", " "))


def human_ns(ns: float | int | None) -> str:
    if ns is None:
        return "-"
    ns = float(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}" if abs(ns) < 100 * scale else f"{ns / scale:.1f} {unit}"
    return f"{ns:.0f} ns"


def per_step_number(value: float) -> str:
    """A count per step: whole when within 0.05 of one ("3"), else one decimal ("2.5")."""
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def per_step_count(value: float, singular: str, plural: str) -> str:
    """"3 host synchronisations", "1 copy", "2.5 copies"."""
    text = per_step_number(value)
    return f"{text} {singular if text == '1' else plural}"


def agreeing(count_text: str, singular: str, plural: str) -> str:
    """The verb agreeing with a per_step_count text: "1 copy uses", "2.5 copies use"."""
    return singular if count_text.split(" ", 1)[0] == "1" else plural


def short_name(name: str, width: int = 80) -> str:
    """A kernel or op name cut to `width` characters for a finding's text."""
    return name if len(name) <= width else name[:width - 3] + "..."


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def info_tables(traces: list[dict[str, Any]], out=None, not_read: list[dict[str, Any]] = ()) -> None:
    from rich.table import Table

    page = console(file=out or sys.stdout)
    if not_read:
        files = Table("file", "reason", title="files under the input not read", title_justify="left")
        for f in not_read:
            files.add_row(f["path"], f["reason"])
        page.print(files)
        page.print()
    for t in traces:
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        head.add_row("trace", f"{t['path']}")
        head.add_row("format", " ".join(str(x) for x in (t["format"], t["format_version"] or "", t["producer"] or "") if x))
        head.add_row("rank", f"{t['rank']} (from {t['rank_source']})" + (f" of {t['world_size']}" if t["world_size"] else ""))
        head.add_row("span", f"{human_ns(t['span_ns'])} ({human_ns(t['device_span_ns'])} with device activity on "
                             f"{t['active_devices']} device(s))")
        head.add_row("steps", f"{t['steps']}" + (f" (from {t['step_source']})" if t["step_source"] else ""))
        head.add_row("events", f"{t['event_count']:,}; {t['issue_count']:,} input records not stored")
        page.print(head)
        kinds = Table("kind", "events", title="events by kind", title_justify="left")
        for kind, n in t["events_by_kind"].items():
            kinds.add_row(kind, f"{n:,}")
        page.print(kinds)
        if t["devices"]:
            devs = Table("device", "vendor", "name", "arch", "SMs/CUs", "memory", title="devices", title_justify="left")
            for d in t["devices"]:
                devs.add_row(str(d["device"]) + (f" (node {d['node_id']})" if d["node_id"] is not None else ""),
                             d["vendor"] or "-", d["name"] or "-", d["arch"] or "-",
                             str(d["sm_count"] or "-"), human_bytes(d["memory_bytes"]))
            page.print(devs)
        if t["ingest_issues"]:
            issues = Table("reason", "records", "why", "example", title="input records not stored", title_justify="left")
            for i in t["ingest_issues"]:
                why = "unusable" if i["unusable"] else ("note" if not i["count"] else "by design")
                issues.add_row(i["reason"], f"{i['count']:,}", why, (i["example"] or "")[:80],
                               style="yellow" if i["unusable"] else None)
            page.print(issues)
        page.print()


def number_ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (sorted, repeats dropped)."""
    values = sorted(set(numbers))
    if not values:
        return "none"
    parts, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur is None or cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    return ", ".join(parts)


def device_names(trace: dict) -> str:
    """A trace's distinct device names for the reports' summary tables; `unnamed` where the
    trace records none (an Nsight export without its GPU info table)."""
    return ", ".join(sorted({d.get("name") or "unnamed" for d in trace.get("devices") or []})) or "-"


# What reports call the devices of a vendor (the devices table's `vendor`), and their compute
# units; any other vendor's (a custom accelerator's), "device" and "compute units". A new
# vendor whose devices are GPUs is a line here.
DEVICE_NOUNS = {"nvidia": "GPU", "amd": "GPU", "intel": "GPU"}
UNIT_NOUNS = {"nvidia": "SMs", "amd": "CUs", "intel": "Xe-cores"}


def device_noun(vendor: str | None, nouns: dict[str, str] = DEVICE_NOUNS, default: str = "device") -> str:
    """What a vendor's devices are called (`nouns`: DEVICE_NOUNS, or UNIT_NOUNS for their units)."""
    return nouns.get(vendor or "", default)


def device_label(device, vendor: str | None) -> str:
    """"GPU 3", "Device 17": a device as titles and timeline tracks name it."""
    noun = device_noun(vendor)
    return f"{noun[0].upper()}{noun[1:]} {device if device is not None else '?'}"
