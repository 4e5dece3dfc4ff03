"""The shared classifier on communication kernel names as NCCL and RCCL spell them across
versions, from real traces and from a documented list.

Names drift: NCCL <= 2.18 `ncclKernel_<Op>_<ALGO>_<PROTO>_<RedOp>_<type>(ncclDevComm*, ...)`
(2.12 and older: `(ncclWorkElem)`); NCCL >= 2.19 `ncclDevKernel_<Op>[_<RedOp>_<type>]_<ALGO>_<PROTO>
(ncclDevKernelArgsStorage<4096ul>)` and `ncclDevKernel_SendRecv`; RCCL (ROCm 6) names its
kernels `ncclDevKernel_Generic[_N]`, which do not say the op (ROCm/roctracer#101); PyTorch's
symmetric-memory all-reduce is `multimem_all_reduce_kernel`; ROCm runtime blit kernels
(`__amd_rocclr_copyBuffer`) are memory traffic, not communication.
"""
from __future__ import annotations

import gzip
import json
import re
import sqlite3

import pytest

from profkit import classify

from conftest import shared_trace

# An independent reading of the NCCL/RCCL naming convention: the token after the prefix.
_NCCL_OP = {"AllReduce": "all_reduce", "AllGather": "all_gather", "ReduceScatter": "reduce_scatter",
            "Broadcast": "broadcast", "Reduce": "reduce", "SendRecv": "send_recv",
            "AllToAllPivot": "all_to_all", "Generic": "other"}
_NCCL_NAME = re.compile(r"nccl(?:Dev)?Kernel_([A-Za-z]+?)(?:_|\(|$)")


def expected_op(name: str) -> str:
    match = _NCCL_NAME.search(name)
    assert match, name
    return _NCCL_OP[match.group(1)]


KNOWN = [  # name, category, op
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)", "communication", "all_reduce"),
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", "communication", "all_reduce"),
    ("ncclKernel_Broadcast_RING_LL_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)", "communication", "broadcast"),
    ("ncclKernel_Reduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)", "communication", "reduce"),
    ("ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)", "communication", "send_recv"),
    ("ncclKernel_ReduceScatter_RING_LL_Sum___nv_bfloat16(ncclDevComm*, unsigned long, ncclWork*)",
     "communication", "reduce_scatter"),
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication", "all_gather"),
    ("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication", "reduce_scatter"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication", "all_reduce"),
    ("ncclDevKernel_AllReduce_Sum_f32_TREE_LL(ncclDevKernelArgsStorage<4096ul>)", "communication", "all_reduce"),
    ("ncclDevKernel_Broadcast_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication", "broadcast"),
    ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "communication", "send_recv"),
    ("ncclDevKernel_SendRecv", "communication", "send_recv"),  # Nsight shortName
    # RCCL
    ("ncclKernel_AllReduce_RING_LL_Sum_bf16(ncclDevComm*, unsigned long, ncclWork*)", "communication", "all_reduce"),
    ("ncclKernel_AllToAllPivot_RING_SIMPLE_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)",
     "communication", "all_to_all"),
    ("ncclDevKernel_Generic(ncclDevComm*, channelMasks, ncclWork*)", "communication", "other"),
    ("ncclDevKernel_Generic_4(ncclDevKernelArgsStorage<4096ul>)", "communication", "other"),
    ("_Z23ncclDevKernel_Generic_124ncclDevKernelArgsStorageILm4096EE.kd", "communication", "other"),
    ("mscclKernel_Sum_bf16_LL128(ncclDevComm*, mscclAlgo*, mscclWork*)", "communication", "other"),
    # custom all-reduce kernels of PyTorch symmetric memory, vLLM
    ("void (anonymous namespace)::multimem_all_reduce_kernel<c10::BFloat16, 16>(c10::BFloat16*, unsigned long, "
     "unsigned int**, unsigned long, unsigned long)", "communication", "all_reduce"),
    ("void vllm::cross_device_reduce_1stage<__nv_bfloat16, 8>(vllm::RankData*, vllm::RankSignals, vllm::Signal*, "
     "__nv_bfloat16*, int, int)", "communication", "all_reduce"),
    # ROCm runtime copies and fills are memory
    ("__amd_rocclr_copyBuffer.kd", "memory", None),
    ("__amd_rocclr_copyBufferAligned", "memory", None),
    ("__amd_rocclr_fillBufferAligned.kd", "memory", None),
    # look-alikes that are compute
    ("void at::native::vectorized_gather_kernel<16, long>(char*, char*, long*, int, long, long, long, long, bool)",
     "elementwise", None),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, float, "
     "float>, unsigned int, float, 4> >(at::native::ReduceOp<float, at::native::MeanOps<float, float, float, float>, "
     "unsigned int, float, 4>)", "reduction", None),
]


@pytest.mark.parametrize("name,category,op", KNOWN, ids=[k[0][:60] for k in KNOWN])
def test_known_names(name, category, op):
    assert classify.category("kernel", name) == category
    if op is not None:
        assert classify.collective_op(name) == op


# PyTorch's `Collective name` values (record_param_comms) map onto the same ops.
COLLECTIVE_NAMES = [
    ("allreduce", "all_reduce"), ("allreduce_coalesced", "all_reduce"), ("_allgather_base", "all_gather"),
    ("allgather_into_tensor_coalesced", "all_gather"), ("reduce_scatter_tensor_coalesced", "reduce_scatter"),
    ("_reduce_scatter_base", "reduce_scatter"), ("broadcast", "broadcast"), ("reduce", "reduce"),
    ("alltoall_base", "all_to_all"), ("all_to_allv", "all_to_all"), ("send", "send"), ("recv", "recv"),
    ("recvAnysource", "recv"), ("barrier", "other"),
]


@pytest.mark.parametrize("name,op", COLLECTIVE_NAMES)
def test_pytorch_collective_names(name, op):
    assert classify.collective_op(name) == op


def _kineto_kernel_names(relative: str) -> set[str]:
    with gzip.open(shared_trace(relative)) as fh:
        doc = json.load(fh)
    return {e["name"] for e in doc["traceEvents"] if e.get("cat") == "kernel"}


@pytest.mark.parametrize("relative", [
    "kineto/cuda/a100_nccl_rank0_of2.json.gz", "kineto/cuda/v100_nccl_rank1_of2.json.gz",
    "kineto/cuda/a100_80gb_rank0_of16.json.gz", "kineto/cuda/sampled_2ranks/sampled_rank-0.json.gz",
    "kineto/cuda/b200_eager_rank0_of8.json.gz",
])
def test_real_kineto_nccl_names(relative):
    names = _kineto_kernel_names(relative)
    nccl = {n for n in names if n.startswith("nccl")}
    assert nccl, relative
    for name in nccl:
        assert classify.category("kernel", name) == "communication", name
        assert classify.collective_op(name) == expected_op(name), name
    # nothing else in these traces is communication but the custom all-reduce kernels
    others = {n for n in names - nccl if classify.category("kernel", n) == "communication"}
    assert all("all_reduce" in n for n in others), others


def test_real_kineto_ops_match_collective_metadata():
    """Where Kineto names the collective, the kernel name gives the same op."""
    with gzip.open(shared_trace("kineto/cuda/a100_nccl_rank0_of2.json.gz")) as fh:
        doc = json.load(fh)
    pairs = {(e["name"], e["args"]["Collective name"]) for e in doc["traceEvents"]
             if e.get("cat") == "kernel" and "Collective name" in e.get("args", {})}
    assert len(pairs) == 2
    for kernel, collective in pairs:
        assert classify.collective_op(kernel) == classify.collective_op(collective)


def test_real_nsys_names():
    path = shared_trace("nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    names = {row[0] for row in con.execute(
        "SELECT DISTINCT s.value FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s "
        "ON s.id IN (k.shortName, k.demangledName)")}
    nccl = {n for n in names if "nccl" in n}
    assert nccl == {"ncclDevKernel_SendRecv", "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<(unsigned long)4096>)"}
    for name in nccl:
        assert classify.category("kernel", name) == "communication"
        assert classify.collective_op(name) == "send_recv"
    assert not {n for n in names - nccl if classify.category("kernel", n) == "communication"}


def test_real_rocprof_rccl_and_blit_names():
    with gzip.open(shared_trace("rocprof/v3_json_mi350x/908_results.json.gz")) as fh:
        doc = json.load(fh)["rocprofiler-sdk-tool"][0]
    symbols = doc["kernel_symbols"]
    names = {s["kernel_name"] for s in symbols} | {s["truncated_kernel_name"] for s in symbols}
    rccl = {n for n in names if "ncclDevKernel" in n}
    assert rccl
    for name in rccl:
        assert classify.category("kernel", name) == "communication", name
        assert classify.collective_op(name) == "other", name  # Generic: the op is not in the name
    blits = {n for n in names if n.startswith("__amd_rocclr_")}
    assert any("copyBuffer" in n for n in blits) and any("fillBuffer" in n for n in blits)
    for name in blits:
        if re.search("copyBuffer|fillBuffer", name):
            assert classify.category("kernel", name) == "memory", name
        else:  # batchMemOp, streamOpsWrite/Wait, initHeap: runtime helpers, never communication
            assert classify.category("kernel", name) != "communication", name
