"""Shared fixtures. Real traces live in ../shared/traces beside the repo and are never
copied in; where they are missing, tests that need them fail under CI and skip elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_TRACES = Path(os.environ.get("PROFKIT_SHARED_TRACES", REPO.parent / "shared" / "traces"))
SAMPLE_TRACES = REPO / "sample_traces"


def shared_trace(relative: str) -> Path:
    """Path of a trace in ../shared/traces; fails in CI and skips elsewhere if absent."""
    path = SHARED_TRACES / relative
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared trace missing: {path}")
        pytest.skip(f"shared trace not available: {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Caches of parsed traces go to one temporary directory for the whole run."""
    cache = tmp_path_factory.mktemp("profkit-cache")
    old = os.environ.get("PROFKIT_CACHE_DIR")
    os.environ["PROFKIT_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("PROFKIT_CACHE_DIR", None)
    else:
        os.environ["PROFKIT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """The shipped synthetic 4-rank sample, or a freshly generated one if it is missing."""
    sample = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"
    if (sample / "manifest.json").exists():
        return sample
    from profkit.synthetic import generate_decode_trace

    out = tmp_path_factory.mktemp("synthetic")
    generate_decode_trace(out)
    return out
