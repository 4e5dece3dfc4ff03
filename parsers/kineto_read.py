"""Reading a Kineto JSON file: bytes (gzip by magic), the top level, and the
`traceEvents` array in chunks of typed records without building a dict per event.

The input is a read-only memory map (of the file, or of a temporary file a gzip is
decompressed into), so pages already read can be dropped from memory. msgspec splits the
top level into raw values (no copy), then the events array is cut at `},{` boundaries
into pieces: kineto_sql.py reads them with DuckDB; otherwise each is decoded into `Ev`
structs whose `args` stay raw JSON bytes. A large input skips the top-level pass over the
events array: the array is located, and its pieces' own checks stand for it (`Document`,
check_all=False). Slow path (control characters in strings, which msgspec
rejects, or array elements that are not objects): the stdlib decoder with strict=False.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import tempfile
import zlib
from decimal import Decimal, InvalidOperation
from typing import Any, Iterator

import msgspec
import numpy as np

from profkit.errors import TraceError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 16 << 20
_GUNZIP_BLOCK = 4 << 20   # compressed bytes read at a time
_GUNZIP_OUT = 4 << 20     # decompressed bytes made at a time
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
# Inputs this large locate the events array without checking the whole document first
# (Document(check_all=False)): the check is a single-threaded pass over every byte (0.6 s
# at 200 MB, 2.5 s at 1 GB here) before any piece can be read, and every piece is checked
# again as it is read anyway. Smaller inputs keep the full check: it costs little there.
LOCATE_MIN_BYTES = 32 << 20
_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_LOCATE_KEY_WITHIN = 64 << 20  # the key is looked for in the document's head only
_LOCATE_TAIL_WITHIN = 16 << 20  # and its end in the last 16 MB (each try copies what follows)
_LOCATE_CANDIDATES = 64  # `]` tried from the end
_LEADING_SPACE = re.compile(rb"[\s\xef\xbb\xbf]*")


class Ev(msgspec.Struct, gc=False):
    """One record of traceEvents. Loosely typed on purpose: odd values are judged per
    record by the parser, never by the decoder for the whole file."""
    ph: Any = None
    cat: Any = None
    name: Any = None
    pid: Any = None
    tid: Any = None
    ts: Any = None
    dur: Any = None
    id: Any = None
    args: msgspec.Raw = msgspec.Raw()  # empty when absent


_EVENTS = msgspec.json.Decoder(list[Ev])
_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ANY = msgspec.json.Decoder()


class RangeUnverified(Exception):
    """A piece of an events array located without the whole-document check was not
    valid JSON: parse again with the check (which gives the precise error, if any)."""


class Input:
    """The decompressed JSON as a read-only memory map: of the file itself, or of a
    temporary file a gzip input is decompressed into block by block. Pages are file
    backed, so `release` can drop what has been read from the process's memory."""

    def __init__(self, path):
        self.path = path
        self._file = None
        self.data: Any = b""
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == GZIP_MAGIC
        # True where the gzip stream ends early: what it holds is read, and the parser says so.
        self.gzip_cut = False
        if gzipped:
            self._file, self.gzip_cut = _gunzip_to_temp(path)
        else:
            self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        # NUL bytes the text ends in (a file system's zero-filled tail after a crash, a
        # preallocated file) are left out of the map: the decoder then sees where the text
        # really ends, and a document cut short there is read as one.
        self.padding = 0
        if size:
            self.data, self.padding = mapped_without_padding(self._file.fileno())

    def release(self, lo: int = 0, hi: int | None = None) -> None:
        """Drop the pages of [lo, hi) from memory (they are read back if touched again)."""
        if not isinstance(self.data, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
            return
        hi = len(self.data) if hi is None else hi
        lo -= lo % mmap.PAGESIZE
        if hi > lo:
            try:
                self.data.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            try:
                self.data.close()
            except BufferError:
                pass  # a view is still alive; the map goes with it
        if self._file is not None:
            self._file.close()


def _gunzip_to_temp(path):
    """(temporary file holding the decompressed text, whether the gzip stream ended early).
    A stream cut short (a copy or a write interrupted) gives what it holds."""
    out = tempfile.TemporaryFile(prefix="profkit-kineto-")
    try:
        cut = gunzip(path, out)
        out.flush()
        if cut and out.tell() == 0:
            raise TraceError(path, "truncated gzip (compressed data ends early)")
    except (OSError, zlib.error) as exc:
        out.close()
        raise TraceError(path, f"corrupt gzip ({exc})") from None
    except TraceError:
        out.close()
        raise
    return out, cut


_PADDING_BLOCK = 1 << 16


def end_before_padding(data) -> int:
    """len(data) without the NUL bytes it ends in, found a block at a time from the end."""
    end = len(data)
    while end:
        block = bytes(data[max(0, end - _PADDING_BLOCK):end])
        kept = len(block.rstrip(b"\x00"))
        end -= len(block) - kept
        if kept:
            break
    return end


def mapped_without_padding(fileno: int) -> tuple[Any, int]:
    """A read-only map of the open file without the NUL bytes it ends in (b"" where it
    holds nothing else), and how many those are. ValueError for an empty file."""
    whole = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    end = end_before_padding(whole)
    padding = len(whole) - end
    if not padding:
        return whole, 0
    whole.close()
    return (mmap.mmap(fileno, end, access=mmap.ACCESS_READ) if end else b""), padding


def without_padding(data: bytes) -> tuple[bytes, int]:
    """`data` without the NUL bytes it ends in, and how many those are."""
    end = end_before_padding(data)
    return (data[:end] if end < len(data) else data), len(data) - end


def count_padding(w, padding: int) -> None:
    """Say in `w` that the input's trailing NUL bytes were left out."""
    if padding:
        w.note(f"{padding:,} NUL bytes after the text left out (a file system's zero-filled tail after a "
               "crash, or a preallocated file)")


def gunzip(path, out) -> bool:
    """Decompress the gzip file `path` into the binary file `out`, every member (NUL
    padding between or after them skipped, as the gzip module does). True where the last
    member is cut short (a copy or a write interrupted): what it holds is written.
    zlib.error for corrupt data.

    zlib in large blocks rather than the gzip module's reader, which takes the GIL back
    every 128 KB of input: the scan's loop loads on another thread meanwhile, and each
    take waits for that thread's switch interval (v100_nccl_rank1_of2, 54 MB: 0.39-0.42 s
    beside the load against 0.13-0.14 s; 0.06 s alone either way)."""
    with open(path, "rb") as src:
        stream, between = zlib.decompressobj(16 + zlib.MAX_WBITS), False
        while block := src.read(_GUNZIP_BLOCK):
            while block:
                if between:
                    block = block.lstrip(b"\x00")
                    if not block:
                        break
                    stream, between = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                out.write(stream.decompress(block, _GUNZIP_OUT))
                block = stream.unconsumed_tail
                if stream.eof:
                    block, between = stream.unused_data, True
        if not between:
            out.write(stream.flush())
    return not between


def _decode_error(path, exc: Exception, size: int) -> TraceError:
    text = str(exc)
    if "truncated" in text:
        return TraceError(path, f"truncated JSON (input ends after {size} bytes)")
    return TraceError(path, f"malformed JSON ({text})")


def _piece_error(path, exc: Exception, data, pos: int) -> TraceError:
    """The error for a piece of the events array starting at byte `pos`: msgspec names
    no position for invalid UTF-8, so it is found here."""
    if "UTF-8" in str(exc):
        return not_utf8(path, data, pos)
    return _decode_error(path, exc, len(data))


def not_utf8(path, data, pos: int = 0) -> TraceError:
    """The error for input that is not UTF-8 text, naming the first bad byte at or after `pos`."""
    with memoryview(data) as view:
        try:
            bytes(view[pos:]).decode("utf-8")
        except UnicodeDecodeError as err:
            return TraceError(path, f"not UTF-8 text: invalid byte 0x{err.object[err.start]:02x} at offset {pos + err.start}")
    return TraceError(path, "not UTF-8 text")


class Document:
    """The top level of a trace: `top` maps keys to decoded values (except the events),
    and `chunks()` yields lists of `Ev`."""

    def __init__(self, path, data: bytes, check_all: bool = True):
        self.path = path
        self.data = data
        self.top: dict[str, Any] = {}
        self._events_range: tuple[int, int] | None = None
        self._events_list: list | None = None  # slow path: already-decoded records
        # False: the events array was located without checking the whole document; its
        # pieces are checked as they are read, and `chunks` raises RangeUnverified if the
        # location does not hold (the caller then starts again with check_all).
        self.checked = True
        # (input bytes, bytes lost, whether records were lost) where the input is cut short
        # and read up to where it was whole (`data` is then that part, closed).
        self.cut_short: tuple[int, int, bool] | None = None
        first = _LEADING_SPACE.match(data).end()
        if first == len(data):
            raise TraceError(path, "empty file")
        head = data[first:first + 1]
        if head not in (b"{", b"["):
            raise TraceError(path, "not JSON (expected a Chrome trace object or array)")
        if not check_all and head == b"{" and len(data) >= LOCATE_MIN_BYTES and self._locate(data):
            self.checked = False
            return
        try:
            self._fast(data, head)
        except msgspec.DecodeError as exc:
            if "truncated" in str(exc) and self._close_cut_events(data):
                return
            if "invalid character" not in str(exc):
                raise _decode_error(path, exc, len(data)) from None
            self._slow(data)  # control characters inside strings
        if self._events_range is None and self._events_list is None:
            keys = ", ".join(sorted(self.top)[:5]) or "none"
            raise TraceError(path, f"JSON but not a Chrome trace: no traceEvents (top-level keys: {keys})")

    def _close_cut_events(self, data) -> bool:
        """A document cut short inside its events array (a crash or a full disk while the
        trace was written) is read up to its last whole record: True where one is found."""
        found = closed_after_last_record(data)
        if found is None:
            return False
        closed, lost, records_lost = found
        self.data = closed
        self.cut_short = (len(data), lost, records_lost)
        try:
            self._fast(closed, b"{")
        except msgspec.DecodeError:
            self._slow(closed)  # control characters inside strings
        return True

    def _fast(self, data: bytes, head: bytes) -> None:
        if head == b"[":
            _TOP_ARRAY.decode(data)  # validates the whole array
            start = data.find(b"[")
            self._events_range = (start, data.rfind(b"]") + 1)
            return
        top = _TOP.decode(data)
        if not isinstance(top, dict):
            raise TraceError(self.path, "JSON but not a Chrome trace object")
        raw_events = top.pop("traceEvents", None)
        self.top = {k: _ANY.decode(v) for k, v in top.items()}
        if raw_events is None:
            return
        start = raw_offset(raw_events, data)
        if not 0 <= start < len(data) or data[start:start + 1] != b"[":
            # Not a view into the input (or not an array): decode it by itself.
            value = _ANY.decode(raw_events)
            if not isinstance(value, list):
                raise TraceError(self.path, "traceEvents is not a JSON array")
            self._events_list = value
            return
        self._events_range = (start, start + len(raw_events))

    def _locate(self, data) -> bool:
        """Find the events array without reading it: the first `"traceEvents": [`, and the
        `]` that ends it, found from the end of the file as the latest `]` after a `}`
        for which the document with the array emptied is a valid JSON object whose
        traceEvents is that empty array. Everything but the array is checked here; the
        array's pieces are checked as they are read (a `]` that closed an array of objects
        after traceEvents would leave trailing characters in the last piece)."""
        key = _EVENTS_KEY.search(data, 0, min(len(data), _LOCATE_KEY_WITHIN))
        if key is None:
            return False
        start = key.end() - 1
        end = len(data)
        lowest = max(start + 1, len(data) - _LOCATE_TAIL_WITHIN)
        for _ in range(_LOCATE_CANDIDATES):
            end = data.rfind(b"]", lowest, end)
            if end < 0:
                return False
            before = data[max(start, end - 64):end].rstrip()
            if not before.endswith(b"}"):
                continue  # not the end of an array of objects (a log line's `]`, a list of ids)
            found = self._bound_at(data, start, end)
            if found is not None:
                return found
        return False

    def _bound_at(self, data, start: int, end: int) -> bool | None:
        """Take data[start:end + 1] as the events array: True (the top level decoded, the
        range set) where the document with it emptied is a valid object whose traceEvents
        is that array; False where its traceEvents is elsewhere; None where it is not
        valid JSON."""
        emptied = b"".join((data[:start], b"[]", data[end + 1:]))
        try:
            top = _TOP.decode(emptied)
        except msgspec.DecodeError:
            return None
        events = top.pop("traceEvents", None)
        if events is None or raw_offset(events, emptied) != start:
            return False
        self.top = {k: _ANY.decode(v) for k, v in top.items()}
        self._events_range = (start, end + 1)
        return True

    def _slow(self, data: bytes) -> None:
        try:
            value = json.loads(bytes(data), strict=False)
        except json.JSONDecodeError as exc:
            # Where the input ended inside a value, it may be a trace cut short.
            at_end = exc.msg.startswith("Unterminated string") or exc.pos >= len(data) - 16
            if at_end and self.cut_short is None and self._close_cut_events(data):
                return
            raise TraceError(self.path, f"malformed JSON ({exc})") from None
        except UnicodeDecodeError:
            raise not_utf8(self.path, data) from None
        if isinstance(value, list):
            self._events_list = value
            return
        if not isinstance(value, dict):
            raise TraceError(self.path, "JSON but not a Chrome trace object")
        events = value.pop("traceEvents", None)
        self.top = value
        if events is not None:
            if not isinstance(events, list):
                raise TraceError(self.path, "traceEvents is not a JSON array")
            self._events_list = events

    def closed_at(self, end: int) -> bool:
        """The events array, located without the whole-document check, was found to end
        at the `]` at `end` (a reader met it there): the top level is decoded again with
        the array so bounded, as `_locate` does. False where that is not a valid document
        with traceEvents there."""
        return bool(self._bound_at(self.data, self._events_range[0], end))

    @property
    def events_range(self) -> tuple[int, int] | None:
        """Where the events array `[...]` is in the input, if it is read from there."""
        return self._events_range

    @property
    def events_bytes(self) -> int:
        if self._events_range:
            return self._events_range[1] - self._events_range[0]
        return len(self.data)

    def chunks(self, decode=None, release=None, piece_bytes: int = CHUNK_BYTES) -> Iterator[tuple[Any, int]]:
        """Yield (decode(piece), bytes done) for pieces of the events array, each a JSON
        array text of whole records. `decode` raises msgspec.DecodeError for a piece that
        is not valid JSON (a cut inside a string): the piece is then extended. The default
        decode gives (records, non-object elements). `release(lo, hi)` is told which
        bytes of the input are done with."""
        decode = decode or decode_piece
        if self._events_list is not None:
            items = self._events_list
            for i in range(0, len(items), 50_000):
                yield _from_python(items[i:i + 50_000]), len(self.data)
            return
        data = self.data
        lo, hi = self._events_range
        pos = data.find(b"[", lo) + 1
        end = data.rfind(b"]", lo, hi)
        while True:
            target = pos + piece_bytes
            emitted = False
            while target < end:
                m = _BOUNDARY.search(data, target, end)
                if m is None:
                    break
                try:
                    value = decode(_piece(data, pos, m.start() + 1))
                except msgspec.DecodeError as exc:
                    # A piece cut inside a string or a nested object is truncated; any
                    # other error is in the input (trying ever longer pieces would take
                    # quadratic time to reach the same error at the end).
                    if "truncated" not in str(exc):
                        if not self.checked:
                            raise RangeUnverified(str(exc)) from None
                        raise _piece_error(self.path, exc, data, pos) from None
                    target = m.end()  # the match was inside a string: try the next one
                    continue
                yield value, m.start() - lo
                if release:
                    release(pos, m.start())
                pos = m.end() - 1
                emitted = True
                break
            if not emitted:
                try:
                    value = decode(_piece(data, pos, end))
                except msgspec.DecodeError as exc:
                    if not self.checked:
                        raise RangeUnverified(str(exc)) from None
                    raise _piece_error(self.path, exc, data, pos) from None
                yield value, hi - lo
                if release:
                    release(pos, end)
                return


# A cut document is closed right after its events array, else after one of the last
# record boundaries in its last MB: this many candidates of each are tried.
_CUT_WINDOW = 1 << 20
_CUT_CANDIDATES = 16


def count_cut_short(w, size: int, lost: int, records_lost: bool, gzip_cut: bool = False,
                    inside: str = "traceEvents") -> None:
    """Say in `w` that a document cut short was read up to where it was whole: records
    lost are one unusable record (every report warns of it); a cut after the records
    (`inside`: the list they were in) loses none and is a note."""
    gzip_part = " (and its gzip stream ends early)" if gzip_cut else ""
    if records_lost:
        w.read(1)
        w.issue(f"input cut short inside {inside}{gzip_part}: its last {lost:,} of {size:,} bytes, "
                "after the last whole record, are lost", 1)
    else:
        w.note(f"input cut short after {inside}{gzip_part}: its last {lost:,} of {size:,} bytes "
               f"(what follows {inside}) are lost")


def closed_after_last_record(data) -> tuple[bytes, int, bool] | None:
    """(the document closed where it was last whole, bytes lost, whether records were
    lost) for input cut short: right after its events array where that ended before the
    cut (no record lost), else after the last whole record of the array. None where
    neither is found near the end (nothing is guessed: a close inside a string or a
    record does not decode)."""
    key = _EVENTS_KEY.search(data, 0, min(len(data), _LOCATE_KEY_WITHIN))
    if key is None:
        return None
    start = key.end() - 1
    window = max(key.end(), len(data) - _CUT_WINDOW)
    ends = [m.start() + 1 for m in _BOUNDARY.finditer(data, window)]
    at = ends[-1] if ends else key.end()
    for _ in range(_CUT_CANDIDATES):
        at = data.find(b"]", at)
        if at < 0:
            break
        closed = _closed(data, at + 1, b"}", start)
        if closed is not None:
            return closed, len(data) - at - 1, False
        at += 1
    for end in reversed(ends[-_CUT_CANDIDATES:]):
        closed = _closed(data, end, b"]}", start)
        if closed is not None:
            return closed, len(data) - end, True
    return None


def _closed(data, end: int, closing: bytes, events_start: int) -> bytes | None:
    """data[:end] + closing where that is a valid document whose traceEvents starts at
    events_start; else None."""
    with memoryview(data) as view:
        closed = b"".join((view[:end], closing))  # one copy (a slice of a map is one more)
    try:
        top = _TOP.decode(closed)
    except msgspec.DecodeError as exc:
        if "invalid character" not in str(exc):
            return None
        try:  # control characters inside strings: the stdlib decoder reads them
            json.loads(closed, strict=False)
        except ValueError:
            return None
        return closed
    events = top.get("traceEvents")
    return closed if events is not None and raw_offset(events, closed) == events_start else None


def raw_offset(part, whole) -> int:
    """Where `part` (a msgspec.Raw view) starts inside the buffer `whole` (outside it when
    msgspec copied the value)."""
    return np.frombuffer(part, np.uint8).ctypes.data - np.frombuffer(whole, np.uint8).ctypes.data


def _piece(data, lo: int, hi: int) -> bytes:
    """`[` + data[lo:hi] + `]` with one copy (a memoryview slice of the map is not one)."""
    with memoryview(data) as view:
        return b"".join((b"[", view[lo:hi], b"]"))


def decode_piece(piece: bytes) -> tuple[list[Ev], list[Any]]:
    try:
        return _EVENTS.decode(piece), []
    except msgspec.ValidationError:
        return _from_python(_ANY.decode(piece))


_TOP_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_FIELDS = Ev.__struct_fields__


def _from_python(items: list[Any]) -> tuple[list[Ev], list[Any]]:
    """Records decoded by a generic decoder -> Ev (args re-encoded as JSON)."""
    records, others = [], []
    for item in items:
        if not isinstance(item, dict):
            others.append(item)
            continue
        values = {k: item.get(k) for k in _FIELDS if k != "args"}
        args = item.get("args")
        values["args"] = msgspec.Raw() if args is None else msgspec.Raw(json.dumps(args, default=str).encode())
        records.append(Ev(**values))
    return records, others


# -- numbers -----------------------------------------------------------------------

EXACT_FLOAT_LIMIT = float(2 ** 43)  # below it a double keeps 3 decimals of a microsecond


def micros_to_ns(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Microsecond values (int, float, numeric string) -> (int64 ns, valid mask).

    Exact: ints multiply exactly; a float below 2**43 us is the nearest double to a
    decimal with at most 3 fractional digits, so floor + round(frac * 1000) recovers that
    decimal's nanoseconds exactly (float64 `round(ts * 1000)` can be off by one ns for
    16-digit timestamps). Strings go through Decimal. Non-finite and non-numbers are
    invalid."""
    n = len(values)
    types = set(map(type, values))
    if types <= {int, float} and n:
        if types == {int}:
            arr = np.array(values, dtype=object if _big_ints(values) else np.int64)
            if arr.dtype == np.int64:
                return arr * 1000, np.ones(n, bool)
        else:
            f = np.array(values, dtype=np.float64)
            if np.all(np.abs(f) < EXACT_FLOAT_LIMIT):
                ip = np.floor(f)
                ns = ip.astype(np.int64) * 1000 + np.rint((f - ip) * 1000).astype(np.int64)
                return ns, np.ones(n, bool)
    out = np.zeros(n, np.int64)
    ok = np.zeros(n, bool)
    for i, v in enumerate(values):
        ns = one_micros_to_ns(v)
        if ns is not None:
            out[i] = ns
            ok[i] = True
    return out, ok


def _big_ints(values: list[int]) -> bool:
    return max(values) >= 2 ** 53 or min(values) <= -(2 ** 53)


def one_micros_to_ns(v: Any) -> int | None:
    """One microsecond value -> ns, or None where it is not a finite number whose
    nanoseconds fit the store's int64."""
    return int_within(_one_micros_to_ns(v))


def int_within(v: int | None, bits: int = 64) -> int | None:
    """`v` where a signed integer of `bits` bits holds it (the store's BIGINT, INTEGER),
    else None."""
    return v if v is None or -(2 ** (bits - 1)) <= v < 2 ** (bits - 1) else None


def text_bytes_estimate(path, gzip_ratio: int) -> int:
    """The size of an input's text, before reading it: a gzip's by its trailer (the size
    mod 4 GiB; deflate compresses at most ~1032:1) or, where that is less, its compressed
    size times `gzip_ratio`; 0 where it cannot be read."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == GZIP_MAGIC
            if not gzipped:
                return size
            fh.seek(max(size - 4, 0))
            trailer = int.from_bytes(fh.read(4), "little")
    except OSError:
        return 0
    # A gzip cut short ends in deflate data, not its size: at most the ratio deflate allows.
    return max(size * gzip_ratio, min(trailer, size * 1032))


def _one_micros_to_ns(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v * 1000
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return None
        if abs(v) < EXACT_FLOAT_LIMIT:
            ip = int(v // 1)
            return ip * 1000 + round((v - ip) * 1000)
        # The decimal text is lost; repr gives the shortest decimal that reads back.
        return int(round(Decimal(repr(v)) * 1000))
    if isinstance(v, str):
        try:
            d = Decimal(v.strip())
        except InvalidOperation:
            return None
        if not d.is_finite():
            return None
        return int(round(d * 1000))
    return None
