"""The catalogue of finding rules: stable ids with a name, a summary and help text.

Budgets and SARIF refer to these ids; `profkit/data/rules.csv` is the one place they are
described. A rule a pass emits that is missing here fails the tests.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    summary: str
    help: str


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Rule]:
    text = resources.files("profkit.data").joinpath("rules.csv").read_text(encoding="utf-8")
    return {row["rule"]: Rule(row["rule"], row["name"], row["summary"], row["help"])
            for row in csv.DictReader(text.splitlines())}


def describe(rule_id: str) -> Rule:
    """The catalogue entry, or a plain one for a rule the catalogue does not know yet."""
    return catalogue().get(rule_id) or Rule(rule_id, rule_id.replace(".", "_"), rule_id, "")
