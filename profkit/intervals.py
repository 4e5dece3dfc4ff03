"""Interval arithmetic on sorted numpy arrays of integer nanoseconds.

Time sums in profkit are interval unions, never summed durations: two overlapping
kernels on different streams are busy time once.
"""
from __future__ import annotations

import numpy as np

from .columns import lexsort


def union(starts, ends) -> tuple[np.ndarray, np.ndarray]:
    """Merge intervals into disjoint, sorted ones. Empty and inverted intervals vanish."""
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    running_end = np.maximum.accumulate(e)
    # A new merged interval begins where the start is past every earlier end.
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > running_end[:-1]
    group = np.cumsum(new) - 1
    merged_s = s[new]
    merged_e = np.zeros(merged_s.size, dtype=np.int64)
    np.maximum.at(merged_e, group, e)
    return merged_s, merged_e


def length(starts, ends) -> int:
    """Total length of the union of the intervals."""
    s, e = union(starts, ends)
    return int((e - s).sum())


def intersect(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Intersection of two disjoint sorted interval sets (as returned by `union`)."""
    a_s, a_e = a
    b_s, b_e = b
    # Only the parts of each set within the other's extent can meet: a small set against a
    # large one then costs O(log n) to find, not a sort of the large one.
    a_s, a_e = _within(a_s, a_e, b_s, b_e)
    b_s, b_e = _within(b_s, b_e, a_s, a_e)
    if a_s.size == 0 or b_s.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    # Coverage 2 (both sets) at a boundary walk of both sets' starts and ends.
    return _covered_at(np.concatenate([a_s, a_e, b_s, b_e]),
                       np.concatenate([np.ones_like(a_s), -np.ones_like(a_e), np.ones_like(b_s), -np.ones_like(b_e)]),
                       level=2)


def _within(s: np.ndarray, e: np.ndarray, other_s: np.ndarray, other_e: np.ndarray):
    """The intervals of a disjoint sorted set that overlap the extent of another."""
    if s.size == 0 or other_s.size == 0:
        return s[:0], e[:0]
    first = int(np.searchsorted(e, other_s[0], side="right"))
    last = int(np.searchsorted(s, other_e[-1], side="left"))
    return s[first:last], e[first:last]


def _covered_at(points: np.ndarray, delta: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """The stretches where the running sum of `delta` over sorted `points` equals `level`
    (ends sort before starts at equal points, so touching intervals do not overlap)."""
    order = lexsort((delta, points))
    points, delta = points[order], delta[order]
    inside = np.cumsum(delta) == level
    starts = points[:-1][inside[:-1]]
    ends = points[1:][inside[:-1]]
    keep = ends > starts
    return union(starts[keep], ends[keep])


def subtract(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Parts of interval set `a` not covered by `b` (both disjoint and sorted)."""
    a_s, a_e = a
    if a_s.size == 0:
        return a
    both = intersect(a, b)
    # a minus (a ∩ b): inside a and not inside the overlap.
    return _covered_at(np.concatenate([a_s, a_e, both[0], both[1]]),
                       np.concatenate([np.ones_like(a_s), -np.ones_like(a_e), -np.ones_like(both[0]),
                                       np.ones_like(both[1])]),
                       level=1)


def total(intervals: tuple[np.ndarray, np.ndarray]) -> int:
    return int((intervals[1] - intervals[0]).sum())


def clip(intervals: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of the intervals inside [lo, hi)."""
    s, e = intervals
    s = np.maximum(s, lo)
    e = np.minimum(e, hi)
    keep = e > s
    return s[keep], e[keep]


def containing(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each time in `t`, the index of the interval [starts[i], ends[i]) holding it, -1
    where none does. The intervals are sorted by start and do not overlap."""
    if len(starts) == 0:  # e.g. a device whose activities all take 0 ns: union() drops them
        return np.full(np.shape(t), -1, dtype=np.int64)
    k = np.searchsorted(starts, t, side="right") - 1
    return np.where((k >= 0) & (t < ends[np.clip(k, 0, None)]), k, -1)


def covered(intervals: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> int:
    """How much of [lo, hi) a disjoint sorted interval set covers: O(log n) to find the
    overlapping intervals, so it can be called once per event on large sets."""
    s, e = intervals
    first = int(np.searchsorted(e, lo, side="right"))
    last = int(np.searchsorted(s, hi, side="left"))
    if last <= first:
        return 0
    return int((np.minimum(e[first:last], hi) - np.maximum(s[first:last], lo)).clip(min=0).sum())


def overlap_sums(starts, ends, lo, hi) -> np.ndarray:
    """For each window [lo[i], hi[i]), the summed overlap of the intervals [starts, ends)
    with it. The intervals may overlap one another (each counts, unlike `covered`). Equal to
    a clip-and-sum per window, in O((intervals + windows) log intervals).

    With F(t) = the intervals' summed length before t = sum of ends <= t + t * (number of
    starts < t - number of ends <= t) - sum of starts < t, the overlap is F(hi) - F(lo)."""
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    keep = e > s
    s, e = np.sort(s[keep]), np.sort(e[keep])
    if s.size == 0:
        return np.zeros(lo.size, dtype=np.int64)
    base = s[0]  # times relative to the first start: the cumulative sums cannot overflow
    s, e = s - base, e - base
    sum_s = np.concatenate([[0], np.cumsum(s)])
    sum_e = np.concatenate([[0], np.cumsum(e)])

    def before(t):
        t = t - base
        started = np.searchsorted(s, t, side="left")
        ended = np.searchsorted(e, t, side="right")
        return sum_e[ended] + t * (started - ended) - sum_s[started]

    return np.where(hi > lo, before(hi) - before(lo), 0)
