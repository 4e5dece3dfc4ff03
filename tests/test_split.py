"""profkit.split: one trace per process that drove a device (the shared two-rank Nsight
reports are in test_nsys.py); here the cases those reports do not have: two processes on
one device, a host-only process, rows that follow their events."""
from __future__ import annotations

from profkit import split
from profkit.ingest import Sink
from profkit.store import Store


def _store(tmp_path, split_by_process=True):
    source = tmp_path / "report.sqlite"
    source.write_text("x")
    store = Store.open(None)
    with Sink(store).trace(source, "test") as w:
        w.split_by_process = split_by_process
        w.read(8)
        w.issue("table not ingested: X", 1)
        # pid 10 and pid 20 both launch on device 0 (MPS, or two ranks on one GPU);
        # pid 30 is host-only (a launcher).
        w.add_events({
            "event_id": [0, 1, 2, 3, 4, 5, 6],
            "kind": ["runtime", "kernel", "runtime", "kernel", "annotation", "annotation", "runtime"],
            "name": ["cudaLaunchKernel", "k", "cudaLaunchKernel", "k", "step_1", "step_1", "poll"],
            "start_ns": [0, 10, 5, 40, 0, 0, 0], "dur_ns": [5, 20, 5, 20, 100, 100, 3],
            "pid": [10, 10, 20, 20, 10, 20, 30], "tid": [10, None, 20, None, 10, 20, 30],
            "device": [None, 0, None, 0, None, None, None], "stream": [None, 7, None, 7, None, None, None],
            "correlation": [1, 1, 1, 1, None, None, None]})
        w.add_rows("devices", [{"device": 0, "vendor": "nvidia", "name": "GPU"}])
        w.add_rows("threads", [{"pid": 10, "tid": 10, "name": "python"}, {"pid": 20, "tid": 20, "name": "python"},
                               {"pid": 30, "tid": 30, "name": "torchrun"}])
        w.add_rows("steps", [{"step": 1, "name": "step_1", "start_ns": 0, "end_ns": 100, "source": "nvtx",
                              "event_id": 4},
                             {"step": 1, "name": "step_1", "start_ns": 0, "end_ns": 100, "source": "nvtx",
                              "event_id": 5}])
    return store


def test_each_process_with_device_work_is_a_trace(tmp_path):
    store = _store(tmp_path)
    traces = store.rows("SELECT trace_id, path, event_count, issue_count, source_records FROM traces ORDER BY 1")
    assert [t["path"].rsplit("#", 1)[1] for t in traces] == ["pid10", "pid20"]
    first, second = (t["trace_id"] for t in traces)
    # The launcher's call stays with the first trace; each trace has its own process otherwise.
    assert store.rows("SELECT DISTINCT pid FROM events WHERE trace_id = ? ORDER BY pid", [first]) == \
        [{"pid": 10}, {"pid": 30}]
    assert store.rows("SELECT DISTINCT pid FROM events WHERE trace_id = ?", [second]) == [{"pid": 20}]
    # A device both used is a row of both; threads and steps follow their process and event.
    assert store.rows("SELECT trace_id, device FROM devices ORDER BY 1") == \
        [{"trace_id": first, "device": 0}, {"trace_id": second, "device": 0}]
    assert store.rows("SELECT trace_id, pid FROM threads ORDER BY pid") == \
        [{"trace_id": first, "pid": 10}, {"trace_id": second, "pid": 20}, {"trace_id": first, "pid": 30}]
    assert store.rows("SELECT trace_id, event_id FROM steps ORDER BY event_id") == \
        [{"trace_id": first, "event_id": 4}, {"trace_id": second, "event_id": 5}]
    # Launch links (derived after the split) stay within their process's trace.
    assert store.scalar("""SELECT count(*) FROM links l JOIN events s ON s.event_id = l.src_event
                           JOIN events d ON d.event_id = l.dst_event
                           WHERE l.kind = 'launch' AND s.trace_id = l.trace_id AND d.trace_id = l.trace_id""") == 2
    # Read = stored + issues, per trace and in all (8 records: 7 events, 1 not ingested).
    for t in traces:
        assert t["event_count"] + t["issue_count"] == t["source_records"]
    assert sum(t["source_records"] for t in traces) == 8
    assert store.scalar("SELECT count(*) FROM ingest_issues WHERE trace_id = ? AND reason LIKE "
                        "'2 processes drove devices%'", [first]) == 1


def test_only_a_parser_that_asks_is_split_and_one_process_stays_as_it_was(tmp_path):
    store = _store(tmp_path, split_by_process=False)
    assert store.scalar("SELECT count(*) FROM traces") == 1
    assert split.by_process(store, store.trace_ids()[0]) != [store.trace_ids()[0]]  # two processes: it would split
    one = Store.open(None)
    source = tmp_path / "one.sqlite"
    source.write_text("x")
    with Sink(one).trace(source, "test") as w:
        w.split_by_process = True
        w.read(1)
        w.add_events({"event_id": [0], "kind": ["kernel"], "name": ["k"], "start_ns": [0], "dur_ns": [1],
                      "pid": [10], "device": [0], "stream": [7]})
    assert one.rows("SELECT path FROM traces") == [{"path": str(source.resolve())}]
