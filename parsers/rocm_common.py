"""What the rocprof parsers (v1, rocprofv3 CSV and JSON, rocpd) share: agents -> devices,
copy kinds -> directions, columns found by header name, launch geometry, and building
the `args` JSON of many rows at once.

Conventions every rocprof parser follows (documented once, here):

- Device ids in rocprof outputs are HSA node ids, which count CPU agents first (an
  MI300A's first GPU is node 4). `events.device` is the GPU *ordinal*: the index of the
  agent among GPU agents sorted by node id; `devices.node_id` keeps the node id.
- rocprof reports a launch's grid in work-items, CUDA (and the store) in blocks:
  `kernel_info.grid_*` = ceil(grid work-items / workgroup size) per axis; the raw
  work-item counts are kept in `args` (`grid_size_*`).
- `kernel_info.registers_per_thread` is the arch VGPR count; accumulation VGPRs and
  SGPRs go to `args`. LDS per workgroup is `shared_memory_bytes`; scratch is in `args`.
  The rocprofv3 and rocpd parsers do not repeat in `args` what a `kernel_info` column holds
  as it is (workgroup size, VGPRs, LDS): each costs time per dispatch as JSON.
- `events.stream` is the HIP stream id where the input records one, else the HSA queue.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from profkit import classify
from profkit.errors import TraceError

VENDOR = "amd"

# --- copies ---------------------------------------------------------------

# Copy kinds as the different tools name them -> the store's direction.
_COPY_DIRECTIONS = {
    "host_to_device": "HtoD", "hosttodevice": "HtoD", "htod": "HtoD", "h2d": "HtoD",
    "device_to_host": "DtoH", "devicetohost": "DtoH", "dtoh": "DtoH", "d2h": "DtoH",
    "device_to_device": "DtoD", "devicetodevice": "DtoD", "dtod": "DtoD", "d2d": "DtoD",
    "host_to_host": "HtoH", "hosttohost": "HtoH", "htoh": "HtoH", "h2h": "HtoH",
    "peer_to_peer": "PtoP", "peertopeer": "PtoP", "ptop": "PtoP", "p2p": "PtoP",
}
_COPY_TOKEN = re.compile(r"(host_?to_?device|device_?to_?host|device_?to_?device|host_?to_?host|"
                         r"peer_?to_?peer|[hdp]to[hdp]|[hdp]2[hdp])", re.IGNORECASE)


def copy_direction(kind: str | None) -> str | None:
    """`MEMORY_COPY_HOST_TO_DEVICE`, `CopyHostToDevice`, `HtoD` ... -> `HtoD`; None if unknown."""
    if not kind:
        return None
    match = _COPY_TOKEN.search(kind)
    if not match:
        return None
    return _COPY_DIRECTIONS.get(match.group(1).lower().replace("__", "_"))


def direction_from_agent_types(src_type: str | None, dst_type: str | None) -> str | None:
    """Direction from the agent types of both ends (`CPU`/`GPU`)."""
    if not src_type or not dst_type:
        return None
    ends = {"CPU": "H", "GPU": "D"}
    src, dst = ends.get(src_type.upper()), ends.get(dst_type.upper())
    return f"{src}to{dst}" if src and dst else None


# --- API names --------------------------------------------------------------

# Domains (rocprofv3 `Domain` / buffer record kind / rocpd region category) -> how the
# call is stored: (event kind, source_cat).
def api_domain(domain: str | None) -> tuple[str, str]:
    """`HIP_RUNTIME_API_EXT` -> ('runtime', 'hip_api'); `MARKER_CORE_API` -> ('annotation', 'marker_api')."""
    d = (domain or "").upper()
    if d.startswith("MARKER") or d.startswith("ROCTX"):
        return "annotation", "marker_api"
    if d.startswith("RCCL"):
        return "runtime", "rccl_api"
    if d.startswith("HIP"):
        return "runtime", "hip_api"
    if d.startswith("HSA"):
        return "runtime", "hsa_api"
    if d.startswith("ROCDECODE") or d.startswith("ROCJPEG"):
        return "runtime", d.lower().replace("_api", "") + "_api"
    return "runtime", d.lower() or "api"


def kernel_display_name(name: str | None) -> str | None:
    """Drop the code-object symbol suffix (`.kd`, ` [clone .kd]`) rocprof appends: it is not
    part of the kernel's name, and without it names agree across rocprof formats."""
    if name is None:
        return None
    if name.endswith(" [clone .kd]"):
        return name[: -len(" [clone .kd]")]
    if name.endswith(".kd"):
        return name[:-3]
    return name


def agent_node(value: Any) -> int | None:
    """`4`, `"4"`, `"Agent 4"` -> 4."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    digits = re.search(r"-?\d+", str(value))
    return int(digits.group(0)) if digits else None


# --- agents -> devices ------------------------------------------------------

@dataclass
class Agent:
    node_id: int
    type: str                       # 'GPU' or 'CPU'
    name: str | None = None         # product name (AMD Instinct MI300X)
    arch: str | None = None         # gfx942
    cu_count: int | None = None
    wavefront: int | None = None
    memory_bytes: int | None = None
    clock_hz: int | None = None
    key: Any = None                 # the input's own id for the agent (handle, rocpd id)
    properties: dict = field(default_factory=dict)


class Agents:
    """The agents of one process: node id / input key -> GPU ordinal, and device rows."""

    def __init__(self, agents: Iterable[Agent]):
        self.all = sorted(agents, key=lambda a: a.node_id)
        self.gpus = [a for a in self.all if a.type.upper() == "GPU"]
        self.ordinal_by_node = {a.node_id: i for i, a in enumerate(self.gpus)}
        self.ordinal_by_key = {a.key: i for i, a in enumerate(self.gpus) if a.key is not None}
        self.node_by_key = {a.key: a.node_id for a in self.all if a.key is not None}
        self.type_by_node = {a.node_id: a.type.upper() for a in self.all}

    def __bool__(self) -> bool:
        return bool(self.all)

    def device_rows(self) -> list[dict]:
        return [{
            "device": i, "node_id": a.node_id, "vendor": VENDOR, "name": a.name, "arch": a.arch,
            "sm_count": a.cu_count, "warp_size": a.wavefront, "memory_bytes": a.memory_bytes,
            "clock_hz": a.clock_hz, "properties": a.properties,
        } for i, a in enumerate(self.gpus)]

    def cpu_summary(self) -> list[dict]:
        """CPU agents, for trace metadata (devices rows are GPUs only)."""
        return [{"node_id": a.node_id, "name": a.name, "cores": a.cu_count} for a in self.all
                if a.type.upper() != "GPU"]


def ordinals_from_nodes(nodes: Sequence[int], agents: Agents | None) -> tuple[dict[int, int], list[dict]]:
    """GPU ordinal of every node id used by device records.

    With an agent table, the ordinal is the node's rank among GPU agents. Without one
    (a kernel trace alone), GPU nodes are known only from the records: they are ranked
    among the distinct nodes seen, and device rows carry only the node id."""
    if agents:
        mapping = {n: agents.ordinal_by_node[n] for n in nodes if n in agents.ordinal_by_node}
        return mapping, agents.device_rows()
    seen = sorted({int(n) for n in nodes if n is not None})
    mapping = {n: i for i, n in enumerate(seen)}
    return mapping, [{"device": i, "node_id": n, "vendor": VENDOR} for n, i in mapping.items()]


def map_codes(values: np.ndarray | pa.Array, mapping: Mapping[int, int]) -> pa.Array:
    """Vectorised dict lookup for integer codes; unmapped -> null."""
    arr = values if isinstance(values, pa.Array) else pa.array(values, pa.int64())
    if not mapping:
        return pa.nulls(len(arr), pa.int64())
    keys = pa.array(list(mapping.keys()), pa.int64())
    vals = pa.array(list(mapping.values()), pa.int64())
    idx = pc.index_in(arr.cast(pa.int64()), value_set=keys)
    return pc.take(vals, idx)


def memory_from_banks(banks: Any) -> int | None:
    """Device memory: the summed size of the agent's (non-host) memory banks."""
    if not isinstance(banks, list):
        return None
    sizes = [b.get("size_in_bytes") for b in banks if isinstance(b, dict) and b.get("heap_type", 1) != 0]
    sizes = [s for s in sizes if isinstance(s, int)]
    return sum(sizes) if sizes else None


def agent_from_sdk(info: Mapping[str, Any], key: Any = None) -> Agent:
    """An agent from rocprofiler-sdk's agent record (JSON `agents`, rocpd `extdata`)."""
    gpu = info.get("type") in (2, "GPU") or str(info.get("type")).upper() == "GPU"
    clock = info.get("max_engine_clk_fcompute")
    return Agent(
        node_id=int(info.get("node_id", info.get("logical_node_id", 0))),
        type="GPU" if gpu else "CPU",
        name=info.get("product_name") or info.get("name"),
        arch=info.get("name") if gpu else None,
        cu_count=info.get("cu_count"),
        wavefront=info.get("wave_front_size") or None,
        memory_bytes=memory_from_banks(info.get("mem_banks")) if gpu else None,
        clock_hz=int(clock) * 1_000_000 if gpu and clock else None,
        key=key,
        properties={k: info.get(k) for k in (
            "node_id", "logical_node_id", "gpu_index", "gpu_id", "cu_count", "simd_count",
            "wave_front_size", "max_waves_per_cu", "max_engine_clk_fcompute", "lds_size_in_kb",
            "num_xcc", "gfx_target_version", "vendor_name", "product_name", "model_name", "name",
            "family_id", "device_id", "location_id", "drm_render_minor") if k in info},
    )


# --- columns by header name -------------------------------------------------

class Columns:
    """Finds an input's columns by header name (case and `_`/`-` insensitive), trying
    aliases in order, so the column sets of different tool versions map alike."""

    def __init__(self, names: Iterable[str]):
        self.names = list(names)
        self._by_norm = {self.norm(n): n for n in self.names}

    @staticmethod
    def norm(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower())

    def find(self, *aliases: str) -> str | None:
        for alias in aliases:
            hit = self._by_norm.get(self.norm(alias))
            if hit is not None:
                return hit
        return None

    def has(self, *aliases: str) -> bool:
        return self.find(*aliases) is not None

    def missing(self, required: Mapping[str, Sequence[str]]) -> list[str]:
        """Names (first alias) of the required fields the header lacks."""
        return [aliases[0] for aliases in required.values() if self.find(*aliases) is None]


# --- launch geometry ----------------------------------------------------------

def blocks(grid_items: Any, workgroup: Any) -> pa.Array:
    """Grid in work-items -> grid in blocks (ceil division); null where either is unknown/0."""
    g = pa.array(grid_items, pa.int64()) if not isinstance(grid_items, pa.Array) else grid_items.cast(pa.int64())
    w = pa.array(workgroup, pa.int64()) if not isinstance(workgroup, pa.Array) else workgroup.cast(pa.int64())
    w = pc.if_else(pc.equal(w, 0), pa.scalar(None, pa.int64()), w)
    return pc.divide(pc.subtract(pc.add(g, w), 1), w)


# --- args JSON, many rows at once ---------------------------------------------

def json_args(columns: Mapping[str, Any], length: int) -> pa.Array:
    """The `args` of many rows at once: an Arrow struct array with one field per input
    column. The store's writer casts it to JSON inside DuckDB (`CAST(struct AS JSON)`,
    vectorised), which is far faster than building a JSON string per row in Python.
    Missing values appear as JSON null."""
    if length == 0 or not columns:
        return pa.nulls(length, pa.string())
    fields, arrays = [], []
    for name, values in columns.items():
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        # Dictionary columns stay encoded: DuckDB writes their values into the JSON.
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        fields.append(name)
        arrays.append(arr)
    return pa.StructArray.from_arrays(arrays, names=fields)


def local_ids(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.int64)


# --- writing batches ------------------------------------------------------------

def _arr(values: Any, typ: pa.DataType, length: int) -> pa.Array:
    if values is None:
        return pa.nulls(length, typ)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if pa.types.is_dictionary(values.type) and values.type.value_type == typ:
            return values   # kept encoded: DuckDB reads dictionaries without decoding
        return values.cast(typ)
    return pa.array(values, typ)


def constant(value: str | int, typ: pa.DataType, length: int) -> pa.Array:
    """One value repeated (no Python list of `length` items to convert)."""
    return pa.repeat(pa.scalar(value, typ), length)


def _valid_times(w, start: pa.Array, end: pa.Array, what: str, names: pa.Array | None) -> pa.Array | None:
    """Mask of rows with usable times; the others are counted as issues."""
    missing = pc.or_(pc.is_null(start), pc.is_null(end))
    backwards = pc.fill_null(pc.less(end, start), False)
    bad = pc.or_(missing, backwards)
    n_bad = pc.sum(bad).as_py() or 0
    if not n_bad:
        return None
    n_missing = pc.sum(missing).as_py() or 0
    example = None
    if names is not None:
        example = pc.filter(names, bad)[0].as_py()
    w.issue(f"{what} without start/end timestamp", n_missing, example)
    w.issue(f"{what} ending before it starts", n_bad - n_missing, example)
    return pc.invert(bad)


def write_events(w, next_id: int, kind: Any, cols: Mapping[str, Any], what: str) -> tuple[int, pa.Array]:
    """Append events from Arrow-like columns (`name`, `start_ns`, `end_ns` required;
    `pid`, `tid`, `device`, `stream`, `correlation`, `external_id`, `source_cat`,
    `category`, `args` optional); `kind` is a string or a per-row array. Rows whose
    times are unusable are counted as issues. Returns (rows written, kept-row mask or
    None), so callers can filter their side tables the same way."""
    start = _arr(cols["start_ns"], pa.int64(), 0)
    n = len(start)
    if n == 0:
        return 0, None
    end = _arr(cols["end_ns"], pa.int64(), n)
    names = _arr(cols.get("name"), pa.string(), n)
    keep = _valid_times(w, start, end, what, names)
    if cols.get("category") is None and isinstance(kind, str) and kind in ("kernel", "memcpy", "memset"):
        # Classified once per distinct name and written with the rows: the derivation's
        # UPDATE of a million rows cost 0.1 s (1M dispatches).
        cols = {**cols, "category": map_strings(names, lambda name: classify.category(kind, name), pa.string())}
    table = {
        "kind": constant(kind, pa.string(), n) if isinstance(kind, str) else _arr(kind, pa.string(), n),
        "name": names, "start_ns": start, "dur_ns": pc.subtract(end, start),
    }
    types = {"pid": pa.int64(), "tid": pa.int64(), "device": pa.int32(), "stream": pa.int64(),
             "correlation": pa.int64(), "external_id": pa.int64(), "source_cat": pa.string(),
             "category": pa.string(), "args": pa.string()}
    for col, typ in types.items():
        if cols.get(col) is not None:
            value = cols[col]
            if col == "args" and isinstance(value, pa.StructArray):
                table[col] = value   # cast to JSON by the store (see json_args)
            else:
                table[col] = constant(value, typ, n) if isinstance(value, (str, int)) else _arr(value, typ, n)
    batch = pa.table(table)
    if keep is not None:
        batch = batch.filter(keep)
    m = batch.num_rows
    batch = batch.append_column("event_id", pa.array(local_ids(next_id, m)))
    w.add_events({name: batch.column(name) for name in batch.column_names})
    return m, keep


def write_kernel_info(w, first_id: int, cols: Mapping[str, Any], keep: pa.Array | None, n: int) -> None:
    """kernel_info rows for kernels just written (`first_id` = local id of the first).

    `cols`: grid_items_x/y/z and workgroup_x/y/z (rocprof's work-item counts), `vgpr`,
    `lds` (bytes), any may be missing."""
    table = {}
    for axis in "xyz":
        wg = cols.get(f"workgroup_{axis}")
        grid = cols.get(f"grid_items_{axis}")
        if wg is not None:
            table[f"block_{axis}"] = _arr(wg, pa.int64(), n)
        if wg is not None and grid is not None:
            table[f"grid_{axis}"] = blocks(_arr(grid, pa.int64(), n), _arr(wg, pa.int64(), n))
    if cols.get("vgpr") is not None:
        table["registers_per_thread"] = _arr(cols["vgpr"], pa.int64(), n)
    if cols.get("lds") is not None:
        table["shared_memory_bytes"] = _arr(cols["lds"], pa.int64(), n)
    if not table:
        return
    batch = pa.table(table)
    if keep is not None:
        batch = batch.filter(keep)
    batch = batch.append_column("event_id", pa.array(local_ids(first_id, batch.num_rows)))
    w.append("kernel_info", {name: batch.column(name) for name in batch.column_names})


def write_copies(w, first_id: int, bytes_: Any, direction: Any, keep: pa.Array | None, n: int) -> None:
    dirs = _arr(direction, pa.string(), n)
    src = pc.if_else(pc.is_in(dirs, pa.array(["DtoH", "DtoD", "PtoP"])), "device", pa.scalar(None, pa.string()))
    dst = pc.if_else(pc.is_in(dirs, pa.array(["HtoD", "DtoD", "PtoP"])), "device", pa.scalar(None, pa.string()))
    batch = pa.table({"bytes": _arr(bytes_, pa.int64(), n), "direction": dirs,
                      "src_memory": src, "dst_memory": dst})
    if keep is not None:
        batch = batch.filter(keep)
    batch = batch.append_column("event_id", pa.array(local_ids(first_id, batch.num_rows)))
    w.append("copies", {name: batch.column(name) for name in batch.column_names})


# String columns with up to this many distinct values are read dictionary-encoded (kernel
# names, domains, agents): as cheap to read, and then mapped, filtered and handed to
# DuckDB without touching every row. A column with more is read as plain strings.
_DICTIONARY_MAX_VALUES = 1 << 16


def read_csv(path: Path, w) -> pa.Table:
    """A CSV file of a rocprof output as an Arrow table; an unreadable one is a TraceError.

    Rows with another number of fields than the header (the last row of a file cut short
    by a crash, a damaged line) are left out and counted as unusable records in `w`: the
    rest of the file is still read. A file with no such row at all is a TraceError."""
    options = pacsv.ConvertOptions(strings_can_be_null=False, auto_dict_encode=True,
                                   auto_dict_max_cardinality=_DICTIONARY_MAX_VALUES)
    bad: list = []

    def skip(row) -> str:
        bad.append(row)
        return "skip"

    def read(source) -> pa.Table:
        return pacsv.read_csv(source, convert_options=options,
                              parse_options=pacsv.ParseOptions(invalid_row_handler=skip))

    unraisable: list = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        try:
            table = read(path)
        except pa.ArrowInvalid:
            if not unraisable:
                raise
            # pyarrow cannot hand the handler a bad row that is not UTF-8 text (it prints
            # the failure and stops): read again with such bytes replaced by U+FFFD.
            bad.clear()
            text = path.read_bytes().decode("utf-8", "replace").encode()
            table = read(pa.BufferReader(text))
            w.note(f"{path.name}: bytes not UTF-8 text replaced by U+FFFD")
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceError(path, f"unreadable CSV: {str(exc).splitlines()[0]}") from None
    finally:
        sys.unraisablehook = hook
    try:
        table.column_names
    except UnicodeDecodeError:
        raise TraceError(path, "unreadable CSV: its header is not UTF-8 text") from None
    if bad:
        first = bad[0]
        where = f" (line {first.number})" if first.number is not None else ""
        if table.num_rows == 0:
            raise TraceError(path, f"unreadable CSV: no row has the header's {first.expected_columns} "
                                   f"fields (the first has {first.actual_columns}{where})")
        w.read(len(bad))
        w.issue("CSV rows with another number of fields than the header (cut short or damaged)", len(bad),
                f"{path.name}{where}: {first.text[:200]}")
    return _as_text(table, path, w)


def _as_text(table: pa.Table, path: Path, w) -> pa.Table:
    """Columns the reader left as bytes because some values are not UTF-8 text (a damaged
    file) as text, each bad byte replaced by U+FFFD and noted: the rows are kept."""
    for i, column_field in enumerate(table.schema):
        typ = column_field.type.value_type if pa.types.is_dictionary(column_field.type) else column_field.type
        if not (pa.types.is_binary(typ) or pa.types.is_large_binary(typ)):
            continue
        column = table.column(i).combine_chunks()
        values = column.dictionary if pa.types.is_dictionary(column.type) else column
        decoded, bad = [], 0
        for value in values.to_pylist():
            try:
                decoded.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(value.decode("utf-8", "replace"))
                bad += 1
        text = pa.array(decoded, pa.string())
        if pa.types.is_dictionary(column.type):
            text = pa.DictionaryArray.from_arrays(column.indices, text)
        table = table.set_column(i, pa.field(column_field.name, text.type), text)
        distinct = "distinct " if pa.types.is_dictionary(column.type) else ""
        w.note(f"{path.name}: {bad} {distinct}{column_field.name} value(s) not UTF-8 text (bad bytes replaced by U+FFFD)")
    return table


def map_strings(arr: Any, fn, typ: pa.DataType | None = None, *, text: bool = True) -> pa.Array:
    """Apply a Python function once per distinct value of a string column (of any column
    with `text=False`: `fn` then takes the column's own values).

    The result is dictionary-encoded (the input's codes, the mapped values as the
    dictionary, of type `typ` when given): decoding a million strings costs more than
    everything else done here, and DuckDB reads dictionaries as they are. Cast it when
    plain values are needed."""
    a = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if not isinstance(a, pa.Array):
        a = pa.array(a)
    value_type = a.type.value_type if pa.types.is_dictionary(a.type) else a.type
    if text and not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
        a = a.cast(pa.string())  # a text column the CSV reader typed otherwise (all numbers, or a damaged header)
    # Columns read with dictionary encoding (the CSV reader) are used as they are.
    encoded = a if pa.types.is_dictionary(a.type) else a.dictionary_encode()
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], typ)
    return pa.DictionaryArray.from_arrays(encoded.indices, mapped)
