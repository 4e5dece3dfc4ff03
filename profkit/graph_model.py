"""Names shared by the graph modules: event kinds, edge kinds, attribution classes, and
the tests of event columns they all use (runtime calls by their role in
data/runtime_calls.csv)."""
from __future__ import annotations


import numpy as np

from .classify import runtime_role
from .columns import per_value

HOST_KINDS = ("cpu_op", "python", "annotation", "runtime")
DEVICE_KINDS = ("kernel", "memcpy", "memset")

# Edge kinds.
E_DURATION, E_HOST, E_LAUNCH, E_STREAM, E_SYNC, E_EVENT_WAIT, E_ARRIVE, E_TRANSFER = range(8)
EDGE_KIND_NAMES = ("duration", "host", "launch", "stream", "sync", "event_wait", "arrive", "transfer")

# Attribution classes of edges (what a nanosecond on the critical path is spent on).
CATEGORY_NAMES = ("gemm", "attention", "elementwise", "reduction", "normalization", "memory", "other")
CLASS_NAMES = tuple(f"compute.{c}" for c in CATEGORY_NAMES) + (
    "communication", "host.op", "host.runtime", "host.gap", "launch", "sync", "idle", "wait")
CLS = {name: i for i, name in enumerate(CLASS_NAMES)}

# A gap between consecutive activities on a stream up to this long is device-side overhead
# (kept as the stream edge's latency); a longer gap means the activity waited for something
# else (its launch, an event) and the stream edge gets no latency.
STREAM_GAP_MAX_NS = 2_000
# A device whose compute kernels on several streams never overlapped, with at least this many
# changes of stream from one kernel to the next, ran one kernel at a time: its kernels get
# device-order edges (graph_build._serial_device_edges).
SERIAL_DEVICE_MIN_SWITCHES = 20
# A launched activity that waits longer than this on an idle device waited on something:
# runtime launch latency is microseconds (p50 1-52 us on the shared traces), while the
# waits inside CUDA graph replays and behind unrecorded events there last milliseconds.
# The idle pass calls such gaps `dependency`; the graph attributes such launch edges to
# `wait`, and the launch-latency what-if leaves them alone.
LAUNCH_LATENCY_MAX_NS = 200_000
# Arrivals at a collective this close are a tie, and a member may end this much before the
# last one arrived (send and recv halves do not end together) before the match, or the
# clocks, are taken to be wrong (graph_waits._collectives, analyses/comm_skew.py).
ARRIVAL_TOLERANCE_NS = 10_000
# Device timestamps may run up to this far past the host's for the same moment: the last
# kernel before a ROCm hipDeviceSynchronize ended 7.5 us after the call returned.
CLOCK_SKEW_MAX_NS = 20_000
# A device-wide sync whose lane ran that little past its return looks back over this many launches for
# the latest activity that ended by it.
AWAITED_SCAN = 4096
# A blocked sync call's own cost when the trace has no unblocked call of that name to measure.
DEFAULT_SYNC_OVERHEAD_NS = 2_000


def has_role(ev: dict[str, np.ndarray], where: np.ndarray, *roles: str) -> np.ndarray:
    """Whether the runtime calls `where` have one of `roles` in data/runtime_calls.csv
    (classify.runtime_role), testing each distinct name once."""
    return per_value(lambda name: runtime_role(name) in roles, ev["name_code"][where], ev["name_values"], bool)


def is_one_of(ev: dict[str, np.ndarray], column: str, values, where=slice(None)) -> np.ndarray:
    """Whether the string `column` of the events `where` is one of `values`: compared as
    codes (see dictionary_codes), not as strings per event."""
    wanted = set(values)
    return per_value(lambda v: v in wanted, ev[column + "_code"][where], ev[column + "_values"], bool)
