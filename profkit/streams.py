"""Inputs that are streams, not files: standard input (`-`, `/dev/stdin`), a pipe
(`<(zcat trace.json.gz)`, a named FIFO), a character device. Parsers map their input and
read parts of it more than once, so a stream is first copied to a temporary file, which
is read like any file; the trace keeps the name the stream was given. A stream is never
cached, nor known again in a store: it has no size or modification time to know it by (a
recording the store holds already is still not added twice: see ingest)."""
from __future__ import annotations

import os
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from .errors import TraceError

STDIN = "-"
STDIN_NAME = "<stdin>"  # what standard input is called in traces and messages
_COPY_CHUNK = 16 << 20
_WAIT_NOTICE_S = 1.0  # opening a FIFO blocks until something writes to it: say so after this


def is_stream(path: str | Path) -> bool:
    """The argument `-` (a string: `./-` is a file named -), or something that exists and
    is neither a regular file nor a directory."""
    if _is_stdin(path):
        return True
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _refused(source) -> str | None:
    """Why a stream is not read: a terminal would wait for typing, and a device (/dev/zero)
    may never end."""
    try:
        if source.isatty():
            return "is a terminal: pipe a trace into it (zcat trace.json.gz | profkit analyze -)"
        mode = os.fstat(source.fileno()).st_mode
    except (OSError, ValueError):  # no descriptor (a test's stand-in for stdin): read what it gives
        return None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a trace or a pipe"
    return None


@contextmanager
def spooled(paths: list[str | Path]) -> Iterator[tuple[list[Path], dict[str, str]]]:
    """(the paths to read, each stream replaced by its copy; {copy, resolved: the name the
    stream was given}). The copies are removed when the block ends. A stream named twice
    is an error: it can be read once."""
    streams = {i: _name(p) for i, p in enumerate(paths) if is_stream(p)}
    if not streams:
        yield [Path(p) for p in paths], {}
        return
    names = list(streams.values())
    for name in names:
        if names.count(name) > 1:
            raise TraceError(name, "given twice: a stream can be read once")
    with tempfile.TemporaryDirectory(prefix="profkit-stream-") as folder:
        readable, given = [], {}
        for i, path in enumerate(paths):
            if i not in streams:
                readable.append(Path(path))
                continue
            # The stream's own name is kept (a FIFO named rank3.json still gives rank 3).
            copy = Path(folder) / str(i) / ("stdin" if _is_stdin(path) else Path(path).name)
            copy.parent.mkdir()
            _copy(path, streams[i], copy)
            readable.append(copy)
            given[str(copy.resolve())] = streams[i]
        yield readable, given


def _name(path: str | Path) -> str:
    """What a stream is called in traces and messages."""
    return STDIN_NAME if _is_stdin(path) else str(Path(path).absolute())


def _is_stdin(path: str | Path) -> bool:
    return isinstance(path, str) and path == STDIN


def _copy(path: str | Path, name: str, copy: Path) -> None:
    stdin = _is_stdin(path)
    if stdin and sys.stdin is None:
        raise TraceError(name, "standard input is closed")
    try:
        source = sys.stdin.buffer if stdin else _opened(path, name)
    except OSError as exc:
        raise TraceError(name, f"cannot read the stream: {exc.strerror or exc}") from None
    with nullcontext(source) if stdin else source:  # standard input stays open
        if (problem := _refused(source)) is not None:
            raise TraceError(name, problem)
        with open(copy, "wb") as out:
            while True:
                try:
                    chunk = source.read(_COPY_CHUNK)
                except OSError as exc:
                    raise TraceError(name, f"cannot read the stream: {exc.strerror or exc}") from None
                if not chunk:
                    return
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise TraceError(name, f"cannot copy the stream to a temporary file in {copy.parents[2]}: "
                                           f"{exc.strerror or exc}") from None


def _opened(path: str | Path, name: str):
    """The stream opened for reading. A named FIFO's open waits for a writer, for ever if
    none comes (a typo in the writer's command): after a second, a line on stderr says what
    profkit is waiting for, so that it does not look hung."""
    notice = threading.Timer(_WAIT_NOTICE_S, _say, args=(
        f"profkit: {name}: waiting for a process to open this pipe for writing (Ctrl-C to stop)",))
    notice.daemon = True
    notice.start()
    try:
        return open(path, "rb")
    finally:
        notice.cancel()


def _say(line: str) -> None:
    """One line on stderr in one write (print writes the newline apart, and another thread's
    output could come between)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def given_name(path: str | Path, given: dict[str, str]) -> str | None:
    """The name a stream was given, for its copy's path (or a trace path under it:
    `COPY#1` for a process of it); None for a path that is not a copy."""
    text = str(Path(path).resolve()) if path else ""
    for copy, name in given.items():
        if text == copy or text.startswith(copy + "#"):
            return name + text[len(copy):]
    return None
