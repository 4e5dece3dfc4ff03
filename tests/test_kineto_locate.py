"""Large Kineto inputs locate their events array without checking the whole document
first (kineto_read.Document, check_all=False): the stores must be those of the checked
parse, on real traces of every shape of tail, and odd or broken documents must fall back
to the checked parse, with its results and its error messages."""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from profkit.errors import TraceError
from profkit.ingest import ingest
from profkit.parsers import kineto, kineto_read
from profkit.store import Store

from conftest import shared_trace
from helpers import table_digests

# Tails after the events array in the shared traces: none (`] }`), traceName only, a list
# of log lines whose text holds `]`, and several keys with a hex id.
REAL = ["cuda/regression_pair/control_a100_rank3_of8.json.gz", "cuda/v100_nccl_rank1_of2.json.gz",
        "cuda/a100_event_sync.json.gz", "cuda/h100_qwen1.5_0.5b_chat.json.gz", "mtia/mtia_inference_rank0.json.gz",
        "rocm/mi300x_sglang_qwen3_8b_decode.json.gz"]


def _locating(monkeypatch, locate: bool) -> None:
    """Every input (locate) or none (the whole-document check) takes the located path."""
    monkeypatch.setattr(kineto_read, "LOCATE_MIN_BYTES", 0 if locate else 1 << 62)


def _store(path: Path, locate: bool, monkeypatch) -> Store:
    _locating(monkeypatch, locate)
    store = Store.open(None)
    ingest([path], store)
    return store


def _error(path: Path, locate: bool, monkeypatch) -> str:
    _locating(monkeypatch, locate)
    with pytest.raises(TraceError) as info:
        ingest([path], Store.open(None))
    return info.value.problem


def _located(path: Path, monkeypatch) -> bool:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    _locating(monkeypatch, True)
    return not kineto_read.Document(path, data, check_all=False).checked


def _same_either_way(path: Path, monkeypatch) -> Store:
    located = _store(path, True, monkeypatch)
    assert table_digests(located) == table_digests(_store(path, False, monkeypatch))
    return located


@pytest.mark.parametrize("relative", REAL)
def test_real_traces_are_located_and_store_the_same(relative, monkeypatch):
    path = shared_trace("kineto/" + relative)
    assert _located(path, monkeypatch)
    _same_either_way(path, monkeypatch)


def event(i: int, **extra) -> dict:
    return {"ph": "X", "cat": "kernel", "name": f"k{i}", "pid": 0, "tid": 7, "ts": 10 * i, "dur": 5,
            "args": {"device": 0, "stream": 7, "correlation": i, **extra}}


def _write(tmp_path: Path, text: str, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_array_of_objects_after_the_events_falls_back_to_the_checked_parse(tmp_path, monkeypatch):
    # The last `]` closes "extra", not traceEvents: located so, the last piece has trailing
    # characters, and the parse starts again with the whole-document check.
    doc = {"schemaVersion": 1, "traceEvents": [event(i) for i in range(50)],
           "extra": [{"a": 1}, {"b": [2]}], "traceName": "x"}
    path = _write(tmp_path, json.dumps(doc))
    attempts = []
    parse = kineto._parse
    monkeypatch.setattr(kineto, "_parse", lambda *a, **k: attempts.append(k["check_all"]) or parse(*a, **k))
    store = _same_either_way(path, monkeypatch)
    assert attempts[:2] == [False, True]  # located (wrongly), then checked
    assert store.scalar("SELECT count(*) FROM events WHERE kind = 'kernel'") == 50


def test_a_nested_traceevents_key_before_the_real_one(tmp_path, monkeypatch):
    doc = {"meta": {"traceEvents": [{"ph": "X"}]}, "traceEvents": [event(i) for i in range(5)]}
    path = _write(tmp_path, json.dumps(doc))
    assert not _located(path, monkeypatch)  # the emptied document does not hold together: full check
    assert _same_either_way(path, monkeypatch).scalar("SELECT count(*) FROM events") == 5


def test_strings_that_look_like_boundaries_and_control_characters(tmp_path, monkeypatch):
    events = [event(i, note="},{\"x\": [1]}],") for i in range(30)]
    text = json.dumps({"traceEvents": events, "traceName": "a ] b"})
    _same_either_way(_write(tmp_path, text), monkeypatch)
    # A raw control character in a string: msgspec refuses it, the stdlib reads it.
    raw = text.replace("k7", "k\x017", 1)
    store = _same_either_way(_write(tmp_path, raw, "ctl.json"), monkeypatch)
    assert store.scalar("SELECT count(*) FROM events WHERE name = 'k\x017'") == 1


@pytest.mark.parametrize("broken", [
    lambda t: t.replace('"dur": 5', '"dur" 5', 1),          # malformed inside the events
    lambda t: t[:60],                                        # truncated before a whole record
    lambda t: t.replace('"traceName"', '"traceName" "', 1),  # malformed after the events
])
def test_broken_documents_give_the_checked_parse_error(tmp_path, monkeypatch, broken):
    text = json.dumps({"traceEvents": [event(i) for i in range(40)], "traceName": "x"})
    path = _write(tmp_path, broken(text))
    located = _error(path, True, monkeypatch)
    assert located == _error(path, False, monkeypatch)
    assert str(len(path.read_bytes())) in located or "malformed JSON" in located


def test_small_inputs_keep_the_whole_document_check(tmp_path):
    path = _write(tmp_path, json.dumps({"traceEvents": [event(1)]}))
    assert kineto_read.LOCATE_MIN_BYTES > path.stat().st_size
    assert kineto_read.Document(path, path.read_bytes(), check_all=False).checked
    assert kineto.detect(path)


def test_an_end_far_from_the_end_of_the_file_keeps_the_whole_document_check(tmp_path, monkeypatch):
    # Each try copies what follows the candidate `]`: only the file's last bytes are tried.
    monkeypatch.setattr(kineto_read, "_LOCATE_TAIL_WITHIN", 100)
    path = _write(tmp_path, json.dumps({"traceEvents": [event(i) for i in range(5)], "traceName": "x" * 500}))
    assert not _located(path, monkeypatch)
    _same_either_way(path, monkeypatch)


BAD_BYTE = b"\xff"


@pytest.mark.parametrize("control_character", [False, True])
def test_invalid_utf8_is_named_at_its_offset_either_way(tmp_path, monkeypatch, control_character):
    # msgspec passes over the events array's strings without checking their UTF-8 (a
    # msgspec.Raw), so the bad byte is first met by a piece; with a raw control character
    # too, the stdlib's decoder meets it.
    text = json.dumps({"traceEvents": [event(i) for i in range(40)], "traceName": "x"}).encode()
    bad = text.replace(b'"k7"', b'"k\xff7"' if not control_character else b'"k\x01\xff7"', 1)
    path = tmp_path / "t.json"
    path.write_bytes(bad)
    expected = f"not UTF-8 text: invalid byte 0xff at offset {bad.index(BAD_BYTE)}"
    assert _error(path, True, monkeypatch) == expected
    assert _error(path, False, monkeypatch) == expected


def test_a_piece_that_is_bad_for_another_reason_than_its_cut_is_not_extended(tmp_path):
    # A piece is extended to the next record boundary only when it was cut inside a
    # string or an object (msgspec: truncated). Extending it past invalid UTF-8 decoded
    # ever longer pieces to the end of the array: quadratic, hours on a 50 MB trace.
    text = json.dumps({"traceEvents": [event(i) for i in range(3000)]}).encode()
    data = text.replace(b'"k70"', b'"k\xff70"', 1)
    doc = kineto_read.Document(tmp_path / "t.json", data, check_all=True)
    assert doc.checked  # the whole-document check does not look inside the strings
    decoded = []

    def counting(piece):
        decoded.append(len(piece))
        return kineto_read.decode_piece(piece)

    with pytest.raises(TraceError, match=f"invalid byte 0xff at offset {data.index(BAD_BYTE)}"):
        for _ in doc.chunks(counting, piece_bytes=1024):
            pass
    assert len(decoded) <= data.index(BAD_BYTE) // 1024 + 2


@pytest.mark.parametrize("control_character", [False, True])
def test_a_document_cut_short_is_read_up_to_its_last_whole_record(tmp_path, monkeypatch, control_character):
    # A trace written by a process that crashed or ran out of disk ends inside its events
    # array: its whole records are read, the same either way, and the loss is counted as
    # an unusable record (every report warns of it). With a raw control character the
    # stdlib's decoder meets the cut.
    events = [event(i, note="k\x01" if control_character and i == 3 else "x") for i in range(40)]
    text = json.dumps({"traceEvents": events, "traceName": "x"})
    cut_inside_record_30 = text.index('"k30"') + 3
    path = _write(tmp_path, text[:cut_inside_record_30])
    store = _same_either_way(path, monkeypatch)
    assert store.scalar("SELECT count(*) FROM events") == 30
    lost = len(text[:cut_inside_record_30]) - (text.index('{"ph"', text.index('"k29"')) - 2)
    assert store.rows("SELECT reason, count, unusable FROM ingest_issues WHERE unusable") == [{
        "reason": f"input cut short inside traceEvents: its last {lost:,} of {cut_inside_record_30:,} bytes, "
                  "after the last whole record, are lost", "count": 1, "unusable": True}]
    assert store.scalar("SELECT source_records FROM traces") == 31


def test_a_gzip_cut_short_gives_what_it_holds(tmp_path):
    text = json.dumps({"traceEvents": [event(i, note="x" * 200) for i in range(4000)]}).encode()
    packed = gzip.compress(text)
    path = tmp_path / "t.json.gz"
    path.write_bytes(packed[:len(packed) * 3 // 4])
    store = Store.open(None)
    ingest([path], store)
    reason = store.scalar("SELECT reason FROM ingest_issues WHERE unusable")
    assert reason.startswith("input cut short inside traceEvents (and its gzip stream ends early): its last ")
    # Every whole record the cut stream holds (each ends `"}}`), read independently.
    held = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(packed[:len(packed) * 3 // 4])
    assert 2000 < held.count(b'"}}') < 4000
    assert store.scalar("SELECT count(*) FROM events") == held.count(b'"}}')
