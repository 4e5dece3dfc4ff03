"""Compiled loops of the graph. The replay's longest-path pass is a chain of dependent
updates that numpy cannot vectorise; as a Python loop it costs ~0.4 s per replay at
1.5M edges, and an analysis replays several times. numba compiles it once (cached on
disk) to ~30 ms. Small analyses keep the Python loop in graph_replay: below its
`PRELOAD_MIN_WORK` (edges times replays) the import and cache load of numba (~0.55 s) cost
more than they save, and up to `COMPILED_MIN_WORK` they are used only once loaded off the
main thread.

Imported lazily by `graph_replay`; where numba cannot be imported the Python loop runs,
with the same result (tests/test_graph.py compares the two)."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def longest_path(src, dst, w, time, via):  # pragma: no cover - compiled
    """In place: for edges in topological order of their destination, time[dst] = max of
    time[src] + w over its edges, and via[dst] = the edge that set it."""
    for i in range(src.shape[0]):
        c = time[src[i]] + w[i]
        d = dst[i]
        if c > time[d]:
            time[d] = c
            via[d] = i


@numba.njit(cache=True, nogil=True)
def walk_back(via, src, time, end_vertex, start, max_edges):  # pragma: no cover - compiled
    """The critical path into end_vertex: (edges latest first, ns each contributes after
    `start`, the first vertex). Two walks: one to count, one to fill."""
    count = 0
    v = end_vertex
    while count < max_edges:
        e = via[v]
        if e < 0 or time[v] <= start:
            break
        count += 1
        v = src[e]
    edges = np.empty(count, np.int64)
    ns = np.empty(count, np.int64)
    v = end_vertex
    for k in range(count):
        e = via[v]
        s = src[e]
        edges[k] = e
        ns[k] = time[v] - max(time[s], start)
        v = s
    return edges, ns, v
