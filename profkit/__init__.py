"""profkit: why is this GPU workload slow?

Library first; the `profkit` command is a face over it.

    >>> import profkit
    >>> store = profkit.load("trace.json.gz")      # parses once, then reuses the cache
    >>> store.rows("SELECT kind, count(*) AS n FROM events GROUP BY kind")
"""
from __future__ import annotations

__version__ = "0.1.0"

from .cache import load  # noqa: E402
from .errors import ProfkitError, TraceError  # noqa: E402
from .store import Store  # noqa: E402

__all__ = ["load", "Store", "ProfkitError", "TraceError", "__version__"]
