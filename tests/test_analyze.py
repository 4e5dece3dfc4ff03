"""`profkit analyze` end to end: the synthetic sample's injected bottlenecks are found with
the right scope and ranked by their injected size; the JSON output keeps its documented
shape on every vendor's input."""
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from profkit.findings import group_across_ranks
from profkit.ingest import ingest
from profkit.store import Store

from conftest import SAMPLE_TRACES, shared_trace

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))
SYNTHETIC = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"
MANIFEST = json.loads((SYNTHETIC / "manifest.json").read_text())
# The rule whose finding measures each injected bottleneck's own size.
RULE_OF = {"sync": "host.sync_in_steady_state", "host_gaps": "idle.host_bound",
           "exposed_allreduce": "comm.exposed", "straggler": "comm.rank_skew"}


def analyze_json(path, *args):
    proc = subprocess.run([PROFKIT, "analyze", str(path), "--format", "json", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def synthetic():
    return analyze_json(SYNTHETIC)


def test_every_injected_bottleneck_is_found_with_its_scope_and_size(synthetic):
    for injected in MANIFEST["bottlenecks"]:
        rule = RULE_OF[injected["bottleneck"]]
        assert rule == injected["id"]
        found = [f for f in synthetic["findings"] if f["rule"] == rule]
        assert found, rule
        ranks = {f["scope"]["rank"] for f in found}
        if injected["bottleneck"] == "straggler":
            # One finding for the store, naming the straggler.
            assert [f["scope"]["rank"] for f in found] == [injected["rank"]]
            size = found[0]["impact_ns"]
        else:
            assert ranks == set(injected["scope"]["ranks"])
            streams = {str(f["scope"].get("stream")) for f in found}
            assert streams <= {str(injected["scope"]["stream"]), str([injected["scope"]["stream"]])}
            # The last-arriving rank's exposure is the injected collective's own size; the
            # others also wait for the straggler inside it.
            sizes = sorted(f["impact_ns"] for f in found)
            size = sizes[0] if injected["bottleneck"] == "exposed_allreduce" else sorted(sizes)[len(sizes) // 2]
        if found[0]["impact_basis"] == "replay":
            # The replayed saving is what removing the bottleneck saves per step.
            assert size == pytest.approx(injected["step_time_saving_ns"], rel=0.10), (rule, size)
        else:
            assert size == pytest.approx(injected["size_ns_per_step"], rel=0.20), (rule, size)


def test_bottlenecks_rank_in_the_order_of_their_injected_size(synthetic):
    shown = group_across_ranks(synthetic["findings"])
    position = {}
    for i, f in enumerate(shown):
        position.setdefault(f["rule"], i)
    by_size = sorted(MANIFEST["bottlenecks"], key=lambda b: -b["size_ns_per_step"])
    order = [position[RULE_OF[b["bottleneck"]]] for b in by_size]
    assert order == sorted(order), [(b["bottleneck"], position[RULE_OF[b["bottleneck"]]]) for b in by_size]


def check_shape(result):
    assert result["schema"] == "profkit.analysis/1"
    for t in result["traces"]:
        for key in ("rank", "format", "devices", "breakdown"):
            assert key in t
        b = t["breakdown"]
        for key in ("span_ns", "idle_ns", "compute_ns", "non_compute_ns", "idle_pct", "compute_pct", "non_compute_pct"):
            assert key in b
    for f in result["findings"]:
        for key in ("rule", "title", "impact_ns", "share_pct", "scope", "evidence", "sql", "recommendation"):
            assert key in f
        assert f["impact_ns"] >= 0
    impacts = [f["impact_ns"] for f in result["findings"]]
    assert impacts == sorted(impacts, reverse=True)


@pytest.mark.parametrize("relative", [
    "nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite",
    "nsys/t4_vectoradd_streams.sqlite",
    "rocprof/rocpd_r9700_llamacpp_decode/results.db",
    "rocprof/v3_json_mi350x/908_results.json.gz",
    "kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz",
])
def test_the_same_passes_run_on_every_vendor(relative):
    result = analyze_json(shared_trace(relative))
    check_shape(result)
    assert result["traces"][0]["breakdown"]["busy_ns"] > 0


def test_synthetic_shape_and_markdown(synthetic):
    check_shape(synthetic)
    assert len(synthetic["traces"]) == 4
    proc = subprocess.run([PROFKIT, "analyze", str(SYNTHETIC), "--format", "markdown", "--top", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.count("\n### ") == 3 and "```sql" in proc.stdout


def test_step_selection(synthetic):
    one = analyze_json(SYNTHETIC, "--step", "5")
    assert one["traces"][0]["steps"]["steady_count"] == 1


def test_cpu_only_trace_has_no_device_findings():
    result = analyze_json(SAMPLE_TRACES / "cpu_tiny_decoder_prefill_decode.json.gz")
    assert result["traces"][0]["breakdown"]["device_activity"] is False
    assert result["traces"][0]["steps"]["count"] == 9


def test_display_groups_ranks_and_merges_one_cause_seen_by_two_passes():
    def finding(rule, rank, impact, device=0, changes=("no_sync",)):
        return {"rule": rule, "title": f"{rule} on GPU {device}", "impact_ns": impact, "impact_basis": "replay",
                "scope": {"trace_id": rank, "rank": rank, "device": device, "stream": 7},
                "details": {"replay": {"changes": list(changes)}}}

    shown = group_across_ranks([
        finding("host.sync_in_steady_state", 0, 100), finding("host.sync_in_steady_state", 1, 120, device=1),
        finding("idle.sync", 0, 100), finding("idle.sync", 1, 120, device=1),
        finding("idle.host_bound", 0, 50, changes=("host_gaps",)),
        finding("idle.host_bound", 0, 50, device=1, changes=("host_gaps",)),
    ])
    assert [f["rule"] for f in shown] == ["host.sync_in_steady_state", "idle.host_bound"]
    assert shown[0]["impact_ns"] == 120 and shown[0]["scope"]["ranks"] == [0, 1]
    assert shown[0]["title"] == "host.sync_in_steady_state on GPU 1 (rank 1; worst of ranks 0-1)"
    assert shown[0]["also_rules"] == ["idle.sync"] and "also_rules" not in shown[1]


def test_display_groups_ranks_whose_streams_have_their_own_numbers():
    """Nsight numbers streams across a report: rank 0 computes on stream 7, rank 1 on 15. Each
    rank's largest finding of a rule groups with the others' largest, its second with their
    second; a stream that differs between the members is not shown as the row's."""
    def finding(rank, stream, impact):
        return {"rule": "idle.host_bound", "title": f"GPU {rank} idles", "impact_ns": impact,
                "scope": {"trace_id": rank, "rank": rank, "device": rank, "stream": stream}}

    shown = group_across_ranks([finding(0, 7, 100), finding(1, 15, 120), finding(0, 20, 10), finding(1, 28, 5)])
    assert [(f["impact_ns"], f["scope"]["ranks"], f["scope"].get("stream")) for f in shown] == \
        [(120, [0, 1], None), (10, [0, 1], None)]
    same = group_across_ranks([finding(0, 7, 100), finding(1, 7, 120)])
    assert [(f["scope"]["ranks"], f["scope"]["stream"]) for f in same] == [([0, 1], 7)]


def test_step_windows_that_differ_from_their_host_range_are_explained_in_both_reports():
    path = shared_trace("kineto/cuda/a100_triton_kernel.json.gz")
    terminal = subprocess.run([PROFKIT, "analyze", str(path)], capture_output=True, text=True)
    markdown = subprocess.run([PROFKIT, "analyze", str(path), "--format", "markdown"], capture_output=True, text=True)
    assert terminal.returncode == markdown.returncode == 0
    for out in (" ".join(terminal.stdout.split()), markdown.stdout):
        assert "step ProfilerStep#1 is cut at the last recorded event; its range runs on 13.3 s past it" in out
    assert "1.53 ms" in markdown.stdout  # the step time shown is the recorded step's


def test_a_capture_mostly_idle_outside_its_steps_says_how_busy_the_steps_are():
    """The SGLang decode capture spans 474 ms of device activity around one 10 ms graph-replay
    step: the summary's 97.9% idle is HTA's whole-span figure, and within the step the
    device is 97% busy. The reports say both, from the analysis's own numbers."""
    result = analyze_json(shared_trace("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz"))
    (t,) = result["traces"]
    (step,) = t["steps"]["steps"]
    outside = t["idle"]["by_cause_pct"]["outside_step"]
    assert outside > 90 and t["breakdown"]["idle_pct"] > 90
    busy = 100 * step["device_busy_ns"] / step["dur_ns"]
    assert busy > 90
    markdown = subprocess.run([PROFKIT, "analyze", shared_trace("kineto/rocm/mi300x_sglang_qwen3_8b_decode.json.gz"),
                               "--format", "markdown"], capture_output=True, text=True).stdout
    assert (f"Rank 0: {outside:.1f}% of device time is idle outside the step analysed" in markdown
            and f"within it the device is {busy:.1f}% busy" in markdown)
    # Where the steps cover the capture, nothing is said.
    assert "idle outside" not in " ".join(subprocess.run([PROFKIT, "analyze", SYNTHETIC], capture_output=True,
                                                           text=True).stdout.split())


def test_how_busy_the_steps_are_is_said_of_the_steady_steps():
    """llama.cpp decode under rocprof v1: the first of 63 inferred steps holds a 236 ms gap
    before decoding starts. Over all steps the device is ~73% busy, over the 62 steady
    steps (what every per-step figure uses) ~98%: the note gives the latter."""
    path = shared_trace("rocprof/v1_r9700_llamacpp")
    (t,) = analyze_json(path)["traces"]
    steps = t["steps"]
    steady = [s for s in steps["steps"] if s["step"] >= steps["steady_first_step"]][:steps["steady_count"]]
    assert (steps["count"], len(steady)) == (63, 62)
    busy = 100 * sum(s["device_busy_ns"] for s in steady) / sum(s["dur_ns"] for s in steady)
    every = 100 * sum(s["device_busy_ns"] for s in steps["steps"]) / sum(s["dur_ns"] for s in steps["steps"])
    assert busy > 95 and every < 80
    markdown = subprocess.run([PROFKIT, "analyze", path, "--format", "markdown"], capture_output=True, text=True).stdout
    assert "idle outside the 63 steps analysed, which cover " in markdown
    assert f"within the 62 steady steps the device is {busy:.1f}% busy." in markdown


def test_a_step_the_trace_does_not_have_is_a_one_line_error():
    """--step 30 on a 12-step trace used to crash the host pass (no steady steps); the error
    is raised while the graph is still being built on its worker thread, which the store's
    close must wait for (it failed with 'connection is busy')."""
    proc = subprocess.run([PROFKIT, "analyze", str(SYNTHETIC), "--step", "30"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f"profkit: error: {SYNTHETIC / 'synthetic_llm_decode_rank0.json.gz'}: "
                                   "no step 30 (steps: 0-11)")


def test_devices_the_trace_does_not_name_show_as_unnamed():
    """The FastVideo Nsight export has no GPU info table: its devices are `unnamed`, not `?`."""
    from profkit.render import device_names

    assert device_names({"devices": [{"name": None}, {"name": None}]}) == "unnamed"
    assert device_names({"devices": [{"name": "B"}, {"name": "A"}, {"name": "B"}]}) == "A, B"
    assert device_names({"devices": []}) == "-"
    markdown = subprocess.run([PROFKIT, "analyze", shared_trace("nsys/h100_2gpu_fastvideo_1s_window.sqlite"),
                               "--format", "markdown"], capture_output=True, text=True).stdout
    assert "| 0 | nsys | unnamed |" in markdown


@pytest.mark.parametrize("relative", ["rocprof/v3_csv_mi300a_rocm6.2", "nsys/a100x4_cloverleaf_nsys2024.5.sqlite",
                                      "kineto/cuda/h100_bert_small.json.gz",
                                      "kineto/cuda/sampled_2ranks/sampled_rank-0.json.gz"])
def test_markdown_shows_names_as_they_are(relative):
    """Rendered as GitHub would (CommonMark with tables and strikethrough), the Markdown
    report's text is the analysis's own: `aten::_foreach_add_` is no emphasis, a demangled
    `<...>` no HTML tag, `[lambda(int) (instance 1)]` no link, `float*` no emphasis."""
    import html
    import re

    from markdown_it import MarkdownIt

    from profkit.findings import trace_notes
    from profkit.report_markdown import analysis_markdown

    result = analyze_json(shared_trace(relative))
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(analysis_markdown(result, top=50))
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", rendered)).split())
    findings = group_across_ranks(result["findings"])  # as the report shows them
    shown = [f["title"] for f in findings] + [f["recommendation"] for f in findings]
    shown += trace_notes(result["traces"])
    assert shown
    for expected in shown:
        assert " ".join(expected.split()) in text, expected


def test_markdown_text_renders_as_itself():
    import html
    import re

    from markdown_it import MarkdownIt

    from profkit.render import markdown_text

    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    for name in ("void k<4, at::native::FillFunctor<float>, at::detail::Array<char*, 2> >(int)",
                 "f()::[lambda(int) (instance 1)]", "__omp_offloading__ main", "a | b ~~c~~ *d* `e` \\f",
                 "<built-in method item of Tensor object>", "aten::_foreach_add_ 14%"):
        for page in (markdown_text(name), f"| x |\n|---|\n| {markdown_text(name)} |", f"### {markdown_text(name)}"):
            text = html.unescape(re.sub(r"<[^>]+>", "", md.render(page))).strip()
            assert text.splitlines()[-1].strip() == name, (page, text)


def test_traces_claiming_the_same_rank_are_pointed_out(tmp_path):
    """Two runs' traces in one directory, both rank 0: each is analysed, and the reports say
    that cross-rank figures take them for one job."""
    names = ("a100_event_sync.json.gz", "a100_event_sync_multistream.json.gz")
    for name in names:
        (tmp_path / name).write_bytes(shared_trace(f"kineto/cuda/{name}").read_bytes())
    result = analyze_json(tmp_path)
    assert [t["rank"] for t in result["traces"]] == [0, 0]
    markdown = subprocess.run([PROFKIT, "analyze", str(tmp_path), "--format", "markdown"], capture_output=True,
                              text=True).stdout
    assert f"Rank 0 is claimed by 2 traces ({names[0]}, {names[1]}): cross-rank figures" in markdown.replace("\\_", "_")
    single = subprocess.run([PROFKIT, "analyze", str(SYNTHETIC), "--format", "markdown"], capture_output=True,
                            text=True).stdout
    assert "is claimed by" not in single


def test_traces_from_different_tools_are_pointed_out(tmp_path):
    """A directory holding a PyTorch profiler trace and an Nsight export (the same run
    recorded twice, or two runs): both analysed, and every report says that cross-rank
    figures take them for one job."""
    shutil.copy(shared_trace("kineto/rocm/mi250_minitoy_train.json.gz"), tmp_path / "rank0.json.gz")
    shutil.copy(shared_trace("nsys/t4_vectoradd_streams.sqlite"), tmp_path / "t4.sqlite")
    result = analyze_json(tmp_path)
    assert sorted(t["format"] for t in result["traces"]) == ["kineto", "nsys"]
    line = "The traces come from 2 tools (kineto: rank 0; nsys: rank 1): cross-rank figures treat them as ranks"
    for fmt in ("table", "markdown"):
        out = subprocess.run([PROFKIT, "analyze", str(tmp_path), "--format", fmt], capture_output=True,
                             text=True).stdout
        assert line in " ".join(out.replace("\\_", "_").split()), fmt
    single = subprocess.run([PROFKIT, "analyze", str(SYNTHETIC), "--format", "markdown"], capture_output=True,
                            text=True).stdout
    assert "tools (" not in single


def test_ranks_on_different_devices_are_pointed_out(tmp_path):
    """An A100 trace and an H100 trace in one directory (two runs, most likely): both
    analysed, and the reports say so; one model on every rank says nothing."""
    shutil.copy(shared_trace("kineto/cuda/a100_event_sync.json.gz"), tmp_path / "rank0.json.gz")
    shutil.copy(shared_trace("kineto/cuda/h100_bert_small.json.gz"), tmp_path / "rank1.json.gz")
    line = ("The ranks ran on different devices (NVIDIA A100-PG509-200: rank 0; NVIDIA H100 80GB HBM3: rank 1): "
            "cross-rank figures treat them as ranks of one job")
    for fmt in ("table", "markdown"):
        out = subprocess.run([PROFKIT, "analyze", str(tmp_path), "--format", fmt], capture_output=True,
                             text=True).stdout
        assert line in " ".join(out.replace("\\_", "_").split()), fmt
    same = subprocess.run([PROFKIT, "analyze", str(shared_trace("kineto/cuda/sampled_2ranks")), "--format",
                           "markdown"], capture_output=True, text=True).stdout
    assert "different devices" not in same


def test_a_copy_of_a_trace_beside_it_is_read_once(tmp_path):
    """Two copies of one rank's trace in a directory (a download saved twice; the .json
    beside its .json.gz) would count that rank twice: the second is not read, and the
    reports and the store say why."""
    trace = shared_trace("kineto/cuda/h100_bert_small.json.gz")
    shutil.copy(trace, tmp_path / "rank0.json.gz")
    shutil.copy(trace, tmp_path / "rank0 (1).json.gz")
    (tmp_path / "rank0.json").write_bytes(gzip.decompress(trace.read_bytes()))
    result = analyze_json(tmp_path)
    assert [Path(t["path"]).name for t in result["traces"]] == ["rank0 (1).json.gz"]
    assert sorted((Path(f["path"]).name, f["reason"]) for f in result["inputs_not_read"]) == [
        ("rank0.json", "the same recording as rank0 (1).json.gz (same events), read once"),
        ("rank0.json.gz", "the same recording as rank0 (1).json.gz (same events), read once"),
    ]
    out = subprocess.run([PROFKIT, "analyze", str(tmp_path)], capture_output=True, text=True).stdout
    assert "Not read: 2 files (the same recording as rank0 (1).json.gz" in " ".join(out.split())
    store = Store.open(None)
    ingest([trace], store)
    ingest([tmp_path / "rank0.json"], store)  # into a store holding it already, under another name
    assert store.scalar("SELECT count(*) FROM traces") == 1
    assert store.scalar("SELECT count(*) FROM events") == store.scalar("SELECT event_count FROM traces")


def test_a_trace_matching_another_in_count_and_span_but_not_in_its_events_is_kept(tmp_path):
    """Two ranks can have the same number of events, first start and last end (lockstep
    ranks, microsecond timestamps): only the same events make the same recording."""
    text = json.loads(gzip.decompress(shared_trace("kineto/cuda/h100_bert_small.json.gz").read_bytes()))
    (tmp_path / "rank0.json").write_text(json.dumps(text))
    ops = [e for e in text["traceEvents"] if e.get("cat") == "cpu_op"]
    ops[len(ops) // 2]["name"] = "aten::another_op"  # one event differs; count, start and end do not
    (tmp_path / "rank1.json").write_text(json.dumps(text))
    result = analyze_json(tmp_path)
    assert sorted(Path(t["path"]).name for t in result["traces"]) == ["rank0.json", "rank1.json"]
    assert result["inputs_not_read"] == []


def test_a_copy_left_out_is_read_once_its_original_changes(tmp_path):
    """The copy's "not read" line goes once the copy is read (its original re-recorded):
    a report must not say a trace it analyses was not read."""
    trace = shared_trace("kineto/cuda/h100_bert_small.json.gz")
    shutil.copy(trace, tmp_path / "a_rank0.json.gz")
    shutil.copy(trace, tmp_path / "b_rank1.json.gz")
    store = Store.open(tmp_path / "run.duckdb")
    ingest([tmp_path], store)
    assert [Path(r["path"]).name for r in store.rows("SELECT path FROM inputs_not_read")] == ["b_rank1.json.gz"]
    shutil.copy(shared_trace("kineto/cuda/a100_event_sync.json.gz"), tmp_path / "a_rank0.json.gz")
    ingest([tmp_path], store)
    assert sorted(Path(r["path"]).name for r in store.rows("SELECT path FROM traces")) == [
        "a_rank0.json.gz", "b_rank1.json.gz"]
    assert store.rows("SELECT path FROM inputs_not_read") == []


def test_progress_names_each_stage_of_each_trace(synthetic):
    """Many ranks take minutes: the status line says which stage of which trace is running
    (every trace's steps, then their other passes, then their critical paths)."""
    from profkit import analyses, load

    told: list[str] = []
    result = analyses.analyze(load(SYNTHETIC, cache=False), progress=told.append)
    assert told == [f"{stage} {i}/4" for stage in ("steps", "passes", "critical path") for i in range(1, 5)]
    assert result["findings"] == synthetic["findings"]
    told.clear()
    analyses.analyze(load(SYNTHETIC, cache=False), passes=("steps", "breakdown"), progress=told.append)
    assert told == [f"{stage} {i}/4" for stage in ("steps", "passes") for i in range(1, 5)]


@pytest.fixture(scope="module")
def twelve_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks12")
    subprocess.run([sys.executable, "-m", "profkit.synthetic", str(out), "--ranks", "12", "--steps", "4"],
                   check=True, capture_output=True)
    return out


def test_ranks_are_in_numeric_order_from_ingest_to_report(twelve_ranks):
    """A directory of 12 ranks listed rank0, rank1, rank10, rank11, rank2, ... (by name);
    the store numbers the traces in natural order, and the report lists them by rank even
    where a store numbered them otherwise (inputs given in another order)."""
    from profkit import analyses
    from profkit.ingest import ingest
    from profkit.store import Store

    store = Store.open(None)
    ingest([twelve_ranks], store)
    assert [r["rank"] for r in store.rows("SELECT rank FROM traces ORDER BY trace_id")] == list(range(12))
    backwards = Store.open(None)
    ingest(sorted(twelve_ranks.glob("*rank*.json.gz"), reverse=True), backwards)
    assert [r["rank"] for r in backwards.rows("SELECT rank FROM traces ORDER BY trace_id")] != list(range(12))
    result = analyses.analyze(backwards, passes=("steps", "breakdown"))
    assert [t["rank"] for t in result["traces"]] == list(range(12))


def test_findings_of_equal_impact_are_ranked_by_rank_as_a_number():
    from profkit.findings import Finding, rank

    def finding(trace_rank):
        return Finding("idle.host_bound", "t", 1000, 1.0, {"trace_id": trace_rank, "rank": trace_rank}, {}, "", "")

    assert [f.scope["rank"] for f in rank([finding(10), finding(2), finding(1)])] == [1, 2, 10]
