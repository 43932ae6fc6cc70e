"""Profiling backends: where the measurements of a profile run. `local` evaluates them in this process;
`ray` spreads them over Ray actors, each holding one model replica (one GPU per actor when the cluster
has GPUs, one CPU otherwise).

Both stream rows into the same `Store`, so resume, shards and merge are the same whatever ran them. With
Ray, the driver computes the FP reference and calibrates the activation ranges once; actors receive them
through the object store (plus the pipeline's files when the caller passed a pipeline object), rebuild
the same `Profiler` and return rows for batches of `Unit`s. An actor that dies mid-task has its task
resubmitted to a live (or freshly started) actor; rows are keyed, so nothing is lost or stored twice.

    profile(model, backend="ray", address="auto", workers=8)      # an existing cluster
    mpsearch profile --backend ray --workers 2                     # a local one, started and stopped here

A backend is a callable class registered by name: `Backend(**options)` checks its options (and its
dependencies) before any expensive work, and `backend(job)` measures `job.units` into `job.store`.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsearch.profiling.engine import Profiler, Unit, unit_batches
from mpsearch.progress import unit_bar
from solvers.registry import Registry

BACKENDS: Registry[type] = Registry("backend", unknown="backend must be one of {names}, got {name!r}")
RAY_HINT = "the ray backend needs Ray: pip install 'mpsearch[ray]'"


def register_backend(name: str):
    """Class decorator: make a backend available to `profile(backend=name)` and `--backend name`."""

    return BACKENDS.register(name)


def get_backend(name: str, **options: Any):
    """An instance of backend `name` with its options checked, e.g. `get_backend("ray", workers=2)`."""
    return BACKENDS.lookup(name)(**options)


@dataclass
class Job:
    """A backend's work: the driver's `Profiler` (its reference, calibrated session, step groups and batch
    limit are the recipe for replicas), the store rows go to, the units still to measure, units per slot
    batch (1 = exact), and the model as `profile` received it (None/'demo', hub id, path, or pipeline)."""

    prof: Profiler
    store: Any
    units: list[Unit]
    size: int
    model: Any = None
    progress: bool = False
    log: Callable[[str], None] = field(default=lambda msg: None)


@register_backend("local")
class LocalBackend:
    """Evaluate every batch in this process, in order."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        if address is not None or workers is not None:
            raise ValueError("--address and --workers need --backend ray")

    def __call__(self, job: Job) -> None:
        with unit_bar(len(job.units), job.progress) as advance:
            for b in unit_batches(job.units, job.size):
                job.store.append(job.prof.evaluate(b))
                advance(len(b), b[0])


@register_backend("ray")
class RayBackend:
    """Ray actors, one model replica each. `address`: a cluster to join ('auto', 'ray://host:10001', …);
    None joins `RAY_ADDRESS` or an already initialised Ray, else starts a local cluster (stopped after).
    `workers`: actors (default: the cluster's GPUs, else its CPUs). `max_attempts`: evaluations of one
    task that may die with their actor before the run gives up (the rows stored so far are kept)."""

    def __init__(self, address: str | None = None, workers: int | None = None, *, max_attempts: int = 3,
                 tasks_per_worker: int = 16):  # fmt: skip
        self.ray = import_ray()
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be ≥ 1, got {workers}")
        self.address, self.workers = address, workers
        self.max_attempts, self.tasks_per_worker = max_attempts, tasks_per_worker

    def __call__(self, job: Job) -> None:
        ray = self.ray
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        try:
            self._run(job)
        finally:
            if started:
                ray.shutdown()

    def _run(self, job: Job) -> None:
        ray = self.ray
        if not job.units:
            return
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        workers = self.workers or max(1, gpus or int(resources.get("CPU", 1)))
        batches = unit_batches(job.units, job.size)
        per_task = max(1, min(8, len(batches) // (workers * self.tasks_per_worker)))
        tasks = [batches[i : i + per_task] for i in range(0, len(batches), per_task)]
        workers = min(workers, len(tasks))
        t0 = time.perf_counter()
        recipe = ray.put(_recipe(job))
        reference = ray.put(job.prof.ref)
        job.log(f"ray: recipe and reference shared in {time.perf_counter() - t0:.1f} s; {len(tasks)} tasks "
                f"over {workers} actors ({'1 GPU' if gpus else '1 CPU'} each)")  # fmt: skip
        actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=0)(_Replica)
        spawn = lambda: actor_cls.remote(recipe, reference)  # noqa: E731
        actors = [spawn() for _ in range(workers)]
        try:
            self._drive(job, tasks, actors, spawn)
        finally:
            for a in actors:
                ray.kill(a)
        job.log(f"ray: {len(job.units)} evaluations in {time.perf_counter() - t0:.1f} s")

    def _drive(self, job: Job, tasks: list[list[list[Unit]]], actors: list, spawn: Callable) -> None:
        """Keep every actor `depth` tasks deep, store rows as they arrive, resubmit the tasks of dead actors."""
        ray = self.ray
        spares = len(actors)  # replacements for actors that die, at most as many as we started
        pending = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        in_flight: dict[Any, tuple[Any, int]] = {}
        depth = 2  # tasks queued per actor, so it never waits on the driver
        with unit_bar(len(job.units), job.progress, "profiling (ray)") as advance:
            while pending or in_flight:
                for a in actors:
                    while pending and sum(1 for x, _ in in_flight.values() if x is a) < depth:
                        k = pending.popleft()
                        in_flight[a.evaluate.remote(tasks[k])] = (a, k)
                if not in_flight:
                    raise RuntimeError(f"ray: every actor died; {len(pending)} tasks left (stored rows are kept)")
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                actor, k = in_flight.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    attempts[k] += 1
                    if attempts[k] >= self.max_attempts:
                        raise RuntimeError(f"ray: task {k} was lost with its actor {attempts[k]} times; giving "
                                           f"up (stored rows are kept; rerun to resume): {e}") from e  # fmt: skip
                    pending.appendleft(k)
                    if actor in actors:
                        actors.remove(actor)
                        job.log(f"ray: an actor died ({type(e).__name__}); its tasks go to the others")
                        if spares > 0:
                            spares -= 1
                            actors.append(spawn())
                    continue
                job.store.append(rows)
                advance(sum(len(b) for b in tasks[k]), tasks[k][-1][-1])


def import_ray():
    """`ray`, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(RAY_HINT) from e
    return ray


class _Replica:
    """A Ray actor's model replica: the driver's pipeline, reference, calibrated quantizers and metrics."""

    def __init__(self, recipe: dict, reference) -> None:
        import torch

        from mpsearch.model import find_denoiser, load_pipeline, weights_fingerprint
        from mpsearch.profiling.metrics import METRICS
        from mpsearch.profiling.session import QuantSession
        from mpsearch.profiling.store import ProfileError

        device = "cuda" if torch.cuda.is_available() and _gpu_ids() else "cpu"
        src = recipe["model"]
        if "files" in src:
            folder = Path(tempfile.mkdtemp(prefix="mpsearch-replica-"))
            for rel, data in src["files"].items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
            pipe = load_pipeline(folder, dtype=recipe["dtype"], device=device)
        else:
            pipe = load_pipeline(src["spec"], dtype=recipe["dtype"], device=device)
        pipe.set_progress_bar_config(disable=True)
        got = weights_fingerprint(find_denoiser(pipe)[1])
        if got != recipe["fingerprint"]:
            raise ProfileError(f"replica of {src.get('spec', 'the pipeline')!r} on this node has weights "
                               f"{got}, the driver's {recipe['fingerprint']}; give every node the same model")  # fmt: skip
        for name, metric in recipe["metrics"].items():
            METRICS[name] = metric  # the driver's, custom ones included
        session = QuantSession(pipe, **recipe["session"])
        _load_calibration(session, recipe["calibration"])
        self.prof = Profiler(pipe, reference, session, recipe["groups"], max_batch=recipe["max_batch"],
                             decode_batch=recipe["decode_batch"])  # fmt: skip
        self.prof.image_slots = recipe["image_slots"]

    def evaluate(self, batches: list[list[Unit]]) -> list[dict]:
        rows = []
        for b in batches:
            rows += self.prof.evaluate(b)
        return rows


def _gpu_ids() -> list:
    import ray

    return ray.get_gpu_ids()


def _recipe(job: Job) -> dict:
    """Everything an actor needs to rebuild the driver's profiler, except the reference (shared apart)."""
    from mpsearch.profiling.metrics import get_metric

    sess = job.prof.session
    names = sorted({m for u in job.units for m in u.metrics})
    return {
        "model": _model_source(job.model),
        "dtype": job.prof.denoiser.dtype,
        "fingerprint": job.store.meta["fingerprint"],
        "session": {"candidates": sess.candidates, "weight_cfg": sess.weight_cfg, "act_cfg": sess.act_cfg,
                    "bos_aware": sess.bos_aware, "split_shortcut": sess.split_shortcut,
                    "split_weights": sess.split_weights},
        "calibration": _calibration(sess),
        "groups": job.prof.groups,
        "max_batch": job.prof.max_batch,
        "decode_batch": job.prof.decode_batch,
        "image_slots": job.prof.image_slots,
        "metrics": {n: get_metric(n) for n in names},
    }  # fmt: skip


def _model_source(model: Any) -> dict:
    """How an actor gets the model: a spec it loads itself (None/'demo', hub id, a path every node can
    read), or a pipeline object's `save_pretrained` files, shipped through the object store."""
    if not hasattr(model, "components"):
        return {"spec": None if model is None else str(model)}
    with tempfile.TemporaryDirectory(prefix="mpsearch-ship-") as tmp:
        model.save_pretrained(tmp)
        return {"files": {str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}}


def _calibration(sess) -> dict:
    """The calibrated activation ranges of a `QuantSession` (shared and per step), so replicas need not
    calibrate again and use exactly the driver's."""
    return {"timesteps": sess.timesteps, "progressive": sess.progressive,
            "ranges": {n: (st.range, dict(st.step_range)) for n, st in sess.layers.items()}}  # fmt: skip


def _load_calibration(sess, state: dict) -> None:
    sess.timesteps, sess.progressive = state["timesteps"], state["progressive"]
    for name, (rng, step_range) in state["ranges"].items():
        sess.layers[name].range, sess.layers[name].step_range = rng, dict(step_range)

