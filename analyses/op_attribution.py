"""Each kernel's launching framework operator: the kernel, its launch call
(`links.kind = 'launch'`), then up the call's `parent_id` chain to the innermost `cpu_op`
(docs/analysis/kernels.md, `by_op`).

The walk runs in numpy over one load of the trace's nested events: as one recursive query
it took 0.10 s of the kernels pass on a 1M-event trace, and its five aggregates 0.1 s more,
each joining the events again. `kernel_ops_sql` is the same attribution in SQL, for
`profkit sql`; the tests hold the two to the same answer, kernel by kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from profkit.columns import dictionary_codes, group_codes, positions, sorted_distinct
from profkit.store import Store

from .step_inference import DeviceEvents

MAX_HOPS = 200  # calls above the launch call searched for an operator (as the SQL's bound)

OP_ATTRIBUTION_SQL = """
    WITH RECURSIVE up(kernel, node, hops) AS (
        SELECT l.dst_event, r.parent_id, 0
        FROM links l JOIN events r ON r.event_id = l.src_event AND r.trace_id = {trace_id}
        JOIN events k ON k.event_id = l.dst_event AND k.trace_id = {trace_id}
        WHERE l.trace_id = {trace_id} AND l.kind = 'launch' AND k.kind = 'kernel' AND r.parent_id IS NOT NULL
        UNION ALL
        SELECT up.kernel, e.parent_id, up.hops + 1
        FROM up JOIN events e ON e.event_id = up.node AND e.trace_id = {trace_id}
        WHERE e.kind <> 'cpu_op' AND e.parent_id IS NOT NULL AND up.hops < {max_hops}
    )
    SELECT DISTINCT ON (up.kernel) up.kernel AS kernel_event, e.event_id AS op_event, e.name AS op_name,
           CAST(json_extract(e.args, '$."Input Dims"') AS VARCHAR) AS input_dims
    FROM up JOIN events e ON e.event_id = up.node AND e.trace_id = {trace_id}
    WHERE e.kind = 'cpu_op'
    ORDER BY up.kernel, up.hops, e.event_id
"""


def kernel_ops_sql(trace_id: int) -> str:
    """The attribution as one query: a row per attributed kernel (kernel_event, op_event,
    op_name, input_dims)."""
    return OP_ATTRIBUTION_SQL.format(trace_id=int(trace_id), max_hops=MAX_HOPS)


@dataclass
class KernelOps:
    """The attributed kernels, one row each: the kernel (its index in DeviceEvents), its
    operator's event id, and the operator's name as a code into `op_names`."""
    kernel: np.ndarray
    op_event: np.ndarray
    op_code: np.ndarray
    op_names: np.ndarray  # object array; its last entry is None

    def input_dims(self, store: Store, trace_id: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The operators' Kineto `Input Dims` (JSON text, None where absent) at `rows`, as
        (codes, values) like dictionary_codes; read for those operators only."""
        ops = sorted_distinct(self.op_event[rows])  # np.unique: 0.13 s on the 5M tile's, against 0.02 s
        with store.registered(pa.table({"event_id": ops}), "_profkit_ops") as name:
            table = store.arrow(f"""
                SELECT e.event_id, CAST(json_extract(e.args, '$."Input Dims"') AS VARCHAR) AS input_dims
                FROM events e JOIN {name} o USING (event_id) WHERE e.trace_id = ?
            """, [trace_id])
        codes, values = dictionary_codes(table.column("input_dims"))
        of_op = np.full(ops.size, values.size - 1, dtype=np.int64)  # None
        of_op[positions(ops, table.column("event_id").to_numpy())] = codes
        return of_op[np.searchsorted(ops, self.op_event[rows])], values


def attribute(store: Store, trace_id: int, dev: DeviceEvents) -> KernelOps:
    """Walk up from every kernel's launch call to its innermost enclosing operator."""
    links = dev.links
    kernel_links = np.flatnonzero(dev.kind[links.activity] == "kernel")
    nested = store.arrow("""
        SELECT event_id, coalesce(parent_id, -1) AS parent_id, kind = 'cpu_op' AS is_op,
               CASE WHEN kind = 'cpu_op' THEN name END AS op_name
        FROM events WHERE trace_id = ? AND (parent_id IS NOT NULL OR kind = 'cpu_op')
    """, [trace_id])
    ids = nested.column("event_id").to_numpy()
    order = None if np.all(ids[1:] > ids[:-1]) else np.argsort(ids, kind="stable")
    parent = nested.column("parent_id").to_numpy()
    is_op = nested.column("is_op").to_numpy(zero_copy_only=False)
    op_codes, op_names = dictionary_codes(nested.column("op_name"))
    if ids.size == 0 or kernel_links.size == 0:  # no nesting or no launches (GPU-only traces)
        none = np.zeros(0, np.int64)
        return KernelOps(kernel=none, op_event=none, op_code=none, op_names=op_names)

    # A chain starts at the launch call's parent (the call itself is never the operator).
    call = positions(ids, links.call[kernel_links], sorter=order)
    node = np.where(call >= 0, parent[np.maximum(call, 0)], -1)
    walking = np.flatnonzero(node >= 0)
    found_link, found_at, found_hops = [], [], []
    for hops in range(MAX_HOPS + 1):
        if walking.size == 0:
            break
        at = positions(ids, node[walking], sorter=order)
        walking, at = walking[at >= 0], at[at >= 0]  # a parent that is not in the trace ends the chain
        op = is_op[at]
        found_link.append(walking[op])
        found_at.append(at[op])
        found_hops.append(np.full(int(op.sum()), hops, dtype=np.int64))
        walking, at = walking[~op], at[~op]
        node[walking] = parent[at]
        walking = walking[node[walking] >= 0]
    link = np.concatenate(found_link) if found_link else np.zeros(0, np.int64)
    at = np.concatenate(found_at) if found_at else np.zeros(0, np.int64)
    hops = np.concatenate(found_hops) if found_hops else np.zeros(0, np.int64)
    kernel = links.activity[kernel_links[link]]
    # A kernel with several launch links (repeated correlation ids): the nearest operator,
    # then the smaller operator id, as the SQL orders them.
    if kernel.size:
        _, first = group_codes(kernel, hops, ids[at])
        first = first[np.r_[True, kernel[first][1:] != kernel[first][:-1]]]
        kernel, at = kernel[first], at[first]
    return KernelOps(kernel=kernel, op_event=ids[at], op_code=op_codes[at], op_names=op_names)
