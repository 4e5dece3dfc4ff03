"""Bandwidth of collectives the way nccl-tests reports it, and the link peaks to hold it against.

nccl-tests (doc/PERFORMANCE.md) defines, for a collective of size S bytes taking t seconds
on n ranks:

    algbw = S / t
    busbw = algbw * factor(op, n)

    all_reduce      2(n-1)/n      S = the buffer size (input = output)
    reduce_scatter   (n-1)/n      S = the total input, recvcount * n * dtype size
    all_gather       (n-1)/n      S = the total output, sendcount * n * dtype size
    all_to_all       (n-1)/n      S = the whole per-rank buffer
    broadcast, reduce, send, recv, send_recv   1

busbw is the figure to compare with a link's peak bandwidth, whatever n is.

Kineto's `In msg nelems` / `Out msg nelems` are the per-rank input and output element
counts of the call: for all_gather `Out` is the gathered total (n x `In`), for
reduce_scatter `In` is the total (n x `Out`). So S is the larger side for those two ops,
and for every other op the input side. `collectives.bytes` is the input side per rank.
"""
from __future__ import annotations

import re

# Bytes per element by dtype name, lower-cased, as PyTorch (`Float`, `BFloat16`,
# `c10::BFloat16`, `torch.float16`) and NCCL (`f32`, `bf16`) spell them.
DTYPE_BYTES = {
    "float": 4, "float32": 4, "f32": 4, "fp32": 4,
    "double": 8, "float64": 8, "f64": 8, "fp64": 8,
    "half": 2, "float16": 2, "f16": 2, "fp16": 2,
    "bfloat16": 2, "bf16": 2,
    "int": 4, "int32": 4, "i32": 4, "uint32": 4, "u32": 4,
    "long": 8, "int64": 8, "i64": 8, "uint64": 8, "u64": 8,
    "short": 2, "int16": 2, "uint16": 2,
    "byte": 1, "uint8": 1, "u8": 1, "char": 1, "int8": 1, "i8": 1, "bool": 1,
    "complexfloat": 8, "complex64": 8, "complexdouble": 16, "complex128": 16,
    "complexhalf": 4,
}
_DTYPE_PREFIXES = (("float8", 1), ("fp8", 1), ("f8", 1), ("float4", 1))  # fp4 packs two per byte: 1 is an upper bound

# Ops whose message size S is the larger of input and output (see module doc).
_TOTAL_SIZE_OPS = {"all_gather": "out", "reduce_scatter": "in"}


def dtype_bytes(dtype: str | None) -> int | None:
    """Size in bytes of one element of `dtype`, or None if unknown."""
    if not dtype:
        return None
    key = dtype.strip().lower()
    for prefix in ("c10::", "torch.", "at::", "nccl"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key in DTYPE_BYTES:
        return DTYPE_BYTES[key]
    for prefix, size in _DTYPE_PREFIXES:
        if key.startswith(prefix):
            return size
    return None


def message_bytes(op: str, bytes_in: int | None, in_elems: int | None, out_elems: int | None,
                  dtype: str | None, group_size: int | None) -> int | None:
    """S, the nccl-tests size of one collective in bytes, or None if the input did not say."""
    size = dtype_bytes(dtype)
    in_bytes = bytes_in if bytes_in is not None else (in_elems * size if in_elems is not None and size else None)
    out_bytes = out_elems * size if out_elems is not None and size else None
    side = _TOTAL_SIZE_OPS.get(op)
    if side == "out":  # all_gather: the gathered output
        if out_bytes is not None and (in_bytes is None or out_bytes >= in_bytes):
            return out_bytes
        if in_bytes is not None and group_size:
            return in_bytes * group_size
        return out_bytes
    if side == "in":  # reduce_scatter: the whole input
        if in_bytes is not None and (out_bytes is None or in_bytes >= out_bytes):
            return in_bytes
        if out_bytes is not None and group_size:
            return out_bytes * group_size
        return in_bytes
    return in_bytes if in_bytes is not None else out_bytes


def bus_factor(op: str, n: int | None) -> float | None:
    """nccl-tests correction factor from algorithm to bus bandwidth; None if not defined."""
    if op in ("broadcast", "reduce", "send", "recv", "send_recv"):
        return 1.0
    if not n or n < 2:
        return None  # a one-rank "collective" moves nothing over a link
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return None


def algbw(size_bytes: int, dur_ns: int) -> float | None:
    """Algorithm bandwidth in bytes/s."""
    if size_bytes is None or not dur_ns or dur_ns <= 0:
        return None
    return size_bytes / (dur_ns / 1e9)


def busbw(op: str, size_bytes: int, dur_ns: int, n: int | None) -> float | None:
    """Bus bandwidth in bytes/s (nccl-tests), or None where it is not defined."""
    alg = algbw(size_bytes, dur_ns)
    factor = bus_factor(op, n)
    if alg is None or factor is None:
        return None
    return alg * factor


GB = 1e9

# Approximate peak interconnect bandwidth per GPU, one direction, in bytes/s, used when the
# store's `devices.link_bandwidth_bytes_per_s` is empty. busbw is a one-direction figure
# (nccl-tests: "the speed of the hardware bottleneck"), so the table holds half the
# bidirectional totals vendors advertise. First match wins: PCIe boards before SXM/OAM.
# Sources are listed in docs/analysis/communication.md.
LINK_PEAKS: tuple[tuple[str, float, str], ...] = (
    (r"A100.*PCIE|A100-PCI", 32 * GB, "A100 PCIe (PCIe Gen4 x16, ~32 GB/s per direction)"),
    (r"H100.*PCIE|H100 NVL", 64 * GB, "H100 PCIe (PCIe Gen5 x16, ~64 GB/s per direction)"),
    (r"V100.*PCIE", 16 * GB, "V100 PCIe (PCIe Gen3 x16, ~16 GB/s per direction)"),
    (r"\bA100\b|A100-", 300 * GB, "A100 SXM NVLink3: 12 links, 600 GB/s bidirectional"),
    (r"\bH100\b|\bH800\b|\bH200\b|GH200", 450 * GB, "H100/H200 SXM NVLink4: 18 links, 900 GB/s bidirectional"),
    (r"\bB200\b|\bB100\b|GB200|\bB300\b|GB300", 900 * GB, "B200 NVLink5: 18 links, 1.8 TB/s bidirectional"),
    (r"V100", 150 * GB, "V100 SXM2 NVLink2: 6 links, 300 GB/s bidirectional"),
    (r"MI300X|MI325X", 448 * GB, "MI300X Infinity Fabric: 7 peer links x 64 GB/s per direction"),
    (r"MI355X|MI350X", 538 * GB, "MI350X/MI355X Infinity Fabric: 7 peer links, ~1075 GB/s bidirectional"),
    (r"MI250X?|MI250", 200 * GB, "MI250X Infinity Fabric between OAMs (approximate)"),
)


def link_peak_from_name(device_name: str | None) -> tuple[float | None, str | None]:
    """(peak bytes/s per direction, source note) from a device's product name."""
    if not device_name:
        return None, None
    for pattern, peak, note in LINK_PEAKS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak, note
    return None, None
