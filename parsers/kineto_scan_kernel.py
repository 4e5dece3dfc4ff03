"""The compiled loop of `kineto_scan`: one pass over the records of a Kineto `traceEvents`
array, keeping per record what the parser's ordinary path stores (see kineto_scan.py for
what "ordinary" means and who decides). Imported lazily; numba compiles it once (cached
on disk). The whole array is checked as JSON on the way (strings, escapes, UTF-8,
numbers, nesting): where anything is not valid JSON, or not an object where a record is
expected, the scan stops with UNSUPPORTED and the parser reads the input another way,
which words the error. Every byte read is bounds-checked."""
from __future__ import annotations

import numba
import numpy as np

from .json_scan_kernel import _space
from .kineto_read import EXACT_FLOAT_LIMIT

DONE, FULL, UNSUPPORTED, TOO_MANY_STRINGS, CLOSED = 0, 1, 2, 3, 4
MAX_DEPTH = 64

# Rows of `ints` and bits of `bits`: the record's fields read as integers.
PID, TID, TS, DUR, CORRELATION, EXTERNAL_ID, EXTERNAL_ID_LOWER, DEVICE, STREAM = range(9)
N_INTS = 9
ARGS = 9          # bit: args is an object (span in args_lo/args_hi)
LEFTOVER = 10      # bit: something the Python path must judge (odd key, value or duplicate)
# What a number can be read as (flags of _number).
VALID, IS_INT, NS_OK = 1, 2, 4

_TIME_INT_LIMIT = 9_000_000_000_000_000  # |us| below it: us * 1000 fits int64
_TIME_FLOAT_LIMIT = int(EXACT_FLOAT_LIMIT) - 1  # a double keeps 3 decimals of a us below it

# The helpers run without numba's runtime (NRT). With it, every call increfs and decrefs
# each array argument with an atomic instruction, dozens of calls per record: over half
# of the scan's time (1M-event tile, one thread: 1.26-1.43 s -> 0.46-0.58 s without).
# They allocate nothing, so they need no runtime; `scan` keeps it for its stack.
_helper = numba.njit(cache=True, nogil=True, _nrt=False)


@_helper
def _ws(buf, i, end):  # pragma: no cover - compiled
    while i < end and _space(buf[i]):
        i += 1
    return i


@_helper
def _hex(c):  # pragma: no cover - compiled
    return (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102)


# Bytes inside a string: 0 plain, 1 the closing quote, 2 anything else (a backslash, a
# control character, a UTF-8 lead byte): one table lookup per plain byte.
_IN_STRING = np.zeros(256, np.uint8)
_IN_STRING[:32] = 2
_IN_STRING[34] = 1
_IN_STRING[92] = 2
_IN_STRING[128:] = 2
_ONE = np.uint64(1)


@_helper
def _string_end(buf, i, end):  # pragma: no cover - compiled
    """From just after an opening quote: (index of the closing quote, escaped), or
    (-1, False) where the string is not valid JSON text (control character, bad escape,
    invalid UTF-8) or does not end before `end`."""
    escaped = False
    stop = np.uint64(end)
    while True:
        # Unsigned: numba then skips its negative-index check (plain bytes go ~2x faster).
        at = np.uint64(i)
        while at < stop and _IN_STRING[buf[at]] == 0:
            at += _ONE
        if at >= stop:
            return -1, False
        i = np.int64(at)
        c = buf[i]
        if c == 34:
            return i, escaped
        if c < 32:
            return -1, False
        if c == 92:
            escaped = True
            if i + 1 >= end:
                return -1, False
            e = buf[i + 1]
            if e == 117:  # \uXXXX
                if i + 5 >= end:
                    return -1, False
                for k in range(2, 6):
                    if not _hex(buf[i + k]):
                        return -1, False
                i += 6
                continue
            if e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116:
                i += 2
                continue
            return -1, False
        # UTF-8: a lead byte and its continuation bytes, no overlong form or surrogate.
        if 0xC2 <= c <= 0xDF:
            n, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            n, lo, hi = 2, 0xA0, 0xBF
        elif 0xE1 <= c <= 0xEC or 0xEE <= c <= 0xEF:
            n, lo, hi = 2, 0x80, 0xBF
        elif c == 0xED:
            n, lo, hi = 2, 0x80, 0x9F
        elif c == 0xF0:
            n, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            n, lo, hi = 3, 0x80, 0xBF
        elif c == 0xF4:
            n, lo, hi = 3, 0x80, 0x8F
        else:
            return -1, False
        if i + n >= end:
            return -1, False
        second = buf[i + 1]
        if second < lo or second > hi:
            return -1, False
        for k in range(2, n + 1):
            if buf[i + k] < 0x80 or buf[i + k] > 0xBF:
                return -1, False
        i += n + 1


@_helper
def _number(buf, i, end):  # pragma: no cover - compiled
    """A JSON number at i: (index after it, flags, integer value, nanoseconds).

    IS_INT: no fraction or exponent, within int64 (value). NS_OK: read as microseconds,
    its nanoseconds are exact as the Python path (kineto_read.micros_to_ns) gives them:
    an integer below 9e15, or a number without exponent below 2**43 with at most 3
    decimals once trailing zeros are dropped (the nearest double keeps them). Other
    valid numbers are VALID only: the Python path judges them."""
    negative = False
    if i < end and buf[i] == 45:
        negative = True
        i += 1
    if i >= end or buf[i] < 48 or buf[i] > 57:
        return -1, 0, np.int64(0), np.int64(0)
    value = np.int64(0)
    big = False
    if buf[i] == 48:
        i += 1
        if i < end and 48 <= buf[i] <= 57:  # a leading zero: not JSON
            return -1, 0, np.int64(0), np.int64(0)
    else:
        while i < end and 48 <= buf[i] <= 57:
            if value >= 922337203685477580:  # int64 ends at 9223372036854775807
                if value > 922337203685477580 or buf[i] > 55:
                    big = True
            if not big:
                value = value * 10 + (buf[i] - 48)
            i += 1
    fraction = False
    millis = np.int64(0)  # the first three decimals
    decimals = 0
    excess = False        # a non-zero decimal after the third
    if i < end and buf[i] == 46:
        fraction = True
        i += 1
        if i >= end or buf[i] < 48 or buf[i] > 57:
            return -1, 0, np.int64(0), np.int64(0)
        while i < end and 48 <= buf[i] <= 57:
            if decimals < 3:
                millis = millis * 10 + (buf[i] - 48)
                decimals += 1
            elif buf[i] != 48:
                excess = True
            i += 1
    exponent = False
    if i < end and (buf[i] == 101 or buf[i] == 69):
        exponent = True
        i += 1
        if i < end and (buf[i] == 43 or buf[i] == 45):
            i += 1
        if i >= end or buf[i] < 48 or buf[i] > 57:
            return -1, 0, np.int64(0), np.int64(0)
        while i < end and 48 <= buf[i] <= 57:
            i += 1
    if i >= end:  # a number never ends a record list's bytes: truncated
        return -1, 0, np.int64(0), np.int64(0)
    flags = VALID
    ns = np.int64(0)
    if not big and not exponent:
        if not fraction:
            flags |= IS_INT
            if value < _TIME_INT_LIMIT:
                flags |= NS_OK
                ns = value * 1000
        elif not excess and value < _TIME_FLOAT_LIMIT:
            while decimals < 3:
                millis *= 10
                decimals += 1
            flags |= NS_OK
            ns = value * 1000 + millis
    if negative:
        value = -value
        ns = -ns
    return i, flags, value, ns


@_helper
def _literal(buf, i, end):  # pragma: no cover - compiled
    """true / false / null at i: the index after it, or -1."""
    c = buf[i]
    if c == 116 and i + 4 <= end and buf[i + 1] == 114 and buf[i + 2] == 117 and buf[i + 3] == 101:
        return i + 4
    if (c == 102 and i + 5 <= end and buf[i + 1] == 97 and buf[i + 2] == 108 and buf[i + 3] == 115
            and buf[i + 4] == 101):
        return i + 5
    if c == 110 and i + 4 <= end and buf[i + 1] == 117 and buf[i + 2] == 108 and buf[i + 3] == 108:
        return i + 4
    return -1


@_helper
def _key_then_colon(buf, i, end):  # pragma: no cover - compiled
    """At an object key's opening quote: (index after the `:`, key start, key end,
    escaped), or i = -1 where that is not there."""
    if i >= end or buf[i] != 34:
        return -1, 0, 0, False
    close, escaped = _string_end(buf, i + 1, end)
    if close < 0:
        return -1, 0, 0, False
    j = _ws(buf, close + 1, end)
    if j >= end or buf[j] != 58:
        return -1, 0, 0, False
    return j + 1, i + 1, close, escaped


@_helper
def _object_start(buf, i, end):  # pragma: no cover - compiled
    """At an object's `{`: (index of its first key, False), or (index after it, True) for
    `{}`; (-1, False) where the input ends."""
    i = _ws(buf, i + 1, end)
    if i >= end:
        return -1, False
    if buf[i] == 125:
        return i + 1, True
    return i, False


@_helper
def _member_value(buf, i, end):  # pragma: no cover - compiled
    """At a member's key: (index of its value, key start, key end, escaped), or i = -1."""
    i, klo, khi, escaped = _key_then_colon(buf, i, end)
    if i >= 0:
        i = _ws(buf, i, end)
        if i >= end:
            i = -1
    return i, klo, khi, escaped


@_helper
def _next_member(buf, i, end):  # pragma: no cover - compiled
    """After an object member's value: (index of the next key, False) after a `,`;
    (index after the `}`, True) at the object's end; (-1, False) otherwise."""
    i = _ws(buf, i, end)
    if i < end and buf[i] == 44:
        return _ws(buf, i + 1, end), False
    if i < end and buf[i] == 125:
        return i + 1, True
    return -1, False


@_helper
def _skip(buf, i, end, stack):  # pragma: no cover - compiled
    """Past one JSON value starting at i (space already skipped), checking it: the index
    after it, or -1."""
    depth = 0
    while True:
        i = _ws(buf, i, end)
        if i >= end:
            return -1
        c = buf[i]
        closed = False  # a value (or an empty container) just ended
        if c == 123 or c == 91:
            if depth >= MAX_DEPTH:
                return -1
            i = _ws(buf, i + 1, end)
            if i >= end:
                return -1
            if (c == 123 and buf[i] == 125) or (c == 91 and buf[i] == 93):
                i += 1
                closed = True
            else:
                stack[depth] = c
                depth += 1
                if c == 123:
                    i, _, _, _ = _key_then_colon(buf, i, end)
                    if i < 0:
                        return -1
                continue
        elif c == 34:
            close, _ = _string_end(buf, i + 1, end)
            if close < 0:
                return -1
            i = close + 1
            closed = True
        elif c == 116 or c == 102 or c == 110:
            i = _literal(buf, i, end)
            if i < 0:
                return -1
            closed = True
        else:
            i, flags, _, _ = _number(buf, i, end)
            if i < 0:
                return -1
            closed = True
        while closed:
            if depth == 0:
                return i
            i = _ws(buf, i, end)
            if i >= end:
                return -1
            c = buf[i]
            top = stack[depth - 1]
            if c == 44:
                i = _ws(buf, i + 1, end)
                if top == 123:
                    i, _, _, _ = _key_then_colon(buf, i, end)
                    if i < 0:
                        return -1
                closed = False
            elif (top == 123 and c == 125) or (top == 91 and c == 93):
                i += 1
                depth -= 1
            else:
                return -1


@_helper
def _intern(buf, lo, hi, slots, codes, spans, count):  # pragma: no cover - compiled
    """The code of the string buf[lo:hi] (raw, escapes as written): the same bytes get
    the same code. `slots` is an open-addressing table of codes + 1 (0 empty) a power of
    two long; spans[code] = (start, length) of the first occurrence; count[0] codes so far.
    -1 where the table is full."""
    h = np.uint64(0xCBF29CE484222325)
    prime = np.uint64(0x100000001B3)
    for k in range(np.uint64(lo), np.uint64(hi)):
        h = (h ^ np.uint64(buf[k])) * prime
    mask = slots.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    n = hi - lo
    while slots[slot] != 0:
        code = slots[slot] - 1
        if codes[code] == h and spans[code, 1] == n and _same_as(buf, lo, buf, spans[code, 0], n):
            return code
        slot = (slot + 1) & mask
    code = count[0]
    if code >= spans.shape[0] or 2 * code >= slots.shape[0]:
        return -1
    count[0] = code + 1
    slots[slot] = code + 1
    codes[code] = h
    spans[code, 0] = lo
    spans[code, 1] = n
    return code


@_helper
def _top_key(buf, lo, hi):  # pragma: no cover - compiled
    """0..8 for ph cat name pid tid ts dur id args; -1 for any other key."""
    n = hi - lo
    a = buf[lo] if n else 0
    b = buf[lo + 1] if n > 1 else 0
    if n == 2:
        if a == 112 and b == 104:
            return 0  # ph
        if a == 116 and b == 115:
            return 5  # ts
        if a == 105 and b == 100:
            return 7  # id
    elif n == 3:
        c = buf[lo + 2]
        if a == 99 and b == 97 and c == 116:
            return 1  # cat
        if a == 112 and b == 105 and c == 100:
            return 3  # pid
        if a == 116 and b == 105 and c == 100:
            return 4  # tid
        if a == 100 and b == 117 and c == 114:
            return 6  # dur
    elif n == 4:
        if a == 110 and b == 97 and buf[lo + 2] == 109 and buf[lo + 3] == 101:
            return 2  # name
        if a == 97 and b == 114 and buf[lo + 2] == 103 and buf[lo + 3] == 115:
            return 8  # args
    return -1


@_helper
def _args_key(buf, lo, hi, names, name_ends):  # pragma: no cover - compiled
    """The row of `ints` for an args key (CORRELATION .. STREAM), or -1."""
    n = hi - lo
    for k in range(name_ends.shape[0] - 1):
        a, b = name_ends[k], name_ends[k + 1]
        if b - a == n and _same_as(buf, lo, names, a, n):
            return CORRELATION + k
    return -1


@_helper
def _same_as(buf, lo, names, a, n):  # pragma: no cover - compiled
    for k in range(n):
        if buf[lo + k] != names[a + k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def scan(buf, start, end, arg_names, arg_name_ends, slots, codes, spans, count,
         rec_lo, rec_hi, ph, cat, name, ints, bits, args_lo, args_hi):  # pragma: no cover - compiled
    """Records from buf[start:end] (`{...},{...}`: no surrounding brackets), one row each
    in the output arrays, as long as they have room. Strings of cat and name are interned
    (`_intern`). Returns (records, position, status): DONE at `end`; FULL when the
    outputs have no room (position = the next record); UNSUPPORTED at the first byte that
    is not valid JSON or not an object where a record is; TOO_MANY_STRINGS where the
    intern table is full; CLOSED at a `]` after a record (position: the `]`)."""
    cap = rec_lo.shape[0]
    stack = np.empty(MAX_DEPTH, np.uint8)
    n = 0
    i = start
    between = False
    while i < end:
        c = buf[i]
        if _space(c):
            i += 1
            continue
        if between:
            if c == 93:  # the array's `]` before `end`: where it was located is not its end
                return n, i, CLOSED
            if c != 44:
                return n, i, UNSUPPORTED
            between = False
            i += 1
            continue
        if c != 123:
            return n, i, UNSUPPORTED
        if n >= cap:
            return n, i, FULL
        rec_lo[n] = i
        ph[n] = 0
        cat[n] = -1
        name[n] = -1
        b = np.int64(0)
        seen = 0  # top-level keys met (bits of _top_key)
        i, empty = _object_start(buf, i, end)
        if i < 0:
            return n, rec_lo[n], UNSUPPORTED
        if not empty:
            while True:
                i, klo, khi, escaped = _member_value(buf, i, end)
                if i < 0:
                    return n, rec_lo[n], UNSUPPORTED
                key = -1 if escaped else _top_key(buf, klo, khi)
                if escaped:
                    b |= np.int64(1) << LEFTOVER
                if key >= 0:
                    if seen & (1 << key):
                        b |= np.int64(1) << LEFTOVER
                    seen |= 1 << key
                c = buf[i]
                if key == 0 or key == 1 or key == 2:  # ph, cat, name: strings
                    if c != 34:
                        b |= np.int64(1) << LEFTOVER
                        i = _skip(buf, i, end, stack)
                    else:
                        close, esc = _string_end(buf, i + 1, end)
                        if close < 0:
                            return n, i, UNSUPPORTED
                        if key == 0:
                            if close == i + 2 and buf[i + 1] < 128 and buf[i + 1] != 92:
                                ph[n] = buf[i + 1]
                            else:
                                b |= np.int64(1) << LEFTOVER
                        else:
                            code = _intern(buf, i + 1, close, slots, codes, spans, count)
                            if code < 0:
                                return n, i, TOO_MANY_STRINGS
                            if key == 1:
                                cat[n] = code
                            else:
                                name[n] = code
                        i = close + 1
                elif key >= 3 and key <= 6:  # pid, tid, ts, dur: numbers
                    if c == 45 or (48 <= c <= 57):
                        i, flags, value, ns = _number(buf, i, end)
                        if i < 0:
                            return n, rec_lo[n], UNSUPPORTED
                        row = key - 3
                        if row <= TID:
                            if flags & IS_INT:
                                ints[row, n] = value
                                b |= np.int64(1) << row
                            else:
                                b |= np.int64(1) << LEFTOVER
                        elif flags & NS_OK:
                            ints[row, n] = ns
                            b |= np.int64(1) << row
                    else:
                        if key == 3 or key == 4:  # pid, tid: integers on the ordinary path
                            b |= np.int64(1) << LEFTOVER
                        i = _skip(buf, i, end, stack)
                elif key == 8:  # args
                    if c != 123:
                        b |= np.int64(1) << LEFTOVER
                        i = _skip(buf, i, end, stack)
                    else:
                        args_lo[n] = i
                        b |= np.int64(1) << ARGS
                        i, empty = _object_start(buf, i, end)
                        if i < 0:
                            return n, rec_lo[n], UNSUPPORTED
                        if not empty:
                            while True:
                                i, alo, ahi, aesc = _member_value(buf, i, end)
                                if i < 0:
                                    return n, rec_lo[n], UNSUPPORTED
                                row = -1 if aesc else _args_key(buf, alo, ahi, arg_names, arg_name_ends)
                                if aesc:
                                    b |= np.int64(1) << LEFTOVER
                                c = buf[i]
                                if row >= 0:
                                    if b & (np.int64(1) << row):
                                        b |= np.int64(1) << LEFTOVER
                                    if c == 45 or (48 <= c <= 57):
                                        i, flags, value, ns = _number(buf, i, end)
                                        if i < 0:
                                            return n, rec_lo[n], UNSUPPORTED
                                        if flags & IS_INT:
                                            ints[row, n] = value
                                            b |= np.int64(1) << row
                                        else:
                                            b |= np.int64(1) << LEFTOVER
                                    elif c == 110:  # null: as if absent
                                        i = _literal(buf, i, end)
                                    else:
                                        b |= np.int64(1) << LEFTOVER
                                        i = _skip(buf, i, end, stack)
                                else:
                                    i = _skip(buf, i, end, stack)
                                if i >= 0:
                                    i, closed = _next_member(buf, i, end)
                                if i < 0:
                                    return n, rec_lo[n], UNSUPPORTED
                                if closed:
                                    break
                        args_hi[n] = i
                else:
                    i = _skip(buf, i, end, stack)
                if i >= 0:
                    i, closed = _next_member(buf, i, end)
                if i < 0:
                    return n, rec_lo[n], UNSUPPORTED
                if closed:
                    break
        rec_hi[n] = i
        bits[n] = b
        n += 1
        between = True
    if n and not between:  # a `,` after the last record
        return n, i, UNSUPPORTED
    return n, i, DONE


@numba.njit(cache=True, nogil=True)
def minified(buf, lo, hi, out, offsets):  # pragma: no cover - compiled
    """Each span buf[lo[k]:hi[k]] (valid JSON, checked by `scan`) without the spaces
    between tokens, one after the other into `out`; offsets[k + 1] its end. Returns
    the bytes written."""
    at = 0
    offsets[0] = 0
    for k in range(lo.shape[0]):
        i = lo[k]
        e = hi[k]
        inside = False
        while i < e:
            c = buf[i]
            if inside:
                out[at] = c
                at += 1
                if c == 92:
                    out[at] = buf[i + 1]
                    at += 1
                    i += 2
                    continue
                if c == 34:
                    inside = False
            elif c == 34:
                inside = True
                out[at] = c
                at += 1
            elif not _space(c):
                out[at] = c
                at += 1
            i += 1
        offsets[k + 1] = at
    return at
