"""The data the Kineto parser maps with: categories -> kinds (kineto_categories.csv) and
small tables for vendors, architectures, copies and collectives. Mappings are data, not
branches, so a new profiler build is one row away."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from profkit.schema import EVENT_KINDS

# Kinds whose events sit on a device lane: `device` and `stream` set, `pid`/`tid` NULL.
DEVICE_LANE_KINDS = frozenset({"kernel", "memcpy", "memset", "gpu_annotation", "sync"})


@lru_cache(maxsize=1)
def category_table() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """(cat -> kind, (cat, name) -> kind). The empty cat stands for a missing `cat`.

    A cat absent from the table is not guessed: its events are counted as the issue
    `unknown category X` (see docs in the CSV's note column)."""
    by_cat: dict[str, str] = {}
    by_name: dict[tuple[str, str], str] = {}
    path = Path(__file__).with_name("kineto_categories.csv")
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["kind"] not in EVENT_KINDS:
                raise ValueError(f"kineto_categories.csv: unknown kind {row['kind']!r}")
            if row["name"]:
                by_name[(row["cat"], row["name"])] = row["kind"]
            else:
                by_cat[row["cat"]] = row["kind"]
    return by_cat, by_name


# Flow categories (ph s/t/f): launch flows duplicate what derive.link_launches finds by
# correlation, so they are counted as read and not stored; others become links.
FLOW_LINK_KIND = {"ac2g": None, "async_cpu_to_gpu": None, "fwdbwd": "fwdbwd"}
DEFAULT_FLOW_LINK_KIND = "flow"

# Top-level keys that name the runtime the profiler was built against.
VENDOR_KEYS = (
    ("cupti_version", "nvidia", "CUPTI"),
    ("cuda_runtime_version", "nvidia", "CUDA runtime"),
    ("cuda_driver_version", "nvidia", "CUDA driver"),
    ("roctracer_version", "amd", "roctracer"),
    ("hip_runtime_version", "amd", "HIP runtime"),
    ("hip_driver_version", "amd", "HIP driver"),
)
# Device-name prefixes (case-insensitive) -> vendor, for traces without version keys.
VENDOR_BY_DEVICE_NAME = (("nvidia", "nvidia"), ("tesla", "nvidia"), ("amd", "amd"),
                         ("radeon", "amd"), ("intel", "intel"), ("artemis", "other"), ("mtia", "other"))
# Event evidence when neither says: a category or a runtime-call name prefix (the first
# three letters, lower case, of the most frequent runtime names).
VENDOR_BY_CATEGORY_PREFIX = (("mtia_", "other"), ("xpu_", "intel"), ("privateuse1_", "other"))
VENDOR_BY_RUNTIME_PREFIX = (("hip", "amd"), ("cuda", "nvidia"), ("cu", "nvidia"), ("ur", "intel"), ("ze", "intel"))

# AMD devices: Kineto's computeMajor/Minor (9, 4) do not give the stepping, so the gfx
# target comes only from product names documented by AMD; otherwise arch stays NULL.
AMD_ARCH_BY_NAME = (("mi300", "gfx942"), ("mi325", "gfx942"), ("mi308", "gfx942"),
                    ("mi350", "gfx950"), ("mi355", "gfx950"), ("mi250", "gfx90a"),
                    ("mi210", "gfx90a"), ("mi100", "gfx908"))

# Copies: words in Kineto names ("Memcpy HtoD (Pageable -> Device)", Intel XPU's "Memcpy
# M2D (MEMORY -> DEVICE)") and MTIA/ROCm args.
COPY_DIRECTIONS = ("HtoD", "DtoH", "DtoD", "HtoH", "PtoP")
COPY_DIRECTION_ALIASES = {"HOST_TO_DEVICE": "HtoD", "DEVICE_TO_HOST": "DtoH",
                          "DEVICE_TO_DEVICE": "DtoD", "HOST_TO_HOST": "HtoH",
                          "PEER_TO_PEER": "PtoP",
                          # CUDA arrays are device memory
                          "DtoA": "DtoD", "AtoD": "DtoD", "AtoA": "DtoD", "HtoA": "HtoD", "AtoH": "DtoH",
                          # Intel PTI: M system memory, H USM host memory, D device (S, USM
                          # shared memory, may be on either side: no direction).
                          "M2D": "HtoD", "H2D": "HtoD", "D2M": "DtoH", "D2H": "DtoH", "D2D": "DtoD",
                          "M2M": "HtoH", "M2H": "HtoH", "H2M": "HtoH", "H2H": "HtoH"}
# "Host" (ROCm builds; Intel's USM host memory) does not say pageable or pinned the same
# way for every vendor: unknown (NULL). Intel's MEMORY is pageable system memory, SHARED
# USM shared (managed) memory.
MEMORY_KINDS = {"pageable": "pageable", "pinned": "pinned", "device": "device",
                "managed": "managed", "array": "array", "memory": "pageable", "shared": "managed"}

# Element sizes of PyTorch dtype names as Kineto writes them (`dtype` of NCCL kernels).
DTYPE_BYTES = {
    "float": 4, "float32": 4, "bfloat16": 2, "half": 2, "float16": 2, "double": 8,
    "float64": 8, "int": 4, "int32": 4, "long": 8, "int64": 8, "short": 2, "int16": 2,
    "char": 1, "int8": 1, "byte": 1, "uint8": 1, "bool": 1, "complexfloat": 8,
    "complexdouble": 16, "complexhalf": 4, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "uint16": 2, "uint32": 4, "uint64": 8,
}

# Top-level keys kept in traces.metadata (never user names or cluster job names).
METADATA_KEYS = ("schemaVersion", "trace_id", "displayTimeUnit", "distributedInfo",
                 "record_shapes", "with_stack", "profile_memory", "with_flops",
                 "with_modules")
LOG_KEYS = ("INFO", "ERROR", "WARNING")
HOSTNAME_KEYS = ("hostname", "host_name")
