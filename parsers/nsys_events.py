"""Nsight activity tables -> profkit events, batch by batch.

Each source table is read with one SELECT of the columns we map (chosen by name: Nsight
adds and renames columns between versions) plus every other column, and the names of
coded ones (ENUM labels, StringIds), folded into one JSON string by SQLite
(`json_object`): `events.args`. SQLite does that in the reading thread while the main
thread stores the previous batch. Each Arrow batch gets local event ids; rows that cannot
be stored are counted by reason; the rest become events through Arrow compute (kernels,
runtime and OS calls: names as dictionary arrays over StringIds, no string copies) or
one DuckDB query (the smaller tables, whose names combine several codes).

Mapping decisions:
- kernels, memcpy, memset: device events; `device` = deviceId, `stream` = streamId,
  `pid` = the launching process decoded from globalPid, `tid` NULL.
- CUPTI_ACTIVITY_KIND_SYNCHRONIZATION -> kind `sync` on the device lane (tid NULL, device
  and stream set, pid from globalPid). The record is CUPTI's account of what a host
  synchronisation call waited for on a stream/device/event; the host-blocking interval
  itself is the runtime call (cudaStreamSynchronize, ...), which shares its correlationId,
  so derive links the two with a `sync` link.
- CUDA runtime and driver calls -> kind `runtime` on the host thread; the `_v7000`
  version suffix is stripped from the name, the original name kept in args.
- OSRT_API (pthread_cond_wait, poll, ioctl, ...) -> kind `runtime`, source_cat
  `OSRT_API`, no correlation: they are host calls that block, and as runtime events
  host-blocking time shows up beside CUDA API time.
- NVTX ranges -> `annotation` on the host thread; marks -> `annotation` with dur 0;
  the domain name (from NvtxDomainCreate records) in args. Ranges named by STEP_PATTERNS
  become `steps` with source `nvtx`.
- Kernel names are the demangled names (the short name when absent), the short name is
  in args; the mangled name is left out (as long again, and in the export).
- NCCL kernels get `collectives` rows: op from the name, dtype where the name has one.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profkit import classify
from profkit.store import relation_table

from . import nsys_enums as enums
from .nsys_db import Catalog, Reader, quote


@dataclass(frozen=True)
class Expr:
    """An SQL expression in a SELECT, with the source columns it consumes."""

    sql: str
    uses: tuple[str, ...] = ()


GID_MASK = 0xFFFFFF  # 24 bits of pid and of tid in a serialized GlobalId

# NVTX range names that define steps, tried in order; the first pattern that matches any
# range wins. Kept conservative: an explicit number is required. The group is the step.
STEP_PATTERNS = (
    re.compile(r"^ProfilerStep#(\d+)$"),
    re.compile(r"^(?:train[_ ]?)?step[ _#:]?(\d+)$", re.IGNORECASE),
    re.compile(r"^iteration[ _#:]?(\d+)$", re.IGNORECASE),
)


def pid_of(expr: str) -> str:
    return f"(({expr}) >> 24) & {GID_MASK}"


def tid_of(expr: str) -> str:
    return f"({expr}) & {GID_MASK}"


class ActivityReader:
    """Reads the activity tables of one export into a TraceWriter."""

    def __init__(self, con: sqlite3.Connection, cat: Catalog, reader: Reader, writer, report=None):
        self.con = con
        self.cat = cat
        self.reader = reader
        self.w = writer
        self.report = report or (lambda: None)
        self.next_eid = 0
        self.absent: list[str] = []
        self.step_rows: dict[int, list[tuple]] = {}
        # (globalPid, contextId) -> deviceId, from the kernels: synchronization records
        # carry deviceId 0 whatever the device (two processes on GPUs 0 and 1: both 0).
        self.context_devices: dict[tuple[int, int], int] = {}
        self.tx = duckdb.connect()
        self._register_lookups()

    def close(self) -> None:
        self.tx.close()

    # -- lookups ------------------------------------------------------------------
    def _register_lookups(self) -> None:
        con, cat = self.con, self.cat
        strings = self.reader.table("SELECT id, value FROM StringIds") if cat.has("StringIds") else None
        if strings is None or strings.num_rows == 0:
            strings = pa.table({"id": pa.array([], pa.int64()), "value": pa.array([], pa.string())})
        self.tx.register("strings", strings)
        self.string_ids = strings.column("id").combine_chunks().cast(pa.int64())
        self.string_values = strings.column("value").combine_chunks()
        # Runtime API names without their version suffix, per string, once.
        self.api_values = pc.replace_substring_regex(self.string_values, r"_v[0-9]+$", "")
        self.tx.register("copykind", _rows(enums.memcpy_kinds(con, cat), ("id", "direction", "short", "label")))
        self.tx.register("memkind", _rows(enums.memory_kinds(con, cat), ("id", "memory", "label")))
        self.tx.register("synctype", _rows(enums.labels(con, cat, "ENUM_CUPTI_SYNC_TYPE"), ("id", "label")))
        self.tx.register("domains", _rows(self._nvtx_domains(), ("id", "name")))

    def _nvtx_domains(self) -> list[dict]:
        """NVTX domain names from NvtxDomainCreate records (domainId -> name)."""
        if not self.cat.has("NVTX_EVENTS") or not self.cat.has_column("NVTX_EVENTS", "domainId"):
            return []
        types = enums.event_type_ids(self.con, self.cat, ("NvtxDomainCreate",))
        if not types:
            return []
        text = self._nvtx_text_sql()
        rows = self.con.execute(
            f"SELECT DISTINCT domainId, {text} FROM NVTX_EVENTS n "
            f"WHERE eventType IN ({','.join(map(str, types))}) AND domainId IS NOT NULL").fetchall()
        return [{"id": d, "name": name} for d, name in rows if name is not None]

    def _nvtx_text_sql(self) -> str:
        parts = []
        if self.cat.has_column("NVTX_EVENTS", "text"):
            parts.append("n.text")
        if self.cat.has_column("NVTX_EVENTS", "textId") and self.cat.has("StringIds"):
            parts.append("(SELECT value FROM StringIds WHERE id = n.textId)")
        return f"coalesce({', '.join(parts)})" if len(parts) > 1 else (parts[0] if parts else "NULL")

    # -- SQLite-side helpers -----------------------------------------------------------
    def _also(self, column: str, table: str) -> Expr:
        """A column read as well as kept in `extra` (args), or NULL where the table lacks it."""
        return Expr(quote(column) if self.cat.has_column(table, column) else "NULL", ())

    def _string(self, column: str) -> str:
        """SQLite expression: the StringIds text of an id column. (Looked up in the reading
        thread, which runs beside the one storing the rows.)"""
        if not self.cat.has("StringIds"):
            return "NULL"
        return f"(SELECT value FROM StringIds WHERE id = {column})"

    def _label(self, column: str, table: str) -> str:
        """SQLite expression: the ENUM label of a code column (inline CASE; enums are small)."""
        rows = enums.labels(self.con, self.cat, table)
        if not rows:
            return "NULL"
        whens = " ".join(f"WHEN {int(r['id'])} THEN '{_sql_text(r['label'])}'" for r in rows)
        return f"(CASE {column} {whens} END)"

    # -- generic table pass ---------------------------------------------------------
    def _select(self, table: str, mapped: dict, where: str = "", required: tuple[str, ...] = (),
                args: dict[str, str] | None = None) -> str:
        """SELECT of the mapped aliases (first present candidate column) plus `extra`: one
        JSON object, built by SQLite, of every other column and of `args` (name -> SQLite
        expression over the table's columns, e.g. an ENUM label)."""
        used: set[str] = set()
        items = []
        for alias, candidates in mapped.items():
            if isinstance(candidates, Expr):
                items.append(f"{candidates.sql} AS {alias}")
                used.update(candidates.uses)
                continue
            names = (candidates,) if isinstance(candidates, str) else candidates
            column = self.cat.first(table, *names)
            used.update(n for n in names if self.cat.has_column(table, n))
            if column is None:
                if names[0] in required:
                    self.absent.append(f"{table}.{names[0]}")
                items.append(f"NULL AS {alias}")
            else:
                items.append(f"{quote(column)} AS {alias}")
        types = self.cat.types.get(table, {})
        pairs = [f"'{c}', {_json_value(quote(c), types.get(c, ''))}"
                 for c in self.cat.columns[table] if c not in used]
        pairs += [f"'{k}', {v}" for k, v in (args or {}).items() if v != "NULL"]
        items.append(f"{_json_object(pairs)} AS extra")
        return f"SELECT {', '.join(items)} FROM {quote(table)} {where}"

    def _run(self, table: str, select_sql: str, reason_sql: str, events_sql,
             side: tuple[tuple[str, str], ...] = (), after=None) -> None:
        """Read `table` in batches; store valid rows as events (+ side tables); count the rest.

        `events_sql` is a DuckDB query over the batch `b` (with `{ok}` for the validity
        condition), or, for the big tables, a function (batch, valid rows) -> (events
        columns, [(side table, columns)]) built with Arrow compute: no copy of the strings."""
        tx = self.tx
        for batch in self.reader.batches(select_sql):
            n = batch.num_rows
            if n == 0:
                continue
            self.w.read(n)
            ids = pa.array(np.arange(self.next_eid, self.next_eid + n, dtype=np.int64))
            self.next_eid += n
            data = pa.Table.from_batches([batch]).append_column("_eid", ids)
            tx.register("b", data)
            try:
                bad = tx.execute(f"""
                    SELECT reason, count(*), min(_eid) FROM (SELECT {reason_sql} AS reason, _eid FROM b)
                    WHERE reason IS NOT NULL GROUP BY reason
                """).fetchall()
                for reason, count, example_eid in bad:
                    example = tx.execute("SELECT * EXCLUDE (_eid) FROM b WHERE _eid = ?", [example_eid])
                    names = [d[0] for d in example.description]
                    self.w.issue(f"{table}: {reason}", count, dict(zip(names, example.fetchall()[0])))
                ok = f"({reason_sql}) IS NULL"
                if callable(events_sql):
                    valid = data if not bad else data.filter(
                        pa.array(np.isin(data.column("_eid").to_numpy(), _bad_ids(tx, reason_sql), invert=True)))
                    columns, extra_tables = events_sql(valid)
                    self.w.add_events(columns)
                    for target, cols in extra_tables:
                        self.w.append(target, cols)
                    events = pa.table(columns)
                else:
                    events = relation_table(tx.sql(events_sql.format(ok=ok)))
                    self.w.add_events({c: events.column(c) for c in events.column_names})
                for target, sql in side:
                    rows = relation_table(tx.sql(sql.format(ok=ok)))
                    self.w.append(target, {c: rows.column(c) for c in rows.column_names})
                if after is not None:
                    after(events)
            finally:
                tx.unregister("b")
            self.report()

    # -- tables ---------------------------------------------------------------------
    def kernels(self) -> None:
        t = "CUPTI_ACTIVITY_KIND_KERNEL"
        sel = self._select(t, {
            "t0": "start", "t1": "end", "dev": "deviceId", "stream": "streamId", "corr": "correlationId",
            "gpid": "globalPid", "nm": "demangledName", "sn": "shortName",
            # The mangled name is left out of args: as long as the demangled one, and
            # recoverable from the export (1M kernels would carry ~200 MB of it).
            "_mn": Expr("NULL", ("mangledName",)),
            "gx": "gridX", "gy": "gridY", "gz": "gridZ", "bx": "blockX", "by": "blockY", "bz": "blockZ",
            "regs": "registersPerThread", "ssm": "staticSharedMemory", "dsm": "dynamicSharedMemory",
            "gid": "graphId", "gnid": "graphNodeId", "ctx": self._also("contextId", t),
        }, required=("start", "end", "deviceId", "streamId", "correlationId", "demangledName"),
            args={"shortName": self._string("shortName") if self.cat.has_column(t, "shortName") else "NULL"})
        self._run(t, sel, _TIME_REASON, self._kernel_rows)

    def _kernel_rows(self, data: pa.Table):
        n = data.num_rows
        contexts = data.select(["gpid", "ctx", "dev"]).group_by(["gpid", "ctx", "dev"]).aggregate([])
        self.context_devices.update(
            ((g, c), d) for g, c, d in zip(*(contexts.column(k).to_pylist() for k in ("gpid", "ctx", "dev")))
            if c is not None and d is not None)
        name = self._names(data.column("nm"), self.string_values)
        if name.null_count:
            name = pc.coalesce(name, self._names(data.column("sn"), self.string_values))
        events = {
            "event_id": data.column("_eid"), "kind": _const("kernel", n), "name": name,
            "start_ns": _int(data.column("t0")), "dur_ns": pc.subtract(_int(data.column("t1")), _int(data.column("t0"))),
            "pid": _pid(data.column("gpid")), "tid": pa.nulls(n, pa.int64()),
            "device": _int(data.column("dev")), "stream": _int(data.column("stream")),
            "correlation": _int(data.column("corr")), "source_cat": _const("CUPTI_ACTIVITY_KIND_KERNEL", n),
            "args": data.column("extra"),
        }
        ssm, dsm = _int(data.column("ssm")), _int(data.column("dsm"))
        shared = pc.if_else(pc.and_(pc.is_null(ssm), pc.is_null(dsm)), pa.scalar(None, pa.int64()),
                            pc.add(pc.coalesce(ssm, 0), pc.coalesce(dsm, 0)))
        info = {"event_id": data.column("_eid"), "grid_x": data.column("gx"), "grid_y": data.column("gy"),
                "grid_z": data.column("gz"), "block_x": data.column("bx"), "block_y": data.column("by"),
                "block_z": data.column("bz"), "registers_per_thread": data.column("regs"),
                "shared_memory_bytes": shared, "graph_id": data.column("gid"),
                "graph_node_id": data.column("gnid")}
        return events, [("kernel_info", {k: _int(v) if k != "event_id" else v for k, v in info.items()})]

    def _names(self, ids, dictionary: pa.Array) -> pa.Array:
        """Strings for StringIds ids, as a dictionary array over `dictionary` (no copies)."""
        positions = pc.index_in(_int(ids), value_set=self.string_ids)
        if isinstance(positions, pa.ChunkedArray):
            positions = positions.combine_chunks()
        return pa.DictionaryArray.from_arrays(positions.cast(pa.int32()), dictionary)

    def memcpy(self) -> None:
        t = "CUPTI_ACTIVITY_KIND_MEMCPY"
        has = self.cat.has_column
        sel = self._select(t, {
            "t0": "start", "t1": "end", "dev": "deviceId", "stream": "streamId", "corr": "correlationId",
            "gpid": "globalPid", "nbytes": "bytes", "ck": "copyKind", "sk": "srcKind", "dk": "dstKind",
        }, required=("start", "end", "bytes", "copyKind", "srcKind", "dstKind"), args={
            "copyKindName": self._label("copyKind", "ENUM_CUDA_MEMCPY_OPER") if has(t, "copyKind") else "NULL",
            "srcKindName": self._label("srcKind", "ENUM_CUDA_MEM_KIND") if has(t, "srcKind") else "NULL",
            "dstKindName": self._label("dstKind", "ENUM_CUDA_MEM_KIND") if has(t, "dstKind") else "NULL",
        })
        self._run(t, sel, _TIME_REASON, f"""
            SELECT b._eid AS event_id, 'memcpy' AS kind,
                   'Memcpy ' || coalesce(ck.short, 'Unknown')
                     || CASE WHEN b.sk IS NULL AND b.dk IS NULL THEN ''
                             ELSE ' (' || coalesce(sk.label, '?') || ' -> ' || coalesce(dk.label, '?') || ')' END AS name,
                   b.t0 AS start_ns, b.t1 - b.t0 AS dur_ns, {pid_of('b.gpid')} AS pid,
                   CAST(NULL AS BIGINT) AS tid, b.dev AS device, b.stream AS stream, b.corr AS correlation,
                   '{t}' AS source_cat, b.extra AS args
            FROM b LEFT JOIN copykind ck ON ck.id = b.ck LEFT JOIN memkind sk ON sk.id = b.sk
                   LEFT JOIN memkind dk ON dk.id = b.dk
            WHERE {{ok}}""", side=(("copies", """
            SELECT b._eid AS event_id, b.nbytes AS bytes, ck.direction AS direction,
                   sk.memory AS src_memory, dk.memory AS dst_memory
            FROM b LEFT JOIN copykind ck ON ck.id = b.ck LEFT JOIN memkind sk ON sk.id = b.sk
                   LEFT JOIN memkind dk ON dk.id = b.dk
            WHERE {ok}"""),))

    def memset(self) -> None:
        t = "CUPTI_ACTIVITY_KIND_MEMSET"
        sel = self._select(t, {
            "t0": "start", "t1": "end", "dev": "deviceId", "stream": "streamId", "corr": "correlationId",
            "gpid": "globalPid", "nbytes": "bytes", "mk": "memKind",
        }, required=("start", "end", "bytes"), args={
            "memKindName": self._label("memKind", "ENUM_CUDA_MEM_KIND")
            if self.cat.has_column(t, "memKind") else "NULL"})
        self._run(t, sel, _TIME_REASON, f"""
            SELECT b._eid AS event_id, 'memset' AS kind,
                   'Memset' || CASE WHEN mk.label IS NULL THEN '' ELSE ' (' || mk.label || ')' END AS name,
                   b.t0 AS start_ns, b.t1 - b.t0 AS dur_ns, {pid_of('b.gpid')} AS pid,
                   CAST(NULL AS BIGINT) AS tid, b.dev AS device, b.stream AS stream, b.corr AS correlation,
                   '{t}' AS source_cat, b.extra AS args
            FROM b LEFT JOIN memkind mk ON mk.id = b.mk
            WHERE {{ok}}""", side=(("copies", """
            SELECT b._eid AS event_id, b.nbytes AS bytes, 'memset' AS direction,
                   CAST(NULL AS VARCHAR) AS src_memory, mk.memory AS dst_memory
            FROM b LEFT JOIN memkind mk ON mk.id = b.mk
            WHERE {ok}"""),))

    def sync(self) -> None:
        t = "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"
        column = self.cat.first(t, "syncType", "deprecatedSyncType")
        sel = self._select(t, {
            "t0": "start", "t1": "end", "dev": "deviceId", "stream": "streamId", "corr": "correlationId",
            "gpid": "globalPid", "st": Expr(quote(column) if column else "NULL", (column,) if column else ()),
            "ctx": self._also("contextId", t),
        }, required=("start", "end"), args={
            "syncType": quote(column) if column else "NULL",
            "syncTypeName": self._label(quote(column), "ENUM_CUPTI_SYNC_TYPE") if column else "NULL"})
        if column is None:
            self.absent.append(f"{t}.syncType")
        pairs = list(self.context_devices.items())
        self.tx.register("context_device", pa.table({
            "gpid": pa.array([g for (g, _), _ in pairs], pa.int64()),
            "ctx": pa.array([c for (_, c), _ in pairs], pa.int64()),
            "dev": pa.array([d for _, d in pairs], pa.int64())}))
        self._run(t, sel, _TIME_REASON, f"""
            SELECT b._eid AS event_id, 'sync' AS kind, coalesce(st.label, 'Synchronization') AS name,
                   b.t0 AS start_ns, b.t1 - b.t0 AS dur_ns, {pid_of('b.gpid')} AS pid,
                   CAST(NULL AS BIGINT) AS tid, coalesce(cd.dev, b.dev) AS device, b.stream AS stream,
                   b.corr AS correlation, '{t}' AS source_cat, b.extra AS args
            FROM b LEFT JOIN synctype st ON st.id = b.st
                   LEFT JOIN context_device cd ON cd.gpid = b.gpid AND cd.ctx = b.ctx
            WHERE {{ok}}""")

    def runtime(self) -> None:
        self._host_calls("CUPTI_ACTIVITY_KIND_RUNTIME", with_correlation=True)

    def osrt(self) -> None:
        self._host_calls("OSRT_API", with_correlation=False)

    def _host_calls(self, t: str, with_correlation: bool) -> None:
        mapped = {"t0": "start", "t1": "end", "gtid": "globalTid", "nid": "nameId"}
        if with_correlation:
            mapped["corr"] = "correlationId"
        has = self.cat.has_column
        sel = self._select(t, mapped, required=("start", "end", "globalTid", "nameId")
                           + (("correlationId",) if with_correlation else ()), args={
            # The name as recorded (`cudaLaunchKernel_v7000`); events.name is without the suffix.
            "api_name": self._string("nameId") if has(t, "nameId") else "NULL",
            "eventClassName": self._label("eventClass", "ENUM_NSYS_EVENT_CLASS") if has(t, "eventClass") else "NULL",
        })

        def rows(data: pa.Table):
            n = data.num_rows
            gtid = _int(data.column("gtid"))
            return {
                "event_id": data.column("_eid"), "kind": _const("runtime", n),
                "name": self._names(data.column("nid"), self.api_values),
                "start_ns": _int(data.column("t0")),
                "dur_ns": pc.subtract(_int(data.column("t1")), _int(data.column("t0"))),
                "pid": _pid(gtid), "tid": pc.bit_wise_and(gtid, GID_MASK),
                "device": pa.nulls(n, pa.int32()), "stream": pa.nulls(n, pa.int64()),
                "correlation": _int(data.column("corr")) if with_correlation else pa.nulls(n, pa.int64()),
                "source_cat": _const(t, n), "args": data.column("extra"),
            }, []

        self._run(t, sel, _TIME_REASON, rows)

    def nvtx(self) -> None:
        t = "NVTX_EVENTS"
        con, cat = self.con, self.cat
        ranges = enums.event_type_ids(con, cat, enums.NVTX_RANGES) or [-1]
        marks = enums.event_type_ids(con, cat, enums.NVTX_MARKS) or [-1]
        meta = enums.event_type_ids(con, cat, enums.NVTX_METADATA)
        where = f"WHERE eventType NOT IN ({','.join(map(str, meta))})" if meta else ""
        has_text = cat.has_column(t, "text")
        kept = set(ranges) | set(marks)
        type_names = {c: sym for c, (sym, _) in enums.load(con, cat, "ENUM_NSYS_EVENT_TYPE").items() if c in kept}
        type_case = ("(CASE eventType " + " ".join(f"WHEN {c} THEN '{_sql_text(n)}'" for c, n in type_names.items())
                     + " END)") if type_names else "NULL"
        sel = self._select(t, {
            "t0": "start", "t1": "end", "et": "eventType", "gtid": "globalTid", "tsid": "textId",
            "dom": "domainId",
            # Text is selected never NULL (ADBC infers a batch's types from its first rows).
            "txt": Expr("coalesce(text, '')", ("text",)) if has_text else Expr("''"),
            "txt_null": Expr("(text IS NULL)") if has_text else Expr("1"),
        }, where=where, required=("start", "end", "eventType", "globalTid"), args={
            "eventTypeName": type_case if cat.has_column(t, "eventType") else "NULL",
            "domainId": "domainId" if cat.has_column(t, "domainId") else "NULL",
        })
        r = ",".join(map(str, ranges))
        m = ",".join(map(str, marks))
        reason = f"""CASE
            WHEN b.et NOT IN ({r}, {m}) THEN 'NVTX event type ' || b.et || ' not ingested'
            WHEN b.t0 IS NULL THEN 'missing start'
            WHEN b.et IN ({r}) AND b.t1 IS NULL THEN 'NVTX range without end'
            WHEN b.et IN ({r}) AND b.t1 < b.t0 THEN 'end before start' END"""
        # The domain name is known only from NvtxDomainCreate records: added here.
        self._run(t, sel, reason, f"""
            SELECT b._eid AS event_id, 'annotation' AS kind,
                   CASE WHEN b.txt_null THEN s.value ELSE b.txt END AS name,
                   b.t0 AS start_ns, CASE WHEN b.et IN ({m}) THEN 0 ELSE b.t1 - b.t0 END AS dur_ns,
                   {pid_of('b.gtid')} AS pid, {tid_of('b.gtid')} AS tid,
                   CAST(NULL AS INTEGER) AS device, CAST(NULL AS BIGINT) AS stream,
                   CAST(NULL AS BIGINT) AS correlation, '{t}' AS source_cat,
                   {_add_arg('b.extra', 'domain', 'CAST(to_json(dn.name) AS VARCHAR)')} AS args
            FROM b LEFT JOIN strings s ON s.id = b.tsid LEFT JOIN domains dn ON dn.id = b.dom
            WHERE {{ok}}""", after=self._collect_steps)

    def collectives(self) -> None:
        """A `collectives` row per NCCL kernel: op from the kernel name (shared classifier),
        dtype where the name carries one (`ncclKernel_AllReduce_RING_LL_Sum_bf16`).
        Message bytes and ranks are not in an Nsight export unless NCCL's NVTX payloads
        were exported as blobs (`--include-blobs`), which are binary: left NULL."""
        con = self.w.store.con
        rows = con.execute("""
            SELECT event_id - ?, name FROM events
            WHERE trace_id = ? AND kind = 'kernel' AND regexp_matches(name, '^(void )?nccl', 'i')
        """, [self.w.event_base, self.w.trace_id]).fetchall()
        if not rows:
            return
        ops = {name: (classify.collective_op(name), _nccl_dtype(name)) for name in {n for _, n in rows}}
        self.w.append("collectives", {
            "event_id": [eid for eid, _ in rows],
            "op": [ops[n][0] for _, n in rows],
            "dtype": [ops[n][1] for _, n in rows],
        })

    def _collect_steps(self, events: pa.Table) -> None:
        self.tx.register("ev", events)
        try:
            for i, pattern in enumerate(STEP_PATTERNS):
                flags = "i" if pattern.flags & re.IGNORECASE else ""
                rows = self.tx.execute(
                    "SELECT event_id, name, start_ns, start_ns + dur_ns FROM ev "
                    "WHERE dur_ns > 0 AND regexp_matches(name, ?, ?)", [pattern.pattern, flags]).fetchall()
                if rows:
                    self.step_rows.setdefault(i, []).extend(rows)
        finally:
            self.tx.unregister("ev")

    def steps(self) -> list[dict]:
        """Steps from the first STEP_PATTERNS entry that matched any NVTX range."""
        for i, pattern in enumerate(STEP_PATTERNS):
            if self.step_rows.get(i):
                return [{"step": int(pattern.match(name).group(1)), "name": name, "start_ns": start,
                         "end_ns": end, "source": "nvtx", "event_id": eid}
                        for eid, name, start, end in sorted(self.step_rows[i], key=lambda r: r[2])]
        return []


def _const(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def _int(column) -> pa.Array:
    """An integer column as int64 (a batch of only NULLs arrives typed null)."""
    return column if column.type == pa.int64() else column.cast(pa.int64())


def _pid(global_id) -> pa.Array:
    return pc.bit_wise_and(pc.shift_right(_int(global_id), 24), GID_MASK)


def _bad_ids(tx, reason_sql: str) -> np.ndarray:
    rows = relation_table(tx.sql(f"SELECT _eid FROM b WHERE ({reason_sql}) IS NOT NULL"))
    return rows.column(0).to_numpy()


_TIME_REASON = """CASE WHEN b.t0 IS NULL OR b.t1 IS NULL THEN 'missing start or end'
                       WHEN b.t1 < b.t0 THEN 'end before start' END"""


# SQLite (before 3.48) allows 127 arguments per function call: wider objects are built
# from several json_object() calls joined as text.
_PAIRS_PER_CALL = 60


def _json_object(pairs: list[str]) -> str:
    if not pairs:
        return "'{}'"
    if len(pairs) <= _PAIRS_PER_CALL:
        return f"json_object({', '.join(pairs)})"
    chunks = [pairs[i:i + _PAIRS_PER_CALL] for i in range(0, len(pairs), _PAIRS_PER_CALL)]
    inner = " || ',' || ".join(f"substr(json_object({', '.join(c)}), 2, length(json_object({', '.join(c)})) - 2)"
                               for c in chunks)
    return f"('{{' || {inner} || '}}')"


def _json_value(col: str, declared: str) -> str:
    # json_object refuses BLOBs: give their size instead of their bytes. Only numeric
    # columns skip the check (NVTX binaryData is declared TEXT and holds BLOBs).
    if declared in ("INTEGER", "REAL"):
        return col
    return f"CASE WHEN typeof({col}) = 'blob' THEN 'blob of ' || length({col}) || ' bytes' ELSE {col} END"


# NCCL kernel-name dtype tokens -> the names Kineto uses for element types.
_NCCL_DTYPES = {
    "i8": "Char", "int8_t": "Char", "u8": "Byte", "uint8_t": "Byte", "i32": "Int", "int32_t": "Int",
    "u32": "UInt32", "uint32_t": "UInt32", "i64": "Long", "int64_t": "Long", "u64": "UInt64",
    "uint64_t": "UInt64", "f16": "Half", "half": "Half", "f32": "Float", "float": "Float",
    "f64": "Double", "double": "Double", "bf16": "BFloat16", "__nv_bfloat16": "BFloat16",
    "f8e4m3": "Float8_e4m3fn", "f8e5m2": "Float8_e5m2",
}
_NCCL_DTYPE = re.compile(r"_(" + "|".join(sorted(map(re.escape, _NCCL_DTYPES), key=len, reverse=True)) + r")(?:\b|_|\(|$)")


def _nccl_dtype(name: str) -> str | None:
    match = _NCCL_DTYPE.search(name.split("(")[0])
    return _NCCL_DTYPES[match.group(1)] if match else None


def _add_arg(extra: str, key: str, json_literal: str) -> str:
    """DuckDB expression: the JSON object text `extra` with `key` set to `json_literal`
    (already JSON) when that is not NULL. chr() spells the braces: these SQL strings also
    go through str.format()."""
    return (f"CASE WHEN {json_literal} IS NULL THEN {extra} "
            f"WHEN {extra} = chr(123) || chr(125) THEN chr(123) || '\"{key}\":' || {json_literal} || chr(125) "
            f"ELSE left({extra}, -1) || ',\"{key}\":' || {json_literal} || chr(125) END")


def _sql_text(text: str) -> str:
    return str(text).replace("'", "''")


def _rows(rows: list[dict], names: tuple[str, ...]) -> pa.Table:
    return pa.table({n: pa.array([r.get(n) for r in rows],
                                 pa.int64() if n == "id" else pa.string()) for n in names})

