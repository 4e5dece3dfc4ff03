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
                        np.zeros((1, 1), np.int64), np.zeros(1, np.int64))
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
    presence alone is wanted. Several reads may run at once in threads (the scan holds no GIL)."""
    kernel = _kernel()
    if kernel is None:
        return None
    if len(values) + len(objects) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} fields")
    keys, fields = _lookup(tuple(values) + tuple(objects))
    buf = np.frombuffer(data, np.uint8)
    blocks = []
    at, count, capacity = start, 0, 64
    while True:
        out = np.zeros((len(values), capacity), np.int64)
        present = np.empty(capacity, np.int64)
        n, at_next, status = kernel.scan(buf, at, end, keys, fields, out, present)
        if status == kernel.UNSUPPORTED:
            return None
        if status == kernel.FULL and not blocks and capacity == 64:
            # A first small block tells the bytes per record; the list is then read
            # again into one block sized from it (10% spare), so usually not copied.
            capacity = int((end - start) / ((at_next - start) / n) * 1.1) + 64
            continue
        blocks.append((out[:, :n], present[:n]))
        count += n
        if status == kernel.DONE:
            break
        at = at_next
        capacity = int((end - at) / ((at - start) / count) * 1.1) + 64
    if len(blocks) == 1:
        out, present = blocks[0]
        return Scanned(list(out), present)
    return Scanned([np.concatenate([b[0][f] for b in blocks]) for f in range(len(values))],
                   np.concatenate([b[1] for b in blocks]))
