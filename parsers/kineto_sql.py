"""The fast path of the Kineto parser: DuckDB reads pieces of `traceEvents` (~20 MB of
the array each, two per statement) and inserts the ordinary records into `events` in one
INSERT ... SELECT, with no Python object per record.

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
import queue
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
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
# Pieces of 20 MB read two per statement. Larger statements cost less CPU per record (1M
# events: 40 MB statements 1.8 CPU-s in DuckDB, 64 MB 1.3, 100 MB 1.2) but raise the peak
# RSS of a 5M-event ingest (40 MB: 1.65x the JSON, 60 MB: 2.05x, 100 MB: 2.3x; limit 2x).
SQL_PIECE_BYTES = 20 << 20
BATCH_PIECES = 2  # pieces read per statement
# Statements running at once. Each reads its files with one thread (WITH ORDINALITY).
# Two are 20-25% faster than one (1M events: 7.1 vs 9.4 s; 5M: 35 vs 44 s).
WORKERS = 2
# A CHECKPOINT after this many batches (~400 MB of JSON). It compresses the rows stored so
# far (the events table shrinks ~4x). DuckDB checkpoints by itself only when no other
# transaction is open, which with two statements in flight is never before the end (and an
# in-memory store never: profkit.store turns that off): the 5M-event ingest then peaked at
# 2.4x the JSON, and with these checkpoints at 1.6x.
CHECKPOINT_BATCHES = 10
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


def define_macros(con) -> None:
    for sql in _MACROS:
        con.execute(sql)


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
    """Rows for `events` from the pieces in the files `?`: ordinary records in full, others
    as placeholders (kind NULL, their fields as a JSON list in args); launch flows left
    out. event_id is the record's position in the files (WITH ORDINALITY numbers the rows
    in file order, which is also why DuckDB reads them with one thread)."""
    ints = {"pid_n": "pid", "tid_n": "tid", "stream_n": "a[5]", "dev_n": "a[4]",
            "correlation": "a[1]", "external_id": "coalesce(a[2], a[3])"}
    ids_ok = " AND ".join(f"({t} IS NULL OR {n} IS NOT NULL)" for n, t in ints.items())
    fast = (f"ph IN ('X', 'i', 'I') AND kind IS NOT NULL AND name IS NOT NULL AND start_ns IS NOT NULL "
            f"AND dur_ns >= 0 AND {ids_ok}")
    return f"""
    SELECT ordinality - 1 AS event_id,
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
                FROM read_json(?, format = 'array', columns = ?, maximum_object_size = 16777216) WITH ORDINALITY
            )
        )
    )
    WHERE fast OR NOT (coalesce(ph, '') IN ('s', 't', 'f') AND coalesce(cat, '') IN {_sql_in(_LAUNCH_FLOW_CATS)})
    """


class SqlPieces:
    """Feeds pieces of the events array through DuckDB; one per trace.

    Pieces are validated and written to temporary files here, then read in batches of
    `BATCH_PIECES` files per statement (each statement has a fixed cost) by a worker
    thread on its own cursor (DuckDB releases the GIL), so that DuckDB reads one batch
    while Python prepares the next and handles the previous one's leftovers. Ids: a batch of n records owns the local ids
    [base, base + 2n): the first n are the records' positions, the next n are for its
    leftover records (each gives at most one event) handled by EventBuilder."""

    def __init__(self, builder):
        self.b = builder
        self.w = builder.w
        define_macros(self.w.store.con)
        self.cursors: queue.SimpleQueue = queue.SimpleQueue()
        self._cursors = [self.w.store.con.cursor() for _ in range(WORKERS)]
        for cur in self._cursors:
            define_macros(cur)
            self.cursors.put(cur)
        self.query = _piece_query()
        self.dir = tempfile.mkdtemp(prefix="profkit-kineto-")
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="profkit-kineto-sql")
        self.files: list[str] = []  # the batch being filled
        self.records = 0
        self.serial = 0
        self.batches = 0            # batches submitted
        self.base = 0               # first local id of the next batch
        self.running: deque = deque()  # (future, batch) of the batches DuckDB is reading, oldest first

    def close(self) -> None:
        self.pool.shutdown(wait=True)  # nothing may still write when the trace ends
        shutil.rmtree(self.dir, ignore_errors=True)
        for cur in self._cursors:
            cur.close()

    # -- one piece ----------------------------------------------------------------------
    def add(self, piece: bytes) -> bool:
        """Take one piece (a JSON array text). False if it has a non-object element
        (everything before it is stored: the caller decodes the piece another way);
        msgspec's DecodeError if it is not valid JSON."""
        try:
            count = len(_COUNT.decode(piece))
        except msgspec.ValidationError:
            self.flush()
            return False
        path = os.path.join(self.dir, f"{self.serial}.json")
        self.serial += 1
        with open(path, "wb") as fh:
            fh.write(piece)
        self.w.read(count)
        self.files.append(path)
        self.records += count
        if len(self.files) >= BATCH_PIECES:
            self._submit()
        return True

    def flush(self) -> None:
        """Store everything taken so far (before the caller stores anything itself)."""
        self._submit()
        while self.running:
            self._collect()
        self.b.next_id = max(self.b.next_id, self.base)

    def _submit(self) -> None:
        if not self.files:
            return
        batch = (list(self.files), self.base, self.records)
        self.files, self.base, self.records = [], self.base + 2 * self.records, 0
        self.running.append((self.pool.submit(self._read_batch, *batch), batch))
        if len(self.running) > WORKERS:
            self._collect()
        self.batches += 1
        if self.batches % CHECKPOINT_BATCHES == 0:
            self._checkpoint()

    def _checkpoint(self) -> None:
        while self.running:
            self._collect()
        try:
            self.w.store.con.execute("CHECKPOINT")
        except duckdb.Error:
            pass  # only memory is at stake: the next checkpoint compresses these rows too

    def _collect(self) -> None:
        """Wait for the oldest running batch and hand its leftovers to Python."""
        future, (files, lo, n) = self.running.popleft()
        rest = future.result()
        for path in files:
            os.unlink(path)
        store_side_tables(self.b, lo, n)
        b = self.b
        if rest:
            b.next_id = lo + n
            b.add_records([_record(_REST.decode(text)) for (text,) in rest])
            assert b.next_id <= lo + 2 * n, "leftover records gave more events than records"

    # -- in the worker thread -----------------------------------------------------------
    def _read_batch(self, files: list[str], lo: int, n: int):
        cur = self.cursors.get()
        try:
            return self._read_batch_on(cur, files, lo, n)
        finally:
            self.cursors.put(cur)

    def _read_batch_on(self, cur, files: list[str], lo: int, n: int):
        w = self.w
        try:
            w.append_query("events", f"SELECT event_id + {lo} AS event_id, * EXCLUDE (event_id) FROM ({self.query})",
                           [files, _COLUMNS], _EVENT_COLUMNS, con=cur)
        except duckdb.Error as exc:
            raise FastPathFailed(str(exc)) from None
        # Literal bounds, not parameters: DuckDB then skips the row groups outside them.
        rest = w.take_events(f"kind IS NULL AND event_id >= {lo} AND event_id < {lo + n}", [], "args", con=cur)
        return rest

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


def store_side_tables(b, lo: int, n: int) -> None:
    """kernel_info, copies, collectives and the parser's tallies (kinds, categories,
    runtime-name prefixes) for the events of local ids [lo, lo + n) stored in bulk, from
    their stored rows. On the main connection (SqlPieces: while a worker reads the next
    batch). The macros (_MACROS) must be defined on it."""
    store_kernel_info(b.w, lo, n)
    store_copies(b.w, lo, n)
    _tally(b, lo, n)


def store_kernel_info(w, lo: int, n: int, con=None) -> None:
    """kernel_info of the kernels among the events of local ids [lo, lo + n); `con`: a
    cursor to run on (the macros defined on it), else the main connection."""
    first, end = w.event_base + lo, w.event_base + lo + n
    w.append_query("kernel_info", f"""
        SELECT event_id - {w.event_base} AS event_id,
               {", ".join(f"_k_int(v[{i + 1}]) AS {c}" if i < 8 else f"_k_float(v[{i + 1}]) AS {c}"
                          for i, c in enumerate(_KERNEL_COLUMNS))}
        FROM (SELECT event_id, json_extract_string(args, {_sql_list(_KERNEL_ARGS)}) AS v
              FROM events WHERE trace_id = {w.trace_id} AND event_id >= {first} AND event_id < {end}
               AND kind = 'kernel')
        WHERE v[12] IS NOT NULL OR v[13] IS NOT NULL OR v[7] IS NOT NULL
    """, con=con)


def store_copies(w, lo: int, n: int) -> None:
    """copies and collectives of the events of local ids [lo, lo + n)."""
    first, end = w.event_base + lo, w.event_base + lo + n
    # Copies and collectives are few: the Python row builders, on their args only.
    # Literal bounds (see _read_batch_on).
    rows = w.store.con.execute(f"""
        SELECT event_id - {w.event_base}, kind, name, args FROM events
        WHERE trace_id = {w.trace_id} AND event_id >= {first} AND event_id < {end}
          AND (kind IN ('memcpy', 'memset') OR (kind = 'kernel' AND contains(args, '"Collective name"')))
    """).fetchall()
    if rows:
        _copies_and_collectives(w, rows)


def _tally(b, lo: int, n: int) -> None:
    """The parser's tallies (kinds, categories, runtime-name prefixes: the vendor's evidence)
    for the events of local ids [lo, lo + n)."""
    w = b.w
    first, end = w.event_base + lo, w.event_base + lo + n
    tallies = w.store.con.execute(f"""
        SELECT kind, CASE WHEN kind = 'runtime' THEN lower(name[1:4]) END AS prefix,
               count(*), list(DISTINCT source_cat)
        FROM events WHERE trace_id = {w.trace_id} AND event_id >= {first} AND event_id < {end} GROUP BY ALL
    """).fetchall()
    for kind, prefix, count, cats in tallies:
        b.kind_counts[kind] += count
        b.cats_seen.update(cats)
        if prefix is not None:
            b.runtime_prefixes[prefix] += count


def _copies_and_collectives(w, rows: list[tuple]) -> None:
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
            w.add_rows(table, rows_)
