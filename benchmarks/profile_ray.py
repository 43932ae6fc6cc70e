"""Profiling throughput of the Ray backend vs the local one: workers vs measurements per second, on the demo.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_ray.py

The same denoiser-output measurements (`sqnr`, an even subset of every layer × tensor × bit-width × step
group, one at a time) run through the `local` backend and through `ray` with 1 and 2 actors on a local
Ray cluster started here (`ray.init(num_cpus=<cores>)`). The FP reference and calibration are computed
once, outside the timings. Ray's wall time includes starting the actors (each imports torch/diffusers
and loads its own replica); the steady rate counts only rows stored after the first one arrived.

Writes `benchmarks/results/profile_ray.{json,md}`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from mpsearch.model import find_denoiser, inventory, load_pipeline, weights_fingerprint
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.backends import Job, get_backend
from mpsearch.profiling.engine import Profiler, plan_units
from mpsearch.profiling.metrics import get_metric
from mpsearch.profiling.session import Candidates, QuantSession

KEY = ["layer", "tensor", "bits", "metric", "step_group"]


class TimedStore:
    """An in-memory store that notes when each batch of rows arrived."""

    def __init__(self, fingerprint: str):
        self.meta, self.rows, self.times = {"fingerprint": fingerprint}, [], []

    def append(self, rows: list[dict]) -> None:
        self.rows += rows
        self.times.append((time.perf_counter(), len(rows)))


def timed(name: str, backend, prof: Profiler, units, fingerprint: str) -> tuple[dict, pd.DataFrame]:
    store = TimedStore(fingerprint)
    t0 = time.perf_counter()
    backend(Job(prof, store, units, 1, model=None, log=lambda m: print(f"  {m}", flush=True)))
    wall = time.perf_counter() - t0
    first, n_first = store.times[0]
    steady_n = len(store.rows) - n_first
    steady = steady_n / max(store.times[-1][0] - first, 1e-9)
    row = {"backend": name, "measurements": len(store.rows), "wall_s": round(wall, 2),
           "first_row_s": round(first - t0, 2), "per_second": round(len(store.rows) / wall, 3),
           "steady_per_second": round(steady, 3)}  # fmt: skip
    print(row, flush=True)
    return row, pd.DataFrame(store.rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=160, help="output measurements (an even subset)")
    ap.add_argument("--workers", default="1,2", help="Ray actor counts to time")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    import ray

    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_ray.py " + shlex.join(argv or sys.argv[1:])
    pipe = load_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    inv = inventory(pipe)
    steps, guidance = cal.demo_settings()
    ref = cal.reference(pipe, cal.demo_prompts(8), steps=steps, guidance=guidance)
    groups = cal.step_groups(ref.timesteps)
    session = QuantSession(pipe, Candidates()).calibrate(ref)
    prof = Profiler(pipe, ref, session, groups)
    fingerprint = weights_fingerprint(find_denoiser(pipe)[1])
    units = plan_units(inv.layers, groups, session.candidates, ("weight", "act"), [get_metric("sqnr")], True)
    units = [units[round(i * (len(units) - 1) / (args.units - 1))] for i in range(args.units)]
    print(f"{len(inv)} layers; timing {len(units)} measurements", flush=True)

    rows, frames = [], {}
    r, frames["local"] = timed("local", get_backend("local"), prof, units, fingerprint)
    rows.append({**r, "workers": 0, "torch_threads": torch.get_num_threads()})
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    t_init = time.perf_counter() - t0
    try:
        for w in (int(s) for s in args.workers.split(",")):
            r, frames[f"ray{w}"] = timed(f"ray, {w} actor(s)", get_backend("ray", workers=w), prof, units, fingerprint)
            rows.append({**r, "workers": w, "torch_threads": 1})
    finally:
        ray.shutdown()
        session.remove()
    base = frames["local"].set_index(KEY).sort_index()
    same = {k: bool(len(f) == len(base) and set(f.set_index(KEY).index) == set(base.index)) for k, f in frames.items()}
    max_rel = {k: float(((f.set_index(KEY).sort_index().degradation - base.degradation).abs()
                         / base.degradation.abs().clip(lower=1e-300)).max()) for k, f in frames.items()}  # fmt: skip
    result = {
        "command": command,
        "env": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "cpu_count": cores, "ray": ray.__version__,
                "torch": torch.__version__, "python": platform.python_version(), "device": "cpu",
                "load_avg_1min": round(os.getloadavg()[0], 2)},
        "model": "demo", "layers": len(inv), "units": len(units), "ray_init_s": round(t_init, 2),
        "rows": rows, "same_keys_as_local": same, "max_rel_diff_vs_local": max_rel,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_ray.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "profile_ray.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    env = r["env"]
    local = r["rows"][0]["per_second"]
    lines = [
        "# Profiling throughput: local vs Ray actors",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"Model `{r['model']}` ({r['layers']} layers), {r['units']} denoiser-output measurements (sqnr, one at a "
        f"time). CPU, {env['cpu_count']} cores, **OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}**, torch {env['torch']}, "
        f"ray {env['ray']}; 1-minute load average at the end {env['load_avg_1min']} (the machine is shared). "
        f"Local Ray cluster start: {r['ray_init_s']} s (not in the rows).",
        "",
        "| backend | workers | torch threads each | wall s (incl. actor start) | first row after s | per second "
        "(wall) | steady per second | vs local (wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(f"| {x['backend']} | {x['workers'] or '-'} | {x['torch_threads']} | {x['wall_s']} | "
                     f"{x['first_row_s']} | {x['per_second']} | {x['steady_per_second']} | "
                     f"{x['per_second'] / local:.2f}x |")  # fmt: skip
    lines += [
        "",
        "- same measurements as local (keys): " + ", ".join(f"{k} {v}" for k, v in r["same_keys_as_local"].items()),
        "- max relative difference of degradation vs local: "
        + ", ".join(f"{k} {v:.3g}" for k, v in r["max_rel_diff_vs_local"].items())
        + (" (identical)" if not any(r["max_rel_diff_vs_local"].values()) else
           " (local runs on all torch threads, actors on one each: float sums in another order)"),
        "- why no speed-up here: 2 cores. Local torch already uses both; two actors get one each, and each "
        "first imports torch/diffusers and loads its own replica (the 'first row' column), then pays "
        "object-store and scheduling overhead per task. On a GPU cluster each actor owns a GPU, so the rate "
        "grows near-linearly with actors as long as one task's work (a denoiser forward per measurement, or "
        "per slot batch) is much longer than Ray's per-task overhead (~1 ms) and the one-off replica load is "
        "small against the run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
