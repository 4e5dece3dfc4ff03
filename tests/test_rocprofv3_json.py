"""rocprofv3 JSON: dispatches, names, devices and links checked against the raw JSON."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import shared_trace
from profkit.ingest import ingest
from profkit.store import Store

PROFKIT = str(Path(sys.executable).with_name("profkit"))


def load(*paths) -> Store:
    store = Store.open(None)
    ingest([str(p) for p in paths], store)
    return store


def test_mi350x_training_run():
    path = shared_trace("rocprof/v3_json_mi350x/908_results.json.gz")
    proc = json.load(gzip.open(path))["rocprofiler-sdk-tool"][0]
    dispatches = proc["buffer_records"]["kernel_dispatch"]
    store = load(path)
    assert store.scalar("SELECT count(*) FROM events WHERE kind='kernel'") == len(dispatches) == 43915
    assert store.scalar("SELECT sum(dur_ns) FROM events") == sum(
        d["end_timestamp"] - d["start_timestamp"] for d in dispatches)
    assert store.scalar("SELECT min(start_ns) FROM events") == min(d["start_timestamp"] for d in dispatches)
    gpus = sorted((a for a in proc["agents"] if a["type"] == 2), key=lambda a: a["node_id"])
    devices = store.rows("SELECT device, node_id, name, arch, sm_count, warp_size FROM devices ORDER BY device")
    assert [(d["node_id"], d["name"], d["arch"]) for d in devices] == [
        (a["node_id"], a["product_name"], a["name"]) for a in gpus]
    # Device = ordinal of the dispatch's agent among GPU agents (node ids count CPUs first).
    handle_to_ordinal = {a["id"]["handle"]: i for i, a in enumerate(gpus)}
    expected = {}
    for d in dispatches:
        dev = handle_to_ordinal[d["dispatch_info"]["agent_id"]["handle"]]
        expected[dev] = expected.get(dev, 0) + 1
    assert dict(store.con.execute("SELECT device, count(*) FROM events GROUP BY 1").fetchall()) == expected
    # Names by kernel_id; the communication kernels are classified as such.
    symbols = {k["kernel_id"]: k["formatted_kernel_name"] for k in proc["kernel_symbols"]}
    nccl = sum(1 for d in dispatches if symbols[d["dispatch_info"]["kernel_id"]].startswith("ncclDevKernel"))
    assert store.scalar("SELECT count(*) FROM comms") == nccl > 0
    blits = sum(1 for d in dispatches if symbols[d["dispatch_info"]["kernel_id"]].startswith("__amd_rocclr_"))
    assert store.scalar("SELECT count(*) FROM events WHERE category = 'memory'") == blits
    first = min(dispatches, key=lambda d: d["start_timestamp"])
    row = store.rows("SELECT name, correlation, grid_x, block_x, shared_memory_bytes FROM kernels "
                     "ORDER BY start_ns, event_id LIMIT 1")[0]
    info = first["dispatch_info"]
    assert row["correlation"] == first["correlation_id"]["internal"]
    assert row["block_x"] == info["workgroup_size"]["x"]
    assert row["grid_x"] == -(-info["grid_size"]["x"] // info["workgroup_size"]["x"])
    assert row["shared_memory_bytes"] == info["group_segment_size"]


def _doc() -> dict:
    kinds = [{"kind": k, "operations": ops} for k, ops in [
        ("NONE", []), ("HSA_CORE_API", []), ("HSA_AMD_EXT_API", []), ("HSA_IMAGE_EXT_API", []),
        ("HSA_FINALIZE_EXT_API", []), ("HIP_RUNTIME_API", ["hipApiName", "hipLaunchKernel", "hipMemcpyAsync"]),
        ("HIP_COMPILER_API", []), ("MARKER_CORE_API", ["roctxMarkA", "roctxRangePushA"]),
        ("MARKER_CONTROL_API", []), ("MARKER_NAME_API", []),
        ("MEMORY_COPY", ["MEMORY_COPY_NONE", "MEMORY_COPY_HOST_TO_HOST", "MEMORY_COPY_HOST_TO_DEVICE",
                         "MEMORY_COPY_DEVICE_TO_HOST", "MEMORY_COPY_DEVICE_TO_DEVICE"]),
        ("KERNEL_DISPATCH", ["NONE", "ENQUEUE", "COMPLETE"]), ("RCCL_API", ["ncclAllReduce"])]]
    agents = [{"id": {"handle": 10}, "type": 1, "node_id": 0, "name": "cpu", "product_name": "cpu"},
              {"id": {"handle": 11}, "type": 1, "node_id": 1, "name": "cpu", "product_name": "cpu"},
              {"id": {"handle": 12}, "type": 2, "node_id": 4, "name": "gfx942", "product_name": "AMD Instinct MI300A",
               "cu_count": 228, "wave_front_size": 64}]

    def api(kind, op, corr, start):
        return {"kind": kind, "operation": op, "thread_id": 7, "correlation_id": {"internal": corr, "external": 0},
                "start_timestamp": start, "end_timestamp": start + 10}

    def dispatch(corr, start, kid):
        return {"kind": 11, "operation": 2, "thread_id": 7, "correlation_id": {"internal": corr, "external": 5},
                "start_timestamp": start, "end_timestamp": start + 100,
                "dispatch_info": {"agent_id": {"handle": 12}, "queue_id": {"handle": 1}, "kernel_id": kid,
                                  "dispatch_id": corr, "workgroup_size": {"x": 256, "y": 1, "z": 1},
                                  "grid_size": {"x": 1024, "y": 2, "z": 1}}, "stream_id": {"handle": 3}}
    return {"rocprofiler-sdk-tool": [{
        "metadata": {"pid": 99, "node": {"hostname": "h"}}, "agents": agents,
        "kernel_symbols": [{"kernel_id": 1, "formatted_kernel_name": "gemm_kernel"},
                           {"kernel_id": 2, "formatted_kernel_name": "ncclDevKernel_AllReduce_Sum_f32_RING_LL"}],
        "strings": {"buffer_records": kinds, "marker_api": [{"key": 30, "value": "step 1"}]},
        "buffer_records": {
            "kernel_dispatch": [dispatch(1, 1000, 1), dispatch(2, 2000, 2), dispatch(3, 3000, 1)],
            "hip_api": [api(5, 1, 1, 900), api(5, 1, 2, 1900), api(5, 2, 4, 2900)],
            "rccl_api": [api(12, 0, 40, 1850)],
            "marker_api": [api(7, 1, 30, 800)],
            "memory_copy": [{**api(10, 2, 4, 2950), "dst_agent_id": {"handle": 12}, "src_agent_id": {"handle": 10},
                             "bytes": 4096}],
            "scratch_memory": [{"x": 1}, {"x": 2}],
        }}]}


def test_synthetic_links_markers_copies(tmp_path):
    doc = _doc()
    path = tmp_path / "1_results.json"
    path.write_text(json.dumps(doc))
    store = load(path)
    rec = doc["rocprofiler-sdk-tool"][0]["buffer_records"]
    hip_ids = {r["correlation_id"]["internal"] for r in rec["hip_api"]}
    device_ids = [r["correlation_id"]["internal"] for r in rec["kernel_dispatch"] + rec["memory_copy"]]
    assert store.scalar("SELECT count(*) FROM launches") == sum(1 for c in device_ids if c in hip_ids)
    assert store.rows("SELECT runtime_name, device_kind FROM launches WHERE device_kind = 'memcpy'") == [
        {"runtime_name": "hipMemcpyAsync", "device_kind": "memcpy"}]
    assert store.rows("SELECT direction, bytes FROM copies_view") == [{"direction": "HtoD", "bytes": 4096}]
    assert store.scalar("SELECT name FROM events WHERE kind = 'annotation'") == "step 1"
    assert store.scalar("SELECT source_cat FROM events WHERE name = 'ncclAllReduce'") == "rccl_api"
    assert store.scalar("SELECT count(*) FROM comms") == 1
    assert store.scalar("SELECT list(DISTINCT device) FROM events WHERE kind = 'kernel'") == [0]
    assert store.scalar("SELECT node_id FROM devices") == 4
    assert store.scalar("SELECT max(external_id) FROM events WHERE kind = 'kernel'") == 5
    assert store.scalar("SELECT count FROM ingest_issues WHERE reason LIKE 'scratch_memory%'") == 2
    total = sum(len(v) for v in rec.values()) + len(doc["rocprofiler-sdk-tool"][0]["agents"])
    assert store.scalar("SELECT source_records FROM traces") == total


def test_bad_inputs_one_line(tmp_path):
    doc = _doc()
    del doc["rocprofiler-sdk-tool"][0]["buffer_records"]["kernel_dispatch"][0]["start_timestamp"]
    bad = tmp_path / "bad_results.json"
    bad.write_text(json.dumps(doc))
    truncated = tmp_path / "cut_results.json.gz"
    truncated.write_bytes(gzip.compress(json.dumps(_doc()).encode())[:200])
    for path in (bad, truncated):
        result = subprocess.run([PROFKIT, "ingest", str(path), "-o", str(tmp_path / "o.duckdb")],
                                capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("extra_kind, extra_op", [(0, 1), (-1, 0), (0, 1 << 40)])
def test_kind_and_operation_names(extra_kind, extra_op):
    """Names per record from the strings table, including codes the table has no entry
    for (negative, out of range, wider than 32 bits)."""
    from profkit.parsers.rocprofv3_json import _op_names

    kinds = [("HIP_RUNTIME_API", ["hipMalloc", "hipLaunchKernel"]), ("MARKER_CORE_API", ["roctxRangePush"])]
    kind_codes, op_codes = [0, 1, 0, 5, extra_kind], [1, 0, 0, 0, extra_op]
    kind_names, op_names = _op_names(kinds, pa.array(kind_codes), pa.array(op_codes))

    def expected(k, o):
        entry = kinds[k] if 0 <= k < len(kinds) else ("", [])
        return entry[0], entry[1][o] if 0 <= o < len(entry[1]) else f"operation {o}"

    assert list(zip(kind_names.to_pylist(), op_names.to_pylist())) == \
        [expected(k, o) for k, o in zip(kind_codes, op_codes)]


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("damage", [b'"dispatch_id":@2', b'"dispatch_id":\xff2'])
def test_a_malformed_record_in_a_located_list_is_named_without_the_staged_file(tmp_path, monkeypatch, scan, damage):
    # A large input's lists are not checked before they are staged in temporary files for
    # DuckDB: its error must name the list and the record, not a file the user never saw.
    from profkit.errors import TraceError
    from profkit.parsers import rocprofv3_json
    monkeypatch.setattr(rocprofv3_json, "LOCATE_MIN_BYTES", 0)
    monkeypatch.setattr(rocprofv3_json, "SCAN_MIN_BYTES", 0 if scan else 1 << 62)
    monkeypatch.setattr(rocprofv3_json, "BATCH_SCAN_MIN_BYTES", 0 if scan else 1 << 62)
    text = json.dumps(_doc(), separators=(",", ":")).encode()
    path = tmp_path / "1_results.json"
    path.write_bytes(text.replace(b'"dispatch_id":2', damage, 1))
    with pytest.raises(TraceError) as raised:
        ingest([str(path)], Store.open(None))
    problem = raised.value.problem
    assert problem.startswith("unreadable kernel_dispatch records: Malformed JSON"), problem
    assert "in record/value" in problem and "profkit-rocprofv3" not in problem and "\n" not in problem
