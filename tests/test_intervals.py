"""Interval unions, intersections and differences against a brute-force reference."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from profkit import intervals

spans = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=25)


def covered(pairs):
    points = set()
    for start, dur in pairs:
        points.update(range(start, start + dur))
    return points


def as_arrays(pairs):
    return (np.array([s for s, _ in pairs], dtype=np.int64), np.array([s + d for s, d in pairs], dtype=np.int64))


def points_of(result):
    return {p for s, e in zip(*result) for p in range(int(s), int(e))}


@settings(max_examples=200, deadline=None)
@given(spans)
def test_union_covers_exactly_the_same_points(pairs):
    merged = intervals.union(*as_arrays(pairs))
    assert points_of(merged) == covered(pairs)
    assert intervals.length(*as_arrays(pairs)) == len(covered(pairs))
    assert np.all(merged[0][1:] > merged[1][:-1])  # disjoint and not touching


@settings(max_examples=200, deadline=None)
@given(spans, spans)
def test_intersect_and_subtract(a, b):
    ua, ub = intervals.union(*as_arrays(a)), intervals.union(*as_arrays(b))
    assert points_of(intervals.intersect(ua, ub)) == covered(a) & covered(b)
    assert points_of(intervals.subtract(ua, ub)) == covered(a) - covered(b)


def test_clip():
    clipped = intervals.clip(intervals.union([0, 50], [20, 80]), 10, 60)
    assert clipped[0].tolist() == [10, 50] and clipped[1].tolist() == [20, 60]


@settings(max_examples=200, deadline=None)
@given(spans, st.integers(0, 250), st.integers(0, 60))
def test_covered_equals_the_intersection(pairs, lo, width):
    merged = intervals.union(*as_arrays(pairs))
    assert intervals.covered(merged, lo, lo + width) == len(covered(pairs) & set(range(lo, lo + width)))


@given(pairs=st.lists(st.tuples(st.integers(-50, 50), st.integers(0, 30)), max_size=30),
       windows=st.lists(st.tuples(st.integers(-60, 60), st.integers(-5, 40)), max_size=10))
def test_overlap_sums_equal_a_clip_per_window(pairs, windows):
    s = np.array([a for a, _ in pairs], dtype=np.int64)
    e = np.array([a + d for a, d in pairs], dtype=np.int64)
    lo = np.array([a for a, _ in windows], dtype=np.int64)
    hi = np.array([a + w for a, w in windows], dtype=np.int64)
    expected = [int(np.clip(np.minimum(e, h) - np.maximum(s, l), 0, None).sum()) for l, h in zip(lo, hi)]
    assert intervals.overlap_sums(s, e, lo, hi).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(spans, st.lists(st.integers(-10, 270), max_size=30))
def test_containing_names_the_interval_holding_each_time(pairs, times):
    s, e = intervals.union(*as_arrays(pairs))
    t = np.array(times, dtype=np.int64)
    got = intervals.containing(s, e, t)
    for time, k in zip(times, got.tolist()):
        holders = [i for i in range(s.size) if s[i] <= time < e[i]]
        assert k == (holders[0] if holders else -1)
