"""The breakdown pass: invariants on real traces of every vendor, and its numbers recomputed
here from the raw inputs (JSON, Nsight SQLite, rocpd SQLite) with a plain-Python union."""
from __future__ import annotations

import gzip
import json
import math
import re
import sqlite3
from decimal import Decimal

import pytest

import profkit
from profkit import parsers
from profkit.analyses import analyze_trace

from conftest import shared_trace

KINETO_WITH_DEVICE = [
    "kineto/cuda/a100_alexnet_train.json.gz",
    "kineto/cuda/a100_80gb_rank0_of16.json.gz",
    "kineto/cuda/a100_nccl_rank0_of2.json.gz",
    "kineto/cuda/b200_eager_rank0_of8.json.gz",
    "kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz",
    "kineto/cuda/regression_pair/control_a100_rank3_of8.json.gz",
    "kineto/rocm/mi210_gpu_only.json.gz",
    "kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz",
    "kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz",
    "kineto/mtia/mtia_inference_rank0.json.gz",
]
NSIGHT = "nsys/t4_vectoradd_streams.sqlite"
ROCPD = "rocprof/rocpd_r9700_llamacpp_decode/results.db"


def breakdowns(path) -> list[dict]:
    if parsers.detect(path) is None:
        pytest.skip(f"no parser for {path.name} yet")
    store = profkit.load(path)
    return [analyze_trace(store, tid, passes=("breakdown",))[0]["breakdown"] for tid in store.trace_ids()]


# --- a plain-Python reference, independent of profkit.intervals ------------------------

def union_ns(pairs) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(p for p in pairs if p[1] > p[0]):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0)


def intersection_ns(a, b) -> int:
    return union_ns(a) + union_ns(b) - union_ns(list(a) + list(b))


def us_to_ns(value) -> int:
    # Kineto microseconds carry at most 3 decimals: exact through Decimal.
    return int(value) * 1000 if isinstance(value, int) else int(round(Decimal(repr(value)) * 1000))


def raw_kineto(relative):
    doc = json.load(gzip.open(shared_trace(relative)))
    return [e for e in doc["traceEvents"] if e.get("ph") == "X" and "dur" in e]


DEVICE_CATS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}


def raw_device_events(relative):
    """(kind, name, device, start_ns, end_ns) of every kernel/copy/fill in the JSON."""
    out = []
    for e in raw_kineto(relative):
        kind = DEVICE_CATS.get(e.get("cat"))
        if kind:
            start = us_to_ns(e["ts"])
            out.append((kind, e["name"], (e.get("args") or {}).get("device"), start, start + us_to_ns(e["dur"])))
    return out


def reference(events):
    """profkit's own definitions, recomputed: memory = copies/fills, communication = NCCL/RCCL."""
    def cat(kind, name):
        if kind != "kernel":
            return "memory"
        return "communication" if re.search("nccl|rccl", name, re.I) else "compute"
    spans = [(s, e) for _, _, _, s, e in events]
    by = {c: [(s, e) for k, n, _, s, e in events if cat(k, n) == c] for c in ("compute", "communication", "memory")}
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    busy = union_ns(spans)
    return {"span_ns": span, "busy_ns": busy, "idle_ns": span - busy,
            "compute_ns": union_ns(by["compute"]), "communication_ns": union_ns(by["communication"]),
            "memory_ns": union_ns(by["memory"]),
            "compute_communication_overlap_ns": intersection_ns(by["compute"], by["communication"]),
            "compute_memory_overlap_ns": intersection_ns(by["compute"], by["memory"])}


# --- invariants -----------------------------------------------------------------------

def check_own(p: dict) -> None:
    for key, value in p.items():
        if key.endswith("_ns") and value is not None:
            assert value >= 0, key
    assert p["busy_ns"] <= p["span_ns"]
    assert p["idle_ns"] == p["span_ns"] - p["busy_ns"]
    for part in ("compute_ns", "communication_ns", "memory_ns"):
        assert p[part] <= p["busy_ns"]
    # Inclusion-exclusion: the three categories cover busy time exactly.
    assert p["compute_ns"] + p["communication_ns"] + p["memory_ns"] >= p["busy_ns"]
    assert p["compute_communication_overlap_ns"] <= min(p["compute_ns"], p["communication_ns"])
    assert p["compute_memory_overlap_ns"] <= min(p["compute_ns"], p["memory_ns"])
    assert p["exposed_communication_ns"] == p["communication_ns"] - p["compute_communication_overlap_ns"]
    if p["span_ns"]:
        assert p["idle_pct"] + p["busy_pct"] == pytest.approx(100.0, abs=0.01)


def check_trace(b: dict) -> None:
    # HTA definitions at the top level: the parts sum to the span.
    for key in ("span_ns", "busy_ns", "idle_ns", "compute_ns", "non_compute_ns"):
        assert isinstance(b[key], int) and b[key] >= 0, key
    assert b["busy_ns"] <= b["span_ns"]
    assert b["idle_ns"] == b["span_ns"] - b["busy_ns"]
    assert b["compute_ns"] + b["non_compute_ns"] + b["idle_ns"] == b["span_ns"]
    if b["span_ns"]:
        assert b["idle_pct"] + b["compute_pct"] + b["non_compute_pct"] == pytest.approx(100.0, abs=0.01)
    hta = b["hta"]
    assert hta["communication_ns"] + hta["memory_ns"] + hta["other_ns"] >= b["non_compute_ns"]
    whole = b["all_devices"]
    check_own(whole)
    # Per device: each within the whole, and their events add up.
    assert sum(d["events"] for d in b["devices"]) == whole["events"]
    for d in b["devices"]:
        check_own(d)
        assert whole["start_ns"] <= d["start_ns"] and d["end_ns"] <= whole["end_ns"]
        assert d["busy_ns"] <= whole["busy_ns"] and d["compute_ns"] <= whole["compute_ns"]
    assert sum(d["busy_ns"] for d in b["devices"]) >= whole["busy_ns"]
    json.dumps(b)  # the section is JSON as it stands


@pytest.mark.parametrize("relative", KINETO_WITH_DEVICE + [NSIGHT, ROCPD])
def test_invariants(relative):
    for b in breakdowns(shared_trace(relative)):
        check_trace(b)


def test_cpu_only_trace_cannot_answer():
    """No device activity: no figure is claimed (budgets on it then exit 3, not pass)."""
    (b,) = breakdowns(shared_trace("kineto/cuda/cpu_only_rank34.json.gz"))
    assert b["device_activity"] is False
    assert b["span_ns"] is b["idle_pct"] is b["compute_pct"] is b["non_compute_pct"] is None
    assert b["devices"] == [] and b["all_devices"] is None


# --- numbers recomputed from the raw inputs ---------------------------------------------

@pytest.mark.parametrize("relative", [
    "kineto/cuda/a100_alexnet_train.json.gz",
    "kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz",
    "kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz",
])
def test_own_numbers_match_raw_json(relative):
    events = raw_device_events(relative)
    (b,) = breakdowns(shared_trace(relative))
    expected = reference(events)
    for key, value in expected.items():
        assert b["all_devices"][key] == value, key
    # The id the records carry: the device's node id where the store renumbered it (ROCm).
    raw_id = {r["device"]: r["raw"] for r in profkit.load(shared_trace(relative)).rows(
        "SELECT device, coalesce(node_id, device) AS raw FROM devices")}
    raw_devices = sorted({d for _, _, d, _, _ in events})
    assert [raw_id.get(d["device"], d["device"]) for d in b["devices"]] == raw_devices
    for d in b["devices"]:
        mine = reference([e for e in events if e[2] == raw_id.get(d["device"], d["device"])])
        assert {k: d[k] for k in mine} == mine


def test_hta_view_of_alexnet_from_raw_json():
    """Integer-microsecond trace without ProfilerStep: HTA's view is every event with a
    stream (kernels, copies, fills and the cuda_sync records), compute = kernels."""
    rows = [e for e in raw_kineto("kineto/cuda/a100_alexnet_train.json.gz")
            if (e.get("args") or {}).get("stream", -1) != -1]
    assert {e["cat"] for e in rows} == {"kernel", "gpu_memcpy", "gpu_memset", "cuda_sync"}
    spans = [(e["ts"] * 1000, (e["ts"] + e["dur"]) * 1000) for e in rows]
    compute = [(s, e) for (s, e), r in zip(spans, rows) if r["cat"] == "kernel"]
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    (b,) = breakdowns(shared_trace("kineto/cuda/a100_alexnet_train.json.gz"))
    assert b["span_ns"] == span
    assert b["busy_ns"] == union_ns(spans)
    assert b["compute_ns"] == union_ns(compute)
    assert b["non_compute_ns"] == union_ns(spans) - union_ns(compute)
    assert b["hta"]["last_step_excluded"] is False
    # The sync records make HTA's busy time larger than the kernels/copies/fills alone.
    assert b["busy_ns"] > b["all_devices"]["busy_ns"]


def test_hta_view_rounds_to_whole_microseconds():
    """h100_qwen has nanosecond-resolution float timestamps and one ProfilerStep: HTA's view
    rounds each event inward to whole microseconds, so busy time shrinks."""
    rows = [e for e in raw_kineto("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
            if (e.get("args") or {}).get("stream", -1) != -1]
    spans = [(math.ceil(e["ts"]) * 1000, math.floor(e["ts"] + e["dur"]) * 1000) for e in rows]
    compute = [p for p, e in zip(spans, rows) if e["cat"] == "kernel" and "Memcpy" not in e["name"]]
    (b,) = breakdowns(shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz"))
    assert b["busy_ns"] == union_ns(spans)
    assert b["compute_ns"] == union_ns(compute)
    assert b["busy_ns"] < b["all_devices"]["busy_ns"]
    assert b["idle_pct"] > b["all_devices"]["idle_pct"] + 3  # 11.4% vs 8.1%


def test_hta_window_drops_last_profiler_step():
    """a100_80gb has 5 ProfilerSteps: HTA's view ends before the last step's kernels."""
    relative = "kineto/cuda/a100_80gb_rank0_of16.json.gz"
    raw = raw_kineto(relative)
    steps = sorted(us_to_ns(e["ts"]) for e in raw
                   if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#"))
    last = steps[-1]
    launched_before = {e["args"]["correlation"] for e in raw
                       if e.get("cat") in ("cuda_runtime", "cuda_driver") and us_to_ns(e["ts"]) < last}
    kept = [(us_to_ns(e["ts"]), us_to_ns(e["ts"]) + us_to_ns(e["dur"])) for e in raw
            if e.get("cat") in DEVICE_CATS and e["args"].get("correlation") in launched_before]
    (b,) = breakdowns(shared_trace(relative))
    assert b["hta"]["last_step_excluded"] and b["hta"]["last_step_start_ns"] == last
    assert b["busy_ns"] == union_ns(kept)
    assert b["span_ns"] == max(e for _, e in kept) - min(s for s, _ in kept)
    assert b["span_ns"] < b["all_devices"]["span_ns"]


def test_nsight_numbers_match_sqlite():
    path = shared_trace(NSIGHT)
    bs = breakdowns(path)
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    rows = []
    for table in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"):
        if table in tables:
            rows += [(table, *r) for r in con.execute(f"SELECT deviceId, start, [end] FROM {table}")]
    spans = [(s, e) for _, _, s, e in rows]
    kernels = [(s, e) for t, _, s, e in rows if t.endswith("KERNEL")]
    whole = bs[0]["all_devices"] if len(bs) == 1 else None
    assert whole is not None
    assert whole["events"] == len(rows)
    assert whole["busy_ns"] == union_ns(spans)
    assert whole["span_ns"] == max(e for _, e in spans) - min(s for s, _ in spans)
    assert whole["compute_ns"] == union_ns(kernels)
    assert whole["memory_ns"] == union_ns([(s, e) for t, _, s, e in rows if not t.endswith("KERNEL")])
    # Copies on other streams overlap the kernels: the overlap is the intersection.
    assert whole["compute_memory_overlap_ns"] == intersection_ns(
        kernels, [(s, e) for t, _, s, e in rows if not t.endswith("KERNEL")])


def test_rocpd_llamacpp_is_about_19_percent_busy():
    path = shared_trace(ROCPD)
    (b,) = breakdowns(path)
    con = sqlite3.connect(path)
    spans = list(con.execute("SELECT start, [end] FROM rocpd_kernel_dispatch"))
    spans += list(con.execute("SELECT start, [end] FROM rocpd_memory_copy"))
    whole = b["all_devices"]
    assert whole["events"] == len(spans)
    assert whole["busy_ns"] == union_ns(spans)
    assert whole["span_ns"] == max(e for _, e in spans) - min(s for s, _ in spans)
    assert 17.0 < whole["busy_pct"] < 21.0  # README: GPU busy about 19% (launch-bound)
