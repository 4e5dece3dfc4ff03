"""Passes over the store, each a small module. Installed as `profkit.analyses`.

Every pass module exposes `NAME` (its section in the JSON output) and
`run(ctx: Context) -> PassResult`. A pass reads only the store (SQL first), never a file,
and never asks which parser filled the store. Passes run in `PASSES` order; a later pass
may read an earlier one's metrics from `ctx.results` (the steps pass goes first, so every
other pass sees the step windows in `ctx.steps`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable

from profkit.errors import ProfkitError
from profkit.findings import Finding, rank
from profkit.gc_pause import paused_gc
from profkit.render import DEVICE_NOUNS, device_label, device_noun, number_ranges
from profkit.store import Store

PASSES = ("steps", "breakdown", "idle", "kernels", "communication", "host", "critical_path")

ANALYSIS_SCHEMA = "profkit.analysis/1"

# Frameworks whose terms recommendations can use, and what in a store shows one: a word in
# the trace's producer, host events by name (PyTorch's operators in a Kineto trace, or as
# NVTX ranges in an Nsight report), or kernels by name (ATen's own, in a device-only
# capture such as rocprofv3's of a PyTorch run). A native program (CloverLeaf, llama.cpp)
# gets advice in runtime terms; another framework is one entry here and one text per
# finding that needs it.
FRAMEWORKS = {"pytorch": {"producer_word": "pytorch", "host_name_like": "aten::%",
                          "kernel_name_like": "%at::native::%"}}


@dataclass
class Step:
    step: int
    start_ns: int
    end_ns: int
    source: str               # profiler_step, annotation, nvtx, graph_replay, kernel_pattern, whole_trace
    phase: str | None = None  # prefill / decode for LLM serving traces, else None

    @property
    def dur_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass
class PassResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Context:
    store: Store
    trace_id: int
    trace: dict[str, Any]                   # the traces row
    steps: list[Step] = field(default_factory=list)
    selected_step: int | None = None        # --step N: restrict per-step figures to it
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)  # what several passes load, loaded once
    # Steady steps of every trace analysed together with this one, by trace id (this one's
    # too): cross-rank figures are per step of each rank, and a rank's steps may be inferred
    # (not in the steps table). Empty when the trace is analysed alone.
    peer_steps: dict[int, list["Step"]] = field(default_factory=dict)

    @classmethod
    def of(cls, store: Store, trace_id: int, selected_step: int | None = None) -> "Context":
        """A fresh context for one trace of the store (its traces row read here)."""
        trace = store.rows("SELECT * FROM traces WHERE trace_id = ?", [trace_id])[0]
        return cls(store=store, trace_id=trace_id, trace=trace, selected_step=selected_step)

    def device_events(self):
        """The trace's device activities with their launches (step_inference.DeviceEvents),
        loaded once for all passes."""
        if "device_events" not in self.memo:
            from .step_inference import load_device_events

            self.memo["device_events"] = load_device_events(self.store, self.trace_id)
        return self.memo["device_events"]

    @property
    def steady_steps(self) -> list[Step]:
        """Steps after the first (warm-up) when there are at least three, else all."""
        chosen = [s for s in self.steps if self.selected_step is None or s.step == self.selected_step]
        if self.selected_step is None and len(chosen) >= 3:
            return chosen[1:]
        return chosen

    @property
    def step_ns(self) -> int:
        """Median duration of the steady-state steps (0 when there are none)."""
        durations = sorted(s.dur_ns for s in self.steady_steps)
        if not durations:
            return 0
        return durations[len(durations) // 2]

    def device_noun(self, device: int | None = None, nouns: dict[str, str] = DEVICE_NOUNS,
                    default: str = "device") -> str:
        """What the findings call a device: "GPU" for the vendors whose devices are GPUs
        (DEVICE_NOUNS), else "device" (a custom accelerator's). Without `device`, the
        trace's devices together. `nouns`, `default`: another vendor mapping (UNIT_NOUNS)."""
        chosen = [device] if device is not None else list(self._device_vendors()) or [None]
        found = {device_noun(self._vendor(d), nouns, default) for d in chosen}
        return found.pop() if len(found) == 1 else default

    def device_label(self, device: int | None) -> str:
        """"GPU 3", "Device 17": a device as findings' titles name it (render.device_label)."""
        return device_label(device, self._vendor(device))

    def _device_vendors(self) -> dict:
        if "device_vendors" not in self.memo:
            self.memo["device_vendors"] = {r["device"]: r["vendor"] for r in self.store.rows(
                "SELECT device, vendor FROM devices WHERE trace_id = ?", [self.trace_id])}
        return self.memo["device_vendors"]

    def _vendor(self, device: int | None) -> str | None:
        # A device with no devices row (or no vendor in it) is of the trace's vendor.
        return self._device_vendors().get(device) or self.trace.get("vendor")

    @property
    def framework(self) -> str | None:
        """The framework the trace shows (FRAMEWORKS), else None."""
        if "framework" not in self.memo:
            self.memo["framework"] = next((name for name, marks in FRAMEWORKS.items() if self._shows(marks)), None)
        return self.memo["framework"]

    def _shows(self, marks: dict[str, str]) -> bool:
        if marks["producer_word"] in (self.trace.get("producer") or "").lower():
            return True
        return bool(self.store.rows(
            "SELECT 1 AS x FROM events WHERE trace_id = ? AND ((device IS NULL AND name LIKE ?) "
            "OR (kind = 'kernel' AND name LIKE ?)) LIMIT 1",
            [self.trace_id, marks["host_name_like"], marks["kernel_name_like"]]))

    def advice(self, texts: dict[str | None, str]) -> str:
        """A recommendation in the terms of the trace's framework: `texts[framework]`, else
        the general `texts[None]`."""
        return texts.get(self.framework) or texts[None]

    def share(self, ns_per_step: float) -> float:
        return 100.0 * ns_per_step / self.step_ns if self.step_ns else 0.0

    def base_scope(self, **extra: Any) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "rank": self.trace.get("rank"), **extra}


def pass_module(name: str):
    return import_module(f"{__name__}.{name}")


def analyze_trace(store: Store, trace_id: int, selected_step: int | None = None,
                  passes: tuple[str, ...] = PASSES) -> tuple[dict[str, Any], list[Finding]]:
    """Run every pass on one trace: (metrics by section, findings)."""
    return _finish(*_start(store, trace_id, selected_step, passes), passes)


def _start(store: Store, trace_id: int, selected_step: int | None,
           passes: tuple[str, ...]) -> tuple[Context, list[Finding]]:
    """A trace's context with its steps found (the first pass; `passes` without it: none)."""
    ctx = Context.of(store, trace_id, selected_step)
    findings: list[Finding] = []
    if passes and passes[0] == "steps":
        findings += _run_pass(ctx, "steps")
        if selected_step is not None and not ctx.steady_steps:
            # --step N on a trace without a step N: a mistake to say, not a whole-trace analysis
            raise ProfkitError(f"{ctx.trace.get('path')}: no step {selected_step} "
                               f"(steps: {number_ranges(s.step for s in ctx.steps)})")
    return ctx, findings


def _run_pass(ctx: Context, name: str) -> list[Finding]:
    result = pass_module(name).run(ctx)
    ctx.results[name] = result.metrics
    return result.findings


def _finish(ctx: Context, findings: list[Finding], passes: tuple[str, ...]) -> tuple[dict[str, Any], list[Finding]]:
    """The passes after the steps pass, and the replayed impacts."""
    store, trace_id = ctx.store, ctx.trace_id
    for name in passes:
        if name not in ctx.results:
            findings = findings + _run_pass(ctx, name)
    if "critical_path" in passes:
        # Where a what-if removes a finding's cause, its impact is the replayed saving.
        from .critical_path import _windows, refine_impacts

        findings = refine_impacts(store, trace_id, findings, windows=_windows(ctx),
                                  report=ctx.results.get("critical_path"))
    return ctx.results, findings


def analyze(store: Store, selected_step: int | None = None, passes: tuple[str, ...] = PASSES,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole analysis of a store, in the documented `profkit.analysis/1` shape.
    `progress`, if given, is told what is being done ("passes 3/32": the passes of the third
    of 32 traces), for a status line: many ranks take minutes."""
    with paused_gc():
        return _analyze(store, selected_step, passes, progress or (lambda text: None))


def _input_accounting(store: Store, trace_id: int) -> dict[str, Any]:
    """What the parser read and what it could not store, so that a report on a damaged
    input says that its figures leave records out (never a silent partial result)."""
    records, not_stored = store.con.execute(
        "SELECT source_records, issue_count FROM traces WHERE trace_id = ?", [trace_id]).fetchone()
    issues = store.rows("""
        SELECT reason, count AS records, unusable, example FROM ingest_issues WHERE trace_id = ?
        ORDER BY unusable DESC, count DESC, reason
    """, [trace_id])
    return {"records_read": records, "records_not_stored": not_stored,
            "unusable_records": sum(i["records"] for i in issues if i["unusable"]), "issues": issues}


def _analyze(store: Store, selected_step: int | None, passes: tuple[str, ...],
             progress: Callable[[str], None]) -> dict[str, Any]:
    traces_out = []
    all_findings: list[Finding] = []
    if "critical_path" in passes:
        from .critical_path import prefetch

        prefetch(store)
    # Traces in rank order (trace ids follow the inputs' names: rank10 may come before rank2).
    trace_ids = [tid for tid, in store.con.execute(
        "SELECT trace_id FROM traces ORDER BY rank NULLS LAST, trace_id").fetchall()]
    # Every trace's steps before any other pass: a rank's cross-rank figures are per step of
    # the others too. The others' loaded device events are dropped meanwhile (each pass
    # reloads what it needs), so that only one trace's are held at a time.
    started = []
    count = len(trace_ids)
    for i, trace_id in enumerate(trace_ids, start=1):
        progress(f"steps {i}/{count}")
        started.append(_start(store, trace_id, selected_step, passes))
        if len(started) > 1:
            started[-1][0].memo.clear()
    peers = {ctx.trace_id: ctx.steady_steps for ctx, _ in started} if len(started) > 1 else {}
    for ctx, _ in started:
        ctx.peer_steps = peers
    critical_path_last = len(started) > 1 and "critical_path" in passes
    if critical_path_last:
        # Every trace's other passes first: the critical path waits for the graph of all
        # ranks (built on a worker since prefetch), which then builds beside every rank's
        # passes instead of the first one's alone (4 ranks of 1M events: it waited 9.4 s).
        # Each trace keeps its replay windows, not its device events, meanwhile; the
        # windows are every trace's steps, for all (critical_path.SharedWindows).
        from .critical_path import SharedWindows

        windows = SharedWindows(store)
        for i, (ctx, steps_findings) in enumerate(started):
            progress(f"passes {i + 1}/{count}")
            _, findings = _finish(ctx, steps_findings, tuple(p for p in passes if p != "critical_path"))
            windows.add(ctx)
            ctx.memo.pop("device_events", None)
            started[i] = (ctx, findings)
        from .critical_path import replay_ahead

        replay_ahead(store, [(ctx.trace_id, findings) for ctx, findings in started], windows.windows)
    for i, (trace_id, (ctx, steps_findings)) in enumerate(zip(trace_ids, started), start=1):
        progress(f"{'critical path' if critical_path_last else 'passes'} {i}/{count}")
        metrics, findings = _finish(ctx, steps_findings, passes)
        metrics = {name: metrics[name] for name in passes if name in metrics}  # in pass order, however run
        trace = store.rows("""
            SELECT trace_id, path, format, format_version, rank, world_size, vendor FROM traces WHERE trace_id = ?
        """, [trace_id])[0]
        devices = store.rows("SELECT device, node_id, vendor, name, arch, sm_count, memory_bytes FROM devices "
                             "WHERE trace_id = ? ORDER BY device", [trace_id])
        traces_out.append({**trace, "devices": devices, "input": _input_accounting(store, trace_id), **metrics})
        all_findings.extend(findings)
    return {
        "schema": ANALYSIS_SCHEMA,
        "traces": traces_out,
        "findings": [f.to_dict() for f in rank(all_findings)],
        "inputs_not_read": store.inputs_not_read(),
    }


def read_saved(path: str) -> dict[str, Any] | None:
    """A saved `profkit analyze --format json` (what `analyze` returns) from `path`, or None
    where the file is not one. A file that says it is one but is not whole (cut short, or
    without its per-trace list) is a mistake to name, not a trace to parse."""
    import json
    from pathlib import Path

    if not Path(path).is_file():  # a directory, a store's absence, or a pipe (read once: never looked into)
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(200)
    except (OSError, UnicodeDecodeError):
        return None
    if '"schema"' not in head or ANALYSIS_SCHEMA not in head:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ProfkitError(f"{path}: a saved analysis ({ANALYSIS_SCHEMA}) that is not valid JSON: {exc}") from None
    traces = saved.get("traces") if isinstance(saved, dict) else None
    if not isinstance(traces, list) or not all(isinstance(t, dict) for t in traces):
        raise ProfkitError(f"{path}: a saved analysis ({ANALYSIS_SCHEMA}) without its list of traces "
                           "(`traces`: one object per trace)")
    if not isinstance(saved.get("findings", []), list):
        raise ProfkitError(f"{path}: a saved analysis ({ANALYSIS_SCHEMA}) whose `findings` is not a list")
    return saved
