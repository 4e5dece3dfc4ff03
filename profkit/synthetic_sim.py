"""The engine behind `profkit.synthetic`: a small discrete-event simulation of a
tensor-parallel LLM decode loop, producing Kineto-shaped events in integer ns.

Every rank runs the same program in lockstep, operator by operator, on one clock: the
host thread pays CPU time per operator and launch; a kernel starts at max(launch call
start + launch latency, its stream's previous work, the events its stream waits for); a
collective ends on every rank at the last arrival plus its transfer time;
`cudaStreamSynchronize` returns when the stream has drained. Jitter is drawn per
operation from a hash of (seed, rank, step, operation), so switching one bottleneck off
leaves every other duration as it was.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field

COMPUTE_STREAM = 7
NCCL_STREAM = 20
DEVICE_NAME = "NVIDIA H100 80GB HBM3"
NUM_SMS = 132
TRACE_START_NS = 1_823_456_789_000_000   # steady-clock time of the first event
BASE_TIME_NS = 1_762_000_000_000_000_000  # Unix time of the steady clock's zero
HOST_PID0 = 48_210

# cbid of each runtime call, as CUPTI numbers them.
CBID = {"cudaLaunchKernel": 211, "cudaMemcpyAsync": 41, "cudaStreamSynchronize": 131,
        "cudaEventRecord": 135, "cudaStreamWaitEvent": 147}

_GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize{}_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas"
_FLASH_TRAITS = ("Flash_fwd_kernel_traits<128, 64, 128, 4, false, false, cutlass::bfloat16_t, "
                 "Flash_kernel_traits<128, 64, 128, 4, cutlass::bfloat16_t> >")
KERNELS = {  # name, base duration ns, grid, block, registers/thread, shared memory, occupancy %
    "embed": ("void at::native::(anonymous namespace)::indexSelectSmallIndex<c10::BFloat16, long, unsigned int, 2, 2, -2>(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>, at::cuda::detail::TensorInfo<c10::BFloat16 const, unsigned int>, at::cuda::detail::TensorInfo<long const, unsigned int>, int, int, unsigned int, long)", 2_600, [264, 1, 1], [128, 1, 1], 30, 0, 12),
    "rms_norm": ("void vllm::rms_norm_kernel<c10::BFloat16, 8, 2>(c10::BFloat16*, c10::BFloat16 const*, long, long, long, long, long, c10::BFloat16 const*, float, int, int)", 3_300, [8, 1, 1], [1024, 1, 1], 32, 64, 6),
    "fused_add_rms_norm": ("std::enable_if<(((8)>(0)))&&vllm::_typeConvert<c10::BFloat16>::exists, void>::type vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>(c10::BFloat16*, long, c10::BFloat16*, c10::BFloat16 const*, float, int, int)", 3_600, [8, 1, 1], [1024, 1, 1], 36, 64, 6),
    "qkv_proj": (_GEMM.format("64x64x64"), 14_200, [40, 1, 1], [128, 1, 1], 168, 98_560, 6),
    "rotary": ("void vllm::rotary_embedding_kernel<c10::BFloat16, true>(long const*, c10::BFloat16*, c10::BFloat16*, c10::BFloat16 const*, int, long, long, long, int, int, int)", 2_500, [8, 1, 1], [512, 1, 1], 40, 0, 3),
    "cache": ("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16, __nv_bfloat16, (vllm::Fp8KVCacheDataType)0>(__nv_bfloat16 const*, __nv_bfloat16 const*, __nv_bfloat16*, __nv_bfloat16*, long const*, long, long, long, long, long, int, int, int, float const*, float const*)", 2_200, [8, 1, 1], [256, 1, 1], 28, 0, 2),
    "attn": (f"void flash::flash_fwd_splitkv_kernel<{_FLASH_TRAITS}, false, true, false, false, true, true, false, false>(flash::Flash_fwd_params)", 11_400, [1, 16, 32], [128, 1, 1], 255, 49_152, 12),
    "attn_combine": (f"void flash::flash_fwd_splitkv_combine_kernel<{_FLASH_TRAITS}, 4, 3, false>(flash::Flash_fwd_params)", 2_600, [8, 16, 1], [128, 1, 1], 64, 9_216, 9),
    "o_proj": (_GEMM.format("64x64x64"), 11_300, [32, 1, 1], [128, 1, 1], 168, 98_560, 6),
    "gate_up_proj": (_GEMM.format("128x128x64"), 72_500, [112, 1, 1], [384, 1, 1], 168, 213_248, 9),
    "silu_and_mul": ("void vllm::act_and_mul_kernel<c10::BFloat16, &(c10::BFloat16 vllm::silu_kernel<c10::BFloat16>(c10::BFloat16 const&)), true>(c10::BFloat16*, c10::BFloat16 const*, int)", 2_800, [8, 1, 1], [1024, 1, 1], 24, 0, 6),
    "down_proj": (_GEMM.format("128x64x64"), 37_800, [64, 1, 1], [256, 1, 1], 154, 164_864, 6),
    "residual_add": ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)", 2_200, [64, 1, 1], [128, 1, 1], 26, 0, 5),
    "lm_head": (_GEMM.format("128x128x64"), 158_000, [251, 1, 1], [384, 1, 1], 168, 213_248, 9),
    "argmax": ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>, unsigned int, long, 4, 4> >(at::native::ReduceOp<float, at::native::ArgMaxOps<float>, unsigned int, long, 4, 4>)", 4_300, [8, 1, 1], [32, 16, 1], 40, 16, 3),
    "positions_add": ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctorOnSelf_add<long>, std::array<char*, 2ul> >(int, at::native::CUDAFunctorOnSelf_add<long>, std::array<char*, 2ul>)", 1_800, [1, 1, 1], [128, 1, 1], 20, 0, 1),
}
NCCL_KERNEL = {"BFloat16": "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
               "Float": "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"}


@dataclass(frozen=True)
class Bottlenecks:
    """What is injected, and how much. Every size is in ns; `False` removes one."""

    host_gaps: bool = True
    host_gap_ns: int = 45_000          # extra Python time before each affected launch
    host_gap_ops: int = 4              # before each of the first N operators of layer 0, every step
    sync: bool = True
    step_prologue_ns: int = 250_000     # host scheduling work before a step's first launch
    exposed_allreduce: bool = True
    exposed_allreduce_ns: int = 110_000  # its transfer time, after the last rank arrives
    straggler: bool = True
    straggler_rank: int = 2
    straggler_slowdown: float = 1.06   # that rank's compute kernels take this much longer


@dataclass(frozen=True)
class Model:
    """Shapes of the simulated model (a 70B-class decoder, tensor parallel)."""

    layers: int = 6
    batch: int = 8
    hidden: int = 8192
    ffn_per_rank: int = 7168
    qkv_per_rank: int = 2560
    vocab: int = 128_256
    context: int = 1024
    allreduce_ns: int = 18_500         # per-layer all-reduce transfer time (overlapped)
    launch_latency_ns: int = 2_400     # launch call start -> earliest kernel start
    python_gap_ns: int = 2_300         # Python between two operators
    launch_call_ns: int = 3_600        # cudaLaunchKernel on the host
    dispatch_ns: int = 900             # per operator level, before its child
    return_ns: int = 450               # per operator level, after its child
    jitter: float = 0.04               # +- this fraction, uniform, seeded


# --- deterministic jitter ---------------------------------------------------------

def _unit(seed: int, *key: object) -> float:
    """A number in [0, 1) fixed by (seed, key): independent of call order, so switching
    a bottleneck off leaves every other duration as it was."""
    digest = hashlib.blake2b(repr((seed,) + key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# --- one rank ----------------------------------------------------------------------

@dataclass
class _Rank:
    rank: int
    seed: int
    model: Model
    slowdown: float
    pid: int = 0
    t: int = TRACE_START_NS
    free: dict = field(default_factory=lambda: {COMPUTE_STREAM: TRACE_START_NS, NCCL_STREAM: TRACE_START_NS})
    events: list = field(default_factory=list)
    ext: int = 0
    corr: int = 0
    ev_idx: int = 0
    stack: list = field(default_factory=list)
    step: int = 0
    stats: dict = field(default_factory=dict)

    def jit(self, base: int, *key: object, shared: bool = False) -> int:
        """`base` +- jitter; `shared` draws the same value on every rank."""
        who = () if shared else (self.rank,)
        u = _unit(self.seed, *who, self.step, *key)
        return round(base * (1 + self.model.jitter * (2 * u - 1)))

    def stat(self, name: str, value: int) -> None:
        self.stats.setdefault(self.step, {}).setdefault(name, 0)
        self.stats[self.step][name] += value

    # host ranges ---------------------------------------------------------------
    def open(self, name: str, cat: str = "cpu_op", args: dict | None = None) -> dict:
        self.ext += 1
        ev = {"ph": "X", "cat": cat, "name": name, "pid": self.pid, "tid": self.pid,
              "ts": self.t, "dur": 0,
              "args": {"External id": self.ext, "Record function id": 0, **(args or {}),
                       "Ev Idx": self.ev_idx}}
        self.ev_idx += 1
        self.events.append(ev)
        self.stack.append(ev)
        return ev

    def close(self, ev: dict) -> None:
        assert self.stack.pop() is ev
        ev["dur"] = self.t - ev["ts"]

    @contextmanager
    def cpu_op(self, key: str, name: str, args: dict | None = None, level: int = 0):
        """A cpu_op with dispatch time before its children and return time after."""
        ev = self.open(name, args=args)
        self.t += self.jit(self.model.dispatch_ns, key, level, "in")
        yield ev
        self.t += self.jit(self.model.return_ns, key, level, "out")
        self.close(ev)

    def runtime(self, name: str, dur: int, device_op: bool = True) -> dict:
        self.corr += 1
        args = {"External id": self.stack[-1]["args"]["External id"]} if self.stack else {}
        ev = {"ph": "X", "cat": "cuda_runtime", "name": name, "pid": self.pid, "tid": self.pid,
              "ts": self.t, "dur": dur, "args": {**args, "cbid": CBID[name], "correlation": self.corr}}
        self.events.append(ev)
        if device_op:
            self.events.append({"ph": "s", "id": self.corr, "pid": self.pid, "tid": self.pid,
                                "ts": self.t, "cat": "ac2g", "name": "ac2g"})
        return ev

    def device(self, cat: str, name: str, stream: int, start: int, dur: int, rt: dict, extra: dict) -> dict:
        ev = {"ph": "X", "cat": cat, "name": name, "pid": self.rank, "tid": stream, "ts": start, "dur": dur,
              "args": {"External id": rt["args"].get("External id", 0), **extra.pop("_head", {}),
                       "device": self.rank, "context": 1, "stream": stream,
                       "correlation": rt["args"]["correlation"], **extra}}
        self.events.append(ev)
        self.events.append({"ph": "f", "id": rt["args"]["correlation"], "pid": self.rank, "tid": stream,
                            "ts": start, "cat": "ac2g", "name": "ac2g", "bp": "e"})
        return ev

    # operators -----------------------------------------------------------------
    def python(self, key: str, extra_ns: int = 0) -> None:
        """Python between operators; `extra_ns` < 0 means none (a nested operator)."""
        if extra_ns >= 0:
            self.t += self.jit(self.model.python_gap_ns, key, "py") + extra_ns

    def launch(self, key: str, kernel: str) -> int:
        """cudaLaunchKernel of one compute kernel on the compute stream; returns the
        stream's idle time before it if the launch began after the stream drained."""
        m = self.model
        name, base, grid, block, regs, smem, occ = KERNELS[kernel]
        rt = self.runtime("cudaLaunchKernel", self.jit(m.launch_call_ns, key, kernel, "rt"))
        prev_end = self.free[COMPUTE_STREAM]
        start = max(self.t + m.launch_latency_ns, prev_end)
        dur = round(self.jit(base, key, kernel, "gpu") * self.slowdown)
        blocks = grid[0] * grid[1] * grid[2]
        threads = block[0] * block[1] * block[2]
        self.device("kernel", name, COMPUTE_STREAM, start, dur, rt, {
            "_head": {"queued": 0}, "registers per thread": regs, "shared memory": smem,
            "blocks per SM": round(blocks / NUM_SMS, 6), "warps per SM": round(blocks * threads / 32 / NUM_SMS, 6),
            "grid": grid, "block": block, "est. achieved occupancy %": occ})
        self.free[COMPUTE_STREAM] = start + dur
        self.t += rt["dur"]
        return start - prev_end if rt["ts"] > prev_end else 0

    def op(self, key: str, stack: list[tuple[str, dict]], kernels: list[str], gap_ns: int = 0) -> int:
        """A framework operator (nested cpu_ops) that launches `kernels`."""
        self.python(key, gap_ns)
        if stack:
            with self.cpu_op(key, stack[0][0], stack[0][1], level=len(stack)):
                return self.op(key, stack[1:], kernels, -1)
        # Only the first launch follows the gap; later ones in the op follow it closely.
        return [self.launch(key, k) for k in kernels][0]

    def memcpy(self, key: str, direction: str, kinds: str, nbytes: int) -> None:
        rt = self.runtime("cudaMemcpyAsync", self.jit(4_100, key, "rt"))
        start = max(self.t + self.model.launch_latency_ns, self.free[COMPUTE_STREAM])
        dur = self.jit(1_400, key, "gpu")
        self.device("gpu_memcpy", f"Memcpy {direction} ({kinds})", COMPUTE_STREAM, start, dur, rt,
                    {"bytes": nbytes, "memory bandwidth (GB/s)": round(nbytes / dur, 6)})
        self.free[COMPUTE_STREAM] = start + dur
        self.t += rt["dur"]

    def sync_stream(self, key: str) -> None:
        """cudaStreamSynchronize: the host waits until the compute stream drains."""
        rt = self.runtime("cudaStreamSynchronize", 0, device_op=False)
        begin = self.t + self.jit(700, key, "in")
        end = max(begin + self.jit(600, key, "min"), self.free[COMPUTE_STREAM] + self.jit(1_100, key, "wake"))
        rt["dur"] = end + self.jit(500, key, "out") - rt["ts"]
        self.events.append({"ph": "X", "cat": "cuda_sync", "name": "Stream Sync", "pid": self.rank,
                            "tid": COMPUTE_STREAM, "ts": begin, "dur": end - begin,
                            "args": {"External id": rt["args"]["External id"], "cuda_sync_kind": "Stream Sync",
                                     "stream": COMPUTE_STREAM, "correlation": rt["args"]["correlation"],
                                     "device": self.rank, "context": 1}})
        self.t += rt["dur"]
        self.stat("sync_wait_ns", rt["dur"])


# --- the program -------------------------------------------------------------------

def _linear(rows: int, k: int, n: int) -> list[tuple[str, dict]]:
    dims = {"Input type": ["c10::BFloat16", "c10::BFloat16", ""], "Input Dims": [[rows, k], [n, k], []]}
    return [("aten::linear", dims), ("aten::matmul", {"Input Dims": [[rows, k], [k, n]]}),
            ("aten::mm", {"Input type": ["c10::BFloat16", "c10::BFloat16"], "Input Dims": [[rows, k], [k, n]]})]


def _simple(name: str, *dims: list[int]) -> list[tuple[str, dict]]:
    return [(name, {"Input type": ["c10::BFloat16"] * len(dims), "Input Dims": list(dims)})]


class _Collective:
    """One all-reduce: host side on every rank, then the cross-rank end time."""

    def __init__(self, key: str, nelems: int, dtype: str, base_ns: int, world: int):
        self.key, self.nelems, self.dtype, self.base_ns, self.world = key, nelems, dtype, base_ns, world
        self.arrival: dict[int, int] = {}
        self.pending: dict[int, tuple[dict, dict]] = {}
        self.end = 0

    def meta(self) -> dict:
        ranks = str(list(range(self.world)))
        return {"Collective name": "allreduce", "In msg nelems": self.nelems, "Out msg nelems": self.nelems,
                "Group size": self.world, "dtype": self.dtype, "In split size": "[]", "Out split size": "[]",
                "Process Group Name": "1", "Process Group Description": "tp", "Process Group Ranks": ranks}

    def issue(self, r: _Rank) -> None:
        """c10d::allreduce_ on rank r: the NCCL stream waits for the compute stream's
        tail (event record + wait), then the kernel is enqueued; its start is r's arrival."""
        m = r.model
        m = r.model
        r.python(self.key)
        with r.cpu_op(self.key, "c10d::allreduce_", {"Input Dims": [[[m.batch, m.hidden]], []]}, 0), \
                r.cpu_op(self.key, "record_param_comms", {**self.meta(), "Rank": r.rank}, 1):
            tail = r.free[COMPUTE_STREAM]
            r.t += r.runtime("cudaEventRecord", r.jit(1_900, self.key, "rec"), device_op=False)["dur"]
            r.t += r.runtime("cudaStreamWaitEvent", r.jit(1_700, self.key, "wait"), device_op=False)["dur"]
            note = r.open("nccl:all_reduce", cat="user_annotation")
            rt = r.runtime("cudaLaunchKernel", r.jit(m.launch_call_ns + 2_000, self.key, "rt"))
            self.arrival[r.rank] = max(r.t + m.launch_latency_ns, r.free[NCCL_STREAM], tail)
            self.pending[r.rank] = (rt, note)
            r.t += rt["dur"] + r.jit(600, self.key, "post")
            r.close(note)
            r.t += r.runtime("cudaEventRecord", r.jit(1_500, self.key, "rec2"), device_op=False)["dur"]

    def complete(self, ranks: list[_Rank]) -> None:
        """Every rank's kernel ends when the last rank has arrived plus the transfer."""
        last = max(self.arrival.values())
        self.end = last + ranks[0].jit(self.base_ns, self.key, "xfer", shared=True)
        for r in ranks:
            rt, note = self.pending.pop(r.rank)
            start = self.arrival[r.rank]
            r.device("kernel", NCCL_KERNEL[self.dtype], NCCL_STREAM, start, self.end - start, rt, {
                "_head": {"queued": 0}, "registers per thread": 96, "shared memory": 103_808,
                "blocks per SM": round(16 / NUM_SMS, 6), "warps per SM": round(16 * 512 / 32 / NUM_SMS, 6),
                "grid": [16, 1, 1], "block": [512, 1, 1], "est. achieved occupancy %": 0, **self.meta()})
            r.events.append({"ph": "X", "cat": "gpu_user_annotation", "name": note["name"], "pid": r.rank,
                             "tid": NCCL_STREAM, "ts": start, "dur": self.end - start,
                             "args": {"External id": note["args"]["External id"]}})
            r.free[NCCL_STREAM] = self.end
            r.stat("collective_wait_ns", last - start)
            r.stats[r.step].setdefault("waits", []).append((start, last))

    def wait(self, r: _Rank) -> None:
        """work.wait(): the compute stream waits for the all-reduce's end."""
        r.python(self.key + ".wait")
        r.t += r.runtime("cudaStreamWaitEvent", r.jit(1_700, self.key, "cwait"), device_op=False)["dur"]
        r.free[COMPUTE_STREAM] = max(r.free[COMPUTE_STREAM], self.end)


def _simulate_step(ranks: list[_Rank], b: Bottlenecks, step: int) -> None:
    m = ranks[0].model
    world = len(ranks)
    rows = m.batch
    steps = {}
    for r in ranks:
        r.step = step
        r.stats.setdefault(step, {})
        steps[r.rank] = r.open(f"ProfilerStep#{step}", cat="user_annotation")
        r.t += r.jit(b.step_prologue_ns, "prologue")  # scheduler / input preparation

    def each(fn) -> None:
        for r in ranks:
            fn(r)

    def compute(r: _Rank, key: str, stack, kernels, gapped: bool = False) -> None:
        idle = r.op(key, stack, kernels, b.host_gap_ns if gapped else 0)
        if gapped:
            r.stat("host_gap_idle_ns", idle)

    def inputs(r: _Rank) -> None:
        r.python("inputs")
        with r.cpu_op("inputs", "aten::copy_", {"Input Dims": [[rows], [rows]], "Input type": ["long int"] * 2}):
            r.memcpy("inputs", "HtoD", "Pinned -> Device", rows * 8 * 2)
            r.stats[step]["first_device_start"] = r.events[-2]["ts"]

    each(lambda r: r.stats[step].__setitem__("model", r.open("execute_model", cat="user_annotation")))
    each(inputs)
    each(lambda r: compute(r, "embed", [("aten::embedding", {"Input Dims": [[m.vocab // world, m.hidden], [rows]]}),
                                         ("aten::index_select", {})], ["embed"]))
    gapped_left = {r.rank: b.host_gap_ops if b.host_gaps else 0 for r in ranks}

    def layer_op(key, stack, kernels):
        def run(r: _Rank) -> None:
            gapped = gapped_left[r.rank] > 0
            gapped_left[r.rank] -= 1
            compute(r, key, stack, kernels, gapped)
        each(run)

    for layer in range(m.layers):
        p = f"L{layer}."
        norm = ("_C::rms_norm", "rms_norm") if layer == 0 else ("_C::fused_add_rms_norm", "fused_add_rms_norm")
        layer_op(p + "norm", _simple(norm[0], [rows, m.hidden], [m.hidden]), [norm[1]])
        layer_op(p + "qkv", _linear(rows, m.hidden, m.qkv_per_rank), ["qkv_proj"])
        layer_op(p + "rope", _simple("_C::rotary_embedding", [rows], [rows, m.qkv_per_rank]), ["rotary"])
        layer_op(p + "cache", _simple("_C_cache_ops::reshape_and_cache_flash", [rows, 2, 128]), ["cache"])
        layer_op(p + "attn", _simple("vllm::unified_attention_with_output", [rows, 16, 128], [rows, m.context]),
                 ["attn", "attn_combine"])
        layer_op(p + "o_proj", _linear(rows, m.qkv_per_rank * 4 // 5, m.hidden), ["o_proj"])
        allreduce = _Collective(p + "allreduce", rows * m.hidden, "BFloat16", m.allreduce_ns, world)
        each(allreduce.issue)
        allreduce.complete(ranks)
        layer_op(p + "gate_up", _linear(rows, m.hidden, 2 * m.ffn_per_rank), ["gate_up_proj"])
        layer_op(p + "act", _simple("_C::silu_and_mul", [rows, 2 * m.ffn_per_rank]), ["silu_and_mul"])
        layer_op(p + "down", _linear(rows, m.ffn_per_rank, m.hidden), ["down_proj"])
        each(allreduce.wait)
        layer_op(p + "residual", _simple("aten::add", [rows, m.hidden], [rows, m.hidden]), ["residual_add"])

    layer_op("final_norm", _simple("_C::fused_add_rms_norm", [rows, m.hidden], [m.hidden]), ["fused_add_rms_norm"])
    layer_op("lm_head", _linear(rows, m.hidden, m.vocab // world), ["lm_head"])
    if b.exposed_allreduce:
        logits = _Collective("logits_allreduce", rows * m.vocab, "Float", b.exposed_allreduce_ns, world)
        each(logits.issue)
        logits.complete(ranks)
        each(logits.wait)
        for r in ranks:
            r.stat("exposed_allreduce_transfer_ns", logits.end - max(logits.arrival.values()))
    layer_op("argmax", _simple("aten::argmax", [rows, m.vocab]), ["argmax"])
    layer_op("positions", _simple("aten::add_", [rows], []), ["positions_add"])

    def output(r: _Rank) -> None:
        r.python("output")
        with r.cpu_op("output", "aten::copy_", {"Input Dims": [[rows], [rows], []],
                                                "Input type": ["long int", "long int", "Scalar"]}):
            r.memcpy("output", "DtoH", "Device -> Pinned", rows * 8)  # non_blocking: no sync
        if b.sync:  # `if finished.any().item():` blocks until the GPU drains
            r.python("item")
            scalar = {"Input Dims": [[]], "Input type": ["bool"]}
            with r.cpu_op("item", "aten::item", scalar), r.cpu_op("item", "aten::_local_scalar_dense", scalar, 1):
                r.memcpy("item", "DtoH", "Device -> Pageable", 1)
                r.sync_stream("item")
        r.stats[step]["last_device_end"] = r.free[COMPUTE_STREAM]
        r.t += r.jit(m.return_ns, "model", "out")
        r.close(r.stats[step].pop("model"))
        r.t += r.jit(m.python_gap_ns * 3, "step_end")
        r.close(steps[r.rank])  # ProfilerStep#N runs until the next prof.step()

    each(output)


def simulate(ranks: int = 4, steps: int = 12, seed: int = 0, bottlenecks: Bottlenecks = Bottlenecks(),
             model: Model = Model()) -> list[_Rank]:
    """Run the simulation; returns each rank's events (times in ns) and per-step stats."""
    if ranks < 1 or steps < 1:
        raise ValueError("ranks and steps must be at least 1")
    slow = {bottlenecks.straggler_rank: bottlenecks.straggler_slowdown} if bottlenecks.straggler else {}
    sims = [_Rank(r, seed, model, slow.get(r, 1.0), pid=HOST_PID0 + 17 * r) for r in range(ranks)]
    for step in range(steps):
        _simulate_step(sims, bottlenecks, step)
    return sims
