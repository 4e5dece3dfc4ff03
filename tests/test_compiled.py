"""The loader of compiled loops (profkit/compiled.py) and the graph replay's use of it."""
from __future__ import annotations

import threading

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


def test_the_replay_uses_a_loaded_loop_from_the_preload_size_on(monkeypatch):
    """Below COMPILED_MIN_EDGES the compiled loop is used only where loaded already (by
    critical_path's worker), and only from PRELOAD_MIN_EDGES on; never with compiled=False."""
    original = graph_replay._kernels
    loaded = compiled(lambda: original())  # a fresh loader, not yet loaded
    monkeypatch.setattr(graph_replay, "_kernels", loaded)
    small, middle, large = (graph_replay.PRELOAD_MIN_EDGES - 1, graph_replay.PRELOAD_MIN_EDGES,
                            graph_replay.COMPILED_MIN_EDGES)
    assert graph_replay._loop("longest_path", middle) is None and not loaded.ready()
    assert graph_replay._loop("longest_path", large) is not None and loaded.ready()
    assert graph_replay._loop("longest_path", middle) is not None
    assert graph_replay._loop("walk_back", middle) is not None
    assert graph_replay._loop("longest_path", small) is None
    assert graph_replay._loop("longest_path", large, compiled=False) is None


def test_without_numba_every_replay_runs_the_python_loop(monkeypatch):
    """numba missing (or its cache unusable): the loader gives None, and the replay, even
    of a graph past COMPILED_MIN_EDGES, falls back to the Python loop."""
    monkeypatch.setattr(graph_replay, "_kernels", compiled(lambda: None))
    for edges in (0, graph_replay.PRELOAD_MIN_EDGES, graph_replay.COMPILED_MIN_EDGES):
        assert graph_replay._loop("longest_path", edges) is None
    assert graph_replay._loop("walk_back", 0, compiled=True) is None
