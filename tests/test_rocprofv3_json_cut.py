"""A rocprofv3 JSON cut short (the tool stopped while writing it, a full disk, a copy
interrupted) is read up to its last whole record, and every report says what was lost;
one cut before any record is a one-line error. Checked on the real MI350X file, the
records a cut keeps counted independently with the standard library's decoder."""
from __future__ import annotations

import gzip
import json
import zlib

import pytest

from conftest import shared_trace
from profkit.errors import TraceError
from profkit.ingest import ingest
from profkit.store import Store

SOURCE = "rocprof/v3_json_mi350x/908_results.json.gz"
DISPATCH_COLUMNS = "name, start_ns, end_ns, device, correlation"


@pytest.fixture(scope="module")
def text() -> bytes:
    return gzip.decompress(shared_trace(SOURCE).read_bytes())


@pytest.fixture(scope="module")
def full() -> Store:
    store = Store.open(None)
    ingest([str(shared_trace(SOURCE))], store)
    return store


def _record_ends(text: bytes) -> tuple[int, list[int]]:
    """(where the kernel_dispatch list begins, the end offset of each of its records),
    by the stdlib decoder walking the list record by record (the file is ASCII: offsets
    in characters are offsets in bytes)."""
    chars = text.decode("ascii")
    start = chars.rindex('"kernel_dispatch":[') + len('"kernel_dispatch":[')
    decoder, ends, at = json.JSONDecoder(), [], start
    while chars[at] != "]":
        _record, end = decoder.raw_decode(chars, at)
        ends.append(end)
        at = end + 1 if chars[end] == "," else end
    return start, ends


def _ingested(path) -> Store:
    store = Store.open(None)
    ingest([str(path)], store)
    return store


def _dispatches(store: Store, limit: int | None = None) -> list[tuple]:
    return store.con.execute(f"SELECT {DISPATCH_COLUMNS} FROM events WHERE kind = 'kernel' ORDER BY event_id"
                             + (f" LIMIT {limit}" if limit is not None else "")).fetchall()


def _cut_issue(store: Store) -> dict:
    (issue,) = store.rows("SELECT reason, count, unusable FROM ingest_issues WHERE reason LIKE 'input cut short%'")
    return issue


@pytest.mark.parametrize("where", ["inside a record", "right after a record", "between two records"])
def test_cut_inside_the_dispatches_keeps_every_whole_record(tmp_path, text, full, where):
    start, ends = _record_ends(text)
    assert len(ends) == full.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") == 43_915
    k = len(ends) // 3
    cut_at = {"inside a record": ends[k] - 40, "right after a record": ends[k], "between two records": ends[k] + 1}[where]
    kept = sum(1 for end in ends if end <= cut_at)
    path = tmp_path / "908_results.json"
    path.write_bytes(text[:cut_at])
    store = _ingested(path)
    assert _dispatches(store) == _dispatches(full, kept)
    issue = _cut_issue(store)
    assert issue["count"] == 1 and issue["unusable"]
    lost = cut_at - ends[kept - 1]
    assert issue["reason"] == (f"input cut short inside buffer_records.kernel_dispatch: its last {lost:,} of "
                               f"{cut_at:,} bytes, after the last whole record, are lost")
    # Nothing after the cut is guessed: the later lists (HIP calls and the rest) are gone.
    assert store.scalar("SELECT count(*) FROM events WHERE kind <> 'kernel'") == 0


def test_cut_after_the_lists_keeps_every_record_and_is_a_note(tmp_path, text, full):
    path = tmp_path / "908_results.json"
    assert text.endswith(b"[]}}]}")
    path.write_bytes(text[:-3])  # the closing `}]}` of the process, its list, the document
    store = _ingested(path)
    assert store.scalar("SELECT count(*) FROM events") == full.scalar("SELECT count(*) FROM events")
    # Closed after the last list: the `}` of buffer_records is counted as what follows.
    assert _cut_issue(store) == {"reason": "input cut short after buffer_records: its last 1 of "
                                           f"{len(text) - 3:,} bytes (what follows buffer_records) are lost",
                                 "count": 0, "unusable": False}


def test_cut_inside_a_later_list_key_says_records_may_be_lost(tmp_path, text, full):
    cut_at = text.rindex(b'"memory_copy"') + 5
    path = tmp_path / "908_results.json"
    path.write_bytes(text[:cut_at])
    store = _ingested(path)
    # The dispatches and the lists before memory_copy are whole; memory_copy's own records,
    # had there been any, are lost, so the cut is unusable input, not a note.
    assert _dispatches(store) == _dispatches(full)
    issue = _cut_issue(store)
    assert issue["unusable"] and issue["reason"].startswith("input cut short inside buffer_records: ")


def test_cut_before_any_record_is_a_one_line_error(tmp_path, text):
    path = tmp_path / "908_results.json"
    path.write_bytes(text[:text.rindex(b'"buffer_records":{') + 10])
    with pytest.raises(TraceError, match="truncated JSON \\(input ends after .* bytes, before the records"):
        _ingested(path)
    start, ends = _record_ends(text)
    path.write_bytes(text[:ends[0] - 10])  # inside the first dispatch
    with pytest.raises(TraceError, match="before its first whole record"):
        _ingested(path)


def test_a_gzip_cut_short_gives_the_whole_records_it_holds(tmp_path, text, full):
    packed = shared_trace(SOURCE).read_bytes()
    path = tmp_path / "908_results.json.gz"
    path.write_bytes(packed[:len(packed) * 4 // 5])
    held = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(packed[:len(packed) * 4 // 5])
    assert text.startswith(held)
    _start, ends = _record_ends(text)
    kept = sum(1 for end in ends if end <= len(held))
    store = _ingested(path)
    assert 0 < kept < len(ends)
    assert _dispatches(store) == _dispatches(full, kept)
    assert _cut_issue(store)["reason"].startswith(
        "input cut short inside buffer_records.kernel_dispatch (and its gzip stream ends early): its last ")


def test_a_cut_left_zero_filled_is_read_as_the_cut(tmp_path, text, full):
    """A crash can leave the file at its full size, the unwritten part zero-filled."""
    _start, ends = _record_ends(text)
    cut_at = ends[len(ends) // 2] - 7
    plain, filled = tmp_path / "plain_results.json", tmp_path / "filled_results.json"
    plain.write_bytes(text[:cut_at])
    filled.write_bytes(text[:cut_at] + bytes(len(text) - cut_at))
    cut, zero_filled = _ingested(plain), _ingested(filled)
    assert _dispatches(zero_filled) == _dispatches(cut) == _dispatches(full, len(ends) // 2)
    assert _cut_issue(zero_filled) == _cut_issue(cut)
    assert zero_filled.scalar("SELECT reason FROM ingest_issues WHERE reason LIKE '%NUL bytes%'").startswith(
        f"{len(text) - cut_at:,} NUL bytes after the text left out")
