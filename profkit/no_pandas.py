"""Keeping pandas out of the `profkit` command's process.

profkit never uses pandas, but pyarrow imports it, when it is installed, the first time it
converts a Python value (to check whether the value is a pandas object): 0.4-0.6 s of
every command on this project's machine, in the environments where pandas is most often
installed beside profkit (HTA, notebooks, ML stacks). The command, and only the command,
refuses that import for its own process; pyarrow then takes pandas as absent, with the
same results. Importing profkit as a library changes nothing.
"""
from __future__ import annotations

import importlib.abc
import sys


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("the profkit command does not load pandas (profkit/no_pandas.py)", name=name)
        return None


def block() -> None:
    """Refuse `import pandas` from now on in this process, unless it is already loaded."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())
