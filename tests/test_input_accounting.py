"""Records a parser could not use (damaged, inconsistent, of an unknown kind) are told
apart from records left out by design (metadata, tables profkit does not use), and every
report on a trace with unusable records says so before its figures: never a silent
partial result. On real traces damaged here in tmp files."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_trace
from profkit.errors import TraceError
from profkit.ingest import ingest
from profkit.store import Store

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))
WARNING = "input record could not be used and every figure leaves it out"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROFKIT, *args], capture_output=True, text=True, timeout=300)


def load(path: Path) -> Store:
    store = Store.open(None)
    ingest([str(path)], store)
    return store


@pytest.fixture(scope="module")
def kineto_with_a_bad_duration(tmp_path_factory) -> Path:
    """The H100 BERT trace with one event's duration replaced by NaN."""
    raw = gzip.decompress(shared_trace("kineto/cuda/h100_bert_small.json.gz").read_bytes())
    at = raw.index(b'"dur": ', len(raw) // 2)
    end = raw.index(b",", at)
    path = tmp_path_factory.mktemp("nan") / "nan_dur.json"
    path.write_bytes(raw[:at] + b'"dur": NaN' + raw[end:])
    return path


def test_unusable_records_are_flagged_and_by_design_ones_are_not(kineto_with_a_bad_duration):
    store = load(kineto_with_a_bad_duration)
    issues = {r["reason"]: r for r in store.rows("SELECT reason, count, unusable FROM ingest_issues")}
    assert issues["dur not a finite number in range"]["unusable"] is True
    assert issues["dur not a finite number in range"]["count"] == 1
    metadata = [r for reason, r in issues.items() if reason.startswith("metadata record not stored")]
    assert metadata and not any(r["unusable"] for r in metadata)


@pytest.mark.parametrize("relative", ["kineto/cuda/h100_bert_small.json.gz", "nsys/t4_vectoradd_streams.sqlite",
                                      "rocprof/v3_json_mi350x/908_results.json.gz"])
def test_real_traces_have_no_unusable_records_and_no_warning(relative):
    proc = run("analyze", str(shared_trace(relative)), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    for trace in json.loads(proc.stdout)["traces"]:
        accounting = trace["input"]
        assert accounting["unusable_records"] == 0
        assert accounting["records_not_stored"] == sum(i["records"] for i in accounting["issues"])
        assert accounting["records_read"] >= accounting["records_not_stored"]
    markdown = run("analyze", str(shared_trace(relative)), "--format", "markdown").stdout
    assert "Warning" not in markdown


def test_every_report_warns_before_its_figures(kineto_with_a_bad_duration, tmp_path):
    path = kineto_with_a_bad_duration
    result = json.loads(run("analyze", str(path), "--format", "json").stdout)
    accounting = result["traces"][0]["input"]
    assert accounting["unusable_records"] == 1
    assert accounting["issues"][0] == {**accounting["issues"][0], "reason": "dur not a finite number in range",
                                       "records": 1, "unusable": True}
    terminal = run("analyze", str(path)).stdout
    assert WARNING in " ".join(terminal.split())
    assert terminal.index("Warning") < terminal.index("Traces")
    markdown = run("analyze", str(path), "--format", "markdown").stdout
    assert f"> **Warning:** Rank 0 ({path}): 1 {WARNING}: dur not a finite number in range (1)" in markdown.replace("\\", "")
    html = run("analyze", str(path), "--format", "html").stdout
    assert 'class="warning"' in html and WARNING in html
    # A budget can refuse to judge a damaged trace; the summary says why.
    budget = tmp_path / "profkit.toml"
    budget.write_text('[budgets]\n"input.unusable_records" = { max = 0 }\n')
    check = run("check", str(path), "--budget", str(budget))
    assert check.returncode == 1 and WARNING in " ".join(check.stdout.split())
    ingested = run("ingest", str(path), "-o", str(tmp_path / "o.duckdb"))
    assert "18 input records not stored (1 of them unusable" in ingested.stdout


def _cut_copy(tmp_path: Path, keep_bytes) -> tuple[Path, Path]:
    """The MI300A rocprofv3 CSV directory with its kernel trace cut (keep_bytes(data) kept)."""
    folder = tmp_path / "cut"
    shutil.copytree(shared_trace("rocprof/v3_csv_mi300a_rocm6.2"), folder)
    kernels = next(folder.glob("*_kernel_trace.csv"))
    data = kernels.read_bytes()
    kernels.write_bytes(data[:keep_bytes(data)])
    return folder, kernels


def test_a_csv_cut_mid_row_keeps_its_whole_rows(tmp_path):
    whole = load(shared_trace("rocprof/v3_csv_mi300a_rocm6.2"))
    folder, kernels = _cut_copy(tmp_path, lambda data: len(data) - 37)  # the last row cut in two
    store = load(folder)
    kernel_count = "SELECT count(*) FROM events WHERE kind = 'kernel'"
    assert store.scalar(kernel_count) == whole.scalar(kernel_count) - 1
    assert store.rows("SELECT reason, count, unusable FROM ingest_issues WHERE unusable") == [
        {"reason": "CSV rows with another number of fields than the header (cut short or damaged)",
         "count": 1, "unusable": True}]
    assert store.scalar("SELECT example FROM ingest_issues WHERE unusable").startswith(kernels.name)
    assert store.scalar("SELECT source_records FROM traces") == whole.scalar("SELECT source_records FROM traces")


def test_a_csv_without_one_whole_row_is_an_error(tmp_path):
    folder, kernels = _cut_copy(tmp_path, lambda data: data.index(b"\n") + 20)  # header + a piece of a row
    with pytest.raises(TraceError, match="no row has the header's 16 fields"):
        load(folder)
    proc = run("analyze", str(folder))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and str(kernels) in proc.stderr


def test_a_real_trace_cut_short_is_analysed_with_a_warning(tmp_path):
    """The H100 Qwen trace cut at 70% of its text (as a crash while writing leaves it): its
    whole records are stored as the full trace stores them, and the reports warn."""
    raw = gzip.decompress(shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz").read_bytes())
    path = tmp_path / "cut.json"
    path.write_bytes(raw[:len(raw) * 7 // 10])
    full, cut = load(shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")), load(path)
    rows = "SELECT kind, name, start_ns, dur_ns FROM events"
    kept = set(map(tuple, cut.con.execute(rows).fetchall()))
    assert kept <= set(map(tuple, full.con.execute(rows).fetchall()))
    assert 0.5 < len(kept) / full.scalar("SELECT count(*) FROM events") < 0.9
    proc = run("analyze", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "input cut short inside traceEvents" in " ".join(proc.stdout.split())


def test_a_diff_warns_of_the_side_with_unusable_records(kineto_with_a_bad_duration):
    base = shared_trace("kineto/cuda/h100_bert_small.json.gz")
    proc = run("diff", str(base), str(kineto_with_a_bad_duration), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    warnings = json.loads(proc.stdout)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith(f"new: Rank 0 ({kineto_with_a_bad_duration}): 1 {WARNING}")
    terminal = run("diff", str(base), str(kineto_with_a_bad_duration)).stdout
    assert terminal.startswith("Warning: new: Rank 0")
