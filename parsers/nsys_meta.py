"""Trace-level facts of an Nsight export: producer and schema version, host, devices,
thread and process names, and the tables this parser does not turn into events.

META_DATA_CAPTURE holds the profiled process's whole environment (tokens, keys): it is
never read here, and no other table's content is copied out wholesale for that reason.
"""
from __future__ import annotations

import json
import sqlite3

from .nsys_db import Catalog, quote

NEVER_READ = ("META_DATA_CAPTURE",)

# Export schema majors this parser was checked against (2.9 .. 3.25 in the test files).
KNOWN_SCHEMA_MAJORS = (2, 3)

# Tables that carry records we turn into events.
EVENT_TABLES = (
    "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
    "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS", "OSRT_API",
)
# Tables a CUDA export normally has; their absence is noted in ingest_issues.
EXPECTED_TABLES = (
    "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
    "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS",
    "StringIds", "ThreadNames", "TARGET_INFO_GPU",
)
# Lookup, metadata and auxiliary tables: read for names or deliberately left alone,
# holding no timed records of their own.
AUXILIARY_PREFIXES = ("ENUM_", "TARGET_INFO_", "META_DATA_", "sqlite_", "NVTX_PAYLOAD_", "ANALYSIS_")
AUXILIARY_SUFFIXES = ("CALLCHAINS",)
AUXILIARY_TABLES = ("StringIds", "EXPORT_META_DATA", "ThreadNames", "PROCESSES", "ProcessStreams",
                    "UnwindMethodType")


def schema_version(meta: dict[str, str]) -> tuple[str | None, int | None]:
    version = meta.get("EXPORT_SCHEMA_VERSION")
    major = meta.get("EXPORT_SCHEMA_VERSION_MAJOR") or (version.split(".")[0] if version else None)
    try:
        return version, int(major) if major is not None else None
    except ValueError:
        return version, None


def producer(meta: dict[str, str]) -> str | None:
    version = meta.get("EXPORT_PRODUCT_VERSION")
    if not version:
        return None
    name = (meta.get("EXPORT_PRODUCT_NAME") or "Nsight Systems").removeprefix("NVIDIA ").strip()
    return f"{name} {version}"


# TARGET_INFO_SYSTEM_ENV also holds `DeviceEnvironment`: the environment nsys was started
# in, secrets included. Only these host properties are kept.
SYSTEM_KEYS = ("Hostname", "OsDescription", "KernelVersion", "CpuArchitecture", "CpuCores", "CpuSpeedMhz",
               "CpuDescription", "HardwarePlatform", "SoftwarePlatform", "NvDriverVersion", "CudaDriverVersion")
# META_DATA_EXPORT keys kept in traces.metadata (not the export's file paths or user).
EXPORT_KEY_PREFIXES = ("EXPORT_PRODUCT", "EXPORT_SCHEMA", "EXPORT_TIME", "EXPORT_PLATFORM", "EXPORT_ARCH",
                       "DERIVED_")


def export_facts(meta: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k.startswith(EXPORT_KEY_PREFIXES)}


def system_env(con: sqlite3.Connection, cat: Catalog) -> dict[str, str]:
    """Host properties from TARGET_INFO_SYSTEM_ENV (SYSTEM_KEYS only)."""
    if not cat.has("TARGET_INFO_SYSTEM_ENV") or not {"name", "value"} <= set(cat.columns["TARGET_INFO_SYSTEM_ENV"]):
        return {}
    marks = ", ".join("?" for _ in SYSTEM_KEYS)
    return {str(n): v for n, v in con.execute(
        f"SELECT name, value FROM TARGET_INFO_SYSTEM_ENV WHERE name IN ({marks})", SYSTEM_KEYS)}


def session_start(con: sqlite3.Connection, cat: Catalog) -> dict:
    out = {}
    if cat.has("TARGET_INFO_SESSION_START_TIME"):
        row = con.execute("SELECT * FROM TARGET_INFO_SESSION_START_TIME LIMIT 1").fetchone()
        if row:
            out.update(zip(cat.columns["TARGET_INFO_SESSION_START_TIME"], row))
    if cat.has("ANALYSIS_DETAILS") and {"startTime", "stopTime"} <= set(cat.columns["ANALYSIS_DETAILS"]):
        row = con.execute("SELECT startTime, stopTime FROM ANALYSIS_DETAILS LIMIT 1").fetchone()
        if row:
            out["analysisStartTime"], out["analysisStopTime"] = row
    return out


def base_time_ns(session: dict) -> int | None:
    """Unix epoch time of the trace clock's zero: the capture started at `utcEpochNs` (UTC)
    and at `startTime` on the trace clock (ANALYSIS_DETAILS; equal to `systemClockNs`
    where schema 3.25 has it)."""
    utc, start = session.get("utcEpochNs"), session.get("analysisStartTime", session.get("systemClockNs"))
    if isinstance(utc, int) and isinstance(start, int):
        return utc - start
    return None


def devices(con: sqlite3.Connection, cat: Catalog, seen: list[int]) -> list[dict]:
    """One row per GPU: TARGET_INFO_GPU (ordinal = cuDevice, the CUDA ordinal activity
    rows use in deviceId; else its id), remapped by TARGET_INFO_CUDA_DEVICE where the
    export has it; plus a bare row for every deviceId seen in activity but not described."""
    rows: dict[int, dict] = {}
    cuda_of_gpu: dict[int, int] = {}
    if cat.has("TARGET_INFO_CUDA_DEVICE") and {"gpuId", "cudaId"} <= set(cat.columns["TARGET_INFO_CUDA_DEVICE"]):
        for gpu, cuda in con.execute("SELECT gpuId, min(cudaId) FROM TARGET_INFO_CUDA_DEVICE GROUP BY gpuId"):
            if gpu is not None and cuda is not None:
                cuda_of_gpu[int(gpu)] = int(cuda)
    if cat.has("TARGET_INFO_GPU"):
        names = cat.columns["TARGET_INFO_GPU"]
        for values in con.execute("SELECT * FROM TARGET_INFO_GPU"):
            props = dict(zip(names, values))
            gpu_id = props.get("id")
            if gpu_id is not None and int(gpu_id) in cuda_of_gpu:
                ordinal = cuda_of_gpu[int(gpu_id)]
            elif props.get("cuDevice") is not None:
                ordinal = int(props["cuDevice"])
            elif gpu_id is not None:
                ordinal = int(gpu_id)
            else:
                continue
            major = props.get("computeMajor", props.get("smMajor"))
            minor = props.get("computeMinor", props.get("smMinor"))
            rows[ordinal] = {
                "device": ordinal, "node_id": None if gpu_id is None or int(gpu_id) == ordinal else int(gpu_id),
                "vendor": "nvidia", "name": props.get("name"),
                "arch": f"sm_{major}{minor}" if major is not None and minor is not None else None,
                "sm_count": props.get("smCount"), "warp_size": props.get("threadsPerWarp"),
                "memory_bytes": props.get("totalMemory"),
                "memory_bandwidth_bytes_per_s": props.get("memoryBandwidth"),
                "clock_hz": props.get("clockRate"),
                "properties": json.dumps({k: v for k, v in props.items() if not isinstance(v, bytes)}, default=str),
            }
    for device in seen:
        if device is not None and int(device) not in rows:
            rows[int(device)] = {"device": int(device), "vendor": "nvidia", "name": None}
    return [rows[d] for d in sorted(rows)]


def threads(con: sqlite3.Connection, cat: Catalog, pids: set[int]) -> list[dict]:
    """Thread names (ThreadNames) and the names of processes that appear in the trace."""
    out = []
    if cat.has("ThreadNames") and {"nameId", "globalTid"} <= set(cat.columns["ThreadNames"]):
        join = "LEFT JOIN StringIds s ON s.id = t.nameId" if cat.has("StringIds") else ""
        value = "s.value" if cat.has("StringIds") else "CAST(t.nameId AS TEXT)"
        priority = "t.priority" if cat.has_column("ThreadNames", "priority") else "NULL"
        for gtid, name, _prio in con.execute(
                f"SELECT DISTINCT t.globalTid, {value}, {priority} FROM ThreadNames t {join}"):
            if gtid is None:
                continue
            out.append({"pid": (int(gtid) >> 24) & 0xFFFFFF, "tid": int(gtid) & 0xFFFFFF, "name": name})
    if cat.has("PROCESSES") and {"pid", "name"} <= set(cat.columns["PROCESSES"]):
        thread_pids = {t["pid"] for t in out}
        for pid, name in con.execute("SELECT DISTINCT pid, name FROM PROCESSES"):
            if pid is not None and (int(pid) in pids or int(pid) in thread_pids):
                out.append({"pid": int(pid), "tid": None, "name": name})
    return out


def unread_tables(con: sqlite3.Connection, cat: Catalog) -> list[tuple[str, int]]:
    """Tables with timed records this parser does not ingest, with their row counts."""
    out = []
    for table in sorted(cat.columns):
        if (table in EVENT_TABLES or table in AUXILIARY_TABLES or table in NEVER_READ
                or table.startswith(AUXILIARY_PREFIXES) or table.endswith(AUXILIARY_SUFFIXES)):
            continue
        try:
            count = con.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]
        except sqlite3.Error:
            continue
        if count:
            out.append((table, int(count)))
    return out
