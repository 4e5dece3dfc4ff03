"""Nsight Systems: `nsys export --type sqlite` databases (and `.nsys-rep` reports, exported
on the fly when `nsys` is on PATH).

An input is an Nsight export when it is an SQLite file whose tables say so (the export
metadata table, or CUPTI/NVTX activity tables next to StringIds), whatever its name.
Columns are selected by name and tables may be absent (Nsight writes a table only when
it has rows): what is missing is noted in `ingest_issues` with count 0, never fatal.
See nsys_events.py for how each table maps onto events. A report of several processes
(`nsys profile torchrun ...`, a process per rank) is written as one trace and then split
into one per process that drove a device (profkit/split.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa

from profkit.errors import TraceError

from . import nsys_meta as meta
from .nsys_db import Reader, catalog, read_meta
from .sqlite_file import connect, is_sqlite, sqlite_problem, table_names
from .nsys_events import ActivityReader

FORMAT = "nsys"
REPORT_SUFFIXES = (".nsys-rep", ".qdrep")
_MARKER_TABLES = ("META_DATA_EXPORT", "EXPORT_META_DATA")
_ACTIVITY_TABLES = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS", "OSRT_API")


def detect(path: Path) -> bool:
    path = Path(path)
    try:
        if not path.is_file():
            return False
        if path.name.endswith(REPORT_SUFFIXES):
            # Nsight's report container is not an open format: the suffix is all we have.
            return not is_sqlite(path)
        if not is_sqlite(path):
            return False
        con = connect(path)
        try:
            tables = table_names(con)
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        # A locked Nsight export is still ours: parse() then says what is wrong.
        return "locked" in str(exc) or "busy" in str(exc)
    except (sqlite3.Error, OSError, ValueError):
        return False
    if tables & set(_MARKER_TABLES):
        return True
    return "StringIds" in tables and bool(tables & set(_ACTIVITY_TABLES))


def covered_by(path: Path) -> Path | None:
    """A report whose `nsys export --type sqlite` output sits beside it under the same name
    (`run.nsys-rep` and `run.sqlite`, as exporting leaves them): the export, read instead."""
    suffix = next((s for s in REPORT_SUFFIXES if path.name.endswith(s)), None)
    if suffix is None or is_sqlite(path):
        return None
    export = path.with_name(path.name[: -len(suffix)] + ".sqlite")
    return export if export.is_file() and is_sqlite(export) else None


def parse(path: Path, sink) -> None:
    path = Path(path)
    if path.name.endswith(REPORT_SUFFIXES) and not is_sqlite(path):
        database = export_report(path)
        _parse_database(database, sink, shown_path=path)
    else:
        _parse_database(path, sink, shown_path=path)


# -- .nsys-rep --------------------------------------------------------------------

def export_command(report: Path, out: Path) -> list[str]:
    return ["nsys", "export", "--type", "sqlite", "--force-overwrite", "true", "-o", str(out), str(report)]


def export_report(report: Path) -> Path:
    """The SQLite export of an `.nsys-rep`, made with `nsys export` into the cache and
    reused while the report is unchanged."""
    nsys = shutil.which("nsys")
    if nsys is None:
        raise TraceError(report, "an Nsight Systems report needs exporting first and `nsys` is not on PATH: "
                                 f"run `nsys export --type sqlite -o OUT.sqlite {report}` and pass OUT.sqlite")
    from profkit.cache import cache_dir

    st = report.stat()
    key = hashlib.sha1(f"{report.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "nsys" / f"{report.stem}-{key}.sqlite"
    if out.is_file() and is_sqlite(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + f".{os.getpid()}.tmp.sqlite")
    command = export_command(report, tmp)
    command[0] = nsys
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TraceError(report, f"`{' '.join(command)}` could not run: {exc}") from None
    if result.returncode != 0 or not tmp.is_file():
        tail = (result.stderr or result.stdout or "").strip().splitlines()
        tmp.unlink(missing_ok=True)
        raise TraceError(report, f"`nsys export` failed (exit {result.returncode})"
                                 + (f": {tail[-1]}" if tail else ""))
    os.replace(tmp, out)
    return out


# -- SQLite export ----------------------------------------------------------------

def _parse_database(database: Path, sink, shown_path: Path) -> None:
    try:
        con = connect(database)
        cat = catalog(con)
    except sqlite3.Error as exc:
        raise TraceError(shown_path, sqlite_problem(exc, database)) from None
    reader = Reader(database, con)
    try:
        with sink.trace(shown_path, FORMAT) as w:
            w.split_by_process = True  # `nsys profile torchrun ...`: one process per rank
            try:
                _fill(con, cat, reader, w, sink, database, shown_path)
            except sqlite3.Error as exc:
                raise TraceError(shown_path, sqlite_problem(exc, database)) from None
            except (duckdb.Error, pa.ArrowException) as exc:
                # Content the export should not hold (a value of the wrong type where a
                # number belongs, ...): one line naming the problem, not a traceback.
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TraceError(shown_path, f"cannot convert this Nsight export: {first}") from None
    finally:
        reader.close()
        con.close()


def _fill(con, cat, reader, w, sink, database: Path, shown_path: Path) -> None:
    export_meta = read_meta(con, cat)
    if not export_meta and not any(cat.has(t) for t in _ACTIVITY_TABLES):
        raise TraceError(shown_path, "SQLite file is not an Nsight Systems export (no export metadata "
                                     "and no CUPTI/NVTX tables)")
    version, major = meta.schema_version(export_meta)
    env = meta.system_env(con, cat)
    metadata = {
        "export": meta.export_facts(export_meta),
        "system": env,
        "session": meta.session_start(con, cat),
        "reader": reader.kind,
    }
    if major is not None and major not in meta.KNOWN_SCHEMA_MAJORS:
        metadata["schema_note"] = (f"export schema {version} is outside the majors this parser was checked "
                                   f"against {meta.KNOWN_SCHEMA_MAJORS}; columns were read by name")
    w.set_trace(format_version=version, producer=meta.producer(export_meta), vendor="nvidia",
                hostname=env.get("Hostname"), base_time_ns=meta.base_time_ns(metadata["session"]),
                metadata=metadata)
    if not export_meta:
        w.note("table absent: META_DATA_EXPORT (schema version unknown)")
    elif major is not None and major not in meta.KNOWN_SCHEMA_MAJORS:
        w.note(f"export schema {version} not checked: read by column name")
    for table in meta.EXPECTED_TABLES:
        if not cat.has(table):
            w.note(f"table absent: {table}")

    total = max(database.stat().st_size, 1)
    done = [0]

    def progress() -> None:
        done[0] = min(total, done[0] + total // 50)
        sink.report(str(shown_path), done[0], total)

    activity = ActivityReader(con, cat, reader, w, progress)
    try:
        for table, method in (("CUPTI_ACTIVITY_KIND_KERNEL", activity.kernels),
                              ("CUPTI_ACTIVITY_KIND_MEMCPY", activity.memcpy),
                              ("CUPTI_ACTIVITY_KIND_MEMSET", activity.memset),
                              ("CUPTI_ACTIVITY_KIND_SYNCHRONIZATION", activity.sync),
                              ("CUPTI_ACTIVITY_KIND_RUNTIME", activity.runtime),
                              ("NVTX_EVENTS", activity.nvtx),
                              ("OSRT_API", activity.osrt)):
            if cat.has(table):
                method()
        if cat.has("CUPTI_ACTIVITY_KIND_KERNEL"):
            activity.collectives()
        for column in activity.absent:
            w.note(f"column absent: {column}")
        steps = activity.steps()
    finally:
        activity.close()
    if steps:
        w.add_rows("steps", steps)

    seen = w.store.con.execute(
        "SELECT DISTINCT device FROM events WHERE trace_id = ? AND device IS NOT NULL ORDER BY 1",
        [w.trace_id]).fetchall()
    w.add_rows("devices", meta.devices(con, cat, [d for (d,) in seen]))
    pids = {p for (p,) in w.store.con.execute(
        "SELECT DISTINCT pid FROM events WHERE trace_id = ? AND pid IS NOT NULL", [w.trace_id]).fetchall()}
    w.add_rows("threads", meta.threads(con, cat, pids))
    for table, count in meta.unread_tables(con, cat):
        w.read(count)
        w.not_stored(f"table not ingested: {table}", count)
    sink.report(str(shown_path), total, total)
