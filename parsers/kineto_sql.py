"""The fast path of the Kineto parser: DuckDB reads a piece of `traceEvents` (~32 MB of
the array) and inserts the ordinary records into `events` in one INSERT ... SELECT, with
no Python object per record.

Ordinary: an X/i/I record with a known category, a name, a finite ts (and dur >= 0 for
X), and pid/tid/stream/device/correlation/External id given as integers (hex too, as
ROCm writes streams). Every other record (metadata, counters, B/E, flows other than
launch flows, and any record of an odd shape, e.g. a string pid) is inserted as a marked
placeholder row carrying its fields as JSON text, then taken out again and handed, in
file order, to `EventBuilder`, the exact record-by-record logic. Their placeholder ids
stay unused (local ids are unique, with small gaps). Launch flows (ac2g) are only
counted: derive.link_launches joins on correlation instead.

Numbers stay exact: DuckDB gives a JSON number as its shortest decimal text (the double
msgspec would give), plain integers go through BIGINT and anything else through
DECIMAL(38, 3), as `kineto_read.micros_to_ns` does in Python.

A piece is first checked by msgspec (valid JSON, only objects, and counted): a cut inside
a string or a non-object element never reaches DuckDB. Should DuckDB still refuse one,
`FastPathFailed` makes the parser remove the trace and start again without the fast path.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import duckdb
import msgspec

from . import kineto_args as A
from .kineto_read import Ev
from .kineto_tables import DEVICE_LANE_KINDS, FLOW_LINK_KIND, category_table

_COLUMNS = {"ph": "VARCHAR", "cat": "VARCHAR", "name": "VARCHAR", "pid": "VARCHAR",
            "tid": "VARCHAR", "ts": "VARCHAR", "dur": "VARCHAR", "id": "VARCHAR", "args": "JSON"}
# args fields read for every event: a[1] .. a[5] in SQL.
_EVENT_ARGS = ("$.correlation", '$."External id"', '$."external id"', "$.device", "$.stream")
_KERNEL_ARGS = ("$.grid[0]", "$.grid[1]", "$.grid[2]", "$.block[0]", "$.block[1]", "$.block[2]",
                '$."registers per thread"', '$."shared memory"', '$."blocks per SM"',
                '$."warps per SM"', '$."est. achieved occupancy %"', "$.grid", "$.block")
_KERNEL_COLUMNS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
                   "registers_per_thread", "shared_memory_bytes", "blocks_per_sm",
                   "warps_per_sm", "occupancy_pct")
SQL_PIECE_BYTES = 32 << 20
_EVENT_COLUMNS = ["event_id", "kind", "name", "start_ns", "dur_ns", "pid", "tid", "device", "stream",
                  "correlation", "external_id", "source_cat", "args"]
_LAUNCH_FLOW_CATS = tuple(c for c, kind in FLOW_LINK_KIND.items() if kind is None)
# Fields of a record the SQL does not store, as text, for the record-by-record path.
_REST_TEXT = ("ph", "cat", "name", "pid", "tid", "ts", "dur", "id", "args")


class _Element(msgspec.Struct, gc=False):
    """An array element that must be an object; its fields are skipped."""


_COUNT = msgspec.json.Decoder(list[_Element])
_REST = msgspec.json.Decoder(list[Any])


class FastPathFailed(Exception):
    """DuckDB refused a piece msgspec accepted: parse the trace again without SQL."""


def _quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _sql_list(values) -> str:
    return "[" + ", ".join(map(_quote, values)) + "]"


def _sql_in(values) -> str:
    return "(" + ", ".join(map(_quote, values)) + ")"


_LANE = f"kind IN {_sql_in(sorted(DEVICE_LANE_KINDS))}"

_MACROS = [
    # An integer text as BIGINT; NULL (the record goes to the exact Python path) for a
    # text with a fraction or an exponent, which DuckDB would round where as_int says None.
    """CREATE OR REPLACE TEMP MACRO _k_id(x) AS CASE
         WHEN NOT (contains(x, '.') OR contains(x, 'e') OR contains(x, 'E')) THEN TRY_CAST(x AS BIGINT) END""",
    # A plain integer text (no fraction, exponent or hex) as BIGINT, else NULL.
    """CREATE OR REPLACE TEMP MACRO _k_us(x) AS CASE
         WHEN NOT (contains(x, '.') OR contains(x, 'e') OR contains(x, 'E') OR contains(x, 'x'))
         THEN TRY_CAST(x AS BIGINT) END""",
    # Microseconds text -> ns for what is not a plain integer: DECIMAL(38, 3).
    """CREATE OR REPLACE TEMP MACRO _k_dec_ns(x) AS CASE
         WHEN abs(TRY_CAST(x AS DECIMAL(38, 3))) < 9000000000000000
         THEN CAST(TRY_CAST(x AS DECIMAL(38, 3)) * 1000 AS BIGINT) END""",
    # as_int / as_float of kineto_args, for the launch configuration of kernels.
    """CREATE OR REPLACE TEMP MACRO _k_int(x) AS
       CASE WHEN isfinite(TRY_CAST(x AS DOUBLE)) AND TRY_CAST(x AS DOUBLE) = trunc(TRY_CAST(x AS DOUBLE))
            THEN TRY_CAST(TRY_CAST(x AS DOUBLE) AS BIGINT) END""",
    """CREATE OR REPLACE TEMP MACRO _k_float(x) AS
       CASE WHEN x NOT IN ('true', 'false') AND isfinite(TRY_CAST(rtrim(trim(x), '%') AS DOUBLE))
            THEN TRY_CAST(rtrim(trim(x), '%') AS DOUBLE) END""",
]


def _kind_case() -> str:
    """The category table as one SQL CASE (cheaper than a join per piece)."""
    by_cat, by_name = category_table()
    branches = []
    for cat in sorted({c for c, _ in by_name} | set(by_cat)):
        names = " ".join(f"WHEN {_quote(n)} THEN {_quote(k)}" for (c, n), k in by_name.items() if c == cat)
        default = _quote(by_cat[cat]) if cat in by_cat else "NULL"
        branches.append(f"WHEN {_quote(cat)} THEN " + (f"CASE name {names} ELSE {default} END" if names else default))
    return f"CASE coalesce(cat, '') {' '.join(branches)} END"


def _piece_query() -> str:
    """Rows for `events` from the piece in file `?`: ordinary records in full, others as
    placeholders (kind NULL, their fields as a JSON list in args); launch flows left out."""
    ints = {"pid_n": "pid", "tid_n": "tid", "stream_n": "a[5]", "dev_n": "a[4]",
            "correlation": "a[1]", "external_id": "coalesce(a[2], a[3])"}
    ids_ok = " AND ".join(f"({t} IS NULL OR {n} IS NOT NULL)" for n, t in ints.items())
    fast = (f"ph IN ('X', 'i', 'I') AND kind IS NOT NULL AND name IS NOT NULL AND start_ns IS NOT NULL "
            f"AND dur_ns >= 0 AND {ids_ok}")
    return f"""
    SELECT row_number() OVER () - 1 AS event_id,
           CASE WHEN fast THEN kind END AS kind, name, start_ns, dur_ns,
           CASE WHEN {_LANE} THEN NULL ELSE pid_n END AS pid,
           CASE WHEN {_LANE} THEN NULL ELSE tid_n END AS tid,
           CASE WHEN {_LANE} THEN coalesce(dev_n, pid_n) ELSE dev_n END AS device,
           CASE WHEN {_LANE} THEN coalesce(stream_n, tid_n) END AS stream,
           correlation, external_id, cat AS source_cat,
           CASE WHEN fast THEN args ELSE CAST(to_json([{", ".join(c + "::VARCHAR" for c in _REST_TEXT)}]) AS JSON) END AS args
    FROM (
        SELECT *, coalesce({fast}, false) AS fast FROM (
            SELECT *,
                CASE WHEN abs(ts_i) < 9000000000000000 THEN ts_i * 1000 ELSE _k_dec_ns(ts) END AS start_ns,
                CASE WHEN ph <> 'X' THEN 0
                     WHEN abs(dur_i) < 9000000000000000 THEN dur_i * 1000 ELSE _k_dec_ns(dur) END AS dur_ns,
                {", ".join(f"_k_id({t}) AS {n}" for n, t in ints.items())}
            FROM (
                SELECT *, {_kind_case()} AS kind,
                       _k_us(ts) AS ts_i, _k_us(dur) AS dur_i,
                       CASE WHEN ph IN ('X', 'i', 'I')
                            THEN json_extract_string(args, {_sql_list(_EVENT_ARGS)}) END AS a
                FROM read_json(?, format = 'array', columns = ?, maximum_object_size = 16777216)
            )
        )
    )
    WHERE fast OR NOT (coalesce(ph, '') IN ('s', 't', 'f') AND coalesce(cat, '') IN {_sql_in(_LAUNCH_FLOW_CATS)})
    """


class SqlPieces:
    """Feeds pieces of the events array through DuckDB; one per trace."""

    def __init__(self, builder):
        self.b = builder
        self.w = builder.w
        self.con = self.w.store.con
        for sql in _MACROS:
            self.con.execute(sql)
        self.query = _piece_query()
        fd, self.tmp = tempfile.mkstemp(prefix="profkit-kineto-", suffix=".json")
        os.close(fd)

    def close(self) -> None:
        try:
            os.unlink(self.tmp)
        except OSError:
            pass

    # -- one piece ----------------------------------------------------------------------
    def add(self, piece: bytes) -> bool:
        """Ingest one piece (a JSON array text). False if it has a non-object element
        (nothing was stored: the caller decodes the piece another way); msgspec's
        DecodeError if it is not valid JSON."""
        try:
            count = len(_COUNT.decode(piece))
        except msgspec.ValidationError:
            return False
        with open(self.tmp, "wb") as fh:
            fh.write(piece)
        w, b = self.w, self.b
        lo = b.next_id
        try:
            n = w.append_query("events", f"SELECT event_id + {lo} AS event_id, * EXCLUDE (event_id) FROM ({self.query})",
                               [self.tmp, _COLUMNS], _EVENT_COLUMNS)
        except duckdb.Error as exc:
            raise FastPathFailed(str(exc)) from None
        w.read(count)
        b.next_id = lo + n
        rest = w.take_events("kind IS NULL AND event_id >= ?", [lo], "args")
        self._side_tables(lo)
        if rest:
            b.add_records([_record(_REST.decode(text)) for (text,) in rest])
        return True

    def _side_tables(self, lo: int) -> None:
        """kernel_info, copies, collectives and the parser's tallies for events >= lo."""
        w, con = self.w, self.con
        first = w.event_base + lo
        w.append_query("kernel_info", f"""
            SELECT event_id - {w.event_base} AS event_id,
                   {", ".join(f"_k_int(v[{i + 1}]) AS {c}" if i < 8 else f"_k_float(v[{i + 1}]) AS {c}"
                              for i, c in enumerate(_KERNEL_COLUMNS))}
            FROM (SELECT event_id, json_extract_string(args, {_sql_list(_KERNEL_ARGS)}) AS v
                  FROM events WHERE trace_id = {w.trace_id} AND event_id >= {first} AND kind = 'kernel')
            WHERE v[12] IS NOT NULL OR v[13] IS NOT NULL OR v[7] IS NOT NULL
        """)
        # Copies and collectives are few: the Python row builders, on their args only.
        rows = con.execute(f"""
            SELECT event_id - {w.event_base}, kind, name, args FROM events
            WHERE trace_id = ? AND event_id >= ?
              AND (kind IN ('memcpy', 'memset') OR (kind = 'kernel' AND contains(args, '"Collective name"')))
        """, [w.trace_id, first]).fetchall()
        if rows:
            self._copies_and_collectives(rows)
        for kind, prefix, count, cats in con.execute("""
            SELECT kind, CASE WHEN kind = 'runtime' THEN lower(name[1:4]) END AS prefix,
                   count(*), list(DISTINCT source_cat)
            FROM events WHERE trace_id = ? AND event_id >= ? GROUP BY ALL
        """, [w.trace_id, first]).fetchall():
            self.b.kind_counts[kind] += count
            self.b.cats_seen.update(cats)
            if prefix is not None:
                self.b.runtime_prefixes[prefix] += count

    def _copies_and_collectives(self, rows: list[tuple]) -> None:
        args = A.decode_batch([a.encode() if a is not None else None for _, _, _, a in rows])
        copies, colls = [], []
        for (event_id, kind, name, _), a in zip(rows, args):
            if kind == "kernel":
                row = A.collective_row(event_id, name, a)
                if row:
                    colls.append(row)
            else:
                copies.append(A.copy_row(event_id, kind, name, a))
        for table, rows_ in (("copies", copies), ("collectives", colls)):
            if rows_:
                self.w.add_rows(table, rows_)


def _number(text: Any) -> Any:
    """A text column back to what the JSON held, as far as the parser cares: integers as
    int, everything else as the text (times are then read exactly by Decimal)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _record(row: tuple) -> Ev:
    ph, cat, name, pid, tid, ts, dur, id_, args = row
    return Ev(ph=ph, cat=cat, name=name, pid=_number(pid), tid=_number(tid), ts=_number(ts),
              dur=_number(dur), id=_number(id_),
              args=msgspec.Raw(args.encode()) if args is not None else msgspec.Raw())
