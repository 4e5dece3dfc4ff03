"""Op attribution (kernel -> launch call -> innermost enclosing cpu_op): the numpy walk the
kernels pass uses against the same attribution as one recursive query, kernel by kernel."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_trace
from profkit.analyses import Context, op_attribution
from profkit.ingest import ingest
from profkit.store import Store

# (trace, whether some kernels have an operator)
TRACES = [
    ("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz", True),      # ops around launches on one thread
    ("kineto/cuda/a100_nccl_rank0_of2.json.gz", True),         # two host threads (backward on autograd's)
    ("kineto/cuda/b200_eager_rank0_of8.json.gz", True),
    ("kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz", True),    # HIP launches
    ("kineto/rocm/mi300x_vllm_decode_graph_replay.json.gz", True),  # graph replays: few launches
    ("kineto/mtia/mtia_inference_rank0.json.gz", False),       # its kernels' calls sit under no cpu_op
    ("kineto/rocm/mi210_gpu_only.json.gz", False),             # no host events
    ("nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite", False),  # no cpu_op events
]


def _store(rel: str) -> Store:
    store = Store.open(None)
    ingest([shared_trace(rel)], store)
    return store


@pytest.mark.parametrize("rel, attributed", TRACES)
def test_the_walk_finds_what_the_recursive_query_finds(rel, attributed):
    store = _store(rel)
    for (trace_id,) in store.con.execute("SELECT trace_id FROM traces").fetchall():
        dev = Context.of(store, trace_id).device_events()
        kops = op_attribution.attribute(store, trace_id, dev)
        got = sorted(zip(dev.event_id[kops.kernel].tolist(), kops.op_event.tolist(),
                         kops.op_names[kops.op_code].tolist()))
        expected = sorted(store.con.execute(
            f"SELECT kernel_event, op_event, op_name FROM ({op_attribution.kernel_ops_sql(trace_id)})").fetchall())
        assert got == expected
        assert bool(got) == attributed


def test_input_dims_are_the_operators_own():
    store = _store(TRACES[0][0])
    dev = Context.of(store, 0).device_events()
    kops = op_attribution.attribute(store, 0, dev)
    rows = np.arange(kops.kernel.size)
    codes, values = kops.input_dims(store, 0, rows)
    expected = dict(store.con.execute(
        f"SELECT kernel_event, input_dims FROM ({op_attribution.kernel_ops_sql(0)})").fetchall())
    got = dict(zip(dev.event_id[kops.kernel].tolist(), values[codes].tolist()))
    assert got == expected
    assert sum(v is not None and v.startswith("[[") for v in got.values()) > 100


def test_a_kernel_launched_twice_takes_the_nearest_operator():
    """Repeated correlation ids link a kernel to two calls: the operator fewest calls above
    either launch wins, then the smaller operator id (the query's ORDER BY)."""
    store = Store.open(None)
    con = store.con
    con.execute("INSERT INTO traces (trace_id, path, format) VALUES (0, 'hand-made', 'kineto')")
    rows = [  # event_id, kind, name, parent_id
        (1, "cpu_op", "aten::outer", None), (2, "cpu_op", "aten::inner", 1), (3, "python", "f", 2),
        (4, "runtime", "cudaLaunchKernel", 3),      # op two calls up (hops 1)
        (5, "cpu_op", "aten::other", None), (6, "runtime", "cudaLaunchKernel", 5),  # op right above (hops 0)
        (7, "kernel", "k", None),
        (8, "runtime", "cudaLaunchKernel", None),   # no parent: no chain
        (9, "kernel", "lonely", None),
    ]
    con.executemany("INSERT INTO events (trace_id, event_id, kind, name, start_ns, dur_ns, end_ns, parent_id, device, stream) "
                    "VALUES (0, ?, ?, ?, ?, 10, ? + 10, ?, ?, ?)",
                    [(i, kind, name, 100 * i, 100 * i, parent, 0 if kind == "kernel" else None, 7 if kind == "kernel" else None)
                     for i, kind, name, parent in rows])
    con.executemany("INSERT INTO links (trace_id, src_event, dst_event, kind) VALUES (0, ?, ?, 'launch')",
                    [(4, 7), (6, 7), (8, 9)])
    dev = Context.of(store, 0).device_events()
    kops = op_attribution.attribute(store, 0, dev)
    assert dev.event_id[kops.kernel].tolist() == [7]
    assert kops.op_event.tolist() == [5]
    assert store.con.execute(f"SELECT kernel_event, op_event FROM ({op_attribution.kernel_ops_sql(0)})").fetchall() \
        == [(7, 5)]
