"""Damaged copies of small real traces of every format (cut at random points, random
bytes overwritten, CSV lines dropped), drawn with a fixed seed: each is either read and
analysed, or refused with a TraceError naming the file (the CLI's one-line error). Any
other exception is a defect, as is a hang: a sweep of this kind found one invalid UTF-8
byte in a 53 MB trace taking over 6 minutes (tests/test_kineto_locate.py)."""
from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_trace
from profkit.analyses import analyze
from profkit.errors import TraceError
from profkit.ingest import ingest
from profkit.store import Store

SEED = 20261204
BAD = b"\xff"
PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))
CASES_PER_INPUT = 6


def _cut(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(1, len(data))]


def _overwrite(data: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.randrange(1, 12)):
        damaged[rng.randrange(len(damaged))] = rng.choice(b'{}[]",:0123456789e-\\\n\x00\x01\xff')
    return bytes(damaged)


def _drop_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def _cut_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    at = rng.randrange(len(lines))
    lines[at] = lines[at][:rng.randrange(len(lines[at]) + 1)]
    return b"\n".join(lines)


def _copy_rewriting(source: Path, copy: Path, member: str, rewrite) -> Path:
    """A copy at `copy` of the input directory `source`, its file `member` rewritten."""
    shutil.copytree(source, copy)
    target = copy / member
    target.chmod(0o644)
    target.write_bytes(rewrite(target.read_bytes()))
    return copy


# (input under shared/traces, the file in it that is damaged, how it is damaged)
INPUTS = [
    ("kineto/cuda/a100_event_sync.json.gz", None, (_cut, _overwrite)),
    ("kineto/rocm/mi300x_torch_compile_triton.json.gz", None, (_cut, _overwrite)),
    ("rocprof/v1_mi300x_bmm", "results.json", (_cut, _overwrite)),
    ("rocprof/v3_csv_rocm6.4_docs", "123_kernel_trace.csv", (_cut, _overwrite, _drop_line, _cut_line)),
    ("rocprof/v3_csv_rocm6.4_docs", "238_hip_api_trace.csv", (_cut, _overwrite, _drop_line, _cut_line)),
    ("nsys/t4_vectoradd_streams.sqlite", None, (_cut, _overwrite)),
    ("rocprof/rocpd_mi300x_ck_bmm/28_results.db", None, (_cut, _overwrite)),
]


def _cases():
    rng = random.Random(SEED)
    for relative, member, damages in INPUTS:
        for k in range(CASES_PER_INPUT):
            damage = damages[k % len(damages)]
            yield pytest.param(relative, member, damage, rng.randrange(1 << 30),
                               id=f"{relative.split('/')[-1]}-{member or ''}-{damage.__name__[1:]}-{k}")


def _damaged_copy(tmp_path: Path, relative: str, member: str | None, damage, seed: int) -> Path:
    source = shared_trace(relative)
    rng = random.Random(seed)
    if member is not None:  # a directory: one of its files is damaged
        return _copy_rewriting(source, tmp_path / source.name, member, lambda data: damage(data, rng))
    copy = tmp_path / source.name
    data = source.read_bytes()
    if source.suffix == ".gz":  # the JSON text is damaged, then compressed again
        copy = tmp_path / source.name.removesuffix(".gz")
        data = gzip.decompress(data)
    copy.write_bytes(damage(data, rng))
    return copy


@pytest.mark.parametrize("relative,member,damage,seed", list(_cases()))
def test_a_damaged_input_is_read_or_refused_with_its_name(tmp_path, relative, member, damage, seed):
    path = _damaged_copy(tmp_path, relative, member, damage, seed)
    store = Store.open(None)
    try:
        ingest([str(path)], store)
    except TraceError as exc:
        assert str(path) in exc.path or exc.path.startswith(str(path)), exc
        assert exc.problem and "\n" not in exc.problem
        return
    result = analyze(store)
    assert result["traces"]
    for trace in result["traces"]:
        accounting = trace["input"]
        assert accounting["unusable_records"] <= accounting["records_not_stored"]


# -- what the sweep found, each pinned down ------------------------------------------------

KINETO_EVENT = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 2, "ts": 10, "dur": 5,
                "args": {"note": "PLACE"}}


def test_invalid_utf8_inside_args_is_named_at_its_offset(tmp_path):
    # msgspec passes over the args (kept raw) without checking their text.
    text = json.dumps({"traceEvents": [KINETO_EVENT] * 3}).encode()
    data = text.replace(b"PLACE", b"PL\xffACE", 1)
    path = tmp_path / "t.json"
    path.write_bytes(data)
    with pytest.raises(TraceError) as raised:
        ingest([str(path)], Store.open(None))
    assert raised.value.problem == f"not UTF-8 text: invalid byte 0xff at offset {data.index(BAD)}"


def test_a_thread_sort_index_beyond_bigint_is_counted(tmp_path):
    meta = {"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": 2, "args": {"sort_index": 10 ** 30}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": [KINETO_EVENT, meta]}))
    store = Store.open(None)
    ingest([str(path)], store)
    assert store.rows("SELECT reason, count, unusable FROM ingest_issues") == [
        {"reason": "metadata record without pid or value (thread_sort_index)", "count": 1, "unusable": True}]


CSV_HEADER = b'"Kind","Agent_Id","Kernel_Name","Correlation_Id","Start_Timestamp","End_Timestamp"\n'


def test_csv_values_that_are_not_utf8_are_kept_with_the_bytes_replaced(tmp_path):
    path = tmp_path / "5_kernel_trace.csv"
    path.write_bytes(CSV_HEADER + b'"KERNEL_DISPATCH",1,"k\xff",1,10,20\n"KERNEL_DISPATCH",1,"k",2,30,40\n')
    store = Store.open(None)
    ingest([str(path)], store)
    assert store.scalar("SELECT list(name ORDER BY start_ns) FROM events") == ["k\ufffd", "k"]
    assert store.rows("SELECT reason, count, unusable FROM ingest_issues") == [{
        "reason": "5_kernel_trace.csv: 1 distinct Kernel_Name value(s) not UTF-8 text (bad bytes replaced by U+FFFD)",
        "count": 0, "unusable": False}]


def test_a_short_csv_row_that_is_not_utf8_is_counted_without_noise(tmp_path):
    # pyarrow cannot hand such a row to the skipping handler: it printed a traceback to
    # stderr ("Exception ignored in ...") and refused the file.
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "5_kernel_trace.csv").write_bytes(
        CSV_HEADER + b'"KERNEL_DISPATCH",1,"k",1,10,20\n"KERNEL_DISPATCH",1,"k\xff",2,30\n"KERNEL_DISPATCH",1,"k",3,40,50\n')
    proc = subprocess.run([PROFKIT, "--no-cache", "info", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    store = Store.open(None)
    ingest([str(folder)], store)
    assert store.scalar("SELECT count(*) FROM events") == 2
    assert store.scalar("SELECT sum(count) FROM ingest_issues WHERE unusable") == 1


def test_csv_text_columns_that_read_as_numbers_are_names(tmp_path):
    # Found by the sweep: a damaged header shifted Kernel_Name onto a column of numbers,
    # which the reader types as integers; the names' mapping then failed on an int.
    path = tmp_path / "5_kernel_trace.csv"
    path.write_bytes(CSV_HEADER + b'"KERNEL_DISPATCH",1,17,1,10,20\n"KERNEL_DISPATCH",1,18,2,30,40\n')
    store = _ingested(path)
    assert store.scalar("SELECT list(name ORDER BY start_ns) FROM events") == ["17", "18"]
    # An Agent_Id written as a number (ROCm 6.2) is still the HSA node it names.
    assert store.scalar("SELECT list(DISTINCT device) FROM events") == [0]


def test_a_csv_header_that_is_not_utf8_is_a_one_line_error(tmp_path):
    path = tmp_path / "5_kernel_trace.csv"
    path.write_bytes(CSV_HEADER.replace(b"Kind", b"Ki\xffnd") + b'"KERNEL_DISPATCH",1,"k",1,10,20\n')
    with pytest.raises(TraceError, match="its header is not UTF-8 text"):
        ingest([str(path)], Store.open(None))


def _ingested(path: Path) -> Store:
    store = Store.open(None)
    ingest([str(path)], store)
    return store


@pytest.mark.parametrize("where", ["inside the events", "after the events"])
def test_a_rocprof_v1_results_json_cut_short_is_read_where_it_was_whole(tmp_path, where):
    source = shared_trace("rocprof/v1_mi300x_bmm")

    def cut(data: bytes) -> bytes:
        events_end = data.index(b"\n],") + 2
        return data[:events_end // 2] if where == "inside the events" else data[:events_end + 100]

    copy = _copy_rewriting(source, tmp_path / "v1", "results.json", cut)
    full, cut = _ingested(source), _ingested(copy)
    issues = cut.rows("SELECT reason, count, unusable FROM ingest_issues WHERE reason LIKE 'input cut short%'")
    assert len(issues) == 1
    if where == "after the events":  # every record read: a note, the same events
        assert issues[0]["count"] == 0 and not issues[0]["unusable"]
        assert issues[0]["reason"].startswith("input cut short after traceEvents: its last ")
        assert cut.scalar("SELECT count(*) FROM events") == full.scalar("SELECT count(*) FROM events")
    else:
        assert issues[0]["count"] == 1 and issues[0]["unusable"]
        assert 0 < cut.scalar("SELECT count(*) FROM events") < full.scalar("SELECT count(*) FROM events")


def test_a_kineto_trace_cut_after_its_events_keeps_every_event(tmp_path):
    text = json.dumps({"traceEvents": [KINETO_EVENT] * 5, "traceName": "a long name " * 20})
    path = tmp_path / "t.json"
    path.write_text(text[:-40])
    store = _ingested(path)
    assert store.scalar("SELECT count(*) FROM events") == 5
    assert store.rows("SELECT count, unusable FROM ingest_issues WHERE reason LIKE 'input cut short after%'") == [
        {"count": 0, "unusable": False}]


# A crash while a file is written can leave it at its full size with the unwritten part
# zero-filled (delayed allocation): the text then ends in NUL bytes, where it was cut.
def _zero_filled(data: bytes, keep: int) -> bytes:
    return data[:keep] + bytes(len(data) - keep)


def _issues(store: Store) -> list[dict]:
    return store.rows("SELECT reason, count, unusable FROM ingest_issues ORDER BY reason")


NUL_NOTE = "NUL bytes after the text left out"


@pytest.mark.parametrize("name, member", [("kineto/cuda/a100_event_sync.json.gz", None),
                                          ("rocprof/v1_mi300x_bmm", "results.json")])
def test_a_cut_left_zero_filled_is_read_as_the_cut(tmp_path, name, member):
    source = shared_trace(name)
    data = gzip.decompress(source.read_bytes()) if member is None else (source / member).read_bytes()
    keep = len(data) * 3 // 5
    plain, filled = tmp_path / "plain", tmp_path / "filled"
    for folder, text in ((plain, data[:keep]), (filled, _zero_filled(data, keep))):
        if member is None:
            folder.mkdir()
            (folder / "t.json").write_bytes(text)
        else:
            _copy_rewriting(source, folder, member, lambda _old, text=text: text)
    cut, zero_filled = (_ingested(f / "t.json" if member is None else f) for f in (plain, filled))
    query = "SELECT kind, name, start_ns, dur_ns FROM events ORDER BY event_id"
    assert zero_filled.rows(query) == cut.rows(query) and cut.rows(query)
    notes = [i for i in _issues(zero_filled) if NUL_NOTE in i["reason"]]
    assert notes == [{"reason": f"{len(data) - keep:,} {NUL_NOTE} (a file system's zero-filled tail after a crash, "
                                "or a preallocated file)", "count": 0, "unusable": False}]
    assert [i for i in _issues(zero_filled) if NUL_NOTE not in i["reason"]] == _issues(cut)


def test_a_whole_trace_followed_by_nul_bytes_keeps_every_event(tmp_path):
    text = json.dumps({"traceEvents": [KINETO_EVENT] * 5}).encode()
    path = tmp_path / "t.json"
    path.write_bytes(text + bytes(100_000))  # more than one block of the search from the end
    store = _ingested(path)
    assert store.scalar("SELECT count(*) FROM events") == 5
    assert store.rows("SELECT count, unusable FROM ingest_issues") == [{"count": 0, "unusable": False}]
    assert store.scalar("SELECT reason FROM ingest_issues").startswith(f"100,000 {NUL_NOTE}")


def test_a_file_of_nul_bytes_only_is_named_so_alone_or_in_a_directory(tmp_path):
    # Nothing was written before a crash: in a directory of ranks that is one rank lost,
    # and analysing the others alone would be a partial result nobody asked for.
    lone = tmp_path / "lone.json"
    lone.write_bytes(bytes(5000))
    with pytest.raises(TraceError, match="every one of its 5,000 bytes is NUL: nothing was written to it"):
        _ingested(lone)
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    shutil.copy(shared_trace("kineto/cuda/sampled_2ranks/sampled_rank-0.json.gz"), ranks)
    (ranks / "sampled_rank-1.json").write_bytes(bytes(70_000))
    with pytest.raises(TraceError) as info:
        _ingested(ranks)
    assert info.value.path == str(ranks / "sampled_rank-1.json")
    assert info.value.problem.startswith("every one of its 70,000 bytes is NUL")


def test_a_damaged_agent_info_row_falls_back_to_the_node_ids_the_records_name(tmp_path):
    # Found by the sweep: a byte overwritten in Node_Id ended in an internal error. Without
    # that row the GPU ordinals would shift, so agent_info is not used at all.
    source = shared_trace("rocprof/v3_csv_mi300a_rocm6.2")

    def overwrite_first_gpu_node(data: bytes) -> bytes:
        lines = data.split(b"\n")
        gpu = next(i for i, line in enumerate(lines) if b'"GPU"' in line)
        lines[gpu] = b"[" + lines[gpu][1:]  # the first GPU's Node_Id, 4, overwritten
        return b"\n".join(lines)

    copy = _copy_rewriting(source, tmp_path / "run", "53730_agent_info.csv", overwrite_first_gpu_node)
    full, damaged = _ingested(source), _ingested(copy)
    query = "SELECT device, count(*) AS n FROM events WHERE kind = 'kernel' GROUP BY 1"
    assert damaged.rows(query) == full.rows(query) == [{"device": 0, "n": 9}]
    assert damaged.rows("SELECT device, node_id FROM devices") == [{"device": 0, "node_id": 4}]
    (issue,) = damaged.rows("SELECT reason, count, unusable FROM ingest_issues WHERE unusable")
    assert issue["count"] == 1 and issue["reason"].startswith("agent_info rows without a numeric Node_Id")


def test_agent_info_numbers_that_are_not_numbers_are_left_unknown(tmp_path):
    copy = _copy_rewriting(shared_trace("rocprof/v3_csv_mi300a_rocm6.2"), tmp_path / "run", "53730_agent_info.csv",
                           lambda data: data.replace(b",3700,2100,", b",3700,21x0,"))  # the GPUs' clock
    store = _ingested(copy)
    assert store.scalar("SELECT count(*) FROM devices") == 4
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") == 9


def test_a_value_beyond_its_columns_type_is_a_one_line_error_naming_it(tmp_path):
    # Found by a sweep that set one SQLite value of each column to text, a float, NULL or
    # 2**62: a rocpd workgroup size of 2**62 (kernel_info's block_x is 32-bit) ended in an
    # internal error.
    import sqlite3

    path = tmp_path / "28_results.db"
    shutil.copy(shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db"), path)
    path.chmod(0o644)
    con = sqlite3.connect(path)
    (table,) = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                           "AND name LIKE 'rocpd_kernel_dispatch%'").fetchone()
    con.execute(f'UPDATE "{table}" SET workgroup_size_x = ? WHERE rowid = 3', (2 ** 62,))
    con.commit()
    con.close()
    store = Store.open(None)
    with pytest.raises(TraceError) as info:
        ingest([str(path)], store)
    assert info.value.path == str(path)
    assert info.value.problem.startswith("a value profkit cannot store (Conversion Error: ")
    assert "4611686018427387904" in info.value.problem and "block_x" in info.value.problem
    assert store.scalar("SELECT count(*) FROM traces") == 0  # nothing half-read left behind


def test_an_integer_beyond_64_bits_is_a_one_line_error(tmp_path):
    # Found by a sweep setting one JSON field to odd values: a kernel symbol's sgpr_count of
    # 2**64 (msgspec takes it; Arrow's int64 cannot) ended in an internal error.
    doc = json.loads(gzip.decompress(shared_trace("rocprof/v3_json_mi350x/908_results.json.gz").read_bytes()))
    doc["rocprofiler-sdk-tool"][0]["kernel_symbols"][5]["sgpr_count"] = 2 ** 64
    path = tmp_path / "908_results.json"
    path.write_text(json.dumps(doc))
    store = Store.open(None)
    with pytest.raises(TraceError) as info:
        ingest([str(path)], store)
    assert info.value.path == str(path)
    assert info.value.problem.startswith("a value profkit cannot store (an integer beyond 64 bits")
    assert store.scalar("SELECT count(*) FROM traces") == 0
