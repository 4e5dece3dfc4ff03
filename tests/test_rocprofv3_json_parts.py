"""rocprofv3 JSON lists cut into parts that are read in parallel: the store is the same
as when each list is read whole, also where a cut falls inside a record (a `},{` in a
string or a nested list) and where the list is not compact JSON."""
from __future__ import annotations

import json

import pytest

from profkit.ingest import ingest
from profkit.parsers import rocprofv3_json
from profkit.store import Store

from test_rocprofv3_json import _doc

COLUMNS = "event_id, kind, name, start_ns, dur_ns, pid, tid, device, stream, correlation, external_id, args"


def _events(path, monkeypatch, part_bytes: int) -> list[tuple]:
    monkeypatch.setattr(rocprofv3_json, "_PART_BYTES", part_bytes)
    store = Store.open(None)
    ingest([str(path)], store)
    return store.con.execute(f"SELECT {COLUMNS} FROM events ORDER BY event_id").fetchall()


def _long_doc(extra=None) -> dict:
    doc = _doc()
    records = doc["rocprofiler-sdk-tool"][0]["buffer_records"]
    first = records["kernel_dispatch"][0]
    records["kernel_dispatch"] = [
        {**first, "correlation_id": {"internal": 1000 + i, "external": 0}, "start_timestamp": 10 * i,
         "end_timestamp": 10 * i + 5, **({"note": extra(i)} if extra else {})}
        for i in range(200)]
    return doc


@pytest.mark.parametrize("extra", [
    None,
    lambda i: [{"a": i}, {"b": i}],        # nested list of objects: `},{` inside records
    lambda i: "x},{y" * (i % 3),           # `},{` inside a string
])
def test_parts_read_like_the_whole_list(tmp_path, monkeypatch, extra):
    path = tmp_path / "1_results.json"
    path.write_text(json.dumps(_long_doc(extra), separators=(",", ":")))
    whole = _events(path, monkeypatch, 1 << 40)
    assert len(whole) > 200
    assert _events(path, monkeypatch, 300) == whole


def test_lists_not_in_compact_json_are_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "1_results.json"
    path.write_text(json.dumps(_long_doc(), indent=1))
    assert _events(path, monkeypatch, 300) == _events(path, monkeypatch, 1 << 40)


def test_cuts_fall_between_records(tmp_path):
    raw = json.dumps([{"i": i, "s": "},{"} for i in range(50)], separators=(",", ":")).encode()
    rocprofv3_json._PART_BYTES, saved = 100, rocprofv3_json._PART_BYTES
    try:
        parts = list(rocprofv3_json._write_parts(memoryview(raw), tmp_path / "0"))
    finally:
        rocprofv3_json._PART_BYTES = saved
    assert len(parts) > 1
    assert rocprofv3_json._joined(parts).read_bytes() == raw
