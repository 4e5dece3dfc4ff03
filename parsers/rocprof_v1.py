"""Legacy rocprof (v1, roctracer/rocprofiler) output: a directory holding `results.json`
(Chrome trace written by rocprof's tblextr: `ts`/`dur` are strings in microseconds,
processes named `CPU HIP API`, `CPU HSA API`, `Markers and Ranges`, `COPY`, `GPU0`...,
`GPU Barriers0`...), `results.csv` (one row per dispatch, columns depend on the options
used), `results.db`, `results.stats.csv`, `results.hip_stats.csv`,
`results.copy_stats.csv` and `results.sysinfo.txt` (rocminfo: GPU names and archs).

Events come from `results.json` where there is one (it holds the API calls, copies and
kernels), else from `results.csv` (kernels only). Times: the exact `BeginNs`/`EndNs`
the records carry in `args`, else the microsecond strings converted exactly (decimal)
to nanoseconds. The launch -> device links are tblextr's flow arrows (`ph` s/t): the
arrow starts inside the API call and ends on the copy or kernel; both ends get the
arrow id as `correlation`. `gpu-id`/`dev-id` is rocprofiler's GPU index (the ordinal);
the HSA node id comes from the sysinfo agent list.
"""
from __future__ import annotations

import bisect
import re
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import msgspec
import pyarrow as pa

from profkit.errors import TraceError

from . import rocm_common as rc
from .kineto_read import closed_after_last_record, count_cut_short, count_padding, without_padding

FORMAT = "rocprof_v1"
_LANE_NAME = re.compile(rb'"args":\s*\{"name":\s*"(CPU HIP API|CPU HSA API|COPY|GPU\d+|GPU Barriers\d+|'
                        rb'Markers and Ranges)"\},\s*"ph":\s*"M"')
_CSV_NEEDS = ("KernelName", "gpu-id")
# Lanes of a tblextr trace -> (event kind, source_cat).
_LANES = ((re.compile(r"^CPU HIP API$"), "runtime", "hip_api"),
          (re.compile(r"^CPU HSA API$"), "runtime", "hsa_api"),
          (re.compile(r"^Markers and Ranges$"), "annotation", "marker_api"),
          (re.compile(r"^COPY$"), "memcpy", "copy"),
          (re.compile(r"^GPU Barriers(\d+)$"), "sync", "barrier"),
          (re.compile(r"^GPU(\d+)$"), "kernel", "kernel_dispatch"))
_SIZE_ARG = re.compile(r"sizeBytes\((\d+)\)")
# Fields of a record that become columns (the rest stay in args).
_COLUMN_ARGS = {"BeginNs", "EndNs", "DurationNs", "Name", "KernelName", "pid", "tid"}


def _head(path: Path, n: int = 8192) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _is_v1_json(path: Path) -> bool:
    head = _head(path)
    return b'"traceEvents"' in head and _LANE_NAME.search(head) is not None


def _is_v1_csv(path: Path) -> bool:
    line = _head(path, 4096).split(b"\n", 1)[0].decode("utf-8", "replace")
    cols = [c.strip().strip('"') for c in line.split(",")]
    return all(c in cols for c in _CSV_NEEDS)


def _members(path: Path) -> dict[str, Path]:
    """The v1 files of a directory, by role, judged from content."""
    found: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        name = file.name.lower()
        try:
            if name.endswith(".json") and "json" not in found and _is_v1_json(file):
                found["json"] = file
            elif name.endswith(".csv") and "csv" not in found and _is_v1_csv(file):
                found["csv"] = file
            elif name.endswith(".txt") and "sysinfo" not in found and b"HSA Agents" in _head(file, 4096):
                found["sysinfo"] = file
            elif name.endswith("stats.csv"):
                found.setdefault("stats", file)
        except OSError:
            continue
    return found


def detect(path: Path) -> bool:
    try:
        if path.is_dir():
            members = _members(path)
            return "json" in members or "csv" in members
        if path.suffix.lower() == ".json":
            return _is_v1_json(path)
        if path.suffix.lower() == ".csv":
            return _is_v1_csv(path)
    except OSError:
        return False
    return False


def parse(path: Path, sink) -> None:
    if path.is_dir():
        members = _members(path)
    else:
        members = {**{k: v for k, v in _members(path.parent).items() if k in ("sysinfo", "stats")},
                   ("json" if path.suffix.lower() == ".json" else "csv"): path}
    agents = parse_sysinfo(members["sysinfo"]) if "sysinfo" in members else None
    with sink.trace(path, FORMAT) as w:
        if agents:
            w.add_rows("devices", agents.device_rows())
        try:
            if "json" in members:
                gpus_seen = _parse_json(members["json"], w)
            elif "csv" in members:
                gpus_seen = _parse_csv(members["csv"], w)
            else:
                raise TraceError(path, "no rocprof results.json or results.csv in the directory")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
            raise TraceError(path, f"unusable value: {str(exc).splitlines()[0]}") from None
        if not agents:
            w.add_rows("devices", [{"device": g, "vendor": rc.VENDOR} for g in sorted(gpus_seen)])
        w.set_trace(producer="rocprof (v1)", vendor=rc.VENDOR, metadata={
            "files": sorted(p.name for p in members.values()),
            "events_from": members.get("json", members.get("csv")).name,
            "cpu_agents": agents.cpu_summary() if agents else None,
        })
        sink.report(str(path), 1, 1)


# --- sysinfo (rocminfo) ---------------------------------------------------------

def parse_sysinfo(path: Path) -> rc.Agents:
    """Agents from rocminfo's text: name, marketing name, node, type, CUs, wavefront."""
    agents, block, pool_coarse = [], None, False
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.rstrip()
        if re.match(r"^Agent \d+$", line.strip()) and not raw.startswith(" "):
            block = {}
            agents.append(block)
            pool_coarse = False
            continue
        if block is None or ":" not in line:
            continue
        key, _, value = line.strip().partition(":")
        key, value = key.strip(), value.strip()
        if key == "Segment":
            pool_coarse = "GLOBAL" in value and "COARSE GRAINED" in value
        elif key == "Size" and pool_coarse and "memory_kb" not in block:
            block["memory_kb"] = value
        elif key not in block:
            block[key] = value
    out = []
    for b in agents:
        if "Node" not in b:
            continue
        gpu = b.get("Device Type", "").upper() == "GPU"
        number = lambda v: int(re.match(r"\d+", v).group(0)) if v and re.match(r"\d+", v) else None  # noqa: E731
        clock = number(b.get("Max Clock Freq. (MHz)"))
        memory = number(b.get("memory_kb"))
        out.append(rc.Agent(
            node_id=int(number(b["Node"])), type="GPU" if gpu else "CPU",
            name=b.get("Marketing Name") or b.get("Name"), arch=b.get("Name") if gpu else None,
            cu_count=number(b.get("Compute Unit")), wavefront=number(b.get("Wavefront Size")),
            memory_bytes=memory * 1024 if gpu and memory else None,
            clock_hz=clock * 1_000_000 if gpu and clock else None,
            properties={k: v for k, v in b.items() if k in (
                "Name", "Marketing Name", "Uuid", "Node", "Device Type", "Chip ID", "Compute Unit",
                "SIMDs per CU", "Wavefront Size", "Max Clock Freq. (MHz)", "BDFID", "memory_kb")},
        ))
    return rc.Agents(out)


# --- results.json -----------------------------------------------------------------

def _us_to_ns(value) -> int:
    return int((Decimal(str(value)) * 1000).to_integral_value(ROUND_HALF_EVEN))


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _lane(name: str | None):
    for pattern, kind, cat in _LANES:
        m = pattern.match(name or "")
        if m:
            return kind, cat, (int(m.group(1)) if m.groups() else None)
    return None


def _parse_json(path: Path, w) -> set[int]:
    data, padding = without_padding(path.read_bytes())
    count_padding(w, padding)
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        # Cut short inside its events (rocprof stopped while writing): read up to the last
        # whole record, the loss counted as an unusable record (reports warn of it).
        found = closed_after_last_record(data) if "truncated" in str(exc) else None
        doc = msgspec.json.decode(found[0]) if found else None
        if not any(isinstance(e, dict) and e.get("ph") not in (None, "M") for e in (doc or {}).get("traceEvents", [])):
            raise TraceError(path, f"not valid JSON: {exc}") from None  # nothing but metadata before the cut
        _, lost, records_lost = found
        count_cut_short(w, len(data), lost, records_lost)
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc
    if not isinstance(events, list):
        raise TraceError(path, "no traceEvents list")
    lanes = {}
    for e in events:
        if isinstance(e, dict) and e.get("ph") == "M" and e.get("name") == "process_name":
            lanes[e.get("pid")] = (e.get("args") or {}).get("name")
    rows, flows_s, flows_t, gpus = [], [], [], set()
    for e in events:
        if not isinstance(e, dict) or not e:
            continue   # tblextr opens the list with an empty `{}`: framing, not a record
        w.read()
        ph = e.get("ph")
        if ph == "M":
            continue
        if ph in ("s", "t", "f"):
            (flows_s if ph == "s" else flows_t).append(e)
            continue
        lane = _lane(lanes.get(e.get("pid")))
        if ph != "X" or lane is None:
            w.issue(f"unknown record (ph {ph!r} on lane {lanes.get(e.get('pid'))!r})", 1, e)
            continue
        args = e.get("args") or {}
        begin, end = _int(args.get("BeginNs")), _int(args.get("EndNs"))
        if begin is None or end is None:
            try:
                begin = _us_to_ns(e["ts"])
                end = begin + _us_to_ns(e.get("dur", 0))
            except (KeyError, ArithmeticError, ValueError):
                w.issue("record without a usable ts", 1, e)
                continue
        kind, cat, lane_gpu = lane
        row = {"kind": kind, "source_cat": cat, "start_ns": begin, "end_ns": end,
               "name": e.get("name"), "args": {k: v for k, v in args.items() if k not in _COLUMN_ARGS},
               "_key": (e.get("pid"), e.get("tid"), _int(e.get("ts")), _int(e.get("dur")))}
        if kind in ("runtime", "annotation"):
            row["pid"] = _int(args.get("pid"))
            row["tid"] = _int(args.get("tid", e.get("tid")))
        else:
            gpu = _int(args.get("gpu-id", args.get("dev-id")))
            row["device"] = gpu if gpu is not None else lane_gpu
            row["stream"] = _int(args.get("stream-id", args.get("queue-id")))
            row["pid"] = _int(args.get("pid"))
            if row["device"] is not None:
                gpus.add(row["device"])
        if kind == "kernel":
            row["name"] = rc.kernel_display_name(args.get("KernelName") or e.get("name"))
        rows.append(row)
    _link_flows(rows, flows_s, flows_t, w)
    _write_rows(rows, w)
    return gpus


def _link_flows(rows: list[dict], starts: list[dict], ends: list[dict], w) -> None:
    """Flow arrow `s` (inside the API call) -> `t` (on the device record): both ends take
    the arrow id as their correlation."""
    host: dict[tuple, list] = {}
    device: dict[tuple, dict] = {}
    for row in rows:
        pid, tid, ts, dur = row["_key"]
        if ts is None:
            continue
        if row["kind"] == "runtime":
            host.setdefault((pid, tid), []).append((ts, ts + (dur or 0), row))
        elif row["kind"] in ("kernel", "memcpy"):
            device[(pid, tid, ts)] = row
    for lane in host.values():
        lane.sort(key=lambda x: x[0])
    starts_by_id = {}
    for s in starts:
        calls = host.get((s.get("pid"), s.get("tid")), [])
        i = bisect.bisect_right([c[0] for c in calls], _int(s.get("ts")) or 0) - 1
        if i >= 0 and calls[i][0] <= (_int(s.get("ts")) or 0) <= calls[i][1]:
            starts_by_id[s.get("id")] = calls[i][2]
        else:
            w.issue("flow start outside any API call", 1, s)
    for t in ends:
        target = device.get((t.get("pid"), t.get("tid"), _int(t.get("ts"))))
        call = starts_by_id.get(t.get("id"))
        if target is None or call is None:
            w.issue("flow end without its record", 1, t)
            continue
        flow_id = _int(t.get("id"))
        call["correlation"] = flow_id
        target["correlation"] = flow_id
        if target["kind"] == "memcpy":
            size = _SIZE_ARG.search(str((call.get("args") or {}).get("args", "")))
            if size:
                target["bytes"] = int(size.group(1))


def _write_rows(rows: list[dict], w) -> None:
    if not rows:
        return
    cols = {c: [r.get(c) for r in rows] for c in
            ("kind", "name", "start_ns", "pid", "tid", "device", "stream", "correlation", "source_cat", "args")}
    cols["dur_ns"] = [r["end_ns"] - r["start_ns"] for r in rows]
    cols["event_id"] = list(range(len(rows)))
    bad = [i for i, d in enumerate(cols["dur_ns"]) if d < 0]
    if bad:
        w.issue("record ending before it starts", len(bad), rows[bad[0]]["name"])
        keep = [i for i, d in enumerate(cols["dur_ns"]) if d >= 0]
        rows = [rows[i] for i in keep]
        cols = {c: [v[i] for i in keep] for c, v in cols.items()}
        cols["event_id"] = list(range(len(rows)))
    w.add_events(cols)
    kernels = [(i, r) for i, r in enumerate(rows) if r["kind"] == "kernel"]
    if kernels:
        grid = [_int(r["args"].get("grd")) for _, r in kernels]
        wg = [_int(r["args"].get("wgr")) for _, r in kernels]
        info = {"event_id": [i for i, _ in kernels],
                "grid_x": [-(-g // b) if g and b else None for g, b in zip(grid, wg)],
                "block_x": wg,
                "registers_per_thread": [_int(r["args"].get("arch_vgpr", r["args"].get("vgpr"))) for _, r in kernels],
                "shared_memory_bytes": [_int(r["args"].get("lds")) for _, r in kernels]}
        if any(v is not None for k, col in info.items() if k != "event_id" for v in col):
            w.append("kernel_info", info)
    copies = [(i, r) for i, r in enumerate(rows) if r["kind"] == "memcpy"]
    if copies:
        dirs = [rc.copy_direction(r["name"]) for _, r in copies]
        w.append("copies", {"event_id": [i for i, _ in copies], "bytes": [r.get("bytes") for _, r in copies],
                            "direction": dirs,
                            "src_memory": ["device" if d in ("DtoH", "DtoD") else None for d in dirs],
                            "dst_memory": ["device" if d in ("HtoD", "DtoD") else None for d in dirs]})


# --- results.csv (per dispatch) ---------------------------------------------------

def _parse_csv(path: Path, w) -> set[int]:
    table = rc.read_csv(path, w)
    cols = rc.Columns(table.column_names)
    missing = cols.missing({"begin": ("BeginNs",), "end": ("EndNs",), "name": ("KernelName",)})
    if missing:
        raise TraceError(path, f"missing column(s) {', '.join(missing)} (rocprof run without --timestamp on?)")
    n = table.num_rows
    w.read(n)
    get = lambda *names: table[cols.find(*names)] if cols.find(*names) else None  # noqa: E731
    used = {cols.find("KernelName"), cols.find("BeginNs"), cols.find("EndNs"), cols.find("pid")}
    args = rc.json_args({c: table[c] for c in table.column_names if c not in used}, n)
    gpu = get("gpu-id")
    written, keep = rc.write_events(w, 0, "kernel", {
        "name": rc.map_strings(get("KernelName"), lambda s: rc.kernel_display_name(str(s).strip('"')),
                                pa.string()),
        "start_ns": get("BeginNs"), "end_ns": get("EndNs"), "pid": get("pid"), "device": gpu,
        "stream": get("queue-id"), "source_cat": "kernel_dispatch", "args": args,
    }, "kernel dispatch")
    rc.write_kernel_info(w, 0, {"grid_items_x": get("grd"), "workgroup_x": get("wgr"),
                                "vgpr": get("arch_vgpr", "vgpr"), "lds": get("lds")}, keep, n)
    return set(v for v in gpu.to_pylist() if v is not None) if gpu is not None else set()
