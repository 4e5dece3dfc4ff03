"""`analysis_html`: one self-contained HTML file. It must be well-formed (a strict parse),
load nothing from the network, show every top finding, draw bars whose segments fill them,
escape names from the trace, and draw the numbers the raw trace holds."""
import copy
import gzip
import html
import json
import re
from html.parser import HTMLParser

import pytest

import profkit
from profkit.analyses import analyze
from profkit.findings import group_across_ranks
from profkit.report_html import analysis_html
from profkit.report_html_parts import BAR_WIDTH, evidence_value

from conftest import SAMPLE_TRACES, shared_trace

SYNTHETIC = SAMPLE_TRACES / "synthetic_llm_decode_4ranks"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
RAW_TEXT = {"script", "style"}


class StrictHTML(HTMLParser):
    """Records the element tree and fails on anything a browser would have to repair:
    an end tag that does not close the innermost open element, an element left open, a
    raw '<' or '>' in text (an unescaped name)."""

    def __init__(self):
        # Raw text, so an unescaped "<" or ">" shows (escaped ones arrive as entity refs).
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.elements: list[tuple[str, dict, tuple[str, ...]]] = []  # (tag, attrs, ancestors)
        self.texts: list[tuple[str, tuple[str, ...]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), tuple(self.stack)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <rect .../> in SVG: opened and closed
        self.elements.append((tag, dict(attrs), tuple(self.stack)))

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void element </{tag}>")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'} (open: {self.stack})")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in RAW_TEXT:
            return
        if "<" in data or ">" in data:
            self.errors.append(f"unescaped markup in text: {data[:80]!r}")
        self.texts.append((data, tuple(self.stack)))


def parse_strict(text: str) -> StrictHTML:
    assert text.startswith("<!DOCTYPE html>")
    parser = StrictHTML()
    parser.feed(text)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], f"left open: {parser.stack}"
    return parser


def report_for(path):
    store = profkit.load(path)
    try:
        result = analyze(store)
    finally:
        store.close()
    return result, analysis_html(result)


@pytest.fixture(scope="module")
def synthetic():
    return report_for(SYNTHETIC)


@pytest.fixture(scope="module")
def qwen():
    return report_for(shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz"))


@pytest.fixture(scope="module")
def nsys():
    return report_for(shared_trace("nsys/h100_2gpu_torchrun_nccl_before_fix.sqlite"))


@pytest.fixture(params=["synthetic", "qwen", "nsys"])
def report(request):
    return request.getfixturevalue(request.param)


def test_output_is_well_formed(report):
    _, text = report
    parsed = parse_strict(text)
    tags = [tag for tag, _, _ in parsed.elements]
    assert tags.count("html") == tags.count("head") == tags.count("body") == 1


def test_self_contained_nothing_loaded_from_the_network(report):
    _, text = report
    parsed = parse_strict(text)
    for tag, attrs, _ in parsed.elements:
        for name in ("src", "href", "xlink:href", "action", "data"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http://", "https://", "//")), (tag, name, value)
        assert tag not in ("link", "img", "iframe", "object", "embed"), tag
        if tag == "script":
            assert "src" not in attrs
    assert "@import" not in text and "url(" not in text


def test_every_top_finding_is_shown_with_title_and_rule(report):
    result, text = report
    top = group_across_ranks(result["findings"])[:10]
    assert top
    for i, f in enumerate(top, 1):
        assert html.escape(f["title"]) in text, f["title"]
        assert f'<code>{html.escape(f["rule"])}</code>' in text
        assert f'id="finding-{i}"' in text
        assert html.escape(f["sql"].strip()) in text
    assert f'id="finding-{len(top) + 1}"' not in text
    # Grouped across ranks like the terminal: a rule with one scope on 4 ranks is one row.
    assert text.count('class="card"') == len(top)


def _bars(parsed: StrictHTML):
    """Per stacked bar: its width and its segments' widths, in document order."""
    bars, current = [], None
    for tag, attrs, ancestors in parsed.elements:
        if tag == "svg" and "bar" in (attrs.get("class") or "").split():
            current = {"width": float(attrs["data-width"]), "label": attrs.get("aria-label"), "segments": []}
            bars.append(current)
        elif tag == "rect" and "seg" in (attrs.get("class") or "").split():
            assert current is not None and "svg" in ancestors
            current["segments"].append(float(attrs["width"]))
    return bars


def test_stacked_bar_segments_fill_the_bar(synthetic):
    result, text = synthetic
    bars = _bars(parse_strict(text))
    # A critical-path bar and an idle bar per rank.
    assert len(bars) == 2 * len(result["traces"])
    for bar in bars:
        assert bar["width"] == BAR_WIDTH
        assert sum(bar["segments"]) == pytest.approx(bar["width"], abs=0.05), bar
    # Each segment is its cause's share of the critical path.
    for trace, bar in zip(result["traces"], bars[0::2]):
        attribution = [v for v in trace["critical_path"]["attribution"].values() if v > 0]
        assert len(bar["segments"]) == len(attribution)
        for width, ns in zip(bar["segments"], attribution):
            assert width == pytest.approx(BAR_WIDTH * ns / sum(attribution), abs=0.02)


def test_idle_bar_is_the_idle_attribution(qwen):
    result, text = qwen
    _, idle_bar = _bars(parse_strict(text))
    causes = [v for v in result["traces"][0]["idle"]["by_cause_pct"].values() if v > 0]
    assert sum(idle_bar["segments"]) == pytest.approx(BAR_WIDTH, abs=0.05)
    assert idle_bar["segments"] == pytest.approx([BAR_WIDTH * v / sum(causes) for v in causes], abs=0.02)


def test_names_from_the_trace_are_escaped(qwen):
    result, text = qwen
    names = [k["name"] for k in result["traces"][0]["kernels"]["top_kernels"]]
    templated = [n for n in names if "<" in n and ">" in n and "&" in n]
    assert templated, "the real trace has templated kernel names taking references"
    for name in templated:
        assert html.escape(name) in text
        assert name not in text


def test_hostile_names_are_escaped(synthetic):
    result = copy.deepcopy(synthetic[0])
    evil = "void k<int, 4>(a&b) <script>alert(1)</script> \"q\""
    result["traces"][0]["kernels"]["top_kernels"][0]["name"] = evil
    result["traces"][0]["communication"]["groups"][0]["op"] = evil
    top = max(result["findings"], key=lambda f: f["impact_ns"])
    top["title"] = evil
    top["evidence"]["origin"] = evil
    text = analysis_html(result)
    parse_strict(text)
    assert "<script>alert" not in text
    assert text.count(html.escape(evil)) >= 4


def test_top_kernel_counts_match_the_raw_trace(qwen):
    """The top kernels table's first row against the kernel events of the raw JSON."""
    path = shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz")
    events = json.load(gzip.open(path))["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"]
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e["name"], []).append(e["dur"])
    _, text = qwen
    row = re.search(r'<td class="name">(.*?)</td><td>[^<]*</td><td class="num" data-v="(\d+)">', text)
    name, calls = html.unescape(row.group(1)), int(row.group(2))
    assert name == max(by_name, key=lambda n: sum(by_name[n]))
    assert calls == len(by_name[name])
    total = re.search(re.escape(row.group(0)) + r'[^<]*</td><td class="num" data-v="(\d+)"', text)
    assert int(total.group(1)) == pytest.approx(sum(by_name[name]) * 1000, rel=1e-3)


def test_step_chart_has_a_bar_per_profiler_step(synthetic):
    raw = json.load(gzip.open(SYNTHETIC / "synthetic_llm_decode_rank0.json.gz"))["traceEvents"]
    steps = [e for e in raw if str(e.get("name", "")).startswith("ProfilerStep#") and e.get("ph") == "X"]
    result, text = synthetic
    parsed = parse_strict(text)
    rank0 = [attrs for tag, attrs, anc in parsed.elements
             if tag == "rect" and (attrs.get("class") or "").startswith("step")]
    per_rank = len(rank0) // len(result["traces"])
    assert per_rank == len(steps) == 12
    # The longest step reaches the top of the plot: its duration is the chart's maximum.
    longest = max(round(e["dur"] * 1000) for e in steps)
    assert f"max {profkit.render.human_ns(longest)}" in text
    # Step 0 is warm-up.
    assert (rank0[0].get("class") or "") == "step warm"


def test_communication_groups_table(synthetic, qwen):
    result, text = synthetic
    group = result["traces"][0]["communication"]["groups"][0]
    assert "Communication by operation and process group" in text
    assert f'data-v="{group["count"]}"' in text and f'data-v="{group["exposed_ns"]}"' in text
    assert "Communication by operation" not in qwen[1]  # a single GPU has no collectives


def test_size_on_the_sample(synthetic):
    _, text = synthetic
    assert len(text.encode()) < 300_000


def test_trace_without_device_activity_or_findings():
    result, text = report_for(SAMPLE_TRACES / "cpu_tiny_decoder_prefill_decode.json.gz")
    parse_strict(text)
    assert result["traces"][0]["breakdown"]["device_activity"] is False
    assert "no idle attribution" in text
    empty = {**result, "findings": []}
    text = analysis_html(empty)
    parse_strict(text)
    assert "No findings above the noise floor." in text


def test_evidence_durations_and_times():
    """Evidence keys name their unit: durations (*_ns, *_ns_per_step) are shown as such,
    absolute times and event ids stay raw numbers, by whole words of the key: the
    "end" in "dependency" does not make a duration a time."""
    assert evidence_value("dependency_ns_per_step", 129_405_500) == '<span title="129405500 ns">129.4 ms</span>'
    assert evidence_value("unrecorded_dependency_ns", 2_000) == '<span title="2000 ns">2 us</span>'
    assert evidence_value("gap_start_ns", 1_683_564_902_010_167_000) == "1683564902010167000"
    assert evidence_value("next_event", 106_871) == "106871"
    assert evidence_value("share_pct", 65.61) == "65.6%"
