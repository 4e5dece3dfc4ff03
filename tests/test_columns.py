"""profkit.columns: per-distinct-value helpers and the packed-key lexsort."""
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from profkit.columns import contains, dictionary_codes, group_codes, lexsort, members_by_code, per_value, run_starts

_KEY = st.sampled_from(["small", "bool", "wide", "wide_ties", "huge", "uint_top", "uint_high", "float"])


def _key(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "small":
        return rng.integers(-5, 5, n)
    if kind == "bool":
        return rng.integers(0, 2, n).astype(bool)
    if kind == "wide":  # nanosecond timestamps: packs with a few small keys
        return rng.integers(1_600_000_000_000_000_000, 1_600_000_100_000_000_000, n)
    if kind == "wide_ties":  # timestamps that repeat: later keys must break the ties
        return rng.choice(rng.integers(1_600_000_000_000_000_000, 1_600_000_100_000_000_000, 4), n)
    if kind == "huge":  # too wide to pack with anything: a group of its own
        return rng.integers(-2**62, 2**62, n)
    if kind == "uint_high":  # narrow, but above int64's range
        return rng.integers(2**63, 2**63 + 1000, n, dtype=np.uint64)
    if kind == "uint_top":  # wider than 63 bits: sorted as it is
        return rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
    return rng.normal(size=n)


@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(_KEY, min_size=1, max_size=4), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_lexsort_is_numpys_lexsort(kinds, n, seed):
    rng = np.random.default_rng(seed)
    keys = [_key(kind, rng, n) for kind in kinds]
    assert np.array_equal(lexsort(keys), np.lexsort(keys))


def test_lexsort_is_stable_on_ties():
    keys = [np.zeros(1000, dtype=np.int64), np.ones(1000, dtype=np.int64)]
    assert np.array_equal(lexsort(keys), np.arange(1000))


def test_dictionary_codes_and_per_value():
    col = pa.chunked_array([["a", None, "b"], ["a"]])
    codes, values = dictionary_codes(col)
    assert values[codes].tolist() == ["a", None, "b", "a"]
    calls = []
    upper = per_value(lambda v: calls.append(v) or (v or "").upper(), codes, values)
    assert upper.tolist() == ["A", "", "B", "A"]
    assert len(calls) == len(values)  # once per distinct value, nulls included


def _codes_of_joined_column(col):
    """The encoding dictionary_codes gave before it encoded chunks as they are: the column
    joined into one array first."""
    encoded = col.combine_chunks().dictionary_encode()
    values = encoded.dictionary.to_pylist()
    return encoded.indices.fill_null(len(values)).to_numpy(zero_copy_only=False).astype(np.int64), values + [None]


def test_dictionary_codes_of_chunks_match_the_joined_column():
    rng = np.random.default_rng(7)
    words = [f"op{i}" for i in range(40)]
    chunks = []
    for size in (0, 1, 500, 0, 1000, 3):  # empty chunks too, and ones of a single row
        picked = rng.integers(0, len(words) + 1, size)  # the last: a null
        chunks.append([None if k == len(words) else words[k] for k in picked])
    chunks.append([None, None])  # a chunk of nulls only
    col = pa.chunked_array(chunks, type=pa.string())
    codes, values = dictionary_codes(col)
    want_codes, want_values = _codes_of_joined_column(col)
    assert codes.dtype == np.int64 and codes.tolist() == want_codes.tolist()
    assert values.tolist() == want_values
    assert values[codes].tolist() == col.to_pylist()
    # A plain array, an empty column, and one of nulls only.
    assert dictionary_codes(pa.array(["b", "a", "b"]))[0].tolist() == [0, 1, 0]
    empty_codes, empty_values = dictionary_codes(pa.chunked_array([], type=pa.string()))
    assert empty_codes.size == 0 and empty_values.tolist() == [None]
    null_codes, null_values = dictionary_codes(pa.chunked_array([[None, None]], type=pa.string()))
    assert null_values[null_codes].tolist() == [None, None]


def test_dictionary_codes_of_chunks_encoded_apart():
    """Chunks already encoded, each against a dictionary of its own (as a reader may give):
    the codes index one dictionary of all their values."""
    col = pa.chunked_array([pa.array(["x", "y", None]).dictionary_encode(), pa.array(["z", "x"]).dictionary_encode()])
    codes, values = dictionary_codes(col)
    assert values[codes].tolist() == ["x", "y", None, "z", "x"]
    assert sorted(v for v in values if v is not None) == ["x", "y", "z"]


def test_group_codes_number_each_combination_in_key_order():
    a = np.array([2, 1, 2, 1, 2])
    b = np.array([0, 5, 0, 4, 1])
    code, first = group_codes(a, b)
    assert code.tolist() == [2, 1, 2, 0, 3]   # (1,4) (1,5) (2,0) (2,1)
    assert [(int(a[i]), int(b[i])) for i in first] == [(1, 4), (1, 5), (2, 0), (2, 1)]
    assert [len(x) for x in group_codes(np.zeros(0, np.int64))] == [0, 0]


@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(_KEY.filter(lambda k: k != "float"), min_size=1, max_size=3), n=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1))
def test_group_codes_is_sorted_unique_rows(kinds, n, seed):
    """Hashed (keys that pack) or sorted (keys that do not), the same as numpy's unique rows."""
    rng = np.random.default_rng(seed)
    keys = [_key(kind, rng, n) for kind in kinds]
    keys = [k[rng.integers(0, max(1, n // 3), n)] for k in keys]  # repeats, so that codes are shared
    code, first = group_codes(*keys)
    rows = list(zip(*[k.tolist() for k in keys]))
    distinct = sorted(set(rows))
    assert code.tolist() == [distinct.index(r) for r in rows]
    assert first.tolist() == [rows.index(r) for r in distinct]


def test_contains():
    values = np.array([3, 5, 9])
    assert contains(values, np.array([1, 3, 4, 9, 10])).tolist() == [False, True, False, True, False]
    assert contains(np.zeros(0, np.int64), np.array([1])).tolist() == [False]


def test_run_starts_marks_the_first_row_of_each_run_of_equal_keys():
    a = np.array([0, 0, 1, 1, 1, 2])
    b = np.array([5, 6, 6, 6, 7, 7])
    assert run_starts(a).tolist() == [True, False, True, False, False, True]
    assert run_starts(a, b).tolist() == [True, True, True, False, True, True]
    assert run_starts(np.zeros(0, np.int64)).tolist() == []


def test_distinct_count():
    from profkit.columns import distinct_count

    rng = np.random.default_rng(3)
    for values in (rng.integers(0, 50, 10_000), rng.permutation(100_000), np.zeros(5, np.int64),
                   np.empty(0, np.int64), np.array([-3, 7, -3])):
        assert distinct_count(values) == len(set(values.tolist()))


def test_sorted_distinct_is_numpys_unique():
    from profkit.columns import sorted_distinct

    rng = np.random.default_rng(4)
    for values in (rng.integers(0, 50, 10_000), rng.permutation(100_000), np.zeros(5, np.int64),
                   np.empty(0, np.int64), np.array([-3, 7, -3])):
        got = sorted_distinct(values)
        assert got.dtype == values.dtype and got.tolist() == np.unique(values).tolist()



def test_members_by_code_lists_each_codes_rows_in_order():
    codes = np.array([2, -1, 0, 2, 0, 5, 2])
    assert [m.tolist() for m in members_by_code(codes, 4)] == [[2, 4], [], [0, 3, 6], []]
    assert members_by_code(np.zeros(0, np.int64), 2)[1].size == 0
