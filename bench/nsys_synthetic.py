"""Build a synthetic Nsight Systems SQLite export with the real column layout (schema
3.25.0): kernels, CUDA runtime calls, StringIds, processes, threads, a GPU table and
the export metadata. Used by bench/ingest_nsys.py; deterministic for a given seed.

    python bench/nsys_synthetic.py OUT.sqlite --kernels 1000000 --runtime 2000000

Two processes on two devices, each with its own correlation-id sequence starting at 1
(as real multi-process exports have), so ids repeat across processes. Every kernel has
a cudaLaunchKernel row; the remaining runtime rows are calls without device activity.
"""
from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE StringIds (id INTEGER NOT NULL PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE META_DATA_EXPORT (name TEXT NOT NULL, value TEXT);
CREATE TABLE PROCESSES (globalPid INTEGER, pid INTEGER, name TEXT);
CREATE TABLE ThreadNames (nameId INTEGER NOT NULL, priority INTEGER, globalTid INTEGER);
CREATE TABLE TARGET_INFO_GPU (vmId INTEGER, id INTEGER, name TEXT, busLocation TEXT, isDiscrete INTEGER,
    l2CacheSize INTEGER, totalMemory INTEGER, memoryBandwidth INTEGER, clockRate INTEGER, smCount INTEGER,
    cuDevice INTEGER, threadsPerWarp INTEGER, computeMajor INTEGER, computeMinor INTEGER);
CREATE TABLE ENUM_NSYS_EVENT_CLASS (id INTEGER NOT NULL PRIMARY KEY, name TEXT, label TEXT);
CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (
    start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL, contextId INTEGER NOT NULL,
    greenContextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER,
    demangledName INTEGER NOT NULL, shortName INTEGER NOT NULL, mangledName INTEGER, launchType INTEGER,
    cacheConfig INTEGER, registersPerThread INTEGER NOT NULL, gridX INTEGER NOT NULL, gridY INTEGER NOT NULL,
    gridZ INTEGER NOT NULL, blockX INTEGER NOT NULL, blockY INTEGER NOT NULL, blockZ INTEGER NOT NULL,
    staticSharedMemory INTEGER NOT NULL, dynamicSharedMemory INTEGER NOT NULL,
    localMemoryPerThread INTEGER NOT NULL, localMemoryTotal INTEGER NOT NULL, gridId INTEGER NOT NULL,
    sharedMemoryExecuted INTEGER, graphNodeId INTEGER, sharedMemoryLimitConfig INTEGER,
    qmdBulkReleaseDone INTEGER, qmdPreexitDone INTEGER, qmdLastCtaDone INTEGER, graphId INTEGER,
    clusterX INTEGER, clusterY INTEGER, clusterZ INTEGER, clusterSchedulingPolicy INTEGER,
    maxPotentialClusterSize INTEGER, maxActiveClusters INTEGER, sharedMemoryRequestedPercentage INTEGER,
    tensorSizeMinusOneElements TEXT NOT NULL);
CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (
    start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER NOT NULL, globalTid INTEGER,
    correlationId INTEGER, nameId INTEGER NOT NULL, returnValue INTEGER NOT NULL, callchainId INTEGER);
"""

KERNEL_TEMPLATES = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float>, std::array<char*, 3>>(int, T2, T3)",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel__5x_cublas",
    "void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>, true>(Flash_fwd_params)",
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096>)",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>>>(T3)",
    "void at::native::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, const T1 *, T1 *)",
)
OTHER_CALLS = ("cudaStreamIsCapturing_v10000", "cuKernelGetAttribute", "cudaEventRecord_v3020",
               "cudaMemsetAsync_v3020", "cudaStreamSynchronize_v3020")
PIDS = (4242, 4343)


def global_tid(pid: int, tid: int) -> int:
    # Serialized GlobalId: hardware/VM id in the top bits, then pid (24 bits), tid (24 bits).
    return (1 << 56) | (pid << 24) | tid


def build(path: Path, kernels: int, runtime: int, seed: int = 0, distinct_names: int = 600) -> Path:
    if runtime < kernels:
        raise ValueError("every kernel needs a launch: runtime rows >= kernels")
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)

    strings: list[str] = []

    def sid(text: str) -> int:
        strings.append(text)
        return len(strings) - 1

    demangled = [sid(f"{KERNEL_TEMPLATES[i % len(KERNEL_TEMPLATES)]} [v{i}]") for i in range(distinct_names)]
    short = [sid(KERNEL_TEMPLATES[i % len(KERNEL_TEMPLATES)].split("(")[0].split("<")[0].split()[-1]) for i in range(distinct_names)]
    launch_id = sid("cudaLaunchKernel_v7000")
    other_ids = [sid(n) for n in OTHER_CALLS]
    thread_name = sid("python3")
    con.executemany("INSERT INTO StringIds VALUES (?, ?)", list(enumerate(strings)))
    con.executemany("INSERT INTO META_DATA_EXPORT VALUES (?, ?)", [
        ("EXPORT_PRODUCT_NAME", "NVIDIA Nsight Systems"), ("EXPORT_PRODUCT_VERSION", "2026.2.1.210"),
        ("EXPORT_SCHEMA_VERSION", "3.25.0"), ("EXPORT_SCHEMA_VERSION_MAJOR", "3"),
        ("EXPORT_SCHEMA_VERSION_MINOR", "25"), ("EXPORT_HOST", "synthetic")])
    con.executemany("INSERT INTO PROCESSES VALUES (?, ?, ?)",
                    [(global_tid(p, 0), p, "python3") for p in PIDS])
    con.executemany("INSERT INTO ThreadNames VALUES (?, ?, ?)",
                    [(thread_name, 20, global_tid(p, p)) for p in PIDS])
    con.executemany("INSERT INTO TARGET_INFO_GPU VALUES (0, ?, 'NVIDIA H100 80GB HBM3', ?, 1, 52428800, "
                    "85520809984, 3352320000000, 1980000000, 132, ?, 32, 9, 0)",
                    [(d, f"0000:{d:02x}:00.0", d) for d in range(len(PIDS))])
    con.executemany("INSERT INTO ENUM_NSYS_EVENT_CLASS VALUES (?, ?, ?)",
                    [(0, "TRACE_PROCESS_EVENT_CUDA_RUNTIME", "CUDA runtime"),
                     (1, "TRACE_PROCESS_EVENT_CUDA_DRIVER", "CUDA driver")])

    # Per process: kernels and calls in time order with their own correlation ids.
    n_proc = len(PIDS)
    k_per = np.full(n_proc, kernels // n_proc)
    k_per[: kernels % n_proc] += 1
    r_per = np.full(n_proc, runtime // n_proc)
    r_per[: runtime % n_proc] += 1
    batch = 200_000
    for p, pid in enumerate(PIDS):
        nk, nr = int(k_per[p]), int(r_per[p])
        # Which runtime rows are launches: nk of the nr slots.
        is_launch = np.zeros(nr, bool)
        is_launch[rng.choice(nr, nk, replace=False)] = True
        corr = np.arange(1, nr + 1, dtype=np.int64)
        gaps = rng.integers(1_000, 6_000, nr)
        r_start = 1_000_000_000 + np.cumsum(gaps)
        r_dur = rng.integers(500, 4_000, nr)
        names = np.where(is_launch, launch_id, rng.choice(other_ids, nr))
        tid = np.where(rng.random(nr) < 0.9, pid, pid + 7)
        gtid = np.array([global_tid(pid, pid), global_tid(pid, pid + 7)], dtype=np.int64)[(tid != pid).astype(int)]
        eclass = np.where(names == other_ids[1], 1, 0)
        rows = zip(r_start.tolist(), (r_start + r_dur).tolist(), eclass.tolist(), gtid.tolist(),
                   corr.tolist(), names.tolist(), [0] * nr, [None] * nr)
        _insert(con, "CUPTI_ACTIVITY_KIND_RUNTIME", 8, rows, batch)

        k_corr = corr[is_launch]
        k_start = r_start[is_launch] + rng.integers(3_000, 20_000, nk)
        k_dur = rng.integers(1_000, 200_000, nk)
        name_ix = rng.integers(0, distinct_names, nk)
        dem = np.array(demangled)[name_ix]
        sho = np.array(short)[name_ix]
        stream = rng.choice([7, 13, 21], nk)
        grid = rng.integers(1, 4096, nk)
        block = rng.choice([64, 128, 256, 512], nk)
        regs = rng.integers(16, 255, nk)
        graph_node = np.where(rng.random(nk) < 0.05, rng.integers(1, 10_000, nk), -1)
        gpid = global_tid(pid, 0)
        k_rows = (
            (s, s + d, p, 1, None, st, c, gpid, dn, sn, dn, 1, 0, r, g, 1, 1, b, 1, 1, 0, sm, 0, 0, i,
             32768, (gn if gn >= 0 else None), 0, None, None, None, (1 if gn >= 0 else None),
             0, 0, 0, 0, 1, 0, None, "[]")
            for i, (s, d, st, c, dn, sn, r, g, b, sm, gn) in enumerate(zip(
                k_start.tolist(), k_dur.tolist(), stream.tolist(), k_corr.tolist(), dem.tolist(),
                sho.tolist(), regs.tolist(), grid.tolist(), block.tolist(),
                (block * 16).tolist(), graph_node.tolist())))
        _insert(con, "CUPTI_ACTIVITY_KIND_KERNEL", 40, k_rows, batch)
    con.commit()
    con.close()
    tmp.replace(path)
    return path


def _insert(con: sqlite3.Connection, table: str, width: int, rows, batch: int) -> None:
    sql = f"INSERT INTO {table} VALUES ({', '.join('?' * width)})"
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= batch:
            con.executemany(sql, chunk)
            chunk = []
    if chunk:
        con.executemany(sql, chunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kernels", type=int, default=1_000_000)
    ap.add_argument("--runtime", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build(args.out, args.kernels, args.runtime, args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
