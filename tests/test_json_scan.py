"""The compiled scan of rocprofv3 JSON record lists (parsers/json_scan.py) reads what
DuckDB's JSON reader reads, or declines the list (which DuckDB then reads): on the shared
MI350X trace, on hand-made lists of every shape it must take or refuse, and on lists
drawn by hypothesis."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import shared_trace
from profkit.compiled import compiled
from profkit.ingest import ingest
from profkit.parsers import json_scan, rocprofv3_json
from profkit.store import Store

from test_rocprofv3_json import _doc

pytestmark = pytest.mark.skipif(not json_scan.available(), reason="numba cannot give the compiled scan")


def _by_duckdb(raw: bytes, kind: str, tmp_path) -> pa.Table | None:
    file = tmp_path / f"list{len(list(tmp_path.iterdir()))}.json"
    file.write_bytes(raw)
    try:
        return rocprofv3_json._read_json(file, kind)
    except Exception:  # noqa: BLE001 - DuckDB declining the list is an answer here
        return None


def _by_scan(raw: bytes, kind: str) -> pa.Table | None:
    return rocprofv3_json._scan(raw, 1, len(raw) - 1, kind)


def _store(path, monkeypatch, scan: bool) -> dict[str, list]:
    monkeypatch.setattr(rocprofv3_json, "SCAN_MIN_BYTES", 0 if scan else 1 << 62)
    monkeypatch.setattr(rocprofv3_json, "BATCH_SCAN_MIN_BYTES", 0 if scan else 1 << 62)
    store = Store.open(None)
    ingest([str(path)], store)
    tables = [t for (t,) in store.con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()]
    return {t: sorted(map(repr, store.con.execute(f'SELECT * EXCLUDE (ingest_seconds) FROM "{t}"' if t == "traces"
                                                   else f'SELECT * FROM "{t}"').fetchall())) for t in tables}


def test_mi350x_store_is_the_same_either_way(monkeypatch):
    path = shared_trace("rocprof/v3_json_mi350x/908_results.json.gz")
    scanned, read = _store(path, monkeypatch, True), _store(path, monkeypatch, False)
    assert len(scanned["events"]) == 43_915
    assert scanned == read


def test_a_list_the_scan_declines_is_read_by_duckdb(tmp_path, monkeypatch):
    doc = _doc()
    for record in doc["rocprofiler-sdk-tool"][0]["buffer_records"]["kernel_dispatch"]:
        record["ratio"] = 0.5  # a float: DuckDB reads past it, the scan does not
    path = tmp_path / "1_results.json"
    path.write_text(json.dumps(doc))
    raw = json.dumps(doc["rocprofiler-sdk-tool"][0]["buffer_records"]["kernel_dispatch"]).encode()
    assert _by_scan(raw, "Dispatch") is None
    scanned, read = _store(path, monkeypatch, True), _store(path, monkeypatch, False)
    assert len(scanned["events"]) > 3 and scanned == read


def test_missing_required_field_is_the_same_error(tmp_path, monkeypatch):
    doc = _doc()
    del doc["rocprofiler-sdk-tool"][0]["buffer_records"]["kernel_dispatch"][1]["dispatch_info"]["agent_id"]
    path = tmp_path / "1_results.json"
    path.write_text(json.dumps(doc))
    errors = []
    for scan in (True, False):
        monkeypatch.setattr(rocprofv3_json, "SCAN_MIN_BYTES", 0 if scan else 1 << 62)
        monkeypatch.setattr(rocprofv3_json, "BATCH_SCAN_MIN_BYTES", 0 if scan else 1 << 62)
        with pytest.raises(Exception) as raised:
            ingest([str(path)], Store.open(None))
        errors.append(str(raised.value))
    assert errors[0] == errors[1] and "record 1 lacks one of" in errors[0]


RECORD = {"kind": 11, "operation": 2, "thread_id": 7, "correlation_id": {"internal": 3, "external": 0},
          "start_timestamp": 1000, "end_timestamp": 1100,
          "dispatch_info": {"agent_id": {"handle": 12}, "queue_id": {"handle": 1}, "kernel_id": 4,
                            "dispatch_id": 3, "workgroup_size": {"x": 256, "y": 1, "z": 1},
                            "grid_size": {"x": 1024, "y": 2, "z": 1}}, "stream_id": {"handle": 3}}


@pytest.mark.parametrize("text", [
    json.dumps([RECORD, RECORD], separators=(",", ":")),
    json.dumps([RECORD, RECORD], indent=2),                              # pretty-printed
    json.dumps([{**RECORD, "note": "a \"quoted\" },{ \\ string", "extra": {"deep": {"x": 1}}}]),
    json.dumps([{**RECORD, "start_timestamp": -5, "end_timestamp": 0}]),
    json.dumps([{k: v for k, v in RECORD.items() if k not in ("thread_id", "stream_id")}]),  # defaults 0
    json.dumps([dict(reversed(list(RECORD.items())))]),                  # another key order
    json.dumps([{**RECORD, "start_timestamp": 2**63 - 1, "end_timestamp": 1_764_000_000_000_000_000}]),
    "[]",
])
def test_lists_the_scan_takes_read_as_duckdb_reads_them(text, tmp_path):
    raw = text.encode()
    scanned = _by_scan(raw, "Dispatch")
    assert scanned is not None
    assert scanned.equals(_by_duckdb(raw, "Dispatch", tmp_path))


def test_copy_bytes_missing_is_unknown(tmp_path):
    copy = {"kind": 10, "operation": 2, "start_timestamp": 1, "end_timestamp": 2, "bytes": 64,
            "dst_agent_id": {"handle": 12}, "src_agent_id": {"handle": 10}}
    raw = json.dumps([copy, {k: v for k, v in copy.items() if k != "bytes"}]).encode()
    scanned = _by_scan(raw, "Copy")
    assert scanned.column("bytes").to_pylist() == [64, None]
    assert scanned.equals(_by_duckdb(raw, "Copy", tmp_path))


@pytest.mark.parametrize("text", [
    json.dumps([{**RECORD, "ratio": 1.5}]),                  # a float
    json.dumps([{**RECORD, "start_timestamp": 1e3}]),        # a float where an integer is read
    json.dumps([{**RECORD, "tags": [1, 2]}]),               # an array
    json.dumps([{**RECORD, "ok": True}]),
    json.dumps([{**RECORD, "stream_id": None}]),
    json.dumps([{**RECORD, "kind": "11"}]),                  # a string where an integer is read
    json.dumps([{**RECORD, "dispatch_info": 5}]),            # an integer where an object is
    json.dumps([{**RECORD, "thread_id": {"x": 1}}]),         # an object where an integer is
    json.dumps([{**RECORD, "start_timestamp": 2**63}]),      # beyond int64
    json.dumps([{**RECORD, "start_timestamp": 10**19}]),
    json.dumps([RECORD]).replace('"kernel_id": 4', '"kernel_id": 04'),  # a leading zero (not JSON)
    '[{"a\\u0062":1}]',                                      # an escaped key
    json.dumps([RECORD, RECORD])[:-30] + "]",                # cut short
    json.dumps([RECORD])[:-1] + ",]",                        # a comma after the last record
    json.dumps([RECORD, RECORD]).replace("}, {", "} {"),    # no comma between records
    json.dumps([RECORD]).replace(', "operation"', ' "operation"'),  # no comma between fields
    json.dumps([RECORD]).replace("}}]", "},}]"),             # a comma before `}`
    "[1]", "[{]", '[{"a"}]', '[{"a":}]', "[,{}]",
])
def test_lists_the_scan_declines(text):
    assert _by_scan(text.encode(), "Dispatch") is None


def test_scan_never_reads_past_its_end():
    raw = json.dumps([RECORD], separators=(",", ":")).encode()
    for end in range(2, len(raw) - 1):  # every cut short of the last `}`
        assert json_scan.read(raw, 1, end, rocprofv3_json.DISPATCH_FIELDS) is None, end


def test_blocks_grow_past_the_first_estimate():
    short = {"start_timestamp": 1, "end_timestamp": 2}
    long = {**short, "note": "x" * 500}
    raw = json.dumps([long] * 100 + [short] * 5000, separators=(",", ":")).encode()
    found = json_scan.read(raw, 1, len(raw) - 1, ("start_timestamp", "end_timestamp"))
    assert len(found.present) == 5100 and found.values[1].tolist() == [2] * 5100


def _spans(raw: bytes, cuts: int) -> list[tuple[int, int]]:
    """`raw` (a compact list) cut between records into about `cuts` + 1 parts."""
    seps = [i for i in range(len(raw) - 2) if raw[i:i + 3] == b"},{"]
    chosen = sorted(set(seps[j * len(seps) // (cuts + 1)] for j in range(1, cuts + 1))) if seps else []
    starts = [1] + [c + 2 for c in chosen]
    ends = [c + 1 for c in chosen] + [len(raw) - 1]
    return list(zip(starts, ends))


@pytest.mark.parametrize("sizes", [
    [10] * 300,                        # alike: every part within its estimate
    [10] * 70 + [400] * 50 + [10] * 200,  # longer records later: wide gaps to close
    [400] * 70 + [10] * 400,          # shorter records later: parts outgrow their ranges
    [10] * 3,                          # fewer records than parts
])
def test_a_list_in_parts_reads_as_one(sizes):
    records = [{"start_timestamp": i, "end_timestamp": i + 1, "note": "x" * size, "thread_id": -i}
               for i, size in enumerate(sizes)]
    raw = json.dumps(records, separators=(",", ":")).encode()
    fields = ("start_timestamp", "end_timestamp", "thread_id")
    whole = json_scan.read(raw, 1, len(raw) - 1, fields)
    assert whole.values[0].tolist() == list(range(len(sizes)))
    for cuts in (1, 3, 7):
        parts = json_scan.Parts(raw, _spans(raw, cuts), fields)
        for k in reversed(range(len(parts.spans))):  # any order, as threads finish
            parts.read(k)
        found = parts.result()
        assert [v.tolist() for v in found.values] == [v.tolist() for v in whole.values], cuts
        assert found.present.tolist() == whole.present.tolist()


def test_a_part_declined_declines_the_list():
    raw = json.dumps([RECORD] * 20 + [{**RECORD, "ratio": 0.5}] + [RECORD] * 20, separators=(",", ":")).encode()
    parts = json_scan.Parts(raw, _spans(raw, 3), rocprofv3_json.DISPATCH_FIELDS)
    for k in range(len(parts.spans)):
        parts.read(k)
    assert parts.result() is None


INTS = st.integers(-(2**63) + 1, 2**63 - 1)
ODD = st.one_of(st.text(max_size=4), st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                st.lists(INTS, max_size=2))
INNER = st.dictionaries(st.sampled_from(["internal", "external", "handle", "x", "y", "z", "kernel_id"]),
                        INTS | st.dictionaries(st.sampled_from(["handle", "x"]), INTS, max_size=2), max_size=4)
KEYS = ("kind", "operation", "thread_id", "start_timestamp", "end_timestamp", "correlation_id", "stream_id",
        "dispatch_info")
# Records shaped like rocprofv3's, with keys left out and unknown keys; in some lists one
# value of another type where an integer or an object is read.
RECORDS = st.lists(st.fixed_dictionaries({}, optional={
    **{key: INTS for key in KEYS[:5]}, **{key: INNER for key in KEYS[5:]},
    "note": st.text(max_size=8) | INTS | INNER}), max_size=6)
ODD_VALUE = st.none() | st.tuples(st.integers(0, 5), st.sampled_from(KEYS), ODD | INTS | INNER)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS, odd=ODD_VALUE, indent=st.sampled_from([None, 1]))
def test_any_list_is_read_alike_or_declined(records, odd, indent, tmp_path):
    if odd and records:
        records[odd[0] % len(records)][odd[1]] = odd[2]
    raw = json.dumps(records, indent=indent, separators=None if indent else (",", ":")).encode()
    for kind in ("ApiCall", "Dispatch"):
        scanned = _by_scan(raw, kind)
        if scanned is not None:
            assert scanned.equals(_by_duckdb(raw, kind, tmp_path)), raw


def test_inputs_scanned_together_when_their_sum_is_worth_it(tmp_path, monkeypatch):
    """numba loads once a process: ranks each too small for the scan alone are scanned
    when together they are large enough, and store what DuckDB's reads store."""
    for rank in range(2):
        doc = _doc()
        doc["rocprofiler-sdk-tool"][0]["metadata"]["pid"] = 100 + rank  # two processes, not one recording
        (tmp_path / f"{rank}_results.json").write_text(json.dumps(doc))
    calls = []
    real = rocprofv3_json._scanned
    monkeypatch.setattr(rocprofv3_json, "_scanned", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(rocprofv3_json, "SCAN_MIN_BYTES", 1 << 62)

    def store_of(*paths):
        store = Store.open(None)
        ingest([str(p) for p in paths], store)
        return sorted(map(repr, store.con.execute("SELECT * EXCLUDE (event_id, parent_id) FROM events").fetchall()))

    monkeypatch.setattr(rocprofv3_json, "BATCH_SCAN_MIN_BYTES", 0)
    store_of(tmp_path / "0_results.json")
    assert calls == []  # one input alone is weighed by SCAN_MIN_BYTES
    together = store_of(tmp_path)
    assert calls == [1, 1]
    monkeypatch.setattr(rocprofv3_json, "BATCH_SCAN_MIN_BYTES", 1 << 62)
    assert store_of(tmp_path) == together and calls == [1, 1]


def test_a_bad_input_while_the_scan_loads_is_one_error(tmp_path, monkeypatch):
    """The compiled loop starts loading before a large input is read; an input that turns
    out unreadable still ends as the parser's one error."""
    import gzip

    from profkit.errors import TraceError

    monkeypatch.setattr(rocprofv3_json, "SCAN_MIN_BYTES", 0)
    cut = tmp_path / "cut_results.json.gz"
    cut.write_bytes(gzip.compress(json.dumps(_doc()).encode())[:200])
    assert rocprofv3_json._may_be_scanned(cut)
    with pytest.raises(TraceError) as raised:
        ingest([str(cut)], Store.open(None))
    assert str(cut) in str(raised.value) and "\n" not in str(raised.value)


def test_without_the_compiled_loop_duckdb_reads_every_list(tmp_path, monkeypatch):
    path = tmp_path / "1_results.json"
    path.write_text(json.dumps(_doc()))
    read = _store(path, monkeypatch, False)
    monkeypatch.setattr(json_scan, "_kernel", compiled(lambda: None))  # numba missing, or its cache unusable
    assert not json_scan.available() and json_scan.read(b"[]", 1, 1, ("a",)) is None
    assert _store(path, monkeypatch, True) == read


def test_each_part_is_sized_from_its_own_records():
    short = {"start_timestamp": 1, "end_timestamp": 2}
    long = {**short, "note": "x" * 400}
    raw = json.dumps([short] * 2000 + [long] * 2000, separators=(",", ":")).encode()
    parts = json_scan.Parts(raw, _spans(raw, 1), ("start_timestamp", "end_timestamp"))
    # Sized from the first part's short records alone, the second part's range would hold
    # ~40x the records it has (a reservation as large as the list's bytes allow).
    assert parts.first[-1] < 2 * 4000 + 2 * 64


@pytest.mark.parametrize("max_steps", [json_scan._MAX_STEPS, 10**9])
def test_gaps_close_alike_in_steps_or_one_copy(max_steps, monkeypatch):
    monkeypatch.setattr(json_scan, "_MAX_STEPS", max_steps)
    records = [{"start_timestamp": i, "end_timestamp": -i, "note": "x" * (30 if i % 500 < 64 else 27)}
               for i in range(3000)]
    raw = json.dumps(records, separators=(",", ":")).encode()
    fields = ("start_timestamp", "end_timestamp")
    parts = json_scan.Parts(raw, _spans(raw, 5), fields)
    for k in range(len(parts.spans)):
        parts.read(k)
    found = parts.result()
    assert found.values[0].tolist() == list(range(3000)) and found.values[1].tolist() == [-i for i in range(3000)]
    with pytest.raises(RuntimeError):
        parts.result()
