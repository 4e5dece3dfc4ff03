"""An ingest where one input fails adds nothing: no traces from the inputs read before it
(a store holding some ranks of a run would be a silent partial result), and no empty store
file where there was none."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import shared_trace
from profkit.ingest import ingest
from profkit.store import Store

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))
GOOD = "kineto/rocm/mi250_minitoy_train.json.gz"
OTHER = "kineto/rocm/mi210_gpu_only.json.gz"


def _cut_before_any_record(tmp_path: Path) -> Path:
    """A real trace cut inside its first event: recognised as Kineto, fails while parsed."""
    text = gzip.decompress(shared_trace(OTHER).read_bytes())
    cut = tmp_path / "rank1.json"
    cut.write_bytes(text[:text.index(b"traceEvents") + 40])
    return cut


def _table_rows(store: Store) -> dict[str, int]:
    return {t: store.scalar(f"SELECT count(*) FROM {t}") for t in
            ("traces", "events", "kernel_info", "copies", "links", "steps", "devices", "threads", "ingest_issues")}


def test_a_failing_input_takes_back_what_the_others_added(tmp_path):
    store = Store.open(None)
    ingest([shared_trace(GOOD)], store)
    before = _table_rows(store)
    cut = _cut_before_any_record(tmp_path)
    try:
        ingest([shared_trace(OTHER), cut], store)
    except Exception as exc:  # the parser's one-line error, as before
        assert "truncated JSON" in str(exc) and str(cut) in str(exc)
    else:
        raise AssertionError("the cut input was read")
    assert _table_rows(store) == before


def test_cli_leaves_no_store_behind_and_keeps_an_existing_one(tmp_path):
    cut = _cut_before_any_record(tmp_path)
    new = tmp_path / "new.duckdb"
    proc = subprocess.run([PROFKIT, "ingest", str(shared_trace(GOOD)), str(cut), "-o", str(new)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "truncated JSON" in proc.stderr
    assert not new.exists() and not Path(f"{new}.wal").exists()

    existing = tmp_path / "existing.duckdb"
    assert subprocess.run([PROFKIT, "ingest", str(shared_trace(GOOD)), "-o", str(existing)]).returncode == 0
    proc = subprocess.run([PROFKIT, "ingest", str(shared_trace(OTHER)), str(cut), "-o", str(existing)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    count = subprocess.run([PROFKIT, "sql", str(existing), "SELECT count(*) AS n FROM traces", "--format", "csv"],
                           capture_output=True, text=True)
    assert count.stdout.split() == ["n", "1"]


def test_a_store_without_traces_is_named(tmp_path):
    empty = tmp_path / "empty.duckdb"
    Store.open(str(empty)).close()
    for command in (["analyze"], ["info"], ["whatif", "--no-sync"]):
        proc = subprocess.run([PROFKIT, command[0], str(empty), *command[1:]], capture_output=True, text=True)
        # Was: an empty report with exit 0 (analyze, info, whatif), an internal error (diff).
        assert proc.returncode == 2, proc.stdout
        assert proc.stderr == f"profkit: error: {empty}: the store holds no trace: add one with " \
                              f"`profkit ingest TRACE -o STORE`\n"
    added = subprocess.run([PROFKIT, "ingest", str(shared_trace(GOOD)), "-o", str(empty)],
                           capture_output=True, text=True)
    assert added.returncode == 0 and "1 trace(s) added" in added.stdout
