"""Compiled loops (numba), loaded once per process, on demand or ahead of need.

Loading numba and a cached loop costs ~0.55 s of CPU on first use (import ~0.27 s, the
first call's cache load ~0.3 s), so each user decides by size whether a loop is worth it,
and may start the load on a thread early (`Compiled.start`) so that it overlaps other
work. Any failure (numba not installed, an unusable on-disk cache) gives None, and the
caller runs its Python or SQL path instead.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class Compiled:
    """`load()` run once, by whichever thread asks first (the others wait for it), and its
    result kept; None where it fails in any way."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._value: Any = None
        self.__doc__ = load.__doc__

    def __call__(self) -> Any:
        with self._lock:
            if not self._done.is_set():
                try:
                    self._value = self._load()
                except Exception:  # noqa: BLE001 - any failure of numba means: the other path
                    self._value = None
                self._done.set()
        return self._value

    def ready(self) -> bool:
        """Loaded (or failed) already: calling now does not wait."""
        return self._done.is_set()

    def start(self, name: str = "profkit-compiled-load") -> None:
        """Load on a daemon thread, unless loaded already."""
        if not self._done.is_set():
            threading.Thread(target=self, name=name, daemon=True).start()


def compiled(load: Callable[[], Any]) -> Compiled:
    """Decorator: a `Compiled` loader of `load`."""
    return Compiled(load)
