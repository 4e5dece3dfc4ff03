"""Edges for waits that cross streams, threads or ranks: device-side sync records, event
record -> stream wait, and collective instances across ranks. A mixin of the graph
builder (`graph_build._Builder`), split out to keep each module small."""
from __future__ import annotations

import re

import numpy as np

from .columns import lexsort
from .graph_model import (ARRIVAL_TOLERANCE_NS, CLS, E_ARRIVE, E_DURATION, E_EVENT_WAIT, E_TRANSFER,
                          STREAM_GAP_MAX_NS, has_role, is_one_of)


class WaitEdges:
    def _sync_records(self) -> dict[int, dict]:
        """Device-side sync records (Kineto cuda_sync, Nsight CUPTI sync) by their runtime call."""
        ids = ",".join(str(int(t["trace_id"])) for t in self.traces) or "NULL"
        rows = self.store.rows(f"""
            SELECT l.src_event AS call, s.name, s.device, s.stream,
                   TRY_CAST(json_extract_string(s.args, '$.wait_on_stream') AS BIGINT) AS wait_on_stream,
                   TRY_CAST(json_extract_string(s.args, '$.wait_on_cuda_event_record_corr_id') AS BIGINT) AS record_corr
            FROM links l JOIN events s ON s.event_id = l.dst_event
            WHERE l.kind = 'sync' AND l.trace_id IN ({ids})
        """)
        out = {}
        for r in rows:
            i = int(self.idx([r["call"]])[0])
            if i >= 0:
                r["type"] = re.sub(r"[^a-z]", "", (r["name"] or "").lower())
                out[i] = r
        return out

    def _by_thread(self, calls: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host calls grouped by thread in time order: (thread codes, starts, values)."""
        o = lexsort((self.start[calls], self.thread[calls]))
        return self.thread[calls][o], self.start[calls][o], values[o]

    def _on_thread(self, grouped, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, values) of a `_by_thread` grouping on the thread of event i."""
        threads, starts, values = grouped
        c = self.thread[i]
        lo, hi = np.searchsorted(threads, c, "left"), np.searchsorted(threads, c, "right")
        return starts[lo:hi], values[lo:hi]

    def _search_on_thread(self, grouped, calls: np.ndarray, side: str) -> np.ndarray:
        """For each call, an index into a `_by_thread` grouping, on the call's own thread:
        side 'left', the first entry starting at or after the call; side 'right', the last
        entry starting at or before it. -1 where there is none."""
        threads, starts, _ = grouped
        out = np.full(calls.size, -1, dtype=np.int64)
        mine = self.thread[calls]
        for c in np.unique(mine).tolist():  # threads are few
            at = np.flatnonzero(mine == c)
            lo, hi = np.searchsorted(threads, c, "left"), np.searchsorted(threads, c, "right")
            pos = lo + np.searchsorted(starts[lo:hi], self.start[calls[at]], side=side)
            if side == "left":
                out[at] = np.where(pos < hi, pos, -1)
            else:
                out[at] = np.where(pos - 1 >= lo, pos - 1, -1)
        return out

    def _plain_waits(self, waits: np.ndarray, thread_launch) -> tuple[np.ndarray, np.ndarray]:
        """(awaited activity, waiting activity) for stream-wait calls with no device-side
        record: the waiting stream is that of the thread's next launch, the event the last
        event-record call on the thread before the wait, and the awaited activity the one
        with the latest end launched before that record on any other lane of the trace."""
        ev = self.ev
        src = np.full(waits.size, -1, dtype=np.int64)
        if waits.size == 0 or thread_launch[2].size == 0 or self.event_records[2].size == 0:
            return src, src.copy()
        nxt = self._search_on_thread(thread_launch, waits, "left")
        target = np.where(nxt >= 0, thread_launch[2][np.maximum(nxt, 0)], -1)
        prev = self._search_on_thread(self.event_records, waits, "right")
        record = np.where(prev >= 0, self.event_records[2][np.maximum(prev, 0)], -1)
        ok = (target >= 0) & (record >= 0)
        if not ok.any():
            return src, target
        t = np.maximum(target, 0)
        cutoff, not_after = self.start[np.maximum(record, 0)], self.start[t]
        best_end = np.full(waits.size, np.iinfo(np.int64).min, dtype=np.int64)
        found = np.zeros(waits.size, dtype=bool)
        for key, lane in self.lanes.items():  # lanes in the order one wait's loop would try them
            on = ok & (ev["trace_id"][waits] == key[0]) & ~((ev["device"][t] == key[1]) & (ev["stream"][t] == key[2]))
            k = np.searchsorted(lane["ltime"], cutoff, side="left") - 1
            end = lane["runmax"][np.maximum(k, 0)]
            better = on & (k >= 0) & (end <= not_after) & (~found | (end > best_end))
            src[better] = lane["runarg"][np.maximum(k, 0)][better]
            best_end[better] = end[better]
            found |= better
        return src, np.where(ok, target, -1)

    def _record_call(self, i: int, corr: int | None) -> int:
        """The cudaEventRecord call a wait refers to: by correlation when the trace says,
        else the last event-record call on the same thread before the wait."""
        ev = self.ev
        cand = self._on_thread(self.event_records, i)[1]
        if cand.size == 0:
            return -1
        if corr is not None and corr >= 0:
            hit = cand[ev["correlation"][cand] == corr]
            if hit.size:
                return int(hit[0])
        k = int(np.searchsorted(self.start[cand], self.start[i], side="right")) - 1
        return int(cand[k]) if k >= 0 else -1

    def _event_waits(self):
        """Cross-stream waits: the activity an event recorded -> the next activity launched on
        the waiting stream after the wait call."""
        ev = self.ev
        host = ~self.is_device
        runtime = np.flatnonzero(host & is_one_of(ev, "kind", ("runtime",)))
        is_rec = has_role(ev, runtime, "event_record")
        is_wait = has_role(ev, runtime, "stream_wait")
        is_sync = has_role(ev, runtime, "sync")
        self.event_records = self._by_thread(runtime[is_rec], runtime[is_rec])
        self.sync_records = self._sync_records()
        self.sync_calls = set(int(i) for i in runtime[is_sync])
        for call, rec in self.sync_records.items():
            if rec["type"] in ("streamsync", "contextsync", "eventsync"):
                self.sync_calls.add(call)
        # Launches per thread, for "the next launch after the wait on this thread".
        thread_launch = self._by_thread(self.launch_src, self.launch_dst)
        waits = set(int(i) for i in runtime[is_wait]) | {c for c, r in self.sync_records.items()
                                                         if r["type"] in ("streamwaitevent", "streamwaitsync")}
        # Waits without a device-side record (the common case) at once; the others one by one.
        plain = np.asarray(sorted(w for w in waits if w not in self.sync_records), dtype=np.int64)
        w_l, src_l, dst_l = [plain], *self._plain_waits(plain, thread_launch)
        src_l, dst_l = [src_l], [dst_l]
        for w in sorted(w for w in waits if w in self.sync_records):
            tid = int(ev["trace_id"][w])
            rec = self.sync_records[w]
            # The waiting stream: the sync record's, else the stream of the thread's next launch.
            target = -1
            if rec.get("stream") is not None and rec["stream"] >= 0:
                keys = [k for k in self.lane_of.get(tid, []) if k[2] == rec["stream"]]
                cands = [self.next_on_lane(k, int(self.start[w])) for k in keys]
                cands = [c for c in cands if c >= 0]
                target = min(cands, key=lambda c: self.launch_time[c]) if cands else -1
            else:
                starts, dsts = self._on_thread(thread_launch, w)
                k = int(np.searchsorted(starts, int(self.start[w]), side="left"))
                target = int(dsts[k]) if k < dsts.size else -1
            if target < 0:
                continue
            target_key = (tid, int(ev["device"][target]), int(ev["stream"][target]))
            record = self._record_call(w, rec.get("record_corr"))
            if record < 0:
                continue
            if rec.get("wait_on_stream") is not None and rec["wait_on_stream"] >= 0:
                lanes = [k for k in self.lane_of.get(tid, []) if k[2] == rec["wait_on_stream"]]
            else:
                lanes = [k for k in self.lane_of.get(tid, []) if k != target_key]
            src = self.awaited(lanes, int(self.start[record]), int(self.start[target]))
            w_l.append(np.asarray([w]))
            src_l.append(np.asarray([src]))
            dst_l.append(np.asarray([target]))
        found = np.concatenate(src_l) >= 0
        order = np.argsort(np.concatenate(w_l)[found], kind="stable")  # in call order, as one loop would give
        src_a, dst_a = np.concatenate(src_l)[found][order], np.concatenate(dst_l)[found][order]
        keep = src_a != dst_a
        src_a, dst_a = src_a[keep].astype(np.int64), dst_a[keep].astype(np.int64)
        self.wait_src, self.wait_dst = src_a, dst_a
        gap = self.start[dst_a] - self.end[src_a] if src_a.size else np.zeros(0, np.int64)
        self.add(2 * src_a + 1, 2 * dst_a, np.where(gap <= STREAM_GAP_MAX_NS, gap, 0), E_EVENT_WAIT, CLS["wait"], -1)
        if src_a.size:
            np.maximum.at(self.waiting_start, dst_a, self.end[src_a])
        self.stats["event_waits"] = int(src_a.size)

    def _collectives(self):
        """Across ranks: instances matched by process group, op and sequence number (else
        order); each rank's kernel ends only after the last rank arrived, plus its own
        transfer (its observed end after that arrival)."""
        self.collective_joins = 0
        if len({t["rank"] for t in self.traces}) < 2:
            return
        ids = ",".join(str(int(t["trace_id"])) for t in self.traces)
        rows = self.store.rows(f"""
            SELECT e.event_id, e.trace_id, coalesce(c.process_group, '') AS pg, c.op, c.seq
            FROM events e JOIN collectives c USING (event_id)
            WHERE e.trace_id IN ({ids}) AND e.kind = 'kernel'
            ORDER BY e.trace_id, e.start_ns
        """)
        groups: dict[tuple, dict[int, list]] = {}
        at = self.idx([r["event_id"] for r in rows]).tolist()
        for r, i in zip(rows, at):
            if i >= 0:
                groups.setdefault((r["pg"], r["op"]), {}).setdefault(r["trace_id"], []).append((r["seq"], i))
        src_a, dst_a, w_a, k_a, c_a, e_a, x_a = [], [], [], [], [], [], []
        base = 2 * self.n
        waited_on = self._waited_on()
        for key, per_trace in groups.items():
            if len(per_trace) < 2:
                continue
            lists = list(per_trace.values())
            use_seq = all(s is not None for lst in lists for s, _ in lst)
            if use_seq:
                by_seq: dict[int, list[int]] = {}
                for lst in lists:
                    for s, i in lst:
                        by_seq.setdefault(s, []).append(i)
                instances = [v for v in by_seq.values() if len(v) == len(lists)]
            else:
                count = min(len(lst) for lst in lists)
                if any(len(lst) != count for lst in lists):
                    self.stats["collective_groups_unmatched"] = self.stats.get("collective_groups_unmatched", 0) + 1
                    continue
                instances = [[lst[j][1] for lst in lists] for j in range(count)]
            for members in instances:
                m = np.asarray(members, dtype=np.int64)
                join_t = int(self.start[m].max())
                if np.any(self.end[m] < join_t - ARRIVAL_TOLERANCE_NS):
                    continue  # a member done before the last arrived: the match or the clocks are off
                transfer = np.maximum(self.end[m] - join_t, 0)
                j = base + len(self.extra_vertices)
                self.extra_vertices.append(join_t)
                exposed = int(waited_on[m].any())
                # Disabled (NEG) own-duration edges: what-ifs that take the instance's wait
                # for the other ranks away enable them.
                src_a += list(2 * m); dst_a += list(2 * m + 1); w_a += [-(1 << 62)] * m.size
                k_a += [E_DURATION] * m.size; c_a += [CLS["communication"]] * m.size; e_a += list(m)
                x_a += [exposed] * m.size
                src_a += list(2 * m); dst_a += [j] * m.size; w_a += [0] * m.size
                k_a += [E_ARRIVE] * m.size; c_a += [CLS["wait"]] * m.size; e_a += list(m)
                src_a += [j] * m.size; dst_a += list(2 * m + 1); w_a += transfer.tolist()
                k_a += [E_TRANSFER] * m.size; c_a += [CLS["communication"]] * m.size; e_a += list(m)
                x_a += [exposed] * (2 * m.size)
                self.dropped_duration[m] = True
                self.collective_joins += 1
        if src_a:
            self.edges.append((np.asarray(src_a), np.asarray(dst_a), np.asarray(w_a), np.asarray(k_a),
                               np.asarray(c_a), np.asarray(e_a), np.full(len(src_a), -1), np.full(len(src_a), -1),
                               np.asarray(x_a)))
        self.stats["collective_instances"] = self.collective_joins
        self.stats["collective_instances_exposed"] = int(sum(x_a) // 3 // max(1, len(self.traces))) if x_a else 0

    def _waited_on(self) -> np.ndarray:
        """Per event: a device activity on another stream started as soon as it ended (it
        waited on it). A collective instance so waited on, on some rank, was exposed.
        Worked out once: a scan of every wait per collective kernel grew with ranks squared."""
        waited_on = np.zeros(self.n, dtype=bool)
        prompt = self.start[self.wait_dst] - self.end[self.wait_src] <= STREAM_GAP_MAX_NS
        waited_on[self.wait_src[prompt]] = True
        return waited_on
