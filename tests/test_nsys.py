"""The Nsight Systems SQLite parser, checked against queries run directly on the exports."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared_trace
from profkit.errors import TraceError
from profkit.ingest import ingest
from profkit.parsers import nsys
from profkit.store import Store

sys.path.insert(0, str(REPO / "bench"))
import nsys_synthetic  # noqa: E402

SHARED = (
    "nsys/a100x4_cloverleaf_nsys2024.5.sqlite",
    "nsys/a5000_osrt_only_no_kernels.sqlite",
    "nsys/h100_2gpu_fastvideo_1s_window.sqlite",
    "nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite",
    "nsys/rtx2070s_pytorch_dlprof.sqlite",
    "nsys/t4_vectoradd_streams.sqlite",
)
TWO_PROCESS = "nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite"
PROFKIT = Path(sys.executable).with_name("profkit")


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


_stores: dict[str, Store] = {}


def store_for(relative: str) -> tuple[Path, Store]:
    path = shared_trace(relative)
    if relative not in _stores:
        store = Store.open(None)
        ingest([path], store)
        _stores[relative] = store
    return path, _stores[relative]


# -- detection -----------------------------------------------------------------------

@pytest.mark.parametrize("relative", SHARED)
def test_detects_every_shared_export(relative):
    assert nsys.detect(shared_trace(relative))


def test_does_not_claim_other_sqlite_or_text(tmp_path):
    other = tmp_path / "inventory.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE parts (id INTEGER, name TEXT)")
    con.execute("INSERT INTO parts VALUES (1, 'bolt')")
    con.commit()
    con.close()
    assert not nsys.detect(other)
    text = tmp_path / "trace.sqlite"
    text.write_text('{"traceEvents": []}')
    assert not nsys.detect(text)


# -- every shared export, against SQL on the file -------------------------------------

@pytest.mark.parametrize("relative", SHARED)
def test_kernels_per_device_match_sqlite(relative):
    path, store = store_for(relative)
    con = raw(path)
    if "CUPTI_ACTIVITY_KIND_KERNEL" in tables(con):
        expected = {d: (n, t) for d, n, t in con.execute(
            'SELECT deviceId, count(*), sum("end" - start) FROM CUPTI_ACTIVITY_KIND_KERNEL GROUP BY 1')}
    else:
        expected = {}
    got = {d: (n, t) for d, n, t in store.con.execute(
        "SELECT device, count(*), sum(dur_ns) FROM events WHERE kind = 'kernel' GROUP BY 1").fetchall()}
    assert got == expected


@pytest.mark.parametrize("relative", SHARED)
def test_memcpy_bytes_by_kind_match_sqlite(relative):
    path, store = store_for(relative)
    con = raw(path)
    if "CUPTI_ACTIVITY_KIND_MEMCPY" not in tables(con):
        assert store.scalar("SELECT count(*) FROM events WHERE kind = 'memcpy'") == 0
        return
    expected = dict(con.execute("SELECT copyKind, sum(bytes) FROM CUPTI_ACTIVITY_KIND_MEMCPY GROUP BY 1"))
    # The copy kind code is not kept as such; its label is, and the label's code comes
    # from the export's ENUM table (or CUPTI's documented numbering for old exports).
    if "ENUM_CUDA_MEMCPY_OPER" in tables(con):
        label_code = {label: code for code, label in con.execute("SELECT id, label FROM ENUM_CUDA_MEMCPY_OPER")}
    else:
        label_code = {"Host-to-Device": 1, "Device-to-Host": 2, "Device-to-Device": 8, "Peer-to-Peer": 10}
    got = {label_code[label]: total for label, total in store.con.execute("""
        SELECT json_extract_string(e.args, '$.copyKindName'), sum(c.bytes)
        FROM events e JOIN copies c USING (event_id) WHERE e.kind = 'memcpy' GROUP BY 1""").fetchall()}
    assert got == expected
    directions = dict(store.con.execute(
        "SELECT direction, sum(bytes) FROM copies_view WHERE kind = 'memcpy' GROUP BY 1").fetchall())
    assert directions.get("HtoD", 0) == expected.get(1, 0)
    assert directions.get("DtoH", 0) == expected.get(2, 0)


@pytest.mark.parametrize("relative", SHARED)
def test_runtime_call_counts_match_sqlite(relative):
    path, store = store_for(relative)
    con = raw(path)
    expected: dict[str, int] = {}
    for name, count in con.execute("""
            SELECT s.value, count(*) FROM CUPTI_ACTIVITY_KIND_RUNTIME r JOIN StringIds s ON s.id = r.nameId
            GROUP BY 1"""):
        stripped = re.sub(r"_v\d+$", "", name)
        expected[stripped] = expected.get(stripped, 0) + count
    got = dict(store.con.execute("""
        SELECT name, count(*) FROM events WHERE source_cat = 'CUPTI_ACTIVITY_KIND_RUNTIME' GROUP BY 1""").fetchall())
    assert got == expected
    versioned = store.scalar("""
        SELECT count(*) FROM events WHERE name = 'cudaLaunchKernel'
          AND json_extract_string(args, '$.api_name') = 'cudaLaunchKernel_v7000'""")
    assert versioned == expected.get("cudaLaunchKernel", 0)


@pytest.mark.parametrize("relative", SHARED)
def test_gpu_names_match_sqlite(relative):
    path, store = store_for(relative)
    con = raw(path)
    expected = sorted(n for (n,) in con.execute("SELECT name FROM TARGET_INFO_GPU")) \
        if "TARGET_INFO_GPU" in tables(con) else []
    got = sorted(n for (n,) in store.con.execute("SELECT name FROM devices WHERE name IS NOT NULL").fetchall())
    assert got == expected
    assert store.scalar("SELECT count(*) FROM devices WHERE vendor <> 'nvidia'") == 0


@pytest.mark.parametrize("relative", SHARED)
def test_every_kernel_with_a_runtime_correlation_is_linked(relative):
    path, store = store_for(relative)
    con = raw(path)
    if "CUPTI_ACTIVITY_KIND_KERNEL" not in tables(con):
        return
    expected = con.execute("""
        SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k WHERE EXISTS (
            SELECT 1 FROM CUPTI_ACTIVITY_KIND_RUNTIME r
            WHERE r.correlationId = k.correlationId
              AND ((r.globalTid >> 24) & 16777215) = ((k.globalPid >> 24) & 16777215))""").fetchone()[0]
    linked = store.scalar("""
        SELECT count(DISTINCT l.dst_event) FROM links l JOIN events d ON d.event_id = l.dst_event
        WHERE l.kind = 'launch' AND d.kind = 'kernel'""")
    assert linked == expected
    assert expected > 0


@pytest.mark.parametrize("relative", SHARED)
def test_every_record_is_stored_or_counted(relative):
    _, store = store_for(relative)
    for events, issues, source in store.con.execute(
            "SELECT event_count, issue_count, source_records FROM traces").fetchall():
        assert events + issues == source  # for each trace a multi-process file was split into
    assert store.scalar("SELECT count(*) FROM events WHERE tid IS NOT NULL AND kind IN ('kernel','memcpy','memset','sync')") == 0


def test_two_processes_with_the_same_correlation_ids_stay_apart():
    path, store = store_for(TWO_PROCESS)
    con = raw(path)
    activity = " UNION ALL ".join(
        f"SELECT correlationId, globalPid FROM {t}" for t in
        ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"))
    by_process = con.execute(f"""
        SELECT count(*) FROM ({activity}) a JOIN CUPTI_ACTIVITY_KIND_RUNTIME r
          ON r.correlationId = a.correlationId
         AND ((r.globalTid >> 24) & 16777215) = ((a.globalPid >> 24) & 16777215)""").fetchone()[0]
    by_id_only = con.execute(f"""
        SELECT count(*) FROM ({activity}) a JOIN CUPTI_ACTIVITY_KIND_RUNTIME r
          ON r.correlationId = a.correlationId""").fetchone()[0]
    assert by_id_only > by_process  # the duplicates this test is about are really there
    assert store.scalar("SELECT count(*) FROM links WHERE kind = 'launch'") == by_process
    crossed = store.scalar("""
        SELECT count(*) FROM links l JOIN events r ON r.event_id = l.src_event
        JOIN events d ON d.event_id = l.dst_event WHERE r.pid <> d.pid""")
    assert crossed == 0


@pytest.mark.parametrize("relative", ["nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite",
                                      "nsys/h100_2gpu_fastvideo_1s_window.sqlite"])
def test_one_trace_per_process_that_drove_a_device(relative):
    """`nsys profile torchrun ...`: one report, a process per rank, each on its own GPU. Each
    process is a trace (a rank) with its own events, device, threads and launch links, and
    nothing is lost or counted twice."""
    path, store = store_for(relative)
    con = raw(path)
    activity = dict(con.execute("""
        SELECT (globalPid >> 24) & 16777215, count(*) FROM (
            SELECT globalPid FROM CUPTI_ACTIVITY_KIND_KERNEL UNION ALL SELECT globalPid FROM CUPTI_ACTIVITY_KIND_MEMCPY
            UNION ALL SELECT globalPid FROM CUPTI_ACTIVITY_KIND_MEMSET
            UNION ALL SELECT globalPid FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION) GROUP BY 1""").fetchall())
    devices = dict(con.execute("SELECT DISTINCT (globalPid >> 24) & 16777215, deviceId FROM CUPTI_ACTIVITY_KIND_KERNEL"))
    traces = store.rows("SELECT trace_id, rank, path FROM traces ORDER BY rank")
    assert [t["rank"] for t in traces] == [0, 1] and len(activity) == 2
    for trace, pid in zip(traces, sorted(activity)):
        assert trace["path"] == f"{path.resolve()}#pid{pid}"
        tid = trace["trace_id"]
        assert store.rows("SELECT DISTINCT pid FROM events WHERE trace_id = ? AND pid IS NOT NULL", [tid]) == \
            [{"pid": pid}]
        assert store.scalar("SELECT count(*) FROM events WHERE trace_id = ? AND device IS NOT NULL", [tid]) == \
            activity[pid]
        # Synchronization records say deviceId 0 for both processes; their context says which.
        assert store.rows("SELECT DISTINCT device FROM events WHERE trace_id = ? AND device IS NOT NULL", [tid]) == \
            store.rows("SELECT device FROM devices WHERE trace_id = ?", [tid]) == [{"device": devices[pid]}]
        assert store.scalar("SELECT count(*) FROM threads WHERE trace_id = ? AND pid = ?", [tid, pid]) > 0
    assert store.scalar("""
        SELECT count(*) FROM links l JOIN events s ON s.event_id = l.src_event JOIN events d ON d.event_id = l.dst_event
        WHERE s.trace_id <> l.trace_id OR d.trace_id <> l.trace_id""") == 0
    assert store.scalar("SELECT count(*) FROM events") == store.scalar("SELECT sum(event_count) FROM traces")
    assert store.scalar("SELECT count(*) FROM ingest_issues WHERE reason LIKE '2 processes drove devices%'") == 1


@pytest.mark.parametrize("relative", SHARED)
def test_sync_records_on_no_stream_say_minus_one(relative):
    """CUPTI gives an event or context sync streamId 0xFFFFFFFF (invalid): stored as -1, the
    value Kineto writes, so no pass takes it for a stream (the HTA-view breakdown counted
    cloverleaf's 300 ms of event syncs as GPU work)."""
    path, store = store_for(relative)
    con = raw(path)
    if "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION" not in tables(con):
        return
    none = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION WHERE streamId = 4294967295").fetchone()[0]
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'sync' AND tid IS NULL AND stream = -1") == none
    assert store.scalar("SELECT count(*) FROM events WHERE stream >= 4294967295") == 0


def test_pid_and_tid_are_decoded_from_global_ids():
    path, store = store_for(TWO_PROCESS)
    con = raw(path)
    expected = {(p, t) for p, t in con.execute("""
        SELECT DISTINCT (globalTid >> 24) & 16777215, globalTid & 16777215 FROM CUPTI_ACTIVITY_KIND_RUNTIME""")}
    got = {tuple(r) for r in store.con.execute(
        "SELECT DISTINCT pid, tid FROM events WHERE source_cat = 'CUPTI_ACTIVITY_KIND_RUNTIME'").fetchall()}
    assert got == expected
    pids = {p for (p,) in con.execute("SELECT DISTINCT pid FROM PROCESSES WHERE name = 'python3'")}
    assert {p for p, _ in got} <= pids


def test_sync_records_are_device_side_and_linked_to_their_call():
    path, store = store_for(TWO_PROCESS)
    con = raw(path)
    n = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION").fetchone()[0]
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'sync' AND tid IS NULL AND device IS NOT NULL") == n
    stream_syncs = con.execute("""
        SELECT count(*) FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION s JOIN ENUM_CUPTI_SYNC_TYPE e ON e.id = s.syncType
        WHERE e.label = 'Stream sync'""").fetchone()[0]
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'sync' AND name = 'Stream sync'") == stream_syncs
    calls = dict(con.execute("""
        SELECT st.value, count(*) FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION s
        JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = s.correlationId
         AND ((r.globalTid >> 24) & 16777215) = ((s.globalPid >> 24) & 16777215)
        JOIN StringIds st ON st.id = r.nameId GROUP BY 1"""))
    linked = dict(store.con.execute("""
        SELECT json_extract_string(r.args, '$.api_name'), count(*) FROM links l
        JOIN events r ON r.event_id = l.src_event WHERE l.kind = 'sync' GROUP BY 1""").fetchall())
    assert linked == calls and calls.get("cudaStreamSynchronize_v3020")


def test_nvtx_ranges_become_annotations():
    path, store = store_for(TWO_PROCESS)
    con = raw(path)
    expected = dict(con.execute("""
        SELECT coalesce(n.text, s.value), count(*) FROM NVTX_EVENTS n LEFT JOIN StringIds s ON s.id = n.textId
        WHERE n.eventType = 59 AND n.text IS NULL GROUP BY 1"""))
    got = dict(store.con.execute("""
        SELECT name, count(*) FROM events WHERE kind = 'annotation'
          AND json_extract(args, '$.domainId')::INT <> 0 GROUP BY 1""").fetchall())
    assert got == expected and expected.get("ncclSend")
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'annotation'") == \
        con.execute("SELECT count(*) FROM NVTX_EVENTS").fetchone()[0]


def test_nccl_kernels_become_collectives():
    path, store = store_for(TWO_PROCESS)
    con = raw(path)
    n = con.execute("""
        SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON s.id = k.shortName
        WHERE s.value LIKE 'ncclDevKernel_SendRecv%'""").fetchone()[0]
    assert dict(store.con.execute("SELECT op, count(*) FROM comms GROUP BY 1").fetchall()) == {"send_recv": n}


def test_kernel_launch_configuration_and_short_names():
    path, store = store_for("nsys/a100x4_cloverleaf_nsys2024.5.sqlite")
    con = raw(path)
    expected = con.execute("""
        SELECT sum(gridX * gridY * gridZ), sum(blockX * blockY * blockZ), sum(registersPerThread),
               sum(staticSharedMemory + dynamicSharedMemory), count(graphNodeId) FROM CUPTI_ACTIVITY_KIND_KERNEL""").fetchone()
    got = store.con.execute("""
        SELECT sum(grid_x * grid_y * grid_z), sum(block_x * block_y * block_z), sum(registers_per_thread),
               sum(shared_memory_bytes), count(graph_node_id) FROM kernels""").fetchone()
    assert tuple(got) == tuple(expected)
    shorts = dict(con.execute("""SELECT s.value, count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k
                                 JOIN StringIds s ON s.id = k.shortName GROUP BY 1"""))
    got_shorts = dict(store.con.execute("""SELECT json_extract_string(args, '$.shortName'), count(*)
                                           FROM events WHERE kind = 'kernel' GROUP BY 1""").fetchall())
    assert got_shorts == shorts


def test_pageable_copies_are_found():
    path, store = store_for("nsys/h100_2gpu_fastvideo_1s_window.sqlite")
    con = raw(path)
    expected = con.execute("""SELECT count(*), sum(bytes) FROM CUPTI_ACTIVITY_KIND_MEMCPY m
        JOIN ENUM_CUDA_MEM_KIND k ON k.id = m.srcKind WHERE k.name = 'CUDA_MEMOPR_MEMORY_KIND_PAGEABLE'""").fetchone()
    got = store.con.execute("SELECT count(*), sum(bytes) FROM copies WHERE src_memory = 'pageable'").fetchone()
    assert tuple(got) == tuple(expected) and expected[0] > 0


def test_devices_without_a_gpu_table_still_get_rows():
    path, store = store_for("nsys/h100_2gpu_fastvideo_1s_window.sqlite")
    con = raw(path)
    seen = {d for (d,) in con.execute("SELECT DISTINCT deviceId FROM CUPTI_ACTIVITY_KIND_KERNEL")}
    assert {d for (d,) in store.con.execute("SELECT device FROM devices").fetchall()} == seen
    assert store.scalar("SELECT count(*) FROM ingest_issues WHERE reason = 'table absent: TARGET_INFO_GPU'") == 1


def test_device_properties_and_metadata():
    path, store = store_for("nsys/a100x4_cloverleaf_nsys2024.5.sqlite")
    con = raw(path)
    gpus = {cu: (sm, mem, bw, clock, f"sm_{ma}{mi}") for cu, sm, mem, bw, clock, ma, mi in con.execute(
        "SELECT cuDevice, smCount, totalMemory, memoryBandwidth, clockRate, computeMajor, computeMinor FROM TARGET_INFO_GPU")}
    got = {d: (sm, mem, bw, clock, arch) for d, sm, mem, bw, clock, arch in store.con.execute(
        "SELECT device, sm_count, memory_bytes, memory_bandwidth_bytes_per_s, clock_hz, arch FROM devices").fetchall()}
    assert got == gpus
    meta = dict(con.execute("SELECT name, value FROM META_DATA_EXPORT"))
    version, producer, hostname = store.con.execute(
        "SELECT format_version, producer, hostname FROM traces").fetchone()
    assert version == meta["EXPORT_SCHEMA_VERSION"]
    assert producer.endswith(meta["EXPORT_PRODUCT_VERSION"])
    assert hostname == con.execute("SELECT value FROM TARGET_INFO_SYSTEM_ENV WHERE name = 'Hostname'").fetchone()[0]
    utc = con.execute("SELECT utcEpochNs FROM TARGET_INFO_SESSION_START_TIME").fetchone()[0]
    start = con.execute("SELECT startTime FROM ANALYSIS_DETAILS").fetchone()[0]
    assert store.scalar("SELECT base_time_ns FROM traces") == utc - start


def test_old_schema_without_enum_tables_uses_fallback_names():
    path, store = store_for("nsys/rtx2070s_pytorch_dlprof.sqlite")
    con = raw(path)
    assert "EXPORT_META_DATA" in tables(con) and "ENUM_CUPTI_SYNC_TYPE" not in tables(con)
    assert store.scalar("SELECT format_version FROM traces") == \
        con.execute("SELECT value FROM EXPORT_META_DATA WHERE name = 'EXPORT_SCHEMA_VERSION'").fetchone()[0]
    by_type = dict(con.execute("SELECT syncType, count(*) FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION GROUP BY 1"))
    got = dict(store.con.execute("SELECT name, count(*) FROM events WHERE kind = 'sync' GROUP BY 1").fetchall())
    # CUPTI's CUpti_ActivitySynchronizationType numbering.
    assert got == {{1: "Event sync", 2: "Stream wait sync", 3: "Stream sync", 4: "Context sync"}[k]: v
                   for k, v in by_type.items()}


def test_export_without_kernels_ingests_host_calls():
    path, store = store_for("nsys/a5000_osrt_only_no_kernels.sqlite")
    con = raw(path)
    osrt = con.execute("SELECT count(*) FROM OSRT_API").fetchone()[0]
    assert store.scalar("SELECT count(*) FROM events WHERE source_cat = 'OSRT_API' AND kind = 'runtime'") == osrt
    absent = {r for (r,) in store.con.execute("SELECT reason FROM ingest_issues WHERE count = 0").fetchall()}
    assert "table absent: CUPTI_ACTIVITY_KIND_KERNEL" in absent
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") == 0


@pytest.mark.parametrize("relative", ["nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite",
                                      "nsys/a5000_osrt_only_no_kernels.sqlite"])
def test_capture_environment_never_reaches_the_store(relative):
    path, store = store_for(relative)
    con = raw(path)
    secrets = []
    for (value,) in con.execute("SELECT value FROM META_DATA_CAPTURE WHERE name LIKE '%ENVIRONMENT_VARIABLE%'"):
        _, _, text = (value or "").partition("=")
        text = text.strip('"')
        if len(text) >= 12 and any(c.isdigit() for c in text):
            secrets.append(text)
    secrets = secrets[:25]
    assert secrets
    columns = store.con.execute("""SELECT table_name, column_name FROM information_schema.columns
        WHERE data_type IN ('VARCHAR', 'JSON') AND table_schema = 'main'""").fetchall()
    assert ("traces", "metadata") in columns and ("events", "args") in columns
    for table, column in columns:
        for secret in secrets:
            hits = store.scalar(f'SELECT count(*) FROM "{table}" WHERE contains(CAST("{column}" AS VARCHAR), ?)',
                                [secret])
            assert hits == 0, f"{secret!r} found in {table}.{column}"


# -- readers, schema drift, NVTX steps -------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return nsys_synthetic.build(tmp_path_factory.mktemp("nsys") / "synthetic.sqlite", kernels=3000,
                                runtime=7000, seed=3)


def _summary(store: Store) -> dict:
    return {
        "kinds": store.con.execute("SELECT kind, count(*), sum(dur_ns) FROM events GROUP BY 1 ORDER BY 1").fetchall(),
        "links": store.scalar("SELECT count(*) FROM links"),
        "args": store.scalar("SELECT sum(length(args)) FROM events"),
        "names": store.scalar("SELECT count(DISTINCT name) FROM events"),
    }


def test_synthetic_export_ingests_identically_with_each_reader(synthetic, monkeypatch):
    con = raw(synthetic)
    results = {}
    for kind in ("sqlite3", "adbc"):
        if kind == "adbc":
            pytest.importorskip("adbc_driver_sqlite")
        monkeypatch.setenv("PROFKIT_NSYS_READER", kind)
        store = Store.open(None)
        ingest([synthetic], store)
        assert store.scalar("SELECT json_extract_string(metadata, '$.reader') FROM traces") == kind
        results[kind] = _summary(store)
        kernels = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
        # Both processes number correlations from 1: every kernel still finds its own launch.
        assert store.scalar("SELECT count(*) FROM launches WHERE device_kind = 'kernel'") == kernels
        all_reduce = con.execute("""SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s
            ON s.id = k.demangledName WHERE s.value LIKE 'ncclDevKernel_AllReduce_Sum_bf16%'""").fetchone()[0]
        assert all_reduce > 0
        assert store.con.execute("SELECT op, dtype, count(*) FROM comms GROUP BY ALL").fetchall() == \
            [("all_reduce", "BFloat16", all_reduce)]
        store.close()
    assert len(set(json.dumps(r, sort_keys=True) for r in results.values())) == 1


def _copy(relative: str, tmp_path: Path) -> Path:
    target = tmp_path / Path(relative).name
    shutil.copyfile(shared_trace(relative), target)
    target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return target


def test_renamed_columns_and_missing_tables_are_noted_not_fatal(tmp_path):
    path = _copy("nsys/t4_vectoradd_streams.sqlite", tmp_path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE CUPTI_ACTIVITY_KIND_KERNEL RENAME COLUMN demangledName TO demangledNameV2")
    con.execute("DROP TABLE CUPTI_ACTIVITY_KIND_MEMCPY")
    con.execute("DROP TABLE ENUM_CUPTI_SYNC_TYPE")
    con.commit()
    shorts = dict(con.execute("""SELECT s.value, count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL k
                                 JOIN StringIds s ON s.id = k.shortName GROUP BY 1"""))
    con.close()
    store = Store.open(None)
    ingest([path], store)
    reasons = {r for (r,) in store.con.execute("SELECT reason FROM ingest_issues").fetchall()}
    assert "column absent: CUPTI_ACTIVITY_KIND_KERNEL.demangledName" in reasons
    assert "table absent: CUPTI_ACTIVITY_KIND_MEMCPY" in reasons
    # Names fall back to the short name; the renamed column is kept in args.
    assert dict(store.con.execute("SELECT name, count(*) FROM events WHERE kind = 'kernel' GROUP BY 1").fetchall()) == shorts
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel' AND args LIKE '%demangledNameV2%'") == \
        sum(shorts.values())
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'memcpy'") == 0


def test_nvtx_steps_marks_and_unterminated_ranges(tmp_path):
    path = _copy("nsys/t4_vectoradd_streams.sqlite", tmp_path)
    con = sqlite3.connect(path)
    gtid = con.execute("SELECT globalTid FROM CUPTI_ACTIVITY_KIND_RUNTIME LIMIT 1").fetchone()[0]
    t0 = con.execute("SELECT min(start) FROM CUPTI_ACTIVITY_KIND_RUNTIME").fetchone()[0]
    con.execute("""CREATE TABLE NVTX_EVENTS (start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL,
                   rangeId INTEGER, category INTEGER, color INTEGER, text TEXT, globalTid INTEGER,
                   endGlobalTid INTEGER, textId INTEGER, domainId INTEGER, uint64Value INTEGER)""")
    rows = [(t0 + i * 1000, t0 + i * 1000 + 900, 59, f"ProfilerStep#{i + 4}", gtid) for i in range(3)]
    rows += [(t0 + 50, t0 + 60, 59, "step 9", gtid), (t0 + 70, None, 34, "a mark", gtid),
             (t0 + 80, None, 59, "never ended", gtid), (t0 + 90, t0 + 95, 75, "MyDomain", gtid)]
    con.executemany("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid) VALUES (?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    store = Store.open(None)
    ingest([path], store)
    steps = store.con.execute("SELECT step, source, end_ns - start_ns FROM steps ORDER BY step").fetchall()
    assert steps == [(4, "nvtx", 900), (5, "nvtx", 900), (6, "nvtx", 900)]
    assert store.scalar("SELECT dur_ns FROM events WHERE name = 'a mark'") == 0
    issues = dict(store.con.execute("SELECT reason, count FROM ingest_issues").fetchall())
    assert issues["NVTX_EVENTS: NVTX range without end"] == 1
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'annotation'") == 5
    assert store.scalar("SELECT count(*) FROM events WHERE name = 'MyDomain'") == 0


# -- bad input, CLI ---------------------------------------------------------------------

def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(PROFKIT), *args], capture_output=True, text=True, timeout=300, env=full_env)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_info_and_sql_on_an_export(tmp_path):
    path = _copy("nsys/t4_vectoradd_streams.sqlite", tmp_path)
    con = raw(path)
    kernels = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    gpu = con.execute("SELECT name FROM TARGET_INFO_GPU").fetchone()[0]
    info = _cli("info", str(path), "--format", "json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data[0]["format"] == "nsys" and data[0]["events_by_kind"]["kernel"] == kernels
    assert data[0]["devices"][0]["name"] == gpu
    sql = _cli("sql", str(path), "SELECT count(*) AS n FROM kernels", "--format", "json")
    assert sql.returncode == 0, sql.stderr
    assert json.loads(sql.stdout) == [{"n": kernels}]


def test_unrelated_sqlite_is_a_one_line_error(tmp_path):
    other = tmp_path / "inventory.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE parts (id INTEGER)")
    con.commit()
    con.close()
    line = _one_line_error(_cli("info", str(other)))
    assert str(other) in line


def test_truncated_export_is_a_one_line_error(tmp_path):
    source = shared_trace("nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite")
    data = source.read_bytes()
    cut = tmp_path / "cut.sqlite"
    cut.write_bytes(data[: len(data) // 2])
    if nsys.detect(cut):  # whether the table list survived the cut depends on the file's layout
        with pytest.raises(TraceError):
            nsys.parse(cut, _sink())
    line = _one_line_error(_cli("info", str(cut)))
    assert (f"{cut}: the SQLite file is cut short: it holds {len(data) // 2:,} of the {len(data):,} bytes "
            "its header gives (an export or a copy that was interrupted)") in line


def test_a_damaged_export_of_full_length_is_named_damaged(tmp_path):
    """Pages overwritten, the size what the header says: damaged, not cut short."""
    data = bytearray(shared_trace("nsys/t4_vectoradd_streams.sqlite").read_bytes())
    data[1024:len(data) - 4096] = bytes(len(data) - 5120)  # every page but the first zeroed
    path = tmp_path / "zeroed.sqlite"
    path.write_bytes(bytes(data))
    line = _one_line_error(_cli("info", str(path)))
    assert f"{path}: the SQLite database is damaged or truncated (" in line


def test_a_truncated_rank_in_a_directory_stops_the_run(tmp_path):
    """Analysing the ranks that read without the one that does not would be a partial
    result nobody asked for; an unrelated database beside them is still passed over."""
    source = shared_trace("nsys/t4_vectoradd_streams.sqlite")
    (tmp_path / "rank0.sqlite").write_bytes(source.read_bytes())
    (tmp_path / "rank1.sqlite").write_bytes(source.read_bytes()[:100_000])
    con = sqlite3.connect(tmp_path / "notes.sqlite")
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()
    line = _one_line_error(_cli("info", str(tmp_path)))
    assert f"{tmp_path / 'rank1.sqlite'}: the SQLite file is cut short: it holds 100,000 of the " in line
    (tmp_path / "rank1.sqlite").unlink()
    assert _cli("info", str(tmp_path)).returncode == 0


def test_locked_export_is_a_one_line_error(tmp_path):
    path = _copy("nsys/t4_vectoradd_streams.sqlite", tmp_path)
    # The lock is held by another process, as in real use: POSIX locks held by this
    # process would be dropped the moment any code here opens and closes the file.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert nsys.detect(path)
        with pytest.raises(TraceError, match="locked"):
            nsys.parse(path, _sink())
        line = _one_line_error(_cli("info", str(path), env={"PROFKIT_CACHE_DIR": str(tmp_path / "cache")}))
        assert "locked" in line
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def _sink():
    from profkit.ingest import Sink

    return Sink(Store.open(None))


def test_a_report_beside_its_export_is_read_once(tmp_path, monkeypatch):
    """`nsys export` leaves run.sqlite beside run.nsys-rep: a directory holding both is one
    run, read from the export (no `nsys` needed), with the report listed as not read."""
    (tmp_path / "run.sqlite").write_bytes(shared_trace("nsys/t4_vectoradd_streams.sqlite").read_bytes())
    (tmp_path / "run.nsys-rep").write_bytes(b"\x00NSYS-REPORT-STAND-IN")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    store = Store.open(None)
    ingest([tmp_path], store)
    assert [r["path"] for r in store.rows("SELECT path FROM traces")] == [str(tmp_path / "run.sqlite")]
    assert store.inputs_not_read() == [{"path": str(tmp_path / "run.nsys-rep"),
                                        "reason": "the same run as run.sqlite, which is read"}]
    # Alone, the report is still read (exported), or refused with the command to run.
    (tmp_path / "run.sqlite").unlink()
    with pytest.raises(TraceError, match="nsys export"):
        ingest([tmp_path], Store.open(None))


def test_report_without_nsys_names_the_export_command(tmp_path, monkeypatch):
    report = tmp_path / "run.nsys-rep"
    report.write_bytes(b"\x00NSYS-REPORT-STAND-IN")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert nsys.detect(report)
    with pytest.raises(TraceError) as err:
        nsys.parse(report, _sink())
    assert f"nsys export --type sqlite -o OUT.sqlite {report}" in str(err.value)
    assert "\n" not in str(err.value)
    line = _one_line_error(_cli("info", str(report), env={"PATH": str(tmp_path / "empty-bin")}))
    assert "nsys export --type sqlite -o OUT.sqlite" in line


def test_report_is_exported_with_nsys_when_on_path(tmp_path, monkeypatch):
    export = shared_trace("nsys/t4_vectoradd_streams.sqlite")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "nsys-calls.txt"
    stand_in = bin_dir / "nsys"
    stand_in.write_text(f"""#!{sys.executable}
import shutil, sys
args = sys.argv[1:]
open({str(log)!r}, "a").write(" ".join(args) + "\\n")
assert args[:3] == ["export", "--type", "sqlite"], args
shutil.copyfile({str(export)!r}, args[args.index("-o") + 1])
""")
    stand_in.chmod(0o755)
    report = tmp_path / "run.nsys-rep"
    report.write_bytes(b"\x00NSYS-REPORT-STAND-IN")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PROFKIT_CACHE_DIR", str(tmp_path / "cache"))
    store = Store.open(None)
    ingest([report], store)
    kernels = raw(export).execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") == kernels
    assert store.scalar("SELECT path FROM traces") == str(report.resolve())
    # A second ingest reuses the cached export.
    ingest([report], Store.open(None))
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.parametrize("reader", ["sqlite3", "adbc"])
def test_text_that_is_not_utf8_is_kept_with_replacement_characters(tmp_path, monkeypatch, reader):
    if reader == "adbc":
        pytest.importorskip("adbc_driver_sqlite")
    monkeypatch.setenv("PROFKIT_NSYS_READER", reader)
    path = _copy("nsys/rtx2070s_pytorch_dlprof.sqlite", tmp_path)
    con = sqlite3.connect(path)
    con.execute("""UPDATE NVTX_EVENTS SET text = CAST(X'6162FF6364' AS TEXT)
                   WHERE rowid IN (SELECT rowid FROM NVTX_EVENTS WHERE text IS NOT NULL LIMIT 3)""")
    con.commit()
    n = con.execute("SELECT count(*) FROM NVTX_EVENTS").fetchone()[0]
    con.close()
    store = Store.open(None)
    ingest([path], store)
    assert store.scalar("SELECT count(*) FROM events WHERE name = 'ab\ufffdcd'") == 3
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'annotation'") == n


def test_unchecked_schema_version_is_noted_and_read_by_column_name(tmp_path):
    path = _copy("nsys/t4_vectoradd_streams.sqlite", tmp_path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE EXPORT_META_DATA RENAME TO META_DATA_EXPORT")
    con.execute("UPDATE META_DATA_EXPORT SET value = '4.1.0' WHERE name = 'EXPORT_SCHEMA_VERSION'")
    con.execute("UPDATE META_DATA_EXPORT SET value = '4' WHERE name = 'EXPORT_SCHEMA_VERSION_MAJOR'")
    con.commit()
    kernels = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    con.close()
    store = Store.open(None)
    ingest([path], store)
    assert store.scalar("SELECT format_version FROM traces") == "4.1.0"
    assert store.scalar("SELECT count FROM ingest_issues WHERE reason LIKE 'export schema 4.1.0 not checked%'") == 0
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") == kernels
