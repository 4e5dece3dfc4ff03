"""The steps pass on real traces: numbers checked against the raw inputs read here directly."""
from __future__ import annotations

import gzip
import json
import re
import sqlite3
from importlib.util import find_spec
from pathlib import Path

import pytest

import profkit
from profkit.analyses import Context, steps as steps_pass
from conftest import SAMPLE_TRACES, shared_trace


def run_steps(path: Path, trace_index: int = 0):
    store = profkit.load(path)
    trace_id = store.trace_ids()[trace_index]
    ctx = Context.of(store, trace_id)
    result = steps_pass.run(ctx)
    ctx.results["steps"] = result.metrics
    return store, ctx, result


def raw_events(path: Path) -> list[dict]:
    return json.loads(gzip.open(path).read(), strict=False)["traceEvents"]


def check_invariants(store, ctx, result) -> None:
    m = result.metrics
    assert m["count"] == len(ctx.steps) == len(m["steps"])
    for f, s in zip(m["steps"], ctx.steps):
        assert f["dur_ns"] == s.end_ns - s.start_ns > 0
        assert 0 <= f["device_busy_ns"] <= f["device_dur_ns"]
        assert f["gap_before_ns"] is None or f["gap_before_ns"] >= 0
    starts = [s.start_ns for s in ctx.steps]
    assert starts == sorted(starts)
    assert all(a.end_ns <= b.start_ns for a, b in zip(ctx.steps, ctx.steps[1:]))
    for finding in result.findings:
        assert finding.impact_ns >= 0
        assert store.rows(finding.sql), finding.rule


def test_profiler_steps_v100_match_raw_annotations():
    path = shared_trace("kineto/cuda/v100_nccl_rank1_of2.json.gz")
    raw = sorted((e for e in raw_events(path) if e.get("ph") == "X"
                  and re.fullmatch(r"ProfilerStep#\d+", str(e.get("name")))), key=lambda e: float(e["ts"]))
    store, ctx, result = run_steps(path)
    m = result.metrics
    assert m["source"] == "profiler_step"
    assert m["count"] == len(raw) == 5
    assert [s.step for s in ctx.steps] == [int(e["name"].split("#")[1]) for e in raw]
    assert [s.dur_ns for s in ctx.steps] == [round(float(e["dur"]) * 1000) for e in raw]
    assert m["steady_count"] == len(raw) - 1
    durations = sorted(round(float(e["dur"]) * 1000) for e in raw[1:])
    assert m["duration"]["max_ns"] == durations[-1]
    assert m["graph_replay"] is False
    check_invariants(store, ctx, result)


def test_alexnet_has_no_profiler_step_and_one_annotated_step():
    path = shared_trace("kineto/cuda/a100_alexnet_train.json.gz")
    events = raw_events(path)
    assert not any("ProfilerStep" in str(e.get("name")) for e in events)
    store, ctx, result = run_steps(path)
    # Two forward passes under one enclosing `[param|cuda]` range: that range is the step.
    enclosing = [e for e in events if e.get("name") == "[param|cuda]"]
    assert result.metrics["source"] == "annotation" and len(ctx.steps) == len(enclosing) == 1
    assert ctx.steps[0].dur_ns == round(float(enclosing[0]["dur"]) * 1000)
    assert result.metrics["device_events_outside_steps"] == 0
    check_invariants(store, ctx, result)


def test_b200_prefill_annotation():
    path = shared_trace("kineto/cuda/b200_eager_rank0_of8.json.gz")
    events = raw_events(path)
    assert not any("ProfilerStep" in str(e.get("name")) for e in events)
    execute = [e for e in events if e.get("cat") == "user_annotation" and str(e["name"]).startswith("execute_")]
    store, ctx, result = run_steps(path)
    assert result.metrics["source"] == "annotation"
    assert [s.dur_ns for s in ctx.steps] == [round(float(e["dur"]) * 1000) for e in execute]
    assert ctx.steps[0].phase == "prefill"  # execute_context_1(...)_generation_0(0)
    check_invariants(store, ctx, result)


def _graph_launch_facts(path: Path):
    events = raw_events(path)
    launches = [e for e in events if e.get("cat") == "cuda_runtime" and e["name"] == "hipGraphLaunch"]
    correlations = {e["args"]["correlation"] for e in launches}
    graph_kernels = [e for e in events if e.get("cat") == "kernel" and e["args"].get("correlation") in correlations]
    return events, launches, graph_kernels


@pytest.mark.parametrize("name, phase_annotation", [
    ("kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz", None),
    ("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz", "step[DECODE bs=32]"),
])
def test_graph_replay_steps(name, phase_annotation):
    path = shared_trace(name)
    events, launches, graph_kernels = _graph_launch_facts(path)
    assert not any("ProfilerStep" in str(e.get("name")) for e in events)
    store, ctx, result = run_steps(path)
    m = result.metrics
    assert m["source"] == "graph_replay"
    assert m["count"] == len(launches)
    assert m["graph_replay"] is True
    assert sum(f["graph_kernels"] for f in m["steps"]) == len(graph_kernels)
    assert all(f["graph_replay"] for f in m["steps"])
    assert all(s.phase == "decode" for s in ctx.steps)
    if phase_annotation:
        assert any(e.get("name") == phase_annotation for e in events)
    # The step starts at its graph launch.
    assert ctx.steps[0].start_ns == store.scalar(
        "SELECT start_ns FROM events WHERE kind = 'runtime' AND name = 'hipGraphLaunch' ORDER BY start_ns LIMIT 1")
    check_invariants(store, ctx, result)


def test_rocpd_llamacpp_decode_tokens_from_kernel_pattern():
    if find_spec("profkit.parsers.rocpd") is None:
        pytest.skip("parsers/rocpd.py not written yet")
    path = shared_trace("rocprof/rocpd_r9700_llamacpp_decode/results.db")
    con = sqlite3.connect(path)
    # The output projection (q6_K matrix-vector product) runs once per generated token.
    tokens = con.execute("SELECT count(*) FROM kernels WHERE name LIKE 'void mul_mat_vec_q<(ggml_type)14,%'").fetchone()[0]
    attention = con.execute("SELECT count(*) FROM kernels WHERE name LIKE 'void flash_attn_ext_vec<%'").fetchone()[0]
    store, ctx, result = run_steps(path)
    m = result.metrics
    assert m["source"] == "kernel_pattern"
    assert m["count"] == tokens == 9
    assert attention % tokens == 0  # same number of layers every token
    assert m["duration"]["cv"] < 0.1  # decode tokens are alike
    assert set(m["phases"]) == {"decode"} and m["phases"]["decode"]["count"] == tokens
    check_invariants(store, ctx, result)


def test_cpu_sample_prefill_then_decode():
    path = SAMPLE_TRACES / "cpu_tiny_decoder_prefill_decode.json.gz"
    if not path.exists():
        pytest.skip("CPU sample not recorded yet")
    events = raw_events(path)
    steps_raw = [e for e in events if re.fullmatch(r"ProfilerStep#\d+", str(e.get("name")))]
    prefill = [e for e in events if e.get("name") == "prefill"]
    decode = [e for e in events if e.get("name") == "decode"]
    store, ctx, result = run_steps(path)
    phases = result.metrics["phases"]
    assert result.metrics["count"] == len(steps_raw)
    assert phases["prefill"]["count"] == len(prefill)
    assert phases["decode"]["count"] == len(decode)
    assert phases["prefill"]["count"] + phases["decode"]["count"] == len(steps_raw)
    first = min(steps_raw, key=lambda e: float(e["ts"]))
    assert ctx.steps[0].phase == "prefill" and ctx.steps[0].dur_ns == round(float(first["dur"]) * 1000)
    check_invariants(store, ctx, result)


def test_synthetic_inter_step_gap(synthetic_dir):
    directory = synthetic_dir
    manifest = json.loads((directory / "manifest.json").read_text())
    sync = next(b for b in manifest["bottlenecks"] if b["bottleneck"] == "sync")
    path = directory / "synthetic_llm_decode_rank0.json.gz"
    store, ctx, result = run_steps(path)
    assert result.metrics["count"] == manifest["steps"]
    gap = next(f for f in result.findings if f.rule == "steps.inter_step_gap")
    # The sync's bubble is the gap between steps.
    assert gap.impact_ns == pytest.approx(sync["size_ns_per_step"], rel=0.2)
    check_invariants(store, ctx, result)


def test_outliers_and_variance_rules_on_nsys_kernel_pattern():
    if find_spec("profkit.parsers.nsys") is None:
        pytest.skip("parsers/nsys.py not written yet")
    path = shared_trace("nsys/a100x4_cloverleaf_nsys2024.5.sqlite")
    store, ctx, result = run_steps(path)
    assert result.metrics["source"] == "kernel_pattern"
    assert result.metrics["count"] >= 3
    check_invariants(store, ctx, result)


def test_spread_that_is_all_one_outlier_is_reported_once():
    """FastVideo: 23 steady steps of ~29.3 ms and one of 185.6 ms. The outlier rule reports it;
    the variance rule, whose CV 0.87 is all that step's, does not report it again. The
    regression pair's V100 steps vary without it (CV of the rest above the threshold)."""
    store, ctx, result = run_steps(shared_trace("nsys/h100_2gpu_fastvideo_1s_window.sqlite"))
    steady = [s for s in result.metrics["steps"] if s.get("outlier") is not None]
    durations = [s["dur_ns"] for s in steady]
    assert max(durations) > 5 * sorted(durations)[len(durations) // 2]
    (outliers,) = [f for f in result.findings if f.rule == "steps.outliers"]
    assert outliers.count == 1
    assert not [f for f in result.findings if f.rule == "steps.variance"]
    _, _, other = run_steps(shared_trace("kineto/cuda/regression_pair/test_v100_rank1_of2.json.gz"))
    (variance,) = [f for f in other.findings if f.rule == "steps.variance"]
    assert variance.evidence["cv_without_outliers"] > 0.2


def test_a_last_step_the_capture_cut_short_is_left_out():
    """MI250: the second ProfilerStep is 49 us of host time with no device work after a
    9.3 ms step (the profiler stopped inside it): it halved the replayed step time and the
    findings' shares. CloverLeaf's last inferred window is the capture stopping mid-step:
    with it, step time varied by CV 0.36. Both are reported, neither is a step."""
    path = shared_trace("kineto/rocm/mi250_minitoy_train.json.gz")
    raw = sorted((e for e in raw_events(path) if e.get("ph") == "X" and e.get("cat") == "user_annotation"
                  and re.fullmatch(r"ProfilerStep#\d+", str(e.get("name")))), key=lambda e: float(e["ts"]))
    store, ctx, result = run_steps(path)
    m = result.metrics
    assert len(raw) == 2 and m["count"] == 1 and [s.step for s in ctx.steps] == [1]
    assert m["partial_last_step"]["name"] == raw[-1]["name"] == "ProfilerStep#2"
    assert m["partial_last_step"]["dur_ns"] == round(float(raw[-1]["dur"]) * 1000)
    assert m["partial_last_step"]["device_events"] == 0
    check_invariants(store, ctx, result)

    store, ctx, result = run_steps(shared_trace("nsys/a100x4_cloverleaf_nsys2024.5.sqlite"))
    m = result.metrics
    cut = m["partial_last_step"]
    assert m["source"] == "kernel_pattern" and cut["device_dur_ns"] < 0.5 * m["device_duration"]["p50_ns"]
    assert cut["start_ns"] >= ctx.steps[-1].end_ns
    assert not [f for f in result.findings if f.rule == "steps.variance"]
    # a trace whose steps are all whole keeps them all
    _, _, whole = run_steps(shared_trace("kineto/cuda/v100_nccl_rank1_of2.json.gz"))
    assert whole.metrics["partial_last_step"] is None and whole.metrics["count"] == 5

def test_training_steps_have_no_serving_phase():
    """The 128-rank recommendation-model job names a module `## decoder fp8 None ##`; its
    ProfilerSteps (with a backward pass) were labelled decode steps."""
    path = shared_trace("kineto/cuda/sampled_2ranks")
    _, ctx, result = run_steps(path)
    assert result.metrics["source"] == "profiler_step" and len(ctx.steps) == 2
    assert result.metrics["phases"] == {} and all(s.phase is None for s in ctx.steps)


@pytest.mark.parametrize("name, phases", [
    ("## decoder fp8 None ##", []), ("Decoder.forward", []), ("extended_mask", []),
    ("step[DECODE bs=32]", ["decode"]), ("run_decode_step", ["decode"]), ("forward_extend", ["prefill"]),
    ("prefill", ["prefill"]), ("execute_32_context_0(sq0)_generation_32(sq32)", ["decode"]),
    ("execute_context_1(1_2)_generation_0(0)", ["prefill"]),
])
def test_phase_names_are_whole_words(name, phases):
    assert [phase for phase, pattern in steps_pass.PHASE_PATTERNS if pattern.search(name)] == phases


def _ns(us) -> int:
    return round(float(us) * 1000)


def test_a_step_range_open_long_after_the_recording_is_cut_at_its_last_event():
    """A100 Triton: ProfilerStep#1 stays open 13.3 s after its 1.5 ms of recorded work (past
    Kineto's Record Window End); its step time was 13.3 s against a 1.52 ms critical path."""
    path = shared_trace("kineto/cuda/a100_triton_kernel.json.gz")
    raw = raw_events(path)
    step = next(e for e in raw if e.get("name") == "ProfilerStep#1")
    recorded_end = max(_ns(e["ts"]) + _ns(e["dur"]) for e in raw
                       if e.get("ph") == "X" and e.get("cat") not in ("user_annotation", "Trace"))
    store, ctx, result = run_steps(path)
    (adjusted,) = result.metrics["adjusted_windows"]
    assert adjusted["kind"] == "cut_at_recording_end" and adjusted["name"] == "ProfilerStep#1"
    assert adjusted["host_end_ns"] - adjusted["start_ns"] == _ns(step["dur"])
    assert abs((ctx.steps[0].dur_ns) - (recorded_end - _ns(step["ts"]))) <= 2
    assert 1.4e6 < ctx.steps[0].dur_ns < 1.6e6
    check_invariants(store, ctx, result)
    # a short tail after the last event stays step time (the sampled ranks: 4.4 ms of 623 ms)
    _, _, kept = run_steps(shared_trace("kineto/cuda/sampled_2ranks/sampled_rank-0.json.gz"))
    assert kept.metrics["adjusted_windows"] == []


def test_the_only_step_ends_with_its_device_work():
    """MI300X torch.compile: the one step is the 0.79 ms host call of a compiled graph whose
    kernels run ~12.5 ms after it; the step ends with them. Several steps keep host windows."""
    path = shared_trace("kineto/rocm/mi300x_torch_compile_triton.json.gz")
    raw = raw_events(path)
    call = next(e for e in raw if str(e.get("name")).startswith("## Call CompiledFxGraph"))
    kernels_end = max(_ns(e["ts"]) + _ns(e["dur"]) for e in raw if e.get("ph") == "X" and e.get("cat") == "kernel")
    store, ctx, result = run_steps(path)
    (adjusted,) = result.metrics["adjusted_windows"]
    assert adjusted["kind"] == "extended_to_device_work"
    assert adjusted["host_end_ns"] - adjusted["start_ns"] == _ns(call["dur"])
    assert abs(ctx.steps[0].end_ns - adjusted["end_ns"]) == 0
    assert abs(ctx.steps[0].dur_ns - (kernels_end - _ns(call["ts"]))) <= 2
    assert result.metrics["steps"][0]["device_events"] == sum(
        1 for e in raw if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    check_invariants(store, ctx, result)
    _, _, several = run_steps(shared_trace("kineto/cuda/v100_nccl_rank1_of2.json.gz"))
    assert several.metrics["adjusted_windows"] == []
