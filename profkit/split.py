"""One trace per process that drove a device.

A profiler that records several processes into one file (an Nsight Systems report of
`torchrun`: one process per rank, each on its own GPU) holds several ranks. Every pass works
per trace (one rank's steps, breakdown, critical path), so such a trace is split by process
after the parser has written it and before the derivations: each process with device
activity becomes a trace of its own (a rank, numbered by process order unless the input
says otherwise). The first keeps the trace id, the file's ingest_issues and whatever
belongs to no such process (host-only processes such as a launcher, rows without a pid);
ingest_issues of the first trace say what it kept. Formats whose files hold one process,
or that split by process themselves (rocprof), never ask for this.
"""
from __future__ import annotations

import json

from .store import Store


def by_process(store: Store, trace_id: int) -> list[int]:
    """Split `trace_id` into one trace per process with device activity; its trace ids,
    the original first. Nothing to split (one such process): [trace_id]."""
    con = store.con
    pids = [p for (p,) in con.execute(
        "SELECT pid FROM events WHERE trace_id = ? AND device IS NOT NULL AND pid IS NOT NULL "
        "GROUP BY pid ORDER BY pid", [trace_id]).fetchall()]
    if len(pids) < 2:
        return [trace_id]
    base = store.next_trace_id()
    moved = {pid: base + i for i, pid in enumerate(pids[1:])}
    mapping = "(VALUES " + ", ".join(f"({pid}, {new})" for pid, new in moved.items()) + ") AS m(pid, new_id)"
    for table in ("events", "threads", "counters"):
        con.execute(f"UPDATE {table} SET trace_id = m.new_id FROM {mapping} "
                    f"WHERE {table}.trace_id = ? AND {table}.pid = m.pid", [trace_id])
    # Rows keyed by events follow their events: a link by its first event, a step by the
    # annotation that defines it.
    for table, column in (("links", "src_event"), ("steps", "event_id")):
        con.execute(f"UPDATE {table} SET trace_id = e.trace_id FROM events e "
                    f"WHERE {table}.trace_id = ? AND e.event_id = {table}.{column} AND e.trace_id <> ?",
                    [trace_id, trace_id])
    _split_devices(store, trace_id, list(moved.values()))
    _split_trace_rows(store, trace_id, pids, moved)
    return [trace_id, *moved.values()]


def _split_devices(store: Store, trace_id: int, new_ids: list[int]) -> None:
    """Each piece gets the rows of the devices its events ran on (a device two processes
    shared is listed in both); the first keeps the rows no piece used."""
    con = store.con
    con.execute("""
        INSERT INTO devices SELECT d.* REPLACE (u.trace_id AS trace_id) FROM devices d
        JOIN (SELECT DISTINCT trace_id, device FROM events
              WHERE trace_id IN (SELECT unnest(?::INTEGER[])) AND device IS NOT NULL) u USING (device)
        WHERE d.trace_id = ?""", [new_ids, trace_id])
    con.execute("""
        DELETE FROM devices WHERE trace_id = ? AND device IN (
            SELECT device FROM devices WHERE trace_id IN (SELECT unnest(?::INTEGER[])))
          AND device NOT IN (SELECT DISTINCT device FROM events WHERE trace_id = ? AND device IS NOT NULL)""",
                [trace_id, new_ids, trace_id])


def _split_trace_rows(store: Store, trace_id: int, pids: list[int], moved: dict[int, int]) -> None:
    """A `traces` row per piece: the file's row copied, with its own path, process and
    counts. Records read stay accounted for: a piece read what it stored, the first the rest
    (its events, the file's issues and records kept elsewhere)."""
    con = store.con
    path, metadata = con.execute("SELECT path, metadata FROM traces WHERE trace_id = ?", [trace_id]).fetchone()
    facts = json.loads(metadata) if metadata else {}
    for pid, piece in [(pids[0], trace_id), *moved.items()]:
        own = [f"{path}#pid{pid}", json.dumps({**facts, "process": {"pid": pid, "split_from": path}})]
        if piece == trace_id:
            con.execute("UPDATE traces SET path = ?, metadata = ? WHERE trace_id = ?", [*own, trace_id])
        else:  # the counts are the pieces' own, set below
            con.execute("INSERT INTO traces SELECT * REPLACE (? AS trace_id, ? AS path, ? AS metadata) "
                        "FROM traces WHERE trace_id = ?", [piece, *own, trace_id])
    con.execute("INSERT INTO ingest_issues (trace_id, reason, count) VALUES (?, ?, 0)", [
        trace_id, f"{len(pids)} processes drove devices, one trace each: this is process {pids[0]} (with the "
                  f"file's host-only processes); the others are {', '.join(f'#pid{p}' for p in moved)}"])
    con.execute("""
        UPDATE traces SET event_count = s.n, start_ns = s.lo, end_ns = s.hi,
               source_records = CASE WHEN traces.trace_id = ?
                                     THEN traces.source_records - (SELECT count(*) FROM events
                                          WHERE trace_id IN (SELECT unnest(?::INTEGER[])))
                                     ELSE s.n END,
               issue_count = (SELECT coalesce(sum(count), 0) FROM ingest_issues i WHERE i.trace_id = traces.trace_id)
        FROM (SELECT trace_id, count(*) AS n, min(start_ns) AS lo, max(end_ns) AS hi FROM events
              WHERE trace_id IN (SELECT unnest(?::INTEGER[])) GROUP BY trace_id) s
        WHERE traces.trace_id = s.trace_id""", [trace_id, list(moved.values()), [trace_id, *moved.values()]])
