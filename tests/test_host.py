"""The host pass: synchronisation, pageable copies, allocator calls, launch gaps, checked
against the raw inputs read here directly."""
from __future__ import annotations

import gzip
import json
import re
import sqlite3
from collections import Counter
from importlib.util import find_spec
from pathlib import Path

import pytest

import profkit
from profkit.analyses import Context, host as host_pass, steps as steps_pass
from conftest import shared_trace
from helpers import store_with_events

SYNC_NAME = re.compile(r"^(cuda|hip)(Device|Stream|Event)Synchronize$|^(cuda|hip)Memcpy(WithStream)?$")


def run_host(store, trace_index: int = 0):
    trace_id = store.trace_ids()[trace_index]
    ctx = Context.of(store, trace_id)
    ctx.results["steps"] = steps_pass.run(ctx).metrics
    result = host_pass.run(ctx)
    for finding in result.findings:
        assert finding.impact_ns >= 0
        assert store.rows(finding.sql), finding.rule
    return ctx, result


def raw_events(path: Path) -> list[dict]:
    return json.loads(gzip.open(path).read(), strict=False)["traceEvents"]


def test_a_new_runtimes_sync_calls_are_a_table_row_read_by_every_pass():
    """MTIA's runtime names its blocking calls `synchronizeStream` and `synchronize`, without
    a vendor prefix: no pass saw them (no sync finding, no sync edge in the graph) until one
    row of data/runtime_calls.csv named them. Counted against the raw trace."""
    from profkit.analyses import idle
    from profkit.graph_build import build_graph

    path = shared_trace("kineto/mtia/mtia_inference_rank0.json.gz")
    raw = [e for e in raw_events(path) if e.get("ph") == "X" and e.get("cat") == "mtia_runtime"
           and e.get("name") in ("synchronizeStream", "synchronize")]
    store = profkit.load(path)
    ctx, result = run_host(store)
    assert result.metrics["sync"]["calls"] == len(raw) == 226
    assert result.metrics["sync"]["by_name"] == {"synchronizeStream": 113, "synchronize": 113}
    assert idle.blocking_call_names(store, store.trace_ids()[0]) == ["synchronize", "synchronizeStream"]
    graph = build_graph(store)
    assert graph.stats["sync_waits"] == len(raw)


@pytest.mark.parametrize("name", ["kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz",
                                  "kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz"])
def test_sync_counts_single_step_match_raw(name):
    path = shared_trace(name)
    raw = [e for e in raw_events(path) if e.get("cat") == "cuda_runtime" and SYNC_NAME.match(e["name"])]
    items = [e for e in raw_events(path) if e.get("cat") == "cpu_op" and e["name"] == "aten::item"]
    ctx, result = run_host(profkit.load(path))
    sync = result.metrics["sync"]
    assert result.metrics["scope"] == "whole_trace"  # one ProfilerStep: the whole trace
    assert sync["calls"] == len(raw) == 3
    assert sum(sync["by_name"].values()) == len(raw)
    assert sync["by_origin_op"].get("aten::item", 0) <= len(items)
    blocked = sum(round(float(e["dur"]) * 1000) for e in raw)  # these calls do not overlap
    assert abs(sync["blocked_ns_per_step"] - blocked) <= len(raw)
    assert 0 <= sync["gpu_idle_caused_ns_per_step"]


def test_sync_counts_in_steady_steps_match_raw():
    path = shared_trace("kineto/cuda/a100_80gb_rank0_of16.json.gz")
    events = raw_events(path)
    steps = sorted(((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events
                    if re.fullmatch(r"ProfilerStep#\d+", str(e.get("name")))))[1:]
    in_steps = [e for e in events if e.get("cat") == "cuda_runtime" and any(lo <= float(e["ts"]) < hi for lo, hi in steps)]
    raw = [e for e in in_steps if SYNC_NAME.match(e["name"])]
    # cudaMemcpyAsync to pageable host memory returns only when its copy is done: a blocking copy.
    to_pageable = {e["args"]["correlation"] for e in events
                   if e.get("cat") == "gpu_memcpy" and e["name"] == "Memcpy DtoH (Device -> Pageable)"}
    async_blocking = [e for e in in_steps if e["name"] == "cudaMemcpyAsync" and e["args"]["correlation"] in to_pageable]
    ctx, result = run_host(profkit.load(path))
    sync = result.metrics["sync"]
    assert result.metrics["steps_analysed"] == len(steps)
    assert sync["calls"] == len(raw) + len(async_blocking) and len(raw) > 0 and len(async_blocking) == 24
    assert sync["by_name"]["cudaMemcpyAsync"] == len(async_blocking)
    assert sync["calls_per_step"] == pytest.approx(sync["calls"] / len(steps), abs=1e-3)
    # One of them per step waits ~146 ms for the work queued before it: the host's longest block.
    blocked = sum(float(e["dur"]) for e in raw + async_blocking) * 1000 / len(steps)
    assert sync["blocked_ns_per_step"] == pytest.approx(blocked, rel=1e-3) and blocked > 140e6
    # Each blocking copy is followed by a stream synchronize with nothing launched between:
    # the host waits once there, so the points are the sync calls alone.
    assert sync["points"] == len(raw)


def test_allocator_after_first_step_only(tmp_path):
    # Four ProfilerSteps of 100 us; cudaMalloc in step 0 (warm-up) and twice in step 2.
    ann = [("ProfilerStep#%d" % i, i * 100_000, 100_000) for i in range(4)]
    rt = [("cudaMalloc", 10_000, 5_000), ("cudaMalloc", 210_000, 20_000), ("cudaFree", 250_000, 9_000),
          ("cudaLaunchKernel", 260_000, 2_000)]
    rows = [("annotation", *a) for a in ann] + [("runtime", *r) for r in rt]
    store = store_with_events({
        "event_id": list(range(len(rows))), "kind": [r[0] for r in rows], "name": [r[1] for r in rows],
        "start_ns": [r[2] for r in rows], "dur_ns": [r[3] for r in rows],
        "pid": [1] * len(rows), "tid": [1] * len(rows),
    }, tmp_path)
    ctx, result = run_host(store)
    alloc = result.metrics["allocator"]
    assert alloc["calls_in_trace"] == 3
    assert alloc["calls_after_first_step"] == 2
    assert alloc["by_name"] == {"cudaMalloc": 1, "cudaFree": 1}
    assert alloc["host_ns_per_step"] == round((20_000 + 9_000) / 3)
    finding = next(f for f in result.findings if f.rule == "host.allocator_in_steady_state")
    assert finding.scope["steps"] == [2] and finding.impact_basis == "bound"


def _needs_nsys():
    if find_spec("profkit.parsers.nsys") is None:
        pytest.skip("parsers/nsys.py not written yet")


def test_pageable_copies_on_nsys_trace():
    _needs_nsys()
    path = shared_trace("nsys/h100_2gpu_fastvideo_1s_window.sqlite")
    con = sqlite3.connect(path)
    pageable = con.execute("SELECT id FROM ENUM_CUDA_MEM_KIND WHERE name LIKE '%PAGEABLE'").fetchone()[0]
    raw = dict(con.execute(
        "SELECT (globalPid >> 24) & 16777215, count(*) FROM CUPTI_ACTIVITY_KIND_MEMCPY "
        "WHERE srcKind = ? OR dstKind = ? GROUP BY 1", [pageable, pageable]).fetchall())
    assert raw == {111: 2, 112: 2}  # two ranks, one process each: a trace each
    store = profkit.load(path)
    for rank, pid in enumerate(sorted(raw)):
        ctx, result = run_host(store, rank)
        copies = result.metrics["pageable_copies"]
        assert copies["in_trace"] == raw[pid]
        assert 0 <= copies["copies"] <= raw[pid]
        assert sum(copies["by_direction"].values()) == copies["copies"]


def test_pageable_finding_on_nsys_hpc_trace():
    _needs_nsys()
    path = shared_trace("nsys/a100x4_cloverleaf_nsys2024.5.sqlite")
    con = sqlite3.connect(path)
    raw = con.execute("""SELECT count(*) FROM CUPTI_ACTIVITY_KIND_MEMCPY WHERE srcKind = 0 OR dstKind = 0""").fetchone()[0]
    ctx, result = run_host(profkit.load(path))
    assert result.metrics["pageable_copies"]["in_trace"] == raw
    finding = next(f for f in result.findings if f.rule == "host.pageable_memcpy")
    assert finding.count == result.metrics["pageable_copies"]["copies"] > 0


def test_synthetic_sync_found_with_scope_and_size(synthetic_dir):
    directory = synthetic_dir
    manifest = json.loads((directory / "manifest.json").read_text())
    injected = next(b for b in manifest["bottlenecks"] if b["bottleneck"] == "sync")
    assert injected["id"] == "host.sync_in_steady_state"
    for rank in range(manifest["ranks"]):
        path = directory / f"synthetic_llm_decode_rank{rank}.json.gz"
        events = raw_events(path)
        syncs = [e for e in events if e.get("cat") == "cuda_runtime" and e["name"] == "cudaStreamSynchronize"]
        ctx, result = run_host(profkit.load(path))
        finding = next(f for f in result.findings if f.rule == "host.sync_in_steady_state")
        assert finding.scope["stream"] == manifest["streams"]["compute"]
        assert finding.scope["rank"] == rank
        assert finding.scope["steps"] == [s.step for s in ctx.steady_steps]
        assert finding.evidence["by_origin_op"] == {"aten::item": len(ctx.steady_steps)}
        assert finding.count == len(ctx.steady_steps) == len(syncs) - 1
        assert finding.impact_ns == pytest.approx(injected["size_ns_per_step"], rel=0.2)
        # The host-side wait is reported as the bound.
        assert finding.evidence["blocked_ns_per_step"] == pytest.approx(injected["sync_host_wait_ns_per_step"], rel=0.2)


def test_launch_gap_distribution_invariants():
    path = shared_trace("kineto/cuda/v100_nccl_rank1_of2.json.gz")
    ctx, result = run_host(profkit.load(path))
    launches = result.metrics["launches"]
    assert launches["launch_calls"] > 0
    gaps, calls = launches["gap_between_launches_ns"], launches["call_ns"]
    assert 0 <= gaps["p50"] <= gaps["p95"] <= gaps["max"]
    assert 0 <= calls["p50"] <= calls["p95"] <= calls["max"]
    # One gap fewer than calls per (thread, step).
    assert launches["launch_calls"] - gaps["n"] <= 4 * result.metrics["steps_analysed"]


def test_sync_title_counts_waits_and_says_the_calls_when_they_differ():
    """The headline counts the host's waits per step; where calls back to back wait once,
    the calls per step are named too, and one wait reads as one."""
    # Each .item() is a blocking copy then a stream synchronize: 20 calls, 10 waits per step.
    ctx, result = run_host(profkit.load(shared_trace("kineto/cuda/regression_pair/control_a100_rank3_of8.json.gz")))
    sync = result.metrics["sync"]
    finding = next(f for f in result.findings if f.rule == "host.sync_in_steady_state")
    waits, calls = sync["points_per_step"], sync["calls_per_step"]
    assert waits < calls
    assert finding.title.startswith(f"{waits:.0f} host synchronisations per step ({calls:.0f} calls: ")
    store = profkit.load(shared_trace("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz"))
    raw = [e for e in raw_events(shared_trace("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz"))
           if e.get("cat") == "cuda_runtime" and SYNC_NAME.match(e["name"])]
    ctx, result = run_host(store)
    finding = next(f for f in result.findings if f.rule == "host.sync_in_steady_state")
    assert [e["name"] for e in raw] == ["hipMemcpyWithStream"]
    assert finding.title.startswith("1 host synchronisation per step (hipMemcpyWithStream x1) leaves the GPU idle ")


def test_sync_call_sites_are_the_users_python_lines():
    """With Python stacks recorded, each sync is traced to the innermost frame outside
    torch: on the H100 Qwen capture the .item() comes from transformers' causal-mask check,
    the two device synchronizes from the profiling harness. Recomputed from the raw JSON by
    time containment on the calling thread, not from the store's nesting."""
    path = shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    raw = raw_events(path)
    frames = [e for e in raw if e.get("cat") == "python_function" and e.get("ph") == "X"]
    expected = Counter()
    for call in (e for e in raw if e.get("cat") == "cuda_runtime" and SYNC_NAME.match(e["name"])):
        t0, t1 = float(call["ts"]), float(call["ts"]) + float(call["dur"])
        around = [f for f in frames if f["tid"] == call["tid"] and float(f["ts"]) <= t0
                  and float(f["ts"]) + float(f["dur"]) >= t1 and re.search(r"\.py\(\d+\)", f["name"])
                  and not re.search(r"(^|/)torch/|^<", f["name"])]
        expected[max(around, key=lambda f: float(f["ts"]))["name"]] += 1
    assert expected == {"moca/library/profiling/profile.py(34): run_torch_profiler": 2,
                        "transformers/modeling_attn_mask_utils.py(243): _ignore_causal_mask_sdpa": 1}
    ctx, result = run_host(profkit.load(path))
    finding = next(f for f in result.findings if f.rule == "host.sync_in_steady_state")
    assert finding.evidence["by_call_site"] == dict(expected)
    assert finding.recommendation.startswith(
        "Called from moca/library/profiling/profile.py(34): run_torch_profiler (x2); "
        "transformers/modeling_attn_mask_utils.py(243): _ignore_causal_mask_sdpa (x1). Remove host synchronisation")
    # Without Python frames (Nsight), nothing is named and the advice stands alone.
    store = profkit.load(shared_trace("nsys/rtx2070s_pytorch_dlprof.sqlite"))
    ctx, result = run_host(store)
    finding = next(f for f in result.findings if f.rule == "host.sync_in_steady_state")
    assert finding.evidence["by_call_site"] == {} and finding.recommendation.startswith("Remove host")


def test_advice_is_in_the_terms_of_the_program():
    """A native program (CloverLeaf, C++ and CUDA) is told what to change in runtime calls;
    a PyTorch program, here seen only through its operators' NVTX ranges in an Nsight
    report, in PyTorch's terms (Context.framework)."""
    native_ctx, native = run_host(profkit.load(shared_trace("nsys/a100x4_cloverleaf_nsys2024.5.sqlite")))
    torch_ctx, torch_run = run_host(profkit.load(shared_trace("nsys/rtx2070s_pytorch_dlprof.sqlite")))
    assert native_ctx.framework is None and torch_ctx.framework == "pytorch"
    by_rule = {f.rule: f.recommendation for f in native.findings}
    assert "cudaStreamWaitEvent" in by_rule["host.sync_in_steady_state"]
    assert "cudaHostRegister" in by_rule["host.pageable_memcpy"]
    for text in by_rule.values():
        assert not re.search(r"torch|\.item\(\)|DataLoader|pin_memory|non_blocking", text), text
    sync = next(f for f in torch_run.findings if f.rule == "host.sync_in_steady_state")
    assert ".item()/.cpu()/.tolist()" in sync.recommendation and "torch.cuda.synchronize()" in sync.recommendation
    # A device-only capture of a PyTorch run (rocprofv3 JSON: no host events) shows it by
    # ATen's kernels; a llama.cpp decode under rocprof by nothing.
    for relative, framework in (("rocprof/v3_json_mi350x", "pytorch"), ("rocprof/v1_r9700_llamacpp", None)):
        store = profkit.load(shared_trace(relative))
        assert Context.of(store, store.trace_ids()[0]).framework == framework, relative


def test_names_counted_as_a_counter_fed_one_by_one():
    import numpy as np
    import pyarrow as pa
    from collections import Counter

    from profkit.analyses.host import _names_counted
    from profkit.columns import dictionary_codes

    rng = np.random.default_rng(4)
    names = [None if i % 7 == 0 else f"call{i}" for i in rng.integers(0, 30, 5_000)]
    codes, values = dictionary_codes(pa.array(names))
    calls = {"name": values[codes], "name_code": codes, "name_values": values}
    for sel in (np.arange(len(names)), np.flatnonzero(rng.random(len(names)) < 0.1), np.empty(0, np.int64)):
        expected = Counter(names[i] for i in sel)
        got = _names_counted(calls, sel)
        assert list(got.items()) == list(expected.items())
        assert got.most_common(8) == expected.most_common(8)


class _Activities:
    """The device activities the sync analysis reads: launch start, start, end, lane."""
    def __init__(self, launch_start, start, end, device=None, stream=None):
        self.launch_start, self.start, self.end = launch_start, start, end
        self.device, self.stream = device, stream

    def __len__(self):
        return len(self.start)

    @property
    def launch_order(self):
        return self.launch_start.argsort(kind="stable")


def test_idle_after_syncs_all_at_once_is_the_window_of_each():
    """The windows of all syncs at once equal, per sync, a direct reading of the definition
    (the end of the work launched before it; the first start of work launched after it)."""
    import numpy as np

    rng = np.random.default_rng(7)
    for n in (0, 1, 5, 200):
        launch = rng.integers(0, 1000, n)
        start = launch + rng.integers(0, 50, n)
        dev = _Activities(launch, start, start + rng.integers(0, 80, n))
        calls_start = rng.integers(0, 1100, 60)
        calls_end = calls_start + rng.integers(0, 40, 60)
        lo, hi, measurable = host_pass._idle_after_syncs(calls_start, calls_end, dev)
        for k, (s, e) in enumerate(zip(calls_start.tolist(), calls_end.tolist())):
            before, after = launch <= s, launch >= e
            waited = int(dev.end[before].max()) if before.any() else s
            if not after.any():
                expected = (s, s, False)
            elif waited <= s:
                expected = (s, s, True)  # nothing pending: the GPU was idle already
            else:
                expected = (waited, max(waited, int(start[after].min())), True)
            assert (int(lo[k]), int(hi[k]), bool(measurable[k])) == expected


def test_waited_lane_is_the_lane_of_the_work_each_sync_waited_for():
    """The lane most syncs waited on, all syncs at once, equals a direct reading: per sync,
    of the activities launched at or before it the one ending last (the first on a tie)."""
    import numpy as np
    from collections import Counter

    rng = np.random.default_rng(11)
    for n in (1, 7, 300):
        launch = rng.integers(0, 500, n)
        end = launch + rng.integers(0, 20, n)  # many ties
        dev = _Activities(launch, launch, end, rng.integers(0, 2, n), rng.integers(0, 3, n))
        calls = {"start": rng.integers(0, 600, 80)}
        sel = np.arange(80)
        lanes = Counter()
        for s in calls["start"].tolist():
            before = np.flatnonzero(launch <= s)
            if before.size:
                last = before[np.argmax(end[before])]
                lanes[(int(dev.device[last]), int(dev.stream[last]))] += 1
        device, stream = lanes.most_common(1)[0][0]
        assert host_pass._waited_lane(dev, calls, sel) == (device, stream)
