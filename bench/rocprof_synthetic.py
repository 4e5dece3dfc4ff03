"""Synthetic rocprofv3 outputs for the ingest benchmark: N kernel dispatches (default 1M),
each launched by one hipLaunchKernel, written as a rocprofv3 CSV directory
(`agent_info`, `kernel_trace`, `hip_api_trace`) and as a rocprofv3 JSON file of the same
shape. Seeded, so the files are the same every time; cached under bench/out/ (the names carry
the generator's version, so a changed generator never reuses stale files).

As in real rocprofv3 output (0 of 43,915 kernels in the shared MI350X trace overlap another
on their stream), a stream runs its kernels one after another and a thread's HIP calls do
not overlap. Version 1 let half the kernels overlap on their stream, which made `derive.nest`
store nearly 0.5M parent links no real trace has.

    python bench/rocprof_synthetic.py [--dispatches N]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv

OUT = Path(__file__).resolve().parent / "out"
VERSION = 2
PID = 4242
KERNELS = ["Cijk_Alik_Bljk_HHS_BH_MT128x128x32", "void at::native::vectorized_elementwise_kernel<4>",
           "__amd_rocclr_copyBuffer", "ncclDevKernel_Generic_1(ncclDevKernelArgsStorage<4096ul>)",
           "void at::native::reduce_kernel<512, 1>", "fmha_fwd_hd128_bf16", "rms_norm_kernel"]
AGENTS = [(0, "CPU", "AMD EPYC 9575F", ""), (1, "CPU", "AMD EPYC 9575F", ""),
          (2, "GPU", "AMD Instinct MI300X", "gfx942"), (3, "GPU", "AMD Instinct MI300X", "gfx942")]


def columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Launch calls 2-9 us apart, each 1-2 us long: one thread's calls never overlap.
    launch = 1_000_000_000 + np.cumsum(rng.integers(2_000, 9_000, n))
    ready = launch + rng.integers(5_000, 50_000, n)  # the earliest a kernel could start
    dur = rng.integers(1_000, 50_000, n)  # six streams: busy ~75% of the time
    agent, queue = rng.choice([2, 3], n), rng.integers(1, 4, n)
    start = _in_order(ready, dur, agent * 8 + queue)
    wg = rng.choice([64, 128, 256, 512], n)
    return {
        "corr": np.arange(1, n + 1), "launch": launch, "launch_end": launch + rng.integers(1_000, 2_000, n),
        "start": start, "end": start + dur, "kernel": rng.integers(0, len(KERNELS), n),
        "agent": agent, "queue": queue, "wg": wg,
        "grid": wg * rng.integers(1, 4096, n), "lds": rng.choice([0, 4096, 65536], n),
        "vgpr": rng.choice([32, 64, 128], n), "sgpr": rng.choice([16, 48, 96], n),
    }


def _in_order(ready: np.ndarray, dur: np.ndarray, stream: np.ndarray) -> np.ndarray:
    """Start times when each stream runs its kernels in launch order, one at a time:
    start[i] = max(ready[i], end of the stream's previous kernel), which unrolls to
    before[i] + max over j <= i of (ready[j] - before[j]) with `before` the stream's
    summed durations before i."""
    start = np.empty_like(ready)
    for lane in np.unique(stream):
        at = np.flatnonzero(stream == lane)
        before = np.concatenate(([0], np.cumsum(dur[at])[:-1]))
        start[at] = before + np.maximum.accumulate(ready[at] - before)
    return start


def csv_dir(n: int) -> Path:
    return OUT / f"v3_csv_{n}_v{VERSION}"


def json_path(n: int) -> Path:
    return OUT / f"v3_json_{n}_v{VERSION}_results.json"


def write_csv(n: int, c: dict[str, np.ndarray] | None) -> Path:
    root = csv_dir(n)
    if (root / f"{PID}_hip_api_trace.csv").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table({
        "Node_Id": [a[0] for a in AGENTS], "Logical_Node_Id": [a[0] for a in AGENTS],
        "Agent_Type": [a[1] for a in AGENTS], "Cu_Count": [64, 64, 304, 304], "Wave_Front_Size": [0, 0, 64, 64],
        "Name": [a[3] or a[2] for a in AGENTS], "Product_Name": [a[2] for a in AGENTS]}),
        root / f"{PID}_agent_info.csv")
    names = pa.DictionaryArray.from_arrays(pa.array(c["kernel"], pa.int32()), pa.array(KERNELS)).cast(pa.string())
    agent = pa.DictionaryArray.from_arrays(pa.array(c["agent"] - 2, pa.int32()),
                                           pa.array(["Agent 2", "Agent 3"])).cast(pa.string())
    pacsv.write_csv(pa.table({
        "Kind": pa.array(["KERNEL_DISPATCH"] * n), "Agent_Id": agent, "Queue_Id": c["queue"],
        "Stream_Id": c["queue"], "Thread_Id": np.full(n, PID), "Dispatch_Id": c["corr"],
        "Kernel_Id": c["kernel"], "Kernel_Name": names, "Correlation_Id": c["corr"],
        "Start_Timestamp": c["start"], "End_Timestamp": c["end"], "LDS_Block_Size": c["lds"],
        "Scratch_Size": np.zeros(n, np.int64), "VGPR_Count": c["vgpr"], "Accum_VGPR_Count": np.zeros(n, np.int64),
        "SGPR_Count": c["sgpr"], "Workgroup_Size_X": c["wg"], "Workgroup_Size_Y": np.ones(n, np.int64),
        "Workgroup_Size_Z": np.ones(n, np.int64), "Grid_Size_X": c["grid"], "Grid_Size_Y": np.ones(n, np.int64),
        "Grid_Size_Z": np.ones(n, np.int64)}), root / f"{PID}_kernel_trace.csv")
    pacsv.write_csv(pa.table({
        "Domain": pa.array(["HIP_RUNTIME_API"] * n), "Function": pa.array(["hipLaunchKernel"] * n),
        "Process_Id": np.full(n, PID), "Thread_Id": np.full(n, PID), "Correlation_Id": c["corr"],
        "Start_Timestamp": c["launch"], "End_Timestamp": c["launch_end"]}), root / f"{PID}_hip_api_trace.csv")
    return root


def write_json(n: int, c: dict[str, np.ndarray] | None) -> Path:
    path = json_path(n)
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    handles = {node: 1000 + node for node, *_ in AGENTS}
    agents = [{"id": {"handle": handles[node]}, "type": 2 if typ == "GPU" else 1, "node_id": node,
               "logical_node_id": node, "name": arch or name, "product_name": name,
               "cu_count": 304 if typ == "GPU" else 64, "wave_front_size": 64 if typ == "GPU" else 0}
              for node, typ, name, arch in AGENTS]
    cols = {k: v.tolist() for k, v in c.items()}
    dispatches = [{
        "size": 184, "kind": 11, "operation": 2, "thread_id": PID,
        "correlation_id": {"internal": cols["corr"][i], "external": 0},
        "start_timestamp": cols["start"][i], "end_timestamp": cols["end"][i],
        "dispatch_info": {"size": 72, "agent_id": {"handle": handles[cols["agent"][i]]},
                          "queue_id": {"handle": cols["queue"][i]}, "kernel_id": cols["kernel"][i] + 1,
                          "dispatch_id": cols["corr"][i], "private_segment_size": 0,
                          "group_segment_size": cols["lds"][i],
                          "workgroup_size": {"x": cols["wg"][i], "y": 1, "z": 1},
                          "grid_size": {"x": cols["grid"][i], "y": 1, "z": 1}},
        "stream_id": {"handle": cols["queue"][i]}} for i in range(n)]
    hip = [{"size": 48, "kind": 5, "operation": 1, "thread_id": PID,
            "correlation_id": {"internal": cols["corr"][i], "external": 0},
            "start_timestamp": cols["launch"][i], "end_timestamp": cols["launch_end"][i]} for i in range(n)]
    kinds = [{"kind": k, "operations": []} for k in ("NONE", "HSA_CORE_API", "HSA_AMD_EXT_API",
                                                       "HSA_IMAGE_EXT_API", "HSA_FINALIZE_EXT_API")]
    kinds += [{"kind": "HIP_RUNTIME_API", "operations": ["hipApiName", "hipLaunchKernel"]}]
    kinds += [{"kind": k, "operations": []} for k in ("HIP_COMPILER_API", "MARKER_CORE_API", "MARKER_CONTROL_API",
                                                       "MARKER_NAME_API", "MEMORY_COPY")]
    kinds += [{"kind": "KERNEL_DISPATCH", "operations": ["NONE", "ENQUEUE", "COMPLETE"]}]
    doc = {"rocprofiler-sdk-tool": [{
        "metadata": {"pid": PID, "node": {"hostname": "synthetic"}},
        "agents": agents,
        "kernel_symbols": [{"kernel_id": i + 1, "kernel_name": k, "formatted_kernel_name": k,
                            "arch_vgpr_count": 64, "accum_vgpr_count": 0, "sgpr_count": 32}
                           for i, k in enumerate(KERNELS)],
        "strings": {"buffer_records": kinds, "marker_api": []},
        "buffer_records": {"kernel_dispatch": dispatches, "hip_api": hip, "memory_copy": [], "marker_api": []},
    }]}
    path.write_bytes(msgspec.json.encode(doc))
    return path


def build(n: int = 1_000_000) -> tuple[Path, Path]:
    cached = csv_dir(n) / f"{PID}_hip_api_trace.csv", json_path(n)
    c = None if all(p.exists() for p in cached) else columns(n)  # None: both are cached
    return write_csv(n, c), write_json(n, c)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=1_000_000)
    for p in build(parser.parse_args().dispatches):
        print(p)
