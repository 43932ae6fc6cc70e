"""`mpsearch generate`: images from prompts, in full precision, with a plan simulated, or from an exported
checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mpsearch.cli.common import ModelOpt, console, fail


def generate(
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Path | None, typer.Option(help="A file of prompts, one per line.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write (a grid when several prompts).")] = Path("out.png"),
    model: ModelOpt = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    size: Annotated[int | None, typer.Option(help="Image side in pixels (default: the model's).")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="Sample with a plan: its bits (simulated, as "
                                              "`evaluate` does) and its kept timesteps.")] = None,
    quantized: Annotated[Path | None, typer.Option("--quantized", "-q", help="Sample with a checkpoint written "
                                                   "by `mpsearch export` (at its plan's kept timesteps).")] = None,
) -> None:
    """Generate images from prompts with the demo model or any diffusers text-to-image pipeline."""
    import contextlib

    from mpsearch.model import ModelError, load_pipeline
    from mpsearch.pipelines.demo import is_demo
    from mpsearch.pipelines.generate import generate as run
    from mpsearch.pipelines.generate import image_grid
    from mpsearch.pipelines.sampling import sampling_defaults
    from mpsearch.pipelines.timesteps import TimestepError
    from mpsearch.planning.plan import Plan, PlanError

    texts = list(prompt or [])
    if prompts is not None:
        if not prompts.is_file():
            fail(f"--prompts {prompts}: no such file")
        texts += [line.strip() for line in prompts.read_text().splitlines() if line.strip()]
    if not texts:
        fail("give at least one --prompt or a --prompts file")
    if plan is not None and quantized is not None:
        fail("pass --plan or --quantized, not both")
    try:
        the_plan = Plan.load(plan) if plan is not None else None
        if quantized is not None:
            from mpsearch.export.load import load_quantized

            pipe = load_quantized(quantized)
            the_plan = pipe.mpsearch_plan
        else:
            pipe = load_pipeline(model)
    except (ModelError, PlanError, OSError, ValueError) as e:
        fail(str(e))
    d = sampling_defaults(model)
    guidance = d["guidance"] if guidance is None else guidance
    kept = the_plan.kept_timesteps if the_plan is not None and steps is None else None
    steps = None if kept else steps or d["steps"]
    how = f"timesteps {kept}" if kept else f"{steps} steps"
    quant = contextlib.nullcontext()
    if plan is not None:
        from mpsearch.export.simulate import activation_bits, fake_quantize
        from mpsearch.profiling.calibration import demo_prompts, reference

        calib = None
        if activation_bits(the_plan):  # activation ranges are calibrated on prompts, as the profiler does
            calib = reference(pipe, demo_prompts(8) if is_demo(model) else texts, steps=d["steps"],
                              guidance=guidance)  # fmt: skip
        try:
            quant = fake_quantize(pipe, the_plan, calib=calib)
        except (PlanError, ValueError) as e:
            fail(str(e))
    try:
        with quant, console.status(f"generating {len(texts)} image(s), {how}"):
            images = run(pipe, texts, seed=seed, steps=steps, timesteps=kept, guidance=guidance, height=size, width=size)
    except TimestepError as e:
        fail(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        images[0].save(out)
    else:
        cols = min(len(images), 8)
        image_grid(images, rows=-(-len(images) // cols), cols=cols, labels=texts, tile=96).save(out)
    console.print(f"wrote {out} ({len(images)} image(s), {how}, guidance {guidance:g}, seed {seed})")

