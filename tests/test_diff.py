"""`profkit diff` on the shared regression pair (A100 vs V100) and the cross-vendor Qwen pair
(H100 vs MI300X): every figure recomputed here from SQL on the two stores."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import profkit
from profkit.analyses import analyze
from profkit.diff import diff, diff_paths, fail_on_regression, regressions
from profkit.kernel_names import normalize
from profkit.render import to_json
from profkit.report_diff import diff_markdown, print_diff

from conftest import shared_trace

PROFKIT = shutil.which("profkit", path=str(Path(sys.executable).parent))

PAIRS = {
    "regression": ("kineto/cuda/regression_pair/control_a100_rank3_of8.json.gz",
                   "kineto/cuda/regression_pair/test_v100_rank1_of2.json.gz"),
    "qwen": ("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz",
             "kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz"),
}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def case(request):
    base_path, new_path = (shared_trace(p) for p in PAIRS[request.param])
    base, new = profkit.load(base_path), profkit.load(new_path)
    result = diff(base, new, analyze(base), analyze(new))
    yield {"name": request.param, "base": base, "new": new, "diff": result, "pair": result["pairs"][0]}
    base.close()
    new.close()


# -- independent recomputation ----------------------------------------------------

def steady(store):
    """Steady steps straight from the steps table: all but the first when there are >= 3.
    The only step of a trace ends with its device work (the Qwen traces' generate runs
    2.2 ms on H100 and 4.2 ms on MI300X past its host range)."""
    steps = store.rows("SELECT step, start_ns, end_ns - start_ns AS dur FROM steps WHERE trace_id = 0 ORDER BY start_ns")
    if len(steps) == 1:
        device_end = store.scalar("SELECT max(end_ns) FROM events WHERE trace_id = 0 AND step = ? "
                                  "AND kind IN ('kernel', 'memcpy', 'memset')", [steps[0]["step"]])
        steps[0]["dur"] = max(steps[0]["dur"], device_end - steps[0]["start_ns"])
    return steps[1:] if len(steps) >= 3 else steps


def step_p50(store):
    durations = sorted(s["dur"] for s in steady(store))
    return durations[len(durations) // 2]


def device_rows(store):
    ids = [s["step"] for s in steady(store)]
    return store.rows(f"""
        SELECT event_id, kind, name, dur_ns, category FROM events
        WHERE trace_id = 0 AND kind IN ('kernel', 'memcpy', 'memset')
          AND step IN ({', '.join(str(i) for i in ids)})
    """), len(ids)


def per_step(store, keyfunc):
    rows, n = device_rows(store)
    totals, counts = defaultdict(int), defaultdict(int)
    for r in rows:
        totals[keyfunc(r)] += r["dur_ns"]
        counts[keyfunc(r)] += 1
    return {k: v / n for k, v in totals.items()}, {k: v / n for k, v in counts.items()}


def outer_ops(store):
    """device event -> outermost cpu_op above its launch, by walking parent ids in Python
    (the diff does it with a recursive SQL query)."""
    host = {r["event_id"]: r for r in store.rows(
        "SELECT event_id, parent_id, kind, name FROM events WHERE trace_id = 0 AND tid IS NOT NULL")}
    out = {}
    for launch in store.rows("SELECT runtime_event, device_event FROM launches WHERE trace_id = 0"):
        node, outer = host.get(launch["runtime_event"]), None
        while node is not None:
            if node["kind"] == "cpu_op":
                outer = node["name"]
            node = host.get(node["parent_id"])
        if outer:
            out[launch["device_event"]] = outer
    return out


# -- the tests ---------------------------------------------------------------------

def test_step_and_device_time_per_step(case):
    pair = case["pair"]
    assert pair["step"]["base_ns"] == step_p50(case["base"])
    assert pair["step"]["new_ns"] == step_p50(case["new"])
    assert pair["step"]["delta_ns"] == step_p50(case["new"]) - step_p50(case["base"])
    for side in ("base", "new"):
        rows, n = device_rows(case[side])
        assert pair["device_time"][f"{side}_ns_per_step"] == round(sum(r["dur_ns"] for r in rows) / n)
        assert pair[side]["steady_steps"] == [s["step"] for s in steady(case[side])]


def test_category_rows(case):
    base, _ = per_step(case["base"], lambda r: r["category"])
    new, _ = per_step(case["new"], lambda r: r["category"])
    rows = {r["category"]: r for r in case["pair"]["categories"]}
    assert set(rows) == set(base) | set(new)
    for cat, row in rows.items():
        assert row["base_ns_per_step"] == round(base.get(cat, 0))
        assert row["new_ns_per_step"] == round(new.get(cat, 0))
    # Parts add up to the whole.
    assert abs(sum(r["new_ns_per_step"] for r in rows.values())
               - case["pair"]["device_time"]["new_ns_per_step"]) <= len(rows)


def test_kernel_rows_ranked_and_recomputed(case):
    key = lambda r: normalize(r["name"], r["kind"])  # noqa: E731
    base_t, base_c = per_step(case["base"], key)
    new_t, new_c = per_step(case["new"], key)
    kernels = case["pair"]["kernels"]
    assert {r["key"] for r in kernels} == set(base_t) | set(new_t)
    deltas = [abs(r["delta_ns_per_step"]) for r in kernels]
    assert deltas == sorted(deltas, reverse=True)
    for row in kernels:
        k = row["key"]
        assert row["base_ns_per_step"] == round(base_t.get(k, 0))
        assert row["new_ns_per_step"] == round(new_t.get(k, 0))
        assert row["base_count_per_step"] == round(base_c.get(k, 0), 3)
        assert row["delta_ns_per_step"] == round(new_t.get(k, 0) - base_t.get(k, 0))
        assert row["status"] == ("both" if k in base_t and k in new_t else "new" if k in new_t else "vanished")
    assert {r["key"] for r in case["pair"]["new_kernels"]} == set(new_t) - set(base_t)
    assert {r["key"] for r in case["pair"]["vanished_kernels"]} == set(base_t) - set(new_t)


def test_op_rows_match_a_python_walk_of_the_host_tree(case):
    for side in ("base", "new"):
        ops = outer_ops(case[side])
        totals, _ = per_step(case[side], lambda r: ops.get(r["event_id"], "(no cpu op)"))
        rows = {r["key"]: r for r in case["pair"]["ops"]}
        for op, ns in totals.items():
            assert rows[op][f"{side}_ns_per_step"] == round(ns)


def test_top_differences(case):
    """The headline rows, checked against the timeline: named raw kernels and their sums."""
    kernels = {r["key"]: r for r in case["pair"]["kernels"]}
    top = [r["key"] for r in case["pair"]["kernels"][:5]]
    if case["name"] == "qwen":
        # MI300X spends more per step on GEMMs and attention, less on elementwise kernels.
        assert top[0] == "gemm:bf16" and "attention:fwd" in top
        h100 = case["base"].scalar("SELECT sum(dur_ns) FROM events WHERE kind = 'kernel' AND step = 6 "
                                   "AND name LIKE 'sm90_xmma_gemm_bf16%'")
        mi300 = case["new"].scalar("SELECT sum(dur_ns) FROM events WHERE kind = 'kernel' AND step = 6 "
                                   "AND regexp_matches(name, '^Cijk_[A-Za-z]+_[A-Za-z]+_B')")
        assert kernels["gemm:bf16"]["base_ns_per_step"] == h100
        assert kernels["gemm:bf16"]["new_ns_per_step"] == mi300
        assert kernels["gemm:bf16"]["delta_ns_per_step"] > 0
        assert {"aten::linear"} <= set(kernels["gemm:bf16"]["ops"])
    else:
        # V100: sgemm instead of A100 tf32 tensor cores, and hundreds of new DtoD copies.
        assert top[:2] == ["gemm:f32", "memory:memcpy_dtod"]
        ids = ", ".join(str(s["step"]) for s in steady(case["new"]))
        dtod = case["new"].rows(f"SELECT count(*) AS n, sum(dur_ns) AS t FROM events WHERE kind = 'memcpy' "
                                f"AND name LIKE 'Memcpy DtoD%' AND step IN ({ids})")[0]
        row = kernels["memory:memcpy_dtod"]
        n = len(steady(case["new"]))
        assert row["new_count_per_step"] == round(dtod["n"] / n, 3)
        assert row["new_ns_per_step"] == round(dtod["t"] / n)
        assert row["new_count_per_step"] > 100 * row["base_count_per_step"]


def test_matching_rate(case):
    m = case["pair"]["matching"]
    for side in ("base", "new"):
        assert 0 <= m[side]["op_shape_pct"] <= m[side]["op_pct"] <= m[side]["with_op_pct"] <= 100
        assert m[side]["kernel_key_pct"] > 99
    if case["name"] == "qwen":
        # Same model, other vendor: every operator+shapes launching work on one side is on
        # the other, and what has no launching op (the trace lost the first launches) is
        # matched by kernel key.
        for side in ("base", "new"):
            assert m[side]["op_shape_pct"] == m[side]["with_op_pct"]
            assert m[side]["matched_pct"] > 99


def test_findings_diff(case):
    base_rules = {f["rule"] for f in analyze(case["base"])["findings"]}
    new_rules = {f["rule"] for f in analyze(case["new"])["findings"]}
    findings = case["pair"]["findings"]
    for f in findings["appeared"]:
        # Impact 0 is a finding too: information (hotspots) or a replay that found no saving.
        assert f["base_impact_ns"] is None and f["new_impact_ns"] >= 0
    for f in findings["vanished"]:
        assert f["new_impact_ns"] is None
    # Rules present on one side only can only appear or vanish.
    listed = {s: {f["rule"] for f in rows} for s, rows in findings.items()}
    assert new_rules - base_rules <= listed["appeared"]
    assert base_rules - new_rules <= listed["vanished"]
    if case["name"] == "qwen":
        # GPU 0 on H100 and GPU 2 on MI300X are the same device of the job: matched.
        grew = {f["rule"]: f for f in findings["grew"]}
        assert "idle.host_bound" in grew
        assert grew["idle.host_bound"]["new_impact_ns"] > grew["idle.host_bound"]["base_impact_ns"]


def test_fail_on_regression(case):
    delta_pct = 100.0 * (step_p50(case["new"]) - step_p50(case["base"])) / step_p50(case["base"])
    assert fail_on_regression(case["diff"], delta_pct - 1)
    assert not fail_on_regression(case["diff"], delta_pct + 1)
    if case["name"] == "regression":
        assert delta_pct > 50 and fail_on_regression(case["diff"], 10)
        assert "step time" in regressions(case["diff"], 10)[0]
    else:
        assert delta_pct < 0 and not fail_on_regression(case["diff"], 0)


def test_renderings(case):
    from rich.console import Console

    out = io.StringIO()
    print_diff(case["diff"], 5, Console(file=out, width=220))
    text = out.getvalue()
    top = case["pair"]["kernels"][0]["key"]
    assert top in text and "step time" in text
    md = diff_markdown(case["diff"], 5)
    assert md.startswith("# profkit diff") and f"| {top} |" in md
    assert to_json(case["diff"])   # JSON-serialisable


def test_trace_against_itself_is_all_zero():
    path = shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    result = diff_paths(path, path)
    pair = result["pairs"][0]
    assert pair["step"]["delta_ns"] == 0 and pair["device_time"]["delta_ns_per_step"] == 0
    assert all(r["delta_ns_per_step"] == 0 for r in pair["kernels"] + pair["ops"] + pair["categories"])
    assert pair["new_kernels"] == [] and pair["vanished_kernels"] == []
    assert all(r["delta_pts"] == 0 for r in pair["breakdown"])
    f = pair["findings"]
    assert not (f["appeared"] or f["vanished"] or f["grew"] or f["shrank"]) and f["unchanged"]
    assert pair["matching"]["base"]["matched_pct"] == 100.0
    assert not fail_on_regression(result, 0)


def test_rank_to_rank_pairing():
    path = shared_trace("kineto/cuda/sampled_2ranks")
    result = diff_paths(path, path)
    assert result["pairing"]["mode"] == "rank_to_rank"
    assert [p["base"]["rank"] for p in result["pairs"]] == [p["new"]["rank"] for p in result["pairs"]]
    assert len(result["pairs"]) == 2


def test_first_trace_pairing_when_ranks_differ():
    store_dir = shared_trace("kineto/cuda/regression_pair")
    single = shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    result = diff_paths(store_dir, single)
    assert result["pairing"]["mode"] == "first_trace"
    assert "first trace" in result["pairing"]["note"]
    # the lowest rank of each side: test_v100_rank1_of2 before control_a100_rank3_of8
    assert result["pairs"][0]["base"]["rank"] == 1 and "rank 1 vs rank 0" in result["pairing"]["note"]


def test_cli_diff_gate_and_formats(tmp_path):
    import shutil
    import subprocess
    import sys as _sys
    from pathlib import Path as _Path

    profkit_bin = shutil.which("profkit", path=str(_Path(_sys.executable).parent))
    pair = shared_trace("kineto/cuda/regression_pair")
    base, new = pair / "control_a100_rank3_of8.json.gz", pair / "test_v100_rank1_of2.json.gz"
    gate = subprocess.run([profkit_bin, "diff", str(base), str(new), "--fail-on-regression", "10"],
                          capture_output=True, text=True)
    assert gate.returncode == 1 and "profkit: regression: rank" in gate.stderr
    assert "Traceback" not in gate.stderr
    ok = subprocess.run([profkit_bin, "diff", str(base), str(base), "--fail-on-regression", "0",
                         "--format", "json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["schema"] == "profkit.diff/1"
    md = subprocess.run([profkit_bin, "diff", str(base), str(new), "--format", "markdown", "--top", "5"],
                        capture_output=True, text=True)
    assert md.returncode == 0 and md.stdout.startswith("#")


def test_a_saved_analysis_is_refused_by_name(tmp_path):
    # diff needs per-kernel and per-operator times, which a saved analysis lacks; it said
    # "not a trace profkit can read" before.
    saved = tmp_path / "analysis.json"
    saved.write_text(json.dumps({"schema": "profkit.analysis/1", "traces": [], "findings": []}))
    proc = subprocess.run([PROFKIT, "diff", str(saved), str(saved)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "a saved analysis (profkit.analysis/1); diff compares traces or their .duckdb stores" in proc.stderr
