"""Ingesting into a store that already holds the input: not added twice (a rank counted
twice is a wrong answer), not read again when unchanged, replaced when it changed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import shared_trace
from profkit import schema
from profkit.ingest import ingest
from profkit.store import Store

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))
KINETO = "kineto/rocm/mi250_minitoy_train.json.gz"
OTHER_KINETO = "kineto/rocm/mi300x_torch_compile_triton.json.gz"


def _counts(store: Store) -> dict[str, int]:
    return {t.name: store.scalar(f"SELECT count(*) FROM {t.name}") for t in schema.TABLES if t.name != "meta"}


def _orphans(store: Store) -> int:
    """Rows keyed by an event that is not in the store (left by a removal)."""
    return sum(store.scalar(f"SELECT count(*) FROM {t.name} x WHERE NOT EXISTS "
                            f"(SELECT 1 FROM events e WHERE e.event_id = x.event_id)")
               for t in schema.TABLES if t.name in ("kernel_info", "copies", "collectives"))


def test_unchanged_inputs_are_not_read_again(tmp_path):
    # One trace per input (Kineto), several per input (a rocprofv3 CSV directory of three
    # process groups; a rocpd database).
    inputs = [shared_trace(KINETO), shared_trace("rocprof/v3_csv_rocm6.4_docs"),
              shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db")]
    store = Store.open(str(tmp_path / "s.duckdb"))
    first = ingest(inputs, store)
    before = _counts(store)
    held: list[tuple[str, bool]] = []
    assert ingest(inputs, store, held=held) == []
    assert held == [(str(p), False) for p in inputs]
    assert _counts(store) == before and before["traces"] == len(first) >= 5
    store.close()


def test_a_changed_input_replaces_its_traces(tmp_path):
    trace = tmp_path / "rank0.json.gz"
    shutil.copy(shared_trace(KINETO), trace)
    store = Store.open(None)
    ingest([trace], store)
    before = _counts(store)
    os.utime(trace, ns=(trace.stat().st_atime_ns, trace.stat().st_mtime_ns + 10**9))  # re-recorded
    held: list[tuple[str, bool]] = []
    [new_id] = ingest([trace], store, held=held)
    assert held == [(str(trace), True)] and store.trace_ids() == [new_id]
    assert _counts(store) == before and _orphans(store) == 0
    assert store.scalar("SELECT file_mtime_ns FROM traces") == trace.stat().st_mtime_ns


def test_a_directory_gains_only_its_new_ranks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(shared_trace(KINETO), run / "rank0.json.gz")
    store = Store.open(None)
    assert len(ingest([run], store)) == 1
    shutil.copy(shared_trace(OTHER_KINETO), run / "rank1.json.gz")
    (run / "notes.txt").write_text("how the run was launched")
    held: list[tuple[str, bool]] = []
    added = ingest([run], store, held=held)
    assert len(added) == 1 and held == [(str(run / "rank0.json.gz"), False)]
    assert sorted(store.scalar("SELECT list(path) FROM traces")) == [str(run / "rank0.json.gz"),
                                                                    str(run / "rank1.json.gz")]
    assert ingest([run], store) == []
    # The file no parser reads is listed once, however often the directory is read.
    assert store.rows("SELECT path, reason FROM inputs_not_read") == [
        {"path": str(run / "notes.txt"), "reason": "not a trace profkit reads"}]


def test_cli_says_what_it_did_not_read_again(tmp_path):
    out = tmp_path / "s.duckdb"
    argv = [PROFKIT, "ingest", str(shared_trace(KINETO)), "-o", str(out)]
    first = subprocess.run(argv, capture_output=True, text=True)
    again = subprocess.run(argv, capture_output=True, text=True)
    assert first.returncode == again.returncode == 0, again.stderr
    assert "1 trace(s) added" in first.stdout
    assert again.stdout.startswith(f"{out}: 0 trace(s) added, 0 events")
    assert "1 input(s) already in the store and unchanged, not read again" in again.stdout
    info = subprocess.run([PROFKIT, "sql", str(out), "SELECT count(*) AS n FROM traces", "--format", "csv"],
                          capture_output=True, text=True)
    assert info.stdout.split() == ["n", "1"]
