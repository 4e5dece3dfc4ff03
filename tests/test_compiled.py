"""The loader of compiled loops (profkit/compiled.py) and the graph replay's use of it."""
from __future__ import annotations

import threading
from types import SimpleNamespace

from profkit import graph_replay
from profkit.compiled import compiled


def test_loaded_once_by_whichever_thread_asks_first():
    calls = []
    gate = threading.Event()

    @compiled
    def load():
        gate.wait(5)
        calls.append(1)
        return "loop"

    assert not load.ready()
    load.start()
    results = []
    askers = [threading.Thread(target=lambda: results.append(load())) for _ in range(4)]
    for t in askers:
        t.start()
    gate.set()
    for t in askers:
        t.join(5)
    assert results == ["loop"] * 4 and calls == [1] and load.ready()
    load.start()  # loaded already: no second load
    assert load() == "loop" and calls == [1]


def test_a_failing_load_gives_none_and_counts_as_ready():
    @compiled
    def load():
        raise ImportError("No module named 'numba'")

    assert load() is None and load.ready()


def _graph(edges: int, traces: int = 1) -> SimpleNamespace:
    """What the choice of loop reads of a graph: its edges and traces."""
    return SimpleNamespace(n_edges=edges, traces=[{"trace_id": i} for i in range(traces)])


def _edges(work: int, traces: int = 1) -> int:
    """Edges giving `work` (graph_replay.replay_work) with `traces` traces."""
    return -(-work // (1 + graph_replay.REPLAYS_PER_TRACE * traces))


def test_the_replay_uses_a_loaded_loop_from_the_preload_size_on(monkeypatch):
    """Below COMPILED_MIN_WORK the compiled loop is used only where loaded already (by
    critical_path's worker), and only from PRELOAD_MIN_WORK on; never with compiled=False.
    For one trace, the thresholds are 250k and 500k edges."""
    original = graph_replay._kernels
    loaded = compiled(lambda: original())  # a fresh loader, not yet loaded
    monkeypatch.setattr(graph_replay, "_kernels", loaded)
    assert _edges(graph_replay.PRELOAD_MIN_WORK) == 250_000 and _edges(graph_replay.COMPILED_MIN_WORK) == 500_000
    small, middle, large = (_graph(249_999), _graph(250_000), _graph(500_000))
    assert graph_replay._loop("longest_path", middle) is None and not loaded.ready()
    assert graph_replay._loop("longest_path", large) is not None and loaded.ready()
    assert graph_replay._loop("longest_path", middle) is not None
    assert graph_replay._loop("walk_back", middle) is not None
    assert graph_replay._loop("longest_path", small) is None
    assert graph_replay._loop("longest_path", large, compiled=False) is None


def test_many_ranks_of_a_small_graph_are_work_enough_for_the_compiled_loop(monkeypatch):
    """Every trace's findings are priced by replays of the whole graph (all ranks): 16
    ranks of 9k edges each (150k edges, 113 replays) took 3.3 s in the Python loop."""
    original = graph_replay._kernels
    loaded = compiled(lambda: original())
    monkeypatch.setattr(graph_replay, "_kernels", loaded)
    assert graph_replay._loop("longest_path", _graph(150_000, traces=1)) is None and not loaded.ready()
    assert graph_replay._loop("longest_path", _graph(150_000, traces=16)) is not None and loaded.ready()
    assert graph_replay._loop("longest_path", _graph(70_000, traces=4)) is not None  # loaded already: used
    assert graph_replay._loop("longest_path", _graph(37_000, traces=4)) is None  # the 4-rank sample: too little


def test_without_numba_every_replay_runs_the_python_loop(monkeypatch):
    """numba missing (or its cache unusable): the loader gives None, and the replay, even
    with work past COMPILED_MIN_WORK, falls back to the Python loop."""
    monkeypatch.setattr(graph_replay, "_kernels", compiled(lambda: None))
    for edges in (0, 250_000, 500_000):
        assert graph_replay._loop("longest_path", _graph(edges)) is None
    assert graph_replay._loop("walk_back", _graph(0), compiled=True) is None
