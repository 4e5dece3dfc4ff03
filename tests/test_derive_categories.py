"""derive.categorise: device work a parser left uncategorised gets the shared classifier's
category; a kernel with collective metadata is communication whatever its name or the
parser's category says."""
from __future__ import annotations

from helpers import store_with_events
from profkit.ingest import Sink
from profkit.store import Store


def test_uncategorised_work_is_classified_and_given_categories_kept(tmp_path):
    store = store_with_events({
        "event_id": [0, 1, 2], "kind": ["kernel", "kernel", "memcpy"],
        "name": ["ampere_sgemm_128x128_tn", "my_custom_kernel", "Memcpy HtoD (Pinned -> Device)"],
        "start_ns": [0, 10, 20], "dur_ns": [5, 5, 5],
        "category": [None, "attention", None],  # the parser knew the second one's
    }, tmp_path)
    assert [r["category"] for r in store.rows("SELECT category FROM events ORDER BY event_id")] == \
        ["gemm", "attention", "memory"]


def test_collective_metadata_makes_a_kernel_communication_even_when_the_parser_categorised_it(tmp_path):
    source = tmp_path / "input.json"
    source.write_text("{}")
    store = Store.open(None)
    with Sink(store).trace(source, "test") as w:
        w.add_events({"event_id": [0, 1], "kind": ["kernel", "kernel"], "name": ["fused_gemm_allreduce", "gemm"],
                      "start_ns": [0, 10], "dur_ns": [5, 5], "category": ["gemm", "gemm"]})
        w.add_rows("collectives", [{"event_id": 0, "op": "all_reduce"}])
    assert [r["category"] for r in store.rows("SELECT category FROM events ORDER BY event_id")] == \
        ["communication", "gemm"]
