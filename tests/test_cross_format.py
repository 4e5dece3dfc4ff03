"""One analysis written against the store, run on Kineto, rocpd, rocprofv3 JSON and Nsight
inputs: per-device busy time (union of kernel intervals), kernel count and span, and the
launch -> kernel latency from the `launches` view. Each answer is checked against the
raw input read independently."""
from __future__ import annotations

import gzip
import importlib.util
import json
import sqlite3

import pytest

from conftest import shared_trace
from profkit.ingest import ingest
from profkit.store import Store

BUSY_SQL = """
WITH k AS (SELECT trace_id, device, start_ns, end_ns FROM events WHERE kind = 'kernel'),
o AS (SELECT *, max(end_ns) OVER (PARTITION BY trace_id, device ORDER BY start_ns, end_ns
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end FROM k),
g AS (SELECT *, sum(CASE WHEN prev_end IS NULL OR start_ns > prev_end THEN 1 ELSE 0 END)
                OVER (PARTITION BY trace_id, device ORDER BY start_ns, end_ns) AS grp FROM o),
merged AS (SELECT trace_id, device, min(start_ns) AS s, max(end_ns) AS e FROM g GROUP BY trace_id, device, grp),
busy AS (SELECT trace_id, device, sum(e - s) AS busy_ns FROM merged GROUP BY trace_id, device),
span AS (SELECT trace_id, device, count(*) AS kernels, max(end_ns) - min(start_ns) AS span_ns
         FROM k GROUP BY trace_id, device),
lat AS (SELECT trace_id, device, count(*) AS launches, median(launch_to_start_ns) AS median_launch_ns
        FROM launches WHERE device_kind = 'kernel' GROUP BY trace_id, device)
SELECT t.format, s.device, s.kernels, b.busy_ns, s.span_ns, coalesce(l.launches, 0) AS launches,
       l.median_launch_ns
FROM span s JOIN busy b USING (trace_id, device) JOIN traces t USING (trace_id)
LEFT JOIN lat l USING (trace_id, device)
ORDER BY t.format, s.device
"""


def needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(f"profkit.parsers.{module}") is None,
                              reason=f"profkit.parsers.{module} is not written yet")


def run(path) -> list[dict]:
    store = Store.open(None)
    ingest([str(path)], store)
    rows = store.rows(BUSY_SQL)
    assert rows, "the query found no kernels"
    for r in rows:
        assert 0 < r["busy_ns"] <= r["span_ns"] or r["kernels"] == 1
        assert r["kernels"] > 0
        if r["launches"]:
            assert r["launches"] <= r["kernels"]
    return rows


def test_rocpd():
    path = shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db")
    rows = run(path)
    db = sqlite3.connect(path)
    assert sum(r["kernels"] for r in rows) == db.execute("SELECT count(*) FROM rocpd_kernel_dispatch").fetchone()[0]
    assert sum(r["launches"] for r in rows) == db.execute(
        "SELECT count(*) FROM kernels k JOIN regions r ON r.stack_id = k.stack_id AND r.guid = k.guid").fetchone()[0]
    assert all(r["median_launch_ns"] > 0 for r in rows)


def test_rocprofv3_json():
    path = shared_trace("rocprof/v3_json_mi350x/908_results.json.gz")
    rows = run(path)
    proc = json.load(gzip.open(path))["rocprofiler-sdk-tool"][0]
    assert sum(r["kernels"] for r in rows) == len(proc["buffer_records"]["kernel_dispatch"])
    assert all(r["launches"] == 0 for r in rows)   # this run recorded no HIP API


@needs("kineto")
def test_kineto():
    path = shared_trace("kineto/rocm/mi300x_bert_small.json.gz")
    rows = run(path)
    events = json.load(gzip.open(path))["traceEvents"]
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    assert sum(r["kernels"] for r in rows) == len(kernels)
    assert sum(r["launches"] for r in rows) > 0


@needs("nsys")
def test_nsys():
    path = shared_trace("nsys/t4_vectoradd_streams.sqlite")
    rows = run(path)
    db = sqlite3.connect(path)
    assert sum(r["kernels"] for r in rows) == db.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    assert sum(r["launches"] for r in rows) > 0


def test_same_shape_of_answer_everywhere():
    """The one query answers in the same columns for each format available."""
    inputs = [shared_trace("rocprof/rocpd_r9700_llamacpp_decode/results.db"),
              shared_trace("rocprof/v1_r9700_llamacpp"),
              shared_trace("rocprof/v3_csv_mi300a_rocm6.2")]
    if importlib.util.find_spec("profkit.parsers.kineto"):
        inputs.append(shared_trace("kineto/rocm/mi300x_bert_small.json.gz"))
    if importlib.util.find_spec("profkit.parsers.nsys"):
        inputs.append(shared_trace("nsys/t4_vectoradd_streams.sqlite"))
    answers = [run(p) for p in inputs]
    assert all(set(a[0]) == set(answers[0][0]) for a in answers)
