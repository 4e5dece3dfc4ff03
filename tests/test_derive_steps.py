"""derive.assign_steps: every event's step. Host events by the window they start in;
device events by the step of their launch call, else by their own window. Checked on
hand-built cases and, against a plain Python reading of the same tables, on real traces."""
from __future__ import annotations

import bisect

import pytest

from helpers import store_with_events
from profkit.ingest import Sink
from profkit.store import Store
from tests.conftest import shared_trace


def _store(tmp_path) -> Store:
    """Steps 1 [100, 200), 2 [200, 300) and 3 [250, 280) (inside 2: the later start wins)."""
    source = tmp_path / "input.json"
    source.write_text("{}")
    store = Store.open(None)
    events = {
        "event_id": [0, 1, 2, 3, 4, 5, 6, 7],
        "kind": ["runtime", "kernel", "cpu_op", "cpu_op", "runtime", "kernel", "kernel", "annotation"],
        "name": ["launch A", "A", "op", "late op", "launch B", "B", "C", "ProfilerStep#1"],
        "start_ns": [150, 210, 50, 260, 310, 320, 120, 100],
        "dur_ns": [5, 5, 5, 5, 5, 5, 5, 100],
        "pid": [1, None, 1, 1, 1, None, None, 1],
        "tid": [1, None, 1, 1, 1, None, None, 1],
    }
    with Sink(store).trace(source, "test") as writer:
        writer.add_events(events)
        writer.add_rows("steps", [
            {"step": 1, "name": "s1", "start_ns": 100, "end_ns": 200, "source": "test"},
            {"step": 2, "name": "s2", "start_ns": 200, "end_ns": 300, "source": "test"},
            {"step": 3, "name": "s3", "start_ns": 250, "end_ns": 280, "source": "test"},
        ])
        writer.add_rows("links", [
            {"src_event": 0, "dst_event": 1, "kind": "launch"},  # launched in 1, runs in 2
            {"src_event": 4, "dst_event": 5, "kind": "launch"},  # launched after every step
        ])
    return store


def test_host_by_window_and_device_by_launch(tmp_path):
    store = _store(tmp_path)
    got = dict(store.con.execute("SELECT name, step FROM events").fetchall())
    assert got == {
        "launch A": 1, "A": 1,          # the kernel takes its launch's step, not its window's
        "op": None,                      # before every step
        "late op": 3,                    # windows 2 and 3 hold it: 3 started last
        "launch B": None, "B": None,     # a launch outside steps leaves its kernel's own window: none
        "C": 1,                          # no launch: by its own window
        "ProfilerStep#1": 1,
    }


def test_no_steps_leaves_every_step_empty(tmp_path):
    store = store_with_events({"event_id": [0, 1], "kind": ["cpu_op", "kernel"], "name": ["a", "b"],
                               "start_ns": [0, 10], "dur_ns": [5, 5]}, tmp_path)
    assert store.scalar("SELECT count(step) FROM events") == 0


def _reference(store: Store) -> dict[int, int | None]:
    windows = store.con.execute("SELECT start_ns, end_ns, step FROM steps ORDER BY start_ns, step").fetchall()
    starts = [w[0] for w in windows]

    def window_step(t):
        i = bisect.bisect_right(starts, t) - 1
        return windows[i][2] if i >= 0 and t < windows[i][1] else None

    events = store.con.execute("SELECT event_id, start_ns FROM events").fetchall()
    step = {event_id: window_step(start) for event_id, start in events}
    for src, dst in store.con.execute("SELECT src_event, dst_event FROM links WHERE kind = 'launch'").fetchall():
        if step.get(src) is not None and dst in step:
            step[dst] = step[src]
    return step


@pytest.mark.parametrize("name", ["kineto/cuda/v100_nccl_rank1_of2.json.gz", "kineto/cuda/a100_80gb_rank0_of16.json.gz",
                                  "kineto/rocm/mi250_minitoy_train.json.gz"])
def test_real_traces_match_a_plain_reading(name):
    from profkit.ingest import ingest

    store = Store.open(None)
    ingest([shared_trace(name)], store)
    assert store.scalar("SELECT count(*) FROM steps") >= 2
    got = dict(store.con.execute("SELECT event_id, step FROM events").fetchall())
    assert sum(v is not None for v in got.values()) > 100
    assert got == _reference(store)
