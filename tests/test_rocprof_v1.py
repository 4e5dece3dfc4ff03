"""rocprof v1: results.json / results.csv + companions, checked against the raw files."""
from __future__ import annotations

import csv
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import shared_trace
from profkit.ingest import ingest
from profkit.store import Store

PROFKIT = str(Path(sys.executable).with_name("profkit"))


def load(*paths) -> Store:
    store = Store.open(None)
    ingest([str(p) for p in paths], store)
    return store


def sysinfo_gpus(path: Path) -> list[tuple[int, str]]:
    """(node, marketing name) of GPU agents, read from rocminfo text independently."""
    text = path.read_text()
    out = []
    for block in re.split(r"\*{7}\s*\nAgent \d+\s*\n\*{7}", text)[1:]:
        fields = dict(re.findall(r"^  ([A-Za-z .()]+?):\s+(.*?)\s*$", block, re.M))
        if fields.get("Device Type") == "GPU":
            out.append((int(fields["Node"]), fields["Marketing Name"]))
    return sorted(out)


def lanes(doc) -> dict:
    return {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e.get("ph") == "M"}


def test_mi300x_bmm_directory():
    root = shared_trace("rocprof/v1_mi300x_bmm")
    doc = json.loads((root / "results.json").read_text())
    names = lanes(doc)
    xs = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
    kernels = [e for e in xs if re.match(r"GPU\d+$", names[e["pid"]])]
    store = load(root)
    assert store.scalar("SELECT count(*) FROM traces") == 1
    assert store.scalar("SELECT count(*) FROM events WHERE kind='kernel'") == len(kernels)
    assert store.scalar("SELECT sum(dur_ns) FROM events WHERE kind='kernel'") == sum(
        int(e["args"]["EndNs"]) - int(e["args"]["BeginNs"]) for e in kernels)
    # The stats companion agrees.
    with open(root / "results.stats.csv") as fh:
        stats = list(csv.DictReader(fh))
    assert store.scalar("SELECT sum(dur_ns) FROM events WHERE kind='kernel'") == sum(int(s["TotalDurationNs"]) for s in stats)
    with open(root / "results.copy_stats.csv") as fh:
        assert store.scalar("SELECT count(*) FROM events WHERE kind='memcpy'") == sum(int(s["Calls"]) for s in csv.DictReader(fh))
    hip = [e for e in xs if names[e["pid"]] == "CPU HIP API"]
    assert store.scalar("SELECT count(*) FROM events WHERE kind='runtime'") == len(hip)
    # Devices from sysinfo: GPU ordinal i is the i-th GPU node.
    gpus = sysinfo_gpus(root / "results.sysinfo.txt")
    devices = store.rows("SELECT device, node_id, name, arch FROM devices ORDER BY device")
    assert [(d["node_id"], d["name"]) for d in devices] == gpus
    kdev = store.scalar("SELECT device FROM events WHERE kind='kernel'")
    assert kdev == int(kernels[0]["args"]["dev-id"])
    # Runtime -> device links: one per flow arrow that ends on a record.
    flows = [e for e in doc["traceEvents"] if e.get("ph") == "t"]
    launches = store.rows("SELECT runtime_name, device_kind FROM launches ORDER BY device_start_ns")
    assert len(launches) == len(flows)
    assert {"runtime_name": "hipLaunchKernel", "device_kind": "kernel"} in launches
    sizes = sorted(int(m) for e in hip for m in re.findall(r"sizeBytes\((\d+)\)", e["args"]["args"]))
    assert sorted(r["bytes"] for r in store.rows("SELECT bytes FROM copies_view")) == sizes
    # Timestamps: the exact BeginNs (nanoseconds), not the microsecond ts.
    assert store.scalar("SELECT start_ns FROM events WHERE kind='kernel'") == int(kernels[0]["args"]["BeginNs"])


def test_r9700_results_csv_directory():
    root = shared_trace("rocprof/v1_r9700_llamacpp")
    with open(root / "results.csv") as fh:
        raw = list(csv.DictReader(fh))
    store = load(root)
    assert store.scalar("SELECT count(*) FROM events WHERE kind='kernel'") == len(raw)
    assert store.scalar("SELECT sum(dur_ns) FROM events WHERE kind='kernel'") == sum(
        int(r["EndNs"]) - int(r["BeginNs"]) for r in raw)
    db = sqlite3.connect(root / "results.db")
    assert store.scalar("SELECT count(*) FROM events") == db.execute("SELECT count(*) FROM KERN").fetchone()[0]
    gpus = sysinfo_gpus(root / "results.sysinfo.txt")
    gpu_id = int(raw[0]["gpu-id"])
    row = store.rows("SELECT d.name, d.node_id, d.warp_size FROM devices d WHERE device = ?", [gpu_id])[0]
    assert (row["node_id"], row["name"]) == gpus[gpu_id]
    assert row["warp_size"] == int(raw[0]["wave_size"])
    fills = sum(1 for r in raw if "rocclr_fillBuffer" in r["KernelName"])
    assert store.scalar("SELECT count(*) FROM events WHERE category='memory'") >= fills > 0
    # Geometry: grid blocks = ceil(grd / wgr), VGPRs, LDS.
    k = store.rows("SELECT grid_x, block_x, registers_per_thread FROM kernels ORDER BY start_ns LIMIT 1")[0]
    first = min(raw, key=lambda r: int(r["BeginNs"]))
    assert k["block_x"] == int(first["wgr"]) and k["grid_x"] == -(-int(first["grd"]) // int(first["wgr"]))
    assert k["registers_per_thread"] == int(first["arch_vgpr"])


def test_bare_results_csv_same_as_directory():
    root = shared_trace("rocprof/v1_r9700_llamacpp")
    a, b = load(root), load(root / "results.csv")
    q = "SELECT count(*), sum(dur_ns), count(DISTINCT name) FROM events WHERE kind='kernel'"
    assert a.con.execute(q).fetchone() == b.con.execute(q).fetchone()


def test_microsecond_strings_convert_exactly(tmp_path):
    doc = {"traceEvents": [{}, {"args": {"name": "GPU0"}, "ph": "M", "pid": 6, "name": "process_name"},
                           {"ph": "X", "name": "k", "pid": 6, "tid": 1, "ts": "1000.0015", "dur": "2.5",
                            "args": {"dev-id": "0"}},
                           {"ph": "X", "name": "k", "pid": 99, "tid": 1, "ts": "1", "dur": "1"}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    store = load(path)
    assert store.rows("SELECT start_ns, dur_ns FROM events") == [{"start_ns": 1000002, "dur_ns": 2500}]
    # The record on a lane with no name is counted, not dropped silently.
    assert store.scalar("SELECT sum(count) FROM ingest_issues") == 1


def test_bad_inputs_one_line(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text('Index,KernelName,gpu-id,queue-id\n0,"k",0,0\n')
    result = subprocess.run([PROFKIT, "ingest", str(path), "-o", str(tmp_path / "o.duckdb")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "BeginNs" in lines[0]
    broken = tmp_path / "d" / "results.json"
    broken.parent.mkdir()
    broken.write_text('{ "traceEvents":[{}\n,{"args":{"name":"GPU0"},"ph":"M","pid":6,"name":"process_name"}\n,{"ph":"X",')
    result = subprocess.run([PROFKIT, "ingest", str(broken), "-o", str(tmp_path / "o2.duckdb")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
