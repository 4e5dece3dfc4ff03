"""The synthetic decode-trace generator: deterministic, Kineto-shaped, and every size in
its manifest is what the events show when measured independently here."""
from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import shared_trace
from profkit import synthetic

STEPS = 6  # fewer than the shipped sample: the same code paths, faster


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_decode_trace(out, ranks=4, steps=STEPS, seed=7)
    return out


def load(outdir: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((outdir / "manifest.json").read_text())
    docs = [json.loads(gzip.decompress((outdir / name).read_bytes())) for name in sorted(manifest["files"])]
    return manifest, docs


def ns(value: float) -> int:
    return round(value * 1000)


class Rank:
    """One rank's trace, read straight from the JSON, times in integer ns."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.rank = doc["distributedInfo"]["rank"]
        xs = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
        for e in xs:
            e["start"], e["end"] = ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])
        self.steps = sorted((e for e in xs if e["name"].startswith("ProfilerStep#")), key=lambda e: e["start"])
        self.host = [e for e in xs if e["cat"] in ("cpu_op", "cuda_runtime", "user_annotation")]
        self.runtime = {e["args"]["correlation"]: e for e in xs if e["cat"] == "cuda_runtime"}
        self.stream7 = sorted((e for e in xs if e["cat"] in ("kernel", "gpu_memcpy") and e["tid"] == 7),
                              key=lambda e: e["start"])
        self.nccl = sorted((e for e in xs if e["cat"] == "kernel" and e["tid"] == 20), key=lambda e: e["start"])
        self.busy = [(e["start"], e["end"]) for e in self.stream7]

    def step_of(self, device_event: dict) -> int:
        """The step whose ProfilerStep window holds the launch call of a device event."""
        launch = self.runtime[device_event["args"]["correlation"]]["start"]
        return next(i for i, s in enumerate(self.steps) if s["start"] <= launch < s["end"])

    def uncovered(self, lo: int, hi: int) -> int:
        covered = sum(max(0, min(hi, e) - max(lo, s)) for s, e in self.busy if s < hi and e > lo)
        return hi - lo - covered


def entry(manifest: dict, key: str) -> dict:
    return next(b for b in manifest["bottlenecks"] if b["bottleneck"] == key)


@pytest.fixture(scope="module")
def traces(generated):
    manifest, docs = load(generated)
    return manifest, [Rank(d) for d in docs]


# --- determinism --------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, generated):
    synthetic.generate_decode_trace(tmp_path / "again", ranks=4, steps=STEPS, seed=7)
    synthetic.generate_decode_trace(tmp_path / "other", ranks=4, steps=STEPS, seed=8)
    names = sorted(p.name for p in generated.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (generated / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert (generated / "synthetic_llm_decode_rank0.json.gz").read_bytes() != \
        (tmp_path / "other" / "synthetic_llm_decode_rank0.json.gz").read_bytes()


def test_cli_writes_what_the_function_writes(tmp_path, generated, capsys):
    assert synthetic.main([str(tmp_path), "--ranks", "4", "--steps", str(STEPS), "--seed", "7"]) == 0
    for path in generated.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    assert "comm.rank_skew" in capsys.readouterr().out


# --- structure ----------------------------------------------------------------------

def test_top_level_like_a_real_multi_gpu_kineto_trace(traces):
    manifest, ranks = traces
    assert [r.rank for r in ranks] == [0, 1, 2, 3]
    for r in ranks:
        doc = r.doc
        for key in ("schemaVersion", "deviceProperties", "distributedInfo", "baseTimeNanoseconds",
                    "traceName", "traceEvents", "displayTimeUnit"):
            assert key in doc, key
        assert [d["id"] for d in doc["deviceProperties"]] == [0, 1, 2, 3]
        assert {(d["name"], d["numSms"], d["computeMajor"]) for d in doc["deviceProperties"]} == \
            {("NVIDIA H100 80GB HBM3", 132, 9)}
        info = doc["distributedInfo"]
        assert (info["backend"], info["world_size"]) == ("nccl", 4)
        assert [g["ranks"] for g in info["pg_config"]] == [[0, 1, 2, 3], [0, 1, 2, 3]]
        assert "SYNTHETIC" in doc["synthetic"]
        assert len({d["baseTimeNanoseconds"] for d in (ranks[0].doc, doc)}) == 1  # one clock
        assert [s["name"] for s in r.steps] == [f"ProfilerStep#{i}" for i in range(STEPS)]


def test_every_device_event_has_its_launch_and_flow(traces):
    _, ranks = traces
    for r in ranks:
        events = r.doc["traceEvents"]
        flows = defaultdict(dict)
        for e in events:
            if e.get("cat") == "ac2g":
                flows[e["id"]][e["ph"]] = e
        device = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy")]
        assert device
        for e in device:
            args = e["args"]
            assert (e["pid"], args["device"], args["stream"]) == (r.rank, r.rank, e["tid"])
            launch = r.runtime[args["correlation"]]
            assert launch["args"]["External id"] == args["External id"]
            assert e["start"] >= launch["start"]  # never before its launch call
            flow = flows[args["correlation"]]
            assert ns(flow["s"]["ts"]) == launch["start"] and ns(flow["f"]["ts"]) == e["start"]
            if e["cat"] == "kernel":
                for key in ("grid", "block", "registers per thread", "shared memory"):
                    assert key in args
        assert len(flows) == len(device)


def test_streams_never_overlap_and_host_ranges_nest(traces):
    _, ranks = traces
    for r in ranks:
        for lane in (r.stream7, r.nccl):
            assert all(a["end"] <= b["start"] for a, b in zip(lane, lane[1:]))
        stack: list[dict] = []
        for e in sorted(r.host, key=lambda e: (e["start"], -e["end"])):
            while stack and stack[-1]["end"] <= e["start"]:
                stack.pop()
            assert not stack or e["end"] <= stack[-1]["end"], (stack[-1]["name"], e["name"])
            stack.append(e)


def test_nccl_kernels_carry_the_args_real_traces_have(traces):
    _, ranks = traces
    real = json.loads(gzip.decompress(shared_trace("kineto/cuda/a100_nccl_rank0_of2.json.gz").read_bytes()))
    real_nccl = next(e for e in real["traceEvents"] if e.get("cat") == "kernel" and "nccl" in e["name"])
    for r in ranks:
        for e in r.nccl:
            assert set(real_nccl["args"]) <= set(e["args"])
            assert e["args"]["Process Group Ranks"] == "[0, 1, 2, 3]" and e["args"]["Group size"] == 4
            assert e["name"].startswith("ncclDevKernel_AllReduce")


def test_kernel_names_per_category(traces):
    _, ranks = traces
    names = {e["name"] for e in ranks[0].stream7}
    assert any(n.startswith("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize") for n in names)
    assert any("flash_fwd_splitkv_kernel<" in n for n in names)
    assert any("vllm::rms_norm_kernel<" in n for n in names)
    assert any("at::native::vectorized_elementwise_kernel<4," in n for n in names)
    assert any(n == "Memcpy DtoH (Device -> Pinned)" for n in names)


# --- the manifest's sizes, measured from the events ---------------------------------

def test_manifest_lists_four_bottlenecks_in_descending_size(traces):
    manifest, _ = traces
    sizes = [b["size_ns_per_step"] for b in manifest["bottlenecks"]]
    assert [b["bottleneck"] for b in manifest["bottlenecks"]] == ["sync", "host_gaps", "exposed_allreduce", "straggler"]
    assert all(a > 1.3 * b for a, b in zip(sizes, sizes[1:])), sizes  # clearly different
    assert [b["size_rank"] for b in manifest["bottlenecks"]] == [1, 2, 3, 4]
    scopes = {b["bottleneck"]: b["scope"] for b in manifest["bottlenecks"]}
    assert scopes["straggler"]["ranks"] == [entry(manifest, "straggler")["rank"]]
    assert scopes["straggler"]["waiting_ranks"] == [r for r in range(4) if r != entry(manifest, "straggler")["rank"]]
    assert (scopes["host_gaps"]["stream"], scopes["exposed_allreduce"]["stream"]) == (7, 20)
    assert scopes["sync"]["steps"] == list(range(1, STEPS))


def test_sync_bubble_and_host_wait(traces):
    manifest, ranks = traces
    bubbles, waits = [], []
    for r in ranks:
        by_step = defaultdict(list)
        for e in r.stream7:
            by_step[r.step_of(e)].append(e)
        for k in range(1, STEPS):
            bubbles.append(by_step[k][0]["start"] - by_step[k - 1][-1]["end"])
        syncs = [e for e in r.host if e["name"] == "cudaStreamSynchronize"]
        assert len(syncs) == STEPS
        assert all(any(s["start"] >= p["start"] and s["end"] <= p["end"] for p in r.host
                       if p["name"] == "aten::_local_scalar_dense") for s in syncs)
        waits += [e["end"] - e["start"] for e in syncs]
        # the sync returns only after the stream drained
        for s in syncs:
            step = next(i for i, p in enumerate(r.steps) if p["start"] <= s["start"] < p["end"])
            assert s["end"] >= by_step[step][-1]["end"]
    sync = entry(manifest, "sync")
    assert abs(sync["size_ns_per_step"] - sum(bubbles) / len(bubbles)) <= 1
    assert abs(sync["sync_host_wait_ns_per_step"] - sum(waits) / len(waits)) <= 1


def test_exposed_allreduce_is_not_overlapped(traces):
    manifest, ranks = traces
    logits = [[e for e in r.nccl if e["args"]["dtype"] == "Float"] for r in ranks]
    assert all(len(x) == STEPS for x in logits)
    transfer = []
    for k in range(STEPS):
        last = max(x[k]["start"] for x in logits)
        for r, x in zip(ranks, logits):
            e = x[k]
            exposed = r.uncovered(e["start"], e["end"])
            assert exposed == e["end"] - e["start"]  # nothing on the compute stream overlaps it
            transfer.append(exposed - (last - e["start"]))
    assert abs(entry(manifest, "exposed_allreduce")["size_ns_per_step"] - sum(transfer) / len(transfer)) <= 1
    assert abs(sum(transfer) / len(transfer) - entry(manifest, "exposed_allreduce")["params"]["exposed_allreduce_ns"]) \
        < 0.05 * entry(manifest, "exposed_allreduce")["params"]["exposed_allreduce_ns"]


def test_straggler_arrives_last_and_others_wait(traces):
    manifest, ranks = traces
    straggler = entry(manifest, "straggler")
    slow = straggler["rank"]
    count = len(ranks[0].nccl)
    assert all(len(r.nccl) == count for r in ranks)
    ends = {(i, r.nccl[i]["end"]) for r in ranks for i in range(count)}
    assert len(ends) == count  # each collective ends at one time on every rank
    last_arrivals = [max(r.nccl[i]["start"] for r in ranks) for i in range(count)]
    latest = [max(ranks, key=lambda r: r.nccl[i]["start"]).rank for i in range(count)]
    # Early in a step the host is behind (launch gaps) and host jitter decides who is
    # last; once the GPUs lead, the slow rank is last every time.
    assert latest.count(slow) > 0.7 * count
    assert all(latest.count(r.rank) < 0.15 * count for r in ranks if r.rank != slow)
    exposed, total = [], []
    for r in ranks:
        if r.rank == slow:
            continue
        per_step_exposed, per_step_total = defaultdict(int), defaultdict(int)
        for i, e in enumerate(r.nccl):
            step = r.step_of(e)
            per_step_total[step] += last_arrivals[i] - e["start"]
            per_step_exposed[step] += r.uncovered(e["start"], last_arrivals[i])
        exposed += [per_step_exposed[k] for k in range(STEPS)]
        total += [per_step_total[k] for k in range(STEPS)]
    assert abs(straggler["size_ns_per_step"] - sum(exposed) / len(exposed)) <= 1
    assert abs(straggler["wait_inside_collectives_ns_per_step"] - sum(total) / len(total)) <= 1
    # its compute kernels are slower by the stated factor
    def gemm_mean(r):
        durs = [e["end"] - e["start"] for e in r.stream7 if "tilesize128x128x64" in e["name"]]
        return sum(durs) / len(durs)
    ratio = gemm_mean(ranks[slow]) / gemm_mean(ranks[0])
    assert abs(ratio - straggler["params"]["straggler_slowdown"]) < 0.02


def test_host_gaps_leave_the_stream_idle(traces):
    manifest, ranks = traces
    gaps = entry(manifest, "host_gaps")
    threshold = gaps["params"]["host_gap_ns"] / 2
    idle_per_step, gapped_per_step = [], []
    for r in ranks:
        cpu = sorted((e for e in r.host if e["cat"] == "cpu_op"), key=lambda e: (e["start"], -e["end"]))
        top = [e for e in cpu if not any(o["start"] <= e["start"] and e["end"] <= o["end"] and o is not e for o in cpu)]
        loose_runtime = [e for e in r.host if e["cat"] == "cuda_runtime"
                         and not any(o["start"] <= e["start"] and e["end"] <= o["end"] for o in top)]
        items = sorted(top + loose_runtime, key=lambda e: e["start"])
        position = {id(e): i for i, e in enumerate(r.stream7)}
        idle, gapped = defaultdict(int), defaultdict(int)
        for prev, op in zip(items, items[1:]):
            if op["cat"] != "cpu_op" or op["start"] - prev["end"] < threshold:
                continue
            launches = sorted((e for e in r.runtime.values() if e["name"] == "cudaLaunchKernel"
                               and op["start"] <= e["start"] and e["end"] <= op["end"]), key=lambda e: e["start"])
            if not launches:
                continue
            kernel = next(e for e in r.stream7 if e["args"]["correlation"] == launches[0]["args"]["correlation"])
            before = r.stream7[position[id(kernel)] - 1]
            step = r.step_of(kernel)
            gapped[step] += 1
            if launches[0]["start"] > before["end"]:
                idle[step] += kernel["start"] - before["end"]
        idle_per_step += [idle[k] for k in range(STEPS)]
        gapped_per_step += [gapped[k] for k in range(STEPS)]
    assert set(gapped_per_step) == {gaps["params"]["host_gap_ops"]}
    assert abs(gaps["size_ns_per_step"] - sum(idle_per_step) / len(idle_per_step)) <= 1


def test_step_time_in_manifest_is_the_traces_step_period(traces):
    manifest, ranks = traces
    periods = []
    for r in ranks:
        firsts = {}
        for e in r.stream7:
            firsts.setdefault(r.step_of(e), e["start"])
        periods += [firsts[k + 1] - firsts[k] for k in range(STEPS - 1)]
    assert abs(manifest["step_time_ns"] - sum(periods) / len(periods)) <= 1


@pytest.mark.parametrize("knob", ["sync", "host_gaps", "exposed_allreduce", "straggler"])
def test_switching_one_bottleneck_off(tmp_path, traces, knob):
    manifest, _ = traces
    flag = "--no-" + knob.replace("_", "-")
    synthetic.main([str(tmp_path), "--ranks", "4", "--steps", str(STEPS), "--seed", "7", flag])
    without, docs = load(tmp_path)
    assert knob not in [b["bottleneck"] for b in without["bottlenecks"]]
    assert len(without["bottlenecks"]) == 3
    assert without["step_time_ns"] == entry(manifest, knob)["step_time_without_ns"]
    assert without["step_time_ns"] < manifest["step_time_ns"]
    events = [e for d in docs for e in d["traceEvents"]]
    if knob == "sync":
        assert not any(e.get("name") == "cudaStreamSynchronize" for e in events)
    if knob == "exposed_allreduce":
        assert not any(e.get("cat") == "kernel" and e["args"].get("dtype") == "Float" for e in events)
