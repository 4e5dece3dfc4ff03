"""Input formats, one module each. Installed as `profkit.parsers`.

Every parser module exposes:

- `FORMAT`: the name stored in `traces.format`;
- `detect(path: Path) -> bool`: whether the file or directory is this format, judged
  from its content (never raises; reads only a little);
- `parse(path: Path, sink: profkit.ingest.Sink) -> None`: opens one trace per input unit
  with `sink.trace(...)` and fills it; raises `profkit.errors.TraceError` for input it
  cannot use at all, and counts every record it skips: `writer.issue(...)` for records it
  could not use (damaged, inconsistent, of an unknown kind: reports warn of them),
  `writer.not_stored(...)` for records it reads and leaves out by design (metadata).
  `sink.batch_reaches(module, size, threshold)` says whether the inputs of the ingest that
  the parser reads are several and of `threshold` bytes or more in all, for weighing a
  cost paid once a process (loading compiled code).

and may expose `covered_by(path: Path) -> Path | None`: another file beside `path` that
holds the same run in a form read instead (an Nsight report's SQLite export), so that a
directory holding both is not read twice.

A parser knows nothing of analyses. Order matters: more specific formats come first
(a rocprof v1 `results.json` is also Chrome-trace JSON).
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

PARSER_MODULES = (
    "nsys",
    "rocpd",
    "rocprof_v1",
    "rocprofv3_csv",
    "rocprofv3_json",
    "kineto",
)


def parser_modules() -> list[ModuleType]:
    modules = []
    for name in PARSER_MODULES:
        try:
            modules.append(import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as exc:
            # A parser still being written is simply absent; anything else is a bug.
            if exc.name != f"{__name__}.{name}":
                raise
    return modules


def detect(path: Path) -> ModuleType | None:
    """The parser module that claims `path`, or None."""
    for module in parser_modules():
        try:
            if module.detect(path):
                return module
        except Exception:  # noqa: BLE001 - a detector that trips over odd input just declines it
            continue
    return None


def unreadable(path: Path) -> str | None:
    """For a file no parser claims: what keeps a file of a container the formats use from
    being read (a truncated or locked SQLite database, a file of NUL bytes only), or None
    if nothing does."""
    from .sqlite_file import damage

    return _only_nul(path) or damage(path)


def _only_nul(path: Path) -> str | None:
    """A file whose every byte is NUL: space a crash left unwritten, or a preallocated file."""
    import mmap

    from .kineto_read import end_before_padding

    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if end_before_padding(data):
                return None
            size = len(data)
    except (OSError, ValueError):
        return None
    return f"every one of its {size:,} bytes is NUL: nothing was written to it (a crash, or a preallocated file)"
