"""What a user sees while work runs: bars on stderr, and no transformers/diffusers noise from the CLI."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.progress import (
    TORCHVISION_NOTICE,
    _AfterImport,
    _no_torchvision_notice,
    _when_imported,
    count_bar,
)

ROOT = Path(__file__).resolve().parents[2]


def test_bar_counts_on_stderr_and_leaves_stdout_to_results(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")  # not a terminal: the finished line is whole at any width
    with count_bar(5, True, "evaluating") as advance:
        advance(2, "fp (calib)")
        advance(3)
    out, err = capsys.readouterr()
    assert out == ""  # a pipe of stdout (e.g. JSON) gets results only
    assert "evaluating" in err and "5/5" in err and "ETA 0:00:00" in err and err.count("\n") == 1
    with count_bar(5, False, "evaluating") as advance:
        advance(5)
    assert capsys.readouterr() == ("", "")


@pytest.mark.slow  # a fresh interpreter imports torch, diffusers and transformers: 6 s of CPU, more under load
def test_cli_prints_no_library_warnings_or_loading_bars(tmp_path):
    """A fresh `mpsearch generate` (imports diffusers and transformers, loads the demo pipeline) prints its
    one result line and nothing on stderr: no torchvision notices, no 'Loading pipeline components' bars."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "mpsearch.cli", "generate", "-p", "a red circle at the top left", "--steps", "1",
            "-o", str(tmp_path / "g.png")]  # fmt: skip
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.startswith("wrote ") and (tmp_path / "g.png").is_file()


def test_only_the_torchvision_notice_is_filtered():
    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.utils.import_utils", logging.WARNING, __file__, 1, msg, None, None)

    notice = f"`CLIPImageProcessor` {TORCHVISION_NOTICE} `CLIPImageProcessorPil` for backward compatibility."
    assert not _no_torchvision_notice(record(notice))
    assert _no_torchvision_notice(record("Some weights of the model checkpoint were not used"))


def test_switch_is_thrown_when_the_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "late_library.py").write_text("bars = True\ndef disable_progress_bar():\n    global bars\n    bars = False\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "late_library", raising=False)
    seen = []
    _when_imported("late_library", lambda m: seen.append(m.disable_progress_bar()))
    _when_imported("late_library", lambda m: seen.append("twice"))  # one hook per module
    assert not seen
    import late_library

    assert seen == [None] and late_library.bars is False
    assert not any(isinstance(f, _AfterImport) and f.name == "late_library" for f in sys.meta_path)  # one-shot
    _when_imported("late_library", lambda m: seen.append("now"))  # already imported: runs at once
    assert seen == [None, "now"]
