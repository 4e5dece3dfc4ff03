"""The compiled scan of Kineto traces (parsers/kineto_scan.py) stores what the DuckDB path
stores: on the shared Kineto traces, on hand-made records of every odd shape, and on
records drawn by hypothesis. Event ids differ by design (the scan numbers records by
their position in traceEvents, the DuckDB path by batch), so stores are compared with
ids replaced by each event's rank in a canonical order, and `args` as parsed JSON (the
scan keeps the text as written, without spaces but where a record goes to the
record-by-record path, which keeps it as written; DuckDB rewrites numbers and escapes)."""
from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import shared_trace
from profkit.compiled import compiled
from profkit.errors import TraceError
from profkit.ingest import ingest
from profkit.parsers import kineto, kineto_read, kineto_scan
from profkit.parsers.kineto_sql import FastPathFailed
from profkit.store import Store

pytestmark = pytest.mark.skipif(not kineto_scan.available(), reason="numba cannot give the compiled scan")

_ID_COLUMNS = {"events": ("event_id", "parent_id"), "kernel_info": ("event_id",), "copies": ("event_id",),
               "collectives": ("event_id",), "links": ("src_event", "dst_event"), "steps": ("event_id",)}


def _json(text):
    return None if text is None else json.dumps(json.loads(text), sort_keys=True)


def _canonical(store: Store) -> dict[str, list[str]]:
    con = store.con
    args = dict(con.execute("SELECT event_id, args FROM events").fetchall())
    rows = con.execute("SELECT * EXCLUDE (args, parent_id) FROM events").fetchall()
    at = [d[0] for d in con.description].index("event_id")
    order = sorted(rows, key=lambda r: ([repr(v) for i, v in enumerate(r) if i != at], repr(_json(args[r[at]]))))
    rank = {r[at]: k for k, r in enumerate(order)}
    out = {}
    for (table,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall():
        # Volatile or worded from the record as read: the example of an issue (the
        # DuckDB path shows a record rebuilt from its text columns, the scan as written).
        drop = {"traces": "ingest_seconds", "ingest_issues": "example"}.get(table)
        data = con.execute(f'SELECT * {f"EXCLUDE ({drop})" if drop else ""} FROM "{table}"').fetchall()
        names = [d[0] for d in con.description]
        ids = [names.index(c) for c in _ID_COLUMNS.get(table, ())]
        fixed = []
        for row in data:
            row = list(row)
            for i in ids:
                row[i] = None if row[i] is None else rank[row[i]]
            if table == "events":
                row[names.index("args")] = _json(row[names.index("args")])
            fixed.append(repr(row))
        out[table] = sorted(fixed)
    return out


def _scan_from(monkeypatch, size: int) -> None:
    """The compiled scan for inputs from `size` bytes on, alone or with the others of an ingest."""
    monkeypatch.setattr(kineto_scan, "SCAN_MIN_BYTES", size)
    monkeypatch.setattr(kineto_scan, "BATCH_SCAN_MIN_BYTES", size)


def _store(path, monkeypatch, scan: bool):
    _scan_from(monkeypatch, 0 if scan else 1 << 62)
    # As for a large input: the events array located, not checked before it is read.
    monkeypatch.setattr(kineto_read, "LOCATE_MIN_BYTES", 0)
    store = Store.open(None)
    ingest([str(path)], store)
    return store


def _by_python(path, monkeypatch):
    """The record-by-record path alone (no DuckDB statements, no scan)."""
    def refuse(*_):
        raise FastPathFailed("test: the record-by-record path")
    with monkeypatch.context() as patch:
        patch.setattr(kineto, "SqlPieces", refuse)
        _scan_from(patch, 1 << 62)
        store = Store.open(None)
        ingest([str(path)], store)
    return store


def _either_way(path, monkeypatch, reference: str = "duckdb"):
    """(scanned, read the reference way): canonical stores, or the one-line errors."""
    out = []
    for way in ("scan", reference):
        try:
            store = (_store(path, monkeypatch, True) if way == "scan" else
                     _store(path, monkeypatch, False) if way == "duckdb" else _by_python(path, monkeypatch))
            out.append(_canonical(store))
        except TraceError as exc:
            out.append(str(exc))
    return out


def _trace(tmp_path, records, top=None, raw=None, name="t.json") -> object:
    path = tmp_path / name
    if raw is None:
        raw = json.dumps({**(top or {}), "traceEvents": records}, indent=1)
    path.write_text(raw) if isinstance(raw, str) else path.write_bytes(raw)
    return path


def _scanned(path, monkeypatch) -> bool:
    """Whether the scan took the file (rather than declining it to DuckDB)."""
    calls = []
    real = kineto_scan._store_parts
    monkeypatch.setattr(kineto_scan, "_store_parts", lambda *a: (calls.append(1), real(*a))[1])
    try:
        _store(path, monkeypatch, True)
    except TraceError:
        pass
    return bool(calls)


@pytest.mark.parametrize("relative", [
    "kineto/cuda/sampled_2ranks/sampled_rank-0.json.gz",  # integer times
    "kineto/cuda/v100_nccl_rank1_of2.json.gz",       # integer times, NCCL collectives, memcpy/memset
    "kineto/cuda/a100_nccl_rank0_of2.json.gz",       # times with 3 decimals, NCCL collectives, copies
    "kineto/mtia/mtia_inference_rank0.json.gz",      # another vendor's categories
    "kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz",  # ROCm: hex streams, hipExtModuleLaunchKernel grids
    "kineto/cuda/cpu_only_rank34.json.gz",
])
def test_shared_traces_store_the_same_either_way(relative, monkeypatch):
    path = shared_trace(relative)
    assert _scanned(path, monkeypatch)
    scanned, read = _either_way(path, monkeypatch)
    assert isinstance(scanned, dict) and len(scanned["events"]) > 10
    assert scanned == read


def _x(**fields):
    record = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 2, "ts": 10, "dur": 5,
              "args": {"External id": 7}}
    record.update(fields)
    return {k: v for k, v in record.items() if v is not ...}


_KERNEL = {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 12, "dur": 3,
           "args": {"device": 0, "stream": 7, "correlation": 99, "grid": [2, 1, 1], "block": [128, 1, 1],
                    "registers per thread": 32, "est. achieved occupancy %": 50}}
_LAUNCH = {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 2, "ts": 11,
           "dur": 1, "args": {"correlation": 99, "External id": 7}}

# Records the scan must store as the DuckDB path does, each beside an ordinary kernel and
# its launch (odd ones go to the record-by-record path, in file order).
ODD_RECORDS = {
    "escaped name": _x(name="aten::\"mm\"\\n\u00e9\u4e2d"),
    "unicode escape in name": _x(name="\\u00e9"),
    "number name": _x(name=5),
    "missing name": _x(name=...),
    "string pid": _x(pid="Spans"),
    "numeric string pid": _x(pid="12"),
    "float pid": _x(pid=1.5),
    "null tid": _x(tid=None),
    "three decimals": _x(ts=4458676760989.215, dur=0.001),
    "four decimals": _x(ts=1.2345, dur=2.0005),
    "trailing zeros": _x(ts=1.5000, dur=2.10),
    "big time with decimals": _x(ts=9_000_000_000_000.5),
    "exponent": _x(ts=1e3, dur=2E-3),
    "negative time": _x(ts=-0.5),
    "huge integer time": _x(ts=9_000_000_000_000_001),
    "string time": _x(ts="123.5"),
    "missing dur": _x(dur=...),
    "negative dur": _x(dur=-1),
    "missing ts": _x(ts=...),
    "unknown category": _x(cat="no_such_cat"),
    "missing cat": _x(cat=...),
    "number cat": _x(cat=3),
    "instant": {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 1, "tid": 2, "ts": 15,
                "s": "t", "args": {"Total Allocated": 10, "Bytes": 4}},
    "instant with odd dur": {"ph": "I", "cat": "cpu_instant_event", "name": "x", "pid": 1, "tid": 2, "ts": 15,
                             "dur": "soon"},
    "B and E": [{"ph": "B", "cat": "user_annotation", "name": "step", "pid": 1, "tid": 2, "ts": 9},
                {"ph": "E", "cat": "user_annotation", "name": "step", "pid": 1, "tid": 2, "ts": 20}],
    "launch flows": [{"ph": "s", "cat": "ac2g", "name": "ac2g", "id": 99, "pid": 1, "tid": 2, "ts": 11},
                     {"ph": "f", "cat": "ac2g", "name": "ac2g", "id": 99, "pid": 0, "tid": 7, "ts": 12, "bp": "e"}],
    "fwdbwd flow": [{"ph": "s", "cat": "fwdbwd", "name": "fwdbwd", "id": 3, "pid": 1, "tid": 2, "ts": 10},
                    {"ph": "f", "cat": "fwdbwd", "name": "fwdbwd", "id": 3, "pid": 1, "tid": 2, "ts": 11}],
    "metadata": {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "main"}},
    "counter": {"ph": "C", "name": "mem", "pid": 1, "ts": 12, "args": {"used": 5.5}},
    "unknown ph": _x(ph="Q"),
    "long ph": _x(ph="XX"),
    "number ph": _x(ph=1),
    "no args": _x(args=...),
    "empty args": _x(args={}),
    "null args": _x(args=None),
    "array args": _x(args=[1]),
    "string correlation": _x(args={"correlation": "0x1f"}),
    "float correlation": _x(args={"correlation": 1.0}),
    "null correlation": _x(args={"correlation": None, "External id": 3}),
    "lower external id": _x(args={"external id": 4}),
    "both external ids": _x(args={"External id": 4, "external id": 5}),
    "wanted keys nested": _x(args={"nested": {"correlation": 5, "device": [1, {"stream": 2}]}}),
    "hex stream": dict(_KERNEL, args={"device": 0, "stream": "0x7f", "correlation": 98}),
    "device from pid": dict(_KERNEL, args={"stream": 7}),
    "stream from tid": dict(_KERNEL, args={"device": 0}),
    "memcpy": {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "pid": 0, "tid": 7,
               "ts": 20, "dur": 2, "args": {"device": 0, "stream": 7, "correlation": 5, "bytes": 64,
                                           "memory bandwidth (GB/s)": 1.5}},
    "nccl kernel": dict(_KERNEL, name="ncclDevKernel_AllReduce_Sum_f32_RING_LL",
                        args={"device": 0, "stream": 9, "correlation": 9, "Collective name": "allreduce",
                              "In msg nelems": 1024, "dtype": "Float", "Group size": 2, "Process Group Ranks": "[0, 1]"}),
    "float args values": _x(args={"External id": 7, "x": 1.50, "y": 1e3, "s": "a\\u00e9b\\/", "l": [1, 2.0, None, True]}),
    # A duplicate key: DuckDB's reader takes the first value, Python's decoders the last;
    # the scan leaves such records to the record-by-record path (compared with it below).
    "duplicate key": '{"ph": "X", "ph": "i", "cat": "cpu_op", "name": "dup", "pid": 1, "tid": 2, "ts": 3, "dur": 1}',
    "duplicate args key": '{"ph": "X", "cat": "cpu_op", "name": "dup", "pid": 1, "tid": 2, "ts": 3, "dur": 1, '
                          '"args": {"correlation": 1, "correlation": 2}}',
    "escaped key": '{"ph": "X", "c\\u0061t": "cpu_op", "name": "esc", "pid": 1, "tid": 2, "ts": 3, "dur": 1}',
    "escaped args key": '{"ph": "X", "cat": "cpu_op", "name": "esc", "pid": 1, "tid": 2, "ts": 3, "dur": 1, '
                        '"args": {"devic\\u0065": 1}}',
    "spaces everywhere": '{ "ph" : "X" ,\n\t"cat" :"cpu_op", "name": "sp", "pid" : 1 , "tid": 2, "ts" : 3 , '
                         '"dur": 1 , "args" : { "External id" : 3 , "k" : [ 1 , { } , [ ] ] } }',
}


@pytest.mark.parametrize("case", sorted(ODD_RECORDS))
def test_odd_records_store_the_same_either_way(case, tmp_path, monkeypatch):
    odd = ODD_RECORDS[case]
    texts = [json.dumps(r) for r in (odd if isinstance(odd, list) else [odd])] if not isinstance(odd, str) else [odd]
    texts += [json.dumps(_LAUNCH), json.dumps(_KERNEL)]
    path = _trace(tmp_path, None, raw='{"schemaVersion": 1, "traceEvents": [\n' + ",\n".join(texts) + "\n]}")
    assert _scanned(path, monkeypatch)
    scanned, read = _either_way(path, monkeypatch, "python")
    assert scanned == read


def test_scanned_args_go_into_the_json_column_as_checked_text(tmp_path, monkeypatch):
    """The scan checked every byte of the args it keeps, so their text is stored without
    DuckDB parsing it again: typed JSON, valid, the text DuckDB keeps when it does parse
    it, and readable by the JSON functions."""
    texts = [json.dumps(ODD_RECORDS["float args values"]), ODD_RECORDS["spaces everywhere"],
             json.dumps(_LAUNCH), json.dumps(_KERNEL)]
    path = _trace(tmp_path, None, raw='{"traceEvents": [\n' + ",\n".join(texts) + "\n]}")
    assert _scanned(path, monkeypatch)
    store = _store(path, monkeypatch, True)
    rows = store.con.execute("""
        SELECT typeof(args), json_valid(CAST(args AS VARCHAR)),
               CAST(args AS VARCHAR) = CAST(CAST(CAST(args AS VARCHAR) AS JSON) AS VARCHAR)
        FROM events WHERE args IS NOT NULL
    """).fetchall()
    assert len(rows) == 4 and set(rows) == {("JSON", True, True)}
    assert store.con.execute("SELECT args->>'$.s', args->'$.l' FROM events WHERE args->>'$.x' IS NOT NULL"
                             ).fetchall() == [(ODD_RECORDS["float args values"]["args"]["s"], "[1,2.0,null,true]")]
    assert store.scalar("SELECT CAST(args AS VARCHAR) FROM events WHERE name = 'sp'") == '{"External id":3,"k":[1,{},[]]}'


# Inputs the scan declines as a whole (DuckDB's path then reads them and words any error).
DECLINED = {
    "an element that is not an object": '[{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 2, "ts": 1, "dur": 1}, 5]',
    "leading zero": '[{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 2, "ts": 01, "dur": 1}]',
    "control character in a string": '[{"ph": "X", "cat": "cpu_op", "name": "a\tb", "pid": 1, "tid": 2, "ts": 1, "dur": 1}]',
    "bad escape": '[{"ph": "X", "cat": "cpu_op", "name": "a\\qb", "pid": 1, "tid": 2, "ts": 1, "dur": 1}]',
    "trailing comma": '[{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 2, "ts": 1, "dur": 1},]',
    "comma in an object": '[{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 2, "ts": 1, "dur": 1,}]',
    "missing colon": '[{"ph" "X"}]',
    "bad literal": '[{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 2, "ts": 1, "dur": 1, "z": nul}]',
    "bad number": '[{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 2, "ts": 1., "dur": 1}]',
    "unclosed nesting": '[{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, "tid": 2, "ts": 1, "dur": 1, "args": {"a": [1, 2}}]',
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_declined_inputs_end_as_the_duckdb_path_ends(case, tmp_path, monkeypatch):
    text = DECLINED[case]
    path = _trace(tmp_path, None, raw='{"traceEvents": ' + text + '}')
    assert not _scanned(path, monkeypatch)
    scanned, read = _either_way(path, monkeypatch)
    assert scanned == read
    if isinstance(read, str):
        assert str(path) in read and "\n" not in read


@pytest.mark.parametrize("events", ["[]", "[ \n ]", '[{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "p"}}]',
                                    '[{"ph": "X", "cat": "nope", "name": "a", "pid": 1, "tid": 1, "ts": 1, "dur": 1}]'])
def test_nothing_to_store_is_the_same_error(events, tmp_path, monkeypatch):
    path = _trace(tmp_path, None, raw='{"traceEvents": ' + events + ', "schemaVersion": 1}')
    scanned, read = _either_way(path, monkeypatch)
    assert isinstance(read, str) and scanned == read


def test_invalid_utf8_is_declined(tmp_path, monkeypatch):
    good = '{"ph": "X", "cat": "cpu_op", "name": "NAME", "pid": 1, "tid": 2, "ts": 1, "dur": 1}'
    for bad in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"):
        raw = b'{"traceEvents": [' + good.encode().replace(b"NAME", b"a" + bad + b"b") + b"]}"
        path = _trace(tmp_path, None, raw=raw, name=f"bad{len(bad)}.json")
        assert not _scanned(path, monkeypatch), bad
        scanned, read = _either_way(path, monkeypatch)
        assert scanned == read


def test_valid_utf8_is_taken(tmp_path, monkeypatch):
    path = _trace(tmp_path, [_x(name="\u00e9\u4e2d\U0001f600"), _LAUNCH, _KERNEL])
    assert _scanned(path, monkeypatch)
    scanned, read = _either_way(path, monkeypatch)
    assert scanned == read and any("\u4e2d" in row for row in scanned["events"])


def test_a_file_cut_anywhere_is_never_read_past_its_end(tmp_path, monkeypatch):
    """Every cut of a small trace: the scan declines or reads; the outcome is the DuckDB path's."""
    text = json.dumps({"traceEvents": [_x(), _LAUNCH, _KERNEL, ODD_RECORDS["float args values"]]})
    for cut in range(len(text) - 60, len(text)):
        path = _trace(tmp_path, None, raw=text[:cut], name=f"cut{cut}.json")
        scanned, read = _either_way(path, monkeypatch)
        assert scanned == read, cut


def test_parts_read_in_parallel_equal_one_part(tmp_path, monkeypatch):
    """Cuts between parts fall at `},{`; one inside a string makes the scan decline, never
    misread: names here are full of `},{`."""
    records = [_x(name='x"},{"ph":"X' * (i % 3), ts=i) for i in range(3000)] + [_LAUNCH, _KERNEL]
    path = _trace(tmp_path, records)
    one, many = [], []
    for parts, out in ((1, one), (7, many)):
        monkeypatch.setattr(kineto_scan, "_workers", lambda parts=parts: parts)
        out.append(_canonical(_store(path, monkeypatch, True)))
    assert one == many
    assert one[0] == _canonical(_store(path, monkeypatch, False))


def test_rounds_store_what_one_round_stores(tmp_path, monkeypatch):
    """Rounds of a few KB (ROUND_BYTES bounds the memory held at 256 MB): ids stay
    positions in traceEvents, odd records still go to the record-by-record path in file
    order (B/E pairs across rounds), and a cut inside a string between rounds (names full
    of `},{`) makes the parser start again without the scan, to the same store."""
    records = []
    for i in range(400):
        records += [_x(name='x"},{"ph":"X' * (i % 2), ts=i), dict(_LAUNCH, ts=i), dict(_KERNEL, ts=i + 1)]
        records.append({"ph": "B" if i % 2 == 0 else "E", "cat": "user_annotation", "name": "r", "pid": 1,
                        "tid": 2, "ts": i})
    path = _trace(tmp_path, records)
    whole = _canonical(_store(path, monkeypatch, True))
    monkeypatch.setattr(kineto_scan, "ROUND_BYTES", 3000)
    declined = []
    real = kineto_scan.ScanDeclined.__init__
    monkeypatch.setattr(kineto_scan.ScanDeclined, "__init__", lambda self: (declined.append(1), real(self))[1])
    assert _canonical(_store(path, monkeypatch, True)) == whole
    assert declined  # a cut fell inside a name
    kept = [r for r in records if '},{' not in r["name"]]
    plain = _trace(tmp_path, kept, name="plain.json")
    declined.clear()
    rounds = _store(plain, monkeypatch, True)
    assert not declined
    ids = [i for (i,) in rounds.con.execute("SELECT event_id FROM events WHERE kind = 'cpu_op' ORDER BY 1").fetchall()]
    assert ids == [i for i, r in enumerate(kept) if r["cat"] == "cpu_op"]  # positions in traceEvents
    monkeypatch.setattr(kineto_scan, "ROUND_BYTES", 1 << 30)
    assert _canonical(rounds) == _canonical(_store(plain, monkeypatch, True)) == _canonical(_store(plain, monkeypatch, False))


def test_copies_collectives_and_kernel_info_of_every_round(tmp_path, monkeypatch):
    """Each round's kernel_info, copies and collectives (read back from its stored events):
    in rounds of a few KB they are what one round and the DuckDB path store, row for row
    and in order."""
    records = []
    for i in range(300):
        records.append(dict(_KERNEL, ts=10 * i, args=dict(_KERNEL["args"], correlation=i)))
        records.append({"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "pid": 0,
                        "tid": 7, "ts": 10 * i + 4, "dur": 2,
                        "args": {"device": 0, "stream": 7, "correlation": 10_000 + i, "bytes": 4096 + i}})
        if i % 3 == 0:
            records.append({"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce_Sum_f32_RING_LL",
                            "pid": 0, "tid": 9, "ts": 10 * i + 6, "dur": 3,
                            "args": {"device": 0, "stream": 9, "correlation": 20_000 + i,
                                     "Collective name": "allreduce", "In msg nelems": 1024 + i,
                                     "Out msg nelems": 1024 + i, "dtype": "Float", "Group size": 8}})
    path = _trace(tmp_path, records)
    monkeypatch.setattr(kineto_scan, "ROUND_BYTES", 4000)
    rounds = _store(path, monkeypatch, True)
    tables = {t: rounds.con.execute(f"SELECT * FROM {t}").fetchall() for t in ("copies", "collectives", "kernel_info")}
    assert len(tables["copies"]) == 300 and len(tables["collectives"]) == 100 and len(tables["kernel_info"]) == 300  # the gemms: the NCCL kernels have no grid
    assert [r[0] for r in tables["copies"]] == sorted(r[0] for r in tables["copies"])  # stored in file order
    monkeypatch.setattr(kineto_scan, "ROUND_BYTES", 1 << 30)
    assert _canonical(rounds) == _canonical(_store(path, monkeypatch, True)) == _canonical(_store(path, monkeypatch, False))


@pytest.mark.parametrize("round_bytes", [1 << 30, 2000])
def test_an_array_of_objects_after_the_events_is_not_read_as_events(round_bytes, tmp_path, monkeypatch):
    """Located without the whole-document check, the events array seems to end at the last
    `]` after a `}`: here deviceProperties'. The scan meets the real `]`, stops there (in a
    round before the last, when rounds are small) and the top level is read again."""
    devices = [{"id": i, "name": f"GPU {i}", "totalGlobalMem": 80 << 30, "numSms": 132} for i in range(60)]
    path = _trace(tmp_path, [_x(ts=i) for i in range(50)] + [_LAUNCH, _KERNEL],
                  top={"schemaVersion": 1}, name="t.json")
    text = path.read_text()
    path.write_text(text[:-1] + ', "deviceProperties": ' + json.dumps(devices, indent=1) + ', "traceName": "x"}')
    monkeypatch.setattr(kineto_scan, "ROUND_BYTES", round_bytes)
    assert _scanned(path, monkeypatch)
    scanned, read = _either_way(path, monkeypatch)
    assert scanned == read and len(scanned["devices"]) == 60 and len(scanned["events"]) == 52


def test_a_bad_record_in_a_later_round_is_the_duckdb_path_error(tmp_path, monkeypatch):
    text = json.dumps({"traceEvents": [_x(ts=i) for i in range(200)]})
    path = _trace(tmp_path, None, raw=text[:-3] + ', "bad": "\\q"}]}')
    monkeypatch.setattr(kineto_scan, "ROUND_BYTES", 2000)
    scanned, read = _either_way(path, monkeypatch)
    assert isinstance(read, str) and "malformed JSON" in read and scanned == read


def test_many_distinct_names_are_declined_beyond_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(kineto_scan, "_STRING_SLOTS", 64)
    path = _trace(tmp_path, [_x(name=f"op{i}") for i in range(100)])
    assert not _scanned(path, monkeypatch)
    scanned, read = _either_way(path, monkeypatch)
    assert scanned == read


def test_a_gzip_input_is_scanned(tmp_path, monkeypatch):
    text = json.dumps({"traceEvents": [_x(), _LAUNCH, _KERNEL]}).encode()
    path = _trace(tmp_path, None, raw=gzip.compress(text), name="t.json.gz")
    assert _scanned(path, monkeypatch)
    scanned, read = _either_way(path, monkeypatch)
    assert scanned == read


def test_inputs_scanned_together_when_their_sum_is_worth_it(tmp_path, monkeypatch):
    """numba loads once a process: ranks each too small for the scan alone are scanned
    when together they are large enough, and store what the DuckDB path stores."""
    for rank in range(3):
        _trace(tmp_path, [_x(name=f"op{i}", pid=rank + 1) for i in range(50)] + [_LAUNCH, _KERNEL],
               top={"distributedInfo": {"rank": rank}}, name=f"rank{rank}.json")
    one = (tmp_path / "rank0.json").stat().st_size
    calls = []
    real = kineto_scan._store_parts
    monkeypatch.setattr(kineto_scan, "_store_parts", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(kineto_scan, "SCAN_MIN_BYTES", 1 << 62)
    monkeypatch.setattr(kineto_read, "LOCATE_MIN_BYTES", 0)

    monkeypatch.setattr(kineto_scan, "BATCH_SCAN_MIN_BYTES", 0)
    ingest([str(tmp_path / "rank0.json")], Store.open(None))
    assert calls == []  # one input alone is weighed by SCAN_MIN_BYTES
    monkeypatch.setattr(kineto_scan, "BATCH_SCAN_MIN_BYTES", 2.5 * one)
    ingest([str(tmp_path / "rank0.json"), str(tmp_path / "rank1.json")], Store.open(None))
    assert calls == []  # two ranks: below the batch threshold
    together = Store.open(None)
    ingest([str(tmp_path)], together)
    assert calls == [1, 1, 1]

    monkeypatch.setattr(kineto_scan, "BATCH_SCAN_MIN_BYTES", 1 << 62)
    apart = Store.open(None)
    ingest([str(tmp_path)], apart)
    assert calls == [1, 1, 1]
    assert _canonical(together) == _canonical(apart)
    # Read again with one rank changed: only that one is read, so it is weighed alone.
    monkeypatch.setattr(kineto_scan, "BATCH_SCAN_MIN_BYTES", 2.5 * one)
    _trace(tmp_path, [_x(name=f"op{i}", pid=9) for i in range(60)] + [_LAUNCH, _KERNEL],
           top={"distributedInfo": {"rank": 1}}, name="rank1.json")
    ingest([str(tmp_path)], together)
    assert calls == [1, 1, 1]  # before: the two unchanged ranks counted, and it was scanned


def test_an_issue_example_is_compact_either_way(tmp_path, monkeypatch):
    """The scan hands a record over as written (here indented): its example is one line."""
    label = {"ph": "M", "name": "process_labels", "pid": 1, "tid": 0, "args": {"labels": "CPU"}}
    path = _trace(tmp_path, [label, _LAUNCH, _KERNEL])
    examples = [_store(path, monkeypatch, scan).con.execute(
        "SELECT example FROM ingest_issues WHERE reason LIKE '%process_labels%'").fetchall() for scan in (True, False)]
    assert examples[0] == examples[1] == [('{"ph":"M","name":"process_labels","pid":1,"tid":0,"args":{"labels":"CPU"}}',)]


def test_args_are_stored_without_whitespace_on_every_path(tmp_path, monkeypatch):
    """An indented input's args are stored as the DuckDB path stores them, also by the
    record-by-record path (odd records, and inputs only it reads)."""
    path = _trace(tmp_path, [_x(args={"External id": 7, "Input Dims": [[2, 3], [3]], "name": "a b"}),
                             _LAUNCH, _KERNEL])
    stores = [_store(path, monkeypatch, True), _store(path, monkeypatch, False), _by_python(path, monkeypatch)]
    args = [sorted(a for (a,) in s.con.execute("SELECT args FROM events").fetchall()) for s in stores]
    assert args[0] == args[1] == args[2]
    assert '{"External id":7,"Input Dims":[[2,3],[3]],"name":"a b"}' in args[2]


def test_a_gzip_input_is_weighed_by_the_size_its_trailer_gives(tmp_path):
    text = json.dumps({"traceEvents": [_x(name=f"op{i}") for i in range(2000)]}).encode()
    path = _trace(tmp_path, None, raw=gzip.compress(text), name="t.json.gz")
    assert kineto_read.text_bytes_estimate(path, 8) == len(text)  # compresses ~100x: 8x would say far less
    cut = _trace(tmp_path, None, raw=gzip.compress(text)[:-9], name="cut.json.gz")
    assert kineto_read.text_bytes_estimate(cut, 8) <= cut.stat().st_size * 1032  # no trailer: bounded


def test_without_the_compiled_loop_duckdb_reads(tmp_path, monkeypatch):
    path = _trace(tmp_path, [_x(), _LAUNCH, _KERNEL])
    read = _canonical(_store(path, monkeypatch, False))
    monkeypatch.setattr(kineto_scan, "_kernel", compiled(lambda: None))  # numba missing, or its cache unusable
    assert not kineto_scan.available()
    assert not _scanned(path, monkeypatch)
    assert _canonical(_store(path, monkeypatch, True)) == read


def test_the_loops_helpers_run_without_numbas_runtime():
    """With it, each helper call counts references to its arrays atomically: the scan took
    2.5-3x as long (docs/performance.md, twenty-sixth session). Only `scan` allocates."""
    numba = pytest.importorskip("numba")
    from profkit.parsers import kineto_scan_kernel as kernel

    compiled_here = {name: f for name, f in vars(kernel).items()
                     if isinstance(f, numba.core.registry.CPUDispatcher) and f.py_func.__module__ == kernel.__name__}
    helpers = set(compiled_here) - {"scan", "minified"}
    assert {"_string_end", "_number", "_intern", "_skip", "_ws"} <= helpers
    assert {name for name in helpers if compiled_here[name].targetoptions.get("_nrt") is not False} == set()


INTS = st.integers(-(2**63), 2**63 - 1)
SMALL = st.integers(-5, 10**6)
TIMES = st.one_of(SMALL, st.integers(0, 2**60), st.floats(-1e6, 1e13, allow_nan=False),
                  st.decimals(0, 10**13, places=3).map(float))
VALUES = st.one_of(st.none(), st.booleans(), SMALL, INTS, st.floats(allow_nan=False, allow_infinity=False),
                   st.text(max_size=6), st.lists(SMALL, max_size=3))
ARGS = st.dictionaries(st.sampled_from(["correlation", "External id", "external id", "device", "stream",
                                        "grid", "bytes", "x"]), VALUES | SMALL, max_size=4)
RECORD = st.fixed_dictionaries(
    {"ph": st.sampled_from(["X", "X", "X", "i", "I", "B", "E", "s", "f", "M", "C", "Q"])},
    optional={"cat": st.sampled_from(["cpu_op", "kernel", "cuda_runtime", "gpu_memcpy", "user_annotation",
                                      "ac2g", "fwdbwd", "cpu_instant_event", "nope", ""]),
              "name": st.sampled_from(["a", "b\u00e9", "aten::mm", "cudaLaunchKernel", "thread_name"]) | VALUES,
              "pid": SMALL | VALUES, "tid": SMALL | VALUES, "ts": TIMES | VALUES, "dur": TIMES | VALUES,
              "id": SMALL, "args": ARGS | VALUES})


# 150 examples here; 1500 passed when the scan was written.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD, min_size=1, max_size=12), indent=st.sampled_from([None, 1]))
def test_any_records_store_the_same_either_way(records, indent, tmp_path, monkeypatch):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"traceEvents": records + [_LAUNCH, _KERNEL]}, indent=indent))
    scanned, read = _either_way(path, monkeypatch, "python")
    assert scanned == read, path.read_text()[:2000]
