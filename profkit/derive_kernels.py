"""Compiled loop of derive's nesting. The numpy form in derive._nest_sorted takes O(log n)
rounds of gathers over every event (0.27-0.41 s at the 5M-event tile's 3.5M events); the
stack walk it stands for is one pass, 7-20 ms compiled. Used by derive only where numba is
imported already (a large input's compiled scan loaded it) and the trace is large
(derive.COMPILED_NEST_MIN_ROWS): its cache load costs ~0.17 s. tests/test_derive_nest.py
holds the two to the same answer."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def nest_stack(ends, first, parent, depth):  # pragma: no cover - compiled
    """In place, for events sorted by (lane, start, end desc), `first` marking each lane's
    first event: parent = the nearest earlier event of the lane that ends no earlier (-1
    for none), depth = its number of ancestors. The classic stack walk: an event that
    ends before another's end is popped, it can enclose nothing after it."""
    stack = np.empty(ends.shape[0], np.int64)
    top = -1
    for i in range(ends.shape[0]):
        if first[i]:
            top = -1
        while top >= 0 and ends[stack[top]] < ends[i]:
            top -= 1
        if top >= 0:
            p = stack[top]
            parent[i] = p
            depth[i] = depth[p] + 1
        else:
            parent[i] = -1
            depth[i] = 0
        top += 1
        stack[top] = i
