"""`load(path)`: a store for a trace, a directory of traces, or a `.duckdb` file.

A trace is parsed once; the store is kept beside it as `NAME.profkit.duckdb` (or, where
that directory is not writable, in the cache directory: `$PROFKIT_CACHE_DIR`, else
`$XDG_CACHE_HOME/profkit`, else `~/.cache/profkit`) and reused while the input's size
and modification time, the schema version, the profkit version and the mapping tables
applied at ingest (`classify.stored_rules_digest`: the classifier's and the Kineto parser's
record categories) are unchanged.

On a first run the trace is parsed into an in-memory store, which is returned at once;
a background thread copies it to the cache file while the caller works, and
`Store.close()` waits for that copy. Parsing straight into the file cost more (1M
events: 7.4 s against 6.0 s, then 1.0 s to checkpoint and reopen it) than the copy
(1.9 s, overlapped with the analysis).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import duckdb

from . import __version__, schema
from .classify import stored_rules_digest
from .errors import TraceError
from .ingest import REVISION as INGEST_REVISION, ProgressCallback, ingest, input_signature
from .store import Store
from .streams import is_stream

CACHE_SUFFIX = ".profkit.duckdb"


def is_store_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(16)
    return head[8:12] == b"DUCK"


def load(path: str | Path, cache: bool = True, progress: ProgressCallback | None = None) -> Store:
    """Open the store for `path`, parsing the input only if no valid cache exists. `path`
    the string `-`: a trace on standard input (profkit.streams)."""
    stream = is_stream(path)  # read once, so never opened to look at first; no size and time to know it by
    if not stream and is_store_file(Path(path)):
        return open_store(Path(path))
    if stream or not cache:
        store = Store.open(None)
        ingest([path], store, progress)
        return store
    path = Path(path)
    signature = _signature(path)
    for candidate in cache_candidates(path):
        if candidate.exists() and _cache_valid(candidate, signature):
            return Store.open(candidate, read_only=True)
    target = _writable_candidate(path)
    store = Store.open(None)
    ingest([path], store, progress)
    copy = _CacheCopy(store, path, target, signature)
    copy.start()
    store.before_close.append(copy.join)
    return store


def open_store(path: Path, empty_ok: bool = False) -> Store:
    """A profkit store file, read-only; one that is not a profkit store, or of another
    schema version, or (unless `empty_ok`) holds no trace, is a TraceError."""
    try:
        store = Store.open(path, read_only=True)
    except duckdb.Error as exc:
        raise TraceError(path, open_failure(exc)) from None
    version = store.schema_version()
    if version is None:
        store.close()
        raise TraceError(path, "DuckDB file is not a profkit store (no meta table)")
    if version != schema.SCHEMA_VERSION:
        store.close()
        raise TraceError(path, f"store has schema version {version}, this profkit reads "
                               f"{schema.SCHEMA_VERSION}: re-ingest the trace")
    if not empty_ok and not store.trace_ids():
        store.close()
        raise TraceError(path, "the store holds no trace: add one with `profkit ingest TRACE -o STORE`")
    return store


def open_failure(exc: duckdb.Error) -> str:
    """Why DuckDB could not open a store file, in one line; a lock another process holds
    named as such (DuckDB lets no process open a file another writes, nor write one
    another reads)."""
    text = str(exc).splitlines()[0]
    held = re.search(r"Conflicting lock is held in (.*) \(PID (\d+)\)", text)
    if not held:
        return f"cannot open DuckDB store: {text}"
    holder = f"another process (PID {held.group(2)}, {held.group(1)})"
    if "read-only mode" in text:  # DuckDB adds that it could be opened to read
        return f"being read by {holder}, so it cannot be written now; retry when that one has finished"
    return f"being written by {holder}, so it cannot be opened now; retry when that one has finished"


def _signature(path: Path) -> dict:
    if not path.exists():
        raise TraceError(path, "no such file or directory")
    size, mtime = input_signature(path)
    return {"path": str(path.resolve()), "bytes": size, "mtime_ns": mtime,
            "schema_version": schema.SCHEMA_VERSION, "profkit_version": __version__,
            "rules": stored_rules_digest(), "ingest_revision": INGEST_REVISION}


def cache_dir() -> Path:
    if os.environ.get("PROFKIT_CACHE_DIR"):
        return Path(os.environ["PROFKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "profkit"


def cache_candidates(path: Path) -> list[Path]:
    resolved = path.resolve()
    beside = resolved.parent / (resolved.name + CACHE_SUFFIX)
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:16]
    return [beside, cache_dir() / f"{resolved.name}-{digest}{CACHE_SUFFIX}"]


def _writable(folder: Path) -> bool:
    """Writable for us and not marked read-only: root passes os.access on a read-only
    folder, but a folder whose mode has no write bit is someone's archive of traces."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def _writable_candidate(path: Path) -> Path:
    beside, fallback = cache_candidates(path)
    if _writable(beside.parent) and not os.environ.get("PROFKIT_CACHE_DIR"):
        return beside
    fallback.parent.mkdir(parents=True, exist_ok=True)
    return fallback


def _cache_valid(candidate: Path, signature: dict) -> bool:
    try:
        con = duckdb.connect(str(candidate), read_only=True)
    except duckdb.Error:
        return False
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'input'").fetchone()
    except duckdb.Error:
        return False
    finally:
        con.close()
    return bool(row) and json.loads(row[0]) == signature


class _CacheCopy:
    """Copies an in-memory store to the cache file in a background thread.

    The copy reads a snapshot pinned before `start` returns, so whatever the caller then
    writes into the store (`profkit sql` may) never reaches the cache. It goes to a
    temporary file beside `target`, moved into place atomically, so a concurrent reader
    never sees half a store. A failure costs only the cache: it is reported on stderr,
    and the next run parses again."""

    def __init__(self, store: Store, path: Path, target: Path, signature: dict):
        self.path, self.target, self.signature = path, target, signature
        fd, self.tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.unlink(self.tmp)  # DuckDB must create the file itself
        self.con = store.con.cursor()
        self.thread = threading.Thread(target=self._run, name="profkit-cache-copy")
        self.done = threading.Event()

    def start(self) -> None:
        try:
            self.source = self.con.execute("SELECT current_database()").fetchone()[0]
            self.con.execute("ATTACH ? AS profkit_cache_out", [self.tmp])
            self.con.execute("BEGIN TRANSACTION")
            # DuckDB takes a transaction's snapshot of a database when it first reads it.
            self.con.execute(f'SELECT count(*) FROM "{self.source}".main.meta').fetchall()
        except duckdb.Error as exc:
            self._failed(exc)
            self._clean_up()
            return
        self.thread.start()

    def join(self) -> None:
        if self.thread.ident is None:  # never started
            return
        # An Event, not Thread.join: a join interrupted by Ctrl-C marks the thread as
        # finished while it still runs (bpo-45274), and a second join would not wait.
        try:
            self.done.wait()
        except KeyboardInterrupt:
            try:
                self.con.interrupt()  # Ctrl-C while waiting: give up the cache, not the exit
            except duckdb.Error:
                pass  # the copy has just ended and closed its connection
            self.done.wait()
            raise

    def _run(self) -> None:
        try:
            con = self.con
            self._copy_tables()
            self._check_complete()
            con.execute("INSERT INTO profkit_cache_out.meta VALUES ('input', ?), ('profkit_version', ?)",
                        [json.dumps(self.signature), __version__])
            con.execute("COMMIT")
            con.execute("DETACH profkit_cache_out")
            os.replace(self.tmp, self.target)
        except (duckdb.Error, OSError) as exc:
            self._failed(exc)
        finally:
            self._clean_up()
            self.done.set()

    def _copy_tables(self) -> None:
        """What COPY FROM DATABASE does, but the file's tables are created from the schema
        with their file compression (5M events: 7.3-8.1 -> 4.9-5.7 CPU-s, 165 -> 102 MB)."""
        for statement in schema.ddl(in_file=True, database="profkit_cache_out"):
            self.con.execute(statement)
        known = {t.name for t in schema.TABLES}
        for table in self._tables():
            source = f'"{self.source}".main."{table}"'
            if table in known:
                self.con.execute(f'INSERT INTO profkit_cache_out.main."{table}" BY NAME SELECT * FROM {source}')
            else:  # added by someone else: kept as it is
                self.con.execute(f'CREATE TABLE profkit_cache_out.main."{table}" AS SELECT * FROM {source}')

    def _tables(self) -> list[str]:
        """The schema's tables (each must be in the source), then any other the source has."""
        names = [t.name for t in schema.TABLES]
        others = self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' ORDER BY 1",
            [self.source]).fetchall()
        return names + [name for (name,) in others if name not in names]

    def _check_complete(self) -> None:
        """Every table of the copy has as many rows as the snapshot it was copied from: a
        copy that ended short without an error, however that came about, must cost the
        cache, never leave an incomplete one behind (0.03 s on a 5M-event store)."""
        for table in self._tables():
            source, copied = self.con.execute(
                f'SELECT (SELECT count(*) FROM "{self.source}".main."{table}"), '
                f'(SELECT count(*) FROM profkit_cache_out.main."{table}")').fetchone()
            if source != copied:
                raise duckdb.Error(f"copy incomplete: {table} has {copied} of {source} rows")

    def _failed(self, exc: Exception) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"profkit: {self.path}: the parsed store was not cached ({reason})", file=sys.stderr)

    def _clean_up(self) -> None:
        # After a failure the transaction may still be open and the file still attached
        # (an attachment belongs to the database, not to this cursor).
        for statement in ("ROLLBACK", "DETACH DATABASE IF EXISTS profkit_cache_out"):
            try:
                self.con.execute(statement)
            except duckdb.Error:
                pass  # nothing to roll back, or already closed
        try:
            self.con.close()
        except duckdb.Error:
            pass
        for leftover in (self.tmp, self.tmp + ".wal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
