"""rocprofv3 CSV: counts, times, devices and links checked against the raw CSVs."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_trace
from profkit.ingest import ingest
from profkit.store import Store

PROFKIT = str(Path(sys.executable).with_name("profkit"))


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def load(*paths) -> Store:
    store = Store.open(None)
    ingest([str(p) for p in paths], store)
    return store


def run_cli(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROFKIT, "ingest", str(path), "-o", str(tmp_path / "out.duckdb")],
                          capture_output=True, text=True)


def assert_one_line_error(result: subprocess.CompletedProcess, path: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_mi300a_rocm62_kernels_devices():
    root = shared_trace("rocprof/v3_csv_mi300a_rocm6.2")
    raw = rows(root / "53730_kernel_trace.csv")
    agents = rows(root / "53730_agent_info.csv")
    gpus = sorted((a for a in agents if a["Agent_Type"] == "GPU"), key=lambda a: int(a["Node_Id"]))
    store = load(root)
    assert store.scalar("SELECT count(*) FROM traces") == 1
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") == len(raw)
    assert store.scalar("SELECT sum(dur_ns) FROM events WHERE kind = 'kernel'") == sum(
        int(r["End_Timestamp"]) - int(r["Start_Timestamp"]) for r in raw)
    devices = store.rows("SELECT device, node_id, name, arch, sm_count, warp_size FROM devices ORDER BY device")
    assert [d["node_id"] for d in devices] == [int(g["Node_Id"]) for g in gpus]
    assert [d["name"] for d in devices] == [g["Product_Name"] for g in gpus]
    assert devices[0]["arch"] == gpus[0]["Name"] and devices[0]["sm_count"] == int(gpus[0]["Cu_Count"])
    # Agent_Id is an HSA node id (CPUs first): node 4 is GPU ordinal 0.
    nodes = {int(r["Agent_Id"]) for r in raw}
    expected = {[int(g["Node_Id"]) for g in gpus].index(n) for n in nodes}
    assert set(store.scalar("SELECT list(DISTINCT device) FROM events WHERE kind='kernel'")) == expected
    # grid in blocks = ceil(work-items / workgroup); LDS -> shared memory.
    got = store.rows("SELECT start_ns, grid_x, block_x, shared_memory_bytes FROM kernels ORDER BY start_ns")
    for r, k in zip(sorted(raw, key=lambda r: int(r["Start_Timestamp"])), got):
        assert k["start_ns"] == int(r["Start_Timestamp"])
        assert k["grid_x"] == math.ceil(int(r["Grid_Size_X"]) / int(r["Workgroup_Size_X"]))
        assert k["block_x"] == int(r["Workgroup_Size_X"])
        assert k["shared_memory_bytes"] == int(r["Group_Segment_Size"])


def test_a_trace_of_another_format_inside_the_directory_is_named(tmp_path):
    """rocprofv3 can write a rocpd database beside its CSV files: the directory is read as
    CSV, and the database is listed as not read with it (read twice it could count one run
    as two), with what to do; at a directory above, the same."""
    run = tmp_path / "runs" / "run1"
    run.mkdir(parents=True)
    for f in shared_trace("rocprof/v3_csv_mi300a_rocm6.2").iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    (run / "28_results.db").write_bytes(shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db").read_bytes())
    expected = [{"path": str(run / "28_results.db"),
                 "reason": "a rocpd trace inside a rocprofv3_csv directory, not read with it: pass it on its own"}]
    for given in (run, tmp_path / "runs"):
        store = load(given)
        assert store.rows("SELECT format FROM traces") == [{"format": "rocprofv3_csv"}]
        assert store.inputs_not_read() == expected
    assert load(shared_trace("rocprof/v3_csv_mi300a_rocm6.2")).inputs_not_read() == []


def test_rocm64_docs_one_trace_per_prefix():
    root = shared_trace("rocprof/v3_csv_rocm6.4_docs")
    store = load(root)
    prefixes = sorted({p.name.split("_", 1)[0] for p in root.glob("*.csv")})
    paths = [r[0] for r in store.con.execute("SELECT path FROM traces ORDER BY path").fetchall()]
    assert [Path(p).name for p in paths] == [f"{p}_" for p in prefixes]
    kern = rows(root / "123_kernel_trace.csv")
    k = store.rows("SELECT e.device, e.stream, e.registers_per_thread, d.node_id FROM kernels e "
                   "JOIN devices d USING (trace_id, device) ORDER BY start_ns")
    assert len(k) == len(kern)
    assert [x["stream"] for x in k] == [int(r["Stream_Id"]) for r in kern]
    assert [x["registers_per_thread"] for x in k] == [int(r["VGPR_Count"]) for r in kern]
    assert {x["node_id"] for x in k} == {int(r["Agent_Id"].split()[-1]) for r in kern}
    markers = rows(root / "210_marker_api_trace.csv")
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'annotation'") == len(markers)
    hip = rows(root / "238_hip_api_trace.csv")
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'runtime' AND source_cat = 'hip_api'") == len(hip)


def _write(path: Path, header: list[str], data: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(header)
        w.writerows(data)


KERNEL_HEADER = ["Kind", "Agent_Id", "Queue_Id", "Stream_Id", "Thread_Id", "Dispatch_Id", "Kernel_Id",
                 "Kernel_Name", "Correlation_Id", "Start_Timestamp", "End_Timestamp", "LDS_Block_Size",
                 "Scratch_Size", "VGPR_Count", "Accum_VGPR_Count", "SGPR_Count", "Workgroup_Size_X",
                 "Workgroup_Size_Y", "Workgroup_Size_Z", "Grid_Size_X", "Grid_Size_Y", "Grid_Size_Z"]
API_HEADER = ["Domain", "Function", "Process_Id", "Thread_Id", "Correlation_Id", "Start_Timestamp", "End_Timestamp"]


def _synthetic(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    root.mkdir()
    kernels = [["KERNEL_DISPATCH", "Agent 3", 1, 1, 77, i, 1,
                "__amd_rocclr_copyBuffer" if i == 0 else "ncclDevKernel_Generic_1(ncclDevKernelArgsStorage<4096ul>)"
                if i == 1 else "Cijk_Alik_Bljk_HHS", i + 1, 1000 + 100 * i, 1050 + 100 * i, 0, 0, 8, 0, 16,
                64, 1, 1, 4096, 1, 1] for i in range(5)]
    # One dispatch ends before it starts: counted as an issue, not stored.
    kernels.append(["KERNEL_DISPATCH", "Agent 3", 1, 1, 77, 9, 1, "bad", 99, 5000, 4000, 0, 0, 8, 0, 16,
                    64, 1, 1, 64, 1, 1])
    _write(root / "77_kernel_trace.csv", KERNEL_HEADER, kernels)
    _write(root / "77_hip_api_trace.csv", API_HEADER,
           [["HIP_RUNTIME_API", "hipLaunchKernel", 77, 78, i + 1, 990 + 100 * i, 995 + 100 * i] for i in range(5)])
    _write(root / "77_rccl_api_trace.csv", API_HEADER, [["RCCL_API", "ncclAllReduce", 77, 78, 50, 900, 980]])
    _write(root / "77_memory_copy_trace.csv",
           ["Kind", "Direction", "Stream_Id", "Source_Agent_Id", "Destination_Agent_Id", "Correlation_Id",
            "Start_Timestamp", "End_Timestamp"],
           [["MEMORY_COPY", "MEMORY_COPY_HOST_TO_DEVICE", 1, "Agent 0", "Agent 3", 60, 700, 800]])
    _write(root / "77_agent_info.csv", ["Node_Id", "Agent_Type", "Cu_Count", "Wave_Front_Size", "Name", "Product_Name"],
           [[0, "CPU", 64, 0, "EPYC", "EPYC"], [3, "GPU", 304, 64, "gfx942", "AMD Instinct MI300X"]])
    return root


def test_synthetic_links_copies_rccl_and_issues(tmp_path):
    root = _synthetic(tmp_path)
    store = load(root)
    kernels = rows(root / "77_kernel_trace.csv")
    good = [r for r in kernels if int(r["End_Timestamp"]) >= int(r["Start_Timestamp"])]
    assert store.scalar("SELECT count(*) FROM events WHERE kind='kernel'") == len(good)
    assert store.scalar("SELECT sum(count) FROM ingest_issues") == len(kernels) - len(good)
    hip = {int(r["Correlation_Id"]) for r in rows(root / "77_hip_api_trace.csv")}
    expected_links = sum(1 for r in good if int(r["Correlation_Id"]) in hip)
    assert store.scalar("SELECT count(*) FROM launches") == expected_links
    assert store.scalar("SELECT device FROM events WHERE kind='kernel' LIMIT 1") == 0
    assert store.scalar("SELECT node_id FROM devices") == 3
    assert store.rows("SELECT direction FROM copies_view") == [{"direction": "HtoD"}]
    assert store.scalar("SELECT source_cat FROM events WHERE name = 'ncclAllReduce'") == "rccl_api"
    cats = dict(store.con.execute("SELECT name, category FROM events WHERE kind='kernel'").fetchall())
    assert cats["__amd_rocclr_copyBuffer"] == "memory"
    assert cats["ncclDevKernel_Generic_1(ncclDevKernelArgsStorage<4096ul>)"] == "communication"
    assert store.scalar("SELECT count(*) FROM comms") == 1


def test_single_file_input(tmp_path):
    root = _synthetic(tmp_path)
    store = load(root / "77_kernel_trace.csv")
    assert store.scalar("SELECT count(*) FROM events") == 5
    assert store.scalar("SELECT name FROM devices") == "AMD Instinct MI300X"


def test_bad_inputs_one_line(tmp_path):
    other = tmp_path / "other_tool.csv"
    other.write_text("time,value\n1,2\n")
    assert_one_line_error(run_cli(other, tmp_path), other)
    # A kernel trace whose timestamps are not numbers: one line, no traceback.
    broken = tmp_path / "9_kernel_trace.csv"
    broken.write_text('"Kind","Kernel_Name","Start_Timestamp","End_Timestamp"\n"K","k","x","y"\n"K","k",1,')
    assert_one_line_error(run_cli(broken, tmp_path), broken)


def test_missing_timestamp_is_counted(tmp_path):
    path = tmp_path / "5_kernel_trace.csv"
    path.write_text('"Kind","Agent_Id","Kernel_Name","Correlation_Id","Start_Timestamp","End_Timestamp"\n'
                    '"KERNEL_DISPATCH",1,"k",1,10,20\n"KERNEL_DISPATCH",1,"k",2,30,\n')
    store = load(path)
    assert store.scalar("SELECT count(*) FROM events") == 1
    assert store.scalar("SELECT sum(count) FROM ingest_issues") == 1
    assert store.scalar("SELECT source_records FROM traces") == 2


@pytest.mark.parametrize("name", ["agent_info"])
def test_agent_info_alone_is_not_a_trace(tmp_path, name):
    from profkit.parsers import rocprofv3_csv

    path = tmp_path / f"1_{name}.csv"
    path.write_text('"Node_Id","Agent_Type"\n0,"CPU"\n')
    assert not rocprofv3_csv.detect(path)


def test_dictionary_and_plain_string_columns_store_the_same(tmp_path, monkeypatch):
    """String columns are read dictionary-encoded up to a number of distinct values and
    as plain strings past it: both must give the same store."""
    from profkit.parsers import rocm_common

    root = _synthetic(tmp_path)
    query = """SELECT kind, name, start_ns, dur_ns, pid, tid, device, stream, correlation, category,
                      source_cat, CAST(args AS VARCHAR) AS args FROM events ORDER BY event_id"""
    dictionary = load(root)
    assert len(dictionary.rows(query)) == 12  # 5 kernels, 5 HIP calls, 1 RCCL call, 1 copy
    monkeypatch.setattr(rocm_common, "_DICTIONARY_MAX_VALUES", 1)  # every string column plain
    plain = load(root)
    assert plain.rows(query) == dictionary.rows(query)
    assert plain.rows("SELECT * FROM kernel_info ORDER BY event_id") == \
        dictionary.rows("SELECT * FROM kernel_info ORDER BY event_id")
    assert plain.rows("SELECT * FROM copies ORDER BY event_id") == dictionary.rows("SELECT * FROM copies ORDER BY event_id")


def _counter_collection(kernel_rows: list[dict], counters: tuple[str, ...]) -> str:
    """rocprofv3 --pmc output for these dispatches: one row per dispatch and counter, with
    the dispatch's own columns (as rocprofv3 writes them) and the counter's name and value."""
    header = ["Correlation_Id", "Dispatch_Id", "Agent_Id", "Queue_Id", "Process_Id", "Thread_Id", "Grid_Size",
              "Kernel_Id", "Kernel_Name", "Workgroup_Size", "LDS_Block_Size", "Scratch_Size", "VGPR_Count",
              "SGPR_Count", "Counter_Name", "Counter_Value", "Start_Timestamp", "End_Timestamp"]
    lines = [",".join(f'"{h}"' for h in header)]
    for r in kernel_rows:
        for i, counter in enumerate(counters):
            values = [r["Correlation_Id"], r["Dispatch_Id"], r["Agent_Id"], r["Queue_Id"], "123", r["Thread_Id"],
                      r["Grid_Size_X"], r["Kernel_Id"], r["Kernel_Name"], r["Workgroup_Size_X"], r["LDS_Block_Size"],
                      r["Scratch_Size"], r["VGPR_Count"], r["SGPR_Count"], counter, str(100 * (i + 1)),
                      r["Start_Timestamp"], r["End_Timestamp"]]
            lines.append(",".join(f'"{v}"' for v in values))
    return "\n".join(lines) + "\n"


def test_counter_collection_gives_each_dispatch_once(tmp_path):
    """counter_collection.csv names each dispatch once per counter, with its kernel and
    times. Beside kernel_trace it adds no kernel (it made one per counter: 2x the kernels);
    alone (counters collected without --kernel-trace) its dispatches are the kernels, once
    each, as kernel_trace has them; the rows left out are counted."""
    source = shared_trace("rocprof/v3_csv_rocm6.4_docs/123_kernel_trace.csv")
    raw = rows(source)
    counters = _counter_collection(raw, ("SQ_WAVES", "GRBM_GUI_ACTIVE"))
    query = "SELECT name, start_ns, dur_ns FROM events WHERE kind = 'kernel' ORDER BY start_ns"
    expected = load(source).rows(query)
    assert len(expected) == len(raw)
    both, alone = tmp_path / "both", tmp_path / "alone"
    for folder in (both, alone):
        folder.mkdir()
        (folder / "123_counter_collection.csv").write_text(counters)
    (both / "123_kernel_trace.csv").write_bytes(source.read_bytes())
    issues = "SELECT reason, count FROM ingest_issues ORDER BY reason"
    store = load(both)
    assert store.rows(query) == expected
    assert store.rows(issues) == [{"reason": "counter rows not stored (the kernels come from kernel_trace)",
                                   "count": 2 * len(raw)}]
    store = load(alone)
    assert store.rows(query) == expected
    assert store.rows(issues) == [
        {"reason": "counter rows after the first of their dispatch not stored", "count": len(raw)},
        {"reason": "counter values not stored: counter_collection gives the kernels only, one per dispatch",
         "count": 0}]
    assert store.scalar("SELECT source_records FROM traces") == 2 * len(raw)
