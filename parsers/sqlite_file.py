"""SQLite input files, shared by the formats stored in SQLite (Nsight Systems exports,
rocpd databases): recognising one, opening it read-only, and saying in one line what is
wrong with one that cannot be read."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection that fails at once (no busy wait) on a locked file. The path
    goes in as a file URI, so that `#`, `?` and `%` in it are part of the name."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=0, check_same_thread=False)
    # Exports hold strings that are not valid UTF-8 (seen in Nsight's StringIds): keep them, replaced.
    con.text_factory = lambda raw: raw.decode("utf-8", "replace")
    return con


def table_names(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def _first_line(exc: sqlite3.Error) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def file_problem(exc: sqlite3.Error, path: Path | None = None) -> str | None:
    """One line for a SQLite error that is about the file (locked, damaged, cut short:
    `path` tells that one), else None (the error is about what the database holds, which
    the format's parser words)."""
    text = _first_line(exc)
    if "locked" in text or "busy" in text:
        return f"the SQLite database is locked by another process ({text}); retry when it is released"
    if "malformed" in text or "not a database" in text or "disk image" in text:
        sizes = cut_short(path) if path is not None else None
        if sizes is not None:
            return (f"the SQLite file is cut short: it holds {sizes[0]:,} of the {sizes[1]:,} bytes its header "
                    "gives (an export or a copy that was interrupted); export or copy it again")
        return f"the SQLite database is damaged or truncated ({text})"
    return None


def sqlite_problem(exc: sqlite3.Error, path: Path | None = None) -> str:
    """One line for a SQLite error a user can act on."""
    return file_problem(exc, path) or f"cannot read the SQLite database ({_first_line(exc)})"


def cut_short(path: Path) -> tuple[int, int] | None:
    """(bytes the file holds, bytes its header gives) for a SQLite file shorter than its
    header says, else None. The header's page count is used only where SQLite would trust
    it (its change counter equals its version-valid-for number)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    if len(head) < 100 or head[:16] != SQLITE_MAGIC or head[24:28] != head[92:96]:
        return None
    page_size = int.from_bytes(head[16:18], "big")
    expected = (65536 if page_size == 1 else page_size) * int.from_bytes(head[28:32], "big")
    return (size, expected) if size < expected else None


def damage(path: Path) -> str | None:
    """For a file that starts as SQLite but no parser claims: what stops it being read
    (a truncated copy reads as 'database disk image is malformed'), or None if it reads."""
    if not is_sqlite(path):
        return None
    try:
        con = connect(path)
        try:
            table_names(con)
        finally:
            con.close()
    except sqlite3.Error as exc:
        return sqlite_problem(exc, path)
    return None
