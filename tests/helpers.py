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


def table_digests(store: Store) -> dict[str, tuple[int, int]]:
    """(rows, order-independent hash of the rows) per schema table: equal digests mean the
    same contents. `traces` leaves out what depends on when and how fast it was ingested."""
    from profkit import schema

    volatile = {"ingest_seconds", "file_mtime_ns"}
    digests = {}
    for table in schema.TABLES:
        columns = ", ".join(c.name for c in table.columns if c.name not in volatile)
        digests[table.name] = store.con.execute(
            f"SELECT count(*), coalesce(sum(hash(row({columns})))::HUGEINT, 0) FROM {table.name}").fetchone()
    return digests
