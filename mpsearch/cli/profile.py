"""`mpsearch profile`: each layer's sensitivity, measured and stored in a profile folder; the options become
a `ProfileOptions` (`mpsearch.profiling.profiler`)."""

# no `from __future__ import annotations`: typer reads the option types at run time
from pathlib import Path
from typing import Annotated

import typer

from mpsearch.cli.common import ModelOpt, console, err, fail, group_overrides, regex


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

    if msg.startswith("warning: "):
        err.print(f"[yellow]warning:[/] {escape(msg[len('warning: '):])}")
    else:
        console.print(f"[dim]{escape(msg)}[/]")


def _format_quantizer(fmt: str, bos_aware: bool) -> tuple[object, bool]:
    """The weight quantizer of export format `fmt` (`planning.quantizer.weight_config`), and whether BOS-aware
    K/V stays on (a native format such as gguf or sdnq stores no BOS rows)."""
    from mpsearch.planning.cost import get_format
    from mpsearch.planning.quantizer import weight_config

    try:
        weight_format = get_format(fmt)
    except ValueError as e:
        fail(str(e))
    return weight_config(weight_format), bos_aware and weight_format.keeps_bos_rows


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
    resolution: Annotated[int | None, typer.Option(help="Image side in pixels (default: the model's).")] = None,
    groups: Annotated[str, typer.Option(help="Content vs quality: rule (the family's: MixDQ's names on UNets, "
                                        "the text stream on joint attention) | measured (one output and one "
                                        "image measurement per layer at W4 decide).")] = "rule",
    group: Annotated[list[str] | None, typer.Option(
        help="Group override REGEX=content|quality (repeatable; tried before --groups).")] = None,
    image_widths: Annotated[str | None, typer.Option(
        help="Widths the image metrics measure: triage (every width but a tensor's highest, estimated from "
             "the next one down and marked estimated) | all. Default: triage, or the folder's own setting "
             "when resuming.")] = None,
    mode: Annotated[str, typer.Option(help="batched (slot batching, the same numbers as exact) | exact "
                                          "(one at a time) | fisher (proxy).")] = "batched",
    slots: Annotated[int, typer.Option(help="Perturbations per batched forward (--mode batched).")] = 8,
    max_memory: Annotated[str | None, typer.Option(help="Peak memory ceiling on the device, e.g. 22GiB: rows, "
                                                   "slots and decodes are chunked to fit.")] = None,
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
    from mpsearch.profiling.metrics import load_plugin
    from mpsearch.profiling.profiler import ProfileOptions
    from mpsearch.profiling.triage import RULES

    if layers is not None:
        regex(layers, "--layers")
    for p in plugin or []:
        load_plugin(p)
    if groups not in ("rule", "measured"):
        fail(f"--groups {groups!r}: expected rule or measured")
    if image_widths is not None and image_widths not in RULES:
        fail(f"--image-widths {image_widths!r}: expected {' or '.join(RULES.names())}")
    weight_cfg, bos_aware = _format_quantizer(fmt, bos_aware)
    options = ProfileOptions(
        out=out, bits=_ints(bits, "--bits"), act_bits=_ints(act_bits, "--act-bits"),
        tensors=[t.strip() for t in tensors.split(",") if t.strip()], prune=prune,
        metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
        prompts=prompts, n_prompts=n_prompts, seed=seed, steps=steps, guidance=guidance,
        guidance_rescale=guidance_rescale,
        step_groups=int(step_groups) if step_groups.isdigit() else step_groups, mode=mode, slots=slots,
        image_widths=image_widths,
        resolution=resolution, groups=groups, group_overrides=group_overrides(group),
        max_memory=max_memory, shard=shard, all_metrics=all_metrics, layers=layers,
        bos_aware=bos_aware, weight_cfg=weight_cfg,
        split_shortcut=split_shortcut, progressive=progressive, device=device, progress=True,
        log=_log, backend=backend, address=address, workers=workers,
    )  # fmt: skip
    _run(model, options, csv)


def _run(model, options, csv: Path | None) -> None:
    """Profile, then one summary line (and the CSV when asked); a failure is one `error:` line."""
    import time

    from mpsearch.model import ModelError
    from mpsearch.profiling.profiler import profile as run_profile
    from mpsearch.profiling.store import ProfileError

    t0 = time.perf_counter()
    try:
        prof = run_profile(model, options)
    except (ModelError, ProfileError, ValueError, KeyError, FileNotFoundError, ImportError) as e:
        fail(str(e).strip("'\""))
    console.print(f"{options.out}: {len(prof)} measurements ({time.perf_counter() - t0:.0f} s), metrics "
                  f"{', '.join(prof.metrics)}, step groups {prof.step_groups}")  # fmt: skip
    if csv:
        console.print(f"CSV → {prof.to_csv(csv)}")
