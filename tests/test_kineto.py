"""Kineto parser against every real Kineto trace, each checked against the raw JSON
read independently here (json.loads(strict=False) with exact decimals)."""
from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import REPO, SHARED_TRACES, shared_trace
from profkit.ingest import ingest
from profkit.store import Store

KINETO = SHARED_TRACES / "kineto"
FILES = sorted(str(p.relative_to(SHARED_TRACES)) for p in KINETO.rglob("*.json.gz")) if KINETO.exists() else []
DEVICE_LANE = {"kernel", "memcpy", "memset", "gpu_annotation", "sync"}
KEPT_METADATA = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


@lru_cache(maxsize=None)
def raw(relative: str) -> dict:
    data = shared_trace(relative).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return json.loads(data, strict=False, parse_float=Decimal)


@lru_cache(maxsize=1)
def category_table():
    by_cat, by_name = {}, {}
    with (REPO / "parsers" / "kineto_categories.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            (by_name.__setitem__((row["cat"], row["name"]), row["kind"]) if row["name"]
             else by_cat.__setitem__(row["cat"], row["kind"]))
    return by_cat, by_name


def kind(event: dict) -> str | None:
    by_cat, by_name = category_table()
    cat = event.get("cat") or ""
    return by_name.get((cat, event.get("name"))) or by_cat.get(cat)


def ns(value) -> int:
    return int(round(Decimal(value) * 1000))


def expected(doc: dict) -> dict:
    """What the trace should give: stored events, kept records, kinds, times."""
    stored, kept = [], 0
    for e in doc["traceEvents"]:
        ph = e.get("ph")
        if ph == "M":
            kept += e.get("name") in KEPT_METADATA
        elif ph in ("s", "t", "f", "C"):
            kept += 1
        elif ph in ("X", "i", "I") and kind(e) and "ts" in e and isinstance(e.get("name"), str):
            dur = ns(e["dur"]) if ph == "X" else 0
            if dur >= 0:
                stored.append((kind(e), ns(e["ts"]), dur, e))
    return {"stored": stored, "kept": kept}


@lru_cache(maxsize=None)
def ingested(relative: str) -> Store:
    store = Store.open(None)
    ingest([shared_trace(relative)], store)
    return store


@pytest.mark.parametrize("relative", FILES)
def test_trace_matches_raw_json(relative):
    doc, store = raw(relative), ingested(relative)
    exp = expected(doc)
    trace = store.rows("SELECT * FROM traces")[0]
    records = len(doc["traceEvents"])

    # Every record is accounted for: stored + kept elsewhere + issues.
    assert trace["source_records"] == records
    assert trace["event_count"] == len(exp["stored"])
    assert trace["event_count"] + exp["kept"] + trace["issue_count"] == records
    # (notes of what the input lacks are rows with count 0)
    assert (store.scalar("SELECT sum(count) FROM ingest_issues") or 0) == (trace["issue_count"] or 0)

    kinds = dict(store.con.execute("SELECT kind, count(*) FROM events GROUP BY 1").fetchall())
    assert kinds == dict(Counter(k for k, _, _, _ in exp["stored"]))

    # Exact nanoseconds: every start and duration equals the decimal value x 1000.
    got = store.con.execute("SELECT start_ns, dur_ns, end_ns FROM events ORDER BY 1, 2").fetchall()
    want = sorted((s, d, s + d) for _, s, d, _ in exp["stored"])
    assert got == want
    assert (trace["start_ns"], trace["end_ns"]) == (want[0][0], max(w[2] for w in want))
    kernel_ns = sum(d for k, _, d, _ in exp["stored"] if k == "kernel")
    assert (store.scalar("SELECT sum(dur_ns) FROM events WHERE kind = 'kernel'") or 0) == kernel_ns

    # Device events sit on device lanes; host events on threads.
    assert store.scalar(f"SELECT count(*) FROM events WHERE kind IN {tuple(DEVICE_LANE)} "
                        "AND (tid IS NOT NULL OR pid IS NOT NULL OR device IS NULL)") == 0
    assert store.scalar(f"SELECT count(*) FROM events WHERE kind NOT IN {tuple(DEVICE_LANE)} "
                        "AND (tid IS NULL OR pid IS NULL)") == 0

    names = {p.get("name") or None for p in doc.get("deviceProperties") or []}
    assert {r["name"] for r in store.rows("SELECT name FROM devices")} == names
    dist = doc.get("distributedInfo") or {}
    if "rank" in dist:
        assert (trace["rank"], trace["rank_source"]) == (dist["rank"], "distributedInfo")
        assert trace["world_size"] == dist.get("world_size")
    assert trace["base_time_ns"] == (int(doc["baseTimeNanoseconds"]) if "baseTimeNanoseconds" in doc else None)
    assert trace["format_version"] == str(doc["schemaVersion"])
    meta = json.loads(trace["metadata"])
    assert "username" not in meta and not any(k.startswith("tw_") for k in meta)
    for key in ("INFO", "ERROR"):
        if key in doc:
            assert meta[key]["lines"] == len(doc[key])


@pytest.mark.parametrize("directory,ranks", [
    ("kineto/cuda/sampled_2ranks", {"sampled_rank-0.json.gz": 0, "sampled_rank-1.json.gz": 1}),
    ("kineto/cuda/regression_pair", {"control_a100_rank3_of8.json.gz": 3, "test_v100_rank1_of2.json.gz": 1}),
])
def test_directory_gives_one_trace_per_rank(directory, ranks):
    store = Store.open(None)
    ids = ingest([shared_trace(directory)], store)
    assert len(ids) == 2
    rows = store.rows("SELECT path, rank, event_count FROM traces")
    assert {Path(r["path"]).name: r["rank"] for r in rows} == ranks
    for r in rows:
        rel = str(Path(r["path"]).relative_to(SHARED_TRACES.resolve()))
        assert r["event_count"] == len(expected(raw(rel))["stored"])


def test_a_sync_record_on_no_stream_has_stream_minus_one():
    """The A100 AlexNet trace's Context Sync carries args.stream 4294967295 (CUPTI's invalid
    id) where other Kineto traces write -1: stored as -1 either way, as Nsight's are."""
    path = shared_trace("kineto/cuda/a100_alexnet_train.json.gz")
    with gzip.open(path) as fh:
        raw = [e for e in json.load(fh)["traceEvents"] if e.get("cat") == "cuda_sync"]
    none = [e for e in raw if (e.get("args") or {}).get("stream") == 0xFFFFFFFF]
    assert none and all(e["tid"] == -1 for e in none)
    store = Store.open(None)
    ingest([path], store)
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'sync' AND stream = -1") == len(none)
    assert store.scalar("SELECT count(*) FROM events WHERE stream = 4294967295") == 0


def test_exact_ns_where_float_multiply_is_wrong():
    rel = "kineto/cuda/a100_nccl_rank0_of2.json.gz"
    doc = raw(rel)
    exact = [ns(e["ts"]) for e in doc["traceEvents"] if e.get("ph") == "X"]
    naive_wrong = sum(round(float(e["ts"]) * 1000) != ns(e["ts"])
                      for e in doc["traceEvents"] if e.get("ph") == "X")
    stored = {r[0] for r in ingested(rel).con.execute("SELECT start_ns FROM events").fetchall()}
    assert set(exact) <= stored
    # The trace exercises the problem: plain float math is off for some timestamps.
    assert naive_wrong > 0


def test_collectives_from_nccl_metadata():
    rel = "kineto/cuda/a100_nccl_rank0_of2.json.gz"
    doc, store = raw(rel), ingested(rel)
    comm = [e for e in doc["traceEvents"] if e.get("cat") == "kernel" and "Collective name" in e["args"]]
    rows = store.rows("""SELECT c.*, e.correlation FROM collectives c JOIN events e USING (event_id)
                         WHERE c.in_elems IS NOT NULL""")
    assert len(rows) == len(comm)
    by_corr = {r["correlation"]: r for r in rows}
    sizes = {"Float": 4, "BFloat16": 2, "Half": 2, "Long": 8, "Int": 4, "Double": 8, "Byte": 1}
    for e in comm:
        a, r = e["args"], by_corr[e["args"]["correlation"]]
        assert r["group_size"] == a["Group size"] == 2
        assert (r["in_elems"], r["out_elems"], r["dtype"]) == (a["In msg nelems"], a["Out msg nelems"], a["dtype"])
        assert r["bytes"] == a["In msg nelems"] * sizes[a["dtype"]]
        assert json.loads(r["group_ranks"]) == json.loads(a["Process Group Ranks"])
        assert r["process_group_desc"] == a["Process Group Description"]
        expected_op = {"allreduce": "all_reduce", "broadcast": "broadcast"}.get(a["Collective name"])
        if expected_op:
            assert r["op"] == expected_op
    assert "all_reduce" in {r["op"] for r in rows}


def test_copies_direction_and_bytes():
    rel = "kineto/cuda/a100_80gb_rank0_of16.json.gz"
    doc, store = raw(rel), ingested(rel)
    copies = [e for e in doc["traceEvents"] if e.get("cat") in ("gpu_memcpy", "gpu_memset")]
    want = Counter()
    for e in copies:
        if e["cat"] == "gpu_memset":
            want[("memset", None)] += e["args"]["bytes"]
        else:
            direction = e["name"].split()[1]
            src = e["name"].split("(")[1].split("->")[0].strip().lower()
            want[(direction, src)] += e["args"]["bytes"]
    got = Counter()
    for d, src, b in store.con.execute("SELECT direction, src_memory, bytes FROM copies").fetchall():
        got[(d, src)] += b
    assert got == want
    assert ("HtoD", "pinned") in got and ("DtoH", "device") in got
    dst = store.con.execute("SELECT DISTINCT dst_memory FROM copies_view JOIN events USING (event_id) "
                            "WHERE events.name = 'Memcpy DtoH (Device -> Pageable)'").fetchall()
    assert dst == [("pageable",)]


def test_kernel_info_grid_and_block():
    rel = "kineto/cuda/a100_event_sync_multistream.json.gz"
    doc, store = raw(rel), ingested(rel)
    for e in (e for e in doc["traceEvents"] if e.get("cat") == "kernel"):
        a = e["args"]
        row = store.rows("SELECT k.* FROM kernels k WHERE correlation = ?", [a["correlation"]])[0]
        assert [row["grid_x"], row["grid_y"], row["grid_z"]] == a["grid"]
        assert [row["block_x"], row["block_y"], row["block_z"]] == a["block"]
        assert row["registers_per_thread"] == a["registers per thread"]
        assert row["shared_memory_bytes"] == a["shared memory"]
        assert row["occupancy_pct"] == a["est. achieved occupancy %"]
        assert (row["device"], row["stream"]) == (a["device"], a["stream"])


def test_string_pids_get_stable_negative_ids_and_names():
    rel = "kineto/cuda/a100_alexnet_train.json.gz"
    doc, store = raw(rel), ingested(rel)
    span = next(e for e in doc["traceEvents"] if e.get("cat") == "Trace")
    assert isinstance(span["pid"], str)
    row = store.rows("SELECT pid, tid FROM events WHERE source_cat = 'Trace'")[0]
    assert row["pid"] < 0 and row["tid"] < 0
    names = {r["name"] for r in store.rows("SELECT name FROM threads WHERE pid = ?", [row["pid"]])}
    assert span["pid"] in names
    tids = {r["name"] for r in store.rows("SELECT name FROM threads WHERE pid = ? AND tid = ?", [row["pid"], row["tid"]])}
    assert tids == {span["tid"]}
    # The same string maps to the same id in another trace.
    other = ingested("kineto/cuda/a100_event_sync.json.gz")
    assert other.scalar("SELECT pid FROM events WHERE source_cat = 'Trace'") == row["pid"]


def test_mtia_categories():
    rel = "kineto/mtia/mtia_inference_rank0.json.gz"
    doc, store = raw(rel), ingested(rel)
    dma = [e for e in doc["traceEvents"] if e.get("name") == "dma_request"]
    rows = store.rows("SELECT c.direction, c.bytes, e.device, e.stream FROM copies c JOIN events e USING (event_id)")
    assert len(rows) == len(dma)
    assert sum(r["bytes"] for r in rows) == sum(e["args"]["size"] for e in dma)
    dirs = {"DEVICE_TO_HOST": "DtoH", "HOST_TO_DEVICE": "HtoD"}
    assert Counter(r["direction"] for r in rows) == Counter(dirs[e["args"]["direction"]] for e in dma)
    assert {r["device"] for r in rows} == {e["pid"] for e in dma}
    kinds = dict(store.con.execute("SELECT source_cat || '/' || kind, count(*) FROM events "
                                   "WHERE source_cat LIKE 'mtia%' GROUP BY 1").fetchall())
    waits = sum(e.get("name") in ("event_wait", "event_record") for e in doc["traceEvents"])
    assert kinds["mtia_ccp_events/sync"] == waits
    assert kinds["mtia_runtime/runtime"] == sum(e.get("cat") == "mtia_runtime" for e in doc["traceEvents"])
    assert store.scalar("SELECT vendor FROM traces") == "other"


def test_rocm_devices():
    doc = raw("kineto/rocm/mi300x_bert_small.json.gz")
    store = ingested("kineto/rocm/mi300x_bert_small.json.gz")
    dev = store.rows("SELECT * FROM devices")[0]
    props = doc["deviceProperties"][0]
    assert (dev["vendor"], dev["name"], dev["arch"]) == ("amd", props["name"], "gfx942")
    assert (dev["sm_count"], dev["warp_size"], dev["memory_bytes"]) == (props["numSms"], props["warpSize"], props["totalGlobalMem"])
    assert store.scalar("SELECT producer FROM traces") == f"PyTorch profiler (roctracer {doc['roctracer_version']})"
    # vLLM build: devices listed with empty names; all are stored, arch unknown.
    doc = raw("kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz")
    store = ingested("kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz")
    rows = store.rows("SELECT * FROM devices ORDER BY device")
    assert [r["device"] for r in rows] == [p["id"] for p in doc["deviceProperties"]]
    assert all(r["vendor"] == "amd" and r["arch"] is None for r in rows)


def test_fwdbwd_flows_become_links():
    rel = "kineto/cuda/a100_nccl_rank0_of2.json.gz"
    doc, store = raw(rel), ingested(rel)
    ids_s = {e["id"] for e in doc["traceEvents"] if e.get("cat") == "fwdbwd" and e["ph"] == "s"}
    ids_f = {e["id"] for e in doc["traceEvents"] if e.get("cat") == "fwdbwd" and e["ph"] == "f"}
    n = store.scalar("SELECT count(*) FROM links WHERE kind = 'fwdbwd'")
    assert 0 < n <= len(ids_s & ids_f)
    launches = store.scalar("SELECT count(*) FROM links WHERE kind = 'launch'")
    assert launches > 0


def test_rocm_device_properties_join_the_device_their_activities_carry():
    """ROCm Kineto traces give activities the HSA node id (CPU agents first) and
    deviceProperties the process's ordinal: one visible MI300X is device 0 in the properties
    and 2 (or 9) on every kernel. One property and one device in use are the same device, so
    it is stored as the ordinal, as the rocprof parsers and CUDA traces store a device, with
    the node id kept; where that is not clear, ingest_issues says the properties are not
    matched."""
    for relative, node in (("kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz", 2),
                           ("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz", 9)):
        doc, store = raw(relative), ingested(relative)
        assert [p["id"] for p in doc["deviceProperties"]] == [0]
        device_records = [e for e in doc["traceEvents"] if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
        assert {e["args"]["device"] for e in device_records} == {node}
        (row,) = store.rows("SELECT device, node_id, name, sm_count FROM devices")
        assert row == {"device": 0, "node_id": node, "name": doc["deviceProperties"][0]["name"],
                       "sm_count": doc["deviceProperties"][0]["numSms"]}
        # Every device activity moved with it; none is left on the node id.
        assert store.rows("SELECT DISTINCT device FROM events WHERE device IS NOT NULL") == [{"device": 0}]
        assert store.scalar("SELECT count(*) FROM events WHERE kind IN ('kernel', 'memcpy', 'memset')") \
            == len(device_records)
        assert store.scalar("SELECT count(*) FROM ingest_issues WHERE reason LIKE "
                            f"'activities carry device id {node},%stored as device 0 with node_id {node}'") == 1
    # The ids already agree on CUDA: nothing changes, nothing is said.
    store = ingested("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    assert store.rows("SELECT device FROM devices") == [{"device": 0}]
    assert store.scalar("SELECT count(*) FROM ingest_issues WHERE reason LIKE 'deviceProperties%'") == 0


def test_grids_of_work_item_launches_are_stored_in_blocks():
    """hipExtModuleLaunchKernel takes its grid in work-items (Tensile GEMMs: 73728 of block
    256), hipLaunchKernel in blocks; Kineto records either as given. The store counts blocks:
    ceil(grid / block) for kernels such a call launched, the others as written."""
    relative = "kineto/rocm/mi300x_bert_small.json.gz"
    doc, store = raw(relative), ingested(relative)
    calls = {e["args"]["correlation"]: e["name"] for e in doc["traceEvents"] if e.get("cat") == "cuda_runtime"}
    want = {}
    for e in doc["traceEvents"]:
        if e.get("cat") == "kernel":
            grid, block = e["args"]["grid"], e["args"]["block"]
            items = calls.get(e["args"]["correlation"]) == "hipExtModuleLaunchKernel"
            want[(round(float(e["ts"]) * 1000), e["name"])] = [-(-g // b) if items else g for g, b in zip(grid, block)]
    assert any(calls.get(c) == "hipExtModuleLaunchKernel" for c in calls)
    got = {(r[0], r[1]): list(r[2:]) for r in store.con.execute(
        "SELECT start_ns, name, grid_x, grid_y, grid_z FROM kernels").fetchall()}
    assert got == want


# Kineto traces of accelerators no shared trace covers. The records follow the shapes
# Kineto writes for them (an Intel XPU kernel and its urEnqueueKernelLaunch as recorded on
# an Aurora node with PTI 0.17, kineto-deep-dive docs/03-xpu-path.md); they are typed here,
# so they test the mapping entries, not a parser against real data.
def _accelerator_trace(path: Path, runtime_cat: str, launch: str, sync: str, props: list[dict]) -> Path:
    events = [{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 7, "tid": 7,
               "ts": 95786000000.0, "dur": 500.0, "args": {}}]
    for i in range(3):
        t = 95786000010.0 + 100 * i
        events += [
            {"ph": "X", "cat": "cpu_op", "name": "aten::addmm", "pid": 7, "tid": 7, "ts": t, "dur": 20.0,
             "args": {"External id": 5 + i}},
            {"ph": "X", "cat": runtime_cat, "name": launch, "pid": 7, "tid": 7, "ts": t + 5, "dur": 6.4,
             "args": {"External id": 5 + i, "correlation": 4131 + i}},
            {"ph": "X", "cat": "kernel", "name": "gemm_kernel", "pid": 0, "tid": 0, "ts": t + 11.5, "dur": 8.96,
             "args": {"External id": 5 + i, "kernel_id": 1 + i, "sycl queue": 64, "correlation": 4131 + i,
                      "device": 0}},
            {"ph": "X", "cat": runtime_cat, "name": sync, "pid": 7, "tid": 7, "ts": t + 13, "dur": 8.0,
             "args": {"correlation": 5000 + i}},
        ]
    path.write_text(json.dumps({"schemaVersion": 1, "deviceProperties": props, "traceEvents": events}))
    return path


@pytest.mark.parametrize("runtime_cat,launch,sync,props,vendor,title_device", [
    ("xpu_runtime", "urEnqueueKernelLaunch", "urQueueFinish",
     # The keys Kineto's XPU plugin writes (getXpuDeviceProperties in
     # libkineto/src/plugin/xpupti/XpuptiActivityProfiler.cpp).
     [{"id": 0, "name": "Intel(R) Data Center GPU Max 1550", "totalGlobalMem": 68719476736,
       "maxComputeUnits": 1024, "maxWorkGroupSize": 1024, "maxClockFrequency": 1600,
       "maxMemAllocSize": 68719476736, "localMemSize": 131072, "vendor": "Intel(R) Corporation",
       "driverVersion": "1.3.29735"}], "intel", "GPU 0"),
    ("xpu_runtime", "urEnqueueKernelLaunch", "urQueueFinish", [], "intel", "GPU 0"),
    ("privateuse1_runtime", "Launch", "synchronizeDevice", [], "other", "Device 0"),
])
def test_other_accelerators_are_a_mapping_entry_away(tmp_path, runtime_cat, launch, sync, props, vendor,
                                                     title_device):
    """An Intel XPU trace (xpu_runtime) and a PrivateUse1 backend's (privateuse1_runtime):
    their runtime calls are stored and linked to the kernels they launched, the vendor is
    named, and nothing is counted as an unknown category."""
    from profkit.analyses import analyze

    store = Store.open(None)
    ingest([str(_accelerator_trace(tmp_path / "trace.json", runtime_cat, launch, sync, props))], store)
    assert store.scalar("SELECT vendor FROM traces") == vendor
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'runtime'") == 6
    assert store.rows("SELECT r.name AS call, k.name AS kernel FROM links l JOIN events r ON r.event_id = l.src_event "
                      "JOIN events k ON k.event_id = l.dst_event WHERE l.kind = 'launch'") == \
        [{"call": launch, "kernel": "gemm_kernel"}] * 3
    assert store.scalar("SELECT count(*) FROM ingest_issues WHERE reason LIKE 'unknown category%'") == 0
    if props:
        # SYCL's maxComputeUnits counts execution units (8 per Xe-core on this GPU), not the
        # units a work-group runs on, so it is kept in `properties` and not taken as sm_count.
        assert store.rows("SELECT device, vendor, name, memory_bytes, sm_count FROM devices") == \
            [{"device": 0, "vendor": vendor, "name": props[0]["name"],
              "memory_bytes": props[0].get("totalGlobalMem"), "sm_count": None}]
    titles = {f["rule"]: f["title"] for f in analyze(store)["findings"]}
    assert f"({sync} x3)" in titles["host.sync_in_steady_state"]  # the runtime's sync, by its role row
    assert titles["idle.sync"].startswith(f"{title_device} idles")


@pytest.mark.parametrize("kind,name,direction,src,dst", [
    # Intel XPU, as Kineto's XPU plugin names PTI records ("Memcpy {type} ({src} -> {dst})",
    # "Memset ({value} -> {memory})"): MEMORY is pageable system memory, SHARED USM shared.
    ("memcpy", "Memcpy M2D (MEMORY -> DEVICE)", "HtoD", "pageable", "device"),
    ("memcpy", "Memcpy D2M (DEVICE -> MEMORY)", "DtoH", "device", "pageable"),
    ("memcpy", "Memcpy D2D (DEVICE -> DEVICE)", "DtoD", "device", "device"),
    ("memcpy", "Memcpy H2D (HOST -> DEVICE)", "HtoD", None, "device"),
    ("memcpy", "Memcpy S2D (SHARED -> DEVICE)", None, "managed", "device"),
    ("memset", "Memset (0 -> DEVICE)", "memset", None, "device"),
    # CUDA and ROCm spellings keep their meaning.
    ("memcpy", "Memcpy DtoH (Device -> Pageable)", "DtoH", "device", "pageable"),
    ("memcpy", "Memcpy HtoD (Host -> Device)", "HtoD", None, "device"),
    ("memset", "Memset (Device)", "memset", None, "device"),
    ("memcpy", "Memcpy HtoA (Pinned -> Array)", "HtoD", "pinned", "array"),
    ("memcpy", "Memcpy AtoH (Array -> Pageable)", "DtoH", "array", "pageable"),
])
def test_copy_names_of_every_vendor(kind, name, direction, src, dst):
    from profkit.parsers.kineto_args import Args, copy_row

    row = copy_row(1, kind, name, Args(bytes=64))
    assert (row["direction"], row["src_memory"], row["dst_memory"], row["bytes"]) == (direction, src, dst, 64)


@pytest.mark.parametrize("relative, device_type", [("kineto/cuda/h100_bert_small.json.gz", 1),
                                                   ("kineto/rocm/mi300x_bert_small.json.gz", 6)])
def test_memory_samples_are_counters_per_device(relative, device_type):
    """`[memory]` instants (profile_memory=True) give two series in counters, bytes allocated
    and reserved, on the device torch names (its index: the store's ordinal; the CPU's
    samples, device type 0, on none), each sample as the raw record says."""
    path = shared_trace(relative)
    raw = [e for e in json.loads(gzip.decompress(path.read_bytes()))["traceEvents"] if e.get("name") == "[memory]"]
    expected = Counter()
    for e in raw:
        device = e["args"]["Device Id"] if e["args"]["Device Type"] != 0 else None
        for field in ("Total Allocated", "Total Reserved"):
            expected[(f"[memory].{field}", device, int(Decimal(str(e["ts"])) * 1000), float(e["args"][field]))] += 1
    store = Store.open(None)
    ingest([path], store)
    got = Counter((r["name"], r["device"], r["ts_ns"], r["value"]) for r in store.rows(
        "SELECT name, device, ts_ns - coalesce((SELECT clock_offset_ns FROM traces), 0) AS ts_ns, value FROM counters"))
    assert got == expected
    assert {d for _, d, _, _ in got} == {0, None} and {e["args"]["Device Type"] for e in raw} == {0, device_type}
