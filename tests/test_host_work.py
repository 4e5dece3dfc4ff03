"""What the launching thread does while the device waits for it: exclusive host time by
innermost event in the host part of host-bound gaps (analyses/host_work.py), on a
hand-built thread and against a real trace's raw JSON."""
from __future__ import annotations

import gzip
import json
from decimal import Decimal

import numpy as np
import pytest

import profkit
from conftest import shared_trace
from profkit.analyses import Context, Step, idle
from profkit.analyses.host_work import NO_EVENT, event_key, host_work
from profkit.ingest import Sink
from profkit.store import Store

PID, TID = 7, 7


def _thread_store(tmp_path, scale: int = 1) -> Store:
    """One host thread and two kernels with a gap between them:

    ProfilerStep#3      [0, 1000)         annotation
      aten::nonzero     [100, 400)        cpu_op
        cudaMemcpyAsync [200, 300)        runtime
      aten::add         [600, 700)        cpu_op
      cudaLaunchKernel  [800, 810)        launches K1
    cudaLaunchKernel    [1500, 1510)      launches K2 (nothing recorded from 1000 to 1500)
    K0 [0, 50), K1 [850, 900), K2 [1600, 1700) on device 0, stream 7. Times x `scale`.
    """
    src = tmp_path / "thread.json"
    src.write_text("{}")
    host = [("annotation", "ProfilerStep#3", 0, 1000, None), ("cpu_op", "aten::nonzero", 100, 400, None),
            ("runtime", "cudaMemcpyAsync", 200, 300, None), ("cpu_op", "aten::add", 600, 700, None),
            ("runtime", "cudaLaunchKernel", 800, 810, 1), ("runtime", "cudaLaunchKernel", 1500, 1510, 2)]
    device = [("K0", 0, 50, None), ("K1", 850, 900, 1), ("K2", 1600, 1700, 2)]
    rows = [dict(kind=k, name=n, start_ns=s * scale, dur_ns=(e - s) * scale, pid=PID, tid=TID, device=None,
                 stream=None, correlation=c) for k, n, s, e, c in host]
    rows += [dict(kind="kernel", name=n, start_ns=s * scale, dur_ns=(e - s) * scale, pid=None, tid=None, device=0,
                  stream=7, correlation=c) for n, s, e, c in device]
    store = Store.open(None)
    with Sink(store).trace(src, "hand") as w:
        w.set_trace(rank=0, vendor="nvidia")
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["event_id"] = list(range(len(rows)))
        w.add_events(cols)
    return store


def test_exclusive_time_by_innermost_event(tmp_path):
    store = _thread_store(tmp_path)
    # The nesting this relies on is the store's own (derive.nest).
    assert store.scalar("SELECT parent_id FROM events WHERE name = 'cudaMemcpyAsync'") == \
        store.scalar("SELECT event_id FROM events WHERE name = 'aten::nonzero'")
    launches = np.array([4, 5])  # the two cudaLaunchKernel calls
    one_step = (np.array([0]), np.array([2000]))
    work = host_work(store, 0, launches, np.array([50, 900]), np.array([850, 1600]), one_step)
    got = {(e["name"], e["kind"]): e["time_ns_per_step"] for e in work["by_event"]}
    # Host parts: [50, 800) and [900, 1500). The step range's own time is what none of
    # the calls inside it covers; after it ends nothing is recorded.
    assert got == {("ProfilerStep#N", "annotation"): 50 + 200 + 100 + 100, ("aten::nonzero", "cpu_op"): 200,
                   (NO_EVENT, None): 500, ("cudaMemcpyAsync", "runtime"): 100, ("aten::add", "cpu_op"): 100}
    assert work["host_ns_per_step"] == 750 + 600 == sum(got.values())
    assert [e["name"] for e in work["by_event"]][:2] == [NO_EVENT, "ProfilerStep#N"]
    assert work["by_event"][0]["share_pct"] == round(100 * 500 / 1350, 1)
    # Only the parts inside the steps count, per step: two steps, the first gap's part in them.
    two_steps = (np.array([0, 1000]), np.array([400, 1200]))
    work = host_work(store, 0, launches, np.array([50, 900]), np.array([850, 1600]), two_steps)
    assert {e["name"]: e["time_ns_per_step"] for e in work["by_event"]} == {
        "ProfilerStep#N": 50 // 2, "aten::nonzero": 200 // 2, "cudaMemcpyAsync": 100 // 2, NO_EVENT: 200 // 2}
    # A launch that came before the gap began leaves no host part; an unknown launch is skipped.
    assert host_work(store, 0, np.array([4, -1]), np.array([805, 900]), np.array([850, 1600]), one_step) is None


def test_host_bound_finding_names_the_thread_work(tmp_path):
    store = _thread_store(tmp_path, scale=100)  # gaps of tens of us: above the findings' floor
    ctx = Context.of(store, 0)
    ctx.steps = [Step(1, 0, 200_000, "annotation")]
    ctx.results["steps"] = {"graph_replay": False}
    finding = next(f for f in idle.run(ctx).findings if f.rule == "idle.host_bound")
    assert finding.evidence["host_work"]["host_ns_per_step"] == 135_000
    assert finding.recommendation.startswith(
        "Before these launches the launching thread is in (no host event recorded) 37%, ProfilerStep#N 33%, "
        "aten::nonzero 15% of the time (innermost host event). ")


def test_names_that_differ_per_call_are_one_key():
    assert event_key("aten::addmm, seq = 47588, op_id = 999618") == "aten::addmm"
    assert event_key("aten::mm, seq = 3, op_id = 12, sizes = [[2, 3], [3, 4]]") == "aten::mm"
    assert event_key("ProfilerStep#128") == "ProfilerStep#N"
    assert event_key("Optimizer.step#SGD.step") == "Optimizer.step#SGD.step"
    assert event_key(None) == "(unnamed)"


def test_leaf_calls_match_the_raw_json():
    """AlexNet training on an A100 allocates and frees device memory every step: the host
    time cudaFree and cudaMalloc take inside the host parts of host-bound gaps, recomputed
    from the raw JSON's records (leaf calls: their own time is their overlap)."""
    path = shared_trace("kineto/cuda/a100_alexnet_train.json.gz")
    store = profkit.load(path)
    ctx = Context.of(store, 0)
    from profkit.analyses import steps as steps_pass
    ctx.results["steps"] = steps_pass.run(ctx).metrics
    finding = next(f for f in idle.run(ctx).findings if f.rule == "idle.host_bound")
    work = finding.evidence["host_work"]
    _, _, gaps = idle.attribute(store, 0, ctx.steps)
    mask = (gaps.cause == idle.HOST) & (gaps.launch_event >= 0) & (gaps.device == 0)
    launch_start = dict(store.con.execute("SELECT event_id, start_ns FROM events WHERE kind = 'runtime'").fetchall())
    steady = [(s.start_ns, s.end_ns) for s in ctx.steady_steps]
    # Each gap's host part, cut to the steady steps (they do not overlap).
    windows = [(max(g0, s0), min(g1, launch_start[le], s1))
               for g0, g1, le in zip(gaps.start[mask].tolist(), gaps.end[mask].tolist(), gaps.launch_event[mask].tolist())
               for s0, s1 in steady]
    windows = [(lo, hi) for lo, hi in windows if hi > lo]
    # Decimal: the microsecond timestamps have more digits than a float holds.
    raw = json.load(gzip.open(path), strict=False, parse_float=Decimal)["traceEvents"]
    for name in ("cudaFree", "cudaMalloc"):
        calls = [(round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000))
                 for e in raw if e.get("ph") == "X" and e.get("name") == name]
        overlap = sum(max(0, min(hi, e) - max(lo, s)) for s, e in calls for lo, hi in windows)
        mine = next(e["time_ns_per_step"] for e in work["by_event"] if e["name"] == name)
        assert overlap > 0 and mine == pytest.approx(overlap / len(steady), abs=2 * len(calls)), name
    assert work["by_event"][0]["name"] == "cudaFree" and work["by_event"][0]["share_pct"] > 50


def test_a_trace_without_host_activity_says_so():
    """The MI210 capture holds runtime calls and device activity only: what the thread did
    between launches is not in it, and the recommendation says how to record it."""
    path = shared_trace("kineto/rocm/mi210_gpu_only.json.gz")
    raw = json.load(gzip.open(path), strict=False)["traceEvents"]
    assert not any(e.get("cat") in ("cpu_op", "python_function", "user_annotation") for e in raw)
    store = profkit.load(path)
    ctx = Context.of(store, 0)
    from profkit.analyses import steps as steps_pass
    ctx.results["steps"] = steps_pass.run(ctx).metrics
    finding = next(f for f in idle.run(ctx).findings if f.rule == "idle.host_bound")
    top = finding.evidence["host_work"]["by_event"][0]
    assert top["name"] == NO_EVENT and top["share_pct"] >= idle.UNRECORDED_HOST_PCT
    assert finding.recommendation.startswith(
        f"The trace records no host event on the launching thread for {top['share_pct']:.0f}% of the time")


def test_call_sites_end_on_a_store_whose_nesting_loops(tmp_path):
    """A store written elsewhere (`profkit analyze run.duckdb`) may hold any parent_id: a
    loop ends the walk instead of hanging the report."""
    from helpers import store_with_events
    from profkit.analyses.host_work import call_sites

    store = store_with_events({
        "event_id": [0, 1, 2], "kind": ["runtime", "python", "python"],
        "name": ["cudaStreamSynchronize", "app.py(3): main", "app.py(9): loop"],
        "start_ns": [10, 0, 5], "dur_ns": [5, 100, 50], "pid": [1, 1, 1], "tid": [1, 1, 1],
        "parent_id": [2, 2, 1]}, tmp_path)
    store.con.execute("UPDATE events SET parent_id = 2 WHERE event_id = 1")  # 1 -> 2 -> 1 -> ...
    assert call_sites(store, 0, np.array([0])) == ["app.py(9): loop"]
