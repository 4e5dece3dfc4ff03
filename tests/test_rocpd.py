"""rocpd SQLite (rocprofv3, schema 3): counts, times, devices and stack_id links checked
against the database read with sqlite3."""
from __future__ import annotations

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


def busy_union(intervals) -> int:
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def test_mi300x_ck_bmm():
    path = shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db")
    db = sqlite3.connect(path)
    store = load(path)
    n, total = db.execute("SELECT count(*), sum(\"end\" - start) FROM rocpd_kernel_dispatch").fetchone()
    assert store.scalar("SELECT count(*) FROM events WHERE kind='kernel'") == n
    assert store.scalar("SELECT sum(dur_ns) FROM events WHERE kind='kernel'") == total
    assert store.scalar("SELECT count(*) FROM events WHERE kind='runtime'") == db.execute(
        "SELECT count(*) FROM rocpd_region").fetchone()[0]
    # HIP call -> dispatch by stack_id (corr_id is the external id, 0 here).
    linked = db.execute("""SELECT r.name, count(*) FROM kernels k JOIN regions r
                           ON r.stack_id = k.stack_id AND r.guid = k.guid GROUP BY 1""").fetchall()
    assert db.execute("SELECT count(*) FROM kernels WHERE corr_id != 0").fetchone()[0] == 0
    got = dict(store.con.execute("SELECT runtime_name, count(*) FROM launches GROUP BY 1").fetchall())
    assert got == dict(linked)
    gpus = db.execute("SELECT type_index, absolute_index, product_name, name FROM rocpd_info_agent "
                      "WHERE type = 'GPU' ORDER BY absolute_index").fetchall()
    devices = store.rows("SELECT device, node_id, name, arch FROM devices ORDER BY device")
    assert [(d["device"], d["node_id"], d["name"], d["arch"]) for d in devices] == [tuple(g) for g in gpus]
    used = db.execute("SELECT DISTINCT agent_type_index FROM kernels").fetchall()
    assert store.scalar("SELECT list(DISTINCT device) FROM events WHERE kind='kernel'") == [u[0] for u in used]
    # Runtime blit kernels are memory, not compute.
    fills = db.execute("SELECT count(*) FROM kernels WHERE name LIKE '__amd_rocclr_%'").fetchone()[0]
    assert store.scalar("SELECT count(*) FROM events WHERE kind='kernel' AND category='memory'") == fills


def test_r9700_llamacpp_decode_is_launch_bound():
    path = shared_trace("rocprof/rocpd_r9700_llamacpp_decode/results.db")
    db = sqlite3.connect(path)
    rows = db.execute("SELECT start, \"end\" FROM kernels").fetchall()
    store = load(path)
    assert store.scalar("SELECT count(*) FROM events WHERE kind='kernel'") == len(rows) == 5687
    assert store.scalar("SELECT count(DISTINCT name) FROM events") == db.execute(
        "SELECT count(DISTINCT name) FROM kernels").fetchone()[0]
    busy = busy_union(rows)
    span = max(e for _, e in rows) - min(s for s, _ in rows)
    store_busy = store.scalar("""
        WITH o AS (SELECT start_ns, end_ns, max(end_ns) OVER (ORDER BY start_ns, end_ns
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev FROM events WHERE kind='kernel'),
        g AS (SELECT *, sum(CASE WHEN prev IS NULL OR start_ns > prev THEN 1 ELSE 0 END)
                   OVER (ORDER BY start_ns, end_ns) AS grp FROM o)
        SELECT sum(e - s) FROM (SELECT min(start_ns) s, max(end_ns) e FROM g GROUP BY grp)""")
    assert store_busy == busy
    assert 0.1 < busy / span < 0.3     # the README's ~19% busy: launch-bound
    assert store.rows("SELECT name FROM devices WHERE device = 0") == [{"name": "AMD Radeon AI PRO R9700"}]


def _cli(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROFKIT, "ingest", str(path), "-o", str(tmp_path / "o.duckdb")],
                          capture_output=True, text=True)


def _one_line(result, path, word):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and word in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_no_dispatch_table_one_line(tmp_path):
    path = tmp_path / "empty.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE rocpd_info_agent_x (id INTEGER, guid TEXT)")
    con.execute("CREATE VIEW rocpd_info_agent AS SELECT * FROM rocpd_info_agent_x")
    con.commit()
    con.close()
    _one_line(_cli(path, tmp_path), path, "dispatch")


def test_rpd_tracer_schema_refused_clearly(tmp_path):
    path = tmp_path / "trace.rpd"
    con = sqlite3.connect(path)
    for table in ("rocpd_string", "rocpd_op", "rocpd_api", "rocpd_api_ops", "rocpd_metadata"):
        con.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    _one_line(_cli(path, tmp_path), path, "not supported")


def test_a_path_with_uri_characters_reads_like_any_other(tmp_path):
    """SQLite opens files by URI here (read-only): `#`, `?` and `%` in a folder's name
    must stay part of the path, not start a fragment or a query."""
    source = shared_trace("rocprof/rocpd_r9700_llamacpp_decode/results.db")
    folder = tmp_path / "run #2 ?a=b %20"
    folder.mkdir()
    (folder / "results.db").write_bytes(source.read_bytes())
    here, there = load(source), load(folder / "results.db")
    query = "SELECT kind, count(*) AS n, sum(dur_ns) AS ns FROM events GROUP BY kind ORDER BY kind"
    assert there.rows(query) == here.rows(query) and there.rows(query)


def test_a_truncated_database_is_named_as_such(tmp_path):
    data = shared_trace("rocprof/rocpd_r9700_llamacpp_decode/results.db").read_bytes()
    for keep in (len(data) // 20, len(data) * 5 // 6):  # the table list cut off, or only the rows
        path = tmp_path / f"cut{keep}" / "results.db"
        path.parent.mkdir()
        path.write_bytes(data[:keep])
        _one_line(_cli(path, tmp_path), path, f"the SQLite file is cut short: it holds {keep:,} of the "
                                              f"{len(data):,} bytes its header gives")
