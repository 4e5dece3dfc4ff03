"""Idle attribution: a hand-built store with one gap of each cause, invariants on real
traces of every format, and the injected bottlenecks of the synthetic sample."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_TRACES, shared_trace
from profkit.analyses import Context, Step, analyze_trace, idle
from profkit.analyses.step_inference import load_device_events
from profkit.ingest import Sink, ingest
from profkit.store import Store

SYNTHETIC = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"


def make_context(store: Store, trace_id: int, graph_replay: bool = False) -> Context:
    """A context with the steps the store records (the steps pass is tested elsewhere)."""
    ctx = Context.of(store, trace_id)
    ctx.steps = [Step(r["step"], r["start_ns"], r["end_ns"], r["source"])
                 for r in store.rows("SELECT * FROM steps WHERE trace_id = ? ORDER BY start_ns", [trace_id])]
    ctx.results["steps"] = {"graph_replay": graph_replay}
    return ctx


def load(path: Path) -> Store:
    store = Store.open(None)
    ingest([path], store)
    return store


# ----------------------------------------------------------------- hand-built store ---
PID, TID = 100, 1


def _hand_store(tmp_path) -> Store:
    """Stream 1 of device 0 has one gap of each cause; stream 2 one kernel it depends on.

    kernel (stream) start-end      launch call       gap before it (stream 1)
    K0 (1)  10_000- 20_000         R0   1_000
    K1 (1)  60_000- 70_000         R1  50_000         40_000 host_bound (launched after K0 ended)
    K2 (1) 100_000-110_000         R2  65_000         30_000 launch_latency (launched before K1 ended)
    K3 (1) 170_000-180_000         R3 160_000         60_000 sync (cudaStreamSynchronize 105_000-112_000, waiting for K2)
    K5 (2) 190_000-245_000         R5 163_000
    K4 (1) 250_000-260_000         R4 175_000         70_000 dependency (K5 ended 5 us before K4 began)
    K6 (1) 400_000-410_000         R6 390_000        140_000 outside_step (only 40_000 inside a step)
    K7 (1) 450_000-460_000         none               40_000 host_bound, fallback: R8 launched in the gap
    K8 (1) 470_000-480_000         R8 430_000         10_000 launch_latency
    Steps: [0, 300_000) and [420_000, 1_000_000).
    """
    src = tmp_path / "hand.json"
    src.write_text("{}")
    kernels = [  # name, stream, start, end, correlation
        ("K0", 1, 10_000, 20_000, 1), ("K1", 1, 60_000, 70_000, 2), ("K2", 1, 100_000, 110_000, 3),
        ("K3", 1, 170_000, 180_000, 4), ("K5", 2, 190_000, 245_000, 6), ("K4", 1, 250_000, 260_000, 5),
        ("K6", 1, 400_000, 410_000, 7), ("K7", 1, 450_000, 460_000, None), ("K8", 1, 470_000, 480_000, 9),
    ]
    runtime = [  # name, start, dur, correlation
        ("cudaLaunchKernel", 1_000, 2_000, 1), ("cudaLaunchKernel", 50_000, 2_000, 2),
        ("cudaLaunchKernel", 65_000, 2_000, 3), ("cudaStreamSynchronize", 105_000, 7_000, 100),
        ("cudaLaunchKernel", 160_000, 2_000, 4), ("cudaLaunchKernel", 163_000, 2_000, 6),
        ("cudaLaunchKernel", 175_000, 2_000, 5), ("cudaLaunchKernel", 390_000, 2_000, 7),
        ("cudaLaunchKernel", 430_000, 2_000, 9),
    ]
    store = Store.open(None)
    sink = Sink(store)
    with sink.trace(src, "hand") as w:
        w.set_trace(rank=0, vendor="nvidia")
        rows = [dict(kind="kernel", name=n, start_ns=s, dur_ns=e - s, pid=None, tid=None, device=0, stream=st,
                     correlation=c) for n, st, s, e, c in kernels]
        rows += [dict(kind="runtime", name=n, start_ns=s, dur_ns=d, pid=PID, tid=TID, device=None, stream=None,
                      correlation=c) for n, s, d, c in runtime]
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["event_id"] = list(range(len(rows)))
        w.add_events(cols)
        w.add_rows("steps", [dict(step=1, name="s1", start_ns=0, end_ns=300_000, source="annotation"),
                             dict(step=2, name="s2", start_ns=420_000, end_ns=1_000_000, source="annotation")])
    return store


def test_hand_built_gaps_get_the_right_causes(tmp_path):
    store = _hand_store(tmp_path)
    ctx = make_context(store, 0)
    metrics = idle.run(ctx).metrics
    (dev,) = metrics["devices"]
    stream1 = next(s for s in dev["streams"] if s["stream"] == 1)
    assert stream1["by_cause_ns"] == {"host_bound": 80_000, "launch_latency": 40_000, "sync": 60_000,
                                      "dependency": 70_000, "outside_step": 140_000}
    assert stream1["gaps_by_cause"] == {"host_bound": 2, "launch_latency": 2, "sync": 1, "dependency": 1,
                                        "outside_step": 1}
    assert stream1["fallback_by_reason"]["host_launch_in_gap"] == 1 and stream1["fallback_gaps"] == 1
    assert stream1["span_ns"] == 470_000 and stream1["busy_ns"] == 80_000 and stream1["idle_ns"] == 390_000
    # Device level: the stream-2 kernel fills part of the dependency gap; what is left of
    # it (180-190 us and 245-250 us) follows another stream's activity within the window.
    assert dev["by_cause_ns"] == {"host_bound": 80_000, "launch_latency": 40_000, "sync": 60_000,
                                  "dependency": 15_000, "outside_step": 140_000}
    assert dev["idle_ns"] == 470_000 - 135_000
    # Per step: step 1 holds gaps A-D and 40 us of the outside-step gap; step 2 the rest.
    per_step = {p["step"]: p for p in stream1["per_step"]}
    assert per_step[1]["by_cause_ns"]["outside_step"] == 40_000
    assert per_step[1]["idle_ns"] == 40_000 + 30_000 + 60_000 + 70_000 + 40_000
    assert per_step[2]["by_cause_ns"] == {"host_bound": 30_000, "launch_latency": 10_000, "sync": 0,
                                          "dependency": 0, "outside_step": 0}


def test_graph_replay_turns_unlinked_gaps_device_side(tmp_path):
    store = _hand_store(tmp_path)
    _, per_stream, _ = idle.attribute(store, 0, make_context(store, 0).steps, graph_replay=True)
    k7 = store.scalar("SELECT event_id FROM events WHERE name = 'K7'")
    i = int(np.flatnonzero(per_stream.next_event == k7)[0])
    assert idle.CAUSES[per_stream.cause[i]] == "launch_latency"
    assert idle.FALLBACK_REASONS[per_stream.fallback[i] - 1] == "graph_replay"


def test_an_activity_linked_to_several_calls_takes_the_latest_launched_before_it(tmp_path):
    """Correlation ids repeat where a process restarts its numbering (or the input names no
    process): each activity then has several launch links, and its launch is the latest
    call to start at or before it, else the latest call."""
    src = tmp_path / "dup.json"
    src.write_text("{}")
    store = Store.open(None)
    with Sink(store).trace(src, "dup") as w:
        w.set_trace(rank=0, vendor="nvidia")
        rows = [("kernel", "KA", 10_000, 5_000, None, 1), ("kernel", "KB", 50_000, 5_000, None, 2),
                ("kernel", "KC", 80_000, 5_000, None, 3),
                ("runtime", "early", 1_000, 1_000, TID, 1), ("runtime", "late", 30_000, 1_000, TID, 1),
                ("runtime", "first", 20_000, 1_000, TID, 2), ("runtime", "second", 40_000, 1_000, TID + 1, 2),
                ("runtime", "after1", 90_000, 1_000, TID, 3), ("runtime", "after2", 95_000, 1_000, TID, 3)]
        w.add_events({"event_id": list(range(len(rows))), "kind": [r[0] for r in rows], "name": [r[1] for r in rows],
                      "start_ns": [r[2] for r in rows], "dur_ns": [r[3] for r in rows],
                      "pid": [None if r[0] == "kernel" else PID for r in rows], "tid": [r[4] for r in rows],
                      "device": [0 if r[0] == "kernel" else None for r in rows],
                      "stream": [1 if r[0] == "kernel" else None for r in rows], "correlation": [r[5] for r in rows]})
    assert store.scalar("SELECT count(*) FROM links WHERE kind = 'launch'") == 6
    dev = load_device_events(store, 0)
    acts, threads = idle._load_activities(store, 0, dev)
    name = dict(store.con.execute("SELECT event_id, name FROM events").fetchall())
    # The steps pass places an activity by the first call recorded (smallest id).
    assert [name[int(e)] for e in dev.launch_id] == ["early", "first", "after1"]
    assert dev.launch_start.tolist() == [1_000, 20_000, 90_000]
    assert [name[int(e)] for e in acts["event_id"]] == ["KA", "KB", "KC"]
    assert [name[int(e)] for e in acts["launch_event"]] == ["early", "second", "after2"]
    assert acts["launch_start"].tolist() == [1_000, 40_000, 95_000]
    assert {code: pair[1] for pair, code in threads.items()} == {acts["thread"][0]: TID, acts["thread"][1]: TID + 1}


def test_findings_on_hand_store_name_the_cause_and_their_sql_runs(tmp_path):
    store = _hand_store(tmp_path)
    findings = idle.run(make_context(store, 0)).findings
    rules = {f.rule for f in findings}
    assert {"idle.host_bound", "idle.sync", "idle.launch_latency"} <= rules
    for f in findings:
        assert f.impact_basis == "bound" and f.impact_ns > 0 and f.scope["device"] == 0
        assert store.rows(f.sql), f.rule


# ----------------------------------------------------------------- invariants ----------
def _busy_and_span_sql(store, trace_id, device, stream=None):
    """Busy time (union) and span of a lane, by a gaps-and-islands query: an independent
    formulation of what the pass computes with numpy."""
    lane = "coalesce(device, -1) = ?" + (" AND coalesce(stream, -1) = ?" if stream is not None else "")
    params = [trace_id, device] + ([stream] if stream is not None else [])
    return store.con.execute(f"""
        WITH a AS (SELECT start_ns, end_ns, max(end_ns) OVER (ORDER BY start_ns, end_ns
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
                   FROM device_events WHERE trace_id = ? AND {lane}),
        b AS (SELECT *, sum(CASE WHEN prev_end IS NULL OR start_ns > prev_end THEN 1 ELSE 0 END)
                   OVER (ORDER BY start_ns, end_ns) AS island FROM a),
        c AS (SELECT min(start_ns) AS s, max(end_ns) AS e FROM b GROUP BY island)
        SELECT sum(e - s), max(e) - min(s) FROM c
    """, params).fetchone()


def check_invariants(store, trace_id, metrics):
    assert metrics["devices"], "no devices"
    for dev in metrics["devices"]:
        lanes = [(dev, None)] + [(s, s["stream"]) for s in dev["streams"]]
        for lane, stream in lanes:
            assert all(v >= 0 for v in lane["by_cause_ns"].values())
            assert sum(lane["by_cause_ns"].values()) == lane["idle_ns"]
            assert sum(lane["gaps_by_cause"].values()) == lane["gaps"]
            busy, span = _busy_and_span_sql(store, trace_id, dev["device"], stream)
            assert (lane["busy_ns"], lane["span_ns"]) == (busy, span)
            assert lane["idle_ns"] == span - busy
            for p in lane["per_step"]:
                assert sum(p["by_cause_ns"].values()) == p["idle_ns"] >= 0


REAL_TRACES = [
    "kineto/cuda/a100_alexnet_train.json.gz",
    "kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz",
    "kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz",
    "kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz",
    "nsys/rtx2070s_pytorch_dlprof.sqlite",
    "nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite",
    "rocprof/rocpd_r9700_llamacpp_decode/results.db",
]


@pytest.fixture(scope="module")
def stores():
    cache: dict[str, Store] = {}

    def get(rel):
        if rel not in cache:
            cache[rel] = load(shared_trace(rel))
        return cache[rel]
    return get


@pytest.mark.parametrize("rel", REAL_TRACES)
def test_invariants_on_real_traces(rel, stores):
    store = stores(rel)
    for trace_id in store.trace_ids():
        result = idle.run(make_context(store, trace_id))
        check_invariants(store, trace_id, result.metrics)
        for f in result.findings:
            assert f.rule in {"idle.host_bound", "idle.launch_latency", "idle.sync", "idle.dependency"}
            assert f.impact_ns > 0 and store.rows(f.sql), f.rule


@pytest.mark.parametrize("rel", REAL_TRACES[:5])
def test_known_launch_gaps_follow_the_launch_rule(rel, stores):
    """A host_bound/sync gap with a known launch had its launch call begin after the gap
    began; a launch_latency/dependency gap had at least half of it after the call began."""
    store = stores(rel)
    trace_id = store.trace_ids()[0]
    ctx = make_context(store, trace_id)
    _, per_stream, _ = idle.attribute(store, trace_id, ctx.steps)
    launch_start = dict(store.con.execute(
        "SELECT runtime_event, launch_start_ns FROM launches WHERE trace_id = ?", [trace_id]).fetchall())
    checked = 0
    for g0, g1, cause, launch, fb in zip(per_stream.start, per_stream.end, per_stream.cause,
                                         per_stream.launch_event, per_stream.fallback):
        if launch < 0 or fb:
            continue
        ls = launch_start[int(launch)]
        host_part = min(max(ls - g0, 0), g1 - g0)
        name = idle.CAUSES[cause]
        if name in ("host_bound", "sync"):
            assert ls > g0 and 2 * host_part >= g1 - g0
        elif name in ("launch_latency", "dependency"):
            assert 2 * host_part < g1 - g0
        if name == "launch_latency":
            assert g1 - g0 - host_part <= idle.LAUNCH_LATENCY_MAX_NS
        checked += 1
    assert checked > 0



@pytest.mark.parametrize("rel", ["kineto/cuda/a100_event_sync.json.gz", "kineto/cuda/a100_alexnet_train.json.gz",
                                 "nsys/rtx2070s_pytorch_dlprof.sqlite"])
def test_sync_gaps_follow_a_sync_that_waited(rel, stores):
    """A gap is `sync` only when the sync call before its launch waited for device work:
    it began before the gap (a blocking copy waits for the copy it enqueued) or while
    the device was busy. Checked against the store with SQL: on the event-sync test trace
    a cudaStreamSynchronize 10 us into a 100 us gap (the copy before it long done) made
    the gap `sync`; it is the host's. The AlexNet trace had 824 ms so attributed."""
    store = stores(rel)
    trace_id = store.trace_ids()[0]
    _, per_stream, _ = idle.attribute(store, trace_id, make_context(store, trace_id).steps)
    sync_calls = store.rows("""
        SELECT start_ns, end_ns FROM events WHERE trace_id = ? AND tid IS NOT NULL
          AND (kind = 'sync' OR kind = 'runtime' AND list_contains(?, name)) ORDER BY end_ns""",
                            [trace_id, idle.blocking_call_names(store, trace_id)])
    busy = store.rows("SELECT start_ns, end_ns FROM device_events WHERE trace_id = ?", [trace_id])
    launch_start = dict(store.con.execute(
        "SELECT runtime_event, launch_start_ns FROM launches WHERE trace_id = ?", [trace_id]).fetchall())
    host_gaps_after_idle_sync = 0
    for g0, g1, cause, launch, fb in zip(per_stream.start, per_stream.end, per_stream.cause,
                                         per_stream.launch_event, per_stream.fallback):
        if launch < 0 or fb or cause not in (idle.SYNC, idle.HOST):
            continue
        ls = launch_start[int(launch)]
        last = [c for c in sync_calls if g0 < c["end_ns"] <= ls and c["start_ns"] < ls]
        if not last:
            assert cause != idle.SYNC
            continue
        began = last[-1]["start_ns"]
        waited = began < g0 or any(b["start_ns"] <= began < b["end_ns"] for b in busy)
        assert (cause == idle.SYNC) == waited, (g0, g1, began)
        host_gaps_after_idle_sync += not waited
    assert host_gaps_after_idle_sync > 0

def test_waits_too_long_for_launch_latency_are_unrecorded_dependencies(stores):
    """Rank 0 of 16 replays CUDA graphs launched tens of ms ahead; inside them the GPU sits
    idle up to 64 ms with no activity on any stream. That is no launch latency (its gaps
    are 4 us at the median) but a wait the trace does not record."""
    store = stores("kineto/cuda/a100_80gb_rank0_of16.json.gz")
    result = idle.run(make_context(store, 0))
    (dev,) = result.metrics["devices"]
    assert result.metrics["thresholds"]["launch_latency_max_ns"] == idle.LAUNCH_LATENCY_MAX_NS
    assert dev["unrecorded_dependency_ns"] > 0.8 * dev["by_cause_ns"]["dependency"] > 0
    assert dev["by_cause_ns"]["launch_latency"] < 0.1 * dev["by_cause_ns"]["dependency"]
    _, _, per_device = idle.attribute(store, 0, make_context(store, 0).steps)
    longest = np.argmax(np.where(per_device.cause == idle.OUTSIDE, 0, per_device.dur))
    assert per_device.dur[longest] > 60_000_000 and per_device.cause[longest] == idle.DEPENDENCY
    assert per_device.unrecorded[longest] and per_device.launch_event[longest] >= 0
    finding = next(f for f in result.findings if f.rule == "idle.dependency")
    # The title says where: before those graph replays (launched by cudaGraphLaunch) start,
    # at their first nodes, so not on the graphs' own edges.
    assert finding.title.endswith("(before graph replays start, on something the trace does not record)")
    assert finding.evidence["graph_replay_ns"] > 0.9 * finding.evidence["unrecorded_dependency_ns"] > 0
    assert finding.evidence["before_graph_replays_ns"] > 0.5 * finding.evidence["graph_replay_ns"]
    # What the GPU waited to run: the longest gap ends at a replay's first node, a memset on
    # the compute stream launched by cudaGraphLaunch tens of ms before; most gap time ends so.
    node, launch = store.rows("SELECT name, stream FROM events WHERE event_id = ?",
                              [int(per_device.next_event[longest])])[0], \
        store.rows("SELECT name FROM events WHERE event_id = ?", [int(per_device.launch_event[longest])])[0]
    assert (node["name"], node["stream"], launch["name"]) == ("Memset (Device)", 7, "cudaGraphLaunch")
    ended_by = finding.evidence["ended_by"]
    assert ended_by[0]["name"] == "Memset (Device)" and ended_by[0]["streams"] == [7]
    mask = (per_device.cause == idle.DEPENDENCY) & (per_device.device == 0)
    assert sum(e["gap_ns"] for e in ended_by) <= int(per_device.dur[mask].sum())
    assert ended_by[0]["share_pct"] == pytest.approx(100 * ended_by[0]["gap_ns"] / per_device.dur[mask].sum(), abs=0.05)
    assert ended_by[0]["share_pct"] > 50 > ended_by[1]["share_pct"]
    assert finding.recommendation == (f"{ended_by[0]['share_pct']:.0f}% of this idle time ends when Memset (Device) "
                                      "starts on stream 7: look at what that stream waits on before it. "
                                      + idle._RECOMMENDATIONS["dependency"][None])


def test_waits_inside_graph_replays_point_at_the_graph(stores):
    """SGLang decode: one hipGraphLaunch replays the whole step; the device's idle lies before
    nodes after the first, i.e. on the graph's own edges, which no trace records. The finding
    says so and suggests printing the graph's structure."""
    path = shared_trace("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz")
    raw = json.load(gzip.open(path), strict=False)["traceEvents"]
    (launch,) = [e for e in raw if e.get("name") == "hipGraphLaunch"]
    nodes = sorted((e for e in raw if e.get("cat") == "kernel" and
                    e["args"].get("correlation") == launch["args"]["correlation"]), key=lambda e: float(e["ts"]))
    assert len(nodes) > 100
    store = stores("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz")
    # Its one step is the graph replay, which the steps pass infers.
    _, findings = analyze_trace(store, 0, passes=("steps", "idle"))
    finding = next(f for f in findings if f.rule == "idle.dependency")
    assert finding.title.endswith("(inside graph replays, whose edges the trace does not record)")
    assert finding.evidence["before_graph_replays_ns"] < 0.5 * finding.evidence["graph_replay_ns"]
    assert "hipGraphDebugDotPrint" in finding.recommendation


def test_unrecorded_waits_outside_graph_replays_say_so(stores):
    """MI250 toy training: 71% of the step idle before kernels launched in time, no graph
    replays: the dependency finding says no wait was recorded."""
    store = stores("kineto/rocm/mi250_minitoy_train.json.gz")
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'runtime' AND name LIKE '%GraphLaunch%'") == 0
    result = idle.run(make_context(store, 0))
    finding = next(f for f in result.findings if f.rule == "idle.dependency")
    assert finding.title.endswith("(no recorded wait: the work was queued in time but started later than any "
                                  "launch takes)")
    assert finding.evidence["graph_replay_ns"] == 0 and finding.evidence["unrecorded_dependency_ns"] > 0


def test_idle_matches_raw_kineto_json():
    """Span and busy time of the H100 trace's compute stream, straight from the JSON."""
    path = shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    raw = json.load(gzip.open(path), strict=False)["traceEvents"]
    acts = [e for e in raw if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("ph") == "X"]
    by_stream: dict[int, list] = {}
    for e in acts:
        s = round(float(e["ts"]) * 1000)
        by_stream.setdefault(int(e["args"]["stream"]), []).append((s, s + round(float(e["dur"]) * 1000)))
    store = load(path)
    (dev,) = idle.run(make_context(store, 0)).metrics["devices"]
    for lane in dev["streams"]:
        spans = sorted(by_stream[lane["stream"]])
        busy = 0
        cur_s, cur_e = spans[0]
        for s, e in spans[1:]:
            if s > cur_e:
                busy += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        busy += cur_e - cur_s
        span = max(e for _, e in spans) - spans[0][0]
        assert lane["span_ns"] == span and lane["idle_ns"] == span - busy


def test_graph_replay_gaps_are_not_host_bound(stores):
    """No gap before a kernel enqueued by hipGraphLaunch is blamed on host launches
    (the replay was launched before the earlier nodes ended: device-side gaps)."""
    store = stores("kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz")
    ctx = make_context(store, 0, graph_replay=True)
    _, per_stream, _ = idle.attribute(store, 0, ctx.steps, graph_replay=True)
    same_replay = {r[0] for r in store.con.execute("""
        SELECT device_event FROM launches WHERE trace_id = 0 AND regexp_matches(runtime_name, 'GraphLaunch')
    """).fetchall()}
    assert len(same_replay) > 100
    inside = np.isin(per_stream.next_event, list(same_replay))
    assert inside.sum() > 100
    assert not np.any(per_stream.cause[inside] == idle.HOST)


# ----------------------------------------------------------------- synthetic sample ----
def test_synthetic_injected_host_gaps_and_sync_are_found():
    if not (SYNTHETIC / "manifest.json").exists():
        pytest.skip("synthetic sample not generated yet")
    manifest = json.loads((SYNTHETIC / "manifest.json").read_text())
    bottlenecks = {b["bottleneck"]: b for b in manifest["bottlenecks"]}
    host_gaps, sync = bottlenecks["host_gaps"], bottlenecks["sync"]
    compute = manifest["streams"]["compute"]
    store = load(SYNTHETIC)
    ranks_seen = set()
    for trace_id in store.trace_ids():
        ctx = make_context(store, trace_id)
        result = idle.run(ctx)
        check_invariants(store, trace_id, result.metrics)
        rank = ctx.trace["rank"]
        ranks_seen.add(rank)
        (dev,) = result.metrics["devices"]
        stream = next(s for s in dev["streams"] if s["stream"] == compute)
        assert stream["steady_step_median_ns"]["host_bound"] == pytest.approx(host_gaps["size_ns_per_step"], rel=0.2)
        finding = next(f for f in result.findings if f.rule == "idle.host_bound")
        assert finding.scope["rank"] == rank and finding.scope["stream"] == compute
        assert finding.scope["device"] == dev["device"]
        assert finding.impact_ns == pytest.approx(host_gaps["size_ns_per_step"], rel=0.2)
        sync_finding = next(f for f in result.findings if f.rule == "idle.sync")
        assert sync_finding.impact_ns == pytest.approx(sync["size_ns_per_step"], rel=0.2)
        assert sync_finding.scope["stream"] == compute
    assert ranks_seen == set(range(manifest["ranks"]))


def test_a_custom_accelerator_is_a_device_not_a_gpu(stores):
    """MTIA's devices are no GPUs (vendor `other`): its findings say "Device 17", while
    NVIDIA and AMD devices, and devices with no devices row in a GPU vendor's trace, stay GPUs."""
    store = stores("kineto/mtia/mtia_inference_rank0.json.gz")
    assert store.rows("SELECT device, vendor FROM devices") == [{"device": 17, "vendor": "other"}]
    ctx = make_context(store, 0)
    assert ctx.device_label(17) == "Device 17" and ctx.device_noun() == "device"
    result = idle.run(ctx)
    assert result.findings and all(f.title.startswith("Device 17 idles") for f in result.findings)
    store = stores("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    ctx = make_context(store, 0)
    assert ctx.device_label(0) == "GPU 0" and ctx.device_label(5) == "GPU 5" and ctx.device_noun() == "GPU"
