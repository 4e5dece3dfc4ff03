"""The critical_path section: attribution sums to the path, replay error, HTA comparison,
and finding impacts from replay."""
from __future__ import annotations

import json
import logging

import pytest

from profkit.analyses import analyze_trace
from profkit.analyses.critical_path import refine_impacts
from profkit.graph import build_graph, critical_path_report
from profkit.ingest import ingest
from profkit.store import Store

from conftest import SAMPLE_TRACES, shared_trace


def _store(path):
    store = Store.open(None)
    ingest([path], store)
    return store


def test_attribution_sums_to_length_per_step():
    store = _store(SAMPLE_TRACES / "synthetic_llm_decode_4ranks")
    g = build_graph(store)
    rep = critical_path_report(store, 0, graph=g)
    assert rep["available"] and rep["replay_error_pct"] == 0.0
    assert all(v >= 0 for v in rep["attribution"].values())
    total = sum(rep["attribution"].values())
    assert abs(total - rep["length_ns"]) <= len(rep["steps"])  # rounding of per-step means
    assert rep["length_ns"] == rep["replayed_step_ns"]
    # the sync the sample injects is on the path: the host waits for the GPU every step
    assert rep["attribution"]["sync"] > 0 and rep["attribution"]["compute"] > rep["attribution"]["sync"]


@pytest.mark.parametrize("trace", ["kineto/cuda/h100_bert_small.json.gz", "nsys/t4_vectoradd_streams.sqlite",
                                   "rocprof/rocpd_mi300x_ck_bmm"])
def test_replay_error_small_on_real_traces(trace):
    store = _store(shared_trace(trace))
    rep = critical_path_report(store, store.trace_ids()[0])
    assert abs(rep["replay_error_pct"]) <= 2.0


@pytest.mark.parametrize("trace", ["nsys/h100_2gpu_fastvideo_1s_window.sqlite",
                                   "nsys/a100x4_cloverleaf_nsys2024.5.sqlite"])
def test_device_time_steps(trace):
    """Steps inferred from a repeating kernel sequence are device-time windows: each
    activity is in the window it runs in. In the FastVideo capture the host launches
    ~0.4 s ahead of the GPU; placing activities by their launch call put them in windows
    long before they ran, and steps came out negative (-365 ms) with an attribution of
    146% of the path. CloverLeaf's summed to 120%."""
    store = _store(shared_trace(trace))
    metrics, _ = analyze_trace(store, 0, passes=("steps", "critical_path"))
    assert metrics["steps"]["source"] == "kernel_pattern"
    rep = metrics["critical_path"]
    assert len(rep["steps"]) == metrics["steps"]["count"] - 1  # the first has no previous step end
    assert all(s["observed_ns"] > 0 and abs(s["error_pct"]) < 10 for s in rep["steps"])
    assert sum(rep["attribution"].values()) == pytest.approx(rep["length_ns"], abs=2)
    assert abs(rep["replay_error_pct"]) <= 2.0


def test_pass_and_refine_impacts_on_synthetic():
    store = _store(SAMPLE_TRACES / "synthetic_llm_decode_4ranks")
    passes = ("steps", "breakdown", "idle", "kernels", "communication", "host", "critical_path")
    metrics, findings = analyze_trace(store, 0, passes=passes)
    assert metrics["critical_path"]["available"]
    refined = refine_impacts(store, 0, findings)
    by_rule = {f.rule: f for f in refined}
    manifest = json.loads((SAMPLE_TRACES / "synthetic_llm_decode_4ranks" / "manifest.json").read_text())
    sync = next(b for b in manifest["bottlenecks"] if b["bottleneck"] == "sync")
    f = by_rule["host.sync_in_steady_state"]
    assert f.impact_basis == "replay"
    assert abs(f.impact_ns - sync["step_time_saving_ns"]) <= 0.05 * sync["step_time_saving_ns"]
    assert f.details["replay"]["observed_step_ns"] > 0 and "used" not in f.details["replay"]


def test_unfaithful_replay_keeps_the_estimate():
    """The llama.cpp rocpd capture has kernels only: the replay runs them back to back
    (24% shorter than observed), so it cannot price the host gaps. The idle finding keeps
    its own figure, says why, and ranks first as the launch-bound decode it is."""
    store = _store(shared_trace("rocprof/rocpd_r9700_llamacpp_decode"))
    metrics, findings = analyze_trace(store, 0)
    assert metrics["critical_path"]["replay_error_pct"] < -20
    host_bound = next(f for f in findings if f.rule == "idle.host_bound")
    assert host_bound.impact_basis == "bound"
    assert host_bound.impact_ns == host_bound.evidence["host_bound_ns_per_step"] > 2_000_000
    replay = host_bound.details["replay"]
    assert replay["used"] is False and "does not reproduce" in replay["reason"]
    assert replay["replayed_step_ns"] < 0.8 * replay["observed_step_ns"]
    assert "estimate_before_replay" not in host_bound.details
    assert max(findings, key=lambda f: f.impact_ns) is host_bound


def test_latencies_that_hide_waits_keep_the_estimate():
    """On the RTX 2070 capture kernels start long after their launch calls with nothing in
    the graph to explain it: the replay matches only through the measured latencies (with
    median ones the step shrinks by 3.7%), so the replay cannot price its sync and idle."""
    store = _store(shared_trace("nsys/rtx2070s_pytorch_dlprof.sqlite"))
    metrics, findings = analyze_trace(store, 0)
    assert metrics["critical_path"]["median_latency_replay_error_pct"] < -2
    sync = next(f for f in findings if f.rule == "host.sync_in_steady_state")
    assert sync.impact_basis != "replay" and sync.impact_ns > 1_000_000
    assert "hide waits" in sync.details["replay"]["reason"]


def test_a_graph_replay_is_replayed_on_its_stream():
    """SGLang's decode step is one hipGraphLaunch of 544 kernels. Their measured launch
    latencies pinned every node at its observed start, and an argmax launched 8.26 ms before
    it ran, behind the graph, put its queueing on the critical path as launch (82% launch,
    1% compute), and a 2x faster GEMM (5.8 ms of the 10 ms step) saved nothing. Now a graph's
    nodes after the first follow each other on their stream, and a wait the trace does not
    explain (a 274 us gap inside the graph: the idle.dependency finding) is a wait on the
    stream edge. The sync's idle comes before the replayed step, so its estimate stands."""
    from profkit.analyses.critical_path import analysis_windows
    from profkit.whatif import whatif

    store = _store(shared_trace("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz"))
    metrics, findings = analyze_trace(store, 0)
    report = metrics["critical_path"]
    assert report["graph"]["launch_followers"] == 543 and report["graph"]["queued_waits"] >= 1
    assert report["attribution"]["compute"] > 0.9 * report["length_ns"]
    assert abs(report["median_latency_replay_error_pct"]) < 0.1
    dependency = next(f for f in findings if f.rule == "idle.dependency")
    assert dependency.impact_ns <= report["attribution"]["idle"] <= 1.1 * dependency.impact_ns
    gemm = store.scalar("SELECT sum(dur_ns) FROM device_events WHERE category = 'gemm'")
    (t,) = whatif(store, changes=["speedup:gemm=2"], windows=analysis_windows(store))["traces"].values()
    assert abs(t["saving_ns"] - gemm / 2) < 0.02 * gemm
    # Without the sync the host reached the step 463 ms sooner (the sync had blocked it that
    # long), into a copy that had waited as long: measured from its first event the one step
    # took 472.7 ms. Changes apply from the step's begin on: none lengthens it.
    for change in ("no-sync", "no-host-overhead"):
        (t,) = whatif(store, changes=[change], windows=analysis_windows(store))["traces"].values()
        assert t["saving_ns"] >= 0 and t["predicted_step_ns"] <= t["replayed_step_ns"]
    sync = next(f for f in findings if f.rule == "host.sync_in_steady_state")
    assert sync.impact_basis == "estimate" and sync.impact_ns > 100_000
    assert "before or after the replayed steps" in sync.details["replay"]["reason"]


def test_slow_launches_are_priced_by_capping_launches():
    """The CK batched-GEMM rocpd trace is host-bound (its path is 99.9% host): pricing its
    52 us launches by removing all host time gave 4.2 s per step. Capping every launch at
    a typical latency gives what the launches cost on the path: no more than the estimate;
    in its one step (the device span, 15.7 ms) nothing, as the host holds the path, which
    the finding's note says."""
    store = _store(shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db"))
    metrics, findings = analyze_trace(store, 0)
    f = next(f for f in findings if f.rule == "kernels.launch_latency")
    assert f.impact_basis == "replay" and f.details["replay"]["changes"] == ["launch-latency"]
    assert 0 <= f.impact_ns <= f.details["estimate_before_replay"]["impact_ns"] < 0.02 * metrics["steps"]["step_ns"]
    assert "critical path is host" in f.details["replay"]["note"]


def test_a_trace_without_steps_is_replayed_over_its_device_span():
    """Savings are per the step every other figure is per. Without steps that is the device
    span (15.7 ms on the CK batched GEMM); the graph used to replay the whole capture,
    seconds of host time before the first kernel included, and priced the host-bound idle
    at 1.69 s "per step"."""
    store = _store(shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db"))
    metrics, findings = analyze_trace(store, 0)
    step = metrics["steps"]["step_ns"]
    assert metrics["steps"]["source"] == "whole_trace"
    assert metrics["critical_path"]["observed_step_ns"] == step
    f = next(f for f in findings if f.rule == "idle.host_bound")
    assert f.impact_basis == "replay" and 0 < f.impact_ns <= f.evidence["idle_ns_per_step"] < step


def test_gaps_without_launch_records_keep_the_estimate():
    """The MI350X rocprofv3 JSON has dispatches but no HIP calls: nothing explains the gaps
    between its kernels, so the replay runs each stream back to back (-18.8%) and its
    critical path is all unexplained waiting. The what-if can price neither the inferred
    host-bound gaps nor the exposed communication."""
    store = _store(shared_trace("rocprof/v3_json_mi350x/908_results.json.gz"))
    metrics, findings = analyze_trace(store, 0)
    report = metrics["critical_path"]
    assert report["graph"]["launches"] == 0 and report["replay_error_pct"] < -2.0
    assert report["attribution"]["idle"] > 0.5 * report["length_ns"]
    exposed = next(f for f in findings if f.rule == "comm.exposed")
    assert exposed.impact_basis == "bound" and exposed.impact_ns > 3e9  # 3.96 s of a 15 s capture
    assert exposed.details["replay"]["used"] is False
    assert "does not explain" in exposed.details["replay"]["reason"]
    host_bound = next(f for f in findings if f.rule == "idle.host_bound")
    assert host_bound.evidence["inferred"] and "inferred" in host_bound.title
    assert host_bound.impact_basis == "bound" and host_bound.impact_ns > 0
    assert host_bound.details["replay"]["used"] is False
    assert "lack launch records" in host_bound.details["replay"]["reason"]



@pytest.fixture(scope="module")
def b200_eager():
    from profkit.analyses import analyze

    return analyze(_store(shared_trace("kineto/cuda/b200_eager_rank0_of8.json.gz")))


def test_a_saving_held_back_by_the_critical_path_says_why(b200_eager):
    """B200 vLLM eager decode: its all_reduce is 100% exposed (2.12 ms per step), but the
    step is host-bound (critical path host 100%), so overlapping it wins back nothing. The
    0 gets a note naming what holds the path, and the renderers print it. The host-bound
    finding, whose own cause leads the path, wins back under half its idle: its note says
    the change (host gaps trimmed) leaves most of the host time on the path."""
    from profkit.analyses.critical_path import SMALL_SAVING_FRACTION
    from profkit.report_markdown import analysis_markdown

    result = b200_eager
    by_rule = {f["rule"]: f for f in result["findings"]}
    comm = by_rule["comm.exposed"]
    note = comm["details"]["replay"]["note"]
    assert comm["impact_ns"] == 0 and comm["details"]["estimate_before_replay"]["impact_ns"] > 2_000_000
    assert "saves 0 ns of the 2.12 ms" in note and "critical path is host 100%" in note
    host = by_rule["idle.host_bound"]
    assert host["impact_basis"] == "replay"
    assert host["impact_ns"] < SMALL_SAVING_FRACTION * host["details"]["estimate_before_replay"]["impact_ns"]
    assert "the critical path is host 100%, and most of that host time is not what this change removes (the " \
           "host's own work" in host["details"]["replay"]["note"]
    assert f"**Why 0 ns:** {note}" in analysis_markdown(result)
    from io import StringIO

    from rich.console import Console

    from profkit.report_terminal import print_analysis

    out = StringIO()
    print_analysis(result, console=Console(file=out, width=400))
    assert f"Why 0 ns: {note}" in out.getvalue()
    from profkit.report_html import analysis_html

    page = analysis_html(result)
    assert f"<p><b>Why 0 ns:</b> {note}</p>" in page and "fixed together, win back" in page


def test_a_saving_far_above_what_the_finding_measures_says_why(b200_eager):
    """B200 vLLM eager decode: the tiny-kernel storm's launch calls cost 3.88 ms per step,
    but its what-if (no host time, as graph capture would) wins back 75 ms, because it
    removes all of the step's host time: the note says so, so that the impact and the
    title do not seem to disagree. A replayed saving within 0.5-1.5x of the finding's own
    measure gets no note (below it, only where another cause holds the path)."""
    from profkit.analyses.critical_path import LARGE_SAVING_FACTOR, SMALL_SAVING_FRACTION
    from profkit.render import human_ns

    storm = next(f for f in b200_eager["findings"] if f["rule"] == "kernels.tiny_kernel_storm")
    own = storm["details"]["estimate_before_replay"]["impact_ns"]
    assert own == storm["evidence"]["launch_overhead_ns_per_step"] and storm["impact_ns"] > 10 * own
    note = storm["details"]["replay"]["note"]
    assert note.startswith("Replaying the step with no host time between launches, as if it were captured as a graph,")
    assert f"{storm['impact_ns'] / own:.1f}x the {human_ns(own)} this finding measures directly" in note
    assert "all of the step's host time" in note
    for f in b200_eager["findings"]:
        replay, before = f["details"].get("replay") or {}, f["details"].get("estimate_before_replay")
        if before and before["impact_ns"] > 0 and replay.get("used", True):
            ratio = f["impact_ns"] / before["impact_ns"]
            if ratio > LARGE_SAVING_FACTOR:
                assert "this finding measures directly" in replay["note"], f["rule"]
            elif ratio >= SMALL_SAVING_FRACTION:
                assert "note" not in replay, f["rule"]


def test_findings_fixed_together_are_one_replay():
    """The replay-priced findings of a trace overlap (a sync finding and the idle it causes
    share a what-if; a tiny-kernel storm and host-bound idle share host time), so their sum
    overstates what can be won. One replay with all their changes says what fixing them
    together wins: at least the best of them alone, never the whole step. On the MI300X
    Qwen step (one step) it used to win less than the sync finding alone: removing host time
    moved the step's first event earlier than its end, until changes began at the step."""
    from profkit.analyses import analyze
    from profkit.report_markdown import analysis_markdown

    for path in (SAMPLE_TRACES / "synthetic_llm_decode_4ranks", shared_trace("kineto/cuda/b200_eager_rank0_of8.json.gz"),
                 shared_trace("kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz")):
        result = analyze(_store(path))
        for t in result["traces"]:
            c = t["critical_path"]["combined_replay"]
            mine = [f for f in result["findings"] if f["scope"]["trace_id"] == t["trace_id"]
                    and f["impact_basis"] == "replay"]
            assert c["findings"] == len(mine) >= 2 and set(c["rules"]) == {f["rule"] for f in mine}
            assert set(c["changes"]) == {ch for f in mine for ch in f["details"]["replay"]["changes"]}
            assert max(f["impact_ns"] for f in mine) <= c["saving_ns"] < t["critical_path"]["replayed_step_ns"]
            assert c["predicted_step_ns"] == t["critical_path"]["replayed_step_ns"] - c["saving_ns"]
            assert c["sum_of_impacts_ns"] == sum(f["impact_ns"] for f in mine)
        assert "fixed together, win back" in analysis_markdown(result)


@pytest.mark.parametrize("saving,summed,tail", [
    (153_000, 153_000, "what their impacts add up to: they do not overlap"),
    (100_000, 153_000, "less than their impacts add up to (153.0 us), which overlap"),
    (200_000, 153_000, "against 153.0 us for their impacts one by one: removing one lets the next matter"),
])
def test_combined_line_says_how_the_joint_saving_compares(saving, summed, tail):
    """Equal savings are not "less than" their sum (the a100_event_sync trace: 94 + 59 = 153 us)."""
    from profkit.findings import combined_lines

    combined = {"saving_ns": saving, "saving_pct": 4.9, "sum_of_impacts_ns": summed, "findings": 2}
    [line] = combined_lines([{"rank": 0, "critical_path": {"combined_replay": combined}}])
    assert line.endswith(f"; {tail}.")

# -- HTA ------------------------------------------------------------------------------

HTA_CASES = [
    ("kineto/cuda/a100_alexnet_train.json.gz", "[param|pytorch.model.alex_net|0|0|0|measure|forward]"),
    ("kineto/cuda/a100_event_sync.json.gz", "ProfilerStep#100"),
]


@pytest.mark.hta
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("trace,annotation", HTA_CASES)
def test_against_hta_critical_path(trace, annotation, tmp_path):
    """Both paths cover the same window; HTA's is shorter by the host gaps it weighs 0
    (docs/graph.md); both find the window host-bound."""
    hta = pytest.importorskip("hta.trace_analysis")
    path = shared_trace(trace)
    (tmp_path / path.name).symlink_to(path)
    logging.disable(logging.WARNING)
    try:
        ta = hta.TraceAnalysis(trace_dir=str(tmp_path))
        cp, ok = ta.critical_path_analysis(rank=0, annotation=annotation, instance_id=0)
        df = cp.get_critical_path_breakdown()
    finally:
        logging.disable(logging.NOTSET)
    assert ok
    hta_len_ns = int(df.duration.sum() * 1000)
    hta_cpu_ns = int(df[df.bound_by == "cpu_bound"].duration.sum() * 1000)
    store = _store(path)
    ann = store.rows("SELECT start_ns, end_ns FROM events WHERE kind = 'annotation' AND name = ?", [annotation])[0]
    rep = critical_path_report(store, 0, windows={0: [(0, ann["start_ns"], ann["end_ns"])]})
    assert hta_len_ns <= rep["length_ns"] <= ann["end_ns"] - ann["start_ns"] + 10_000_000
    # both host-bound: host time is most of either path
    assert hta_cpu_ns > 0.9 * hta_len_ns
    assert rep["attribution"]["host"] > 0.9 * rep["length_ns"]


def test_a_launch_longer_than_any_launch_takes_is_a_wait():
    """vLLM's decode capture: its first copy ran 7.8 ms after its call, behind device work
    from before the capture; as launch latency that made 39% of the step's critical path
    "launch" on a device 99.8% busy. Beyond LAUNCH_LATENCY_MAX_NS it is a wait the trace
    does not explain (idle), and capping launch latencies does not remove it."""
    from profkit.graph_model import CLS, E_LAUNCH, LAUNCH_LATENCY_MAX_NS
    from profkit.whatif import whatif

    store = _store(shared_trace("kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz"))
    g = build_graph(store)
    launch = g.ekind == E_LAUNCH
    assert (g.ecls[launch & (g.weight > LAUNCH_LATENCY_MAX_NS)] == CLS["wait"]).all()
    assert (g.ecls[launch & (g.weight <= LAUNCH_LATENCY_MAX_NS)] == CLS["launch"]).all()
    rep = critical_path_report(store, 0, graph=g)
    assert rep["attribution"]["launch"] < 0.01 * rep["length_ns"]
    assert rep["attribution"]["idle"] > 0.35 * rep["length_ns"]
    (t,) = whatif(store, graph=g, changes=["launch-latency"])["traces"].values()
    assert t["saving_ns"] < 0.01 * t["replayed_step_ns"]
    # The renderers show that share as `wait`, not as idle, and say where it is.
    from profkit.findings import path_parts, wait_notes

    parts = path_parts(rep)
    assert parts["wait"] == rep["attribution_detail"]["wait"] > 0.35 * rep["length_ns"]
    assert sum(parts.values()) == sum(v for v in rep["attribution"].values() if v > 0)
    (note,) = wait_notes([{"rank": 0, "critical_path": rep}])
    share = round(100 * rep["attribution_detail"]["wait"] / rep["length_ns"])
    assert note.startswith(f"Rank 0: {share}% of the critical path") and "before Memcpy DtoD" in note
    assert "launched long before it ran" in note


def test_a_collective_waiting_for_unloaded_ranks_says_so():
    """a100_80gb rank 0 of 16: most of its path is pipeline send/recv kernels waiting for
    peers whose traces are not loaded; the note names the collective and the 16 ranks."""
    from profkit.findings import wait_notes

    store = _store(shared_trace("kineto/cuda/a100_80gb_rank0_of16.json.gz"))
    metrics, _ = analyze_trace(store, 0)
    trace = {"rank": 0, "world_size": 16, "critical_path": metrics["critical_path"]}
    top_wait = next(c for c in trace["critical_path"]["top_contributors"] if c["cause"] == "wait")
    assert top_wait["category"] == "communication" and top_wait["name"].startswith("ncclKernel_SendRecv")
    (note,) = wait_notes([trace])
    assert "a collective waiting for its peer ranks: analyse all 16 ranks' traces together" in note
    assert wait_notes([{**trace, "world_size": 1}]) == [note.split(": analyse")[0] + "."]


def test_a_wait_note_names_a_long_kernel_in_short():
    """CK's template kernels run to thousands of characters (the MI300X rocpd BMM: 4,400);
    the note cuts the name as findings do."""
    from profkit.findings import wait_notes
    from profkit.render import short_name

    store = _store(shared_trace("rocprof/rocpd_mi300x_ck_bmm"))
    metrics, _ = analyze_trace(store, store.rows("SELECT min(trace_id) AS t FROM traces")[0]["t"])
    trace = {"rank": 0, "critical_path": metrics["critical_path"]}
    top_wait = next(c for c in trace["critical_path"]["top_contributors"] if c["cause"] == "wait")
    assert len(top_wait["name"]) > 1000
    (note,) = wait_notes([trace])
    assert f"before {short_name(top_wait['name'])} (" in note and len(note) < 500


def test_a_collective_the_stream_held_is_not_a_wait_for_its_launch():
    """The two-rank Nsight report: rank 1's SendRecv kernels start 2.3-2.5 us after the
    kernel ahead of them (just over STREAM_GAP_MAX_NS) and were launched ~9.5 ms earlier.
    The stream held them: their queued gap is the path's, not a 9.5 ms launch "wait"
    (which made 22% of rank 1's path wait before SendRecv, in 6 of its 15 steps)."""
    from profkit.analyses import analyze

    store = _store(shared_trace("nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite"))
    for t in analyze(store)["traces"]:
        cp = t["critical_path"]
        assert abs(cp["replay_error_pct"]) < 0.1
        assert cp["attribution_detail"]["wait"] < 0.01 * cp["length_ns"], (t["rank"], cp["attribution_detail"])
        assert not [c for c in cp["top_contributors"] if c["cause"] == "wait" and c["category"] == "communication"]
        # Every one of the 33 SendRecv pairs is joined across the two ranks: 9 of them end a
        # few us before "last arrival + the shorter kernel" (send and recv halves do not end
        # together) and were left unjoined when a member had to outlast that.
        assert cp["graph"]["collective_instances"] == 33


def test_a_replay_that_does_not_reproduce_the_step_carries_a_caveat():
    """The llama.cpp rocpd decode links no dispatch to a HIP call: the replay runs its
    kernels back to back (-24%), so its path's bar ("compute 100%") is no model of the step.
    The section says so, and the renderers print it."""
    from profkit.findings import caveat_notes

    store = _store(shared_trace("rocprof/rocpd_r9700_llamacpp_decode/results.db"))
    metrics, _ = analyze_trace(store, 0)
    cp = metrics["critical_path"]
    assert cp["replay_error_pct"] < -20
    n = store.scalar("SELECT count(*) FROM events WHERE kind IN ('kernel', 'memcpy', 'memset')")
    assert f"none of its {n:,} device activities has a launch record" in cp["caveat"]
    (line,) = caveat_notes([{"rank": 0, "critical_path": cp}])
    assert line.startswith(f"Rank 0: the replay does not reproduce the step (error {cp['replay_error_pct']:+.1f}%)")
    # A faithful replay has none.
    store = _store(shared_trace("kineto/cuda/a100_event_sync.json.gz"))
    metrics, _ = analyze_trace(store, 0)
    assert "caveat" not in metrics["critical_path"]


def test_what_ifs_replayed_ahead_equal_those_replayed_in_turn():
    """WhatIfs.ahead replays on a worker thread, without the store (it must not share the
    connection with the main thread); its results are the ones whatif gives in turn."""
    import threading

    from profkit.analyses import critical_path
    from profkit.graph_replay import PRELOAD_MIN_WORK, replay_work
    from profkit.whatif import store_windows, whatif

    store = _store(shared_trace("kineto/cuda/v100_nccl_rank1_of2.json.gz"))
    graph = build_graph(store)
    assert replay_work(graph) >= PRELOAD_MIN_WORK  # large enough for replays ahead
    windows = store_windows(store, store.trace_ids())
    changes = [["host-gaps"], ["no-sync"], ["launch-latency"], ["no-host-overhead"], ["comm-overlap"]]
    expected = [whatif(store, changes=c, windows=windows, graph=graph)["traces"] for c in changes]
    graph.memo.clear()  # nothing left over from the replays above
    replayed_on = []
    original = critical_path.whatif

    def recorded(*args, **kwargs):
        replayed_on.append(threading.current_thread().name)
        return original(*args, **kwargs)

    critical_path.whatif = recorded
    try:
        whatifs = critical_path.WhatIfs(None, graph, windows)  # no store to use
        whatifs.ahead(changes + [changes[0]])  # a repeat is replayed once
        queued = [whatifs.cache[critical_path._key(c)] for c in changes]
        for future in queued:
            future.exception()  # wait: every replay on the worker
        got = [whatifs.result(c)["traces"] for c in changes]
    finally:
        critical_path.whatif = original
    assert got == expected
    assert len(replayed_on) == len(changes) and all(n.startswith("profkit-whatif") for n in replayed_on)


def test_small_graphs_replay_what_ifs_in_turn():
    from profkit.analyses import critical_path
    from profkit.whatif import store_windows

    store = _store(SAMPLE_TRACES / "synthetic_llm_decode_4ranks")
    graph = build_graph(store)
    whatifs = critical_path.WhatIfs(store, graph, store_windows(store, store.trace_ids()))
    whatifs.ahead([["host-gaps"], ["no-sync"]])
    assert whatifs.cache == {}
    assert whatifs.result(["no-sync"])["traces"]
