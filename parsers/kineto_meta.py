"""Top-level keys of a Kineto trace -> the `traces` row and `devices`."""
from __future__ import annotations

from typing import Any

from .kineto_args import as_int
from .kineto_tables import (AMD_ARCH_BY_NAME, HOSTNAME_KEYS, LOG_KEYS, METADATA_KEYS,
                            VENDOR_BY_CATEGORY_PREFIX, VENDOR_BY_DEVICE_NAME,
                            VENDOR_BY_RUNTIME_PREFIX, VENDOR_KEYS)


def _first(table, text: str) -> str | None:
    low = text.lower()
    for prefix, value in table:
        if low.startswith(prefix):
            return value
    return None


def _device_list(top: dict) -> list[dict]:
    props = top.get("deviceProperties")
    return [p for p in props if isinstance(p, dict)] if isinstance(props, list) else []


def vendor(top: dict, cats: set, runtime_prefixes) -> str | None:
    """From the runtime versions the trace names, else device names, else events."""
    for key, value, _ in VENDOR_KEYS:
        if key in top:
            return value
    for p in _device_list(top):
        found = _first(VENDOR_BY_DEVICE_NAME, str(p.get("name") or ""))
        if found:
            return found
    for cat in cats:
        found = isinstance(cat, str) and _first(VENDOR_BY_CATEGORY_PREFIX, cat)
        if found:
            return found
    for prefix, _ in runtime_prefixes.most_common():
        found = _first(VENDOR_BY_RUNTIME_PREFIX, prefix)
        if found:
            return found
    return None


def producer(top: dict) -> str:
    parts = [f"{label} {top[key]}" for key, _, label in VENDOR_KEYS
             if key in ("cupti_version", "roctracer_version") and key in top]
    return "PyTorch profiler" + (f" ({', '.join(parts)})" if parts else "")


def trace_fields(top: dict, trace_vendor: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "format_version": None if top.get("schemaVersion") is None else str(top["schemaVersion"]),
        "producer": producer(top), "vendor": trace_vendor,
        "base_time_ns": as_int(top.get("baseTimeNanoseconds")),
    }
    for key in HOSTNAME_KEYS:
        if isinstance(top.get(key), str):
            fields["hostname"] = top[key]
            break
    dist = top.get("distributedInfo")
    if isinstance(dist, dict):
        rank = as_int(dist.get("rank"))
        if rank is not None:
            fields["rank"], fields["rank_source"] = rank, "distributedInfo"
        fields["world_size"] = as_int(dist.get("world_size"))
    fields["metadata"] = metadata(top)
    return fields


def metadata(top: dict) -> dict[str, Any]:
    """Only the keys named in METADATA_KEYS, runtime versions and log line counts: never
    user names, cluster job names or the process environment."""
    meta = {k: top[k] for k in METADATA_KEYS if k in top}
    versions = {k: top[k] for k, _, _ in VENDOR_KEYS if k in top}
    if versions:
        meta["versions"] = versions
    for key in LOG_KEYS:
        lines = top.get(key)
        if isinstance(lines, list):
            meta[key] = {"lines": len(lines), "first": [str(x)[:300] for x in lines[:3]]}
    return meta


def device_rows(top: dict, trace_vendor: str | None) -> list[dict]:
    """Every device deviceProperties lists (that is what the trace says)."""
    rows = []
    for p in _device_list(top):
        device = as_int(p.get("id"))
        if device is None:
            continue
        name = p.get("name") or None
        dev_vendor = _first(VENDOR_BY_DEVICE_NAME, name or "") or trace_vendor
        rows.append({
            "device": device, "vendor": dev_vendor, "name": name,
            "arch": _arch(dev_vendor, name, p),
            "sm_count": as_int(p.get("numSms")), "warp_size": as_int(p.get("warpSize")),
            "memory_bytes": as_int(p.get("totalGlobalMem")),
            "properties": p,
        })
    return rows


def match_devices(rows: list[dict], used: list[int], w) -> tuple[list[dict], dict[int, int]]:
    """deviceProperties rows, and {id the activities carry: ordinal} for activities to be
    renumbered. ROCm traces give activities the HSA node id (CPU agents first: one visible
    MI300X is device 2, or 9) and deviceProperties the process's ordinal (0), as CUDA traces
    give both. One property and one device in use are the same device: it is stored under
    the ordinal, as every format stores a device, with the activities' id as `node_id`.
    Anything less clear is left as the trace gives it, and said in ingest_issues."""
    ids = sorted(r["device"] for r in rows)
    missing = [d for d in used if d not in ids]
    if not rows or not missing:
        return rows, {}
    if len(rows) == 1 and len(used) == 1:
        w.note(f"activities carry device id {used[0]}, a node id beside deviceProperties' one device "
               f"(ordinal {ids[0]}): stored as device {ids[0]} with node_id {used[0]}")
        return [{**rows[0], "node_id": used[0]}], {used[0]: ids[0]}
    w.note(f"device ids of activities ({', '.join(map(str, missing))}) not among deviceProperties ids "
           f"({', '.join(map(str, ids))}): their properties are not known")
    return rows, {}


def _arch(dev_vendor: str | None, name: str | None, p: dict) -> str | None:
    major, minor = as_int(p.get("computeMajor")), as_int(p.get("computeMinor"))
    if dev_vendor == "nvidia" and major is not None and minor is not None:
        return f"sm_{major}{minor}"
    if dev_vendor == "amd" and name:
        low = name.lower()
        for key, arch in AMD_ARCH_BY_NAME:
            if key in low:
                return arch
    return None
