"""The `profkit` command: a thin face over the library."""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import click

from . import __version__, no_pandas, schema
from .errors import ProfkitError, TraceError


def _output_file(path: str | None) -> None:
    """An output file's folder must exist and be writable: checked before any parsing, so a
    mistyped path costs a one-line error, not an internal one after the work."""
    if path is None:
        return None
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise ProfkitError(f"{path}: cannot write: no directory {folder}")
    if not os.access(folder, os.W_OK):
        raise ProfkitError(f"{path}: cannot write: directory {folder} is not writable")


def _progress_bar():
    """A rich progress bar on a terminal; nothing when output is piped (CI logs)."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                        TimeRemainingColumn(), transient=True)
    tasks: dict[str, int] = {}

    def update(path: str, done: int, total: int) -> None:
        if path not in tasks:
            tasks[path] = progress.add_task(Path(path).name, total=total)
        progress.update(tasks[path], completed=done, total=total)

    return progress, update


def _analysed(store, selected_step: int | None = None) -> dict:
    """The analysis of a store, with a transient "Analysing ..." line on a terminal: the
    passes take seconds on large traces (10 s at a million rocprof dispatches), after the
    load's progress bar has gone. Nothing is shown when stderr is not a terminal."""
    from .analyses import analyze as run_analysis

    if not sys.stderr.isatty():
        return run_analysis(store, selected_step=selected_step)
    from .render import console

    count = len(store.trace_ids())
    title = f"Analysing {count} trace{'' if count == 1 else 's'}"
    with console(file=sys.stderr).status(title) as status:
        return run_analysis(store, selected_step=selected_step,
                            progress=(lambda text: status.update(f"{title}: {text}")) if count > 1 else None)


def _load(path: str):
    from .cache import load

    context = click.get_current_context(silent=True)
    cache = not (context and context.find_root().params.get("no_cache"))
    progress, update = _progress_bar()
    if progress is None:
        return load(path, cache=cache)
    with progress:
        return load(path, cache=cache, progress=update)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="profkit")
@click.option("--no-cache", is_flag=True, envvar="PROFKIT_NO_CACHE", show_envvar=True,
              help="Parse every trace afresh: neither read nor write the parsed-store cache file "
                   "(`TRACE.profkit.duckdb`). For one-off runs, such as CI on a new trace each time.")
def cli(no_cache: bool) -> None:
    """Why is this GPU workload slow? profkit reads PyTorch profiler (Kineto) JSON,
    Nsight Systems SQLite exports and rocprof output into one DuckDB schema."""


@cli.command()
@click.argument("traces", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="DuckDB file to write (traces are added to it if it exists; an input it holds already is "
                   "not read again, or its traces are replaced if the input changed).")
def ingest(traces: tuple[str, ...], output: str) -> None:
    """Parse TRACES (files, directories, or - for standard input) into the DuckDB store OUTPUT."""
    import duckdb

    from .cache import is_store_file, open_failure, open_store
    from .ingest import ingest as run_ingest
    from .store import Store

    _output_file(output)
    target = Path(output)
    created = not target.exists()
    if not created:  # traces are added to a profkit store, never to another file
        if not is_store_file(target):
            raise ProfkitError(f"{output}: exists and is not a DuckDB store (name a new file or a profkit store)")
        # The same checks as reading one (a profkit store of this schema); empty is fine here.
        open_store(target, empty_ok=True).close()
    try:
        store = Store.open(output)
    except duckdb.Error as exc:
        raise TraceError(output, open_failure(exc)) from None
    try:
        unread_before = len(store.inputs_not_read())
        progress, update = _progress_bar()
        held: list[tuple[str, bool]] = []
        if progress is None:
            ids = run_ingest(list(traces), store, held=held)
        else:
            with progress:
                ids = run_ingest(list(traces), store, update, held=held)
        store.con.execute("CHECKPOINT")
        ids_sql = ",".join(map(str, ids)) or "NULL"
        events, issues = store.con.execute(
            f"SELECT coalesce(sum(event_count), 0), coalesce(sum(issue_count), 0) FROM traces "
            f"WHERE trace_id IN ({ids_sql})").fetchone()
        unusable = store.con.execute(
            f"SELECT coalesce(sum(count), 0) FROM ingest_issues WHERE unusable AND trace_id IN ({ids_sql})").fetchone()[0]
        unread = len(store.inputs_not_read()) - unread_before
    except BaseException:
        store.close()
        if created:  # an input failed and ingest added nothing: no empty store left behind
            for leftover in (target, target.with_name(target.name + ".wal")):
                leftover.unlink(missing_ok=True)
        raise
    store.close()
    not_read = f", {unread} file(s) under the input not read" if unread else ""
    unusable_part = f" ({unusable} of them unusable: damaged or of an unknown kind)" if unusable else ""
    replaced = sum(changed for _, changed in held)
    kept = (f"; {len(held) - replaced} input(s) already in the store and unchanged, not read again"
            if len(held) > replaced else "")
    renewed = f"; {replaced} input(s) changed since they were read, their traces replaced" if replaced else ""
    click.echo(f"{output}: {len(ids)} trace(s) added, {events} events, {issues} input records "
               f"not stored{unusable_part}{not_read}{kept}{renewed} (see `profkit info {output}`)")


@cli.command()
@click.argument("trace", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def info(trace: str, fmt: str) -> None:
    """What TRACE (a trace, directory or .duckdb store) holds: format, ranks, devices,
    span, events by kind, and every input record that was not stored."""
    from . import info as info_mod
    from . import render

    store = _load(trace)
    try:
        data = info_mod.summary(store)
        not_read = store.inputs_not_read()
    finally:
        store.close()
    if fmt == "json":
        click.echo(render.to_json(data))
    else:
        render.info_tables(data, not_read=not_read)


@cli.command()
@click.argument("trace", type=click.Path())
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="json is an array of row objects keyed by column name (pipes into jq).")
def sql(trace: str, query: str, fmt: str) -> None:
    """Run QUERY against the store for TRACE (see `profkit schema` for the tables)."""
    import duckdb

    from . import render

    no_statement = ProfkitError("QUERY holds no SQL statement (see `profkit schema` for the tables)")
    if not query.strip().strip(";").strip():
        raise no_statement  # before the trace is read, which can take a while
    store = _load(trace)
    try:
        try:
            cur = store.con.execute(query)
        except duckdb.Error as exc:
            raise ProfkitError(f"SQL error: {str(exc).splitlines()[0]}") from None
        if cur is None:  # only comments, or empty statements between semicolons
            raise no_statement
        if cur.description is None:
            return
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        store.close()
    render.rows(names, rows, fmt)


@cli.command()
@click.argument("trace", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown", "html"]), default="table",
              show_default=True, help="json follows docs/analysis-json.md (schema profkit.analysis/1); html is "
                                      "one self-contained page.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Findings to show in the terminal, Markdown and HTML views (the JSON holds every finding).")
@click.option("--step", "step", default="all", show_default=True,
              help="Restrict per-step figures to step N (an error if a trace has no step N), or 'all' "
                   "for the steady state.")
@click.option("--timeline", "timeline", type=click.Path(dir_okay=False),
              help="Also write a Perfetto timeline (.pftrace) with the critical path and findings drawn in.")
def analyze(trace: str, fmt: str, top: int, step: str, timeline: str | None) -> None:
    """Why is TRACE slow? Ranked findings with the time each could win back.

    TRACE is a trace file, a directory of per-rank traces, a .duckdb store, or - for a
    trace on standard input (a pipe such as <(zcat t.json.gz) is read too; neither is cached)."""
    _output_file(timeline)
    if step != "all" and not step.lstrip("-").isdigit():
        raise click.BadParameter("expected a step number or 'all'", param_hint="--step")
    store = _load(trace)
    try:
        result = _analysed(store, selected_step=None if step == "all" else int(step))
        if timeline:
            _write_timeline(store, timeline, result)
        _print_analysis(result, fmt, top)
    finally:
        store.close()  # after the output: on a first run it waits for the cache file


def _print_analysis(result: dict, fmt: str, top: int) -> None:
    from . import render

    if fmt == "json":
        click.echo(render.to_json(result))
    elif fmt == "markdown":
        from .report_markdown import analysis_markdown

        click.echo(analysis_markdown(result, top))
    elif fmt == "html":
        from .report_html import analysis_html

        click.echo(analysis_html(result, top))
    else:
        from .report_terminal import print_analysis

        print_analysis(result, top)


def _write_timeline(store, path: str, result: dict) -> None:
    from .analyses.critical_path import store_graph
    from .graph import critical_path_segments
    from .timeline import write_timeline

    graph = store_graph(store)  # the analysis built it already (not again: 2 s at 8 ranks x 200 steps)
    segments = [seg for trace_id in store.trace_ids() for seg in critical_path_segments(store, trace_id, graph)]
    stats = write_timeline(store, path, critical_path=segments, findings=result["findings"])
    click.echo(f"wrote {path}: {stats.get('slices', 0)} slices, {len(segments)} critical-path segments, "
               f"{len(result['findings'])} findings (open it in https://ui.perfetto.dev)", err=True)


@cli.command()
@click.argument("trace", type=click.Path())
@click.option("--speedup", multiple=True, metavar="CATEGORY=K",
              help="Kernels of a category (gemm, attention, communication, ...) K times faster. Repeatable.")
@click.option("--speedup-kernel", multiple=True, metavar="NAME=K", help="Kernels with this exact name K times faster.")
@click.option("--no-host-overhead", is_flag=True, help="Host work between launches and launch calls cost nothing "
                                                        "(as if the step were graph-captured).")
@click.option("--no-host-gaps", is_flag=True, help="Only the host gaps that starve the device removed.")
@click.option("--launch-latency", "launch_latency", type=int, metavar="NS", default=None,
              help="Every launch (call start to device start) takes at most NS nanoseconds (5000 is typical).")
@click.option("--comm-overlap", is_flag=True, help="Communication fully overlapped with compute.")
@click.option("--no-sync", is_flag=True, help="Host synchronisation removed.")
@click.option("--straggler", is_flag=True, help="The slowest rank brought to the median (multi-rank inputs).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def whatif(trace: str, speedup: tuple[str, ...], speedup_kernel: tuple[str, ...], no_host_overhead: bool,
           no_host_gaps: bool, launch_latency: int | None, comm_overlap: bool, no_sync: bool, straggler: bool,
           fmt: str) -> None:
    """Predicted step time of TRACE with changes applied, by replaying its dependency graph.

    Example: profkit whatif trace.json.gz --speedup gemm=2 --no-host-overhead"""
    from . import render
    from .whatif import whatif as run_whatif

    changes = [f"speedup:{s}" for s in speedup] + [f"speedup-kernel:{s}" for s in speedup_kernel]
    changes += [name for flag, name in ((no_host_overhead, "no-host-overhead"), (no_host_gaps, "host-gaps"),
                                        (comm_overlap, "comm-overlap"), (no_sync, "no-sync"),
                                        (straggler, "straggler")) if flag]
    if launch_latency is not None:
        changes.append(f"launch-latency:{launch_latency}")
    if not changes:
        raise click.UsageError("name at least one change (see --help)")
    store = _load(trace)
    try:
        from .analyses.critical_path import analysis_windows

        try:
            result = run_whatif(store, changes=changes, windows=analysis_windows(store))
        except ValueError as exc:
            raise ProfkitError(f"{trace}: {exc}") from None
        ranks = {r["trace_id"]: r["rank"] for r in store.rows("SELECT trace_id, rank FROM traces")}
    finally:
        store.close()
    if fmt == "json":
        click.echo(render.to_json(result))
        return
    from rich.table import Table
    from rich.text import Text

    from .report_terminal import make_console

    table = Table("rank", "observed step", "replayed step", "predicted step", "saving", "saving %",
                  title=f"What if: {', '.join(changes)}", title_justify="left")
    bound = []
    for trace_id, t in sorted(result["traces"].items()):
        mark = ""
        if t.get("capacity_bound"):
            mark = " *"
            bound.append(f"{render.human_ns(t['replayed_with_changes_ns'])} for rank {ranks.get(trace_id)}")
        table.add_row(str(ranks.get(trace_id)), render.human_ns(t["observed_step_ns"]),
                      render.human_ns(t["replayed_step_ns"]), render.human_ns(t["predicted_step_ns"]) + mark,
                      render.human_ns(t["saving_ns"]), f"{t['saving_pct']:.1f}%")
    console = make_console()
    console.print(table)
    if bound:
        console.print("* held at the device's capacity: no shorter than the step's compute kernels took on "
                      "their busiest device, overlapped as observed (without that floor the replay predicts "
                      + "; ".join(bound) + ").")
    console.print(Text("Step times are means over the steady-state steps; the saving is against the replayed "
                       "step (replay error is in `profkit analyze --format json`, critical_path).", style="dim"))


def _analysis_of(path: str, selected_step: int | None = None) -> dict:
    """An analysis result from a trace, a directory, a store, or a saved analysis JSON."""
    from .analyses import read_saved

    saved = read_saved(path) if path.endswith(".json") else None
    if saved is not None:
        return saved
    store = _load(path)
    try:
        return _analysed(store, selected_step=selected_step)
    finally:
        store.close()


@cli.command()
@click.argument("trace", type=click.Path())
@click.option("--budget", "budget_file", type=click.Path(dir_okay=False),
              help="Budget file (default: profkit.toml, or [tool.profkit] in pyproject.toml, "
                   "from the working directory upward).")
@click.option("--baseline", type=click.Path(), help="Baseline trace, store, or saved `analyze --format json` "
                                                     "output, for max_increase_pct budgets.")
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False), help="Write a JUnit XML report.")
@click.option("--sarif", "sarif_file", type=click.Path(dir_okay=False), help="Write findings as SARIF 2.1.0.")
@click.option("--github", is_flag=True, help="Print workflow annotations and write the job summary "
                                            "to $GITHUB_STEP_SUMMARY.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: one object per budget with name, unit, value (custom-benchmark input).")
def check(trace: str, budget_file: str | None, baseline: str | None, junit_file: str | None,
          sarif_file: str | None, github: bool, fmt: str) -> None:
    """Check TRACE against budgets; for CI.

    Exit codes: 0 all budgets hold, 1 a budget is exceeded, 2 usage or input error,
    3 the trace cannot answer a budget (e.g. no steps or no device activity)."""
    from . import budgets as budgets_mod
    from . import check as check_mod
    from . import render

    _output_file(junit_file)
    _output_file(sarif_file)
    if github:
        _output_file(os.environ.get("GITHUB_STEP_SUMMARY") or None)
    config = Path(budget_file) if budget_file else budgets_mod.find_config()
    if config is None:
        raise ProfkitError("no budget file: pass --budget FILE, or add profkit.toml "
                           "(or [tool.profkit.budgets] in pyproject.toml); see docs/ci.md")
    if not config.is_file():
        raise ProfkitError(f"{config}: no such budget file")
    budgets = budgets_mod.load(config)
    result = _analysis_of(trace)
    base = _analysis_of(baseline) if baseline else None
    outcomes = check_mod.evaluate(result, budgets, check_mod.known_metrics(), base)
    code = check_mod.exit_code(outcomes)
    if junit_file:
        from .report_junit import junit_xml

        Path(junit_file).write_text(junit_xml(outcomes, trace), encoding="utf-8")
    if sarif_file:
        from .report_sarif import sarif_log

        paths = {t.get("trace_id"): t.get("path") for t in result["traces"]}
        Path(sarif_file).write_text(render.to_json(sarif_log(result, paths)) + "\n", encoding="utf-8")
    if fmt == "json":
        click.echo(render.to_json(check_mod.benchmark_entries(outcomes)))
    else:
        from .report_check import print_check

        print_check(outcomes, result, code)
    if github:
        from .report_check import check_markdown
        from .report_github import annotations, write_step_summary

        for line in annotations(outcomes, result["findings"]):
            click.echo(line)
        write_step_summary(check_markdown(outcomes, result, code))
    sys.exit(code)


@cli.command()
@click.argument("base", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows per table.")
@click.option("--fail-on-regression", "fail_pct", type=click.FloatRange(min=0), default=None,
              help="Exit 1 when NEW's step time (or device time per step) is more than PCT% above BASE's.")
def diff(base: str, new: str, fmt: str, top: int, fail_pct: float | None) -> None:
    """What changed from BASE to NEW: step time, breakdown, per-category, per-kernel and
    per-operator time per step, new and vanished kernels, findings that appeared or grew.

    Kernel names are normalised (and kernels matched by the operator that launched them)
    so the same work on another vendor or library version still matches."""
    from . import render
    from .analyses import ANALYSIS_SCHEMA, read_saved
    from .diff import diff_paths, regressions

    for path in (base, new):
        if read_saved(path) is not None:
            raise ProfkitError(f"{path}: a saved analysis ({ANALYSIS_SCHEMA}); diff compares traces or their "
                               ".duckdb stores (the per-kernel and per-operator times it needs are not saved)")
    result = diff_paths(base, new)
    if fmt == "json":
        click.echo(render.to_json(result))
    elif fmt == "markdown":
        from .report_diff import diff_markdown

        click.echo(diff_markdown(result, top))
    else:
        from .report_diff import print_diff
        from .report_terminal import make_console

        print_diff(result, top, console=make_console())
    if fail_pct is not None:
        reasons = regressions(result, fail_pct)
        for reason in reasons:
            click.echo(f"profkit: regression: {reason}", err=True)
        if reasons:
            sys.exit(1)


@cli.command(name="schema")
@click.option("--markdown", is_flag=True, help="Print docs/schema.md exactly.")
def schema_cmd(markdown: bool) -> None:
    """Print the store's tables, columns, units and views."""
    text = schema.markdown()
    if markdown or not sys.stdout.isatty():
        click.echo(text)
    else:
        from rich.markdown import Markdown

        from .render import console

        console().print(Markdown(text))


def main() -> None:
    """Entry point: every error a user can cause is one line on stderr and exit code 2.
    Ends the process (see _exit)."""
    no_pandas.block()
    watch_interrupts()
    _exit(_run_command())


_interrupted = threading.Event()


def watch_interrupts() -> None:
    """Note Ctrl-C before Python turns it into KeyboardInterrupt. A DuckDB query running
    when it comes stops with its own error instead ("Query interrupted", or one of the
    store's other statements failing after it), which must end as an interrupt too, not as
    an internal error. Left alone where SIGINT is ignored (a background job)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        def on_interrupt(signum, frame):
            _interrupted.set()
            signal.default_int_handler(signum, frame)

        signal.signal(signal.SIGINT, on_interrupt)


def _run_command() -> int:
    """Run the command line; its exit code."""
    try:
        # Not cli.main: it turns a closed pipe into exit 1 (and an interrupt into Abort)
        # before any handler here could see it.
        with cli.make_context("profkit", sys.argv[1:]) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("profkit: aborted", err=True)
        return 130
    except ProfkitError as exc:
        click.echo(f"profkit: error: {exc}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: still one line, with a way to see more
        if _interrupted.is_set():
            click.echo("profkit: aborted", err=True)
            return 130
        if os.environ.get("PROFKIT_DEBUG"):
            raise
        click.echo(f"profkit: internal error: {type(exc).__name__}: {exc} "
                   f"(set PROFKIT_DEBUG=1 for the traceback, and please report it)", err=True)
        return 70
    return 0


def _exit(code: int) -> None:
    """Flush the output and end the process without the interpreter's teardown, which
    frees every object one by one (0.5-0.7 s after a 1M-event analysis here). Nothing is
    left to it: every command closes its store (waiting for a cache file being written)
    before it returns, and temporary files are removed where they are made."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing more can be said there
    os._exit(code)
