"""The `args` of Kineto records: the few fields the parser reads (decoded in one batch
per chunk into typed structs), and the raw JSON text kept in `events.args`."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from profkit import classify

from .kineto_tables import (COPY_DIRECTIONS, COPY_DIRECTION_ALIASES, DTYPE_BYTES,
                            MEMORY_KINDS)

F = msgspec.field


class Args(msgspec.Struct, gc=False):
    """Fields of `args` the parser reads; everything stays in the raw JSON too."""
    correlation: Any = None
    external_id: Any = F(default=None, name="External id")
    external_id_lower: Any = F(default=None, name="external id")
    device: Any = None
    stream: Any = None
    grid: Any = None
    block: Any = None
    registers: Any = F(default=None, name="registers per thread")
    shared_memory: Any = F(default=None, name="shared memory")
    blocks_per_sm: Any = F(default=None, name="blocks per SM")
    warps_per_sm: Any = F(default=None, name="warps per SM")
    occupancy: Any = F(default=None, name="est. achieved occupancy %")
    bytes: Any = None
    size: Any = None                 # MTIA dma_request
    kind: Any = None                 # ROCm copies: "HtoD"
    direction: Any = None            # MTIA: "DEVICE_TO_HOST"
    collective: Any = F(default=None, name="Collective name")
    in_elems: Any = F(default=None, name="In msg nelems")
    out_elems: Any = F(default=None, name="Out msg nelems")
    group_size: Any = F(default=None, name="Group size")
    dtype: Any = None
    pg_name: Any = F(default=None, name="Process Group Name")
    pg_desc: Any = F(default=None, name="Process Group Description")
    pg_ranks: Any = F(default=None, name="Process Group Ranks")
    seq: Any = F(default=None, name="Seq")
    seq_lower: Any = F(default=None, name="seq")
    name: Any = None                 # M records
    sort_index: Any = None           # M records


EMPTY = Args()
_BATCH = msgspec.json.Decoder(list[Args | None])
_ONE = msgspec.json.Decoder(Args | None)


def decode_batch(raws: list) -> list[Args]:
    """Decode many raw args at once (one call, not one per record)."""
    if not raws:
        return []
    try:
        out = _BATCH.decode(b"[" + b",".join(r or b"null" for r in raws) + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError):
        out = [_decode_one(r) for r in raws]  # some args is not an object
    return [EMPTY if a is None else a for a in out]


def _decode_one(raw) -> Args | None:
    if not raw:
        return None
    try:
        return _ONE.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def raw_text_array(raws: list) -> pa.Array:
    """Raw JSON bytes -> an Arrow string array without a Python str per record."""
    n = len(raws)
    lengths = np.fromiter((len(r) if r else 0 for r in raws), np.int64, n)
    offsets = np.zeros(n + 1, np.int32 if lengths.sum() < 2 ** 31 else np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(r for r in raws if r)
    valid = np.fromiter((bool(r) for r in raws), bool, n)
    typ = pa.binary() if offsets.dtype == np.int32 else pa.large_binary()
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)])
    try:
        return arr.cast(pa.string() if typ == pa.binary() else pa.large_string())
    except pa.ArrowInvalid:
        raise NotUtf8Text from None


class NotUtf8Text(ValueError):
    """Raw JSON values holding bytes that are not UTF-8 (msgspec passes over a raw value
    without checking its text): the parser names the input's first such byte."""


# -- scalar normalisation ------------------------------------------------------------

def as_int(v: Any) -> int | None:
    """int, integral float, or numeric string ("7", "0x0") -> int; else None."""
    if type(v) is int or v is None:
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip(), 0)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                return None
            return int(f) if f.is_integer() else None
    return None


def as_float(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            f = float(v.strip().rstrip("%"))
        except ValueError:
            return None
        return f if f == f and abs(f) != float("inf") else None
    return None


def _dim(v: Any, i: int) -> int | None:
    if type(v) is list and len(v) > i:
        x = v[i]
        return x if type(x) is int else as_int(x)
    return None


# -- side tables ---------------------------------------------------------------------

def kernel_info_row(event_id: int, a: Args) -> dict | None:
    if a.grid is None and a.block is None and a.registers is None:
        return None
    return {
        "event_id": event_id,
        "grid_x": _dim(a.grid, 0), "grid_y": _dim(a.grid, 1), "grid_z": _dim(a.grid, 2),
        "block_x": _dim(a.block, 0), "block_y": _dim(a.block, 1), "block_z": _dim(a.block, 2),
        "registers_per_thread": as_int(a.registers),
        "shared_memory_bytes": as_int(a.shared_memory),
        "blocks_per_sm": as_float(a.blocks_per_sm),
        "warps_per_sm": as_float(a.warps_per_sm),
        "occupancy_pct": as_float(a.occupancy),
    }


_DIRECTION = re.compile(r"\b(" + "|".join(COPY_DIRECTIONS + tuple(COPY_DIRECTION_ALIASES)) + r")\b")
_MEMORIES = re.compile(r"\(\s*(\w+)\s*->\s*(\w+)\s*\)")
# "Memset (Device)"; Intel XPU: "Memset (0 -> DEVICE)" (the value, then the memory).
_MEMSET_TARGET = re.compile(r"\(\s*(?:[^()]*->\s*)?(\w+)\s*\)")


def _canonical_direction(word: str) -> str | None:
    """`HtoD`, ... from a direction word of any vendor's spelling (COPY_DIRECTION_ALIASES)."""
    return word if word in COPY_DIRECTIONS else COPY_DIRECTION_ALIASES.get(word)


def copy_row(event_id: int, kind: str, name: str, a: Args) -> dict:
    nbytes = as_int(a.bytes)
    if nbytes is None:
        nbytes = as_int(a.size)
    direction, src, dst = _named_copy(kind, name)
    for hint in (a.kind, a.direction):
        if direction is None and isinstance(hint, str):
            direction = _canonical_direction(hint)
    return {"event_id": event_id, "bytes": nbytes, "direction": direction,
            "src_memory": src, "dst_memory": dst}


@lru_cache(maxsize=4096)
def _named_copy(kind: str, name: str) -> tuple[str | None, str | None, str | None]:
    """(direction, source memory, destination memory) as a copy's name says them, worked
    out once per name: a trace has a few names for thousands of copies."""
    if kind == "memset":
        m = _MEMSET_TARGET.search(name)
        return "memset", None, MEMORY_KINDS.get(m.group(1).lower()) if m else None
    m = _DIRECTION.search(name)
    direction = _canonical_direction(m.group(1)) if m else None
    m = _MEMORIES.search(name)
    if m:
        return direction, MEMORY_KINDS.get(m.group(1).lower()), MEMORY_KINDS.get(m.group(2).lower())
    return direction, None, None


def collective_row(event_id: int, kernel_name: str, a: Args) -> dict | None:
    if a.collective is None:
        return None
    op = classify.collective_op(str(a.collective))
    if op == "other":
        op = classify.collective_op(kernel_name)
    in_elems, out_elems = as_int(a.in_elems), as_int(a.out_elems)
    dtype = a.dtype if isinstance(a.dtype, str) else None
    size = DTYPE_BYTES.get(dtype.lower()) if dtype else None
    seq = as_int(a.seq) if a.seq is not None else as_int(a.seq_lower)
    return {
        "event_id": event_id, "op": op,
        "bytes": in_elems * size if in_elems is not None and size else None,
        "in_elems": in_elems, "out_elems": out_elems, "dtype": dtype,
        "group_size": as_int(a.group_size), "group_ranks": _ranks(a.pg_ranks),
        "process_group": None if a.pg_name is None else str(a.pg_name),
        "process_group_desc": None if a.pg_desc is None else str(a.pg_desc),
        "seq": seq,
    }


def _ranks(v: Any) -> str | None:
    """"[0, 1]" (Kineto writes a string) or a list -> a JSON list text."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return v
    return json.dumps(v)
