"""The dependency graph: edges checked against the raw trace, replay reproduces a complete
trace, graph launches, networkx export."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from profkit.graph import build_graph, critical_path_report, replay, to_networkx
from profkit.graph_model import E_DURATION, E_LAUNCH, E_STREAM, E_SYNC
from profkit.ingest import ingest
from profkit.store import Store

from conftest import shared_trace


def _store(path):
    store = Store.open(None)
    ingest([path], store)
    return store


def _raw(path):
    with gzip.open(path) as fh:
        return json.load(fh)["traceEvents"]


@pytest.fixture(scope="module")
def alexnet():
    path = shared_trace("kineto/cuda/a100_alexnet_train.json.gz")
    store = _store(path)
    return path, store, build_graph(store)


def test_launch_and_duration_edges_match_raw_trace(alexnet):
    path, _, g = alexnet
    raw = _raw(path)
    device = [e for e in raw if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    runtime_corr = {e["args"]["correlation"] for e in raw if e.get("cat") == "cuda_runtime"}
    launched = [e for e in device if e["args"].get("correlation") in runtime_corr]
    assert int((g.ekind == E_DURATION).sum()) == len(device)
    assert int((g.ekind == E_LAUNCH).sum()) == len(launched)
    # stream edges: one fewer than activities per stream
    per_stream = {}
    for e in device:
        per_stream[e["args"]["stream"]] = per_stream.get(e["args"]["stream"], 0) + 1
    assert int((g.ekind == E_STREAM).sum()) == sum(n - 1 for n in per_stream.values())
    # durations are the raw durations (us -> ns)
    dur = np.sort(g.weight[g.ekind == E_DURATION])
    assert dur.tolist() == sorted(int(round(e["dur"] * 1000)) for e in device)


def test_edges_run_forward_and_replay_reproduces_complete_trace(alexnet):
    _, _, g = alexnet
    assert np.all(g.pos[g.src] < g.pos[g.dst])
    assert np.all(g.vtime[g.src] + g.weight <= g.vtime[g.dst])   # observed times satisfy every edge
    sched = replay(g)
    # every device activity starts exactly when observed: launches, stream order and
    # syncs explain all of them
    dev = np.flatnonzero(g.is_device)
    assert np.array_equal(sched.time[2 * dev], g.vtime[2 * dev])
    assert sched.time.max() == g.vtime.max()


def test_clock_offsets_put_each_trace_on_the_common_clock():
    """Two ranks of one trace, the second's clock set 5 ms back: the graph's times are
    each trace's own plus its offset, and the graph is otherwise the same."""
    path = shared_trace("kineto/cuda/a100_alexnet_train.json.gz")
    store = Store.open(None)
    ingest([path, path], store)  # the same file twice: two traces with equal events
    before = build_graph(store)
    store.con.execute("UPDATE traces SET clock_offset_ns = -5000000 WHERE trace_id = 1")
    after = build_graph(store)
    shift = np.where(after.trace_id == 1, -5_000_000, 0)
    assert np.array_equal(after.event_id, before.event_id)
    assert np.array_equal(after.start, before.start + shift)
    assert np.array_equal(after.end, before.end + shift)
    assert np.array_equal(np.sort(after.weight), np.sort(before.weight))


def test_sync_waits_from_cuda_sync_events(alexnet):
    path, _, g = alexnet
    raw = _raw(path)
    blocking = [e for e in raw if e.get("cat") == "cuda_runtime"
                and e["name"] in ("cudaStreamSynchronize", "cudaDeviceSynchronize")]
    # each blocking call that had device work before it gets one sync edge
    n_sync = int((g.ekind == E_SYNC).sum())
    assert 0 < n_sync <= len(blocking) + sum(1 for e in raw if e.get("cat") == "cuda_runtime" and "Memcpy" in e["name"])
    assert np.all(g.weight[g.ekind == E_SYNC] >= 0)


def test_graph_launch_many_kernels_per_call():
    path = shared_trace("kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz")
    raw = _raw(path)
    graph_calls = {e["args"]["correlation"] for e in raw if e.get("cat") == "cuda_runtime"
                   and e["name"] == "hipGraphLaunch"}
    graph_kernels = [e for e in raw if e.get("cat") == "kernel" and e["args"].get("correlation") in graph_calls]
    assert len(graph_kernels) > len(graph_calls) > 0
    store = _store(path)
    g = build_graph(store)
    launch_src = g.src[g.ekind == E_LAUNCH] // 2
    names = g.name[launch_src]
    assert int((names == "hipGraphLaunch").sum()) == len(graph_kernels)
    sched = replay(g)
    assert sched.time.max() == g.vtime.max()


def test_to_networkx_keeps_parallel_edges(alexnet):
    _, _, g = alexnet
    nxg = to_networkx(g)
    assert nxg.number_of_nodes() == g.n_vertices
    assert nxg.number_of_edges() == g.n_edges
    assert sum(w for _, _, w in nxg.edges(data="weight")) == int(g.weight.sum())


def test_compiled_replay_equals_python_loop():
    """The numba loop (used for large graphs) and the Python loop give the same schedule,
    with the graph's weights and with a what-if's (NEG weights included)."""
    from profkit.graph_replay import _loop, _replay
    from profkit.whatif import apply_changes

    store = _store(shared_trace("kineto/cuda/a100_nccl_rank0_of2.json.gz"))
    g = build_graph(store)
    assert _loop("longest_path", g, compiled=True) is not None, "numba is a dependency: the compiled loop must import"
    for w in (g.weight, apply_changes(g, [{"kind": "no_sync"}, {"kind": "no_host_overhead"}])):
        py, jit = _replay(g, w, compiled=False), _replay(g, w, compiled=True)
        assert np.array_equal(py.time, jit.time) and np.array_equal(py.via, jit.via)


def test_compiled_critical_path_equals_python(monkeypatch):
    """The whole critical-path report is the same with the compiled loops and without."""
    from profkit import graph_replay
    from profkit.graph import critical_path_report

    store = _store(shared_trace("kineto/cuda/a100_nccl_rank0_of2.json.gz"))
    reports = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(graph_replay, "COMPILED_MIN_WORK", threshold)
        monkeypatch.setattr(graph_replay, "PRELOAD_MIN_WORK", threshold)
        reports.append(critical_path_report(store, store.trace_ids()[0], graph=build_graph(store)))
    assert reports[0]["available"] and reports[0] == reports[1]


def test_a_synchronous_copy_follows_the_device_work_before_it():
    """rocprof v1 puts copies (COPY lane, HIP stream id) and kernels (GPU lane, HSA queue id)
    on different streams; a hipMemcpy still waits for the kernel launched before it. The
    raw file: the device-to-host copy starts a few us after the 332 s kernel ends."""
    path = shared_trace("rocprof/v1_mi300x_bmm")
    raw = [e for e in json.load(open(f"{path}/results.json"))["traceEvents"] if e and e.get("ph") == "X"]
    kernel = next(e for e in raw if e["name"].startswith("batched_matrix_multiplication"))
    copy = next(e for e in raw if e["name"] == "CopyDeviceToHost")
    gap = int(copy["args"]["BeginNs"]) - int(kernel["args"]["EndNs"])
    assert 0 < gap < 10_000 and int(kernel["args"]["EndNs"]) - int(kernel["args"]["BeginNs"]) > 300e9
    store = _store(path)
    g = build_graph(store)
    assert g.stats["synchronous_copy_waits"] == 1
    ids = store.rows("SELECT name, event_id FROM events WHERE kind IN ('kernel', 'memcpy')")
    kernel_id = next(r["event_id"] for r in ids if r["name"].startswith("batched"))
    copy_id = next(r["event_id"] for r in ids if r["name"] == "CopyDeviceToHost")
    k, c = (int(np.flatnonzero(g.event_id == i)[0]) for i in (kernel_id, copy_id))
    edge = (g.ekind == E_STREAM) & (g.src == 2 * k + 1) & (g.dst == 2 * c)
    assert int(g.weight[edge][0]) == gap
    cp = critical_path_report(store, 0, g)
    # The path runs through the kernel, not a 332 s "wait" on the copy's launch.
    assert cp["attribution"]["compute"] > 0.99 * cp["length_ns"]
    assert cp["attribution_detail"]["wait"] < 0.001 * cp["length_ns"]


def test_kernels_queued_before_the_capture_are_what_a_sync_waits_for():
    """H100 Qwen: the step opens with a cudaDeviceSynchronize that waits 14 ms for 509 kernels
    whose launch calls precede the capture (correlation ids below the sync's, no runtime
    record). Their correlation ids put their launch before the call, so the sync waits for
    the last of them, not for a recorded kernel that ended 14 ms before the call returned."""
    path = shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    raw = _raw(path)
    sync = next(e for e in raw if e.get("name") == "cudaDeviceSynchronize" and e["dur"] > 10_000)
    runtime_corr = {e["args"]["correlation"] for e in raw if e.get("cat") == "cuda_runtime"}
    queued = [e for e in raw if e.get("cat") == "kernel" and e["args"]["correlation"] not in runtime_corr
              and e["args"]["correlation"] < sync["args"]["correlation"]]
    assert len(queued) > 400
    last = max(queued, key=lambda e: e["ts"] + e["dur"])
    sync_end = sync["ts"] + sync["dur"]
    assert 0 <= sync_end - (last["ts"] + last["dur"]) < 20  # us: it returned as the last one ended
    store = _store(path)
    g = build_graph(store)
    assert g.stats["launch_times_from_correlation"] > 400
    (call,) = [i for i in np.flatnonzero(g.name == "cudaDeviceSynchronize") if g.end[i] - g.start[i] > 10e6]
    (edge,) = np.flatnonzero((g.ekind == E_SYNC) & (g.dst == 2 * call + 1))
    assert g.weight[edge] < 20_000  # the return latency, not 14 ms
    cp = critical_path_report(store, 0, g)
    assert cp["attribution"]["sync"] < 0.01 * cp["length_ns"] < cp["attribution"]["compute"]


def test_a_device_sync_waits_for_work_its_clock_shows_ending_just_after_it():
    """MI300X Qwen: the last kernel before the first hipDeviceSynchronize ends 7.5 us after
    the call returns (device and host clocks). The sync still waits for the device's work:
    an edge from the kernel before it, which ended by the return, keeps the replay exact."""
    store = _store(shared_trace("kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz"))
    g = build_graph(store)
    calls = np.flatnonzero(g.name == "hipDeviceSynchronize")
    synced = {int(g.dst[e]) // 2 for e in np.flatnonzero(g.ekind == E_SYNC)}
    assert set(calls.tolist()) <= synced
    cp = critical_path_report(store, 0, g)
    assert abs(cp["replay_error_pct"]) < 0.1
    assert cp["attribution"]["sync"] < 0.01 * cp["length_ns"]


@pytest.mark.parametrize("trace", ["kineto/cuda/a100_alexnet_train.json.gz", "nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite"])
def test_thread_codes_from_the_lanes_equal_a_grouping_of_their_own(trace):
    """The graph's threads reuse the lane codes _load_events grouped the rows by (NULL pids
    apart); they must be what grouping the kept rows by (trace, pid, tid) gives."""
    from profkit.graph_build import _load_events, _thread_codes

    store = _store(shared_trace(trace))
    ev = _load_events(store, store.trace_ids(), {})
    assert "thread" in ev
    reused = _thread_codes(ev)
    grouped = _thread_codes({k: v for k, v in ev.items() if k != "thread"})
    assert np.array_equal(reused[0], grouped[0]) and np.array_equal(reused[1], grouped[1])
    assert reused[0].max() >= 1  # several threads: the numbering is tested, not only one code
    # A negative pid could sort before NULL pids (-1 in `pid`): then the rows are grouped again.
    store.con.execute("UPDATE events SET pid = -pid WHERE pid > 0")
    assert "thread" not in _load_events(store, store.trace_ids(), {})
