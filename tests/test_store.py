"""The store: schema creation, the writer's id shifting, issues, derived links/nesting/steps."""
import json

import pytest

from profkit import schema
from profkit.errors import TraceError
from profkit.ingest import Sink
from profkit.store import Store

from helpers import store_with_events

EVENTS = {
    "event_id": [0, 1, 2, 3, 4],
    "kind": ["annotation", "cpu_op", "runtime", "kernel", "annotation"],
    "name": ["ProfilerStep#3", "aten::mm", "cudaLaunchKernel", "ampere_sgemm_128x128_tn", "ProfilerStep#4"],
    "start_ns": [0, 10, 20, 150, 200],
    "dur_ns": [100, 50, 10, 30, 100],
    "pid": [1, 1, 1, None, 1],
    "tid": [1, 1, 1, None, 1],
    "device": [None, None, None, 0, None],
    "stream": [None, None, None, 7, None],
    "correlation": [None, None, 5, 5, None],
}


def test_every_table_and_view_is_created_and_documented():
    store = Store.open(None)
    tables = {r[0] for r in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for t in schema.TABLES:
        assert t.name in tables
        cols = [r[0] for r in store.con.execute(f"DESCRIBE {t.name}").fetchall()]
        assert cols == [c.name for c in t.columns]
        assert all(c.doc for c in t.columns)
    for v in schema.VIEWS:
        assert v.name in tables
        store.con.execute(f"SELECT * FROM {v.name} LIMIT 0").fetchall()
    assert store.schema_version() == schema.SCHEMA_VERSION


def test_docs_schema_md_is_generated_from_the_code():
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
    assert doc.read_text() == schema.markdown() + "\n", "regenerate: profkit schema --markdown > docs/schema.md"


def test_ids_are_shifted_so_two_traces_never_collide(tmp_path):
    store = store_with_events(EVENTS, tmp_path)
    with Sink(store).trace(tmp_path / "input.json", "test") as w:
        w.add_events(EVENTS)
    ids = [r[0] for r in store.con.execute("SELECT event_id FROM events ORDER BY event_id").fetchall()]
    assert ids == list(range(10))
    links = store.rows("SELECT trace_id, src_event, dst_event, kind FROM links ORDER BY trace_id")
    assert links == [{"trace_id": 0, "src_event": 2, "dst_event": 3, "kind": "launch"},
                     {"trace_id": 1, "src_event": 7, "dst_event": 8, "kind": "launch"}]


def test_nesting_steps_and_categories_are_derived(tmp_path):
    store = store_with_events(EVENTS, tmp_path)
    rows = {r["name"]: r for r in store.rows("SELECT * FROM events")}
    assert rows["aten::mm"]["parent_id"] == rows["ProfilerStep#3"]["event_id"]
    assert rows["cudaLaunchKernel"]["parent_id"] == rows["aten::mm"]["event_id"]
    assert rows["cudaLaunchKernel"]["depth"] == 2
    assert rows["ProfilerStep#4"]["depth"] == 0
    # The kernel runs after step 3's window closed, but counts for the step that launched it.
    assert rows["ampere_sgemm_128x128_tn"]["step"] == 3
    assert rows["ampere_sgemm_128x128_tn"]["category"] == "gemm"
    assert rows["aten::mm"]["category"] is None
    steps = store.rows("SELECT step, start_ns, end_ns, source FROM steps ORDER BY step")
    assert steps == [{"step": 3, "start_ns": 0, "end_ns": 100, "source": "profiler_step"},
                     {"step": 4, "start_ns": 200, "end_ns": 300, "source": "profiler_step"}]
    trace = store.rows("SELECT event_count, start_ns, end_ns FROM traces")[0]
    assert trace == {"event_count": 5, "start_ns": 0, "end_ns": 300}


def test_partial_overlap_is_not_nesting(tmp_path):
    store = store_with_events({
        "event_id": [0, 1, 2], "kind": ["cpu_op"] * 3, "name": ["a", "b", "c"],
        "start_ns": [0, 5, 12], "dur_ns": [10, 10, 2], "pid": [1] * 3, "tid": [1] * 3,
    }, tmp_path)
    rows = {r["name"]: r for r in store.rows("SELECT name, parent_id, depth FROM events")}
    assert rows["b"]["parent_id"] is None
    assert rows["c"]["parent_id"] == 1


def test_correlation_is_matched_within_a_process_only(tmp_path):
    store = store_with_events({
        "event_id": [0, 1, 2, 3], "kind": ["runtime", "runtime", "kernel", "kernel"],
        "name": ["cudaLaunchKernel"] * 2 + ["k"] * 2, "start_ns": [0, 0, 10, 10], "dur_ns": [1] * 4,
        "pid": [100, 200, 100, 200], "tid": [1, 2, None, None], "device": [None, None, 0, 1],
        "stream": [None, None, 7, 7], "correlation": [42] * 4,
    }, tmp_path)
    links = store.rows("SELECT src_event, dst_event FROM links ORDER BY src_event")
    assert links == [{"src_event": 0, "dst_event": 2}, {"src_event": 1, "dst_event": 3}]


def test_issues_are_counted_with_an_example(tmp_path):
    source = tmp_path / "t.json"
    source.write_text("{}")
    store = Store.open(None)
    with Sink(store).trace(source, "test") as w:
        w.add_events({"event_id": [0], "kind": ["cpu_op"], "name": ["x"], "start_ns": [0], "dur_ns": [1]})
        w.issue("unknown ph", 2, {"ph": "Z"})
        w.issue("unknown ph", 1)
    assert store.rows("SELECT reason, count, example FROM ingest_issues") == [
        {"reason": "unknown ph", "count": 3, "example": json.dumps({"ph": "Z"})}]
    assert store.scalar("SELECT issue_count FROM traces") == 3


def test_a_failed_parse_leaves_nothing_behind(tmp_path):
    source = tmp_path / "t.json"
    source.write_text("{}")
    store = Store.open(None)
    with pytest.raises(TraceError):
        with Sink(store).trace(source, "test") as w:
            w.add_events({"event_id": [0], "kind": ["cpu_op"], "name": ["x"], "start_ns": [0], "dur_ns": [1]})
            raise TraceError(source, "truncated")
    assert store.scalar("SELECT count(*) FROM events") == 0
    assert store.scalar("SELECT count(*) FROM traces") == 0


def test_an_input_with_nothing_in_it_is_an_error(tmp_path):
    source = tmp_path / "t.json"
    source.write_text("{}")
    with pytest.raises(TraceError, match="no events"):
        with Sink(Store.open(None)).trace(source, "test"):
            pass


def test_unknown_columns_are_rejected(tmp_path):
    source = tmp_path / "t.json"
    source.write_text("{}")
    with pytest.raises(KeyError):
        with Sink(Store.open(None)).trace(source, "test") as w:
            w.add_events({"event_id": [0], "colour": ["red"]})


def test_checked_json_is_stored_without_being_parsed_again():
    """`checked_json` is for text a parser has checked itself: DuckDB stores it in the JSON
    column as it is (the proof: text that is not JSON goes in unchanged), where plain text
    is parsed to validate it and refused when it is not JSON."""
    import duckdb
    import pyarrow as pa

    from profkit.store import checked_json

    if getattr(pa, "json_", None) is None or int(duckdb.__version__.split(".")[0]) < 2:
        pytest.skip("pyarrow before 19 or DuckDB before 2: the text is validated by DuckDB")
    store = Store.open(None)
    store.con.execute("CREATE TABLE t (a JSON)")
    text = pa.chunked_array([pa.array(['{"a":1}', None, "not json"], pa.large_string())])
    typed = checked_json(text)
    assert pa.types.is_large_string(typed.type.storage_type) and typed.type.extension_name == "arrow.json"
    with store.registered(pa.table({"a": typed}), "_checked"):
        store.con.execute("INSERT INTO t SELECT CAST(a AS JSON) FROM _checked")
    assert store.con.execute("SELECT CAST(a AS VARCHAR) FROM t").fetchall() == [('{"a":1}',), (None,), ("not json",)]
    with store.registered(pa.table({"a": text}), "_plain"), pytest.raises(duckdb.Error, match="(?i)json"):
        store.con.execute("INSERT INTO t SELECT CAST(a AS JSON) FROM _plain")
