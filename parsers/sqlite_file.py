"""SQLite input files, shared by the formats stored in SQLite (Nsight Systems exports,
rocpd databases): recognising one, opening it read-only, and saying in one line what is
wrong with one that cannot be read."""
from __future__ import annotations

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


def file_problem(exc: sqlite3.Error) -> str | None:
    """One line for a SQLite error that is about the file (locked, damaged), else None
    (the error is about what the database holds, which the format's parser words)."""
    text = _first_line(exc)
    if "locked" in text or "busy" in text:
        return f"the SQLite database is locked by another process ({text}); retry when it is released"
    if "malformed" in text or "not a database" in text or "disk image" in text:
        return f"the SQLite database is damaged or truncated ({text})"
    return None


def sqlite_problem(exc: sqlite3.Error) -> str:
    """One line for a SQLite error a user can act on."""
    return file_problem(exc) or f"cannot read the SQLite database ({_first_line(exc)})"


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
        return sqlite_problem(exc)
    return None
