"""rocprofv3 JSON (`--output-format json`): one object `{"rocprofiler-sdk-tool": [PROCESS, ...]}`
where each PROCESS holds `metadata` (pid, node), `agents`, `kernel_symbols` (names by
`kernel_id`), `strings` (names of record kinds and operations, roctx messages) and
`buffer_records` (`kernel_dispatch`, `hip_api`, `memory_copy`, `marker_api`, `rccl_api`, ...).

The document is split by msgspec (each `buffer_records` list stays raw bytes; in a large
input the lists are located by a byte search and only the rest is decoded; a plain file
is mapped, not read). The lists become typed Arrow columns with no Python object per
record (1M dispatches as structs and lists cost ~3 s): in a large input by a compiled
scan of the bytes where they are (`json_scan`, in parts side by side), otherwise, and
for any list the scan declines, by DuckDB's JSON reader from a temporary copy of each
list, two at a time in worker threads while the main thread stores the ones read. A
document cut short is read up to its last whole record, the loss counted (`_cut_short`).
Device records name their agent by handle; agents map handles to HSA node ids and GPU
ordinals. A HIP call and the dispatch it enqueued share `correlation_id.internal`;
`correlation_id.external` (a framework id, usually 0) goes to `external_id` where
non-zero. Timestamps are integer nanoseconds.
"""
from __future__ import annotations

import gzip
import io
import mmap
import re
import sys
import tempfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from profkit.errors import TraceError
from profkit.store import relation_table

from . import json_scan, rocm_common as rc
from .kineto_read import (GZIP_MAGIC, count_cut_short, count_padding, gunzip, mapped_without_padding,
                          raw_offset, text_bytes_estimate, without_padding)

FORMAT = "rocprofv3_json"
TOOL_KEY = b'"rocprofiler-sdk-tool"'


class Symbol(msgspec.Struct, kw_only=True):
    kernel_id: int
    kernel_name: str = ""
    formatted_kernel_name: str = ""
    demangled_kernel_name: str = ""
    sgpr_count: int | None = None
    arch_vgpr_count: int | None = None
    accum_vgpr_count: int | None = None


class KindNames(msgspec.Struct):
    kind: str = ""
    operations: list[str] = []


class Strings(msgspec.Struct, frozen=True):
    buffer_records: list[KindNames] = []
    marker_api: Any = None


class Process(msgspec.Struct):
    metadata: dict = {}
    agents: list[dict] = []
    kernel_symbols: list[Symbol] = []
    strings: Strings = Strings()
    buffer_records: dict[str, msgspec.Raw] = {}


class Document(msgspec.Struct):
    processes: list[Process] = msgspec.field(name="rocprofiler-sdk-tool", default_factory=list)


API_LISTS = ("hip_api", "hsa_api", "marker_api", "rccl_api", "rocdecode_api", "rocjpeg_api", "ompt")


def _head(path: Path, n: int = 4096) -> bytes:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    opener = gzip.open if magic == GZIP_MAGIC else open
    with opener(path, "rb") as fh:
        return fh.read(n)


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return TOOL_KEY in _head(path)
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


class _Document:
    """The input's bytes: a gzip input decompressed, a plain one mapped (no copy of a
    file that can be gigabytes; its lists are written out from the page cache).
    `release` drops them, as soon as the lists are staged."""

    def __init__(self, path: Path):
        self.data: bytes | mmap.mmap | None = None
        self.gzip_cut = False  # a gzip stream that ends early: what it holds is read
        self.padding = 0  # NUL bytes the text ends in, left out (see kineto_read.Input)
        try:
            with open(path, "rb") as fh:
                if fh.read(2) == GZIP_MAGIC:
                    fh.seek(0)
                    self.data, self.padding = without_padding(self._gunzipped(path, fh.read()))
                    return
                try:
                    self.data, self.padding = mapped_without_padding(fh.fileno())
                except ValueError:  # an empty file cannot be mapped
                    self.data = b""
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise TraceError(path, f"cannot read: {exc}") from None

    def _gunzipped(self, path: Path, packed: bytes) -> bytes:
        try:
            return gzip.decompress(packed)
        except EOFError:
            # Cut short (a copy or a write interrupted): what the stream holds; the JSON
            # it ends in is then read up to its last whole record (`_cut_short`).
            out = io.BytesIO()
            gunzip(path, out)
            if not out.tell():
                raise TraceError(path, "truncated gzip (compressed data ends early)") from None
            self.gzip_cut = True
            return out.getvalue()

    def release(self) -> None:
        data, self.data = self.data, None
        if isinstance(data, mmap.mmap):
            try:
                data.close()
            except BufferError:
                pass  # a view is still alive; the map goes with it


def parse(path: Path, sink) -> None:
    # Two workers: DuckDB reads a JSON array on one thread, so lists (and parts of large
    # lists) are read side by side, each part as soon as it is written, while the main
    # thread stores what is read; the compiled scan reads parts side by side too.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="profkit-rocprofv3") as pool:
        in_batch = _batch_scanned(sink)
        if in_batch or _may_be_scanned(path):
            # numba and the compiled loop load (~0.3 s) while the input is read: a
            # gzip input takes seconds to decompress, with the GIL released.
            pool.submit(json_scan.available)
        document = _Document(path)
        try:
            _parse_document(path, document, sink, pool, in_batch)
        finally:
            document.release()


def _may_be_scanned(path: Path) -> bool:
    """Could the input hold SCAN_MIN_BYTES of lists? (A gzip input by the text size its
    trailer gives, at least its compressed size x 16: rocprofv3 JSON compresses ~11x.)"""
    return _text_bytes(path) >= SCAN_MIN_BYTES


def _batch_scanned(sink) -> bool:
    """Are the rocprofv3 JSON inputs of this ingest together large enough for the compiled
    scan (numba loads once for them all)? Then each is scanned, whatever its size."""
    reaches = getattr(sink, "batch_reaches", None)  # a sink of another making may not weigh
    return reaches is not None and reaches(sys.modules[__name__], _text_bytes, BATCH_SCAN_MIN_BYTES)


def _text_bytes(path: Path) -> int:
    return text_bytes_estimate(path, 16)


def _parse_document(path: Path, document: _Document, sink, pool: ThreadPoolExecutor, in_batch: bool) -> None:
    doc, cut = _decoded(path, document.data)
    if not doc.processes:
        raise TraceError(path, "rocprofv3 JSON holds no process (`rocprofiler-sdk-tool` is empty)")
    sink.report(str(path), len(document.data), len(document.data))
    with tempfile.TemporaryDirectory(prefix="profkit-rocprofv3-") as tmp:
        try:
            # The raw lists are views of the document: once they are read (a large input's
            # by the compiled scan) or in files for DuckDB, it (as big as the input) is released.
            scanned = _scanned(doc.processes, pool) if _worth_scanning(doc.processes, in_batch) else {}
            staged = [_stage(path, proc, Path(tmp) / str(i), pool, scanned.get(i, {}))
                      for i, proc in enumerate(doc.processes)]
            del scanned  # the staged lists hold the reads now, each dropped once stored
            document.release()
            for i, (proc, lists) in enumerate(zip(doc.processes, staged)):
                trace_path = str(path) if len(doc.processes) == 1 else f"{path}#{i}"
                with sink.trace(trace_path, FORMAT, stat_path=path) as w:
                    if i == len(doc.processes) - 1:  # the process the text ends in
                        count_padding(w, document.padding)
                        if cut is not None:
                            count_cut_short(w, cut.size, cut.lost, cut.records_lost, document.gzip_cut, inside=cut.inside)
                    try:
                        _parse_process(path, proc, lists, w)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                        raise TraceError(path, f"unusable record: {str(exc).splitlines()[0]}") from None
        except BaseException:
            pool.shutdown(cancel_futures=True)  # reads not started are of no use now
            raise


def _decoded(path: Path, data) -> tuple[Document, _Cut | None]:
    """The document (its lists raw), and where it was cut short if it was."""
    doc = _located(data) if len(data) >= LOCATE_MIN_BYTES else None
    if doc is not None:
        return doc, None
    try:
        return msgspec.json.decode(data, type=Document), None
    except msgspec.DecodeError as exc:
        if "truncated" not in str(exc):
            raise TraceError(path, f"not a readable rocprofv3 JSON file: {exc}") from None
        found = _cut_short(data)
        if found is None:
            raise TraceError(path, f"truncated JSON (input ends after {len(data):,} bytes, "
                                   "before the records of its last process)") from None
    doc, cut = found
    if not any(len(raw) > 2 for proc in doc.processes for raw in proc.buffer_records.values()):
        raise TraceError(path, f"truncated JSON (input ends after {len(data):,} bytes, before its first whole record)")
    return doc, cut


@dataclass
class _Cut:
    """Where a document cut short was closed: bytes lost of `size`, whether records were
    among them, and the list (`inside`) the cut was in or after."""
    size: int
    lost: int
    records_lost: bool
    inside: str


_CLOSE_LIST = b"]}}]}"  # a list, its buffer_records, the process, the process list, the document


def _cut_short(data) -> tuple[Document, _Cut] | None:
    """A document cut short (a crash or a full disk while rocprofv3 wrote it, a copy
    interrupted) closed where it was last whole, and the cut. rocprofv3 writes
    `buffer_records` last in each process, and its records hold no list: the cut list is
    the one whose `]` is missing. None where nothing decodes (a cut before the last
    process's records)."""
    found = None
    for found in _BUFFER_RECORDS.finditer(data):
        pass  # the last process's lists: the ones cut
    if found is None:
        return None
    at = found.end()
    while (key := _LIST_START.match(data, at)) is not None:
        start = key.end() - 1
        end = data.find(b"]", start)
        if end < 0:
            return _closed_inside_list(data, start, f"buffer_records.{key.group(1).decode('utf-8', 'replace')}")
        at = end + 1
    # Every list begun is whole: the cut is after the last, where a key may have begun.
    closed = _closed(data, at, _CLOSE_LIST[1:])
    if closed is None:
        return None
    lost = bytes(data[at:])
    return closed, _Cut(len(data), len(lost), lost.strip(b" \t\r\n}]") != b"", "buffer_records")


def _closed_inside_list(data, start: int, inside: str) -> tuple[Document, _Cut] | None:
    """The document closed after the last whole record of the list starting at `start`
    that the cut is in: the first of these that decodes: at the input's end (its last
    record whole), at the last `},{` (records are compact and hold no string with one),
    at the list's `[` (no whole record)."""
    tail = len(data)
    while tail > start and data[tail - 1:tail] in (b" ", b"\t", b"\r", b"\n", b","):
        tail -= 1
    candidates = [tail] if data[tail - 1:tail] == b"}" else []
    candidates += [data.rfind(b"},{", start) + 1, start + 1]
    for end in candidates:
        if end > start:
            closed = _closed(data, end, _CLOSE_LIST)
            if closed is not None:
                return closed, _Cut(len(data), len(data) - end, True, inside)
    return None


def _closed(data, end: int, closing: bytes) -> Document | None:
    """data[:end] + closing decoded, or None where that is not a document."""
    with memoryview(data) as view:
        closed = b"".join((view[:end], closing))
    doc = _located(closed) if len(closed) >= LOCATE_MIN_BYTES else None
    if doc is not None:
        return doc
    try:
        return msgspec.json.decode(closed, type=Document)
    except msgspec.DecodeError:
        return None


# From this size on, the buffer_records lists are located by a byte search instead of
# having msgspec walk the whole document (0.92 s of a 7 s ingest for 1M dispatches, on one
# thread before any reader starts; the search and the check below take ~0.06 s).
LOCATE_MIN_BYTES = 32 << 20
_BUFFER_RECORDS = re.compile(rb'"buffer_records"\s*:\s*\{')
_LIST_START = re.compile(rb'\s*,?\s*"([^"\\]+)"\s*:\s*\[')


def _located(data) -> Document | None:
    """The document with its buffer_records lists taken as views of `data`, found without
    parsing them: each `"NAME": [` in a buffer_records object up to the first `]` (records
    hold no arrays). Checked: the document with those ranges emptied to `[]` must decode,
    with each emptied list exactly where it was cut out, so every range is the list under
    its key. The lists themselves are checked as they are read (DuckDB reads every byte).
    None when anything does not fit: the caller then decodes the whole document."""
    ranges = []  # (start, end) of each list, `[` to `]` inclusive
    with memoryview(data) as view:
        at = 0
        while (found := _BUFFER_RECORDS.search(data, at)) is not None:
            at = found.end()
            while (key := _LIST_START.match(data, at)) is not None:
                start = key.end() - 1
                end = data.find(b"]", start) + 1
                if end == 0:
                    return None
                ranges.append((start, end))
                at = end
        if not ranges:
            return None
        pieces, emptied_at, cut, length = [], [], 0, 0  # emptied_at: each `[]` in the emptied document
        for start, end in ranges:
            pieces += [view[cut:start], b"[]"]
            length += start - cut
            emptied_at.append(length)
            length += 2
            cut = end
        pieces.append(view[cut:])
        emptied = b"".join(pieces)
        del pieces
    try:
        doc = msgspec.json.decode(emptied, type=Document)
    except msgspec.DecodeError:
        return None
    where = {at: r for at, r in zip(emptied_at, ranges)}
    for proc in doc.processes:
        for name, raw in proc.buffer_records.items():
            r = where.pop(raw_offset(raw, emptied), None) if bytes(raw) == b"[]" else None
            if r is not None:
                proc.buffer_records[name] = memoryview(data)[r[0]:r[1]]
    return doc if not where else None


@dataclass
class _Staged:
    """A process's buffer_records once out of the document: for each list to be read,
    its record kind, part files and their reads; the record count of each list that is
    not stored."""
    files: dict[str, tuple[str, list[Path], list[Future]]]
    unstored: dict[str, int]


def _list_kind(name: str) -> str | None:
    if name == "kernel_dispatch":
        return "Dispatch"
    if name == "memory_copy":
        return "Copy"
    return "ApiCall" if name in API_LISTS else None


# From this many bytes of lists in a document on, they are read by the compiled scan
# (json_scan): below it, loading numba and the compiled loop (~0.3 s) costs more than
# the scan saves (docs/performance.md, fifteenth session).
# Once loaded, the scan reads lists in ~0.6x DuckDB's time (10k dispatches: 0.08 against
# 0.13 s), so the inputs of one ingest are weighed together, as Kineto's are.
SCAN_MIN_BYTES = 128 << 20
BATCH_SCAN_MIN_BYTES = 32 << 20


def _worth_scanning(processes: list[Process], in_batch: bool = False) -> bool:
    size = sum(len(raw) for proc in processes for name, raw in proc.buffer_records.items()
               if _list_kind(name) is not None)
    return (in_batch or size >= SCAN_MIN_BYTES) and json_scan.available()


def _scanned(processes: list[Process], pool: ThreadPoolExecutor) -> dict[int, dict[str, list[Future]]]:
    """The lists the compiled scan takes, each read by it in parts side by side into one
    set of columns (waited for, so that the document can be released): {process index:
    {list name: [its read, done]}}. A list it does not take is left out, to be read by
    DuckDB."""
    reads = {}
    for i, proc in enumerate(processes):
        for name, raw in proc.buffer_records.items():
            kind = _list_kind(name)
            if kind is not None:
                parts = json_scan.Parts(raw, _part_spans(raw), _SCANNED[kind], _OBJECTS[kind])
                reads[(i, name)] = kind, parts, [pool.submit(parts.read, k) for k in range(len(parts.spans))]
    out: dict[int, dict[str, list[Future]]] = {}
    for (i, name), (kind, parts, futures) in reads.items():
        for future in futures:
            future.result()
        table = _scanned_table(parts.result(), kind)
        if table is not None:
            done: Future = Future()
            done.set_result(table)
            out.setdefault(i, {})[name] = [done]
    return out


def _scan(raw, start: int, end: int, kind: str) -> pa.Table | None:
    """A part of a list as `_read_json` reads it, or None where the scan does not take it."""
    return _scanned_table(json_scan.read(raw, start, end, _SCANNED[kind], _OBJECTS[kind]), kind)


def _scanned_table(found: json_scan.Scanned | None, kind: str) -> pa.Table | None:
    """The scan's columns as `_read_json` gives them (no copy), or None for a list declined."""
    if found is None:
        return None
    columns = {f: pa.array(found.values[i], mask=~found.has(i)) if f == "bytes" else pa.array(found.values[i])
               for i, f in enumerate(FIELDS[kind])}
    order = _SCANNED[kind] + _OBJECTS[kind]
    required = sum(1 << order.index(f) for f in REQUIRED[kind])
    columns["_missing"] = pa.array(found.present & required != required)
    return pa.table(columns)


def _stage(path: Path, proc: Process, folder: Path, pool: ThreadPoolExecutor,
           scanned: dict[str, list[Future]]) -> _Staged:
    folder.mkdir()
    files, unstored = {}, {}
    for name, raw in proc.buffer_records.items():
        kind = _list_kind(name)
        if name in scanned:
            files[name] = (kind, [], scanned[name])
            continue
        if kind is None:
            try:
                unstored[name] = len(msgspec.json.decode(raw, type=list[msgspec.Raw]))
            except msgspec.DecodeError as exc:
                raise TraceError(path, f"unusable record: {str(exc).splitlines()[0]}") from None
            continue
        parts, reads = [], []
        for part in _write_parts(memoryview(raw), folder / str(len(files))):
            parts.append(part)
            reads.append(pool.submit(_read_json, part, kind))
        files[name] = (kind, parts, reads)
    proc.buffer_records = {}
    return _Staged(files, unstored)


_PART_BYTES = 64 << 20   # a larger list is cut into parts of about this size
_RECORD_SEPARATOR = re.compile(rb"\},\{")


def _cuts(raw) -> list[tuple[int, int]]:
    """Where a raw JSON list is cut into parts of about _PART_BYTES, so that the parts can
    be read in parallel: (end of a part, start of the next) at the next `},{` after each
    _PART_BYTES (rocprofv3 writes compact JSON). Where that is not between two records
    (inside a string or a nested list) a part is not valid JSON: its reader says so, and
    the list is then read as written."""
    cuts = []
    at = _PART_BYTES
    while at < len(raw) - _PART_BYTES // 4:  # no small last part
        match = _RECORD_SEPARATOR.search(raw, at)
        if match is None:
            break
        cuts.append((match.start() + 1, match.end() - 1))
        at = match.end() + _PART_BYTES
    return cuts


def _part_spans(raw) -> list[tuple[int, int]]:
    """The parts of a raw list `[...]` as (start, end) of their records, brackets left out."""
    cuts = _cuts(raw)
    return list(zip([1] + [following for _end, following in cuts], [end for end, _following in cuts] + [len(raw) - 1]))


def _write_parts(raw: memoryview, stem: Path) -> Iterator[Path]:
    """A raw JSON list as JSON array files (see `_cuts`), yielded as each is written. Where
    a part is not valid JSON, `_columns` reads the parts joined back into the list."""
    cuts = _cuts(raw)
    start = 0
    for i, (end, following) in enumerate(cuts + [(len(raw), None)]):
        part = stem.with_name(f"{stem.name}.{i}.json")
        with open(part, "wb") as fh:
            fh.write(b"[" if start else b"")
            fh.write(raw[start:end])
            fh.write(b"]" if following is not None else b"")
        yield part
        start = following


def _joined(parts: list[Path]) -> Path:
    """The list as written, from its parts (their added brackets dropped, the commas put back)."""
    if len(parts) == 1:
        return parts[0]
    whole = parts[0].with_name(parts[0].name.split(".")[0] + ".whole.json")
    with open(whole, "wb") as fh:
        for i, part in enumerate(parts):
            data = part.read_bytes()
            fh.write(data[(1 if i else 0):(-1 if i < len(parts) - 1 else None)])
            fh.write(b"," if i < len(parts) - 1 else b"")
    return whole


def _parse_process(path: Path, proc: Process, lists: _Staged, w) -> None:
    meta = proc.metadata
    pid = meta.get("pid")
    agents = rc.Agents(rc.agent_from_sdk(a, key=(a.get("id") or {}).get("handle")) for a in proc.agents)
    w.add_rows("devices", agents.device_rows())
    w.read(len(proc.agents))
    kinds = [(k.kind, k.operations) for k in proc.strings.buffer_records]
    # Stored in this order (event ids follow it): dispatches, copies, calls.
    next_id = 0
    if "kernel_dispatch" in lists.files:
        next_id += _dispatches(_take(path, lists, "kernel_dispatch"), proc, agents, pid, w, next_id)
    if "memory_copy" in lists.files:
        next_id += _copies(_take(path, lists, "memory_copy"), kinds, agents, pid, w, next_id)
    markers = _marker_messages(proc.strings.marker_api)
    for name in API_LISTS:
        if name in lists.files:
            next_id += _api(_take(path, lists, name), kinds, markers, pid, w, next_id)
    for name, count in lists.unstored.items():
        w.read(count)
        w.not_stored(f"{name} records not stored", count, name)
    node = meta.get("node") or {}
    w.set_trace(
        format_version=str(meta.get("version") or ""), producer="rocprofv3 (rocprofiler-sdk-tool)",
        vendor=rc.VENDOR, hostname=node.get("hostname"),
        metadata={"pid": pid, "command": meta.get("command"), "init_time": meta.get("init_time"),
                  "fini_time": meta.get("fini_time"), "cpu_agents": agents.cpu_summary(),
                  "kernel_symbols": len(proc.kernel_symbols)},
    )


def _take(path: Path, lists: _Staged, name: str) -> dict[str, pa.Array]:
    """A list's columns, dropping its reads so they are freed once stored."""
    kind, parts, reads = lists.files.pop(name)
    return _columns(path, name, parts, kind, reads)


_H = "STRUCT(handle BIGINT)"
_D3 = "STRUCT(x BIGINT, y BIGINT, z BIGINT)"
_COMMON = {"kind": "BIGINT", "operation": "BIGINT", "thread_id": "BIGINT",
           "correlation_id": "STRUCT(internal BIGINT, external BIGINT)",
           "start_timestamp": "BIGINT", "end_timestamp": "BIGINT"}
# JSON types of the fields read, per record kind (other fields are not read). A missing
# field reads as 0 (as rocprofiler-sdk leaves it), except `bytes` (unknown).
RECORD_TYPES = {
    "Dispatch": {**_COMMON, "stream_id": _H, "dispatch_info": (
        f"STRUCT(agent_id {_H}, queue_id {_H}, kernel_id BIGINT, dispatch_id BIGINT, "
        f"private_segment_size BIGINT, group_segment_size BIGINT, workgroup_size {_D3}, grid_size {_D3})")},
    "ApiCall": dict(_COMMON),
    "Copy": {**_COMMON, "dst_agent_id": _H, "src_agent_id": _H, "bytes": "BIGINT", "stream_id": _H},
}
# Fields a record must have.
REQUIRED = {
    "Dispatch": ("start_timestamp", "end_timestamp", "dispatch_info", "dispatch_info.agent_id",
                 "dispatch_info.kernel_id"),
    "ApiCall": ("start_timestamp", "end_timestamp"),
    "Copy": ("start_timestamp", "end_timestamp"),
}

DISPATCH_FIELDS = (
    "start_timestamp", "end_timestamp", "thread_id", "correlation_id.internal", "correlation_id.external",
    "dispatch_info.agent_id.handle", "dispatch_info.queue_id.handle", "dispatch_info.kernel_id",
    "dispatch_info.dispatch_id", "dispatch_info.private_segment_size", "dispatch_info.group_segment_size",
    "dispatch_info.workgroup_size.x", "dispatch_info.workgroup_size.y", "dispatch_info.workgroup_size.z",
    "dispatch_info.grid_size.x", "dispatch_info.grid_size.y", "dispatch_info.grid_size.z", "stream_id.handle",
)
API_FIELDS = ("start_timestamp", "end_timestamp", "thread_id", "correlation_id.internal",
              "correlation_id.external", "kind", "operation")
COPY_FIELDS = ("start_timestamp", "end_timestamp", "thread_id", "correlation_id.internal",
               "correlation_id.external", "kind", "operation", "dst_agent_id.handle",
               "src_agent_id.handle", "stream_id.handle")
# Fields read, per record kind.
FIELDS = {"Dispatch": DISPATCH_FIELDS, "ApiCall": API_FIELDS, "Copy": COPY_FIELDS + ("bytes",)}
# What the compiled scan reads per record kind: the fields read, then the other typed
# integers (it declines a record where one is not an integer, as DuckDB does), then the
# objects around them (it declines anything else there, as DuckDB where it reads a struct).
_SCANNED = {kind: fields + tuple(k for k, t in _COMMON.items() if t == "BIGINT" and k not in fields)
            for kind, fields in FIELDS.items()}
_OBJECTS = {kind: tuple(sorted({f.rsplit(".", k)[0] for f in fields for k in range(1, f.count(".") + 1)}))
            for kind, fields in FIELDS.items()}


def _columns(path: Path, name: str, parts: list[Path], kind: str, reads: list[Future]) -> dict[str, pa.Array]:
    """One Arrow array per (dotted) field of the records of the staged list `name`, from the
    reads of its parts. A record without a required field is an unusable input, as with
    a typed decoder."""
    try:
        table = pa.concat_tables([read.result() for read in reads])
    except duckdb.Error:
        # A bad list, or a cut that was not between records: the list as written says which.
        try:
            table = _read_json(_joined(parts), kind)
        except duckdb.Error as exc:
            raise TraceError(path, f"unreadable {name} records: {_duckdb_json_error(exc)}") from None
    if pc.any(table.column("_missing")).as_py():
        bad = pc.index(table.column("_missing"), True).as_py()
        raise TraceError(path, f"unusable {name} record: record {bad} lacks one of {', '.join(REQUIRED[kind])}")
    # A list the scan read is one chunk: taken as it is (combine_chunks copies even one).
    return {f: column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            for f, column in ((f, table.column(f)) for f in FIELDS[kind])}


def _duckdb_json_error(exc: duckdb.Error) -> str:
    """DuckDB's message for a list it could not read, without its error class and the
    name of the staged file (a temporary file the user never saw)."""
    text = str(exc).splitlines()[0]
    text = re.sub(r'^[A-Za-z ]+Error: ', "", text)
    return re.sub(r' in file "[^"]*",', "", text)


def _read_json(file: Path, kind: str) -> pa.Table:
    """The fields of `kind` records of a JSON array file, read by DuckDB (in a worker
    thread: its own connection, one thread, as a JSON array is read by one anyway)."""
    spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in RECORD_TYPES[kind].items()) + "}"
    select = ", ".join(f'{_default(f)} AS "{f}"' for f in FIELDS[kind])
    missing = " OR ".join(f"{f} IS NULL" for f in REQUIRED[kind])
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        return relation_table(con.sql(f"""
            SELECT {select}, ({missing}) AS _missing
            FROM read_json('{file}', format = 'array', columns = {spec},
                           maximum_object_size = 16777216)"""))
    finally:
        con.close()


def _default(field: str) -> str:
    """A field as SQL, with the typed structs' default (0) where it is missing."""
    return field if field == "bytes" else f"coalesce({field}, 0)"


def _symbol_arrays(symbols: list[Symbol]) -> dict[str, Any]:
    ids = pa.array([s.kernel_id for s in symbols], pa.int64())
    return {
        "ids": ids,
        "name": pa.array([rc.kernel_display_name(s.formatted_kernel_name or s.demangled_kernel_name
                                                 or s.kernel_name) for s in symbols], pa.string()),
        "vgpr": pa.array([s.arch_vgpr_count for s in symbols], pa.int64()),
        "accum_vgpr": pa.array([s.accum_vgpr_count for s in symbols], pa.int64()),
        "sgpr": pa.array([s.sgpr_count for s in symbols], pa.int64()),
    }


def _nonzero(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(arr, 0), pa.scalar(None, pa.int64()), arr)


def _dispatches(c: dict[str, pa.Array], proc: Process, agents: rc.Agents, pid, w, next_id: int) -> int:
    n = len(c["start_timestamp"])
    w.read(n)
    sym = _symbol_arrays(proc.kernel_symbols)
    idx = pc.index_in(c["dispatch_info.kernel_id"], value_set=sym["ids"])
    unknown = pc.sum(pc.is_null(idx)).as_py() or 0
    if unknown:
        # Still stored (times are good); the name is unknown.
        names = pc.coalesce(pc.take(sym["name"], idx), pc.binary_join_element_wise(
            "kernel_id ", pc.cast(c["dispatch_info.kernel_id"], pa.string()), ""))
    else:
        # The symbols' names as the dictionary, each dispatch's symbol as its code: no
        # string copied per dispatch here, nor in DuckDB (1M dispatches: ~0.1 s).
        names = pa.DictionaryArray.from_arrays(idx, sym["name"])
    handles = c["dispatch_info.agent_id.handle"]
    device = rc.map_codes(handles, agents.ordinal_by_key)
    args = rc.json_args({
        "kernel_id": c["dispatch_info.kernel_id"], "dispatch_id": c["dispatch_info.dispatch_id"],
        "agent_node": rc.map_codes(handles, agents.node_by_key), "queue_id": c["dispatch_info.queue_id.handle"],
        "stream_id": c["stream_id.handle"], "thread_id": c["thread_id"],
        "grid_size_x": c["dispatch_info.grid_size.x"], "grid_size_y": c["dispatch_info.grid_size.y"],
        "grid_size_z": c["dispatch_info.grid_size.z"],
        "scratch_size": c["dispatch_info.private_segment_size"],
        "accum_vgpr_count": pc.take(sym["accum_vgpr"], idx), "sgpr_count": pc.take(sym["sgpr"], idx),
    }, n)
    # The HIP stream where the tool recorded one, else the HSA queue.
    stream = c["stream_id.handle"] if pc.max(c["stream_id.handle"]).as_py() else c["dispatch_info.queue_id.handle"]
    written, keep = rc.write_events(w, next_id, "kernel", {
        "name": names, "start_ns": c["start_timestamp"], "end_ns": c["end_timestamp"],
        "device": device, "stream": stream, "correlation": c["correlation_id.internal"],
        "external_id": _nonzero(c["correlation_id.external"]), "pid": pid,
        "source_cat": "kernel_dispatch", "args": args,
    }, "kernel dispatch")
    rc.write_kernel_info(w, next_id, {
        "grid_items_x": c["dispatch_info.grid_size.x"], "grid_items_y": c["dispatch_info.grid_size.y"],
        "grid_items_z": c["dispatch_info.grid_size.z"], "workgroup_x": c["dispatch_info.workgroup_size.x"],
        "workgroup_y": c["dispatch_info.workgroup_size.y"], "workgroup_z": c["dispatch_info.workgroup_size.z"],
        "vgpr": pc.take(sym["vgpr"], idx), "lds": c["dispatch_info.group_segment_size"],
    }, keep, n)
    return written


def _op_names(kinds, kind_arr: pa.Array, op_arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(kind name, operation name) per record, from the `strings.buffer_records` table,
    dictionary-encoded: each record's (kind, operation) pair is coded as one integer, and
    each distinct pair named once."""
    kind_codes, op_codes = pc.dictionary_encode(kind_arr), pc.dictionary_encode(op_arr)
    n_ops = len(op_codes.dictionary)
    pairs = pc.dictionary_encode(pc.add(pc.multiply(kind_codes.indices.cast(pa.int64()), n_ops),
                                        op_codes.indices.cast(pa.int64())))
    kind_values, op_values = kind_codes.dictionary.to_pylist(), op_codes.dictionary.to_pylist()
    kind_names, op_names = [], []
    for code in pairs.dictionary.to_pylist():
        k, o = kind_values[code // n_ops], op_values[code % n_ops]
        entry = kinds[k] if 0 <= k < len(kinds) else ("", [])
        kind_names.append(entry[0])
        op_names.append(entry[1][o] if 0 <= o < len(entry[1]) else f"operation {o}")
    return (pa.DictionaryArray.from_arrays(pairs.indices, pa.array(kind_names, pa.string())),
            pa.DictionaryArray.from_arrays(pairs.indices, pa.array(op_names, pa.string())))


def _marker_messages(value: Any) -> dict[int, str]:
    """roctx messages by correlation id: `[{"key": id, "value": msg}, ...]` or a dict."""
    if isinstance(value, dict):
        return {int(k): str(v) for k, v in value.items() if str(k).lstrip("-").isdigit()}
    out = {}
    for item in value or []:
        if isinstance(item, dict) and "key" in item:
            out[int(item["key"])] = str(item.get("value"))
    return out


def _api(c: dict[str, pa.Array], kinds, markers: dict[int, str], pid, w, next_id: int) -> int:
    n = len(c["start_timestamp"])
    w.read(n)
    if not n:
        return 0
    kind_names, op_names = _op_names(kinds, c["kind"], c["operation"])
    event_kind = rc.map_strings(kind_names, lambda d: rc.api_domain(d)[0], pa.string())
    source_cat = rc.map_strings(kind_names, lambda d: rc.api_domain(d)[1], pa.string())
    names = op_names
    is_runtime = pc.equal(event_kind, "runtime")
    if markers:
        ids = pa.array(list(markers.keys()), pa.int64())
        msg = pc.take(pa.array(list(markers.values()), pa.string()),
                      pc.index_in(c["correlation_id.internal"], value_set=ids))
        names = pc.if_else(is_runtime, names.cast(pa.string()), pc.coalesce(msg, names.cast(pa.string())))
    written, _ = rc.write_events(w, next_id, event_kind, {
        "name": names, "start_ns": c["start_timestamp"], "end_ns": c["end_timestamp"],
        "pid": pid, "tid": c["thread_id"],
        "correlation": pc.if_else(is_runtime, c["correlation_id.internal"], pa.scalar(None, pa.int64())),
        "external_id": _nonzero(c["correlation_id.external"]), "source_cat": source_cat,
        "args": rc.json_args({"domain": kind_names, "operation": op_names,
                              "correlation_id": c["correlation_id.internal"]}, n),
    }, "API call")
    return written


def _copies(c: dict[str, pa.Array], kinds, agents: rc.Agents, pid, w, next_id: int) -> int:
    n = len(c["start_timestamp"])
    w.read(n)
    if not n:
        return 0
    sizes = c["bytes"]
    _kind, op_names = _op_names(kinds, c["kind"], c["operation"])
    direction = rc.map_strings(op_names, rc.copy_direction, pa.string()).cast(pa.string())
    src_dev = rc.map_codes(c["src_agent_id.handle"], agents.ordinal_by_key)
    dst_dev = rc.map_codes(c["dst_agent_id.handle"], agents.ordinal_by_key)
    device = pc.if_else(pc.equal(pc.fill_null(direction, ""), "DtoH"), src_dev, pc.coalesce(dst_dev, src_dev))
    written, keep = rc.write_events(w, next_id, "memcpy", {
        "name": op_names, "start_ns": c["start_timestamp"], "end_ns": c["end_timestamp"],
        "pid": pid, "device": device, "stream": c["stream_id.handle"],
        "correlation": c["correlation_id.internal"], "external_id": _nonzero(c["correlation_id.external"]),
        "source_cat": "memory_copy",
        "args": rc.json_args({"src_agent_node": rc.map_codes(c["src_agent_id.handle"], agents.node_by_key),
                              "dst_agent_node": rc.map_codes(c["dst_agent_id.handle"], agents.node_by_key),
                              "thread_id": c["thread_id"]}, n),
    }, "memory copy")
    rc.write_copies(w, next_id, sizes, direction, keep, n)
    return written

