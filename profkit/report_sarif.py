"""Findings as SARIF 2.1.0: one result per finding, rule ids as SARIF rules with help text.

Code-scanning services want a location for every result; a finding's location is the
trace file it was found in (there is no source line), with the finding's scope and
numbers in the result's property bag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import __version__
from .render import human_ns
from .rules import describe

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/profkit/profkit"


def _level(finding: dict[str, Any]) -> str:
    share = finding.get("share_pct") or 0.0
    return "error" if share >= 10 else "warning" if share >= 2 else "note"


def sarif_log(result: dict[str, Any], trace_paths: dict[int, str]) -> dict[str, Any]:
    findings = result["findings"]
    rule_ids = sorted({f["rule"] for f in findings})
    rules = []
    for rule_id in rule_ids:
        rule = describe(rule_id)
        rules.append({
            "id": rule.id,
            "name": rule.name,
            "shortDescription": {"text": rule.summary},
            "fullDescription": {"text": rule.summary},
            "help": {"text": rule.help or rule.summary, "markdown": rule.help or rule.summary},
            "defaultConfiguration": {"level": "warning"},
        })
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    results = []
    for f in findings:
        path = trace_paths.get((f.get("scope") or {}).get("trace_id"), "")
        results.append({
            "ruleId": f["rule"],
            "ruleIndex": index[f["rule"]],
            "level": _level(f),
            "message": {"text": f"{f['title']} (~{human_ns(f['impact_ns'])} per step, "
                                f"{f.get('share_pct', 0):.1f}% of step time). {f['recommendation']}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(path)}}}],
            "partialFingerprints": {"profkitFinding/v1": f"{f['rule']}:{_scope_key(f.get('scope') or {})}"},
            "properties": {"impact_ns": f["impact_ns"], "impact_basis": f.get("impact_basis"),
                           "share_pct": f.get("share_pct"), "scope": f.get("scope"), "sql": f.get("sql")},
        })
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "profkit", "version": __version__, "semanticVersion": __version__,
                                "informationUri": INFORMATION_URI, "rules": rules}},
            "results": results,
        }],
    }


def _uri(path: str) -> str:
    if not path:
        return "trace"
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.as_uri() if p.is_absolute() else p.as_posix()


def _scope_key(scope: dict[str, Any]) -> str:
    return ",".join(f"{k}={scope[k]}" for k in sorted(scope) if k not in ("trace_id", "steps") and scope[k] is not None)
