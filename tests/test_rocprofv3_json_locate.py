"""rocprofv3 JSON: large inputs locate their buffer_records lists by a byte search
instead of a whole-document decode. The store must be the same either way, on the real
MI350X file and on documents built to mislead the search (which must then fall back)."""
from __future__ import annotations

import gzip
import json

import msgspec
import pytest

from conftest import shared_trace
from helpers import table_digests
from profkit.errors import TraceError
from profkit.ingest import ingest
from profkit.parsers import rocprofv3_json
from profkit.store import Store
from test_rocprofv3_json import _doc


def _ingest(path, monkeypatch, locate: bool) -> tuple[Store, list]:
    """Ingest with the search on (every size) or off. Also returns what each search gave:
    None, or per process {list name: (was it a view of the input, its bytes)}, taken at
    once (staging empties the lists)."""
    monkeypatch.setattr(rocprofv3_json, "LOCATE_MIN_BYTES", 0 if locate else 1 << 62)
    results = []
    original = rocprofv3_json._located

    def spy(data):
        doc = original(data)
        results.append(None if doc is None else [
            {name: (isinstance(raw, memoryview), bytes(raw)) for name, raw in proc.buffer_records.items()}
            for proc in doc.processes])
        return doc

    monkeypatch.setattr(rocprofv3_json, "_located", spy)
    store = Store.open(None)
    ingest([str(path)], store)
    return store, results


def _same_either_way(path, monkeypatch) -> list:
    located, results = _ingest(path, monkeypatch, locate=True)
    whole, none = _ingest(path, monkeypatch, locate=False)
    assert none == []
    assert table_digests(located) == table_digests(whole)
    assert located.scalar("SELECT count(*) FROM events") > 0
    return results


def _write(tmp_path, doc, **dump) -> str:
    path = tmp_path / "7_results.json"
    path.write_text(json.dumps(doc, **({"separators": (",", ":")} | dump)))
    return path


def test_mi350x_located_like_decoded(monkeypatch):
    (doc,) = _same_either_way(shared_trace("rocprof/v3_json_mi350x/908_results.json.gz"), monkeypatch)
    assert doc is not None, "the real file's lists were located"


@pytest.mark.parametrize("dump", [{}, {"indent": 1}], ids=["compact", "indented"])
def test_synthetic_located_like_decoded(tmp_path, monkeypatch, dump):
    """`strings.buffer_records` (a list of kind names) comes first and is no match; empty
    lists, an unstored list and indented JSON locate too."""
    doc = _doc()
    doc["rocprofiler-sdk-tool"][0]["buffer_records"]["page_migration"] = []
    (located,) = _same_either_way(_write(tmp_path, doc, **dump), monkeypatch)
    assert located is not None
    (records,) = located
    assert set(records) == {"kernel_dispatch", "hip_api", "rccl_api", "marker_api", "memory_copy",
                            "scratch_memory", "page_migration"}
    assert all(view for view, _ in records.values())
    assert msgspec.json.decode(records["kernel_dispatch"][1]) == \
        doc["rocprofiler-sdk-tool"][0]["buffer_records"]["kernel_dispatch"]


@pytest.mark.parametrize("extra", [
    {"args": "stream]"},                # the first `]` after the list is inside a string
    {"args": [1, 2]},                   # ... or ends a nested list
])
def test_misleading_lists_fall_back(tmp_path, monkeypatch, extra):
    doc = _doc()
    hip = doc["rocprofiler-sdk-tool"][0]["buffer_records"]["hip_api"]
    hip[0] = {**hip[0], **extra}
    (located,) = _same_either_way(_write(tmp_path, doc), monkeypatch)
    assert located is None, "a wrong range must not pass the check"


def test_several_processes(tmp_path, monkeypatch):
    one = _doc()["rocprofiler-sdk-tool"][0]
    two = json.loads(json.dumps(one))
    two["metadata"]["pid"] = 100
    (located,) = _same_either_way(_write(tmp_path, {"rocprofiler-sdk-tool": [one, two]}), monkeypatch)
    assert located is not None and len(located) == 2


def test_documents_cut_short_read_alike_either_way(tmp_path, monkeypatch):
    """Cut short inside its records (read up to the last whole one) or before them (a
    one-line error): the same with the search on or off."""
    text = json.dumps(_doc(), separators=(",", ":")).encode()
    cut = tmp_path / "cut_results.json"
    cut.write_bytes(text[: len(text) - 40])
    stores = [_ingest(cut, monkeypatch, locate)[0] for locate in (True, False)]
    assert table_digests(stores[0]) == table_digests(stores[1])
    assert stores[0].scalar("SELECT count(*) FROM ingest_issues WHERE reason LIKE 'input cut short inside%'") == 1
    gz = tmp_path / "gz_results.json.gz"
    gz.write_bytes(gzip.compress(text[: text.index(b'"buffer_records":{')]))
    messages = []
    for locate in (True, False):
        with pytest.raises(TraceError) as info:
            _ingest(gz, monkeypatch, locate)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "truncated JSON" in messages[0]
