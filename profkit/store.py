"""The DuckDB store: opening it, and the writer every parser fills.

A parser sees only `TraceWriter`: it appends columns (lists, numpy arrays or Arrow
arrays) for one trace, using *local* event ids that start at 0 in that trace; the writer
shifts them to store-wide ids as it inserts, so parsers never coordinate ids.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import duckdb
import pyarrow as pa

from . import schema

# Columns that hold event ids and are shifted from local to store-wide ids on insert.
_ID_COLUMNS = {
    "events": ("event_id", "parent_id"),
    "kernel_info": ("event_id",),
    "copies": ("event_id",),
    "collectives": ("event_id",),
    "links": ("src_event", "dst_event"),
    "steps": ("event_id",),
}
_NO_AUTO_CHECKPOINT = "1000 GiB"
# Tables whose rows carry trace_id, filled in by the writer.
_TRACE_COLUMN = {"events", "links", "counters", "steps", "ingest_issues", "devices", "threads"}


def relation_table(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    """A DuckDB relation's rows as an Arrow table (DuckDB 1.x and 2.x name this differently)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


class Store:
    """A DuckDB database holding one or more traces in the profkit schema."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str | None = None):
        self.con = con
        self.path = path
        self.before_close: list = []  # callables run by close(), e.g. to wait for a cache copy

    @classmethod
    def open(cls, path: str | Path | None = None, read_only: bool = False) -> "Store":
        """Open (creating if needed) a store; `None` makes an in-memory one."""
        target = str(path) if path is not None else ":memory:"
        con = duckdb.connect(target, read_only=read_only)
        if path is None:
            # In memory a checkpoint only compresses. DuckDB's own came at random moments of
            # an ingest and cost more than they saved (1M Kineto events: load 6.2-6.5 s with
            # them, 5.4-5.6 s without; peak RSS 641 -> 618-631 MB). Parsers that need the
            # memory back ask for it (kineto_sql's CHECKPOINT every ~400 MB of JSON).
            con.execute(f"SET checkpoint_threshold = '{_NO_AUTO_CHECKPOINT}'")
        store = cls(con, None if path is None else str(path))
        if not read_only:
            store.create_schema()
        return store

    def create_schema(self) -> None:
        for statement in schema.ddl(in_file=self.path is not None):
            self.con.execute(statement)
        self.con.execute("DELETE FROM meta WHERE key = 'schema_version'")
        self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(schema.SCHEMA_VERSION)])

    def schema_version(self) -> int | None:
        try:
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.Error:
            return None
        return int(row[0]) if row else None

    def sql(self, query: str, params: Iterable[Any] | None = None) -> duckdb.DuckDBPyRelation:
        return self.con.sql(query, params=params) if params else self.con.sql(query)

    def rows(self, query: str, params: Iterable[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query and return its rows as dicts keyed by column name."""
        cur = self.con.execute(query, _params(params) or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def arrow(self, query: str, params: Iterable[Any] | Mapping[str, Any] | None = None) -> pa.Table:
        """Run a query and return an Arrow table.

        Through `con.sql()`, not `execute()`: DuckDB 2 copies every row of an `execute()`
        result once more on its way to Arrow (716,800 graph events: 220 MB of fresh memory
        against 112 MB, 0.10 s against 0.06 s; fresh memory is slow on a VM whose host takes
        freed memory back). `con.sql()` refuses to run while an `execute()` result on this
        connection is unfinished; such a result would be dropped by the next `execute()`
        anyway, so it is dropped here first."""
        self.settle()
        return relation_table(self.con.sql(query, params=_params(params)))

    def settle(self) -> None:
        """Drop any result an `execute()` left unfinished on this connection: DuckDB refuses
        `con.sql()` and `register()` beside one (the next `execute()` would drop it too)."""
        abort = getattr(self.con, "abort", None)  # DuckDB 2
        if abort is not None:
            abort()
        else:
            self.con.execute("SELECT 1").fetchall()

    @contextmanager
    def registered(self, table: pa.Table, name: str = "_profkit_input") -> Iterator[str]:
        """`table` as a view named `name` for the queries inside the block: how arrays of
        ids and values reach SQL (list parameters are converted value by value)."""
        self.con.register(name, table)
        try:
            yield name
        finally:
            self.con.unregister(name)

    def scalar(self, query: str, params: Iterable[Any] | Mapping[str, Any] | None = None) -> Any:
        # fetchall, not fetchone: a half-read result blocks register() on the connection.
        rows = self.con.execute(query, _params(params) or []).fetchall()
        return rows[0][0] if rows else None

    def inputs_not_read(self) -> list[dict[str, Any]]:
        """Files under an input directory that no parser claimed (table inputs_not_read;
        none in a store written before the table existed)."""
        if not self.scalar("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                           "AND schema_name = 'main' AND table_name = 'inputs_not_read'"):
            return []
        return self.rows("SELECT path, reason FROM inputs_not_read ORDER BY path")

    def trace_ids(self) -> list[int]:
        return [r[0] for r in self.con.execute("SELECT trace_id FROM traces ORDER BY trace_id").fetchall()]

    def next_trace_id(self) -> int:
        return int(self.scalar("SELECT coalesce(max(trace_id), -1) + 1 FROM traces"))

    def next_event_id(self) -> int:
        return int(self.scalar("SELECT coalesce(max(event_id), -1) + 1 FROM events"))

    def close(self) -> None:
        while self.before_close:
            self.before_close.pop(0)()
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_arrow(columns: Mapping[str, Any], types: Mapping[str, str]) -> pa.Table:
    arrays = {}
    length = None
    for name, values in columns.items():
        if name not in types:
            raise KeyError(f"unknown column {name!r}")
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            arr = values
        elif types[name] == "JSON":
            arr = pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))
                            for v in values], pa.string())
        else:
            arr = pa.array(values, _ARROW_TYPES.get(types[name]))
        if length is None:
            length = len(arr)
        elif len(arr) != length:
            raise ValueError(f"column {name!r} has {len(arr)} values, expected {length}")
        arrays[name] = arr
    return pa.table(arrays)


# DuckDB reads Arrow's JSON extension type into a JSON column without parsing it: tested
# with DuckDB 2 (earlier versions read the type too, untested here with 64-bit offsets).
_TAKES_ARROW_JSON = int(duckdb.__version__.split(".")[0]) >= 2


def checked_json(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text known to be valid JSON (a parser's own compiled scan checked every byte),
    typed as Arrow's JSON extension: DuckDB then stores it in a JSON column as it is,
    instead of parsing it again to validate it (1M Kineto args: 0.15-0.65 CPU-s, with the
    machine's phase). With a pyarrow before 19 (no JSON type) or a DuckDB before 2 it stays
    text, validated by DuckDB as before."""
    json_type = getattr(pa, "json_", None)
    if json_type is None or not _TAKES_ARROW_JSON:
        return text
    typ = json_type(text.type)
    return pa.chunked_array([pa.ExtensionArray.from_storage(typ, chunk) for chunk in text.chunks], typ)


_ARROW_TYPES = {
    "BIGINT": pa.int64(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(), "JSON": pa.string(),
}


class TraceWriter:
    """Appends one trace's rows to the store. Handed to a parser by the ingest."""

    def __init__(self, store: Store, trace_id: int, path: str):
        self.store = store
        self.trace_id = trace_id
        self.path = path
        self.event_base = store.next_event_id()
        self.fields: dict[str, Any] = {}
        self.issues: Counter[str] = Counter()
        self.issue_examples: dict[str, str] = {}
        self.unusable: set[str] = set()  # reasons counted by issue(), not not_stored()
        self.source_records = 0
        self._events_written = 0
        self._count_lock = threading.Lock()  # a parser may insert from a worker thread too
        self._started = time.perf_counter()
        # Set by a parser whose file may hold several processes' device work in one
        # recording (Nsight): the ingest then makes one trace per process (profkit.split).
        self.split_by_process = False

    # -- trace-level facts -------------------------------------------------
    def set_trace(self, **fields: Any) -> None:
        """Set columns of this trace's `traces` row (format, rank, metadata, ...)."""
        allowed = set(schema.column_names("traces")) - {"trace_id", "path"}
        unknown = set(fields) - allowed
        if unknown:
            raise KeyError(f"unknown traces columns: {sorted(unknown)}")
        self.fields.update(fields)

    def issue(self, reason: str, count: int = 1, example: Any = None) -> None:
        """Count input records that could not be used (malformed, inconsistent, of a kind
        this parser does not know), with a reason and one example: the reports say that
        the figures leave them out."""
        self._count(reason, count, example)
        if count > 0:
            self.unusable.add(reason)

    def not_stored(self, reason: str, count: int = 1, example: Any = None) -> None:
        """Count input records read and left out by design (metadata, tables profkit does
        not use), with a reason and one example."""
        self._count(reason, count, example)

    def _count(self, reason: str, count: int, example: Any) -> None:
        if count <= 0:
            return
        self.issues[reason] += count
        if reason not in self.issue_examples and example is not None:
            text = example if isinstance(example, str) else json.dumps(example, default=str)
            self.issue_examples[reason] = text[:300]

    def note(self, reason: str) -> None:
        """An ingest_issues row with count 0: something the input lacks (a table, a column)
        or could not be checked. Nothing was dropped, but `profkit info` shows it."""
        self.issues[reason] += 0

    def read(self, count: int = 1) -> None:
        """Count records read from the input (stored, kept as metadata, or counted as issues)."""
        self.source_records += count

    # -- rows ---------------------------------------------------------------
    def append(self, table_name: str, columns: Mapping[str, Any]) -> int:
        """Append columns to a table; returns the number of rows appended.

        Event-id columns hold local ids (0-based in this trace); they are shifted here.
        """
        types = {c.name: c.type for c in schema.table(table_name).columns}
        data = _as_arrow(columns, types)
        if data.num_rows == 0:
            return 0
        with self.store.registered(data, "_profkit_batch") as batch:
            return self._insert(table_name, list(data.column_names), batch)

    def append_query(self, table_name: str, query: str, params: Iterable[Any] | None = None,
                     columns: list[str] | None = None, *, con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Append the rows of a query (run on the store's connection) to a table: for
        parsers that stage their input in DuckDB and transform it there, without a round
        trip through Python. Same rules as `append` (local event ids, trace_id filled).
        `columns` names the query's columns (else they are found by planning it). `con`:
        a cursor of the store's connection to run on instead (from a worker thread)."""
        params = list(params or [])
        con = con or self.store.con
        if columns is None:
            cur = con.execute(f"SELECT * FROM ({query}) LIMIT 0", params)
            columns = [d[0] for d in cur.description]
            cur.fetchall()
        return self._insert(table_name, list(columns), f"({query})", params, con)

    def take_events(self, condition: str, local_params: Iterable[Any], columns: str,
                    *, con: duckdb.DuckDBPyConnection | None = None) -> list[tuple]:
        """Remove this trace's events matching `condition` (SQL over `events`; `event_id`
        in it is a local id) and return their `columns`, ordered by event id: for a parser
        that inserted placeholder rows in bulk and handles a few of them another way.
        `con` as for `append_query`."""
        con = con or self.store.con
        where = (f"trace_id = {self.trace_id} AND "
                 f"({condition.replace('event_id', f'(event_id - {self.event_base})')})")
        params = list(local_params)
        rows = con.execute(f"SELECT {columns} FROM events WHERE {where} ORDER BY event_id", params).fetchall()
        if rows:
            con.execute(f"DELETE FROM events WHERE {where}", params)
            with self._count_lock:
                self._events_written -= len(rows)
        return rows

    def _insert(self, table_name: str, names: list[str], source: str, params: list | None = None,
                con: duckdb.DuckDBPyConnection | None = None) -> int:
        types = {c.name: c.type for c in schema.table(table_name).columns}
        unknown = [n for n in names if n not in types]
        if unknown:
            raise KeyError(f"unknown column {unknown[0]!r}")
        shifted = _ID_COLUMNS.get(table_name, ())
        select = []
        names = list(names)
        for name in names:
            if name in shifted:
                select.append(f"{name} + {self.event_base} AS {name}")
            else:
                select.append(f"CAST({name} AS {types[name]}) AS {name}")
        if table_name in _TRACE_COLUMN and "trace_id" not in names:
            names.append("trace_id")
            select.append(f"{self.trace_id} AS trace_id")
        if table_name == "events" and "end_ns" not in names:
            names.append("end_ns")
            select.append("start_ns + dur_ns AS end_ns")
        row = (con or self.store.con).execute(
            f"INSERT INTO {table_name} ({', '.join(names)}) "
            f"SELECT {', '.join(select)} FROM {source}", params or []
        ).fetchone()
        count = int(row[0]) if row else 0
        if table_name == "events":
            with self._count_lock:
                self._events_written += count
        return count

    def add_events(self, columns: Mapping[str, Any]) -> int:
        return self.append("events", columns)

    def add_rows(self, table_name: str, rows: list[Mapping[str, Any]]) -> int:
        """Append row dicts (convenient for small tables: devices, threads, steps)."""
        if not rows:
            return 0
        names = sorted({k for row in rows for k in row})
        return self.append(table_name, {n: [row.get(n) for row in rows] for n in names})

    @property
    def events_written(self) -> int:
        return self._events_written

    # -- finish -------------------------------------------------------------
    def finish(self, file_bytes: int | None, file_mtime_ns: int | None) -> None:
        """Write the `traces` row and the issue counts."""
        con = self.store.con
        for reason, count in self.issues.items():
            con.execute("INSERT INTO ingest_issues (trace_id, reason, count, example, unusable) VALUES (?, ?, ?, ?, ?)",
                        [self.trace_id, reason, count, self.issue_examples.get(reason), reason in self.unusable])
        fields = dict(self.fields)
        metadata = fields.pop("metadata", None)
        row = {
            "trace_id": self.trace_id, "path": self.path,
            "clock_offset_ns": 0, "file_bytes": file_bytes, "file_mtime_ns": file_mtime_ns,
            "source_records": self.source_records or None,
            "issue_count": sum(self.issues.values()),
            "metadata": None if metadata is None else json.dumps(metadata, default=str),
            **fields,
        }
        names = list(row)
        con.execute(
            f"INSERT INTO traces ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
            [row[n] for n in names],
        )
        con.execute("""
            UPDATE traces SET
                event_count = s.n, start_ns = s.lo, end_ns = s.hi,
                ingest_seconds = ?
            FROM (SELECT count(*) AS n, min(start_ns) AS lo, max(end_ns) AS hi
                  FROM events WHERE trace_id = ?) s
            WHERE traces.trace_id = ?
        """, [time.perf_counter() - self._started, self.trace_id, self.trace_id])


def _params(params: Iterable[Any] | Mapping[str, Any] | None) -> list[Any] | dict[str, Any] | None:
    """A query's parameters as DuckDB takes them: by position, or by name (`$name`)."""
    if not params:
        return None
    return dict(params) if isinstance(params, Mapping) else list(params)
