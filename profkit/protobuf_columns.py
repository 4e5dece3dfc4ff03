"""Many protobuf messages encoded at once, field by field over numpy columns.

The timeline writes a TracePacket per slice begin and end: ~2M packets for a 1M-event
trace, which as one protobuf object each took ~6 s of the export's 8. Here every field
is written for all rows of a shape in a few numpy operations. The bytes are protobuf's
wire format as the library writes it (fields in number order, repeated scalars unpacked,
as the perfetto protos, proto2, declare them); tests/test_protobuf_columns.py decodes
them with the protobuf library and compares with messages it built.

A message is a list of fields in field-number order, each a column over the same rows:
`Varint`, `Fixed64s` (a repeated fixed64, any count a row), `Text` (bytes), `Constant`
(the same bytes in every row), `Message` (nested). A field given a `present` mask is
absent (0 bytes) in the other rows. `encode` writes rows of several shapes (groups)
into one buffer in row order.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

_VARINT, _FIXED64, _LEN = 0, 1, 2
# The smallest value of each varint length from 2 bytes on.
_THRESHOLDS = np.array([1 << (7 * k) for k in range(1, 10)], np.uint64)
_SMALL_TABLE = 64  # texts written table entry by table entry up to this many entries

Sizes = "np.ndarray | int"  # bytes per row; an int where every row has the same


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of each value as a varint (negative int64 as their 64-bit two's complement: 10)."""
    return np.searchsorted(_THRESHOLDS, values.astype(np.uint64, copy=False), side="right") + 1


def varint(value: int) -> bytes:
    """One varint (a negative value as its 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | _VARINT) + varint(value)


def text_field(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | _LEN) + varint(len(data)) + data


def _tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def _put_bytes(out: np.ndarray, at: np.ndarray, data: bytes) -> None:
    """The same bytes at every position of `at`, a byte at a time (no row x byte index array)."""
    for j, byte in enumerate(data):
        out[at + j] = byte


def _put_varints(out: np.ndarray, at: np.ndarray, values: np.ndarray, sizes: np.ndarray) -> None:
    v = values.astype(np.uint64, copy=False)
    for k in range(int(sizes.max(initial=0))):
        rows = slice(None) if k == 0 else sizes > k
        chunk = ((v[rows] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        chunk[sizes[rows] > k + 1] |= 0x80
        out[at[rows] + k] = chunk


def _where(present: np.ndarray | None, sizes):
    return sizes if present is None else np.where(present, sizes, 0)


def _put_head(out, at, present, tag: bytes, values: np.ndarray, value_sizes: np.ndarray) -> None:
    """A tag and a varint (a value, or a message's length) in the rows where present."""
    rows = present if present is not None else slice(None)
    at = at[rows]
    _put_bytes(out, at, tag)
    _put_varints(out, at + len(tag), values[rows], value_sizes[rows])


class Field(ABC):
    """One field of every row: `sizes()` its bytes per row (0 where absent; an int when the
    same in every row), `write(out, at)` its bytes at `at` (each row's position)."""

    @abstractmethod
    def sizes(self):
        ...

    @abstractmethod
    def write(self, out: np.ndarray, at: np.ndarray) -> None:
        ...


class Constant(Field):
    """The same encoded field (`varint_field`, `text_field`) in every row where present."""

    def __init__(self, encoded: bytes, present: np.ndarray | None = None):
        self.encoded = encoded
        self.present = present
        self._sizes = _where(present, len(encoded))

    def sizes(self):
        return self._sizes

    def write(self, out, at) -> None:
        _put_bytes(out, at if self.present is None else at[self.present], self.encoded)


class Varint(Field):
    """An integer field (uint64, int64 or enum; not sint, which zigzags)."""

    def __init__(self, number: int, values: np.ndarray, present: np.ndarray | None = None):
        self.tag = _tag(number, _VARINT)
        self.values = np.asarray(values)
        self.present = present
        self._value_sizes = varint_sizes(self.values)
        self._sizes = _where(present, len(self.tag) + self._value_sizes)

    def sizes(self):
        return self._sizes

    def write(self, out, at) -> None:
        _put_head(out, at, self.present, self.tag, self.values, self._value_sizes)


class Fixed64s(Field):
    """A repeated fixed64 (or double, as its bits) field: `counts[r]` values for row r,
    `values` all of them in row order."""

    def __init__(self, number: int, counts: np.ndarray, values: np.ndarray):
        self.tag = _tag(number, _FIXED64)
        self.counts = np.asarray(counts, np.int64)
        self.values = np.asarray(values).astype(np.uint64, copy=False)
        self._sizes = self.counts * (len(self.tag) + 8)

    def sizes(self):
        return self._sizes

    def write(self, out, at) -> None:
        if not len(self.values):
            return
        row = np.repeat(np.arange(len(self.counts)), self.counts)
        first = np.cumsum(self.counts) - self.counts  # each row's first value
        pos = at[row] + (np.arange(len(row)) - first[row]) * (len(self.tag) + 8)
        _put_bytes(out, pos, self.tag)
        pos += len(self.tag)
        for b in range(8):
            out[pos + b] = ((self.values >> np.uint64(8 * b)) & np.uint64(0xFF)).astype(np.uint8)


class Text(Field):
    """A string or bytes field: row r holds table[codes[r]]."""

    def __init__(self, number: int, table: Sequence[bytes], codes: np.ndarray, present: np.ndarray | None = None):
        self.tag = _tag(number, _LEN)
        self.table = list(table)
        lengths = np.array([len(t) for t in self.table], np.int64)
        self.codes = np.asarray(codes, np.int64)
        self.present = present
        rows = self.codes if present is None else self.codes[present]
        self.lengths = lengths[rows] if len(lengths) else rows
        self.starts = (np.cumsum(lengths) - lengths)[rows] if len(lengths) else rows
        self._length_sizes = varint_sizes(self.lengths)
        sizes = len(self.tag) + self._length_sizes + self.lengths
        if present is None:
            self._sizes = sizes
        else:
            self._sizes = np.zeros(len(present), np.int64)
            self._sizes[present] = sizes

    def sizes(self):
        return self._sizes

    def write(self, out, at) -> None:
        at = at if self.present is None else at[self.present]
        _put_bytes(out, at, self.tag)
        at = at + len(self.tag)
        _put_varints(out, at, self.lengths, self._length_sizes)
        at = at + self._length_sizes
        if len(self.table) <= _SMALL_TABLE:
            codes = self.codes if self.present is None else self.codes[self.present]
            for code, entry in enumerate(self.table):
                if entry:
                    _put_bytes(out, at[codes == code] if len(self.table) > 1 else at, entry)
            return
        total = int(self.lengths.sum())
        if total:
            blob = np.frombuffer(b"".join(self.table), np.uint8)
            row = np.repeat(np.arange(len(self.lengths)), self.lengths)
            within = np.arange(total) - (np.cumsum(self.lengths) - self.lengths)[row]
            out[at[row] + within] = blob[self.starts[row] + within]


class Message(Field):
    """A nested message of `fields` (in field-number order) over `rows` rows. Where a
    `present` mask leaves it out of a row, its fields must be absent there too."""

    def __init__(self, number: int, fields: Sequence[Field], rows: int, present: np.ndarray | None = None):
        self.tag = _tag(number, _LEN)
        self.fields = list(fields)
        self.present = present
        inner = np.zeros(rows, np.int64)
        for field in self.fields:
            inner += field.sizes()
        if present is not None:
            outside = ~present
            if any(np.any(np.broadcast_to(field.sizes(), (rows,))[outside]) for field in self.fields):
                raise ValueError("a field is present where its message is not")
        self._inner = inner
        self._length_sizes = varint_sizes(inner)
        self._sizes = _where(present, len(self.tag) + self._length_sizes + inner)

    def sizes(self):
        return self._sizes

    def write(self, out, at) -> None:
        _put_head(out, at, self.present, self.tag, self._inner, self._length_sizes)
        write_fields(out, at + len(self.tag) + self._length_sizes, self.fields)


def write_fields(out: np.ndarray, at: np.ndarray, fields: Sequence[Field]) -> None:
    for field in fields:
        field.write(out, at)
        at = at + field.sizes()


def encode(rows: int, groups: Sequence[tuple[np.ndarray, Sequence[Field]]]) -> tuple[bytes, np.ndarray]:
    """Rows of several shapes in one buffer: each group is (its rows' positions among the
    `rows`, the fields of its messages over those rows); every row in one group. Returns
    the bytes and each row's start in them."""
    sizes = np.zeros(rows, np.int64)
    for positions, fields in groups:
        for field in fields:
            sizes[positions] += field.sizes()
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), np.uint8)
    for positions, fields in groups:
        write_fields(out, starts[positions], fields)
    return out.tobytes(), starts
