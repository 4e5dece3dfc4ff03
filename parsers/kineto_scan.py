"""Large Kineto inputs: the `traceEvents` array read by one compiled pass
(`kineto_scan_kernel`), in parts on several threads, straight into `events`.

What the scan stores itself is exactly what the DuckDB path (kineto_sql.py) calls
ordinary: an X/i/I record with a known category, a string name, a time whose
nanoseconds are exact (an integer, or at most three decimals below 2**43 us), dur >= 0
for X, and pid/tid and args' correlation, External id, device and stream given as
integers. Launch flows (ac2g) are counted and dropped, as there. Every other record (metadata,
counters, B/E, other flows, odd keys or values) is handed, in file order, to
`EventBuilder`, the exact record-by-record logic, as the DuckDB path does. `args` is
stored as its JSON text without the spaces between tokens (the DuckDB path stores
DuckDB's rewriting of it, the Python path the text as written: the same JSON).

Where the scan does not take the array (not valid JSON, an element that is not an
object, more distinct names than its table holds, numba unavailable) it stores nothing
and `store` returns False: the DuckDB path then reads the input and words any error.
On the 1M-event tile the scan replaces ~1.8 s of DuckDB statements (docs/performance.md).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from profkit.compiled import compiled
from profkit.store import checked_json

from .kineto_read import _BOUNDARY, decode_piece
from .kineto_sql import FastPathFailed, define_macros, store_copies, store_kernel_info
from .kineto_tables import DEVICE_LANE_KINDS, FLOW_LINK_KIND, category_table

# Below this the DuckDB path is as fast: numba's import and first call cost ~0.35-0.55 s.
# `profkit analyze` first runs, three alternating pairs each (docs/performance.md,
# twenty-sixth session): 14 MB 0.1-0.2 s slower scanned, 26 MB 0.05-0.15 s slower, 35 MB
# even, 54 and 58 MB 0.3-0.5 s faster (numba, once loaded, also serves the graph's replays).
# Several inputs are weighed together: numba loads once for them all, and the DuckDB path
# has a cost per input: 4 synthetic ranks of 23 MB loaded in 1.9 s scanned against
# 2.7-2.9 s, 32 ranks of 1.4 MB in 3.7 against 4.3 s, and at 11 MB in all it was even
# (measured when the scan was 2.5-3x slower, before its helpers ran without numba's runtime).
SCAN_MIN_BYTES = 48 << 20
BATCH_SCAN_MIN_BYTES = 32 << 20
_ARG_NAMES = ("correlation", "External id", "external id", "device", "stream")
_LAUNCH_FLOW_CATS = frozenset(c for c, kind in FLOW_LINK_KIND.items() if kind is None)
_STRING_SLOTS = 1 << 20  # distinct cat/name strings a part holds: half of this
_PROBE_RECORDS = 4096
# JSON scanned and stored at a time (at least; up to twice): bounds the arrays held at any
# size of input. 5M-event tile: peak 1.38x the JSON with 128 MB rounds, 2.10x with 256 MB
# (the next round is scanned while one is stored); the DuckDB path checkpoints as often.
ROUND_BYTES = 128 << 20
_LEFTOVERS_AT_ONCE = 100_000  # records decoded into Python objects at a time
_PH = {name: ord(name) for name in ("X", "i", "I", "s", "t", "f")}


@compiled
def _kernel():
    """The compiled loop, loaded (or compiled) by a first call on one record."""
    from . import kineto_scan_kernel as kernel
    text = b'{"ph":"X","cat":"a","name":"b","pid":1,"ts":2.5,"dur":1,"args":{"device": 3}}'
    part = _scan_part(kernel, np.frombuffer(text, np.uint8), 0, len(text))
    ok = part is not None and part.ints[kernel.DEVICE][0] == 3 and part.ints[kernel.TS][0] == 2500
    return kernel if ok else None


def available() -> bool:
    return _kernel() is not None


def preload() -> None:
    """Load the loop on a thread (a gzip input decompresses meanwhile, GIL released)."""
    _kernel.start("profkit-kineto-scan-load")


def worth_scanning(events_bytes: int) -> bool:
    return events_bytes >= SCAN_MIN_BYTES


@dataclass
class _Part:
    """One part's records: the kernel's output arrays, cut to the records read, and its
    interned strings as raw bytes (code -> bytes between the quotes)."""
    rec_lo: np.ndarray
    rec_hi: np.ndarray
    ph: np.ndarray
    cat: np.ndarray
    name: np.ndarray
    ints: np.ndarray
    bits: np.ndarray
    args_lo: np.ndarray
    args_hi: np.ndarray
    strings: list[bytes]
    args_rows: np.ndarray | None = None  # the records whose args `args` holds, in order
    args: pa.Array | None = None         # their args as compact JSON text
    closed_at: int | None = None         # where the events array ended inside the part


def _arg_names() -> tuple[np.ndarray, np.ndarray]:
    names = [n.encode() for n in _ARG_NAMES]
    ends = np.cumsum([0] + [len(n) for n in names]).astype(np.int64)
    return np.frombuffer(b"".join(names), np.uint8), ends


def _scan_part(kernel, buf: np.ndarray, start: int, end: int, release=None) -> _Part | None:
    """The records of buf[start:end], or None where the scan does not take them.
    `release(start, end)` is called once what is kept of them is copied out (a mapped
    input's pages are then dropped at once: 197 MB at the 1M-event tile)."""
    arg_names, arg_ends = _arg_names()
    slots = np.zeros(_STRING_SLOTS, np.int32)
    codes = np.zeros(_STRING_SLOTS // 2, np.uint64)
    spans = np.zeros((_STRING_SLOTS // 2, 2), np.int64)
    count = np.zeros(1, np.int64)
    blocks, at, done, capacity = [], start, 0, _PROBE_RECORDS
    while True:
        out = _outputs(capacity, kernel.N_INTS)
        n, at_next, status = kernel.scan(buf, at, end, arg_names, arg_ends, slots, codes, spans, count, *out)
        if status not in (kernel.DONE, kernel.FULL, kernel.CLOSED):
            return None
        blocks.append([a[..., :n] for a in out])
        done += n
        if status != kernel.FULL:
            break
        at = at_next
        # The bytes per record so far tell the room the rest needs (10% spare).
        capacity = int((end - at) / ((at - start) / done) * 1.1) + 64
    arrays = blocks[0] if len(blocks) == 1 else [np.concatenate(parts, axis=-1) for parts in zip(*blocks)]
    raw = buf.data
    strings = [bytes(raw[lo:lo + length]) for lo, length in spans[:count[0]]]
    part = _Part(*arrays, strings=strings, closed_at=at_next if status == kernel.CLOSED else None)
    _minify_args(kernel, buf, part)
    if release:
        release(start, end)
    return part


def _minify_args(kernel, buf: np.ndarray, part: _Part) -> None:
    """The args text of the records that may be stored (X/i/I with an args object and
    nothing odd), here in the part's thread: most of them will be."""
    rows = np.flatnonzero(_bit(part.bits, kernel.ARGS) & ~_bit(part.bits, kernel.LEFTOVER) & _timed(part.ph))
    lo, hi = part.args_lo[rows], part.args_hi[rows]
    out = np.empty(int((hi - lo).sum()), np.uint8)
    offsets = np.empty(len(rows) + 1, np.int64)
    used = kernel.minified(buf, lo, hi, out, offsets)
    part.args_rows = rows
    part.args = pa.Array.from_buffers(pa.large_string(), len(rows),
                                      [None, pa.py_buffer(offsets), pa.py_buffer(out[:used])])


def _bit(bits: np.ndarray, index: int) -> np.ndarray:
    return (bits >> index) & 1 == 1


def _timed(ph: np.ndarray) -> np.ndarray:
    """Records of the phases stored as events on the ordinary path: X, i, I."""
    return (ph == _PH["X"]) | (ph == _PH["i"]) | (ph == _PH["I"])


def _outputs(capacity: int, n_ints: int) -> list[np.ndarray]:
    return [np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity, np.uint8),
            np.empty(capacity, np.int32), np.empty(capacity, np.int32),
            np.zeros((n_ints, capacity), np.int64), np.empty(capacity, np.int64),
            np.zeros(capacity, np.int64), np.zeros(capacity, np.int64)]


def _part_spans(data, start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) (records without brackets) cut into about `parts` spans at `},{`.
    A cut inside a string makes the part before it fail (its scan reaches the cut inside
    the string), so a scan that takes every part took the records as written."""
    spans, lo = [], start
    step = (end - start) // parts
    for k in range(1, parts):
        m = _BOUNDARY.search(data, max(lo, start + k * step), end)
        if m is None:
            break
        spans.append((lo, m.start() + 1))
        lo = m.end() - 1
    spans.append((lo, end))
    return spans


def _text(raw: bytes) -> str:
    """A JSON string's content as written -> the string (escapes decoded)."""
    if b"\\" not in raw:
        return raw.decode("utf-8")
    return msgspec.json.decode(b'"' + raw + b'"')


class _Strings:
    """The distinct cat and name strings of all parts, numbered in order of appearance."""

    def __init__(self):
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def code(self, text: str) -> int:
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.values)
            self.values.append(text)
        return index

    def codes_of(self, part: _Part) -> np.ndarray:
        """part code -> global code, as an array to index with (a trailing -1 keeps -1)."""
        return np.array([self.code(_text(raw)) for raw in part.strings] + [-1], np.int32)


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class ScanDeclined(Exception):
    """The scan did not take a round after earlier rounds were stored: the parser starts
    again without it (the trace is removed first)."""


def store(doc, data, builder, w, release=None, progress=None) -> bool:
    """Scan `doc`'s events array and store it through `builder` (its writer `w`);
    False (nothing stored) where the scan does not take it. Rounds of ROUND_BYTES, each
    in parts on parallel threads; the next round is scanned while one is stored.
    `release(lo, hi)` is told which bytes of the input are done with, `progress(bytes)`
    how much of the array is stored."""
    kernel = _kernel()
    if kernel is None or doc.events_range is None:
        return False
    lo, hi = doc.events_range
    start = data.find(b"[", lo) + 1
    end = data.rfind(b"]", lo, hi)
    buf = np.frombuffer(data, np.uint8)
    workers = _workers()
    rounds = _part_spans(data, start, end, max(1, (end - start) // ROUND_BYTES))  # no small last round
    strings, first, leftovers = _Strings(), 0, []
    with ThreadPoolExecutor(workers, thread_name_prefix="profkit-kineto-scan") as pool:
        def scan(span):
            return [pool.submit(_scan_part, kernel, buf, *part, release) for part in _part_spans(data, *span, workers)]

        pending = scan(rounds[0])
        for k, span in enumerate(rounds):
            parts = [future.result() for future in pending]
            # An array located without the whole-document check may end before where it
            # was located (a later array of objects, deviceProperties say): the parts
            # after its `]` are not records, and the top level is read again.
            closed = next((i for i, part in enumerate(parts) if part is not None and part.closed_at is not None), None)
            if closed is not None:
                parts = parts[:closed + 1]
                if None in parts or not doc.closed_at(parts[-1].closed_at):
                    parts.append(None)
            last = closed is not None or k + 1 == len(rounds)
            pending = scan(rounds[k + 1]) if not last and None not in parts else []
            if None in parts:
                if k == 0:
                    return False
                raise ScanDeclined()
            leftovers.append(_store_parts(kernel, parts, builder, w, strings, first))
            first += sum(len(part.ph) for part in parts)
            if progress:
                progress(span[1] - lo)
            if last:
                break
            _checkpoint(w)
    builder.next_id = max(builder.next_id, first)
    _store_leftovers(data, builder, leftovers)
    return True


def _checkpoint(w) -> None:
    """Compress the rows stored so far (an in-memory store does not by itself: see
    kineto_sql.CHECKPOINT_BATCHES)."""
    try:
        w.store.con.execute("CHECKPOINT")
    except duckdb.Error:
        pass  # only memory is at stake


def _store_parts(kernel, parts: list[_Part], builder, w, strings: "_Strings", first: int):
    """Store a round's ordinary records (event id: `first` + position in the round);
    returns the spans (start, end arrays) of the records left to the record-by-record path."""
    codes = [strings.codes_of(p) for p in parts]
    cat = np.concatenate([c[p.cat] for c, p in zip(codes, parts)])
    name = np.concatenate([c[p.name] for c, p in zip(codes, parts)])
    ph, bits = (np.concatenate([getattr(p, f) for p in parts]) for f in ("ph", "bits"))
    ints = _Ints(parts)
    total = len(ph)
    # A missing cat maps as the empty one does (category_table).
    kinds, kind_code = _kinds(strings.values, np.where(cat < 0, strings.code(""), cat), name)
    has = [_bit(bits, f) for f in range(kernel.N_INTS)]
    plain = ~_bit(bits, kernel.LEFTOVER)
    is_x = ph == _PH["X"]
    fast = (plain & _timed(ph) & (kind_code >= 0) & (name >= 0)
            & has[kernel.TS] & (~is_x | (has[kernel.DUR] & (ints.field(kernel.DUR) >= 0))))
    launch_cats = [i for i, s in enumerate(strings.values) if s in _LAUNCH_FLOW_CATS]
    launch_flow = (plain & ((ph == _PH["s"]) | (ph == _PH["t"]) | (ph == _PH["f"]))
                   & np.isin(cat, launch_cats))
    w.read(total)
    ids = np.flatnonzero(fast)
    try:
        _insert_events(kernel, w, ids, first, _args_text(parts, fast), strings.values, kinds, kind_code, cat,
                       name, ints, has, is_x)
    except (duckdb.Error, pa.ArrowInvalid) as exc:
        raise FastPathFailed(str(exc)) from None
    # kernel_info (a DuckDB statement, no GIL held) beside the copies and tallies.
    with w.store.con.cursor() as cursor:
        define_macros(cursor)
        with ThreadPoolExecutor(1, thread_name_prefix="profkit-kineto-kernels") as side:
            kernels = side.submit(store_kernel_info, w, first, total, cursor)
            store_copies(w, first, total)
            _tally(builder, strings.values, kinds, kind_code[ids], cat[ids], name[ids])
            kernels.result()
    leftover = np.flatnonzero(~fast & ~launch_flow)
    return tuple(np.concatenate([getattr(p, f) for p in parts])[leftover] for f in ("rec_lo", "rec_hi"))


def _store_leftovers(data, builder, spans: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The records left to the record-by-record path, in file order, after all others
    (their ids follow the records'): none of what it does with them (metadata, counters,
    B/E pairs, flows) depends on the ordinary records stored before."""
    rec_lo = np.concatenate([lo for lo, _ in spans])
    rec_hi = np.concatenate([hi for _, hi in spans])
    with memoryview(data) as view:
        for at in range(0, len(rec_lo), _LEFTOVERS_AT_ONCE):
            chunk = zip(rec_lo[at:at + _LEFTOVERS_AT_ONCE].tolist(), rec_hi[at:at + _LEFTOVERS_AT_ONCE].tolist())
            records, _ = decode_piece(b"[" + b",".join(view[a:b] for a, b in chunk) + b"]")
            builder.add_records(records)


def _tally(builder, values: list[str], kinds: list[str], kind: np.ndarray, cat: np.ndarray, name: np.ndarray) -> None:
    """The parser's tallies of stored records (kinds, categories, runtime-name prefixes:
    the vendor's evidence), as kineto_sql counts them, from the codes."""
    for code, count in enumerate(np.bincount(kind, minlength=len(kinds)).tolist()):
        if count:
            builder.kind_counts[kinds[code]] += count
    builder.cats_seen.update(values[c] if c >= 0 else None for c in np.unique(cat).tolist())
    runtime = name[kind == kinds.index("runtime")] if "runtime" in kinds else name[:0]
    for code, count in enumerate(np.bincount(runtime, minlength=len(values)).tolist()):
        if count:
            builder.runtime_prefixes[values[code][:4].lower()] += count


def _kinds(values: list[str], cat: np.ndarray, name: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each record's kind as a code into the returned kind names (-1: unknown), from the
    category table: by (cat, name) for the categories that map by name, else by cat."""
    by_cat, by_name = category_table()
    kinds = sorted(set(by_cat.values()) | set(by_name.values()))
    index = {k: i for i, k in enumerate(kinds)}
    of_cat = np.array([index.get(by_cat.get(v), -1) for v in values], np.int32)
    code = of_cat[cat]
    name_cats = [i for i, v in enumerate(values) if v in {c for c, _ in by_name}]
    if name_cats:
        rows = np.flatnonzero(np.isin(cat, name_cats) & (name >= 0))
        if len(rows):
            pairs, inverse = np.unique(cat[rows].astype(np.int64) << 32 | name[rows], return_inverse=True)
            named = np.array([index.get(by_name.get((values[p >> 32], values[p & 0xFFFFFFFF])), -1)
                              for p in pairs.tolist()], np.int32)
            code[rows] = np.where(named[inverse] >= 0, named[inverse], code[rows])
    return kinds, code


class _Ints:
    """A round's integer fields, left in its parts: the stored records' values are copied
    out once, field by field, instead of the whole round first (1M-event tile: ~100 MB
    and 0.09 s less)."""

    def __init__(self, parts: list[_Part]):
        self.parts = parts
        self.bounds = np.cumsum([0] + [p.ints.shape[1] for p in parts])

    def field(self, f: int) -> np.ndarray:
        return np.concatenate([p.ints[f] for p in self.parts])

    def taken(self, f: int, rows: np.ndarray) -> np.ndarray:
        """Field f at `rows` (positions in the round, increasing)."""
        out = np.empty(len(rows), np.int64)
        cuts = np.searchsorted(rows, self.bounds)
        for part, lo, hi, base in zip(self.parts, cuts[:-1], cuts[1:], self.bounds[:-1]):
            np.take(part.ints[f], rows[lo:hi] - base, out=out[lo:hi])
        return out


def _insert_events(kernel, w, ids, first, args, values, kinds, kind_code, cat, name, ints, has, is_x) -> None:
    k = kernel
    lane_codes = [i for i, kind in enumerate(kinds) if kind in DEVICE_LANE_KINDS]
    lane = np.isin(kind_code[ids], lane_codes)
    col = {f: ints.taken(f, ids) for f in range(k.N_INTS)}
    ok = {f: has[f][ids] for f in range(k.N_INTS)}

    def column(values_, valid, typ=pa.int64()):
        return pa.array(values_, typ, mask=~valid)

    device_ok = ok[k.DEVICE] | (lane & ok[k.PID])
    stream_ok = lane & (ok[k.STREAM] | ok[k.TID])
    ext_ok = ok[k.EXTERNAL_ID] | ok[k.EXTERNAL_ID_LOWER]
    strings = pa.array(values, pa.string())
    w.add_events({
        "event_id": ids.astype(np.int64) + first,
        "kind": pa.DictionaryArray.from_arrays(kind_code[ids], pa.array(kinds, pa.string())),
        "name": pa.DictionaryArray.from_arrays(name[ids], strings),
        "start_ns": col[k.TS], "dur_ns": np.where(is_x[ids], col[k.DUR], 0),
        "pid": column(col[k.PID], ok[k.PID] & ~lane), "tid": column(col[k.TID], ok[k.TID] & ~lane),
        "device": column(np.where(ok[k.DEVICE], col[k.DEVICE], col[k.PID]), device_ok, pa.int32()),
        "stream": column(np.where(ok[k.STREAM], col[k.STREAM], col[k.TID]), stream_ok),
        "correlation": column(col[k.CORRELATION], ok[k.CORRELATION]),
        "external_id": column(np.where(ok[k.EXTERNAL_ID], col[k.EXTERNAL_ID], col[k.EXTERNAL_ID_LOWER]), ext_ok),
        "source_cat": pa.DictionaryArray.from_arrays(pa.array(cat[ids], mask=cat[ids] < 0), strings),
        "args": args,
    })


def _args_text(parts: list[_Part], fast: np.ndarray) -> pa.ChunkedArray:
    """The stored records' args (NULL where a record has none), part by part."""
    chunks, first = [], 0
    for part in parts:
        stored = np.flatnonzero(fast[first:first + len(part.ph)])
        first += len(part.ph)
        if np.array_equal(stored, part.args_rows):
            chunks.append(part.args)
            continue
        # Some stored records have no args (NULL), or some records with args were not stored.
        at = np.minimum(np.searchsorted(part.args_rows, stored), max(len(part.args_rows) - 1, 0))
        found = part.args_rows[at] == stored if len(part.args_rows) else np.zeros(len(stored), bool)
        chunks.append(part.args.take(pa.array(at, mask=~found)))
    return checked_json(pa.chunked_array(chunks, pa.large_string()))  # the scan checked it
