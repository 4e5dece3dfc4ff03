"""The one shared classifier: device work -> category, communication kernel -> collective op.

The rules are data (`profkit/data/categories.csv`, `collective_ops.csv`): the first rule
whose kinds include the event's kind and whose pattern (a case-insensitive regular
expression, searched anywhere in the name) matches wins. A new vendor's kernel names are
one row away. Names are classified once per distinct (kind, name), not once per event.
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .schema import CATEGORIES

DEFAULT_CATEGORY = "other"


@dataclass(frozen=True)
class Rule:
    category: str
    kinds: frozenset[str]
    pattern: re.Pattern[str]


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("profkit.data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


# The tables whose rules are applied at ingest (stored categories, collective ops, grids,
# and the Kineto parser's record categories), by package.
STORED_TABLES = (("profkit.data", "categories.csv"), ("profkit.data", "collective_ops.csv"),
                 ("profkit.data", "runtime_calls.csv"), ("profkit.parsers", "kineto_categories.csv"))


@lru_cache(maxsize=1)
def stored_rules_digest() -> str:
    """A digest of the tables applied at ingest: a cached store made under other rules is stale."""
    digest = hashlib.sha1()
    for package, name in STORED_TABLES:
        digest.update(resources.files(package).joinpath(name).read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def category_rules() -> tuple[Rule, ...]:
    rules = []
    for row in _read_csv("categories.csv"):
        if row["category"] not in CATEGORIES:
            raise ValueError(f"categories.csv: unknown category {row['category']!r}")
        rules.append(Rule(row["category"], frozenset(row["kinds"].split("|")),
                          re.compile(row["pattern"], re.IGNORECASE)))
    return tuple(rules)


@lru_cache(maxsize=1)
def collective_rules() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((row["op"], re.compile(row["pattern"], re.IGNORECASE))
                 for row in _read_csv("collective_ops.csv"))


@lru_cache(maxsize=1)
def runtime_rules() -> tuple[tuple[str, re.Pattern[str], re.Pattern[str] | None, str | None], ...]:
    """(role, pattern, exclude, scope) rows of runtime_calls.csv, in file order."""
    return tuple((row["role"], re.compile(row["pattern"], re.IGNORECASE),
                  re.compile(row["exclude"], re.IGNORECASE) if row["exclude"] else None,
                  row["scope"] or None)
                 for row in _read_csv("runtime_calls.csv"))


@lru_cache(maxsize=4096)  # few distinct API names, asked about once per call
def _runtime_rule(name: str | None) -> tuple[str, str | None] | None:
    """(role, scope) of the first row of runtime_calls.csv that names the call, or None."""
    if not name:
        return None
    for role, pattern, exclude, scope in runtime_rules():
        if pattern.search(name) and not (exclude and exclude.search(name)):
            return role, scope
    return None


def runtime_role(name: str | None) -> str | None:
    """What a host runtime call does, from its name: a role of data/runtime_calls.csv
    (`sync`, `blocking_copy`, `allocator`, `copy`, `stream_wait`, `device_wait`,
    `event_record`, `graph_launch`, `grid_in_work_items`), or None. One table for every
    vendor, read by the passes and the dependency graph alike."""
    rule = _runtime_rule(name)
    return rule[0] if rule else None


def runtime_scope(name: str | None) -> str | None:
    """What a call waits for where its row says (`device`: all work of its device, as
    cudaDeviceSynchronize), else None."""
    rule = _runtime_rule(name)
    return rule[1] if rule else None


def runtime_call_names(store, trace_id: int, *roles: str) -> list[str]:
    """The names of a trace's runtime calls whose role is one of `roles`: a short list for
    SQL (`list_contains`), each distinct name tested once. A trace's names are read once per
    store object (its events are final once parsed; the passes ask about six times, 14 ms
    each on a 1M-event trace)."""
    known = store.__dict__.setdefault("_profkit_runtime_names", {})
    if trace_id not in known:
        known[trace_id] = [n for (n,) in store.con.execute(
            "SELECT DISTINCT name FROM events WHERE trace_id = ? AND kind = 'runtime'", [trace_id]).fetchall()]
    return sorted(n for n in known[trace_id] if runtime_role(n) in roles)


# The runtime calls that launched a copy from device to pageable host memory, as SQL.
PAGEABLE_DTOH_LAUNCHES = """
    SELECT l.src_event FROM links l JOIN copies c ON c.event_id = l.dst_event
    WHERE l.trace_id = {trace_id} AND l.kind = 'launch' AND c.direction = 'DtoH' AND c.dst_memory = 'pageable'"""


def blocking_async_copies(store, trace_id: int) -> list[int]:
    """Event ids of a trace's asynchronous copy calls (role `copy`) that copied device
    memory to pageable host memory: CUDA and HIP return from those only once the copy is
    done, after the work queued before it (a `.cpu()` without pinned memory), so they block
    the host like a synchronous copy. Read from the `copies` view, not from names."""
    names = runtime_call_names(store, trace_id, "copy")
    if not names:
        return []
    return [i for (i,) in store.con.execute(f"""
        SELECT DISTINCT p.src_event FROM ({PAGEABLE_DTOH_LAUNCHES.format(trace_id=int(trace_id))}) p
        JOIN events r ON r.event_id = p.src_event AND r.trace_id = {int(trace_id)}
        WHERE list_contains(?, r.name) ORDER BY 1
    """, [names]).fetchall()]


def base_name(name: str) -> str:
    """A kernel's own name, without template arguments and parameter list.

    `void cub::Kernel<flashinfer::X>(int)` -> `void cub::Kernel`: words inside the
    template arguments (a library namespace, a functor type) must not decide the category
    when the kernel's own name can.
    """
    text = name.replace("(anonymous namespace)", "")
    kept = []
    angle = paren = 0
    for ch in text:
        if ch == "<":
            angle += 1
        elif ch == ">" and angle and not paren:
            angle -= 1
        elif angle:
            if ch == "(":
                paren += 1
            elif ch == ")" and paren:
                paren -= 1
        else:
            kept.append(ch)
    own = "".join(kept)
    cut = own.find("(")
    return own[:cut] if cut > 0 else own


def _match(kind: str, text: str) -> str | None:
    for rule in category_rules():
        if kind in rule.kinds and rule.pattern.search(text):
            return rule.category
    return None


def category(kind: str, name: str | None) -> str | None:
    """Category of a device event; None for host kinds.

    The kernel's own name is matched first, the full name (template arguments and all)
    only when the own name matches no rule.
    """
    if kind not in ("kernel", "memcpy", "memset"):
        return None
    text = name or ""
    return _match(kind, base_name(text)) or _match(kind, text) or DEFAULT_CATEGORY


def collective_op(name: str | None) -> str:
    """Normalised collective op from a kernel name or a framework's collective name."""
    text = (name or "").replace("-", "_")
    # NCCL kernel names carry the op after the prefix: ncclDevKernel_AllGather_RING_LL.
    for op, pattern in collective_rules():
        if pattern.search(text):
            return op
    return "other"
