"""The command line: version, schema, sql output formats, one-line errors."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from profkit import __version__, schema
from profkit.cli import cli
from profkit.ingest import Sink
from profkit.store import Store

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))


def run(*args):
    """The installed `profkit` script, as a user runs it."""
    return subprocess.run([PROFKIT, *map(str, args)], capture_output=True, text=True)


@pytest.fixture()
def db(tmp_path):
    source = tmp_path / "input.json"
    source.write_text("{}")
    path = tmp_path / "run.duckdb"
    store = Store.open(path)
    with Sink(store).trace(source, "test") as w:
        w.add_events({"event_id": [0, 1], "kind": ["runtime", "kernel"], "name": ["cudaLaunchKernel", "k|1"],
                      "start_ns": [0, 5], "dur_ns": [3, 10], "pid": [1, None], "tid": [1, None],
                      "device": [None, 0], "stream": [None, 7], "correlation": [9, 9]})
    store.close()
    return path


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_schema_prints_the_generated_markdown():
    result = CliRunner().invoke(cli, ["schema", "--markdown"])
    assert result.exit_code == 0
    assert result.output == schema.markdown() + "\n"


def test_sql_json_is_an_array_of_row_objects(db):
    result = CliRunner().invoke(cli, ["sql", str(db), "SELECT kind, dur_ns FROM events ORDER BY event_id", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"kind": "runtime", "dur_ns": 3}, {"kind": "kernel", "dur_ns": 10}]


@pytest.mark.parametrize("query", ["", " ; ", "/* only a comment */"])
def test_sql_without_a_statement_is_a_one_line_error(db, query):
    # Was an internal error (DuckDB's execute() returns None for no statement).
    proc = run("sql", db, query)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "profkit: error: QUERY holds no SQL statement (see `profkit schema` for the tables)\n"


def test_sql_csv_and_table(db):
    result = CliRunner().invoke(cli, ["sql", str(db), "SELECT name FROM kernels", "--format", "csv"])
    assert result.output == "name\nk|1\n"
    result = CliRunner().invoke(cli, ["sql", str(db), "SELECT launch_to_start_ns FROM launches"])
    assert "5" in result.output and "1 row(s)" in result.output


def test_sql_table_shows_the_first_rows_and_says_how_many(db):
    from profkit.render import TABLE_MAX_ROWS

    query = f"SELECT range AS n FROM range({TABLE_MAX_ROWS + 50})"
    table = CliRunner().invoke(cli, ["sql", str(db), query]).output
    assert f"{TABLE_MAX_ROWS + 50:,} rows, the first {TABLE_MAX_ROWS} shown" in table
    assert f"│ {TABLE_MAX_ROWS - 1} " in table and f"│ {TABLE_MAX_ROWS} " not in table
    csv_out = CliRunner().invoke(cli, ["sql", str(db), query, "--format", "csv"]).output
    assert len(csv_out.splitlines()) == TABLE_MAX_ROWS + 51  # header and every row


# Text that rich would read as markup: Kineto's memory events, a closing tag (an error
# in markup), Nsight's demangled lambdas (its kernel names are full of them).
BRACKETED = ["[memory]", "[/x]", "f()::[lambda(int) (instance 1)]", "[bold]x"]


def test_tables_print_bracketed_text_as_it_is(db, tmp_path):
    values = ", ".join("('" + v + "')" for v in BRACKETED)
    result = CliRunner().invoke(cli, ["sql", str(db), f"SELECT * FROM (VALUES {values}) t(name)"])
    assert result.exit_code == 0, result.output
    for value in BRACKETED:
        assert f"│ {value} " in result.output
    # Paths too: `profkit info` shows the input's path.
    source = tmp_path / "run [lambda] #2" / "input.json"
    source.parent.mkdir()
    source.write_text("{}")
    store = Store.open(source.parent / "run.duckdb")
    with Sink(store).trace(source, "test") as w:
        w.add_events({"event_id": [0], "kind": ["kernel"], "name": ["k"], "start_ns": [0], "dur_ns": [1],
                      "device": [0], "stream": [7]})
    store.close()
    proc = subprocess.run([PROFKIT, "info", str(source.parent / "run.duckdb")], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    assert f"trace   {source}" in proc.stdout


def test_the_analysis_printout_shows_names_with_brackets_as_they_are():
    from profkit.render import console
    from profkit.report_terminal import print_analysis

    finding = {"rule": "kernels.hotspot", "title": "GPU 0: " + BRACKETED[2] + " takes 40%",
               "impact_ns": 1000, "impact_basis": "estimate", "share_pct": 1.0, "scope": {"rank": 0, "device": 0},
               "recommendation": "Look at " + " and ".join(BRACKETED), "evidence": {}, "sql": ""}
    out = io.StringIO()
    print_analysis({"traces": [], "findings": [finding]}, console=console(file=out, width=400))
    text = out.getvalue()
    assert f"1. {finding['title']}" in text and "Do: " + finding["recommendation"] in text
    assert text.count(BRACKETED[2]) == 3  # the table, the title below it, the recommendation


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_output_into_a_closed_pipe_is_not_an_error(db, fmt):
    """`profkit sql ... | head -1`: the reader leaving early ends profkit quietly, exit 0
    (rich's own console and click's main would both have made it exit 1)."""
    # Far more than a pipe buffer, in each format (a table wraps the long cells).
    query = "SELECT range AS n, repeat('word ', 400) AS text FROM range(5000)"
    proc = subprocess.Popen([PROFKIT, "sql", str(db), query, "--format", fmt], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""


def test_bad_sql_is_one_line_exit_2(db):
    proc = run("sql", db, "SELECT nope FROM events")
    assert proc.returncode == 2
    assert proc.stderr.startswith("profkit: error: SQL error:") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("make,problem", [
    (lambda p: None, "no such file or directory"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"\x00\x01 not a trace at all"), "not a trace profkit can read"),
])
def test_unusable_inputs_are_one_line_errors(tmp_path, make, problem):
    path = tmp_path / "input.bin"
    make(path)
    proc = run("info", path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"profkit: error: {path}: {problem}") and proc.stderr.count("\n") == 1


def test_a_duckdb_file_that_is_not_a_store(tmp_path):
    import duckdb

    path = tmp_path / "other.duckdb"
    duckdb.connect(str(path)).execute("CREATE TABLE x (a INT)").close()
    proc = run("info", path)
    assert proc.returncode == 2 and "not a profkit store" in proc.stderr


def test_info_on_a_store(db):
    proc = run("info", db, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info[0]["events_by_kind"] == {"kernel": 1, "runtime": 1}
    assert info[0]["device_span_ns"] == 10


def test_docs_cli_md_is_generated_from_the_code():
    from profkit import cli_reference

    doc = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert doc.read_text() == cli_reference.markdown() + "\n", \
        "regenerate: python -m profkit.cli_reference > docs/cli.md"


def test_the_cache_never_goes_into_a_read_only_folder(tmp_path, monkeypatch):
    """Root can write anywhere; a folder marked read-only (like ../shared) still gets no cache."""
    from profkit import cache

    folder = tmp_path / "archive"
    folder.mkdir()
    trace = folder / "t.json"
    trace.write_text("{}")
    folder.chmod(0o555)
    try:
        monkeypatch.delenv("PROFKIT_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache._writable_candidate(trace).parent == tmp_path / "xdg" / "profkit"
        folder.chmod(0o755)
        assert cache._writable_candidate(trace).parent == folder
    finally:
        folder.chmod(0o755)


def test_whatif_and_timeline_from_the_command_line(tmp_path):
    from conftest import SAMPLE_TRACES

    sample = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"
    proc = run("whatif", sample, "--no-sync", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["traces"]) == 4
    assert all(t["saving_ns"] > 0 for t in result["traces"].values())
    assert run("whatif", sample).returncode == 2  # no change named
    bad = run("whatif", sample, "--speedup", "gemm")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    # A change that names nothing in the trace is an error on one line, not a 0 ns saving.
    for args, says in ((("--speedup", "gemms=2"), "unknown kernel category 'gemms'"),
                       (("--speedup", "gemm=fast"), "the factor 'fast' is not a number"),
                       (("--speedup-kernel", "no_such_kernel=2"), "no kernel is named 'no_such_kernel'")):
        bad = run("whatif", sample, *args)
        assert bad.returncode == 2 and says in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    out = tmp_path / "t.pftrace"
    proc = run("analyze", sample, "--timeline", out, "--top", "3")
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 100_000 and "critical-path segments" in proc.stderr



def test_whatif_predicts_per_the_step_analyze_uses():
    """`profkit whatif` replays the steps `profkit analyze` finds: on the CK batched GEMM
    (no steps in the store: one step, its device span) its host-gaps saving is the
    host-bound finding's replayed impact, not a saving over the whole capture (1.69 s)."""
    from conftest import shared_trace

    trace = shared_trace("rocprof/rocpd_mi300x_ck_bmm/28_results.db")
    whatif = json.loads(run("whatif", trace, "--no-host-gaps", "--format", "json").stdout)
    analysis = json.loads(run("analyze", trace, "--format", "json").stdout)
    (t,) = whatif["traces"].values()
    assert t["observed_step_ns"] == analysis["traces"][0]["steps"]["step_ns"]
    finding = next(f for f in analysis["findings"] if f["rule"] == "idle.host_bound")
    assert finding["details"]["replay"]["changes"] == ["host-gaps"]
    assert t["saving_ns"] == finding["impact_ns"] > 0


def test_whatif_says_when_the_device_capacity_holds_the_prediction(monkeypatch):
    """MTIA's streams took turns on the device; without its device-order edges the replay
    runs them at once, and the table marks the prediction held at the capacity floor and
    prints what the replay alone said; the JSON has both. In process (the patch)."""
    from click.testing import CliRunner

    from conftest import shared_trace
    from profkit import graph_build

    monkeypatch.setattr(graph_build, "SERIAL_DEVICE_MIN_SWITCHES", 1 << 40)
    trace = str(shared_trace("kineto/mtia/mtia_inference_rank0.json.gz"))
    runner = CliRunner()
    table = runner.invoke(cli, ["whatif", trace, "--no-host-overhead"]).output
    assert "414.1 ms *" in table and "held at the device's capacity" in " ".join(table.split())
    out = runner.invoke(cli, ["whatif", trace, "--no-host-overhead", "--format", "json"]).output
    (t,) = json.loads(out)["traces"].values()
    assert t["capacity_bound"] and t["predicted_step_ns"] == t["capacity_floor_ns"] > t["replayed_with_changes_ns"]


def test_no_cache_writes_no_store_file(tmp_path):
    """`--no-cache` (or PROFKIT_NO_CACHE=1) parses afresh and leaves no cache file, with the
    same analysis as the default run, which does leave one."""
    import os

    from conftest import SAMPLE_TRACES

    trace = tmp_path / "rank0.json.gz"
    shutil.copy(SAMPLE_TRACES / "synthetic_llm_decode_4ranks" / "synthetic_llm_decode_rank0.json.gz", trace)
    env = {**os.environ, "PROFKIT_CACHE_DIR": str(tmp_path / "cache")}

    def analyze(*options, extra_env=None):
        proc = subprocess.run([PROFKIT, *options, "analyze", str(trace), "--format", "json"],
                              capture_output=True, text=True, env={**env, **(extra_env or {})})
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def cache_files():
        return sorted(p.name for p in tmp_path.rglob("*.profkit.duckdb*"))

    fresh = analyze("--no-cache")
    assert cache_files() == []
    assert analyze(extra_env={"PROFKIT_NO_CACHE": "1"}) == fresh
    assert cache_files() == []
    assert analyze() == fresh
    assert len(cache_files()) == 1


def test_unwritable_or_wrong_outputs_are_one_line_errors(tmp_path):
    """Output paths are checked before any parsing: a missing folder or a file that is not
    a profkit store gives one line and exit 2, never an internal error after the work."""
    from conftest import SAMPLE_TRACES

    sample = SAMPLE_TRACES / "cpu_tiny_decoder_prefill_decode.json.gz"
    missing = tmp_path / "no_such_dir"
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("hello")
    import duckdb

    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE t (x INT)").close()
    budget = tmp_path / "profkit.toml"
    budget.write_text('[budgets]\n"breakdown.idle_pct" = { max = 10 }\n')
    cases = [
        (("ingest", sample, "-o", missing / "x.duckdb"), "cannot write: no directory"),
        (("ingest", sample, "-o", not_a_store), "exists and is not a DuckDB store"),
        (("ingest", sample, "-o", other), "DuckDB file is not a profkit store (no meta table)"),
        (("analyze", sample, "--timeline", missing / "t.pftrace"), "cannot write: no directory"),
        (("check", sample, "--budget", budget, "--junit", missing / "j.xml"), "cannot write: no directory"),
        (("check", sample, "--budget", budget, "--sarif", missing / "f.sarif"), "cannot write: no directory"),
    ]
    for args, says in cases:
        proc = run(*args)
        assert proc.returncode == 2 and says in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "internal error" not in proc.stderr
    assert not_a_store.read_text() == "hello"
    # The job summary file that --github appends to, named by the environment.
    import os

    proc = subprocess.run([PROFKIT, "check", str(sample), "--budget", str(budget), "--github"], capture_output=True,
                          text=True, env={**os.environ, "GITHUB_STEP_SUMMARY": str(missing / "summary.md")})
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"cannot write: no directory {missing}")


def test_ctrl_c_during_a_query_is_an_interrupt_not_an_internal_error(tmp_path, monkeypatch, capsys):
    """Ctrl-C while DuckDB runs a query ends that query with DuckDB's own error ("Query
    interrupted"), not KeyboardInterrupt; profkit still says "aborted" and exits 130."""
    import os
    import signal

    from profkit import cli as cli_module

    def load_interrupted(path):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what DuckDB does with it: the query stops and fails with its own error
        raise RuntimeError("Query interrupted")

    trace = tmp_path / "trace.json"
    trace.write_text("{}")
    monkeypatch.setattr(cli_module, "_load", load_interrupted)
    monkeypatch.setattr(sys, "argv", ["profkit", "analyze", str(trace)])
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli_module.watch_interrupts()
        assert cli_module._run_command() == 130
    finally:
        signal.signal(signal.SIGINT, previous)
        cli_module._interrupted.clear()
    assert capsys.readouterr().err == "profkit: aborted\n"
    # Without the interrupt the same error is a bug, reported as one.
    monkeypatch.setattr(cli_module, "_load", lambda path: (_ for _ in ()).throw(RuntimeError("Query interrupted")))
    assert cli_module._run_command() == 70
    assert "internal error: RuntimeError: Query interrupted" in capsys.readouterr().err


def test_a_terminal_is_told_the_analysis_is_running(monkeypatch):
    """After the load's progress bar, the passes can take seconds: a terminal sees a
    transient status line; a pipe sees nothing (checked by every CliRunner test)."""
    from conftest import SAMPLE_TRACES

    from profkit import load
    from profkit.cli import _analysed

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    store = load(SAMPLE_TRACES / "cpu_tiny_decoder_prefill_decode.json.gz", cache=False)
    try:
        result = _analysed(store)
    finally:
        store.close()
    assert result["traces"] and "Analysing 1 trace" in terminal.getvalue()
