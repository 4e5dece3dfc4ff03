"""Edges on the host: each thread's chain of call segments (nesting, gaps between calls)
and the waits of blocking calls (syncs, copies that returned only once done) for the
device work they awaited. A mixin of the graph builder (`graph_build._Builder`), split
out to keep each module small."""
from __future__ import annotations

import numpy as np

from .classify import runtime_scope
from .columns import lexsort, per_value
from .graph_model import (CLS, CLOCK_SKEW_MAX_NS, DEFAULT_SYNC_OVERHEAD_NS, E_HOST, E_SYNC, has_role,
                          is_one_of)


# The class of host time inside an event of each kind (any other kind: a gap).
_HOST_CLASS = {"cpu_op": CLS["host.op"], "runtime": CLS["host.runtime"]}


class HostEdges:
    def _host_chains_and_syncs(self):
        ev = self.ev
        host = np.flatnonzero(~self.is_device)
        if host.size == 0:
            return
        # Every host event's start vertex, then its end vertex: each column is gathered once
        # per event and doubled, not gathered per vertex (1.2M vertices at the 1M tile).
        start, end, depth = self.start[host], self.end[host], ev["depth"][host]
        n_host = host.size
        owner_ev = np.concatenate([host, host])
        verts = 2 * owner_ev
        verts[n_host:] += 1
        is_start = np.zeros(2 * n_host, dtype=bool)
        is_start[:n_host] = True
        t = np.concatenate([start, end])
        cls_key = np.concatenate([np.ones(n_host, np.int64), np.where(start == end, 2, 0)])
        sub = np.concatenate([depth, -depth])
        thread = self.thread[host]
        o = lexsort((sub, cls_key, t, np.concatenate([thread, thread])))
        del start, end, depth, cls_key, sub
        verts, owner_ev, is_start, t = verts[o], owner_ev[o], is_start[o], t[o]
        lane = self.thread[owner_ev]
        same = lane[1:] == lane[:-1]
        u, v = verts[:-1][same], verts[1:][same]
        ue, us = owner_ev[:-1][same], is_start[:-1][same]
        w = t[1:][same] - t[:-1][same]
        # The segment between two points belongs to the innermost open event: the event that
        # started at u, or the parent of the event that ended at u. Parents and classes are
        # looked up per host event, then gathered per segment (twice as many).
        parent_of = np.full(self.n, -1, dtype=np.int64)
        parent_of[host] = self.idx(ev["parent_id"][host])
        if "parent_id_null" in ev:
            parent_of[host[ev["parent_id_null"][host]]] = -1
        owner = np.where(us, ue, parent_of[ue])
        del parent_of
        cls_of = np.full(self.n + 1, CLS["host.gap"], dtype=np.int64)  # the last slot: no owner
        cls_of[host] = per_value(lambda kind: _HOST_CLASS.get(kind, CLS["host.gap"]),
                                 ev["kind_code"][host], ev["kind_values"], np.int64)
        cls = cls_of[owner]  # owner -1 takes the last slot
        del cls_of
        sync_min = np.full(u.size, -1, dtype=np.int64)
        # Blocking calls: the awaited device work's end -> the call's end.
        s_src, s_dst, s_w = [], [], []
        # The segment that is the whole of a call (nothing nested in it), by call.
        whole = np.flatnonzero(us & (v == 2 * ue + 1))
        seg_of_call = np.full(self.n, -1, dtype=np.int64)
        seg_of_call[ue[whole]] = whole
        sync_info = []
        for call in sorted(self.sync_calls | self._copy_waits()):
            a = self._awaited_by(call)
            if a < 0:
                continue
            blocked = self.end[a] >= self.start[call]
            ret = int(self.end[call] - self.end[a]) if blocked else 0
            s_src.append(2 * a + 1); s_dst.append(2 * call + 1); s_w.append(ret)
            sync_info.append((call, blocked))
        names = ev["name"]
        unblocked = {}
        for call, blocked in sync_info:
            if not blocked:
                unblocked.setdefault(names[call], []).append(int(self.end[call] - self.start[call]))
        for call, blocked in sync_info:
            k = int(seg_of_call[call])
            if k < 0:
                continue
            d = int(w[k])
            own = int(np.median(unblocked[names[call]])) if names[call] in unblocked else DEFAULT_SYNC_OVERHEAD_NS
            if blocked:
                w[k] = min(d, own)
                cls[k] = CLS["sync"]
            sync_min[k] = min(d, own)
        s_src = np.asarray(s_src, dtype=np.int64)
        self.add(s_src, s_dst, s_w, E_SYNC, CLS["sync"], s_src // 2 if s_src.size else -1)
        self.stats["sync_waits"] = int(s_src.size)
        # Gap trimming (what-if): gaps after the first launch of their step, to the median gap.
        gap_trim = np.full(u.size, -1, dtype=np.int64)
        gaps = (cls == CLS["host.gap"]) & (w > 0)
        if gaps.any():
            typical = int(np.median(w[gaps]))
            # Only the longer gaps can be trimmed: the step test is made for them alone.
            longer = np.flatnonzero(gaps & (w > typical))
            first = self._first_launch_after_step_start(t[:-1][same][longer], lane[:-1][same][longer])
            gap_trim[longer[first]] = typical
        self.add(u, v, w, E_HOST, cls, owner, sync_min, gap_trim)  # owner: -1 where none

    def _copy_waits(self) -> set[int]:
        """Copy calls that returned only after their copy finished: they waited for it."""
        src, dst = self.launch_src, self.launch_dst
        if src.size == 0:
            return set()
        is_copy = has_role(self.ev, src, "blocking_copy", "copy")
        waited = is_copy & (self.end[dst] <= self.end[src]) & (self.end[dst] >= self.start[src]) & is_one_of(self.ev, "kind", ("memcpy",), dst)
        self.copy_wait = dict(zip(src[waited].tolist(), dst[waited].tolist()))
        return set(self.copy_wait)

    def _awaited_by(self, call: int) -> int:
        if call in getattr(self, "copy_wait", {}) and call not in self.sync_calls:
            return self.copy_wait[call]
        ev = self.ev
        tid = int(ev["trace_id"][call])
        rec = self.sync_records.get(call, {})
        typ = rec.get("type", "")
        lanes = self.lane_of.get(tid, [])
        cutoff = int(self.start[call])
        if typ == "streamsync" and rec.get("stream") is not None and rec["stream"] >= 0:
            lanes = [k for k in lanes if k[2] == rec["stream"]]
        elif typ == "contextsync" and rec.get("device") is not None:
            lanes = [k for k in lanes if k[1] == rec["device"]]
        elif typ == "eventsync" and rec.get("wait_on_stream") is not None and rec["wait_on_stream"] >= 0:
            lanes = [k for k in lanes if k[2] == rec["wait_on_stream"]]
            record = self._record_call(call, rec.get("record_corr"))
            if record >= 0:
                cutoff = int(self.start[record])
        # A device-wide sync returns after all its device's work: work "ending" a few us
        # after it is the clocks' disagreement (the last kernel before a ROCm
        # hipDeviceSynchronize ended 7.5 us after the call returned, MI300X Qwen), and the
        # activity before it, which ended by the return, is the one kept (an edge from the
        # late one would run back in time). Other calls may return first: a pageable
        # cudaMemcpy's DMA still runs after it.
        device_wide = typ == "contextsync" or runtime_scope(str(ev["name"][call])) == "device"
        return self.awaited(lanes, cutoff, int(self.end[call]), skew=CLOCK_SKEW_MAX_NS if device_wide else 0)

    def _first_launch_after_step_start(self, t: np.ndarray, thread: np.ndarray) -> np.ndarray:
        """For host points (grouped by thread, in time order within it): True when a launch
        already happened on the thread in this step (steps table; without steps, after the
        thread's first launch)."""
        ids = ",".join(str(int(x["trace_id"])) for x in self.traces) or "NULL"
        steps = self.store.rows(f"""
            SELECT s.trace_id, s.start_ns + coalesce(t.clock_offset_ns, 0) AS start
            FROM steps s JOIN traces t USING (trace_id) WHERE s.trace_id IN ({ids}) ORDER BY 1, 2
        """)
        step_starts: dict[int, list] = {}
        for r in steps:
            step_starts.setdefault(r["trace_id"], []).append(r["start"])
        ls = self.launch_src
        l_thread = self.thread[ls]
        o = lexsort((self.start[ls], l_thread))
        l_thread, l_time = l_thread[o], self.start[ls][o]
        result = np.zeros(t.size, dtype=bool)
        bounds = np.flatnonzero(np.r_[True, thread[1:] != thread[:-1], True]) if t.size else np.zeros(1, np.int64)
        for a, z in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            c = thread[a]
            lt = l_time[np.searchsorted(l_thread, c, "left"):np.searchsorted(l_thread, c, "right")]
            if lt.size == 0:
                continue
            starts = np.asarray(step_starts.get(int(self.thread_trace[c]), [np.iinfo(np.int64).min]), dtype=np.int64)
            tp = t[a:z]
            # Window of each point (0: before the first step start), and the first launch
            # at or after each window's start.
            win = np.searchsorted(starts, tp, side="right")
            win_start = np.r_[np.iinfo(np.int64).min, starts]
            k = np.searchsorted(lt, win_start, side="left")
            first = np.where(k < lt.size, lt[np.minimum(k, lt.size - 1)], np.iinfo(np.int64).max)
            result[a:z] = tp >= first[win]
        return result
