"""PyTorch profiler (Kineto) Chrome-trace JSON, plain or gzipped.

Choices (documented here and in kineto_categories.csv):
- kinds come from the category table; a category not in it is never guessed: its events
  are counted as `unknown category X`.
- instants (i/I) are events of duration 0 with the kind of their cat (cpu_instant_event
  `[memory]` samples -> annotation, with the allocator numbers in args; those numbers are
  also two series in `counters`, bytes allocated and reserved per device).
- B/E pairs are matched per (pid, tid) stack into one interval.
- ac2g launch flows are read and not stored: derive.link_launches links launches by
  correlation (an `f` without `s` is normal). Other flows (fwdbwd, ...) become `links`
  between the events that start where the flow's ends are.
- M records fill `threads`; C records fill `counters` (one row per series).
- times are exact: see kineto_read.micros_to_ns.

Speed: the input is memory-mapped (a gzip is first decompressed block by block into a
temporary file), and the ordinary records go from JSON to `events` by a compiled scan
(kineto_scan.py, inputs of 128 MB and more, where numba is there) or inside DuckDB
(kineto_sql.py); only the rest is decoded with msgspec into `Ev` records and handled
record by record (kineto_events.py). A large input's events array is located without
first checking the whole document (kineto_read.Document, check_all=False): its pieces are
checked as they are read, and should the location not hold, the parse starts again with
the whole-document check, which also gives the precise error for a malformed file.
"""
from __future__ import annotations

import gzip
import sys
import zlib
from pathlib import Path

from profkit.classify import runtime_call_names
from profkit.errors import TraceError

from . import kineto_meta, kineto_scan
from .kineto_events import EventBuilder
from .kineto_args import NotUtf8Text
from .kineto_read import (CHUNK_BYTES, GZIP_MAGIC, Document, Input, RangeUnverified, count_cut_short, count_padding,
                          decode_piece, not_utf8, text_bytes_estimate)
from .kineto_sql import SQL_PIECE_BYTES, FastPathFailed, SqlPieces

FORMAT = "kineto"
_HEAD = 1 << 16
_TRACE_HINTS = (b'"traceEvents"', b'"ph"')


def detect(path: Path) -> bool:
    """A file that is gzip or JSON starting with { or [ and mentions traceEvents (or,
    for an array, event phases) near the top. Permissive on purpose: truncated or
    corrupt inputs get a specific error from parse()."""
    try:
        if not path.is_file():
            return False
        with path.open("rb") as fh:
            head = fh.read(_HEAD)
        gzipped = head[:2] == GZIP_MAGIC
        if gzipped:
            try:
                head = _gunzip_head(path)
            except (OSError, EOFError, zlib.error):
                return True  # corrupt gzip: nothing else reads it; parse() says why
        text = head.lstrip(b" \t\r\n\xef\xbb\xbf")
        if not text and gzipped:
            return True  # gzip of nothing: parse() says "empty file"
        if not text[:1] in (b"{", b"["):
            return False
        return any(hint in head for hint in _TRACE_HINTS)
    except (OSError, ValueError):
        return False


def _gunzip_head(path: Path) -> bytes:
    with gzip.open(path, "rb") as fh:
        return fh.read(_HEAD)


def parse(path: Path, sink) -> None:
    # profkit.ingest pauses the garbage collector around every parser (millions of small objects).
    # A failed attempt is rolled back (sink.trace removes the trace) before the next.
    path = Path(path)
    try:
        try:
            try:
                try:
                    _parse(path, sink, fast=True, check_all=False)
                except kineto_scan.ScanDeclined:
                    _parse(path, sink, fast=True, check_all=False, scan=False)
            except RangeUnverified:
                _parse(path, sink, fast=True, check_all=True, scan=False)
        except FastPathFailed:
            _parse(path, sink, fast=False, check_all=True)
    except NotUtf8Text:
        src = Input(path)
        try:
            raise not_utf8(path, src.data) from None
        finally:
            src.close()


def _parse(path: Path, sink, fast: bool, check_all: bool, scan: bool = True) -> None:
    scan = scan and fast
    in_batch = scan and _batch_scanned(sink)
    if scan and (in_batch or _may_be_scanned(path)):
        kineto_scan.preload()
    src = Input(path)
    try:
        try:
            doc = Document(path, src.data, check_all)
        except TraceError:
            if src.gzip_cut:
                raise TraceError(path, "truncated gzip (compressed data ends early)") from None
            raise
        src.release()  # a whole-document check touched every page; pieces are read again
        with sink.trace(path, FORMAT) as w:
            _count_cut(doc, src, w)
            builder = EventBuilder(w)
            total = doc.events_bytes
            # doc.data is the input itself, or the part of an input cut short that is read.
            if scan and (in_batch or kineto_scan.worth_scanning(total)) and kineto_scan.store(
                    doc, doc.data, builder, w, src.release, lambda done: sink.report(str(path), done, total)):
                src.release()
                _finish(path, doc, builder, w)
                return
            sql = SqlPieces(builder) if fast else None

            def decode(piece: bytes):
                return None if sql and sql.add(piece) else decode_piece(piece)

            try:
                # DuckDB pieces are larger: each statement has a fixed cost.
                piece = SQL_PIECE_BYTES if sql else CHUNK_BYTES
                for value, done in doc.chunks(decode, src.release, piece):
                    if value is not None:
                        builder.add_chunk(*value)
                    sink.report(str(path), done, total)
                if sql:
                    sql.flush()
            finally:
                if sql:
                    sql.close()
            _finish(path, doc, builder, w)
    finally:
        doc = None
        src.close()


def _count_cut(doc: Document, src: Input, w) -> None:
    """An input cut short is read up to where it was whole, and says so."""
    count_padding(w, src.padding)
    if doc.cut_short is None:
        return
    count_cut_short(w, *doc.cut_short, src.gzip_cut)


def _may_be_scanned(path: Path) -> bool:
    """Large enough for the compiled scan alone (a gzip by the text size its trailer gives)."""
    return kineto_scan.worth_scanning(_text_bytes(path))


def _batch_scanned(sink) -> bool:
    """Are the Kineto inputs of this ingest together large enough for the compiled scan?
    Then every one is scanned: numba loads once for them all."""
    reaches = getattr(sink, "batch_reaches", None)  # a sink of another making may not weigh
    return reaches is not None and reaches(sys.modules[__name__], _text_bytes, kineto_scan.BATCH_SCAN_MIN_BYTES)


def _text_bytes(path: Path) -> int:
    return text_bytes_estimate(path, 8)


def _finish(path: Path, doc: Document, builder: EventBuilder, w) -> None:
    """Everything after the events array: pending records, trace fields, devices."""
    builder.finish()
    if w.source_records == 0:
        raise TraceError(path, "traceEvents is empty")
    if w.events_written == 0:
        raise TraceError(path, f"no usable events ({_top_issues(w)})")
    vendor = kineto_meta.vendor(doc.top, builder.cats_seen, builder.runtime_prefixes)
    w.set_trace(**kineto_meta.trace_fields(doc.top, vendor))
    _grids_in_blocks(w)
    used = [r[0] for r in w.store.con.execute(
        "SELECT DISTINCT device FROM events WHERE trace_id = ? AND device IS NOT NULL "
        "AND kind IN ('kernel', 'memcpy', 'memset') ORDER BY 1", [w.trace_id]).fetchall()]
    rows, renumber = kineto_meta.match_devices(kineto_meta.device_rows(doc.top, vendor), used, w)
    for node, ordinal in renumber.items():
        w.store.con.execute("UPDATE events SET device = ? WHERE trace_id = ? AND device = ?",
                            [ordinal, w.trace_id, node])
    w.add_rows("devices", rows)
    _memory_counters(w)


# The allocator's samples (`[memory]` instants, `profile_memory=True`) are events (annotations
# with the numbers in args) and also two series in `counters`, so that memory in use can be
# queried and drawn: bytes allocated and reserved after each allocation or free, per device
# (torch's device index, which is the store's ordinal; NULL for the CPU, device type 0).
_MEMORY_SERIES = {"Total Allocated": "[memory].Total Allocated", "Total Reserved": "[memory].Total Reserved"}


def _memory_counters(w) -> None:
    # One parse of each sample's args for its four fields (a list of paths), not four.
    fields = ["Device Type", "Device Id", *_MEMORY_SERIES]
    paths = ", ".join(f"""'$."{f}"'""" for f in fields)
    samples = " UNION ALL ".join(
        f"SELECT '{series}' AS name, pid, device, ts_ns, TRY_CAST(f[{3 + i}] AS DOUBLE) AS value "
        "FROM memory" for i, series in enumerate(_MEMORY_SERIES.values()))
    w.append_query("counters", f"""
        WITH memory AS (
            SELECT pid, ts_ns, f,
                   CASE WHEN TRY_CAST(f[1] AS BIGINT) <> 0 THEN TRY_CAST(f[2] AS INTEGER) END AS device
            FROM (SELECT pid, start_ns AS ts_ns, json_extract_string(args, [{paths}]) AS f
                  FROM events WHERE trace_id = ? AND kind = 'annotation' AND name = '[memory]'))
        SELECT * FROM ({samples}) WHERE value IS NOT NULL AND ts_ns IS NOT NULL""",
                   [w.trace_id], columns=["name", "pid", "device", "ts_ns", "value"])


def _grids_in_blocks(w) -> None:
    """Kineto records a kernel's grid as its launch call took it: in blocks for
    hipLaunchKernel and cudaLaunchKernel, in work-items for hipExtModuleLaunchKernel (role
    `grid_in_work_items`; MI300X Tensile GEMMs: grid 73728 of block 256, 288 workgroups).
    The store counts blocks: those grids are divided, rounding up."""
    names = runtime_call_names(w.store, w.trace_id, "grid_in_work_items")
    if not names:
        return
    w.store.con.execute("""
        UPDATE kernel_info SET grid_x = (grid_x + block_x - 1) // block_x,
                               grid_y = (grid_y + coalesce(nullif(block_y, 0), 1) - 1) // coalesce(nullif(block_y, 0), 1),
                               grid_z = (grid_z + coalesce(nullif(block_z, 0), 1) - 1) // coalesce(nullif(block_z, 0), 1)
        FROM (SELECT k.event_id FROM events k JOIN events r
                ON r.trace_id = k.trace_id AND r.correlation = k.correlation AND r.kind = 'runtime'
              WHERE k.trace_id = ? AND k.kind = 'kernel' AND list_contains(?, r.name)) AS launched
        WHERE kernel_info.event_id = launched.event_id AND kernel_info.block_x > 0
    """, [w.trace_id, names])


def _top_issues(w) -> str:
    reasons = w.issues.most_common(3)
    return "; ".join(f"{count} x {reason}" for reason, count in reasons) or "nothing readable"
