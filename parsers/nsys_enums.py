"""Names for the numeric codes in Nsight exports.

Exports carry their own ENUM_* tables (id, name, label); we read them when present and
map by the symbol name (`CUDA_MEMCPY_KIND_HTOD`), which is stable, rather than by id.
Older exports (schema 2.x) have no ENUM tables: then the FALLBACK tables below, taken
from the ENUM tables of schema 3.13-3.25 exports (identical there), supply the names.
"""
from __future__ import annotations

import sqlite3

from .nsys_db import Catalog

# table -> {id: (symbol, label)}; used only when the export lacks the table.
FALLBACK: dict[str, dict[int, tuple[str, str]]] = {
    "ENUM_CUDA_MEMCPY_OPER": {
        0: ("CUDA_MEMCPY_KIND_UNKNOWN", "Unknown"), 1: ("CUDA_MEMCPY_KIND_HTOD", "Host-to-Device"),
        2: ("CUDA_MEMCPY_KIND_DTOH", "Device-to-Host"), 3: ("CUDA_MEMCPY_KIND_HTOA", "Host-to-Array"),
        4: ("CUDA_MEMCPY_KIND_ATOH", "Array-to-Host"), 5: ("CUDA_MEMCPY_KIND_ATOA", "Array-to-Array"),
        6: ("CUDA_MEMCPY_KIND_ATOD", "Array-to-Device"), 7: ("CUDA_MEMCPY_KIND_DTOA", "Device-to-Array"),
        8: ("CUDA_MEMCPY_KIND_DTOD", "Device-to-Device"), 9: ("CUDA_MEMCPY_KIND_HTOH", "Host-to-Host"),
        10: ("CUDA_MEMCPY_KIND_PTOP", "Peer-to-Peer"), 11: ("CUDA_MEMCPY_KIND_UVM_HTOD", "Unified Host-to-Device"),
        12: ("CUDA_MEMCPY_KIND_UVM_DTOH", "Unified Device-to-Host"),
        13: ("CUDA_MEMCPY_KIND_UVM_DTOD", "Unified Device-to-Device"),
    },
    "ENUM_CUDA_MEM_KIND": {
        0: ("CUDA_MEMOPR_MEMORY_KIND_PAGEABLE", "Pageable"), 1: ("CUDA_MEMOPR_MEMORY_KIND_PINNED", "Pinned"),
        2: ("CUDA_MEMOPR_MEMORY_KIND_DEVICE", "Device"), 3: ("CUDA_MEMOPR_MEMORY_KIND_ARRAY", "Array"),
        4: ("CUDA_MEMOPR_MEMORY_KIND_MANAGED", "Managed"),
        5: ("CUDA_MEMOPR_MEMORY_KIND_DEVICE_STATIC", "Device Static"),
        6: ("CUDA_MEMOPR_MEMORY_KIND_MANAGED_STATIC", "Managed Static"),
        7: ("CUDA_MEMOPR_MEMORY_KIND_UNKNOWN", "Unknown"),
    },
    "ENUM_CUPTI_SYNC_TYPE": {
        0: ("CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_UNKNOWN", "Unknown"),
        1: ("CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_EVENT_SYNCHRONIZE", "Event sync"),
        2: ("CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_WAIT_EVENT", "Stream wait sync"),
        3: ("CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_SYNCHRONIZE", "Stream sync"),
        4: ("CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_CONTEXT_SYNCHRONIZE", "Context sync"),
    },
    "ENUM_NSYS_EVENT_CLASS": {
        0: ("TRACE_PROCESS_EVENT_CUDA_RUNTIME", "CUDA runtime"),
        1: ("TRACE_PROCESS_EVENT_CUDA_DRIVER", "CUDA driver"),
        27: ("TRACE_PROCESS_EVENT_OS_RUNTIME", "OSRT runtime"),
    },
    "ENUM_NSYS_EVENT_TYPE": {
        33: ("NvtxCategory", "NvtxCategory"), 34: ("NvtxMark", "NvtxMark"),
        59: ("NvtxPushPopRange", "NvtxPushPopRange"), 60: ("NvtxStartEndRange", "NvtxStartEndRange"),
        70: ("NvtxtPushPopRange", "NvtxtPushPopRange"), 71: ("NvtxtStartEndRange", "NvtxtStartEndRange"),
        75: ("NvtxDomainCreate", "NvtxDomainCreate"), 76: ("NvtxDomainDestroy", "NvtxDomainDestroy"),
    },
}

# Store vocabulary (schema.copies) from the enum symbols. Arrays are device memory.
COPY_DIRECTION = {
    "HTOD": "HtoD", "DTOH": "DtoH", "HTOA": "HtoD", "ATOH": "DtoH", "ATOA": "DtoD", "ATOD": "DtoD",
    "DTOA": "DtoD", "DTOD": "DtoD", "HTOH": "HtoH", "PTOP": "PtoP", "UVM_HTOD": "HtoD",
    "UVM_DTOH": "DtoH", "UVM_DTOD": "DtoD",
}
MEMORY_KIND = {
    "PAGEABLE": "pageable", "PINNED": "pinned", "DEVICE": "device", "ARRAY": "array",
    "MANAGED": "managed", "DEVICE_STATIC": "device", "MANAGED_STATIC": "managed",
}
NVTX_RANGES = ("NvtxPushPopRange", "NvtxStartEndRange", "NvtxtPushPopRange", "NvtxtStartEndRange")
NVTX_MARKS = ("NvtxMark",)
NVTX_METADATA = ("NvtxCategory", "NvtxDomainCreate", "NvtxDomainDestroy")


def load(con: sqlite3.Connection, cat: Catalog, table: str) -> dict[int, tuple[str, str]]:
    """{id: (symbol, label)} from the export's table, else from FALLBACK."""
    if cat.has(table) and {"id", "name"} <= set(cat.columns[table]):
        label = "label" if cat.has_column(table, "label") else "name"
        rows = con.execute(f"SELECT id, name, {label} FROM {table}").fetchall()
        if rows:
            return {int(i): (str(n), str(lab if lab is not None else n)) for i, n, lab in rows}
    return dict(FALLBACK.get(table, {}))


def memcpy_kinds(con, cat) -> list[dict]:
    out = []
    for code, (symbol, label) in load(con, cat, "ENUM_CUDA_MEMCPY_OPER").items():
        suffix = symbol.removeprefix("CUDA_MEMCPY_KIND_")
        short = suffix.replace("UVM_", "UVM ").replace("TO", "to") if suffix != "UNKNOWN" else "Unknown"
        out.append({"id": code, "direction": COPY_DIRECTION.get(suffix), "short": short, "label": label})
    return out


def memory_kinds(con, cat) -> list[dict]:
    out = []
    for code, (symbol, label) in load(con, cat, "ENUM_CUDA_MEM_KIND").items():
        suffix = symbol.removeprefix("CUDA_MEMOPR_MEMORY_KIND_")
        out.append({"id": code, "memory": MEMORY_KIND.get(suffix), "label": label})
    return out


def labels(con, cat, table: str) -> list[dict]:
    return [{"id": code, "label": label} for code, (_, label) in load(con, cat, table).items()]


def event_type_ids(con, cat, names: tuple[str, ...]) -> list[int]:
    return sorted(code for code, (symbol, _) in load(con, cat, "ENUM_NSYS_EVENT_TYPE").items()
                  if symbol in names)
