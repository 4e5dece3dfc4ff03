"""The compiled loop of `json_scan`: one pass over a list of compact JSON records whose
values are integers or objects of them (rocprofv3's buffer records), storing the
integers of the wanted fields. Imported lazily by `json_scan`; numba compiles it once
(cached on disk). Every byte read is bounds-checked: a truncated list stops the scan,
it never reads past `end`."""
from __future__ import annotations

import numba
import numpy as np

DONE, FULL, UNSUPPORTED = 0, 1, 2
MAX_DEPTH = 16


@numba.njit(cache=True, nogil=True)
def _space(c):  # pragma: no cover - compiled
    return c == 32 or c == 10 or c == 13 or c == 9


@numba.njit(cache=True, nogil=True)
def scan(buf, start, end, keys, fields, out, present, first, last):  # pragma: no cover - compiled
    """Records from buf[start:end] (`{...},{...}`: no surrounding brackets) into columns
    first .. last-1 of `out` (out[field, first + record]) and of `present` (bit f set where
    field f was there): the parts of one list read side by side share one set of columns.

    A key's path (its parents' keys and its own) is hashed (FNV-1a, 64 bits, with a
    `.` before each key) and looked up in `keys` (open addressing, a power of two long,
    0 = empty); `fields[slot]` is the field's index. Keys not wanted are skipped, with
    their values if integers, strings or objects. Returns (records, position, status):
    DONE at `end`; FULL when columns up to `last` are used (position = the next record); UNSUPPORTED
    at the first byte the scan does not take (a float, array, true/false/null, an
    escaped key, a wanted string, an integer beyond int64, malformed JSON)."""
    mask = keys.shape[0] - 1
    cap = last - first
    prime = np.uint64(0x100000001B3)
    root = np.uint64(0xCBF29CE484222325)
    stack = np.empty(MAX_DEPTH, np.uint64)
    n_values = out.shape[0]
    n = 0
    i = start
    between = False  # after a record: a `,` comes before the next
    while i < end:
        c = buf[i]
        if _space(c):
            i += 1
            continue
        if between:
            if c != 44:
                return n, i, UNSUPPORTED
            between = False
            i += 1
            continue
        if c != 123:  # a record is an object
            return n, i, UNSUPPORTED
        if n >= cap:
            return n, i, FULL
        record_start = i
        i += 1
        depth = 0
        stack[0] = root
        bits = np.int64(0)
        expect_key = True  # after `{` or `,`: a key (or, after `{`, `}`)
        comma = False
        while True:
            if i >= end:
                return n, record_start, UNSUPPORTED
            c = buf[i]
            if _space(c):
                i += 1
                continue
            if c == 125:  # `}`
                if comma:
                    return n, i, UNSUPPORTED
                i += 1
                if depth == 0:
                    break
                depth -= 1
                expect_key = False
                continue
            if c == 44:
                if expect_key:
                    return n, i, UNSUPPORTED
                expect_key = True
                comma = True
                i += 1
                continue
            if c != 34 or not expect_key:
                return n, i, UNSUPPORTED
            expect_key = False
            comma = False
            i += 1
            h = (stack[depth] ^ np.uint64(46)) * prime
            while True:
                if i >= end:
                    return n, record_start, UNSUPPORTED
                c = buf[i]
                if c == 34:
                    break
                if c == 92:
                    return n, i, UNSUPPORTED
                h = (h ^ np.uint64(c)) * prime
                i += 1
            i += 1
            while i < end and _space(buf[i]):
                i += 1
            if i >= end or buf[i] != 58:  # `:`
                return n, i, UNSUPPORTED
            i += 1
            while i < end and _space(buf[i]):
                i += 1
            if i >= end:
                return n, record_start, UNSUPPORTED
            slot = np.int64(h & np.uint64(mask))
            field = -1
            while keys[slot] != 0:
                if keys[slot] == h:
                    field = fields[slot]
                    break
                slot = (slot + 1) & mask
            c = buf[i]
            if c == 123:  # an object: its keys' paths start from this one
                if 0 <= field < n_values:
                    return n, i, UNSUPPORTED
                depth += 1
                if depth >= MAX_DEPTH:
                    return n, i, UNSUPPORTED
                stack[depth] = h
                if field >= 0:
                    bits |= np.int64(1) << field
                expect_key = True
                i += 1
                continue
            if c == 34:  # a string: skipped where not wanted
                if field >= 0:
                    return n, i, UNSUPPORTED
                i += 1
                while True:
                    if i >= end:
                        return n, record_start, UNSUPPORTED
                    c = buf[i]
                    if c == 92:
                        i += 2
                        continue
                    i += 1
                    if c == 34:
                        break
                continue
            negative = c == 45
            if negative:
                i += 1
                if i >= end:
                    return n, record_start, UNSUPPORTED
                c = buf[i]
            if c < 48 or c > 57:
                return n, i, UNSUPPORTED
            if c == 48 and i + 1 < end and 48 <= buf[i + 1] <= 57:  # a leading zero: not JSON
                return n, i, UNSUPPORTED
            value = np.int64(0)
            while c >= 48 and c <= 57:
                if value >= 922337203685477580:  # int64 ends at 9223372036854775807
                    if value > 922337203685477580 or c > 55:
                        return n, i, UNSUPPORTED
                value = value * 10 + (c - 48)
                i += 1
                if i >= end:
                    return n, record_start, UNSUPPORTED
                c = buf[i]
            if c == 46 or c == 101 or c == 69:  # a float
                return n, i, UNSUPPORTED
            if field >= n_values:  # an object was wanted here
                return n, i, UNSUPPORTED
            if field >= 0:
                out[field, first + n] = -value if negative else value
                bits |= np.int64(1) << field
        present[first + n] = bits
        n += 1
        between = True
    if n and not between:  # a `,` after the last record
        return n, i, UNSUPPORTED
    return n, i, DONE
