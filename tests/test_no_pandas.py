"""The `profkit` command keeps pandas out of its process (profkit/no_pandas.py); the
library does not."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from profkit import no_pandas

SAMPLE = Path(__file__).resolve().parents[1] / "sample_traces" / "synthetic_llm_decode_4ranks"
HAVE_PANDAS = importlib.util.find_spec("pandas") is not None

# Runs the command's entry point in a fresh interpreter and reports on stderr whether pandas
# got loaded; mode "click" runs the same click command without the entry point's guard.
_RUN = """
import os, sys
from profkit import cli
sys.argv = ["profkit", *sys.argv[2:]]
report = lambda: print("pandas loaded:", "pandas" in sys.modules, file=sys.stderr, flush=True)
if sys.argv_mode == "main":
    real_exit = os._exit  # the entry point ends the process with os._exit: report first
    os._exit = lambda code: (report(), real_exit(code))
    cli.main()
else:
    cli.cli.main(standalone_mode=False, prog_name="profkit")
    report()
"""


def _run(mode: str, *args: str) -> tuple[str, bool]:
    code = _RUN.replace("sys.argv_mode", repr(mode))
    done = subprocess.run([sys.executable, "-c", code, mode, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout, "pandas loaded: True" in done.stderr


@pytest.mark.skipif(not HAVE_PANDAS, reason="pandas is not installed: nothing to keep out")
def test_the_command_does_not_load_pandas_and_answers_the_same():
    args = ("--no-cache", "analyze", str(SAMPLE), "--format", "json")
    guarded, guarded_loaded = _run("main", *args)
    plain, plain_loaded = _run("click", *args)
    assert plain_loaded, "pyarrow no longer imports pandas by itself: no_pandas may be unnecessary"
    assert not guarded_loaded
    assert json.loads(guarded) == json.loads(plain)


def test_importing_profkit_leaves_pandas_importable():
    import profkit.cli  # noqa: F401  (the command's module, imported as a library)

    assert not any(isinstance(finder, no_pandas._NoPandas) for finder in sys.meta_path)
    if HAVE_PANDAS:
        done = subprocess.run([sys.executable, "-c", "import profkit.cli, pandas; print(pandas.__name__)"],
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "pandas", done.stderr


def test_a_refused_import_says_why():
    code = ("from profkit import no_pandas; no_pandas.block(); no_pandas.block()\n"
            "import sys; assert sum(type(f).__name__ == '_NoPandas' for f in sys.meta_path) == 1\n"
            "try:\n    import pandas\nexcept ModuleNotFoundError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "the profkit command does not load pandas" in done.stdout


def test_the_command_ends_the_process_with_all_its_output_and_its_exit_code(tmp_path):
    # cli._exit skips the interpreter's teardown: what was printed must still all arrive.
    profkit = Path(sys.executable).parent / "profkit"
    done = subprocess.run([str(profkit), "--no-cache", "analyze", str(SAMPLE), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema"] == "profkit.analysis/1"
    missing = subprocess.run([str(profkit), "info", str(tmp_path / "absent.json")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
