"""Small builders for tests that need a store with known contents."""
from __future__ import annotations

from pathlib import Path

from profkit.ingest import Sink
from profkit.store import Store


def store_with_events(events: dict, tmp_path: Path, **trace_fields) -> Store:
    """An in-memory store holding one trace with the given event columns (local ids)."""
    source = tmp_path / "input.json"
    source.write_text("{}")
    store = Store.open(None)
    with Sink(store).trace(source, "test") as writer:
        writer.add_events(events)
        if trace_fields:
            writer.set_trace(**trace_fields)
    return store
