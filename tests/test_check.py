"""`profkit check`: budgets, exit codes 0/1/2/3, JUnit, SARIF, GitHub output, JSON."""
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from profkit import budgets as budgets_mod
from profkit import check as check_mod
from profkit.errors import ProfkitError

from conftest import SAMPLE_TRACES

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))
SYNTHETIC = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"
CPU_ONLY = SAMPLE_TRACES / "cpu_tiny_decoder_prefill_decode.json.gz"
SARIF_REQUIRED = json.loads((Path(__file__).parent / "data" / "sarif-2.1.0-required.schema.json").read_text())


def run(*args, cwd=None, env=None):
    return subprocess.run([PROFKIT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def synthetic_json(tmp_path_factory):
    """The synthetic sample's analysis, saved once: check accepts it in place of a trace."""
    out = tmp_path_factory.mktemp("analysis") / "synthetic.json"
    proc = run("analyze", SYNTHETIC, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out.write_text(proc.stdout)
    return out


def budget(tmp_path, text, name="profkit.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_all_budgets_hold_exit_0(tmp_path, synthetic_json):
    result = json.loads(synthetic_json.read_text())
    worst_idle = max(t["breakdown"]["idle_pct"] for t in result["traces"])
    b = budget(tmp_path, f'[budgets]\n"breakdown.idle_pct" = {{ max = {worst_idle + 1} }}\n'
                         '"findings.kernels.hotspot.count" = { max = 100 }\n')
    proc = run("check", synthetic_json, "--budget", b, "--junit", tmp_path / "j.xml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("failures") == "0" and root.get("tests") == "2"


def test_exceeded_budget_exit_1_names_the_worst_rank(tmp_path, synthetic_json):
    result = json.loads(synthetic_json.read_text())
    by_rank = {t["rank"]: t["breakdown"]["idle_pct"] for t in result["traces"]}
    worst_rank = max(by_rank, key=by_rank.get)
    b = budget(tmp_path, '[budgets]\n"breakdown.idle_pct" = { max = 1 }\n'
                         '"findings.host.sync_in_steady_state.count" = { max = 0 }\n')
    proc = run("check", synthetic_json, "--budget", b, "--format", "json")
    assert proc.returncode == 1
    entries = json.loads(proc.stdout)
    idle = entries[0]
    assert idle["status"] == "fail" and idle["rank"] == worst_rank
    assert idle["value"] == pytest.approx(by_rank[worst_rank])
    # The custom-benchmark shape: name, unit, value.
    assert {"name", "unit", "value"} <= set(idle) and idle["unit"] == "%"
    syncs = sum(f["count"] for f in result["findings"] if f["rule"] == "host.sync_in_steady_state")
    assert syncs > 0 and entries[1]["status"] == "fail"


def test_one_rank_only(tmp_path, synthetic_json):
    result = json.loads(synthetic_json.read_text())
    rank0 = next(t for t in result["traces"] if t["rank"] == 0)["breakdown"]["idle_pct"]
    b = budget(tmp_path, f'[budgets]\n"breakdown.idle_pct" = {{ max = {rank0 + 0.01}, rank = 0 }}\n')
    assert run("check", synthetic_json, "--budget", b).returncode == 0


def test_unknown_metric_is_a_usage_error_exit_2(tmp_path, synthetic_json):
    b = budget(tmp_path, '[budgets]\n"breakdown.idel_pct" = { max = 10 }\n')
    proc = run("check", synthetic_json, "--budget", b)
    assert proc.returncode == 2
    assert "unknown budget metric(s): breakdown.idel_pct" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text,problem", [
    ('[budgets]\n"breakdown.idle_pct" = 10\n', "must be a table"),
    ('[budgets]\n"breakdown.idle_pct" = { maximum = 10 }\n', "unknown keys"),
    ('[budgets]\n"breakdown.idle_pct" = { rank = 1 }\n', "sets no limit"),
    ('[budgets\n', "invalid TOML"),
    ('[other]\nx = 1\n', "no budgets"),
    # Found by a sweep of odd CLI arguments: an internal error, or a budget that could never fail.
    ('budgets = [1, 2]\n', "[budgets] must be a table of budgets"),
    ('tool = 5\n', "[tool] must be a table"),
    ('[tool.profkit]\nbudgets = "x"\n', "[tool.profkit.budgets] must be a table of budgets"),
    ('[budgets]\n"breakdown.idle_pct" = { max = nan }\n', "max must be a number"),
    ('[budgets]\n"breakdown.idle_pct" = { max = true }\n', "max must be a number"),
    ('[budgets]\n"breakdown.idle_pct" = { max = 5, rank = "0" }\n', "rank must be a rank number"),
    ('[budgets]\n"breakdown.idle_pct" = { max = 5, rank = -1 }\n', "rank must be a rank number"),
])
def test_bad_budget_files_exit_2(tmp_path, synthetic_json, text, problem):
    proc = run("check", synthetic_json, "--budget", budget(tmp_path, text))
    assert proc.returncode == 2 and problem in proc.stderr and proc.stderr.count("\n") == 1


def test_no_budget_file_exit_2(tmp_path, synthetic_json):
    proc = run("check", synthetic_json, cwd=tmp_path)
    assert proc.returncode == 2 and "no budget file" in proc.stderr


def test_budgets_found_in_pyproject_upward(tmp_path, synthetic_json):
    (tmp_path / "pyproject.toml").write_text('[tool.profkit.budgets]\n"breakdown.idle_pct" = { max = 100 }\n')
    deeper = tmp_path / "a" / "b"
    deeper.mkdir(parents=True)
    assert budgets_mod.find_config(deeper) == tmp_path / "pyproject.toml"
    assert run("check", synthetic_json, cwd=deeper).returncode == 0


def test_trace_that_cannot_answer_exit_3(tmp_path):
    """The CPU-only sample has no device activity: an idle budget cannot be checked."""
    b = budget(tmp_path, '[budgets]\n"breakdown.idle_pct" = { max = 10 }\n')
    proc = run("check", CPU_ONLY, "--budget", b, "--junit", tmp_path / "j.xml")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    case = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase")
    assert case.find("skipped") is not None
    # The reason is the trace's, not a guess.
    assert case.find("skipped").get("message") == (
        "breakdown.idle_pct is null in the trace's results: the trace has no device activity")


def test_a_missing_leaf_says_what_the_section_holds():
    result = {"traces": [{"rank": 0, "breakdown": {"device_activity": True},
                          "communication": {"comm_kernels": 0, "groups": []}}], "findings": []}
    [outcome] = check_mod.evaluate(result, [budgets_mod.Budget("communication.exposed_pct", max=5)],
                                   {"communication.exposed_pct"})
    assert outcome.status == "unanswerable"
    assert outcome.message == ("the trace's results have no communication.exposed_pct (communication holds only "
                               "comm_kernels, groups): the trace has no communication kernels")


@pytest.mark.parametrize("metric,value,shown,unit", [
    ("idle.by_cause_ns_per_step.host_bound", 1_753_814, "1.75 ms", "ns"),
    ("findings.comm.exposed.impact_ns", 512, "512 ns", "ns"),
    ("breakdown.idle_pct", 11.411, "11.41%", "%"),
    ("findings.host.sync_in_steady_state.count", 3, "3", ""),
    ("kernels.launch_latency.idle_stream.count", 12345, "12,345", ""),
])
def test_values_shown_in_their_unit(metric, value, shown, unit):
    b = budgets_mod.Budget(metric, max=1)
    assert (b.unit, b.show(value)) == (unit, shown)


def test_a_failure_shows_exact_values_where_rounding_hides_the_difference():
    b = budgets_mod.Budget("idle.by_cause_ns_per_step.host_bound", max=1_750_000)
    result = {"traces": [{"rank": 0, "idle": {"by_cause_ns_per_step": {"host_bound": 1_753_814}}}], "findings": []}
    [outcome] = check_mod.evaluate(result, [b], {b.metric})
    assert outcome.status == "fail"
    assert outcome.message == "1.75 ms (1,753,814 ns) > max 1.75 ms (1,750,000 ns) on rank 0"
    assert b.describe() == "idle.by_cause_ns_per_step.host_bound <= 1.75 ms (worst rank)"


def test_failure_beats_unanswerable(tmp_path, synthetic_json):
    outcomes = [check_mod.Outcome(budgets_mod.Budget("a", max=1), "unanswerable"),
                check_mod.Outcome(budgets_mod.Budget("b", max=1), "fail")]
    assert check_mod.exit_code(outcomes) == 1


def test_baseline_growth(tmp_path, synthetic_json):
    b = budget(tmp_path, '[budgets]\n"steps.duration.p50_ns" = { max_increase_pct = 5 }\n')
    same = run("check", synthetic_json, "--budget", b, "--baseline", synthetic_json)
    assert same.returncode == 0, same.stdout
    slower = json.loads(synthetic_json.read_text())
    for t in slower["traces"]:
        t["steps"]["duration"]["p50_ns"] = int(t["steps"]["duration"]["p50_ns"] * 0.9)
    base = tmp_path / "faster_baseline.json"
    base.write_text(json.dumps(slower))
    grown = run("check", synthetic_json, "--budget", b, "--baseline", base)
    assert grown.returncode == 1 and "over baseline" in grown.stdout
    assert run("check", synthetic_json, "--budget", b).returncode == 3  # no baseline given


@pytest.mark.parametrize("damage,problem", [
    (lambda d: d.pop("traces"), "without its list of traces"),
    (lambda d: d.__setitem__("traces", "x"), "without its list of traces"),
    (lambda d: d.__setitem__("traces", [1, 2]), "without its list of traces"),
    (lambda d: d.__setitem__("findings", 5), "whose `findings` is not a list"),
    (None, "that is not valid JSON"),
])
def test_a_damaged_saved_baseline_is_named(tmp_path, synthetic_json, damage, problem):
    # Was an internal error (KeyError, AttributeError), or for a file cut short "not a trace
    # profkit can read", as if it were a trace.
    b = budget(tmp_path, '[budgets]\n"steps.duration.p50_ns" = { max_increase_pct = 5 }\n')
    base = tmp_path / "baseline.json"
    if damage is None:
        base.write_text(synthetic_json.read_text()[:3000])
    else:
        saved = json.loads(synthetic_json.read_text())
        damage(saved)
        base.write_text(json.dumps(saved))
    proc = run("check", synthetic_json, "--budget", b, "--baseline", base)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"profkit: error: {base}: a saved analysis (profkit.analysis/1) ")
    assert problem in proc.stderr


def test_junit_shape(tmp_path, synthetic_json):
    b = budget(tmp_path, '[budgets]\n"breakdown.idle_pct" = { max = 1 }\n"communication.exposed_pct" = { max = 100 }\n')
    run("check", synthetic_json, "--budget", b, "--junit", tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    for attr in ("tests", "failures", "errors", "skipped", "time"):
        assert suite.get(attr) is not None and float(suite.get(attr)) >= 0
    assert int(suite.get("tests")) == len(cases) == 2
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases) == 1
    for case in cases:
        assert case.get("classname") and case.get("name") and case.get("time") is not None
    failure = next(c for c in cases if c.find("failure") is not None).find("failure")
    assert failure.get("message") and failure.get("type")


def test_sarif_validates_and_has_one_result_per_finding(tmp_path, synthetic_json):
    b = budget(tmp_path, '[budgets]\n"breakdown.idle_pct" = { max = 100 }\n')
    assert run("check", synthetic_json, "--budget", b, "--sarif", tmp_path / "out.sarif").returncode == 0
    log = json.loads((tmp_path / "out.sarif").read_text())
    jsonschema.validate(log, SARIF_REQUIRED)
    findings = json.loads(synthetic_json.read_text())["findings"]
    run_ = log["runs"][0]
    assert len(run_["results"]) == len(findings) > 0
    rules = run_["tool"]["driver"]["rules"]
    assert sorted(r["id"] for r in rules) == sorted({f["rule"] for f in findings})
    for result in run_["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    assert all(r["help"]["text"] for r in rules)


def test_github_annotations_and_summary(tmp_path, synthetic_json):
    import os

    summary = tmp_path / "summary.md"
    b = budget(tmp_path, '[budgets]\n"breakdown.idle_pct" = { max = 1 }\n')
    proc = run("check", synthetic_json, "--budget", b, "--github",
               env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary)})
    assert proc.returncode == 1
    lines = [l for l in proc.stdout.splitlines() if l.startswith("::")]
    assert lines[0].startswith("::error title=profkit budget exceeded")
    assert 1 < len(lines) <= 10
    text = summary.read_text()
    assert "## profkit check" in text and "| FAIL |" in text and "Findings" in text


def test_every_catalogued_metric_is_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ci.md").read_text()
    for metric in check_mod.known_metrics():
        assert f"`{metric}`" in doc, metric


def test_catalogue_covers_what_the_samples_emit(synthetic_json):
    from profkit.metrics_catalogue import catalogue_of

    result = json.loads(synthetic_json.read_text())
    missing = set(catalogue_of([result])) - check_mod.known_metrics()
    assert not missing, f"regenerate profkit/data/metrics.txt: {sorted(missing)[:5]}"


def test_unknown_metric_raises_before_any_evaluation():
    with pytest.raises(ProfkitError, match="unknown budget metric"):
        check_mod.evaluate({"traces": [], "findings": []}, [budgets_mod.Budget("nope.x", max=1)], set())


def test_docs_ci_md_metric_list_is_generated():
    from profkit.metrics_catalogue import MARKER, markdown_list

    doc = (Path(__file__).resolve().parent.parent / "docs" / "ci.md").read_text()
    assert doc.endswith(markdown_list(sorted(check_mod.known_metrics()))), \
        "regenerate: python -m profkit.metrics_catalogue --docs docs/ci.md"
    assert doc.count(MARKER) == 1
