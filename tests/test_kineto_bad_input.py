"""Bad and odd Kineto inputs, written here as tmp files: a specific one-line error when
nothing is usable, otherwise what is valid is stored and the rest counted as issues.
Checked through the library and through the `profkit` command (exit 2, one line)."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from profkit.errors import TraceError
from profkit.ingest import Sink, find_inputs, ingest
from profkit.parsers import kineto
from profkit.parsers.kineto_sql import FastPathFailed
from profkit.store import Store

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))


def event(**fields) -> dict:
    base = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 10, "tid": 11,
            "ts": 1000.5, "dur": 2.25, "args": {"External id": 1}}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, (dict, list)):
        content = json.dumps(content).encode()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def trace(events: list, **top) -> dict:
    return {"schemaVersion": 1, "traceEvents": events, **top}


def run_cli(path: Path) -> subprocess.CompletedProcess:
    assert PROFKIT, "profkit console script not found next to the interpreter"
    return subprocess.run([PROFKIT, "info", str(path)], capture_output=True, text=True, timeout=120)


def assert_cli_error(path: Path, fragment: str | None = None) -> None:
    proc = run_cli(path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and "Traceback" not in proc.stderr
    if fragment:
        assert fragment in lines[0]


def library_error(path: Path) -> str:
    with pytest.raises(TraceError) as info:
        ingest([path], Store.open(None))
    return info.value.problem


def parse_error(path: Path) -> str:
    """The parser's own message (for inputs the generic detection already turns away)."""
    with pytest.raises(TraceError) as info:
        kineto.parse(path, Sink(Store.open(None)))
    return info.value.problem


def ingest_one(path: Path) -> Store:
    store = Store.open(None)
    ingest([path], store)
    return store


def issues(store: Store) -> dict[str, int]:
    return dict(store.con.execute("SELECT reason, count FROM ingest_issues").fetchall())


GOOD = trace([event(), event(name="aten::add", ts=1003, dur=1)])


# -- nothing usable: one specific line, exit 2 ------------------------------------------

@pytest.mark.parametrize("name,content,fragment", [
    ("empty.json", b"", "empty file"),
    ("blank.json.gz", gzip.compress(b"  \n"), "empty file"),
    ("truncated.json", json.dumps(GOOD)[:60], "truncated JSON"),
    ("corrupt.json.gz", b"\x1f\x8b\x08\x00garbage-not-deflate" * 4, "corrupt gzip"),
    ("cut.json.gz", gzip.compress(json.dumps(GOOD).encode() * 50)[:80], "truncated gzip"),
    ("nothing_valid.json", trace([event(ph="Q"), event(dur=-1)]), "no usable events"),
    ("no_events.json", trace([]), "traceEvents is empty"),
])
def test_unusable_inputs_give_one_line_errors(tmp_path, name, content, fragment):
    path = write(tmp_path, name, content)
    if content:
        assert kineto.detect(path)
        assert fragment in parse_error(path)
    assert fragment in library_error(path)
    assert_cli_error(path, fragment)


def test_json_that_is_not_a_trace(tmp_path):
    path = write(tmp_path, "config.json", {"learning_rate": 0.1, "layers": [1, 2]})
    assert "no traceEvents" in parse_error(path)
    library_error(path)           # refused before parsing: not a trace profkit can read
    assert_cli_error(path)


def test_directory_without_traces(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="no traces found"):
        find_inputs(tmp_path)
    assert_cli_error(tmp_path, "no traces found")


def test_files_beside_the_traces_that_are_not_read_are_named(tmp_path):
    """A directory of ranks with a file profkit does not read (here a JSON that is no trace,
    and an empty one): the traces are analysed, and the store, the JSON and the report say
    which files were left out, and why."""
    write(tmp_path, "rank0.json", trace([event()]))
    write(tmp_path, "config.json", {"learning_rate": 0.1})
    (tmp_path / "rank1.json").write_bytes(b"")
    (tmp_path / "README.md").write_text("ignored by name: not listed")
    store = Store.open(None)
    ingest([tmp_path], store)
    expected = [{"path": str(tmp_path / "config.json"), "reason": "not a trace profkit reads"},
                {"path": str(tmp_path / "rank1.json"), "reason": "empty file"}]
    assert store.inputs_not_read() == expected
    proc = subprocess.run([PROFKIT, "analyze", str(tmp_path), "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs_not_read"] == expected
    proc = subprocess.run([PROFKIT, "analyze", str(tmp_path)], capture_output=True, text=True)
    assert ("Not read: 1 file (empty file: rank1.json); 1 file (not a trace profkit reads: config.json)."
            in proc.stdout.replace("\n", " ")), proc.stdout
    proc = subprocess.run([PROFKIT, "ingest", str(tmp_path), "-o", str(tmp_path / "run.duckdb")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and ", 2 file(s) under the input not read (see" in proc.stdout, proc.stdout
    # A single file has nothing beside it to report.
    single = Store.open(None)
    ingest([tmp_path / "rank0.json"], single)
    assert single.inputs_not_read() == []


# -- partly usable: what is valid is stored, the rest counted --------------------------------

def test_strings_as_numbers_are_converted_exactly(tmp_path):
    path = write(tmp_path, "strings.json", trace([
        event(ts="4458676522690.655", dur="1.001"),
        event(ts="1669783687352244", dur="7", pid="12", tid="stream 7"),
        event(ts="inf", dur="1"),
    ]))
    store = ingest_one(path)
    rows = store.rows("SELECT start_ns, dur_ns, end_ns, pid FROM events ORDER BY start_ns")
    assert [(r["start_ns"], r["dur_ns"]) for r in rows] == [
        (4458676522690655, 1001), (1669783687352244000, 7000)]
    assert rows[0]["end_ns"] == 4458676522691656 and rows[1]["pid"] == 12
    assert issues(store) == {"ts not a finite number in range": 1}
    tid = store.scalar("SELECT tid FROM events WHERE pid = 12")
    assert tid < 0 and store.scalar("SELECT name FROM threads WHERE tid = ?", [tid]) == "stream 7"


def test_times_beyond_the_store_range_are_counted(tmp_path):
    # 9.3e15 us is 9.3e18 ns: past int64 (a float, an integer and a string of it).
    path = write(tmp_path, "far.json", trace([
        event(ts=9223372036854776.0), event(ts=9_300_000_000_000_000), event(ts="9300000000000000.5"),
        event(ts=1, dur=9_300_000_000_000_000), event(ts=8_999_999_999_999_999, dur=8_999_999_999_999_999),
        event(ts=5),
    ]))
    store = ingest_one(path)
    assert store.scalar("SELECT count(*) FROM events") == 1
    assert issues(store) == {"ts not a finite number in range": 3, "dur not a finite number in range": 2}


@pytest.mark.parametrize("way", ["duckdb", "record by record"])
def test_values_of_odd_types_or_beyond_the_columns_are_counted(way, tmp_path, monkeypatch):
    """Found by the property test of tests/test_kineto_scan.py: each ended in a traceback
    on the record-by-record path (which the DuckDB path hands odd records to)."""
    if way != "duckdb":
        def refuse(*_):
            raise FastPathFailed("test: the record-by-record path")
        monkeypatch.setattr(kineto, "SqlPieces", refuse)
    path = write(tmp_path, "odd.json", trace([
        event(pid=9.223372036854776e18),                           # an integral float past int64
        event(cat="kernel", pid=2147483648.0, args={"stream": 7}),  # a device (from pid) past int32
        {"ph": "M", "name": ["thread_name"], "pid": 1, "tid": 2, "args": {"name": "x"}},
        event(cat="mtia_ccp_events", name=["dma_request"]),         # a list name where names map kinds
        {"ph": "C", "name": "mem", "pid": 9.223372036854776e18, "ts": 3, "args": {"used": 1}},  # a counter's
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2 ** 64, "args": {"name": "x"}},  # a thread's
        event(ts=5),
    ]))
    store = ingest_one(path)
    assert store.scalar("SELECT count(*) FROM events WHERE pid IS NULL AND device IS NULL AND stream = 7") == 1
    assert store.scalar("SELECT pid FROM counters") is None
    found = issues(store)
    assert found.pop("pid beyond int64 (stored as NULL)") == 1
    assert found.pop("device beyond int32 (stored as NULL)") == 1
    assert found.pop(next(r for r in found if r.startswith("metadata record not stored"))) == 1
    # DuckDB's reader gives the list name as its JSON text; the record-by-record path counts it.
    assert found == ({} if way == "duckdb" else {"missing name": 1})


def test_exact_ns_beyond_float_precision(tmp_path):
    # 16 significant digits: a float64 multiply rounds some of these to the wrong ns.
    values = [f"4458676522{i:03d}.{j:03d}" for i in range(0, 1000, 37) for j in range(0, 1000, 41)]
    text = '{"traceEvents": [' + ",".join(
        f'{{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": {v}, "dur": 0.001}}'
        for v in values) + "]}"
    store = ingest_one(write(tmp_path, "exact.json", text))
    got = [r[0] for r in store.con.execute("SELECT start_ns FROM events ORDER BY 1").fetchall()]
    assert got == sorted(int(v.replace(".", "")) for v in values)


def test_negative_missing_unknown_are_counted(tmp_path):
    path = write(tmp_path, "mixed.json", trace([
        event(),
        event(dur=-3),
        event(ts=...),
        event(dur=...),
        event(name=...),
        event(ph="Q"),
        event(cat="made_up_cat"),
        "not an object",
    ]))
    store = ingest_one(path)
    assert store.scalar("SELECT count(*) FROM events") == 1
    assert issues(store) == {
        "negative duration": 1, "missing ts": 1, "missing dur": 1, "missing name": 1,
        "unknown ph 'Q'": 1, "unknown category 'made_up_cat'": 1,
        "trace event is not a JSON object": 1,
    }
    assert store.scalar("SELECT source_records FROM traces") == 8


def test_b_e_instants_counters_flows_metadata(tmp_path):
    path = write(tmp_path, "phases.json", trace([
        {"ph": "M", "name": "thread_name", "pid": 10, "tid": 11, "args": {"name": "main"}},
        {"ph": "M", "name": "process_name", "pid": "10", "tid": 0, "args": {"name": "python"}},
        event(ph="B", ts=100, dur=..., name="outer"),
        event(ph="B", ts=110, dur=..., name="inner", tid="11"),
        event(ph="E", ts=120, dur=..., name="inner"),
        event(ph="E", ts=150, dur=..., name="outer"),
        event(ph="E", ts=160, dur=..., name="stray"),
        event(ph="B", ts=170, dur=..., name="never closed"),
        event(ph="i", ts=130, dur=..., cat="cpu_instant_event", name="[memory]", args={"Bytes": 4}),
        {"ph": "C", "name": "mem", "pid": 10, "ts": 140, "args": {"allocated": 5, "reserved": "7"}},
        {"ph": "s", "id": 1, "pid": 10, "tid": 11, "ts": 100, "cat": "fwdbwd", "name": "fwdbwd"},
        {"ph": "f", "id": 1, "pid": 10, "tid": 11, "ts": 110, "cat": "fwdbwd", "name": "fwdbwd", "bp": "e"},
        {"ph": "f", "id": 9, "pid": 0, "tid": 7, "ts": 110, "cat": "ac2g", "name": "ac2g", "bp": "e"},
    ]))
    store = ingest_one(path)
    ev = {r["name"]: r for r in store.rows("SELECT * FROM events")}
    assert (ev["outer"]["start_ns"], ev["outer"]["dur_ns"]) == (100_000, 50_000)
    assert (ev["inner"]["start_ns"], ev["inner"]["dur_ns"]) == (110_000, 10_000)
    assert ev["inner"]["tid"] == 11  # "11" and 11 are the same thread
    assert (ev["[memory]"]["kind"], ev["[memory]"]["dur_ns"]) == ("annotation", 0)
    assert issues(store) == {"E without a matching B": 1, "B without a matching E": 1}
    counters = store.rows("SELECT name, ts_ns, value FROM counters ORDER BY name")
    assert [(c["name"], c["value"]) for c in counters] == [("mem.allocated", 5.0), ("mem.reserved", 7.0)]
    assert store.rows("SELECT name FROM threads WHERE pid = 10 ORDER BY tid NULLS FIRST") == [
        {"name": "python"}, {"name": "main"}]
    link = store.rows("SELECT s.name AS src, d.name AS dst, l.kind FROM links l "
                      "JOIN events s ON s.event_id = l.src_event JOIN events d ON d.event_id = l.dst_event")
    assert link == [{"src": "outer", "dst": "inner", "kind": "fwdbwd"}]
    assert store.scalar("SELECT source_records FROM traces") == 13


def test_control_characters_and_trailing_info(tmp_path):
    text = ('{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "bad\x01name\ttab", "pid": 1, '
            '"tid": 1, "ts": 5, "dur": 1, "args": {"Input type": ["a\x02b"]}}], '
            '"INFO": ["INFO: one", "INFO: two"], "ERROR": ["ERROR: x"]}')
    store = ingest_one(write(tmp_path, "ctrl.json", text))
    row = store.rows("SELECT name, args FROM events")[0]
    assert row["name"] == "bad\x01name\ttab"
    assert json.loads(row["args"]) == {"Input type": ["a\x02b"]}
    meta = json.loads(store.scalar("SELECT metadata FROM traces"))
    assert meta["INFO"]["lines"] == 2 and meta["ERROR"]["lines"] == 1


def test_array_form_and_gzip_known_by_magic(tmp_path):
    path = write(tmp_path, "trace.bin", gzip.compress(json.dumps([event(), event(ts=2000)]).encode()))
    assert kineto.detect(path)
    store = ingest_one(path)
    assert store.scalar("SELECT count(*) FROM events") == 2


def test_device_events_take_device_and_stream(tmp_path):
    path = write(tmp_path, "dev.json", trace([
        event(cat="kernel", name="k", pid=0, tid=7, args={"device": 3, "stream": "0x0", "correlation": 5}),
        event(cat="gpu_memset", name="Memset (Device)", pid=2, tid="stream 9", args={"bytes": 64}),
        event(cat="cuda_runtime", name="cudaLaunchKernel", args={"correlation": 5}),
    ]))
    store = ingest_one(path)
    rows = {r["kind"]: r for r in store.rows("SELECT * FROM events")}
    assert (rows["kernel"]["device"], rows["kernel"]["stream"], rows["kernel"]["pid"], rows["kernel"]["tid"]) == (3, 0, None, None)
    assert rows["memset"]["device"] == 2 and rows["memset"]["stream"] < 0
    assert store.scalar("SELECT count(*) FROM links WHERE kind = 'launch'") == 1
    assert store.rows("SELECT bytes, direction FROM copies") == [{"bytes": 64, "direction": "memset"}]
