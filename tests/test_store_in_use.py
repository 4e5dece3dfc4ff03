"""A store another process has open: DuckDB lets no process open a file another writes,
nor write one another reads. Every command says so in one line naming the store and the
process, exit 2, and leaves the store as it was (never an internal error, never a
deleted store)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import shared_trace
from profkit.store import Store

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))


def run(*args) -> subprocess.CompletedProcess:
    """The installed `profkit` script, as a user runs it."""
    return subprocess.run([PROFKIT, *map(str, args)], capture_output=True, text=True)

TRACE = "kineto/cuda/h100_bert_small.json.gz"


@contextmanager
def held(path, read_only: bool):
    """Another process with `path` open (to write, or to read), until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'r'); "
                               "print('open', flush=True); sys.stdin.read()", str(path), "r" if read_only else "w"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "run.duckdb"
    result = run("ingest", shared_trace(TRACE), "-o", path)
    assert result.returncode == 0, result.stderr
    return path


def _traces(path) -> int:
    with Store.open(path, read_only=True) as s:
        return s.scalar("SELECT count(*) FROM traces")


@pytest.mark.parametrize("args", [["analyze"], ["info"], ["sql", "SELECT 1"], ["whatif", "--no-host-overhead"],
                                  ["check", "--budget", "BUDGET"], ["diff", "STORE"]])
def test_reading_a_store_another_process_writes_is_refused_in_one_line(store, args, tmp_path):
    budget = tmp_path / "budget.toml"
    budget.write_text('[budgets]\n"breakdown.idle_pct" = { max = 10 }\n')
    args = [{"BUDGET": budget, "STORE": store}.get(a, a) for a in args]
    with held(store, read_only=False) as pid:
        result = run(args[0], store, *args[1:])
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert f"{store}: being written by another process (PID {pid}" in message and "retry" in message


@pytest.mark.parametrize("read_only", [True, False])
def test_adding_to_a_store_another_process_has_open_is_refused_and_the_store_kept(store, read_only):
    with held(store, read_only=read_only) as pid:
        result = run("ingest", shared_trace(TRACE), "-o", store)
    assert result.returncode == 2, result.stderr
    assert f"being {'read' if read_only else 'written'} by another process (PID {pid}" in result.stderr
    assert store.exists() and _traces(store) == 1


def test_a_new_store_another_process_created_meanwhile_is_not_deleted(tmp_path):
    path = tmp_path / "new.duckdb"
    with held(path, read_only=False):
        result = run("ingest", shared_trace(TRACE), "-o", path)
        assert result.returncode == 2, result.stderr
        assert "being written by another process" in result.stderr
        assert path.exists()
