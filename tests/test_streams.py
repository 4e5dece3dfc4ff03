"""Traces given as streams: standard input (`-`), a pipe (`/dev/stdin`, `<(zcat ...)`, a
named FIFO). Read from a temporary copy, they give what the file gives, under the name
given; nothing is cached or left behind; an empty or unreadable stream is a one-line
error naming it."""
from __future__ import annotations

import gzip
import json
import os
import select
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import shared_trace
from profkit.ingest import ingest
from profkit.store import Store

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))
TRACE = "kineto/cuda/h100_bert_small.json.gz"


def run(*args, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROFKIT, *map(str, args)], input=stdin, capture_output=True, env=env)


def _findings(output: bytes) -> list:
    return [(f["rule"], f["impact_ns"], f["scope"]) for f in json.loads(output)["findings"]]


@pytest.fixture()
def env(tmp_path):
    """A cache directory of the test's own, to see that nothing is cached."""
    cache = tmp_path / "cache"
    return {**os.environ, "PROFKIT_CACHE_DIR": str(cache)}, cache


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_a_trace_on_standard_input_is_analysed_as_the_file_is(name, tmp_path, env):
    env, cache = env
    trace = shared_trace(TRACE)
    piped = run("--no-cache", "analyze", name, "--format", "json", stdin=trace.read_bytes(), env=env)
    assert piped.returncode == 0, piped.stderr
    direct = run("--no-cache", "analyze", trace, "--format", "json", env=env)
    assert _findings(piped.stdout) == _findings(direct.stdout)
    paths = [t["path"] for t in json.loads(piped.stdout)["traces"]]
    assert paths == ["<stdin>" if name == "-" else name]
    cached = run("analyze", name, "--format", "json", stdin=trace.read_bytes(), env=env)  # the cache is on
    assert cached.returncode == 0 and not cache.exists()


def test_a_named_pipe_keeps_its_name_and_leaves_nothing_behind(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    fifo = tmp_path / "job_rank3.json"
    os.mkfifo(fifo)
    text = gzip.decompress(shared_trace(TRACE).read_bytes())
    writer = threading.Thread(target=fifo.write_bytes, args=(text,))
    writer.start()
    store = Store.open(None)
    try:
        ingest([fifo], store)
    finally:
        writer.join()
    assert store.rows("SELECT path, rank, rank_source FROM traces") == [
        {"path": str(fifo), "rank": 3, "rank_source": "filename"}]
    assert store.scalar("SELECT count(*) FROM kernels") > 0
    assert list(temp.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["job_rank3.json", "temp"]


def test_standard_input_is_read_every_time_and_a_repeated_recording_kept_once(tmp_path):
    out = tmp_path / "run.duckdb"
    outputs = []
    for name in ("kineto/cuda/h100_bert_small.json.gz", "kineto/cuda/h100_bert_small.json.gz",
                 "kineto/cuda/a100_event_sync.json.gz"):
        result = run("ingest", "-", "-o", out, stdin=shared_trace(name).read_bytes())
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.decode())
    assert "1 trace(s) added" in outputs[0] and "0 trace(s) added" in outputs[1] and "1 trace(s) added" in outputs[2]
    with Store.open(out, read_only=True) as store:
        assert store.scalar("SELECT count(*) FROM traces WHERE path = '<stdin>'") == 2
        assert store.rows("SELECT path, reason FROM inputs_not_read") == [
            {"path": "<stdin>", "reason": "the same recording as <stdin> (same events), read once"}]


@pytest.mark.parametrize("stdin, problem", [
    (b"", "<stdin>: empty file"),
    (b'{"x": 1}\n', "<stdin>: not a trace profkit can read"),
    (b"\x1f\x8b\x08\x00garbage", "<stdin>: "),
])
def test_an_empty_or_unusable_stream_is_a_one_line_error_naming_it(stdin, problem):
    result = run("analyze", "-", stdin=stdin)
    assert result.returncode == 2
    message = result.stderr.decode().strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"profkit: error: {problem}"), message
    assert "profkit-stream-" not in message  # never the name of the copy


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_device_is_refused_not_copied_for_ever():
    for args, stdin in ((["/dev/zero"], None), (["-"], "/dev/zero")):
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source:
            result = subprocess.run([PROFKIT, "analyze", *args], stdin=source, capture_output=True, timeout=60)
        assert result.returncode == 2
        assert result.stderr.decode().strip().endswith("is a device, not a trace or a pipe")


def test_closed_standard_input_is_a_one_line_error():
    result = subprocess.run([PROFKIT, "analyze", "-"], stdin=subprocess.DEVNULL, capture_output=True,
                            preexec_fn=lambda: os.close(0))
    assert result.returncode == 2
    assert result.stderr.decode().strip() == "profkit: error: <stdin>: standard input is closed"


def test_standard_input_named_twice_is_refused(tmp_path):
    out = tmp_path / "twice.duckdb"
    result = run("ingest", "-", "-", "-o", out, stdin=shared_trace(TRACE).read_bytes())
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.decode().strip() == "profkit: error: <stdin>: given twice: a stream can be read once"
    store = Store.open(None)
    with pytest.raises(Exception, match="<stdin>: given twice: a stream can be read once"):
        ingest(["-", "-"], store)


def test_a_copy_read_beside_a_stream_names_the_stream(tmp_path):
    trace = shared_trace(TRACE)
    out = tmp_path / "run.duckdb"
    result = run("ingest", "-", trace, "-o", out, stdin=trace.read_bytes())
    assert result.returncode == 0, result.stderr
    with Store.open(out, read_only=True) as store:
        assert store.rows("SELECT path FROM traces") == [{"path": "<stdin>"}]
        assert store.rows("SELECT path, reason FROM inputs_not_read") == [
            {"path": str(trace.resolve()), "reason": "the same recording as <stdin> (same events), read once"}]


def test_a_named_file_called_dash_is_a_file_not_standard_input(tmp_path):
    shutil.copy(shared_trace(TRACE), tmp_path / "-")
    result = subprocess.run([PROFKIT, "--no-cache", "analyze", "./-", "--format", "json"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["traces"][0]["path"] == str((tmp_path / "-").resolve())


def test_diff_of_a_pipe_reads_it_once(tmp_path):
    fifo = tmp_path / "base.json"
    os.mkfifo(fifo)
    text = gzip.decompress(shared_trace(TRACE).read_bytes())
    writer = threading.Thread(target=fifo.write_bytes, args=(text,))
    writer.start()
    try:
        result = subprocess.run([PROFKIT, "--no-cache", "diff", str(fifo), str(shared_trace(TRACE)), "--format",
                                 "json"], capture_output=True, timeout=120)
    finally:
        writer.join(timeout=5)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)


def test_a_full_disk_while_copying_is_named_as_such():
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    result = subprocess.run([PROFKIT, "analyze", "-"], input=gzip.decompress(shared_trace(TRACE).read_bytes()),
                            capture_output=True, preexec_fn=small_files)
    assert result.returncode == 2
    message = result.stderr.decode().strip()
    assert message.startswith("profkit: error: <stdin>: cannot copy the stream to a temporary file in "), message


def test_a_named_pipe_without_a_writer_says_what_it_waits_for(tmp_path):
    fifo = tmp_path / "rank0.json"
    os.mkfifo(fifo)
    process = subprocess.Popen([PROFKIT, "--no-cache", "analyze", str(fifo), "--format", "json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([process.stderr], [], [], 60)  # the notice, or a failure rather than a hang
        assert ready, "no notice within 60 s"
        line = process.stderr.readline().decode().strip()
        assert line == f"profkit: {fifo}: waiting for a process to open this pipe for writing (Ctrl-C to stop)"
        fifo.write_bytes(gzip.decompress(shared_trace(TRACE).read_bytes()))
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert json.loads(out)["traces"][0]["path"] == str(fifo)


def test_a_named_pipe_with_a_writer_prints_nothing_more(tmp_path):
    fifo = tmp_path / "rank0.json"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(gzip.decompress(shared_trace(TRACE).read_bytes()),))
    writer.start()
    try:
        result = subprocess.run([PROFKIT, "--no-cache", "analyze", str(fifo), "--format", "json"],
                                capture_output=True, timeout=120)
    finally:
        writer.join(timeout=120)
    assert result.returncode == 0 and result.stderr == b""
