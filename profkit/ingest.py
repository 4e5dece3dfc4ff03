"""From input paths to traces in a store: find the inputs, pick their parser, run it,
derive what every format gets, and fill in the rank where the input did not say."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from . import derive, schema, split
from .errors import TraceError
from .gc_pause import paused_gc
from .store import Store, TraceWriter
from .streams import given_name, spooled

# Files a directory walk never treats as inputs (profkit's own caches, notes).
_IGNORED_SUFFIXES = (".duckdb", ".duckdb.wal", ".md", ".txt.lock", ".py")
_RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)

ProgressCallback = Callable[[str, int, int], None]

# Raised whenever a parser stores the same input differently (part of the cache key, so a
# store cached by the previous code is parsed again). 2: Nsight reports split by process,
# their sync records' device from the context; no stream is -1 for every format. 3: ROCm
# Kineto activities on a node id stored under the device's ordinal. 4: files of an input
# directory that no parser claims listed in inputs_not_read. 5: Kineto times, ids and
# devices beyond their columns counted ("... in range"), large inputs read by kineto_scan.
# 6: a trace repeating a recording read already (a copy in the same directory) not kept.
# 7: Kineto `[memory]` samples also in counters. 8: the Kineto and rocprofv3 JSON inputs of
# one ingest weighed together for the compiled scan; Kineto args (and issue examples' args)
# without whitespace on every path.
REVISION = 8


def rank_from_filename(path: str | Path) -> int | None:
    """`..._rank3...`, `rank-3`, `rank_3` in a file name -> 3."""
    match = _RANK_IN_NAME.search(Path(path).name)
    return int(match.group(1)) if match else None


class Sink:
    """What a parser writes into: it opens one trace per input unit."""

    def __init__(self, store: Store, progress: ProgressCallback | None = None,
                 inputs: list[tuple[Path, object]] = ()):
        self.store = store
        self.progress = progress
        self.inputs = list(inputs)  # (input, parser module) of the whole ingest
        self.trace_ids: list[int] = []
        self._batch_bytes: dict[object, int | None] = {}  # None: the module reads one input

    @contextmanager
    def trace(self, path: str | Path, format: str, stat_path: str | Path | None = None) -> Iterator[TraceWriter]:
        """Open a trace for `path`; on success it is finished and derived, on error removed.

        No transaction around it: DuckDB keeps a transaction's inserts in local storage
        and copies them into the table at commit, which for an in-memory store costs most
        of the trace's size again at the peak. Each statement commits by itself and a
        failed trace is deleted instead."""
        trace_id = self.store.next_trace_id()
        pieces = [trace_id]
        writer = TraceWriter(self.store, trace_id, str(Path(path).resolve()))
        writer.set_trace(format=format)
        self.store.settle()
        try:
            yield writer
            size, mtime = input_signature(Path(stat_path or path))
            writer.finish(size, mtime)
            if writer.events_written == 0 and not writer.issues:
                raise TraceError(path, "no events in the input")
            # Derived columns are UPDATEs: inside one transaction they stay cheap (outside,
            # each UPDATE versions committed rows) and the update data is small.
            self.store.con.execute("BEGIN TRANSACTION")
            try:
                if writer.split_by_process:
                    pieces = split.by_process(self.store, trace_id)
                for piece in pieces:
                    derive.derive_trace(self.store, piece)
                self.store.con.execute("COMMIT")
            except BaseException:
                self.store.con.execute("ROLLBACK")
                raise
        except BaseException:
            self.store.settle()
            for piece in pieces:
                _remove_trace(self.store, piece, writer.event_base)
            raise
        self.trace_ids.extend(pieces)

    def batch_reaches(self, module, size: Callable[[Path], int], threshold: int) -> bool:
        """Does `module` read several of this ingest's inputs, of `threshold` bytes or more
        in all (each input's by `size`)? A parser weighs a cost paid once a process (loading
        compiled code) against every input it will read; one input alone it weighs by its
        own threshold. The bytes are counted once an ingest."""
        if module not in self._batch_bytes:
            paths = [path for path, reader in self.inputs if reader is module]
            self._batch_bytes[module] = sum(map(size, paths)) if len(paths) > 1 else None
        total = self._batch_bytes[module]
        return total is not None and total >= threshold

    def report(self, path: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(path, done, total)


def _remove_trace(store: Store, trace_id: int, event_base: int) -> None:
    """Delete every row a failed trace wrote (its ids are the newest in the store)."""
    con = store.con
    for table in schema.TABLES:
        columns = {c.name for c in table.columns}
        if "trace_id" in columns:
            con.execute(f"DELETE FROM {table.name} WHERE trace_id = ?", [trace_id])
        elif "event_id" in columns:
            con.execute(f"DELETE FROM {table.name} WHERE event_id >= ?", [event_base])


def _traces_of_input(store: Store, path: Path) -> list[int]:
    """The traces the store holds from the input `path`: named by it, or by it and a suffix
    a parser adds for each of several traces in one input (`#` and a process, `/` and a
    group of a directory's files). Resolved and as given: a symlink's pieces keep its name."""
    names = sorted({str(path.resolve()), str(path.absolute())})
    prefixes = [n + "#" for n in names] + ([n + "/" for n in names] if path.is_dir() else [])
    named = " OR ".join(["path = ?"] * len(names) + ["starts_with(path, ?)"] * len(prefixes))
    return [row[0] for row in store.con.execute(
        f"SELECT trace_id FROM traces WHERE {named} ORDER BY trace_id", [*names, *prefixes]).fetchall()]


def _held_unchanged(store: Store, path: Path) -> bool:
    """Does the store hold traces of `path` read from it as it is now?"""
    earlier = _traces_of_input(store, path)
    return bool(earlier) and not _changed_since(store, earlier, path)


def _changed_since(store: Store, trace_ids: list[int], path: Path) -> bool:
    """Is the input not what the traces were read from (its size or modification time)?"""
    size, mtime = input_signature(path)
    recorded = store.con.execute(
        f"SELECT DISTINCT file_bytes, file_mtime_ns FROM traces WHERE trace_id IN ({','.join(map(str, trace_ids))})"
    ).fetchall()
    return recorded != [(size, mtime)]


def _same_recordings(store: Store, trace_ids: list[int]) -> list[tuple[int, str, str]]:
    """(trace id, path, path of the trace kept) for each of `trace_ids` that repeats a
    recording the store held already or an earlier of them is (a copy of a trace, or its
    .json beside its .json.gz): the same format, number of events, first start and last
    end, then the same events (a hash over their kind, name, times, process, thread,
    device and stream: two ranks, or two processes of one Nsight report, differ there)."""
    if not trace_ids:
        return []
    candidates = store.con.execute(f"""
        SELECT t.trace_id, t.path, k.trace_id, k.path FROM traces t
        JOIN traces k ON k.trace_id < t.trace_id AND k.format = t.format AND k.event_count = t.event_count
                     AND k.start_ns = t.start_ns AND k.end_ns = t.end_ns
        WHERE t.trace_id IN ({','.join(map(str, trace_ids))}) AND t.event_count > 0
        ORDER BY t.trace_id, k.trace_id""").fetchall()
    prints: dict[int, int] = {}

    def fingerprint(trace_id: int) -> int:
        if trace_id not in prints:
            prints[trace_id] = store.scalar(
                "SELECT bit_xor(hash(kind, name, start_ns, dur_ns, pid, tid, device, stream)) FROM events "
                "WHERE trace_id = ?", [trace_id])
        return prints[trace_id]

    same, dropped = [], set()
    for trace_id, path, kept_id, kept in candidates:
        if trace_id in dropped or kept_id in dropped:
            continue  # matched already, or the candidate is itself a repeat (the first copy is kept)
        if fingerprint(trace_id) == fingerprint(kept_id):
            same.append((trace_id, path, kept))
            dropped.add(trace_id)
    return same


def _remove_traces(store: Store, trace_ids: list[int]) -> None:
    """Delete every row of whole traces (unlike `_remove_trace`'s, their event ids need not
    be the newest: rows keyed by event only are found through the events)."""
    if not trace_ids:
        return
    con = store.con
    ids = ",".join(map(str, trace_ids))
    for table in schema.TABLES:
        columns = {c.name for c in table.columns}
        if "trace_id" not in columns and "event_id" in columns:
            con.execute(f"DELETE FROM {table.name} WHERE event_id IN "
                        f"(SELECT event_id FROM events WHERE trace_id IN ({ids}))")
    for table in schema.TABLES:
        if "trace_id" in {c.name for c in table.columns}:
            con.execute(f"DELETE FROM {table.name} WHERE trace_id IN ({ids})")


def input_signature(path: Path) -> tuple[int, int]:
    """(bytes, newest mtime in ns) of a file, or summed over a directory's files."""
    if path.is_file():
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, 0
    for file in _files_under(path):
        st = file.stat()
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.endswith(_IGNORED_SUFFIXES)


def _files_under(directory: Path) -> list[Path]:
    """The files under `directory`, at any depth, less those ignored by name, in natural
    order (rank2 before rank10: the traces are numbered, and ranks missing from the inputs
    given, in that order)."""
    return sorted((p for p in directory.rglob("*") if p.is_file() and not _ignored(p)), key=natural_order)


def natural_order(path: Path) -> list:
    """Sort key of a path with its runs of digits compared as numbers."""
    parts = re.split(r"(\d+)", str(path))
    return [int(part) if i % 2 else part for i, part in enumerate(parts)]


def find_inputs(path: Path, not_read: list[tuple[str, str]] | None = None) -> list[tuple[Path, object]]:
    """The (input, parser module) pairs under `path`; files of a directory that no parser
    claims are added to `not_read` as (path, reason)."""
    from profkit import parsers

    if not path.exists():
        raise TraceError(path, "no such file or directory")
    if path.is_file():
        if path.stat().st_size == 0:
            raise TraceError(path, "empty file")
        module = parsers.detect(path)
        if module is None:
            raise TraceError(path, parsers.unreadable(path) or "not a trace profkit can read (expected PyTorch "
                             "profiler JSON, an Nsight Systems SQLite export, or rocprof output)")
        return [(path, module)]
    module = parsers.detect(path)
    if module is not None:
        if not_read is not None:
            not_read.extend(_others_inside(module, _files_under(path)))
        return [(path, module)]
    found: list[tuple[Path, object]] = []
    files = _files_under(path)
    claimed_dirs: set[Path] = set()
    leftovers = []
    for sub in sorted({p.parent for p in files} - {path}, key=natural_order):
        if (claimer := parsers.detect(sub)) is not None:
            claimed_dirs.add(sub)
            found.append((sub, claimer))
            leftovers += _others_inside(claimer, [f for f in files if sub in f.parents])
    for file in files:
        if any(d in file.parents for d in claimed_dirs):
            continue
        if file.stat().st_size == 0:
            leftovers.append((str(file.resolve()), "empty file"))
            continue
        module = parsers.detect(file)
        covered = getattr(module, "covered_by", None) and module.covered_by(file)
        if covered:
            leftovers.append((str(file.resolve()), f"the same run as {covered.name}, which is read"))
        elif module is not None:
            found.append((file, module))
        elif problem := parsers.unreadable(file):
            # Most likely one rank's trace, cut short: analysing the others alone would
            # be a silent partial result.
            raise TraceError(file, problem)
        else:
            leftovers.append((str(file.resolve()), "not a trace profkit reads"))
    if not found:
        raise TraceError(path, f"no traces found in this directory ({len(files)} files looked at)")
    if not_read is not None:
        not_read.extend(leftovers)
    return found


def _others_inside(module, files: list[Path]) -> list[tuple[str, str]]:
    """Traces of another format among the `files` of a directory that `module` reads as a
    whole (a rocpd database among rocprofv3 CSV files): not read with it, so named, with
    what to do."""
    from profkit import parsers

    out = []
    for file in files:
        other = parsers.detect(file) if file.stat().st_size else None
        if other is not None and other is not module:
            out.append((str(file.resolve()), f"a {other.FORMAT} trace inside a {module.FORMAT} directory, "
                                             "not read with it: pass it on its own"))
    return out


def ingest(paths: list[str | Path], store: Store, progress: ProgressCallback | None = None,
           held: list[tuple[str, bool]] | None = None) -> list[int]:
    """Parse every input under `paths` into `store`; returns the new trace ids. All or
    nothing: where one input fails, the traces the others added are removed again.

    An input the store already holds is not added twice (a rank counted twice would be a
    wrong answer, not a slow one): unchanged since it was read (size and modification time),
    it is not read again; changed, its traces are replaced. Each such input is appended to
    `held` as (path, changed). A stream (`-` for standard input, a pipe) is read from a
    copy (profkit.streams), every time. A trace repeating a recording the store holds (a
    copy of a file, under another name or from a stream) is not kept: `inputs_not_read`
    names it."""
    with spooled(list(paths)) as (readable, given):
        try:
            return _ingest(readable, store, progress, held, given)
        except TraceError as exc:
            name = given_name(exc.path, given)
            if name is None:
                raise
            raise TraceError(name, exc.problem) from None


def _ingest(paths: list[Path], store: Store, progress: ProgressCallback | None,
            held: list[tuple[str, bool]] | None, streams: dict[str, str]) -> list[int]:
    """`ingest` of `paths`, where streams are read from copies: `streams` maps each copy to
    the name the stream was given, which its traces take."""
    not_read: list[tuple[str, str]] = []
    inputs = [pair for p in paths for pair in find_inputs(p, not_read)]
    # What a parser weighs its fixed costs against: the inputs it will read, each once.
    sink = Sink(store, progress, [(path, module) for path, module in dict.fromkeys(inputs)
                                  if not _held_unchanged(store, path)])
    stale: list[int] = []  # traces of changed inputs, removed once their new reads succeeded
    try:
        with paused_gc():
            for input_path, module in inputs:
                earlier = _traces_of_input(store, input_path)
                if earlier:
                    changed = _changed_since(store, earlier, input_path)
                    if held is not None:
                        held.append((str(input_path), changed))
                    if not changed:
                        continue
                    stale += earlier
                _parse(module, input_path, sink)
            _remove_traces(store, stale)
            from_streams = _name_streams(store, sink.trace_ids, streams)
            for trace_id, path, kept in _same_recordings(store, sink.trace_ids):
                # Two copies of one rank's trace in a directory would count it twice.
                _remove_traces(store, [trace_id])
                sink.trace_ids.remove(trace_id)
                not_read.append((path, f"the same recording as {Path(kept).name} (same events), read once"))
            _fill_missing_ranks(store, sink.trace_ids)
            _note_not_read(store, [t for t in sink.trace_ids if t not in from_streams], not_read)
    except BaseException:
        store.settle()
        _remove_traces(store, sink.trace_ids)
        raise
    return sink.trace_ids


def _name_streams(store: Store, trace_ids: list[int], streams: dict[str, str]) -> set[int]:
    """Traces read from a stream's copy take the name the stream was given; their ids."""
    if not streams or not trace_ids:
        return set()
    renamed = set()
    for trace_id, path in store.con.execute(
            f"SELECT trace_id, path FROM traces WHERE trace_id IN ({','.join(map(str, trace_ids))})").fetchall():
        if (name := given_name(path, streams)) is not None:
            store.con.execute("UPDATE traces SET path = ? WHERE trace_id = ?", [name, trace_id])
            renamed.add(trace_id)
    return renamed


def _note_not_read(store: Store, file_traces: list[int], not_read: list[tuple[str, str]]) -> None:
    """inputs_not_read: what this ingest did not read, once each (a directory read into the
    same store again), and no longer a file it read now (`file_traces`: a copy left out
    before, read since its original changed; not a stream's traces, whose name another
    stream may have had)."""
    if file_traces:
        store.con.execute(f"DELETE FROM inputs_not_read WHERE path IN (SELECT path FROM traces WHERE trace_id IN "
                          f"({','.join(map(str, file_traces))}))")
    if not_read:
        known = set(store.con.execute("SELECT path, reason FROM inputs_not_read").fetchall())
        new_rows = [row for row in dict.fromkeys(not_read) if row not in known]
        if new_rows:
            store.con.executemany("INSERT INTO inputs_not_read VALUES (?, ?)", new_rows)


def _parse(module, path: Path, sink: Sink) -> None:
    try:
        module.parse(path, sink)
    except (duckdb.DataError, OverflowError) as exc:
        # A value no column of the store can hold (an integer beyond its type, or beyond
        # 64 bits as Arrow takes it in): the input's, whichever parser met it; its trace
        # was removed on the way out.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OverflowError):
            first = f"an integer beyond 64 bits: {first}"
        raise TraceError(path, f"a value profkit cannot store ({first})") from None


def _fill_missing_ranks(store: Store, trace_ids: list[int]) -> None:
    """Rank from the input, else from the file name, else by order among the inputs."""
    if not trace_ids:
        return
    rows = store.con.execute(
        f"SELECT trace_id, path, rank FROM traces WHERE trace_id IN ({','.join(map(str, trace_ids))}) ORDER BY trace_id"
    ).fetchall()
    taken = {rank for _, _, rank in rows if rank is not None}
    for trace_id, path, rank in rows:
        if rank is not None:
            continue
        from_name = rank_from_filename(path)
        if from_name is not None and from_name not in taken:
            rank, source = from_name, "filename"
        else:
            rank = 0
            while rank in taken:
                rank += 1
            source = "order"
        taken.add(rank)
        store.con.execute("UPDATE traces SET rank = ?, rank_source = ? WHERE trace_id = ?",
                          [rank, source, trace_id])
