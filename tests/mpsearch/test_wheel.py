"""`pip install mpsearch` gets what the default commands read: the wheel ships the demo profile (package data),
so `mpsearch solve` works outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds and installs a wheel (~10 s), then solves from it in a fresh interpreter
def test_wheel_solves_with_the_bundled_demo_profile(tmp_path):
    src, site, run = tmp_path / "src", tmp_path / "site", tmp_path / "run"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    for package in ("mpsearch", "solvers"):  # a copy: building in the checkout would write build/ there
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "cache"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path), str(src)],
                   env=env, check=True, cwd=tmp_path, capture_output=True)  # fmt: skip
    wheel = next(tmp_path.glob("mpsearch-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], env=env,
                   check=True, capture_output=True)  # fmt: skip

    run.mkdir()  # no checkout here: neither on sys.path nor a ./profiles/demo beside the command
    env["PYTHONPATH"] = str(site)
    cmd = [sys.executable, "-m", "mpsearch.cli", "solve", "--budget", "3bits", "-o", "plan.json"]
    done = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote plan.json" in done.stdout
    plan = json.loads((run / "plan.json").read_text())
    assert Path(plan["solver"]["profile"]) == site / "mpsearch" / "profiles" / "demo"  # the installed copy
    assert plan["predicted"]["mean_w_bits"] <= 3.0 and len(plan["layers"]) == 119
    installed = {p.name for p in (site / "mpsearch" / "profiles" / "demo").iterdir()}
    assert installed == {"meta.json", "inventory.json", "measurements.jsonl"}
    # the DiT's profile ships the same way: `--profile demo-dit` names the installed copy
    cmd = [sys.executable, "-m", "mpsearch.cli", "solve", "--profile", "demo-dit", "--budget", "3bits", "-o", "dit.json"]
    done = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    plan = json.loads((run / "dit.json").read_text())
    assert Path(plan["solver"]["profile"]) == site / "mpsearch" / "profiles" / "demo-dit" and plan["model"] == "demo-dit"
    assert (site / "mpsearch" / "zoo" / "demo-dit" / "model_index.json").is_file()
