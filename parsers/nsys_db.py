"""Opening an Nsight Systems SQLite export and reading it in Arrow batches.

Three readers, tried in order (`PROFKIT_NSYS_READER=duckdb|adbc|sqlite3` forces one):

- DuckDB's sqlite scanner, when the extension is already installed locally. It is
  downloaded at run time and so is absent offline; we never trigger that download.
- ADBC's SQLite driver (`adbc-driver-sqlite`, optional): SQLite rows straight into Arrow
  in C, 5-10x faster than the Python driver. It infers a column's type from the first
  batch, so queries here select only integer columns and non-NULL text (extras travel
  as one `json_object(...)` string); should a batch still disagree, reading continues
  with sqlite3 from that row (same query, same scan order on an unchanging file).
- Python's sqlite3, `fetchmany` into Arrow arrays: always available, slowest.

Whichever it is runs one batch ahead in a thread, beside the thread storing rows.

The export is opened read-only; nothing is written beside it.
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

# One DuckDB row group per batch: appends to a file-backed store fill whole row groups.
BATCH_ROWS = 122_880


@dataclass
class Catalog:
    """Tables of the export with their column names and declared types."""

    columns: dict[str, list[str]] = field(default_factory=dict)
    types: dict[str, dict[str, str]] = field(default_factory=dict)

    def has(self, table: str) -> bool:
        return table in self.columns

    def has_column(self, table: str, column: str) -> bool:
        return column in self.columns.get(table, ())

    def first(self, table: str, *candidates: str) -> str | None:
        """The first of `candidates` that `table` has (columns move between versions)."""
        for name in candidates:
            if self.has_column(table, name):
                return name
        return None


def catalog(con: sqlite3.Connection) -> Catalog:
    cat = Catalog()
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    for name in names:
        info = con.execute(f"PRAGMA table_info({quote(name)})").fetchall()
        cat.columns[name] = [r[1] for r in info]
        cat.types[name] = {r[1]: (r[2] or "").upper() for r in info}
    return cat


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- readers ------------------------------------------------------------------------

def _chosen_reader() -> str:
    forced = os.environ.get("PROFKIT_NSYS_READER", "").strip().lower()
    if forced in ("duckdb", "adbc", "sqlite3"):
        return forced
    if duckdb_sqlite_installed():
        return "duckdb"
    if adbc_available():
        return "adbc"
    return "sqlite3"


def duckdb_sqlite_installed() -> bool:
    """Whether DuckDB's sqlite extension is installed locally (never downloads it)."""
    try:
        import duckdb

        row = duckdb.connect().execute(
            "SELECT installed FROM duckdb_extensions() WHERE extension_name = 'sqlite'").fetchone()
        return bool(row and row[0])
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


def adbc_available() -> bool:
    try:
        import adbc_driver_sqlite.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


class Reader:
    """Runs SELECTs on the export and yields Arrow record batches of about BATCH_ROWS."""

    def __init__(self, path: Path, con: sqlite3.Connection, kind: str | None = None):
        self.path = Path(path)
        self.con = con
        self.kind = kind or _chosen_reader()
        self._adbc = None
        self._duck = None
        if self.kind == "adbc":
            try:
                import adbc_driver_sqlite.dbapi as adbc

                self._adbc = adbc.connect(Path(path).resolve().as_uri() + "?mode=ro")
            except Exception:  # noqa: BLE001 - fall back to the always-present driver
                self.kind = "sqlite3"
        elif self.kind == "duckdb":
            try:
                import duckdb

                self._duck = duckdb.connect()
                self._duck.execute("LOAD sqlite")
                self._duck.execute(f"ATTACH '{Path(path).resolve()}' AS nsys (TYPE sqlite, READ_ONLY)")
                self._duck.execute("USE nsys")
            except Exception:  # noqa: BLE001
                self.kind = "sqlite3"

    def close(self) -> None:
        for con in (self._adbc, self._duck):
            if con is not None:
                try:
                    con.close()
                except Exception:  # noqa: BLE001
                    pass

    def batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        """Batches of `sql`, read ahead by one batch in a thread: SQLite (in C, without
        the GIL) reads the next batch while the caller transforms and stores this one."""
        if self.kind == "adbc":
            source = self._adbc_batches(sql)
        elif self.kind == "duckdb":
            source = self._duckdb_batches(sql)
        else:
            source = self._sqlite_batches(sql)
        yield from _read_ahead(source)

    def table(self, sql: str) -> pa.Table:
        batches = list(self._sqlite_batches(sql))
        if not batches:
            return pa.table({})
        return pa.Table.from_batches(batches)

    def _adbc_batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        done = 0
        cur = self._adbc.cursor()
        try:
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
            cur.execute(sql)
            for batch in cur.fetch_record_batch():
                done += batch.num_rows
                yield _valid_utf8(batch)
            return
        except Exception:  # noqa: BLE001 - a type the first batch did not predict
            pass
        finally:
            cur.close()
        yield from self._sqlite_batches(f"SELECT * FROM ({sql}) LIMIT -1 OFFSET {done}")

    def _duckdb_batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        reader = self._duck.execute(sql).fetch_record_batch(BATCH_ROWS)
        yield from reader

    def _sqlite_batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        cur = self.con.execute(sql)
        names = [d[0] for d in cur.description]
        while True:
            rows = cur.fetchmany(BATCH_ROWS)
            if not rows:
                return
            columns = list(zip(*rows))
            yield pa.RecordBatch.from_arrays([_array(c) for c in columns], names=names)


def _read_ahead(source: Iterator[pa.RecordBatch], depth: int = 1) -> Iterator[pa.RecordBatch]:
    """Run `source` in a thread, at most `depth` batches ahead (bounded memory)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in source:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            slots.put(exc)

    thread = threading.Thread(target=produce, name="nsys-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _valid_utf8(batch: pa.RecordBatch) -> pa.RecordBatch:
    """ADBC hands SQLite's bytes through as they are; exports hold text that is not valid
    UTF-8 (seen in StringIds), which DuckDB refuses. Such values are decoded with
    replacement characters, as the sqlite3 reader does."""
    columns = list(batch.columns)
    changed = False
    for i, column in enumerate(columns):
        if not pa.types.is_string(column.type):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            raw = column.cast(pa.binary()).to_pylist()
            columns[i] = pa.array([None if v is None else v.decode("utf-8", "replace") for v in raw], pa.string())
            changed = True
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names) if changed else batch


def _array(values) -> pa.Array:
    """A column of SQLite values as Arrow; SQLite's dynamic typing can mix types."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def read_meta(con: sqlite3.Connection, cat: Catalog) -> dict[str, str]:
    """META_DATA_EXPORT (EXPORT_META_DATA before schema 3) as a dict."""
    for table in ("META_DATA_EXPORT", "EXPORT_META_DATA"):
        if cat.has(table):
            return {str(k): v for k, v in con.execute(f"SELECT name, value FROM {table}")}
    return {}
