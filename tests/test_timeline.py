"""The Perfetto timeline export: written with the `perfetto` package's protos and read
back with the same protos (no trace processor), checked against the store's SQL and, for
the AlexNet trace, against the raw Kineto JSON."""
from __future__ import annotations

import gzip
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from conftest import SAMPLE_TRACES, shared_trace
from profkit.errors import ProfkitError
from profkit.ingest import Sink, ingest
from profkit.store import Store

pb = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")
from profkit.timeline import CRITICAL_PATH_FLOW_BASE as CP_BASE, write_timeline  # noqa: E402

BEGIN, END, INSTANT, COUNTER = 1, 2, 3, 4


# -- reading a .pftrace back -----------------------------------------------------------

class Parsed:
    """Tracks, slices and flows of a .pftrace, decoded with the perfetto protos."""

    def __init__(self, path: Path):
        trace = pb.Trace.FromString(path.read_bytes())
        self.packets = list(trace.packet)
        names: dict[int, str] = {}
        self.tracks: dict[int, object] = {}
        self.events: list[dict] = []
        for order, p in enumerate(self.packets):
            for n in p.interned_data.event_names:
                names[n.iid] = n.name
            if p.HasField("track_descriptor"):
                self.tracks[p.track_descriptor.uuid] = p.track_descriptor
            if p.HasField("track_event"):
                e = p.track_event
                self.events.append({
                    "order": order, "ts": p.timestamp, "type": e.type, "track": e.track_uuid,
                    "name": names.get(e.name_iid, e.name) if e.type in (BEGIN, INSTANT) else None,
                    "out": list(e.flow_ids), "in": list(e.terminating_flow_ids),
                    "notes": {a.name: _note_value(a) for a in e.debug_annotations},
                    "value": e.double_counter_value,
                })
        self.slices = [e for e in self.events if e["type"] in (BEGIN, INSTANT)]

    def name(self, uuid: int) -> str:
        return self.tracks[uuid].name

    def children(self, parent: int) -> list[int]:
        return [u for u, d in self.tracks.items() if d.parent_uuid == parent]

    def roots(self) -> dict[str, int]:
        return {d.name: u for u, d in self.tracks.items() if not d.parent_uuid}

    def logical(self, parent: int) -> dict[str, list[int]]:
        """Child tracks of `parent` by name; lanes of one track share its name and merge key."""
        out: dict[str, list[int]] = defaultdict(list)
        keys: dict[str, set] = defaultdict(set)
        for u in self.children(parent):
            d = self.tracks[u]
            out[d.name].append(u)
            keys[d.name].add(d.sibling_merge_key)
        for name, k in keys.items():
            assert len(k) == 1, f"lanes of {name} disagree on their merge key: {k}"
        return dict(out)

    def slice_count(self, uuids) -> int:
        wanted = set(uuids)
        return sum(1 for e in self.slices if e["track"] in wanted)

    def slices_on(self, uuids) -> list[dict]:
        wanted = set(uuids)
        return [e for e in self.slices if e["track"] in wanted]


def _note_value(a):
    for field in ("string_value", "int_value", "double_value", "bool_value"):
        if a.HasField(field):
            return getattr(a, field)
    return None


def assert_well_nested(parsed: Parsed) -> None:
    """What Perfetto needs of every track: in time order, each END closes the innermost
    open slice, no END without a BEGIN, and nothing left open at the end."""
    by_track = defaultdict(list)
    for e in parsed.events:
        if e["type"] in (BEGIN, END):
            by_track[e["track"]].append(e)
    for uuid, events in by_track.items():
        stack = []
        for e in sorted(events, key=lambda e: (e["ts"], e["order"])):
            if e["type"] == BEGIN:
                stack.append(e["ts"])
            else:
                assert stack, f"END without BEGIN on {parsed.name(uuid)}"
                assert stack.pop() <= e["ts"]
        assert not stack, f"{len(stack)} slices left open on {parsed.name(uuid)}"


def flow_pairs(parsed: Parsed) -> dict[int, tuple[dict, dict]]:
    """flow id -> (slice it starts on, slice it ends on)."""
    starts = {f: e for e in parsed.slices for f in e["out"]}
    ends = {f: e for e in parsed.slices for f in e["in"]}
    return {f: (starts[f], ends[f]) for f in starts.keys() & ends.keys()}


# -- fixtures --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alexnet():
    path = shared_trace("kineto/cuda/a100_alexnet_train.json.gz")
    store = Store.open(None)
    ingest([path], store)
    return path, store


def _findings(store: Store) -> list[dict]:
    try:
        from profkit.analyses import analyze

        findings = analyze(store)["findings"]
    except Exception:  # the analyses are another helper's work in progress
        findings = []
    if findings:
        return findings
    trace = store.rows("SELECT trace_id, rank, start_ns, end_ns FROM traces ORDER BY trace_id")[0]
    return [{"rule": "test.window", "title": "a window", "impact_ns": 5, "share_pct": 1.0,
             "scope": {"trace_id": trace["trace_id"], "rank": trace["rank"]},
             "evidence": {"windows": [[trace["start_ns"], trace["start_ns"] + 10]]},
             "sql": "SELECT 1", "recommendation": "look here", "impact_basis": "estimate"}]


def _critical_path(store: Store, trace_id: int) -> tuple[list[dict], list[dict]]:
    """A made-up path over real events: launch -> its kernel -> the next kernel, with an
    event-less gap segment in between. Returns (segments, the three events)."""
    first, second = store.rows("""
        SELECT l.src_event, l.dst_event FROM links l JOIN events d ON d.event_id = l.dst_event
        WHERE l.kind = 'launch' AND l.trace_id = ? ORDER BY d.start_ns LIMIT 2
    """, [trace_id])
    ids = [first["src_event"], first["dst_event"], second["dst_event"]]
    ev = {r["event_id"]: r for r in store.rows(
        f"SELECT event_id, name, start_ns, end_ns FROM events WHERE event_id IN ({','.join(map(str, ids))})")}
    r, k1, k2 = (ev[i] for i in ids)
    segments = [
        {"event_id": r["event_id"], "start_ns": r["start_ns"], "end_ns": r["end_ns"], "cause": "host", "name": r["name"]},
        {"event_id": None, "start_ns": r["end_ns"], "end_ns": k1["start_ns"], "cause": "launch_latency", "name": ""},
        {"event_id": k1["event_id"], "start_ns": k1["start_ns"], "end_ns": k1["end_ns"], "cause": "compute:gemm", "name": k1["name"]},
        {"event_id": k2["event_id"], "start_ns": k2["start_ns"], "end_ns": k2["end_ns"], "cause": "compute:other", "name": k2["name"]},
    ]
    return segments, [r, k1, k2]


# -- tests -------------------------------------------------------------------------------

def test_alexnet_tracks_slices_flows_against_raw_json_and_sql(alexnet, tmp_path):
    path, store = alexnet
    segments, (r, k1, k2) = _critical_path(store, 0)
    findings = _findings(store)
    out = tmp_path / "alexnet.pftrace"
    stats = write_timeline(store, out, critical_path=segments, findings=findings)
    parsed = Parsed(out)
    assert stats["bytes"] == out.stat().st_size and stats["packets"] == len(parsed.packets)
    assert len({p.trusted_packet_sequence_id for p in parsed.packets}) == 1
    assert_well_nested(parsed)

    # Raw Kineto JSON, read independently: complete events per (pid, tid) and thread names.
    doc = json.load(gzip.open(path))
    raw = Counter((e["pid"], e["tid"]) for e in doc["traceEvents"] if e.get("ph") == "X")
    thread_names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
                    if e.get("ph") == "M" and e.get("name") == "thread_name"}
    root = parsed.roots()["rank 0 (kineto) a100_alexnet_train.json.gz"]
    groups = {parsed.name(u): u for u in parsed.children(root)}
    host_pid = next(pid for (pid, tid) in thread_names if isinstance(pid, int) and pid == tid)
    process = next(u for n, u in groups.items() if n.startswith(f"process {host_pid} "))
    host_tracks = parsed.logical(process)
    main_thread = thread_names[(host_pid, host_pid)]
    assert parsed.slice_count(host_tracks[main_thread]) == raw[(host_pid, host_pid)] == 728
    gpu = next(u for n, u in groups.items() if n.startswith("GPU 0"))
    streams = parsed.logical(gpu)
    for stream in (7, 20):
        assert parsed.slice_count(streams[f"stream {stream}"]) == raw[(0, stream)]

    # Every thread and stream of the store is one logical track with all its events.
    expected = store.rows("""
        SELECT CASE WHEN tid IS NOT NULL THEN 'host' ELSE 'device' END AS side,
               CASE WHEN tid IS NOT NULL THEN pid ELSE device END AS a,
               CASE WHEN tid IS NOT NULL THEN tid ELSE stream END AS b, count(*) AS n
        FROM events GROUP BY ALL""")
    found = {}
    for gname, g in groups.items():
        for tname, lanes in parsed.logical(g).items():
            found[(gname, tname)] = parsed.slice_count(lanes)
    assert len(found) == len(expected)
    assert sorted(found.values()) == sorted(row["n"] for row in expected)
    device_rows = [row for row in expected if row["side"] == "device"]
    for row in device_rows:
        gname = next(n for n in groups if n.startswith(f"GPU {row['a']}"))
        assert found[(gname, f"stream {row['b']}")] == row["n"]
    overlay_uuids = {u for lanes in parsed.logical(0).values() for u in lanes
                     if parsed.name(u) in ("Critical path", "Findings")}
    on_trace_tracks = [e for e in parsed.slices if e["track"] not in overlay_uuids]
    assert len(on_trace_tracks) == store.scalar("SELECT count(*) FROM events")

    # Timestamps are the store's (clock offset 0 here).
    thread_lanes = host_tracks[main_thread]
    assert min(e["ts"] for e in parsed.slices_on(thread_lanes)) == store.scalar(
        "SELECT min(start_ns) FROM events WHERE pid = ? AND tid = ?", [host_pid, host_pid])

    # Launch arrows: one per launch link, from the runtime call to the kernel it enqueued.
    launches = store.rows("SELECT runtime_name, device_name FROM launches")
    pairs = flow_pairs(parsed)
    launch_pairs = [(s["name"], d["name"]) for f, (s, d) in pairs.items() if f < CP_BASE]
    assert len(launch_pairs) == len(launches) == stats["flows_launch"] == 98
    assert Counter(launch_pairs) == Counter((x["runtime_name"], x["device_name"]) for x in launches)
    host_uuids = {u for lanes in host_tracks.values() for u in lanes}
    device_uuids = {u for lanes in streams.values() for u in lanes}
    for f, (s, d) in pairs.items():
        if f < CP_BASE:
            assert s["track"] in host_uuids and d["track"] in device_uuids

    # Critical path: one slice per segment on its own track, arrows joining its events.
    cp = parsed.slices_on(parsed.logical(0)["Critical path"])
    assert [e["name"] for e in sorted(cp, key=lambda e: e["ts"])] == [
        f"{s['cause']}: {s['name']}" if s["name"] else s["cause"] for s in segments]
    cp_pairs = {f: (s, d) for f, (s, d) in pairs.items() if f >= CP_BASE}
    assert sorted((s["name"], d["name"]) for s, d in cp_pairs.values()) == sorted(
        [(r["name"], k1["name"]), (k1["name"], k2["name"])])
    assert all(s["track"] not in overlay_uuids and d["track"] not in overlay_uuids for s, d in cp_pairs.values())
    assert stats["flows_critical_path"] == 2 and stats["critical_path_slices"] == len(segments)

    # Findings: every finding marked, named "#rank rule: title", with its recommendation.
    marks = parsed.slices_on(parsed.logical(0)["Findings"])
    ranks = {row["trace_id"]: row["rank"] for row in store.rows("SELECT trace_id, rank FROM traces")}
    expected_names = {f"#{ranks[f['scope']['trace_id']]} {f['rule']}: {f['title']}" for f in findings}
    assert {m["name"] for m in marks} == expected_names
    assert stats["finding_slices"] == len(marks) >= len(findings)
    first = next(m for m in marks if m["name"] == f"#0 {findings[0]['rule']}: {findings[0]['title']}")
    assert first["notes"]["recommendation"] == findings[0]["recommendation"]
    assert first["notes"]["sql"] == findings[0]["sql"]
    assert first["notes"]["impact_ns"] == findings[0]["impact_ns"]


def test_four_ranks_get_one_group_each(tmp_path):
    store = Store.open(None)
    ingest([SAMPLE_TRACES / "synthetic_llm_decode_4ranks"], store)
    segments, _ = _critical_path(store, 2)
    findings = _findings(store)
    out = tmp_path / "ranks.pftrace"
    stats = write_timeline(store, out, critical_path=segments, findings=findings)
    parsed = Parsed(out)
    assert_well_nested(parsed)
    traces = store.rows("SELECT trace_id, rank, format, path FROM traces ORDER BY rank")
    assert len(traces) == 4
    roots = parsed.roots()
    assert set(roots) == {f"rank {t['rank']} ({t['format']}) {Path(t['path']).name}" for t in traces} | {
        "Critical path", "Findings"}
    for t in traces:
        root = roots[f"rank {t['rank']} ({t['format']}) {Path(t['path']).name}"]
        groups = {parsed.name(u): u for u in parsed.children(root)}
        per_stream = store.rows("SELECT device, stream, count(*) AS n FROM events WHERE trace_id = ? "
                                "AND tid IS NULL AND device IS NOT NULL GROUP BY ALL", [t["trace_id"]])
        devices = {row["device"] for row in per_stream}
        gpu_groups = [n for n in groups if n.startswith("GPU ")]
        assert len(gpu_groups) == len(devices)
        for row in per_stream:
            gpu = groups[next(n for n in gpu_groups if n.startswith(f"GPU {row['device']}"))]
            assert parsed.slice_count(parsed.logical(gpu)[f"stream {row['stream']}"]) == row["n"]
        per_thread = store.rows("SELECT pid, tid, count(*) AS n FROM events WHERE trace_id = ? "
                                "AND tid IS NOT NULL GROUP BY ALL", [t["trace_id"]])
        host_slices = sum(parsed.slice_count(lanes) for n, g in groups.items() if n.startswith("process ")
                          for lanes in parsed.logical(g).values())
        assert host_slices == sum(row["n"] for row in per_thread)
        assert sum(len(parsed.logical(g)) for n, g in groups.items() if n.startswith("process ")) == len(per_thread)
    launches = store.scalar("SELECT count(*) FROM links WHERE kind = 'launch'")
    pairs = flow_pairs(parsed)
    assert len([f for f in pairs if f < CP_BASE]) == launches == stats["flows_launch"]
    assert len(parsed.slices_on(parsed.logical(0)["Critical path"])) == len(segments)
    assert stats["finding_slices"] >= len(findings) > 0


def test_overlaps_instants_counters_and_clock_offset(tmp_path):
    """Partial overlaps go to an extra lane of the same track, zero-length events become
    instants, counters become counter tracks, and clock offsets (even negative) apply."""
    source = tmp_path / "input.json"
    source.write_text("{}")
    store = Store.open(None)
    with Sink(store).trace(source, "test") as w:
        w.add_events({
            "event_id": [0, 1, 2, 3, 4],
            "kind": ["cpu_op", "cpu_op", "cpu_op", "runtime", "kernel"],
            "name": ["outer", "overlapping", "instant", "cudaLaunchKernel", "k"],
            "start_ns": [100, 150, 120, 130, 300],
            "dur_ns": [100, 100, 0, 10, 50],
            "pid": [1, 1, 1, 1, None], "tid": [2, 2, 2, 2, None],
            "device": [None, None, None, None, 0], "stream": [None, None, None, None, 7],
            "correlation": [None, None, None, 9, 9],
        })
        w.append("counters", {"name": ["mem", "mem", "mem"], "pid": [1, 1, 1], "ts_ns": [100, 200, 300],
                              "value": [1.0, 2.5, 0.0]})
        w.set_trace(rank=3)
    store.con.execute("UPDATE traces SET clock_offset_ns = -200")
    out = tmp_path / "small.pftrace"
    finding = {"rule": "test.rule", "title": "look", "impact_ns": 7, "share_pct": 1.5, "sql": "SELECT 1",
               "recommendation": "fix it", "scope": {"trace_id": 0, "rank": 3},
               "evidence": {"example_gaps": [{"gap_start_ns": 150, "gap_end_ns": 160, "next_event": 4}]}}
    segment = {"event_id": 4, "start_ns": 100, "end_ns": 150, "cause": "compute:other", "name": "k"}
    stats = write_timeline(store, out, critical_path=[segment], findings=[finding])
    parsed = Parsed(out)
    assert_well_nested(parsed)
    assert stats["time_shift_ns"] == 100  # earliest time 100 - 200 = -100 shifted to 0
    root = next(u for n, u in parsed.roots().items() if n.startswith("rank 3 (test)"))
    groups = {parsed.name(u): u for u in parsed.children(root)}
    thread = parsed.logical(groups["process 1"])["thread 2"]
    assert len(thread) == 2  # one extra lane for the partial overlap
    slices = sorted(parsed.slices_on(thread), key=lambda e: e["ts"])
    assert [(e["name"], e["ts"], e["type"]) for e in slices] == [
        ("outer", 0, BEGIN), ("instant", 20, INSTANT), ("cudaLaunchKernel", 30, BEGIN), ("overlapping", 50, BEGIN)]
    counters = [e for e in parsed.events if e["type"] == COUNTER]
    assert [(e["ts"], e["value"]) for e in counters] == [(0, 1.0), (100, 2.5), (200, 0.0)]
    assert parsed.name(counters[0]["track"]) == "mem" and parsed.tracks[counters[0]["track"]].HasField("counter")
    (flow, (src, dst)), = flow_pairs(parsed).items()
    assert (src["name"], dst["name"]) == ("cudaLaunchKernel", "k")
    # Finding windows are on the trace clock (offset added); path segments on the common clock.
    (mark,) = parsed.slices_on(parsed.logical(0)["Findings"])
    assert (mark["name"], mark["ts"], mark["notes"]["located_by"]) == ("#3 test.rule: look", 50, "evidence window")
    (seg,) = parsed.slices_on(parsed.logical(0)["Critical path"])
    assert (seg["name"], seg["ts"]) == ("compute:other: k", 200)


def test_trace_ids_selects_traces(tmp_path):
    store = Store.open(None)
    ingest([SAMPLE_TRACES / "synthetic_llm_decode_4ranks"], store)
    out = tmp_path / "one.pftrace"
    stats = write_timeline(store, out, trace_ids=[1])
    parsed = Parsed(out)
    assert stats["traces"] == 1
    assert [n for n in parsed.roots() if n.startswith("rank ")] == ["rank 1 (kineto) synthetic_llm_decode_rank1.json.gz"]
    others = set(parsed.roots()) - {"Critical path", "Findings"}
    assert len(others) == 1
    assert len(parsed.slices) == store.scalar("SELECT count(*) FROM events WHERE trace_id = 1")


def test_missing_perfetto_is_one_line_error(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "perfetto" or m.startswith("perfetto.")]:
        monkeypatch.setitem(sys.modules, name, None)
    store = Store.open(None)
    out = tmp_path / "x.pftrace"
    with pytest.raises(ProfkitError) as err:
        write_timeline(store, out)
    assert str(err.value) == "writing .pftrace needs the perfetto package: pip install 'profkit[perfetto]'"
    assert not out.exists()


def test_a_custom_accelerator_is_drawn_as_a_device(tmp_path):
    """MTIA's device (vendor `other`) is "Device 17 (ARTEMIS)" on the timeline, not a GPU."""
    store = Store.open(None)
    ingest([shared_trace("kineto/mtia/mtia_inference_rank0.json.gz")], store)
    out = tmp_path / "mtia.pftrace"
    write_timeline(store, out)
    parsed = Parsed(out)
    (root,) = parsed.roots().values()
    names = [parsed.name(u) for u in parsed.children(root)]
    assert "Device 17 (ARTEMIS)" in names and not [n for n in names if n.startswith("GPU")]


def test_an_event_before_its_traces_start_is_shifted_not_wrapped(tmp_path):
    """A store edited after ingest can hold an event earlier than traces.start_ns: the
    export shifts time by the earliest event, so no timestamp goes negative (unsigned)."""
    source = tmp_path / "input.json"
    source.write_text("{}")
    store = Store.open(None)
    with Sink(store).trace(source, "test") as w:
        w.add_events({"event_id": [0, 1], "kind": ["cpu_op", "cpu_op"], "name": ["a", "b"],
                      "start_ns": [100, 300], "dur_ns": [50, 50], "pid": [1, 1], "tid": [1, 1]})
    store.con.execute("UPDATE events SET start_ns = -45, end_ns = 5 WHERE name = 'a'")
    out = tmp_path / "t.pftrace"
    stats = write_timeline(store, out)
    parsed = Parsed(out)
    assert_well_nested(parsed)
    assert stats["time_shift_ns"] == 45
    assert sorted((e["name"], e["ts"]) for e in parsed.slices) == [("a", 0), ("b", 345)]
