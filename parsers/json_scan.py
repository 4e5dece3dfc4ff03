"""Lists of compact JSON records whose values are integers or objects of them (rocprofv3's
buffer records) read by one compiled pass (`json_scan_kernel`) into int64 columns. On
rocprofv3's 425 MB `kernel_dispatch` list of 1M records it takes 0.51 s on one thread
where DuckDB's JSON reader takes 1.76 s (docs/performance.md), and it reads the input's
bytes where they are, with no staging copy.

`read` returns None where the scan does not take a list (numba cannot be imported, or a
record holds a value the scan does not read: a float, an array, true/false/null, a
wanted string, a malformed byte); the caller then reads it by other means, which also
words any error."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from profkit.compiled import compiled

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
MAX_FIELDS = 63  # a record's fields found are bits of one int64


def path_hash(path: str) -> int:
    """The hash the scan gives a dotted key path: FNV-1a over its keys, each after a `.`."""
    h = _FNV_OFFSET
    for key in path.split("."):
        for byte in b"." + key.encode():
            h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


@functools.lru_cache(maxsize=None)
def _lookup(paths: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Open-addressing table of path hashes (0 = empty slot) and each slot's field index."""
    size = 1 << max(6, (4 * len(paths)).bit_length())
    keys = np.zeros(size, np.uint64)
    fields = np.full(size, -1, np.int64)
    for index, path in enumerate(paths):
        h = path_hash(path)
        slot = h & (size - 1)
        while keys[slot]:
            if int(keys[slot]) == h:
                raise ValueError(f"two fields hash alike: {path}")
            slot = (slot + 1) & (size - 1)
        keys[slot], fields[slot] = h, index
    return keys, fields


@compiled
def _kernel():
    """The compiled loop, loaded (or compiled) by a first call on one record."""
    from . import json_scan_kernel as kernel
    keys, fields = _lookup(("a",))
    found = kernel.scan(np.frombuffer(b'{"a":-7}', np.uint8), 0, 8, keys, fields,
                        np.zeros((1, 1), np.int64), np.zeros(1, np.int64), 0, 1)
    return kernel if found == (1, 8, kernel.DONE) else None


def available() -> bool:
    return _kernel() is not None


@dataclass
class Scanned:
    """Records read: `values[f]` the integers of field f (0 where a record lacks it);
    `present` one int64 per record, bit i set where field i (values, then objects) was there."""
    values: list[np.ndarray]
    present: np.ndarray

    def has(self, index: int) -> np.ndarray:
        return (self.present >> index) & 1 == 1


def read(data, start: int, end: int, values: Sequence[str], objects: Sequence[str] = ()) -> Scanned | None:
    """The records of data[start:end] (`{...},{...}`, no brackets), or None where the scan
    does not take them. `values` are dotted paths of integer fields; `objects` paths whose
    presence alone is wanted."""
    if _kernel() is None:
        return None
    parts = Parts(data, [(start, end)], values, objects)
    parts.read(0)
    return parts.result()


_TRIAL_RECORDS = 64
_SPARE = 1.1  # room for records longer than the first ones
_MAX_STEPS = 64  # gap-closing copies a part, beyond which one copy through a temporary


class Parts:
    """One list read in parts (spans of `{...},{...}`, cut between records) into one set of
    columns: each part into its own range of them, sized from the bytes per record of the
    part's first records, the ranges then closed up in place. Reading the parts in
    separate columns and concatenating them copied every value once more, into fresh
    memory (1M dispatches: ~170 MB, 0.04 s here with memory at hand, up to 1 s where this
    VM first had to get it back from its host). `read(k)` calls may run at once in
    threads (the scan holds no GIL); `result()` once they have all returned."""

    def __init__(self, data, spans: Sequence[tuple[int, int]], values: Sequence[str], objects: Sequence[str] = ()):
        if len(values) + len(objects) > MAX_FIELDS:
            raise ValueError(f"at most {MAX_FIELDS} fields")
        self.kernel = _kernel()
        self.keys, self.fields = _lookup(tuple(values) + tuple(objects))
        self.buf = np.frombuffer(data, np.uint8)
        self.spans = list(spans)
        self.n_values = len(values)
        # Each part's range from its own first records (a list whose records change size
        # along it is sized part by part, as when each part had columns of its own).
        capacities = [int((end - start) / self._bytes_per_record(start, end) * _SPARE) + _TRIAL_RECORDS
                      for start, end in self.spans]
        self.first = np.r_[0, np.cumsum(capacities)].astype(np.int64)
        total = int(self.first[-1])
        # Zeroed pages come from the OS as they are first touched: pages no record reaches
        # (the spare room of each range) are never used.
        self.out = np.zeros((self.n_values, total), np.int64)
        self.present = np.zeros(total, np.int64)
        self.counts: list[int | None] = [None] * len(self.spans)
        self.overflow: dict[int, Scanned] = {}  # a part with more records than its range holds
        self.declined = False
        self.closed = False  # result() moves the columns: once only

    def _bytes_per_record(self, start: int, end: int) -> float:
        out = np.zeros((self.n_values, _TRIAL_RECORDS), np.int64)
        present = np.zeros(_TRIAL_RECORDS, np.int64)
        n, at, _status = self.kernel.scan(self.buf, start, end, self.keys, self.fields, out, present, 0, _TRIAL_RECORDS)
        return max((at - start) / n, 1.0) if n else max(end - start, 1)

    def read(self, k: int) -> None:
        start, end = self.spans[k]
        first, last = int(self.first[k]), int(self.first[k + 1])
        n, at, status = self.kernel.scan(self.buf, start, end, self.keys, self.fields, self.out, self.present,
                                         first, last)
        if status == self.kernel.FULL:
            rest = _read_blocks(self.kernel, self.buf, at, end, self.keys, self.fields, self.n_values)
            if rest is None:
                status = self.kernel.UNSUPPORTED
            else:
                self.overflow[k] = rest
        if status == self.kernel.UNSUPPORTED:
            self.declined = True
        self.counts[k] = n

    def result(self) -> Scanned | None:
        if self.closed:
            raise RuntimeError("Parts.result() moves the columns in place: call it once")
        self.closed = True
        if self.declined or any(n is None for n in self.counts):
            return None
        if self.overflow:
            pieces = []
            for k, n in enumerate(self.counts):
                first = int(self.first[k])
                pieces.append(Scanned(list(self.out[:, first:first + n]), self.present[first:first + n]))
                if k in self.overflow:
                    pieces.append(self.overflow[k])
            return _joined(pieces, self.n_values)
        count = 0
        for k, n in enumerate(self.counts):
            first = int(self.first[k])
            # Close the gap left by the parts before, in steps no longer than the gap: copies
            # that do not overlap, which numpy would otherwise make through a temporary; a
            # gap small for the part (many steps) is closed in one copy through one.
            gap = first - count
            if gap and n:
                step = n if gap * _MAX_STEPS < n else gap
                for lo in range(0, n, step):
                    hi = min(lo + step, n)
                    self.out[:, count + lo:count + hi] = self.out[:, first + lo:first + hi]
                    self.present[count + lo:count + hi] = self.present[first + lo:first + hi]
            count += n
        return Scanned(list(self.out[:, :count]), self.present[:count])


def _joined(pieces: list[Scanned], n_values: int) -> Scanned:
    return Scanned([np.concatenate([p.values[f] for p in pieces]) for f in range(n_values)],
                   np.concatenate([p.present for p in pieces]))


def _read_blocks(kernel, buf, start: int, end: int, keys, fields, n_values: int) -> Scanned | None:
    """buf[start:end] read into blocks of their own, each sized from the records before."""
    blocks, at, count = [], start, 0
    while True:
        capacity = int((end - at) / ((at - start) / count) * _SPARE) + _TRIAL_RECORDS if count else _TRIAL_RECORDS
        out = np.zeros((n_values, capacity), np.int64)
        present = np.zeros(capacity, np.int64)
        n, at_next, status = kernel.scan(buf, at, end, keys, fields, out, present, 0, capacity)
        if status == kernel.UNSUPPORTED:
            return None
        blocks.append(Scanned(list(out[:, :n]), present[:n]))
        count += n
        if status == kernel.DONE:
            break
        at = at_next
    return _joined(blocks, n_values)
