"""Columns of a store query (Arrow) as numpy arrays, for the passes that work on arrays."""
from __future__ import annotations

import numpy as np


def dictionary_codes(col) -> tuple[np.ndarray, np.ndarray]:
    """A string column as (codes, values): `values` is an object array of the distinct
    strings whose last entry is None (the code of nulls), so `values[codes]` is the column.
    Work done per distinct value (a regex, a lookup) is then done once, not once per row."""
    encoded = col.combine_chunks().dictionary_encode() if hasattr(col, "combine_chunks") else col.dictionary_encode()
    values = encoded.dictionary.to_pylist()
    codes = encoded.indices.fill_null(len(values)).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, np.asarray(values + [None], dtype=object)


def per_value(fn, codes: np.ndarray, values: np.ndarray, dtype=object) -> np.ndarray:
    """fn of every row's value, calling fn once per distinct value (see dictionary_codes)."""
    return np.array([fn(v) for v in values], dtype=dtype)[codes]
