"""`mpsearch profile` and `mpsearch merge`: registered on the main typer app by `register(app)`."""


from pathlib import Path
from typing import Annotated

import typer


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated integers, got {text!r}") from None


def _log(msg: str) -> None:
    """A profiling note, dim on stdout; a `warning: ...` on stderr."""
    from rich.markup import escape

    from mpsearch.cli_common import console, err

    if msg.startswith("warning: "):
        err.print(f"[yellow]warning:[/] {escape(msg[len('warning: '):])}")
    else:
        console.print(f"[dim]{escape(msg)}[/]")


def register(app: typer.Typer) -> None:
    from mpsearch.cli_common import ModelOpt, console, fail, regex

    @app.command()
    def profile(
        model: ModelOpt = None,
        bits: Annotated[str | None, typer.Option(help="Weight candidates, e.g. 2,3,4,5,6,8 (default).")] = None,
        act_bits: Annotated[str | None, typer.Option(help="Activation candidates (default 4,6,8,16; 16 = FP).")] = None,
        tensors: Annotated[str, typer.Option(help="weight,act (default both).")] = "weight,act",
        metrics: Annotated[str | None, typer.Option(
            help="Registered metric names (default sqnr,mse,ssim, plus adherence on the demo).")] = None,
        prompts: Annotated[Path | None, typer.Option(help="Calibration prompts, one per line "
                                                       "(default: the demo's scene sampler).")] = None,
        n_prompts: Annotated[int, typer.Option(help="Demo prompts to sample when --prompts is not given.")] = 8,
        seed: Annotated[int, typer.Option(help="First seed; prompt i uses seed + i.")] = 0,
        steps: Annotated[int | None, typer.Option(help="Sampling steps (demo: its own setting).")] = None,
        guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
        guidance_rescale: Annotated[float, typer.Option(help="SD/SDXL's CFG rescale factor (0 = off).")] = 0.0,
        step_groups: Annotated[str, typer.Option(help="auto | N (TMPQ-DM quadratic grouping into N).")] = "auto",
        mode: Annotated[str, typer.Option(help="exact | batched (slot batching, same numbers) | fisher (proxy).")] = "exact",
        slots: Annotated[int, typer.Option(help="Perturbations per batched forward (--mode batched).")] = 8,
        out: Annotated[Path, typer.Option("--out", "-o", help="Profile folder (resumed when it exists).")] = Path("profiles/demo"),
        shard: Annotated[str | None, typer.Option(help="i/n: measure every n-th evaluation from the i-th.")] = None,
        all_metrics: Annotated[bool, typer.Option("--all-metrics", help="Every layer on every metric.")] = False,
        prune: Annotated[bool, typer.Option("--prune", help="Also score every prunable block (LAPTOP-Diff: "
                                            "the damage of removing it), so solve can mix pruning and bits. "
                                            "With --tensors '' only the blocks are scored.")] = False,
        layers: Annotated[str | None, typer.Option(help="Regex: profile only matching layers.")] = None,
        bos_aware: Annotated[bool, typer.Option(help="MixDQ BOS-aware cross-attention K/V.")] = True,
        fmt: Annotated[str, typer.Option("--format", help="Quantize weights as this export format does "
                                         "(gguf, sdnq: their own rounding, widths and no BOS rows).")] = "packed",
        split_shortcut: Annotated[bool, typer.Option(help="Q-Diffusion split-shortcut activation ranges.")] = True,
        progressive: Annotated[bool, typer.Option(help="PCR progressive (per-step) activation calibration.")] = False,
        plugin: Annotated[list[str] | None, typer.Option(help="Python file or module registering metrics (repeatable).")] = None,
        csv: Annotated[Path | None, typer.Option(help="Also write the profile as CSV here.")] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
        backend: Annotated[str, typer.Option(help="local | ray (measurements spread over Ray actors, "
                                                  "one model replica each; pip install 'mpsearch[ray]').")] = "local",
        address: Annotated[str | None, typer.Option(help="Ray cluster to join, e.g. auto or ray://head:10001 "
                                                         "(default: RAY_ADDRESS, else a local one).")] = None,
        workers: Annotated[int | None, typer.Option(help="Ray actors (default: the cluster's GPUs, else CPUs).")] = None,
    ) -> None:
        """Measure each layer's sensitivity (one layer quantized at a time) and store it under --out."""
        import time

        from mpsearch.model import ModelError
        from mpsearch.profiling.metrics import load_plugin
        from mpsearch.profiling.profiler import profile as run_profile
        from mpsearch.profiling.store import ProfileError

        if layers is not None:
            regex(layers, "--layers")
        for p in plugin or []:
            load_plugin(p)
        t0 = time.perf_counter()
        try:
            from mpsearch.planning.cost import get_format
            from mpsearch.planning.quantizer import weight_config

            bos_aware = bos_aware and get_format(fmt).keeps_bos_rows
            prof = run_profile(
                model, out=out, bits=_ints(bits, "--bits"), act_bits=_ints(act_bits, "--act-bits"),
                tensors=[t.strip() for t in tensors.split(",") if t.strip()], prune=prune,
                metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
                prompts=prompts, n_prompts=n_prompts, seed=seed, steps=steps, guidance=guidance,
                guidance_rescale=guidance_rescale,
                step_groups=int(step_groups) if step_groups.isdigit() else step_groups, mode=mode, slots=slots,
                shard=shard, all_metrics=all_metrics, layers=layers, bos_aware=bos_aware,
                split_shortcut=split_shortcut, progressive=progressive, device=device, progress=True,
                weight_cfg=weight_config(fmt),
                log=_log, backend=backend, address=address, workers=workers,
            )  # fmt: skip
        except (ModelError, ProfileError, ValueError, KeyError, FileNotFoundError, ImportError) as e:
            fail(str(e).strip("'\""))
        console.print(f"{out}: {len(prof)} measurements ({time.perf_counter() - t0:.0f} s), metrics "
                      f"{', '.join(prof.metrics)}, step groups {prof.step_groups}")  # fmt: skip
        if csv:
            console.print(f"CSV → {prof.to_csv(csv)}")

    @app.command()
    def merge(
        shards: Annotated[list[Path], typer.Argument(help="Shard folders written with --shard i/n.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Merged profile folder (new).")] = Path("profiles/merged"),
    ) -> None:
        """Join profile shards of the same model and settings into one profile."""
        from mpsearch.profiling.lock import FolderLocked
        from mpsearch.profiling.store import ProfileError
        from mpsearch.profiling.store import merge as run_merge

        try:
            prof = run_merge(out, shards)
        except (ProfileError, FolderLocked) as e:
            fail(str(e))
        console.print(f"{out}: {len(prof)} measurements from {len(shards)} shards")
