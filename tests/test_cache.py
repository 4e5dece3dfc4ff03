"""The store cache: a first run parses into memory and copies the store to the cache file in
the background; later runs open that file; nothing written into a first-run store after
`load` returns reaches the cache; a failed copy costs only the cache."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import duckdb
import pytest

from profkit import cache
from profkit.cache import _CacheCopy
from profkit.ingest import ingest
from profkit.store import Store
from tests.conftest import shared_trace

TRACE = "kineto/cuda/h100_bert_small.json.gz"


@pytest.fixture
def trace(tmp_path, monkeypatch):
    monkeypatch.setenv("PROFKIT_CACHE_DIR", str(tmp_path / "cache"))
    return shared_trace(TRACE)


def _cache_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


def _table_counts(con) -> dict:
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() ORDER BY 1").fetchall()]
    return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_first_run_is_in_memory_and_the_second_opens_the_cache(trace, tmp_path):
    first = cache.load(trace)
    assert first.path is None  # parsed into memory
    counts = _table_counts(first.con)
    assert counts["events"] > 1000
    first.close()  # waits for the copy
    (name,) = _cache_files(tmp_path)
    assert name.endswith(cache.CACHE_SUFFIX)  # no temporary file left behind

    second = cache.load(trace)
    try:
        assert second.path == str(tmp_path / "cache" / name)
        # Every table, row for row; meta also says what input and profkit made the cache.
        assert _table_counts(second.con) == {**counts, "meta": counts["meta"] + 2}
        assert second.scalar("SELECT count(*) FROM meta WHERE key IN ('input', 'profkit_version')") == 2
        # The views came across too (`kernels` is one over events and kernel_info).
        assert second.scalar("SELECT count(*) FROM kernels") == \
            second.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") > 0
    finally:
        second.close()


def test_a_cache_made_under_other_classifier_rules_is_parsed_again(trace, tmp_path, monkeypatch):
    """Categories and collective ops are stored at ingest: a changed categories.csv (a user's
    edit, or a new profkit in development with the same version) must not reuse old ones."""
    cache.load(trace).close()
    second = cache.load(trace)
    assert second.path is not None  # reused
    second.close()
    monkeypatch.setattr(cache, "stored_rules_digest", lambda: "other-rules")
    third = cache.load(trace)
    try:
        assert third.path is None  # parsed again
    finally:
        third.close()


def _args_compressions(con) -> set[str]:
    return {c for (c,) in con.execute(
        "SELECT DISTINCT compression FROM pragma_storage_info('events') WHERE column_name = 'args' "
        "AND segment_type = 'JSON'").fetchall()}


def test_the_cache_file_compresses_args_with_zstd_and_keeps_tables_outside_the_schema(trace, tmp_path):
    """The file's tables come from the schema with their file compression; in memory
    (DuckDB has no ZSTD there) args is left uncompressed, even through a checkpoint (a
    large ingest's checkpoints spent most of their time compressing it). A table someone
    added to the store is copied as it is."""
    store = Store.open(None)
    try:
        ingest([trace], store)
        store.con.execute("CHECKPOINT")
        assert _args_compressions(store.con) == {"Uncompressed"}
        store.con.execute("CREATE TABLE my_notes AS SELECT 7 AS answer")
        target = tmp_path / "copy.duckdb"
        copy = _CacheCopy(store, Path(trace), target, {"input": "test"})
        copy.start()
        copy.join()
        counts = _table_counts(store.con)
    finally:
        store.close()
    con = duckdb.connect(str(target), read_only=True)
    try:
        assert con.execute("SELECT answer FROM my_notes").fetchall() == [(7,)]
        assert _table_counts(con) == {**counts, "meta": counts["meta"] + 2}
        assert _args_compressions(con) == {"ZSTD"}
    finally:
        con.close()


def test_writes_after_load_never_reach_the_cache(trace, tmp_path, monkeypatch):
    """The copy reads a snapshot pinned before load returns, however late it runs."""
    go = threading.Event()
    run = _CacheCopy._run

    def late_run(self):
        go.wait(30)
        run(self)

    monkeypatch.setattr(_CacheCopy, "_run", late_run)
    store = cache.load(trace)
    events = store.scalar("SELECT count(*) FROM events")
    store.con.execute("DELETE FROM events")
    store.con.execute("CREATE TABLE scratch AS SELECT 1 AS x")
    go.set()
    store.close()
    (name,) = _cache_files(tmp_path)
    con = duckdb.connect(str(tmp_path / "cache" / name), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == events
        assert "scratch" not in _table_counts(con)
    finally:
        con.close()


def test_a_failed_copy_costs_only_the_cache(trace, tmp_path, monkeypatch, capsys):
    def disk_full(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", disk_full)
    store = cache.load(trace)
    try:
        assert store.scalar("SELECT count(*) FROM events") > 1000  # the analysis still has its store
    finally:
        store.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("profkit: ") and TRACE.split("/")[-1] in err[0]
    assert err[0].endswith("the parsed store was not cached (disk full)")
    assert _cache_files(tmp_path) == []  # nothing half-written left


def test_a_copy_cut_short_is_not_kept(trace, tmp_path, monkeypatch, capsys):
    """A copy that ends without an error but without all the rows leaves no cache."""
    check = _CacheCopy._check_complete

    def lose_rows_then_check(self):
        self.con.execute("DELETE FROM profkit_cache_out.main.events WHERE event_id % 2 = 0")
        check(self)

    monkeypatch.setattr(_CacheCopy, "_check_complete", lose_rows_then_check)
    store = cache.load(trace)
    store.close()
    assert "the parsed store was not cached (copy incomplete: events has" in capsys.readouterr().err
    assert _cache_files(tmp_path) == []


def test_a_failed_copy_leaves_nothing_attached(trace, tmp_path, monkeypatch, capsys):
    """A copy that fails inside DuckDB (here: its source is gone) rolls back and detaches
    the half-written file, so the store is as it was and nothing is left on disk."""
    run = _CacheCopy._run

    def copy_from_nowhere(self):
        self.source = "no_such_database"
        run(self)

    monkeypatch.setattr(_CacheCopy, "_run", copy_from_nowhere)
    store = cache.load(trace)
    try:
        (wait_for_copy,) = store.before_close
        wait_for_copy()
        databases = {name for (name,) in store.con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
        assert "profkit_cache_out" not in databases
        assert store.scalar("SELECT count(*) FROM events") > 1000
    finally:
        store.close()
    err = capsys.readouterr().err
    assert "the parsed store was not cached (" in err and "no_such_database" in err
    assert _cache_files(tmp_path) == []


def test_ctrl_c_while_waiting_for_the_copy_gives_up_the_cache(trace, tmp_path, monkeypatch, capfd):
    """A second Ctrl-C (the first already ended the analysis) must not wait out a long copy."""
    started, ended = threading.Event(), []

    def endless_copy(self):
        try:
            started.set()
            self.con.execute("SELECT count(*) FROM range(1000000000000000000)").fetchall()
            ended.append("the query finished")
        except duckdb.Error as exc:
            ended.append(f"{type(exc).__name__}: {exc}")
            self._failed(exc)
        finally:
            self._clean_up()
            self.done.set()

    monkeypatch.setattr(_CacheCopy, "_run", endless_copy)
    store = cache.load(trace)
    # Python's own Ctrl-C handler, whatever this process inherited: a shell starts background
    # jobs with SIGINT ignored, and then the signal never came and the test waited for the
    # copy to finish (two clean-clone CI runs started with `&` saw exactly that).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert started.wait(60), "the copy thread never started"
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            store.close()
        except KeyboardInterrupt:
            pass
        else:
            pytest.fail(f"close() returned without the Ctrl-C; the copy ended: {ended or 'not at all'}")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "the parsed store was not cached (INTERRUPT" in capfd.readouterr().err
    assert _cache_files(tmp_path) == []
