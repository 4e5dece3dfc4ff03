"""The traces shipped in sample_traces/: present, small, reproducible, and readable."""
from __future__ import annotations

import gzip
import importlib.util
import json

import pytest

from conftest import SAMPLE_TRACES
from profkit import synthetic

CPU_TRACE = SAMPLE_TRACES / "cpu_tiny_decoder_prefill_decode.json.gz"
SYNTHETIC_DIR = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"
MANIFEST = SYNTHETIC_DIR / "manifest.json"
RANK_FILES = [SYNTHETIC_DIR / f"synthetic_llm_decode_rank{r}.json.gz" for r in range(4)]


def read(path):
    return json.loads(gzip.decompress(path.read_bytes()))


def test_shipped_files_exist_and_are_small():
    for path in [CPU_TRACE, MANIFEST, SAMPLE_TRACES / "README.md", SAMPLE_TRACES / "record_cpu_trace.py", *RANK_FILES]:
        assert path.is_file(), path
    # What git ships: profkit's own caches (*.duckdb, ignored by git) may sit beside them.
    shipped = [p for p in SAMPLE_TRACES.rglob("*") if p.is_file() and p.suffix in (".gz", ".json", ".md", ".py")]
    total = sum(p.stat().st_size for p in shipped)
    assert total < 5_000_000, total
    for path in [CPU_TRACE, *RANK_FILES]:
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip


def test_synthetic_sample_is_what_the_generator_makes(tmp_path):
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["synthetic"] is True and "SYNTHETIC" in (SAMPLE_TRACES / "README.md").read_text()
    synthetic.generate_decode_trace(tmp_path, ranks=manifest["ranks"], steps=manifest["steps"], seed=manifest["seed"])
    shipped = sorted(p.name for p in SYNTHETIC_DIR.iterdir() if not p.name.endswith((".duckdb", ".wal")))
    assert shipped == sorted(p.name for p in tmp_path.iterdir())
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (SYNTHETIC_DIR / name).read_bytes(), f"{name} is stale: regenerate it"
    assert manifest["files"] == {p.name: p.stat().st_size for p in RANK_FILES}


def test_readme_documents_the_command_and_the_sizes():
    readme = (SAMPLE_TRACES / "README.md").read_text()
    manifest = json.loads(MANIFEST.read_text())
    assert f"python -m profkit.synthetic sample_traces/synthetic_llm_decode_4ranks --ranks {manifest['ranks']} " \
           f"--steps {manifest['steps']} --seed {manifest['seed']}" in readme
    for entry in manifest["bottlenecks"]:
        assert entry["id"] in readme
        assert f"{entry['size_ns_per_step'] / 1000:.1f}" in readme, entry["id"]


def test_cpu_trace_is_a_real_torch_profiler_recording():
    doc = read(CPU_TRACE)
    events = doc["traceEvents"]
    annotations = [e["name"] for e in events if e.get("cat") == "user_annotation"]
    assert [n for n in annotations if n.startswith("ProfilerStep#")] == [f"ProfilerStep#{i}" for i in range(1, 10)]
    assert annotations.count("prefill") == 1 and annotations.count("decode") == 8
    assert doc["deviceProperties"] == [] and not any(e.get("cat") == "kernel" for e in events)
    ops = {e["name"] for e in events if e.get("cat") == "cpu_op"}
    assert {"aten::linear", "aten::scaled_dot_product_attention", "aten::item", "aten::cat"} <= ops
    prefill_mm = [e for e in events if e.get("name") == "aten::mm" and e["args"].get("Input Dims", [[0]])[0][:1] == [32]]
    assert prefill_mm  # record_shapes: the 32-token prefill shows in the shapes


kineto_available = importlib.util.find_spec("profkit.parsers.kineto") is not None


@pytest.mark.skipif(not kineto_available, reason="profkit.parsers.kineto not written yet")
def test_synthetic_sample_ingests():
    from profkit.ingest import ingest
    from profkit.store import Store

    store = Store.open(None)
    ids = ingest([SYNTHETIC_DIR], store)
    assert len(ids) == 4
    rows = store.con.execute("SELECT rank, world_size, trace_id FROM traces ORDER BY rank").fetchall()
    assert [(rank, world) for rank, world, _ in rows] == [(r, 4) for r in range(4)]
    for (rank, _, trace_id), path in zip(rows, RANK_FILES):
        events = read(path)["traceEvents"]
        kernels = sum(1 for e in events if e.get("cat") == "kernel")
        steps = sum(1 for e in events if e.get("name", "").startswith("ProfilerStep#"))
        nccl = sum(1 for e in events if e.get("cat") == "kernel" and "Collective name" in e["args"])
        got = store.con.execute("""
            SELECT (SELECT count(*) FROM events WHERE trace_id = $t AND kind = 'kernel'),
                   (SELECT count(*) FROM steps WHERE trace_id = $t),
                   (SELECT count(*) FROM comms WHERE trace_id = $t AND op = 'all_reduce')
        """, {"t": trace_id}).fetchone()
        assert got == (kernels, steps, nccl), rank


@pytest.mark.skipif(not kineto_available, reason="profkit.parsers.kineto not written yet")
def test_cpu_sample_ingests():
    from profkit.ingest import ingest
    from profkit.store import Store

    store = Store.open(None)
    (trace_id,) = ingest([CPU_TRACE], store)
    cpu_ops = sum(1 for e in read(CPU_TRACE)["traceEvents"] if e.get("cat") == "cpu_op")
    got = store.con.execute("""
        SELECT (SELECT count(*) FROM events WHERE trace_id = $t AND kind = 'cpu_op'),
               (SELECT count(*) FROM events WHERE trace_id = $t AND kind = 'kernel'),
               (SELECT count(*) FROM steps WHERE trace_id = $t)
    """, {"t": trace_id}).fetchone()
    assert got == (cpu_ops, 0, 9)
