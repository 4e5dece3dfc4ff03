"""What-if replays against the synthetic sample's manifest: each injected bottleneck's
saving, predicted by the what-if that removes it, within 5%."""
from __future__ import annotations

import json

import numpy as np
import pytest

from profkit.analyses.critical_path import analysis_windows
from profkit.graph import build_graph
from profkit.ingest import ingest
from profkit.store import Store
from profkit.graph_model import CLS, E_DURATION, E_LAUNCH, E_STREAM
from profkit.whatif import apply_changes, parse_change, whatif

from conftest import SAMPLE_TRACES, shared_trace

SAMPLE = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"
WHATIF_FOR = {"sync": "no-sync", "host_gaps": "host-gaps", "exposed_allreduce": "comm-overlap",
              "straggler": "straggler"}


@pytest.fixture(scope="module")
def synthetic():
    if not (SAMPLE / "manifest.json").exists():
        pytest.skip("synthetic sample missing")
    store = Store.open(None)
    ingest([SAMPLE], store)
    return store, build_graph(store), json.loads((SAMPLE / "manifest.json").read_text())


def test_replay_reproduces_observed_steps(synthetic):
    store, g, manifest = synthetic
    r = whatif(store, graph=g)
    assert len(r["traces"]) == manifest["ranks"]
    for t in r["traces"].values():
        assert len(t["steps"]) == manifest["steps"] - 1
        assert abs(t["replayed_step_ns"] - t["observed_step_ns"]) <= 0.02 * t["observed_step_ns"]
    # the step time itself agrees with the manifest's (a different boundary, same period)
    assert abs(r["mean"]["observed_step_ns"] - manifest["step_time_ns"]) <= 0.01 * manifest["step_time_ns"]


@pytest.mark.parametrize("bottleneck", sorted(WHATIF_FOR))
def test_whatif_predicts_injected_saving(synthetic, bottleneck):
    store, g, manifest = synthetic
    entry = next(b for b in manifest["bottlenecks"] if b["bottleneck"] == bottleneck)
    truth = entry["step_time_saving_ns"]
    assert truth == manifest["step_time_ns"] - entry["step_time_without_ns"]
    r = whatif(store, graph=g, changes=[WHATIF_FOR[bottleneck]])
    predicted = r["mean"]["saving_ns"]
    assert abs(predicted - truth) <= 0.05 * truth, (bottleneck, predicted, truth)


def test_speedup_one_changes_nothing_and_faster_never_slower(synthetic):
    store, g, _ = synthetic
    assert whatif(store, graph=g, changes=["speedup:gemm=1"])["mean"]["saving_ns"] == 0
    faster = whatif(store, graph=g, changes=["speedup:gemm=2"])["mean"]["saving_ns"]
    both = whatif(store, graph=g, changes=["speedup:gemm=2", "no-host-overhead"])["mean"]["saving_ns"]
    assert 0 < faster <= both


def test_parse_change():
    assert parse_change("speedup:gemm=2") == {"kind": "speedup", "category": "gemm", "factor": 2.0}
    assert parse_change("speedup-kernel:my=kernel=3") == {"kind": "speedup", "kernel": "my=kernel", "factor": 3.0}
    assert parse_change("no-host-overhead") == {"kind": "no_host_overhead"}
    assert parse_change("launch-latency") == {"kind": "launch_latency", "ns": 5000}
    assert parse_change("launch-latency:2000") == {"kind": "launch_latency", "ns": 2000}
    for bad in ("faster", "launch-latency:fast", "no-sync:1"):
        with pytest.raises(ValueError):
            parse_change(bad)


@pytest.mark.parametrize("change,problem", [
    ("speedup:gemm=nan", "speedup factor must be a positive number"),
    ("speedup:gemm=0", "speedup factor must be a positive number"),
    ("launch-latency:-5", "launch latency must be 0 to"),
    (f"launch-latency:{10**23}", "launch latency must be 0 to"),
])
def test_changes_out_of_range_are_refused(synthetic, change, problem):
    # Before: nan gave a numpy warning and a report, a negative latency negative launch
    # times, a latency beyond int64 an internal OverflowError.
    store, g, _ = synthetic
    with pytest.raises(ValueError, match=problem):
        whatif(store, graph=g, changes=[change])


def test_launch_latency_caps_launch_edges_only(synthetic):
    store, g, _ = synthetic
    launch = g.ekind == E_LAUNCH
    capped = apply_changes(g, [parse_change("launch-latency:1000")])
    assert (capped[launch] == np.minimum(g.weight[launch], 1000)).all() and (g.weight[launch] > 1000).any()
    assert (capped[~launch] == g.weight[~launch]).all()
    result = whatif(store, graph=g, changes=["launch-latency:1000"])
    assert all(t["saving_ns"] >= 0 for t in result["traces"].values())


@pytest.fixture(scope="module")
def b200():
    """vLLM eager decode on a B200: 929 kernels on one stream, 74 of which start before the
    kernel ahead of them ends (programmatic dependent launch)."""
    store = Store.open(None)
    ingest([shared_trace("kineto/cuda/b200_eager_rank0_of8.json.gz")], store)
    return store, build_graph(store)


def test_overlapping_activities_stay_in_stream_order(b200):
    store, g = b200
    dev = np.flatnonzero(g.is_device)
    streams = store.scalar("SELECT count(DISTINCT (device, stream)) FROM device_events")
    overlaps = store.scalar("""
        SELECT count(*) FROM (SELECT start_ns < lag(end_ns) OVER (PARTITION BY device, stream
                                                                 ORDER BY start_ns, end_ns) AS o
                              FROM device_events) WHERE o""")
    assert overlaps == g.stats["stream_overlaps"] == 74
    stream = g.ekind == E_STREAM
    # one chain per stream: every activity but each stream's first has a stream edge in
    assert stream.sum() == dev.size - streams
    over = stream & (g.ecls <= CLS["communication"])  # in the activity's own class
    assert over.sum() == overlaps
    # start -> start, the observed offset, attributed to the activity ahead
    assert (g.src[over] % 2 == 0).all() and (g.dst[over] % 2 == 0).all()
    assert (g.weight[over] == g.start[g.dst[over] // 2] - g.start[g.src[over] // 2]).all()
    assert (g.eevent[over] == g.src[over] // 2).all()


def test_no_host_overhead_keeps_the_device_work(b200):
    """Removing host time cannot make a step shorter than its stream's kernels: with the
    overlaps left out the stream fell apart into 75 chains replayed side by side (0.7 ms)."""
    store, g = b200
    busy = store.scalar("SELECT max(s) FROM (SELECT sum(dur_ns) AS s FROM device_events GROUP BY device, stream)")
    predicted = whatif(store, graph=g, changes=["no-host-overhead"])["mean"]["predicted_step_ns"]
    assert busy <= predicted <= 1.05 * busy


def test_speedup_scales_the_overlap_edges_of_its_kernels(b200):
    store, g = b200
    w = apply_changes(g, [parse_change("speedup-kernel:bmm=2")])
    over = (g.ekind == E_STREAM) & (g.ecls <= CLS["communication"])
    bmm = np.array(["bmm" in str(n) for n in g.name[np.maximum(g.eevent, 0)]])
    for kind in (over, g.ekind == E_DURATION):
        sel = kind & bmm
        assert sel.any() and (w[sel] == np.round(g.weight[sel] / 2)).all()
    assert (w[over & ~bmm] == g.weight[over & ~bmm]).all()


# Length of the union of the compute kernels (not communication) of the store, in SQL:
# sorted by start, a kernel opens a new busy stretch when it starts after every earlier end.
COMPUTE_UNION_SQL = """
    WITH k AS (SELECT start_ns AS s, end_ns AS e FROM device_events
               WHERE kind = 'kernel' AND coalesce(category, '') <> 'communication' AND end_ns > start_ns),
    o AS (SELECT s, e, max(e) OVER (ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before FROM k),
    g AS (SELECT s, e, sum(CASE WHEN before IS NULL OR s > before THEN 1 ELSE 0 END) OVER (ORDER BY s, e) AS stretch FROM o)
    SELECT sum(hi - lo) FROM (SELECT min(s) AS lo, max(e) AS hi FROM g GROUP BY stretch)
"""


@pytest.fixture(scope="module")
def mtia():
    store = Store.open(None)
    ingest([shared_trace("kineto/mtia/mtia_inference_rank0.json.gz")], store)
    return store, build_graph(store)


def test_streams_that_took_turns_keep_their_device_order(mtia):
    """MTIA: 12 streams whose kernels took turns on the device (never two at once: their
    durations sum to their union, 414.1 ms), each stream mostly waiting for its launches.
    Without host time the replay ran them side by side (256.7 ms for a 442.6 ms step; 305.7 ms
    with only the gaps trimmed), which the device never did, and the host-bound finding
    claimed 177.6 ms (40% of the step). The device gets device-order edges, so no prediction
    goes below its kernels' union and the capacity floor need not hold it."""
    store, g = mtia
    union = store.scalar(COMPUTE_UNION_SQL)
    summed = store.scalar("SELECT sum(dur_ns) FROM device_events WHERE kind = 'kernel'")
    assert summed == union and g.stats["serial_devices"] == 1
    windows = analysis_windows(store)  # the device span, as profkit analyze replays it
    for change in ("no-host-overhead", "host-gaps"):
        (t,) = whatif(store, graph=g, changes=[change], windows=windows)["traces"].values()
        assert not t["capacity_bound"] and union <= t["predicted_step_ns"]
        assert 0 < t["saving_ns"] < 0.05 * t["replayed_step_ns"]


def test_capacity_floor_holds_what_the_graph_lets_run_at_once(monkeypatch):
    """The same trace without device-order edges (as for streams that never switched often
    enough to tell): the replay runs the streams at once, and the floor holds each prediction
    at the union of the compute kernels."""
    from profkit import graph_build

    monkeypatch.setattr(graph_build, "SERIAL_DEVICE_MIN_SWITCHES", 1 << 40)
    store = Store.open(None)
    ingest([shared_trace("kineto/mtia/mtia_inference_rank0.json.gz")], store)
    g = build_graph(store)
    assert "serial_devices" not in g.stats or g.stats["serial_devices"] == 0
    union = store.scalar(COMPUTE_UNION_SQL)
    windows = analysis_windows(store)
    for change in ("no-host-overhead", "host-gaps"):
        (t,) = whatif(store, graph=g, changes=[change], windows=windows)["traces"].values()
        assert t["capacity_bound"] and t["replayed_with_changes_ns"] < 0.8 * union
        assert abs(t["predicted_step_ns"] - union) <= 1_000 and t["capacity_floor_ns"] == t["predicted_step_ns"]
        assert t["saving_ns"] == t["replayed_step_ns"] - t["predicted_step_ns"] < 0.07 * t["replayed_step_ns"]


def test_capacity_floor_scales_with_the_kernels_it_speeds_up(mtia):
    store, g = mtia
    union = store.scalar(COMPUTE_UNION_SQL)
    summed, merge = store.con.execute("""SELECT sum(dur_ns), sum(dur_ns) FILTER (WHERE name = 'merge')
                                     FROM device_events WHERE kind = 'kernel'""").fetchone()
    (t,) = whatif(store, graph=g, changes=["speedup-kernel:merge=2"])["traces"].values()
    expected = union * (summed - merge / 2) / summed
    assert abs(t["capacity_floor_ns"] - expected) <= 1e-6 * expected + 1_000
    # the floor is never above the replay without changes
    (t,) = whatif(store, graph=g, changes=["speedup-kernel:merge=1"])["traces"].values()
    assert t["capacity_floor_ns"] <= t["replayed_step_ns"] and t["saving_ns"] == 0


def test_a_floor_that_does_not_bind_changes_nothing(synthetic):
    store, g, _ = synthetic
    for t in whatif(store, graph=g, changes=["no-sync"])["traces"].values():
        assert not t["capacity_bound"] and "replayed_with_changes_ns" not in t
        assert t["capacity_floor_ns"] <= t["predicted_step_ns"]


def test_analyze_prices_a_rank_s_finding_as_profkit_whatif_does():
    """Ranks analysed together replay with every rank's step windows, the ones `profkit
    whatif` reads: on the 2-GPU torchrun capture the flash-attention hotspot of rank 1 was
    priced at 261,345 ns per step by analyze (rank 0 replayed whole) and 263,140 ns by
    whatif. One windows dict for all ranks also lets a what-if's replay serve every rank."""
    from profkit import analyses

    store = Store.open(None)
    ingest([shared_trace("nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite")], store)
    result = analyses.analyze(store)
    hotspots = [f for f in result["findings"] if f["rule"] == "kernels.hotspot" and f["scope"]["rank"] == 1
                and "replay_saving_if_2x_faster_ns_per_step" in f["evidence"]]
    assert hotspots
    for f in hotspots:
        trace_id = f["scope"]["trace_id"]
        kernel = store.scalar("""SELECT name FROM kernels WHERE trace_id = ? GROUP BY name
                                 ORDER BY sum(dur_ns) DESC LIMIT 1""", [trace_id])
        priced = whatif(store, changes=[{"kind": "speedup", "kernel": kernel, "factor": 2.0}],
                        windows=analysis_windows(store))["traces"][trace_id]["saving_ns"]
        assert f["evidence"]["replay_saving_if_2x_faster_ns_per_step"] == priced == 263_140


def test_scaled_is_exact_past_int64_products():
    from profkit.whatif import scaled

    values = np.array([10**12, 7, 3 * 10**9], np.int64)
    now = np.array([9 * 10**9, 5, 2 * 10**9], np.int64)    # 10**12 * 9e9 passes int64
    before = np.array([10**10, 3, 4 * 10**9], np.int64)
    expected = [int(v) * int(n) // int(b) for v, n, b in zip(values, now, before)]
    assert scaled(values, now, before).tolist() == expected
    assert scaled(values[1:], now[1:], before[1:]).tolist() == expected[1:]  # products fit: numpy
