"""The app (`mpsearch/cli/__init__.py`): every verb registered in one style and listed by `--help`, the
version, and the lazy imports that keep `mpsearch --help` fast."""

import os
import re
import subprocess
import sys

from typer.testing import CliRunner

import mpsearch
from mpsearch.cli import VERBS, app

runner = CliRunner()


def test_help_lists_verbs():
    out = runner.invoke(app, ["--help"]).output
    assert "inspect" in out
    # the app's own help text says "profile", "solve", "export": check the registered commands instead
    from typer.main import get_command

    verbs = {"inspect", "generate", "profile", "merge", "solve", "export", "evaluate", "distill", "demo"}
    assert set(get_command(app).commands) == verbs


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and mpsearch.__version__ in result.output


def test_help_lists_every_verb_and_loads_no_heavy_library():
    """`python -m mpsearch.cli --help` in a fresh interpreter: a row per verb (its name, then its
    help), and neither torch, diffusers nor pandas imported (the verbs import them inside their commands)."""
    code = ("import runpy, sys\n"
            "sys.argv = ['mpsearch', '--help']\n"
            "try:\n    runpy.run_module('mpsearch.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'pandas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("TERMINAL_WIDTH", "FORCE_COLOR", "_TYPER_FORCE_DISABLE_TERMINAL")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "COLUMNS": "200"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [m[1] for line in done.stdout.splitlines() if (m := re.match(r"│ ([a-z]+)  ", line))]
    assert rows == list(VERBS)  # a row per verb, in the order VERBS gives
    assert set(VERBS) == {"inspect", "generate", "profile", "merge", "solve", "export", "evaluate", "distill", "demo"}
    assert done.stdout.splitlines()[-1] == "loaded: []"
