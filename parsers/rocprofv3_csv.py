"""rocprofv3 CSV output: `PREFIX_kernel_trace.csv`, `PREFIX_hip_api_trace.csv`,
`PREFIX_memory_copy_trace.csv`, `PREFIX_marker_api_trace.csv`, `PREFIX_rccl_api_trace.csv`,
`PREFIX_agent_info.csv`, ... (PREFIX is usually the process id).

Input: a directory of them (one trace per prefix) or one such file. A file's role is
read from its header, never from its name; column sets differ between ROCm versions
(6.2 has no `Stream_Id`; 6.4+ adds stream, thread, dispatch and register counts;
`Agent_Id` is `4` or `"Agent 4"`), so every column is found by header name. Columns the
store has no place for go to `args` under their own names. Files are read with
pyarrow's CSV reader (columnar, no per-row Python). `PREFIX_counter_collection.csv`
(`--pmc`) repeats each dispatch once per counter: its dispatches are the kernels only
where there is no kernel_trace, once each; counter values are not stored (counted).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profkit.errors import TraceError

from . import rocm_common as rc
from .kineto_args import as_int

FORMAT = "rocprofv3_csv"

# Roles of files, each recognised by the header names it must have, first match wins:
# counter_collection rows also name the kernel and its times (one row per dispatch and
# counter), so they are told apart before kernel_trace.
_ROLE_HEADERS = (
    ("counter", ("Counter_Name", "Counter_Value")),
    ("kernel", ("Kernel_Name", "Start_Timestamp", "End_Timestamp")),
    ("memory_copy", ("Direction", "Start_Timestamp", "End_Timestamp")),
    ("api", ("Domain", "Function", "Start_Timestamp", "End_Timestamp")),
    ("api", ("Domain", "Operation", "Start_Timestamp", "End_Timestamp")),
    ("agent_info", ("Node_Id", "Agent_Type")),
    ("memory_allocation", ("Allocation_Size", "Start_Timestamp")),
    ("memory_allocation", ("Operation", "Start_Timestamp", "End_Timestamp")),
    ("stats", ("Name", "Calls", "TotalDurationNs")),
)
_TRACE_ROLES = {"kernel", "memory_copy", "api", "counter"}
# Names rocprofv3 gives its files; only used to split a directory into prefixes.
_SUFFIX = re.compile(r"^(?P<prefix>.*?)(?P<suffix>(kernel|hip_api|hsa_api|memory_copy|marker_api|rccl_api|"
                     r"memory_allocation|scratch_memory|rocdecode_api|rocjpeg_api|counter_collection|"
                     r"kernel_stats|hip_stats|hsa_stats|memory_copy_stats|marker_stats|rccl_stats|"
                     r"domain_stats|agent_info)(_trace)?)\.csv$")

KERNEL_FIELDS = {
    "name": ("Kernel_Name",), "start": ("Start_Timestamp",), "end": ("End_Timestamp",),
}
API_FIELDS = {"name": ("Function", "Operation"), "start": ("Start_Timestamp",), "end": ("End_Timestamp",)}
COPY_FIELDS = {"start": ("Start_Timestamp",), "end": ("End_Timestamp",)}


def _header(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        line = fh.readline(65536).decode("utf-8", "replace").strip()
    return [h.strip().strip('"') for h in line.split(",")]


def file_role(path: Path) -> str | None:
    """The role of a CSV from its header, or None if it is not a rocprofv3 CSV."""
    try:
        cols = rc.Columns(_header(path))
    except (OSError, UnicodeError):
        return None
    for role, needed in _ROLE_HEADERS:
        if all(cols.has(n) for n in needed):
            return role
    return None


def _csv_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv")


def detect(path: Path) -> bool:
    try:
        if path.is_dir():
            return any(file_role(p) in _TRACE_ROLES for p in _csv_files(path))
        return path.suffix.lower() == ".csv" and file_role(path) in _TRACE_ROLES
    except OSError:
        return False


def _prefix(path: Path) -> str:
    match = _SUFFIX.match(path.name)
    return match.group("prefix") if match else path.stem + "_"


def groups(path: Path) -> dict[str, list[tuple[Path, str]]]:
    """prefix -> [(file, role)] for the rocprofv3 CSVs of a directory or one file."""
    if path.is_dir():
        files = _csv_files(path)
    else:
        prefix = _prefix(path)
        # A single trace file: read its own agent_info beside it for the devices.
        files = [path] + [p for p in _csv_files(path.parent) if p != path and _prefix(p) == prefix
                          and file_role(p) == "agent_info"]
    out: dict[str, list[tuple[Path, str]]] = {}
    for file in files:
        role = file_role(file)
        if role is not None:
            out.setdefault(_prefix(file), []).append((file, role))
    return {k: v for k, v in out.items() if any(r in _TRACE_ROLES for _, r in v)}


def parse(path: Path, sink) -> None:
    by_prefix = groups(path)
    if not by_prefix:
        raise TraceError(path, "no rocprofv3 trace CSV (kernel_trace, hip_api_trace, ...) found")
    for prefix, files in sorted(by_prefix.items()):
        trace_path = path if (len(by_prefix) == 1 or not path.is_dir()) else path / prefix
        with sink.trace(str(trace_path), FORMAT, stat_path=path) as w:
            try:
                _parse_group(prefix, files, w, sink)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                # A value of the wrong type in a column the store needs as a number.
                raise TraceError(trace_path, f"unusable column value: {str(exc).splitlines()[0]}") from None


def _parse_group(prefix: str, files: list[tuple[Path, str]], w, sink) -> None:
    tables = {}
    for file, role in files:
        if role != "stats":
            tables.setdefault(role, []).append((file, rc.read_csv(file, w)))
    agents = None
    for file, table in tables.get("agent_info", []):
        agents = _agents(file, table, w)
        w.read(table.num_rows)
    api_pids = set()
    for _file, table in tables.get("api", []):
        col = rc.Columns(table.column_names).find("Process_Id")
        if col:
            api_pids.update(v for v in pc.unique(table[col]).to_pylist() if v is not None)
    # Device records carry no process id: use the one process of the API traces, else
    # the file prefix when it is a number (rocprofv3 names files by pid).
    if len(api_pids) == 1:
        pid = int(next(iter(api_pids)))
    else:
        pid = int(prefix.rstrip("_")) if prefix.rstrip("_").isdigit() and not api_pids else None

    counters = tables.pop("counter", [])
    if counters and not tables.get("kernel"):
        # Counters collected without --kernel-trace: the dispatches they were read on are
        # the kernels, once each.
        tables["kernel"] = [(f, _dispatches(f, t, w)) for f, t in counters]
    else:
        for file, table in counters:
            w.read(table.num_rows)
            w.not_stored("counter rows not stored (the kernels come from kernel_trace)", table.num_rows, file.name)

    nodes_seen: list[int] = []
    for role in ("kernel", "memory_copy"):
        for file, table in tables.get(role, []):
            cols = rc.Columns(table.column_names)
            for c in (cols.find("Agent_Id"), cols.find("Source_Agent_Id"), cols.find("Destination_Agent_Id")):
                if c:
                    nodes_seen += [rc.agent_node(v) for v in pc.unique(table[c]).to_pylist()]
    table = counters = None  # no reference left here to a table _store_each is to free
    # Without agent_info, every node a device record names is taken to be a GPU.
    ordinals, device_rows = rc.ordinals_from_nodes([n for n in nodes_seen if n is not None], agents)
    w.add_rows("devices", device_rows)
    version = _version(tables)
    files_read = [f.name for f, _ in files]

    def kernels(file, table, next_id):
        stored = _kernels(file, table, w, next_id, ordinals, pid)
        sink.report(str(file), 1, 1)
        return stored

    # Each table dropped once stored: the 1M-dispatch kernel trace's is ~350 MB, which the
    # HIP calls and the derivations would otherwise run beside.
    next_id = 0
    next_id = _store_each(tables, "kernel", kernels, next_id)
    next_id = _store_each(tables, "memory_copy",
                          lambda file, table, next_id: _copies(file, table, w, next_id, ordinals, agents, pid), next_id)
    next_id = _store_each(tables, "api", lambda file, table, next_id: _api(file, table, w, next_id), next_id)
    for file, table in tables.get("memory_allocation", []):
        w.read(table.num_rows)
        w.not_stored("memory allocation rows not stored", table.num_rows, file.name)
    w.set_trace(
        format_version=version, producer="rocprofv3", vendor=rc.VENDOR,
        metadata={"prefix": prefix, "files": files_read, "process_id": pid,
                  "cpu_agents": agents.cpu_summary() if agents else None,
                  "device_mapping": "agent_info" if agents else "node ids seen in the trace"},
    )


def _store_each(tables: dict, role: str, store, next_id: int) -> int:
    """`store(file, table, next_id)` (rows stored) for each table of `role`, each dropped
    from `tables` first so that it is freed once stored; the next event id."""
    queue = tables.pop(role, [])
    while queue:
        file, table = queue.pop(0)
        next_id += store(file, table, next_id)
        del table
        # Arrow's allocator keeps freed memory for itself: handed back, DuckDB can use it.
        pa.default_memory_pool().release_unused()
    return next_id


def _version(tables) -> str:
    for _f, table in tables.get("kernel", []):
        cols = rc.Columns(table.column_names)
        return "rocm>=6.4 columns" if cols.has("Stream_Id") else "rocm<6.4 columns"
    return ""


def _agents(file: Path, table: pa.Table, w) -> rc.Agents | None:
    """The agents of an agent_info table; None where a row is damaged (no numeric
    Node_Id): the GPU ordinals would then shift, so devices come from the node ids the
    records name, as without agent_info."""
    cols = rc.Columns(table.column_names)
    agents, unusable = [], []
    for row in table.to_pylist():
        def get(*names):
            c = cols.find(*names)
            return row.get(c) if c else None
        node = as_int(get("Node_Id"))
        if node is None:  # a damaged row: no agent can be keyed by it
            unusable.append(row)
            continue
        gpu = str(get("Agent_Type")).upper() == "GPU"
        memory, clock = as_int(get("Local_Mem_Size")), as_int(get("Max_Engine_Clk_Fcompute"))
        agents.append(rc.Agent(
            node_id=node, type="GPU" if gpu else "CPU",
            name=get("Product_Name", "Marketing_Name") or get("Name"),
            arch=get("Name") if gpu else None,
            cu_count=as_int(get("Cu_Count")), wavefront=as_int(get("Wave_Front_Size")) or None,
            memory_bytes=memory or None, clock_hz=clock * 1_000_000 if gpu and clock else None,
            properties={k: v for k, v in row.items() if v not in (None, "")},
        ))
    if unusable:
        w.issue("agent_info rows without a numeric Node_Id (agent_info not used: devices from the node ids "
                "the records name)", len(unusable), f"{file.name}: {unusable[0]}"[:200])
        return None
    return rc.Agents(agents)


def _other_args(table: pa.Table, used: set[str]) -> pa.Array:
    rest = {c: table[c] for c in table.column_names if c not in used}
    return rc.json_args(rest, table.num_rows)


def _missing(file: Path, cols: rc.Columns, fields) -> None:
    missing = cols.missing(fields)
    if missing:
        raise TraceError(file, f"missing column(s) {', '.join(missing)}")


def _nodes(table: pa.Table, col: str | None) -> pa.Array | None:
    if not col:
        return None
    return rc.map_strings(table[col], rc.agent_node, pa.int64(), text=False).cast(pa.int64())


def _dispatches(file: Path, table: pa.Table, w) -> pa.Table:
    """One row per dispatch of a counter_collection table (its first), without the counter
    columns; the other rows are counted as not stored."""
    cols = rc.Columns(table.column_names)
    _missing(file, cols, KERNEL_FIELDS)
    key = cols.find("Dispatch_Id", "Correlation_Id")
    if key is None:
        raise TraceError(file, "counter_collection CSV without a Dispatch_Id column: its rows cannot be "
                               "told apart by dispatch")
    _, first = np.unique(table[key].to_numpy(zero_copy_only=False), return_index=True)
    repeated = table.num_rows - len(first)
    w.note("counter values not stored: counter_collection gives the kernels only, one per dispatch")
    if repeated:
        w.read(repeated)
        w.not_stored("counter rows after the first of their dispatch not stored", repeated, file.name)
    dropped = {cols.find("Counter_Name"), cols.find("Counter_Value")}
    return table.take(np.sort(first)).drop_columns([c for c in dropped if c])


def _kernels(file: Path, table: pa.Table, w, next_id: int, ordinals, pid) -> int:
    cols = rc.Columns(table.column_names)
    _missing(file, cols, KERNEL_FIELDS)
    n = table.num_rows
    w.read(n)
    get = lambda *names: table[cols.find(*names)] if cols.find(*names) else None  # noqa: E731
    names = rc.map_strings(get("Kernel_Name"), rc.kernel_display_name, pa.string())
    nodes = _nodes(table, cols.find("Agent_Id"))
    device = rc.map_codes(nodes, ordinals) if nodes is not None else None
    # Launch geometry columns: the workgroup size, VGPRs and LDS are stored as they are in
    # kernel_info, so `args` leaves them out (as the rocprofv3 JSON parser does); grid
    # sizes stay in args too, since kernel_info counts blocks, not work-items.
    info_cols = {
        **{f"grid_items_{a}": cols.find(f"Grid_Size_{a.upper()}", "Grid_Size" if a == "x" else "-") for a in "xyz"},
        **{f"workgroup_{a}": cols.find(f"Workgroup_Size_{a.upper()}", "Workgroup_Size" if a == "x" else "-")
           for a in "xyz"},
        "vgpr": cols.find("Arch_VGPR_Count", "VGPR_Count"),
        "lds": cols.find("LDS_Block_Size", "Group_Segment_Size", "Lds_Size"),
    }
    used = {cols.find("Kernel_Name"), cols.find("Start_Timestamp"), cols.find("End_Timestamp"),
            cols.find("Correlation_Id")}
    used |= {c for key, c in info_cols.items() if c and not key.startswith("grid_items_")}
    written, keep = rc.write_events(w, next_id, "kernel", {
        "name": names, "start_ns": get("Start_Timestamp"), "end_ns": get("End_Timestamp"),
        "device": device, "stream": get("Stream_Id", "Queue_Id"), "correlation": get("Correlation_Id"),
        "pid": pid, "source_cat": "kernel_dispatch", "args": _other_args(table, used),
    }, "kernel dispatch")
    rc.write_kernel_info(w, next_id, {key: table[c] if c else None for key, c in info_cols.items()}, keep, n)
    return written


def _copies(file: Path, table: pa.Table, w, next_id: int, ordinals, agents, pid) -> int:
    cols = rc.Columns(table.column_names)
    _missing(file, cols, COPY_FIELDS)
    n = table.num_rows
    w.read(n)
    get = lambda *names: table[cols.find(*names)] if cols.find(*names) else None  # noqa: E731
    direction_col = get("Direction", "Operation", "Kind")
    direction = rc.map_strings(direction_col, rc.copy_direction, pa.string()).cast(pa.string()) \
        if direction_col is not None else pa.nulls(n, pa.string())
    src = _nodes(table, cols.find("Source_Agent_Id", "Src_Agent_Id"))
    dst = _nodes(table, cols.find("Destination_Agent_Id", "Dst_Agent_Id"))
    if agents and src is not None and dst is not None:
        by_types = pa.array([rc.direction_from_agent_types(agents.type_by_node.get(s), agents.type_by_node.get(d))
                             for s, d in zip(src.to_pylist(), dst.to_pylist())], pa.string())
        direction = pc.coalesce(direction, by_types)
    # The copy's device: the GPU end (destination for HtoD and DtoD, source for DtoH).
    device = None
    if src is not None and dst is not None:
        dst_dev, src_dev = rc.map_codes(dst, ordinals), rc.map_codes(src, ordinals)
        device = pc.if_else(pc.equal(pc.fill_null(direction, ""), "DtoH"), src_dev, pc.coalesce(dst_dev, src_dev))
    name = direction_col.cast(pa.string()) if direction_col is not None else rc.constant("memory_copy", pa.string(), n)
    used = {cols.find("Start_Timestamp"), cols.find("End_Timestamp"), cols.find("Correlation_Id")}
    written, keep = rc.write_events(w, next_id, "memcpy", {
        "name": name, "start_ns": get("Start_Timestamp"), "end_ns": get("End_Timestamp"),
        "device": device, "stream": get("Stream_Id", "Queue_Id"), "correlation": get("Correlation_Id"),
        "pid": pid, "source_cat": "memory_copy", "args": _other_args(table, used),
    }, "memory copy")
    rc.write_copies(w, next_id, get("Bytes", "Size", "Copy_Bytes"), direction, keep, n)
    return written


def _api(file: Path, table: pa.Table, w, next_id: int) -> int:
    cols = rc.Columns(table.column_names)
    _missing(file, cols, API_FIELDS)
    n = table.num_rows
    w.read(n)
    get = lambda *names: table[cols.find(*names)] if cols.find(*names) else None  # noqa: E731
    domain = get("Domain")
    kinds = rc.map_strings(domain, lambda d: rc.api_domain(d)[0], pa.string())
    cats = rc.map_strings(domain, lambda d: rc.api_domain(d)[1], pa.string())
    correlation = get("Correlation_Id")
    is_runtime = pc.equal(kinds, "runtime")
    used = {cols.find("Function", "Operation"), cols.find("Start_Timestamp"), cols.find("End_Timestamp"),
            cols.find("Process_Id"), cols.find("Thread_Id")}
    if correlation is not None:
        # Only runtime calls carry the launch correlation; a marker keeps its id in args.
        correlation = pc.if_else(is_runtime, correlation.combine_chunks().cast(pa.int64()),
                                 pa.scalar(None, pa.int64()))
        used.add(cols.find("Correlation_Id"))
        args_cols = {c: table[c] for c in table.column_names if c not in used}
        args_cols["Correlation_Id"] = table[cols.find("Correlation_Id")]
        args = rc.json_args(args_cols, n)
    else:
        args = _other_args(table, used)
    written, _ = rc.write_events(w, next_id, kinds, {
        "name": get("Function", "Operation"), "start_ns": get("Start_Timestamp"), "end_ns": get("End_Timestamp"),
        "pid": get("Process_Id"), "tid": get("Thread_Id"), "correlation": correlation,
        "source_cat": cats, "args": args,
    }, "API call")
    return written
