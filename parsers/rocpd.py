"""rocpd SQLite databases: rocprofv3's default output since ROCm 7.0 (schema 3).

Tables carry a uuid suffix (`rocpd_kernel_dispatch_00003fdc_...`); stable views
(`kernels`, `regions`, `memory_copies`, `rocpd_info_agent`, ...) hide it, so this parser
reads only the views. Several per-process databases can be merged into one file: every
row carries the `guid` of its process, each guid becomes one trace, and every join is
keyed by guid too. A HIP call links to the dispatch it enqueued by `stack_id` (the
internal correlation id), not `corr_id` (the external id, usually 0).

The older rocmProfileData (rpd_tracer) schema is also called rocpd and also says
version 3; it has `rocpd_op` / `rocpd_api_ops` tables instead. It is told apart and
refused with a one-line error: this parser does not read it.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from profkit.errors import TraceError

from . import rocm_common as rc
from .sqlite_file import connect, file_problem, is_sqlite, sqlite_problem, table_names

FORMAT = "rocpd"


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        if not is_sqlite(path):
            return False
        con = connect(path)
        try:
            return any(n.startswith("rocpd_") for n in table_names(con))
        finally:
            con.close()
    except (OSError, sqlite3.Error):
        return False


def parse(path: Path, sink) -> None:
    try:
        con = connect(path)
        names = table_names(con)
    except sqlite3.Error as exc:
        raise TraceError(path, sqlite_problem(exc, path)) from None
    try:
        if "rocpd_op" in names or "rocpd_api_ops" in names:
            raise TraceError(path, "rocmProfileData (rpd_tracer) database (tables rocpd_op, rocpd_api_ops): "
                                   "this older schema is not supported; record with rocprofv3 instead")
        if "rocpd_kernel_dispatch" not in names or "kernels" not in names:
            raise TraceError(path, "rocpd database has no kernel dispatch table (rocpd_kernel_dispatch / "
                                   "kernels view)")
        missing = {"regions", "memory_copies", "rocpd_info_agent", "rocpd_info_process"} - names
        if missing:
            raise TraceError(path, f"rocpd database lacks the view(s) {', '.join(sorted(missing))}")
        guids = [r[0] for r in con.execute("SELECT DISTINCT guid FROM rocpd_info_process ORDER BY guid")]
        if not guids:
            raise TraceError(path, "rocpd database records no process")
        version = _one(con, "SELECT value FROM rocpd_metadata WHERE tag = 'schema_version'") \
            if "rocpd_metadata" in names else None
        for guid in guids:
            trace_path = str(path) if len(guids) == 1 else f"{path}#{guid}"
            with sink.trace(trace_path, FORMAT, stat_path=path) as w:
                _parse_process(con, names, guid, version, w)
            sink.report(str(path), guids.index(guid) + 1, len(guids))
    except sqlite3.Error as exc:
        raise TraceError(path, file_problem(exc, path) or f"unexpected rocpd content: {str(exc).splitlines()[0]}") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise TraceError(path, f"unexpected rocpd content: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def _one(con, sql, params=()):
    row = con.execute(sql, params).fetchone()
    return row[0] if row else None


def _table(con: sqlite3.Connection, sql: str, params=()) -> pa.Table:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    return pa.table({n: pa.array([r[i] for r in rows]) if rows else pa.array([], pa.null())
                     for i, n in enumerate(names)})


def _agents(con, guid) -> rc.Agents:
    out = []
    for id_, typ, abs_index, name, product, extdata in con.execute(
            "SELECT id, type, absolute_index, name, product_name, extdata FROM rocpd_info_agent WHERE guid = ?",
            [guid]):
        try:
            info = json.loads(extdata) if extdata else {}
        except (TypeError, ValueError):
            info = {}
        if not isinstance(info, dict) or "node_id" not in info:
            info = {**(info if isinstance(info, dict) else {}), "node_id": abs_index, "type": typ,
                    "name": name, "product_name": product}
        info.setdefault("type", typ)
        agent = rc.agent_from_sdk(info, key=abs_index)
        agent.type = typ or agent.type
        out.append(agent)
    return rc.Agents(out)


def _parse_process(con, names: set[str], guid: str, version, w) -> None:
    agents = _agents(con, guid)
    w.add_rows("devices", agents.device_rows())
    w.read(len(agents.all))
    next_id = _kernels(con, guid, agents, w, 0)
    next_id += _copies(con, guid, agents, w, next_id)
    next_id += _regions(con, guid, w, next_id)
    for table, reason in (("rocpd_sample", "samples not stored"),
                          ("rocpd_memory_allocate", "memory allocation records not stored"),
                          ("rocpd_pmc_event", "counter (PMC) records not stored")):
        if table in names:
            count = _one(con, f"SELECT count(*) FROM {table} WHERE guid = ?", [guid]) or 0
            w.read(count)
            w.not_stored(reason, count, table)
    threads = [{"pid": pid, "tid": tid, "name": name} for pid, tid, name in con.execute(
        "SELECT P.pid, T.tid, T.name FROM rocpd_info_thread T JOIN rocpd_info_process P "
        "ON P.id = T.pid AND P.guid = T.guid WHERE T.guid = ? AND T.name IS NOT NULL AND T.name != ''",
        [guid])] if "rocpd_info_thread" in names else []
    w.add_rows("threads", threads)
    proc = con.execute("SELECT pid, command FROM rocpd_info_process WHERE guid = ? LIMIT 1", [guid]).fetchone()
    host = _one(con, "SELECT hostname FROM rocpd_info_node WHERE guid = ? LIMIT 1", [guid]) \
        if "rocpd_info_node" in names else None
    w.set_trace(format_version=str(version) if version is not None else None, producer="rocprofv3 (rocpd)",
                vendor=rc.VENDOR, hostname=host,
                metadata={"guid": guid, "pid": proc[0] if proc else None, "command": proc[1] if proc else None,
                          "cpu_agents": agents.cpu_summary()})


def _dropped_by_view(con, table: str, view: str, guid: str, w, what: str, done: int) -> None:
    """Rows of a raw table the view's inner joins leave out (broken references)."""
    raw = _one(con, f"SELECT count(*) FROM {table} WHERE guid = ?", [guid]) or 0
    w.read(max(raw - done, 0))
    w.issue(f"{what} rows the `{view}` view drops (dangling references)", raw - done, table)


def _kernels(con, guid, agents: rc.Agents, w, next_id: int) -> int:
    t = _table(con, """
        SELECT name, start, "end", pid, agent_abs_index, stream_id, queue_id, stack_id, corr_id,
               kernel_id, dispatch_id, tid, grid_x, grid_y, grid_z, workgroup_x, workgroup_y, workgroup_z,
               lds_size, scratch_size, vgpr_count, accum_vgpr_count, sgpr_count, region
        FROM kernels WHERE guid = ? ORDER BY start""", [guid])
    n = t.num_rows
    w.read(n)
    _dropped_by_view(con, "rocpd_kernel_dispatch", "kernels", guid, w, "kernel dispatch", n)
    if not n:
        return 0
    abs_index = t["agent_abs_index"]
    written, keep = rc.write_events(w, next_id, "kernel", {
        "name": rc.map_strings(t["name"], rc.kernel_display_name, pa.string()),
        "start_ns": t["start"], "end_ns": t["end"], "pid": t["pid"],
        "device": rc.map_codes(abs_index.cast(pa.int64()), agents.ordinal_by_key),
        "stream": t["stream_id"], "correlation": t["stack_id"],
        "external_id": pc.if_else(pc.equal(t["corr_id"].cast(pa.int64()), 0), pa.scalar(None, pa.int64()),
                                  t["corr_id"].cast(pa.int64())),
        "source_cat": "kernel_dispatch",
        "args": rc.json_args({"kernel_id": t["kernel_id"], "dispatch_id": t["dispatch_id"],
                              "agent_node": rc.map_codes(abs_index.cast(pa.int64()), agents.node_by_key),
                              "queue_id": t["queue_id"], "stream_id": t["stream_id"], "thread_id": t["tid"],
                              "grid_size_x": t["grid_x"], "grid_size_y": t["grid_y"], "grid_size_z": t["grid_z"],
                              "scratch_size": t["scratch_size"], "accum_vgpr_count": t["accum_vgpr_count"],
                              "sgpr_count": t["sgpr_count"]}, n),
    }, "kernel dispatch")
    rc.write_kernel_info(w, next_id, {
        "grid_items_x": t["grid_x"], "grid_items_y": t["grid_y"], "grid_items_z": t["grid_z"],
        "workgroup_x": t["workgroup_x"], "workgroup_y": t["workgroup_y"], "workgroup_z": t["workgroup_z"],
        "vgpr": t["vgpr_count"], "lds": t["lds_size"],
    }, keep, n)
    return written


def _copies(con, guid, agents: rc.Agents, w, next_id: int) -> int:
    t = _table(con, """
        SELECT name, start, "end", pid, tid, size, src_agent_type, dst_agent_type, src_agent_abs_index,
               dst_agent_abs_index, stream_id, queue_id, stack_id, corr_id
        FROM memory_copies WHERE guid = ? ORDER BY start""", [guid])
    n = t.num_rows
    w.read(n)
    _dropped_by_view(con, "rocpd_memory_copy", "memory_copies", guid, w, "memory copy", n)
    if not n:
        return 0
    by_name = rc.map_strings(t["name"], rc.copy_direction).cast(pa.string())
    by_types = pa.array([rc.direction_from_agent_types(s, d) for s, d in
                         zip(t["src_agent_type"].to_pylist(), t["dst_agent_type"].to_pylist())], pa.string())
    direction = pc.coalesce(by_name, by_types)
    src = rc.map_codes(t["src_agent_abs_index"].cast(pa.int64()), agents.ordinal_by_key)
    dst = rc.map_codes(t["dst_agent_abs_index"].cast(pa.int64()), agents.ordinal_by_key)
    written, keep = rc.write_events(w, next_id, "memcpy", {
        "name": t["name"], "start_ns": t["start"], "end_ns": t["end"], "pid": t["pid"],
        "device": pc.if_else(pc.equal(pc.fill_null(direction, ""), "DtoH"), src, pc.coalesce(dst, src)),
        "stream": t["stream_id"], "correlation": t["stack_id"], "source_cat": "memory_copy",
        "args": rc.json_args({"queue_id": t["queue_id"], "thread_id": t["tid"], "corr_id": t["corr_id"],
                              "src_agent_node": rc.map_codes(t["src_agent_abs_index"].cast(pa.int64()), agents.node_by_key),
                              "dst_agent_node": rc.map_codes(t["dst_agent_abs_index"].cast(pa.int64()), agents.node_by_key)}, n),
    }, "memory copy")
    rc.write_copies(w, next_id, t["size"], direction, keep, n)
    return written


def _regions(con, guid, w, next_id: int) -> int:
    t = _table(con, """
        SELECT category, name, pid, tid, start, "end", stack_id, parent_stack_id, corr_id
        FROM regions WHERE guid = ? ORDER BY start""", [guid])
    n = t.num_rows
    w.read(n)
    _dropped_by_view(con, "rocpd_region", "regions", guid, w, "region", n)
    if not n:
        return 0
    category = t["category"].cast(pa.string())
    kinds = rc.map_strings(category, lambda c: rc.api_domain(c)[0], pa.string())
    cats = rc.map_strings(category, lambda c: rc.api_domain(c)[1], pa.string())
    is_runtime = pc.equal(kinds, "runtime")
    stack = t["stack_id"].cast(pa.int64())
    corr = t["corr_id"].cast(pa.int64())
    written, _ = rc.write_events(w, next_id, kinds, {
        "name": t["name"], "start_ns": t["start"], "end_ns": t["end"], "pid": t["pid"], "tid": t["tid"],
        "correlation": pc.if_else(is_runtime, stack, pa.scalar(None, pa.int64())),
        "external_id": pc.if_else(pc.equal(corr, 0), pa.scalar(None, pa.int64()), corr),
        "source_cat": cats,
        "args": rc.json_args({"category": category, "stack_id": stack,
                              "parent_stack_id": t["parent_stack_id"]}, n),
    }, "region")
    return written
