"""Kernels pass: numbers checked against the raw inputs read directly in the test."""
from __future__ import annotations

import gzip
import json
import sqlite3
from collections import defaultdict

import numpy as np
import pytest

from conftest import SAMPLE_TRACES, shared_trace
from profkit.analyses import Context, Step, idle, kernels
from profkit.ingest import ingest
from profkit.store import Store

H100 = "kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz"
SYNTHETIC = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"


def make_context(store: Store, trace_id: int) -> Context:
    ctx = Context.of(store, trace_id)
    ctx.steps = [Step(r["step"], r["start_ns"], r["end_ns"], r["source"])
                 for r in store.rows("SELECT * FROM steps WHERE trace_id = ? ORDER BY start_ns", [trace_id])]
    ctx.results["steps"] = {"graph_replay": False}
    return ctx


def run_passes(store, trace_id):
    ctx = make_context(store, trace_id)
    ctx.results["idle"] = idle.run(ctx).metrics
    return ctx, kernels.run(ctx)


_cache: dict[str, tuple] = {}


def analysed(rel):
    if rel not in _cache:
        path = shared_trace(rel)
        store = Store.open(None)
        ingest([path], store)
        _cache[rel] = (path, store, run_passes(store, store.trace_ids()[0]))
    return _cache[rel]


def raw_events(path):
    return json.load(gzip.open(path), strict=False)["traceEvents"]


def ns(x) -> int:
    return round(float(x) * 1000)


def test_top_kernels_match_raw_json():
    path, store, (_, result) = analysed(H100)
    durations = defaultdict(list)
    for e in raw_events(path):
        if e.get("cat") == "kernel" and e.get("ph") == "X":
            durations[e["name"]].append(ns(e["dur"]))
    top = result.metrics["top_kernels"]
    expected = sorted(durations, key=lambda n: (-sum(durations[n]), n))[:kernels.TOP_N]
    assert [k["name"] for k in top] == expected
    for k in top:
        d = np.array(durations[k["name"]])
        assert k["count"] == d.size and k["total_ns"] == d.sum() and k["max_ns"] == d.max()
        assert k["p50_ns"] == round(np.percentile(d, 50)) and k["p95_ns"] == round(np.percentile(d, 95))


def test_category_totals_add_up():
    path, store, (_, result) = analysed(H100)
    raw = [e for e in raw_events(path) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("ph") == "X"]
    m = result.metrics
    (dev,) = m["devices"]
    cats = dev["by_category"]
    assert sum(c["sum_ns"] for c in cats.values()) == dev["sum_ns"] == sum(ns(e["dur"]) for e in raw)
    assert sum(c["count"] for c in cats.values()) == len(raw)
    for c in cats.values():
        assert 0 < c["union_ns"] <= c["sum_ns"]
    assert dev["busy_ns"] <= sum(c["union_ns"] for c in cats.values())
    # Busy from the raw JSON: union of [ts, ts + dur).
    spans = sorted((ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])) for e in raw)
    busy, (s0, e0) = 0, spans[0]
    for s, e in spans[1:]:
        if s > e0:
            busy, s0, e0 = busy + e0 - s0, s, e
        else:
            e0 = max(e0, e)
    assert dev["busy_ns"] == busy + e0 - s0 == m["busy_ns"]
    # Memory is every copy and fill.
    assert cats["memory"]["count"] >= sum(e["cat"] != "kernel" for e in raw)


def test_op_attribution_mm_launches_gemm_kernels():
    """aten::mm's kernels by the parent chain equal those found through External id in the raw JSON."""
    path, store, (_, result) = analysed(H100)
    raw = raw_events(path)
    mm_ext = {e["args"]["External id"] for e in raw if e.get("cat") == "cpu_op" and e["name"] == "aten::mm"}
    corr = {e["args"]["correlation"] for e in raw if e.get("cat") in ("cuda_runtime", "cuda_driver")
            and e.get("args", {}).get("External id") in mm_ext}
    mm_kernels = [e for e in raw if e.get("cat") == "kernel" and e["args"].get("correlation") in corr]
    ops = {o["op_name"]: o for o in result.metrics["by_op"]["ops"]}
    mm = ops["aten::mm"]
    assert mm["kernels"] == len(mm_kernels) > 0
    assert mm["kernel_ns"] == sum(ns(e["dur"]) for e in mm_kernels)
    cats = {r[0] for r in store.con.execute("""
        SELECT DISTINCT category FROM events WHERE kind = 'kernel' AND list_contains(?, name)
    """, [mm["top_kernels"]]).fetchall()}
    assert cats == {"gemm"}
    assert mm["shapes"] and mm["shapes"][0]["input_dims"].startswith("[[")
    by_op = result.metrics["by_op"]
    assert by_op["attributed_ns"] + by_op["unattributed_ns"] == result.metrics["kernel_sum_ns"]
    assert by_op["attributed_ns"] >= sum(o["kernel_ns"] for o in by_op["ops"])


def test_launch_latency_percentiles_recomputed_from_raw_json():
    path, store, (_, result) = analysed(H100)
    raw = raw_events(path)
    runtime = {e["args"]["correlation"]: e for e in raw if e.get("cat") in ("cuda_runtime", "cuda_driver")
               and "correlation" in e.get("args", {})}
    device = defaultdict(list)
    for e in raw:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("ph") == "X":
            device[e["args"]["correlation"]].append(e)
    from_start, from_end = [], []
    for c, acts in device.items():
        r = runtime.get(c)
        if r is None or len(acts) != 1 or "GraphLaunch" in r["name"]:
            continue
        start = ns(acts[0]["ts"])
        from_start.append(start - ns(r["ts"]))
        from_end.append(start - (ns(r["ts"]) + ns(r["dur"])))
    (lat,) = result.metrics["launch_latency"]
    for key, values in (("start_minus_launch_start", from_start), ("start_minus_launch_end", from_end)):
        v = np.array(values)
        assert lat[key]["count"] == v.size
        assert lat[key]["p50_ns"] == round(np.percentile(v, 50))
        assert lat[key]["p95_ns"] == round(np.percentile(v, 95))
        assert lat[key]["max_ns"] == v.max()


def test_tiny_kernel_count_matches_raw_json():
    path, store, (_, result) = analysed(H100)
    tiny = [e for e in raw_events(path) if e.get("cat") == "kernel" and ns(e["dur"]) < kernels.TINY_KERNEL_NS]
    (t,) = result.metrics["tiny_kernels"]
    assert t["count"] == len(tiny) and t["total_ns"] == sum(ns(e["dur"]) for e in tiny)


def test_nsight_kernel_totals_match_sqlite():
    rel = "nsys/rtx2070s_pytorch_dlprof.sqlite"
    path, store, (_, result) = analysed(rel)
    with sqlite3.connect(path) as db:
        count, total = db.execute("SELECT count(*), sum(end - start) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()
    assert result.metrics["kernel_sum_ns"] == total
    assert sum(k["count"] for k in result.metrics["top_kernels"]) <= count


def test_copy_bound_checked_against_sqlite():
    """The T4 vector add spends its time copying vectors over PCIe: its copies, bytes and
    durations per direction come straight from CUPTI's memcpy table (the whole trace is one
    step), and compute overlaps almost none of them."""
    rel = "nsys/t4_vectoradd_streams.sqlite"
    path, store, (_, result) = analysed(rel)
    with sqlite3.connect(path) as db:
        raw = {kind: (n, b, t) for kind, n, b, t in db.execute(
            "SELECT copyKind, count(*), sum(bytes), sum(end - start) FROM CUPTI_ACTIVITY_KIND_MEMCPY GROUP BY 1")}
    (copies,) = result.metrics["copies"]
    htod, dtoh = copies["by_direction"]["HtoD"], copies["by_direction"]["DtoH"]
    assert (htod["bytes_per_step"], htod["ns_per_step"]) == raw[1][1:]   # CUPTI copyKind 1: HtoD
    assert (dtoh["bytes_per_step"], dtoh["ns_per_step"]) == raw[2][1:]   # 2: DtoH
    assert copies["copies_per_step"] == raw[1][0] + raw[2][0]
    assert htod["gb_per_s"] == round(raw[1][1] / raw[1][2], 3)
    (f,) = [f for f in result.findings if f.rule == "kernels.copy_bound"]
    assert f.impact_ns == copies["exposed_ns_per_step"] <= copies["copy_ns_per_step"] <= raw[1][2] + raw[2][2]
    assert f.impact_basis == "bound" and "most copy time HtoD" in f.title and store.rows(f.sql)


def test_copy_bound_has_the_kernels_noise_floor():
    """The T4's copies scaled down to a 40 us step: 25% of it is still 10 us or more only
    above the floor (kernels.FINDING_MIN_NS)."""
    from profkit.analyses.copy_time import copy_bound_findings

    _, store, (ctx, result) = analysed("nsys/t4_vectoradd_streams.sqlite")
    (copies,) = result.metrics["copies"]
    step_ref = 40_000
    keep = lambda ns: kernels._keep(ns, step_ref)  # noqa: E731  (what the pass passes)
    for exposed, found in ((9_999, 0), (kernels.FINDING_MIN_NS, 1)):
        scaled = dict(copies, exposed_ns_per_step=exposed)
        assert len(copy_bound_findings(ctx, [scaled], [], step_ref, lambda ns: 0.0, keep)) == found


def test_copy_bound_needs_exposed_copies():
    """On the H100 Qwen trace copies are a sliver of the step: no finding."""
    _, _, (_, result) = analysed(H100)
    assert result.metrics["copies"]
    assert not [f for f in result.findings if f.rule == "kernels.copy_bound"]


def test_rocpd_kernel_totals_match_sqlite():
    rel = "rocprof/rocpd_r9700_llamacpp_decode/results.db"
    path, store, (_, result) = analysed(rel)
    with sqlite3.connect(path) as db:
        count, total = db.execute("SELECT count(*), sum(end - start) FROM kernels").fetchone()
        top = db.execute("SELECT name, count(*), sum(end - start) AS t FROM kernels GROUP BY name "
                         "ORDER BY t DESC LIMIT 3").fetchall()
    assert result.metrics["kernel_sum_ns"] == total
    assert [(k["name"], k["count"], k["total_ns"]) for k in result.metrics["top_kernels"][:3]] == top
    hot = [f for f in result.findings if f.rule == "kernels.hotspot"]
    assert hot and hot[0].evidence["total_ns"] == top[0][2]


@pytest.mark.parametrize("rel", [H100, "kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz",
                                 "kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz",
                                 "nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite",
                                 "rocprof/rocpd_r9700_llamacpp_decode/results.db"])
def test_findings_are_well_formed_and_their_sql_runs(rel):
    _, store, (ctx, result) = analysed(rel)
    json.dumps(result.metrics)
    for f in result.findings:
        assert f.rule in {"kernels.tiny_kernel_storm", "kernels.launch_latency", "kernels.hotspot",
                          "kernels.small_grid", "kernels.copy_bound"}
        if f.rule == "kernels.hotspot":  # information: ranks with impact 0, the 2x what-if as evidence
            assert f.impact_ns == 0 and f.evidence["saving_if_2x_faster_ns_per_step"] >= kernels.FINDING_MIN_NS
        else:
            assert f.impact_ns >= kernels.FINDING_MIN_NS
        assert f.scope["trace_id"] == ctx.trace_id
        assert store.rows(f.sql), f.rule


def test_small_grid_blocks_checked_against_devices():
    _, store, (_, result) = analysed(H100)
    sm = store.scalar("SELECT sm_count FROM devices")
    for g in result.metrics["small_grids"]:
        assert g["max_blocks"] < g["sm_count"] == sm
        assert 0 < g["idle_sm_ns"] < g["total_ns"]


def test_small_grid_on_an_amd_device_counts_cus():
    """A ROCm Kineto trace's properties now join its kernels' device (test_kineto): its small
    grids are checked against the MI300X's 304 CUs, and the title says CUs, not SMs."""
    store = Store.open(None)
    ingest([shared_trace("kineto/rocm/mi300x_bert_small.json.gz")], store)
    ctx, result = run_passes(store, 0)
    (f,) = [f for f in result.findings if f.rule == "kernels.small_grid"]
    assert f.title.endswith(f"runs at most {f.evidence['max_blocks']} blocks on 304 CUs")
    assert f.evidence["max_blocks"] < f.evidence["sm_count"] == 304


def test_synthetic_tiny_kernels_and_launches():
    if not (SYNTHETIC / "manifest.json").exists():
        pytest.skip("synthetic sample not generated yet")
    store = Store.open(None)
    ingest([SYNTHETIC], store)
    for trace_id in store.trace_ids():
        ctx, result = run_passes(store, trace_id)
        m = result.metrics
        n_kernels = store.scalar("SELECT count(*) FROM events WHERE trace_id = ? AND kind = 'kernel'", [trace_id])
        assert sum(k["count"] for k in m["top_kernels"]) <= n_kernels
        (lat,) = m["launch_latency"]
        # Every launch in the synthetic trace is a one-to-one launch.
        linked = store.scalar("SELECT count(*) FROM launches WHERE trace_id = ?", [trace_id])
        assert lat["start_minus_launch_start"]["count"] == linked
        # The injected launch latency is what a launch to an idle stream costs (p50).
        manifest = json.loads((SYNTHETIC / "manifest.json").read_text())
        assert lat["idle_stream_start_minus_launch_start"]["p50_ns"] == pytest.approx(
            manifest["model"]["launch_latency_ns"], rel=0.2)
        for f in result.findings:
            assert store.rows(f.sql)


def test_copy_bound_tops_the_fastvideo_capture():
    """In the FastVideo window both GPUs spend ~97% of each step on copies (HtoD from the
    host at ~28 GB/s): that, not any kernel, is what to fix first."""
    from profkit.analyses import analyze

    store = Store.open(None)
    ingest([shared_trace("nsys/h100_2gpu_fastvideo_1s_window.sqlite")], store)
    top = analyze(store)["findings"][:2]
    assert [f["rule"] for f in top] == ["kernels.copy_bound"] * 2
    assert sorted(f["scope"]["device"] for f in top) == [0, 1]
    assert all(f["share_pct"] > 90 for f in top)


def test_storm_names_the_ops_that_launch_the_tiny_kernels():
    """H100 BERT: which framework ops launch the tiny kernels, recomputed from the raw JSON
    (kernel -> its launch call by correlation -> the innermost cpu_op around that call on
    its thread), shares of the device's tiny kernels."""
    path = shared_trace("kineto/cuda/h100_bert_small.json.gz")
    raw = [e for e in raw_events(path) if e.get("ph") == "X"]
    launch = {e["args"]["correlation"]: e for e in raw
              if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    ops = [e for e in raw if e.get("cat") == "cpu_op"]
    tiny = [e for e in raw if e.get("cat") == "kernel" and round(float(e["dur"]) * 1000) < kernels.TINY_KERNEL_NS]
    by_op = defaultdict(int)
    for k in tiny:
        r = launch.get(k["args"].get("correlation"))
        if r is None:
            continue
        t0, t1 = float(r["ts"]), float(r["ts"]) + float(r["dur"])
        around = [o for o in ops if o["tid"] == r["tid"] and float(o["ts"]) <= t0 and float(o["ts"]) + float(o["dur"]) >= t1]
        if around:
            by_op[max(around, key=lambda o: (float(o["ts"]), -float(o["dur"])))["name"]] += 1
    expected = sorted(by_op.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    store = Store.open(None)
    ingest([path], store)
    ctx = Context.of(store, 0)
    from profkit.analyses import steps as steps_pass
    ctx.results["steps"] = steps_pass.run(ctx).metrics
    finding = next(f for f in kernels.run(ctx).findings if f.rule == "kernels.tiny_kernel_storm")
    got = finding.evidence["by_launching_op"]
    assert [(o["op"], o["kernels"]) for o in got[:3]] == expected
    assert all(o["share_pct"] == pytest.approx(100 * o["kernels"] / len(tiny), abs=0.01) for o in got)
    assert sum(o["share_pct"] for o in got) <= 100
    assert finding.recommendation.startswith(
        "Most are launched by " + ", ".join(f"{op} ({100 * n / len(tiny):.0f}%)" for op, n in expected))
