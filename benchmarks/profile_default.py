"""The demo's default profile (`mpsearch profile` with no options): today's path vs this tree, same machine.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_default.py [--baseline dd86e57] [--keep DIR]

"Today's path" is the code of commit `--baseline` (main before the profiling-at-scale work: exact mode,
skimage SSIM on the CPU, one VAE decode per slot), extracted with `git archive` and imported ahead of
this tree; "new" is this tree with its defaults (image triage included: rows it estimates instead of
measuring are compared apart from the measured ones). `--keep DIR` copies the new profile there (for
`benchmarks/image_triage.py --profile DIR`). Each runs `mpsearch.profile(None, out=<tmp>)` in a fresh
interpreter with the same venv, one after the other, and is timed from the call to its return (model
load, FP reference, calibration and every measurement). Both profiles are then solved by this tree's
solver at 3 and 4 mean weight bits, and the plans compared layer by layer.

Writes `benchmarks/results/profile_default.{json,md}`. Goal: new ≥ 1.5x today with identical plans.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # compare() reads both profiles with this tree's mpsearch (it knows schema /2)
RUN = """
import json, sys, time
import mpsearch, torch
t0 = time.perf_counter()
prof = mpsearch.profile(None, out=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(prof.df), "file": mpsearch.__file__,
                  "threads": torch.get_num_threads()}))
"""


def timed_profile(code: Path, out: Path) -> dict:
    """Run the default demo profile with the mpsearch found in `code`, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"],
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", RUN, str(out)], cwd=code, env=env, check=True,
                          capture_output=True, text=True)  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["file"]).resolve().is_relative_to(code.resolve()):
        raise RuntimeError(f"profiled with {result['file']}, not the code in {code}")
    return result


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit`, as files under `into`."""
    tar = into / "baseline.tar"
    subprocess.run(["git", "archive", "-o", str(tar), commit], cwd=ROOT, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "baseline", filter="data")
    return into / "baseline"


def compare(today: Path, new: Path, budgets: list[str]) -> dict:
    """Plans of both profiles at each budget (this tree's solver), and how their measurements agree."""
    import mpsearch
    from mpsearch.profiling.store import Profile

    a, b = Profile.load(today).df, Profile.load(new).df
    key = ["layer", "tensor", "bits", "metric", "step_group"]
    both = a.merge(b, on=key, suffixes=("_today", "_new"))
    est, m = both[both.estimated_new], both[~both.estimated_new]
    den = m[["degradation_today", "degradation_new"]].abs().max(axis=1).clip(lower=1e-300)
    out = {"rows": {"today": len(a), "new": len(b), "matched": len(both), "new_estimated": int(b.estimated.sum())},
           "estimated_spearman": float(est.degradation_today.rank().corr(est.degradation_new.rank())),
           "max_abs_diff_degradation": float((m.degradation_today - m.degradation_new).abs().max()),
           "max_rel_diff_degradation": float(((m.degradation_today - m.degradation_new).abs() / den).max()),
           "spearman": float(m.degradation_today.rank().corr(m.degradation_new.rank())), "plans": {}}  # fmt: skip
    for budget in budgets:
        pa, pb = mpsearch.solve(str(today), budget), mpsearch.solve(str(new), budget)
        la = {k: (v.w_bits, v.a_bits) for k, v in pa.layers.items()}
        lb = {k: (v.w_bits, v.a_bits) for k, v in pb.layers.items()}
        out["plans"][budget] = {"identical": la == lb, "layers_differing": sum(la[k] != lb.get(k) for k in la)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="dd86e57", help="commit of today's path")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--keep", type=Path, help="copy the new profile folder here")
    args = ap.parse_args(argv)
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_default.py " + shlex.join(argv or sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="mpsearch-default-") as tmp:
        tmp = Path(tmp)
        base = extract(args.baseline, tmp)
        today = timed_profile(base, tmp / "today")
        print(f"today: {today['seconds']:.1f} s", flush=True)
        new = timed_profile(ROOT, tmp / "new")
        print(f"new: {new['seconds']:.1f} s", flush=True)
        agreement = compare(tmp / "today", tmp / "new", ["3bits", "4bits"])
        if args.keep:
            import shutil

            shutil.copytree(tmp / "new", args.keep, ignore=shutil.ignore_patterns("cache"))
    result = {
        "command": command, "baseline": args.baseline,
        "env": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "torch_threads": today["threads"],
                "cpu_count": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "seconds": {"today": round(today["seconds"], 1), "new": round(new["seconds"], 1)},
        "speedup": round(today["seconds"] / new["seconds"], 2), **agreement,
    }  # fmt: skip
    plans_same = all(p["identical"] for p in result["plans"].values())
    result["goal_1.5x_same_plans"] = bool(result["speedup"] >= 1.5 and plans_same)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_default.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "profile_default.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    s, env = r["seconds"], r["env"]
    plans = ", ".join(f"{b}: {'identical' if p['identical'] else str(p['layers_differing']) + ' layers differ'}"
                      for b, p in r["plans"].items())  # fmt: skip
    return "\n".join([
        "# The demo's default profile: today's path vs this tree",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"`mpsearch.profile(None, out=...)` with default options, whole call (load, FP reference, calibration, "
        f"measurements), each in a fresh interpreter; CPU, {env['torch_threads']} torch threads on "
        f"{env['cpu_count']} cores, **OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}**. Today = commit `{r['baseline']}`.",
        "",
        "| path | seconds | vs today |",
        "|---|---:|---:|",
        f"| today (exact, skimage SSIM, one decode per slot) | {s['today']} | 1.0x |",
        f"| new (batched default, torch SSIM, decodes across slots, image triage) | {s['new']} | **{r['speedup']}x** |",
        "",
        f"- rows: today {r['rows']['today']}, new {r['rows']['new']} (of which {r['rows']['new_estimated']} estimated "
        f"by image triage, marked), matched {r['rows']['matched']}",
        f"- measured rows: max difference of a degradation {r['max_abs_diff_degradation']:.3g} (relative "
        f"{r['max_rel_diff_degradation']:.3g}); Spearman {r['spearman']:.6f}; estimated rows vs today's measurements: "
        f"Spearman {r['estimated_spearman']:.4f} (see image_triage.md)",
        f"- plans (this tree's default solver on each profile): {plans}",
        f"- goal ≥ 1.5x with the same plans at 3 and 4 mean bits: **{'met' if r['goal_1.5x_same_plans'] else 'NOT met'}**",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
