"""Prompt adherence of the bundled demo model, and how uniform weight quantization spoils it.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_quality.py                      # the UNet demo
    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_quality.py --model demo-dit     # the SD3 DiT

Measures, with the analytic detector, the fraction of images whose shape, colour and position all match
the prompt (and each attribute alone) on in-domain and held-out prompt sets: at the main setting (UNet:
20 DDIM steps, guidance 4; DiT: its default steps and guidance, `zoo.DIT_STEPS/DIT_GUIDANCE`), and at 4
steps with the guidance picked by a sweep on separate seeds (and at guidance 4). Then the quick
quantization sanity check: denoiser weights only, per-output-channel symmetric min-max fake quant, uniform
W8/W4/W3/W2 plus three content/quality splits (the inventory's groups: MixDQ's `attn2`/`ff` = content on
the UNet, the text stream on the DiT).

Writes benchmarks/results/demo_quality{,_dit}.{json,md} and docs/images/demo{,_dit}_grid.png (+ quant grid);
the DiT's report repeats the UNet's rows beside its own.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from mpsearch.model import classify, find_denoiser, inventory, load_pipeline
from mpsearch.pipelines.generate import generate, image_grid
from mpsearch.zoo import BUNDLED, DIT_GUIDANCE, DIT_STEPS, detector, scenes

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1


def fake_quant_weights(module: torch.nn.Module, bits_of) -> int:
    """Quantize-dequantize, in place, the weights of every Linear/Conv2d whose bits_of(name) is not None.

    Per output channel, symmetric, min-max scale max|w| / (2^(b-1) - 1). Returns the number of layers.
    """
    n = 0
    with torch.no_grad():
        for name, m in module.named_modules():
            if not isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
                continue
            bits = bits_of(name)
            if bits is None:
                continue
            w = m.weight
            qmax = 2 ** (bits - 1) - 1
            scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12) / qmax
            w.copy_(torch.clamp(torch.round(w / scale), -qmax, qmax) * scale)
            n += 1
    return n


GROUPS: dict[str, str] = {}  # layer -> content/quality, from the model's inventory (set in main)


def _is_content(name: str) -> bool:
    return GROUPS.get(name, classify(name)) == "content"  # the inventory's group, else MixDQ's attn2/ff rule


QUANT_PLANS = {
    "uniform W8": lambda n: 8,
    "uniform W4": lambda n: 4,
    "uniform W3": lambda n: 3,
    "uniform W2": lambda n: 2,
    "content W2, quality fp": lambda n: 2 if _is_content(n) else None,
    "quality W2, content fp": lambda n: None if _is_content(n) else 2,
    "content W3, quality W4": lambda n: 3 if _is_content(n) else 4,
}


def score(pipe, prompts, *, steps, guidance, seed) -> dict:
    t = time.perf_counter()
    images = generate(pipe, prompts, seed=seed, steps=steps, guidance=guidance, batch_size=64)
    secs = time.perf_counter() - t
    full, per = detector.adherence(images, prompts)
    return {"full": full, **per, "n": len(prompts), "seconds": round(secs, 2), "_images": images}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo", help="demo | demo-dit | a pipeline folder")
    ap.add_argument("--n", type=int, default=96, help="in-domain prompts")
    ap.add_argument("--n-heldout", type=int, default=98, help="held-out prompts (7 per combination)")
    ap.add_argument("--sweep-n", type=int, default=90, help="prompts for the 4-step guidance sweep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-quant", action="store_true", help="skip the quantization sanity check")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)

    with warnings.catch_warnings():  # diffusers 0.42 renames torch_dtype to dtype; older ones lack dtype
        warnings.simplefilter("ignore", FutureWarning)
        pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    dit = args.model == "demo-dit"
    main_steps, main_g = (DIT_STEPS, DIT_GUIDANCE) if dit else (20, 4.0)
    suffix = "_dit" if dit else ""
    GROUPS.update({l.name: l.group for l in inventory(pipe).layers})
    component, den = find_denoiser(pipe)
    sets = {
        "in-domain": scenes.sample_prompts("train", args.n, seed=args.seed),
        "held-out": scenes.sample_prompts("heldout", args.n_heldout, seed=args.seed),
    }
    res: dict = {"schema": SCHEMA, "model": str(BUNDLED.get(args.model, args.model)), "command": " ".join(sys.argv),
                 "seed": args.seed}  # fmt: skip
    res["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }

    # 1. full precision at the main setting
    fp = {name: score(pipe, p, steps=main_steps, guidance=main_g, seed=args.seed) for name, p in sets.items()}
    print(f"{main_steps} steps, g={main_g}:", {k: _pct(v["full"]) for k, v in fp.items()}, flush=True)

    # 2. 4 steps: pick guidance on other seeds and prompts, then report on the main sets
    sweep_prompts = scenes.sample_prompts("all", args.sweep_n, seed=args.seed + 1000)
    sweep = {}
    for g in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        sweep[g] = score(pipe, sweep_prompts, steps=4, guidance=g, seed=args.seed + 1000)["full"]
        print(f"4 steps sweep g={g}: {_pct(sweep[g])}", flush=True)
    g4 = max(sweep, key=lambda g: (sweep[g], -abs(g - 2.0)))
    few = {name: score(pipe, p, steps=4, guidance=g4, seed=args.seed) for name, p in sets.items()}
    few_g4 = {name: score(pipe, p, steps=4, guidance=4.0, seed=args.seed) for name, p in sets.items()}
    print(f"4 steps, g={g4}:", {k: _pct(v["full"]) for k, v in few.items()}, flush=True)

    res["adherence"] = [
        {"steps": main_steps, "guidance": main_g, "set": k, **{a: b for a, b in v.items() if a != "_images"}}
        for k, v in fp.items()
    ]
    res["adherence"] += [
        {"steps": 4, "guidance": g4, "set": k, **{a: b for a, b in v.items() if a != "_images"}}
        for k, v in few.items()
    ]
    res["adherence"] += [
        {"steps": 4, "guidance": 4.0, "set": k, **{a: b for a, b in v.items() if a != "_images"}}
        for k, v in few_g4.items()
    ]
    res["guidance_sweep_4_steps"] = {
        "prompts": len(sweep_prompts),
        "seed": args.seed + 1000,
        "full": sweep,
        "chosen": g4,
    }

    # grid: 16 in-domain and 16 held-out prompts at 20 steps
    args.images.mkdir(parents=True, exist_ok=True)
    k = min(16, len(sets["in-domain"]), len(sets["held-out"]))
    pick = [("in-domain", i) for i in range(k)] + [("held-out", i) for i in range(k)]
    imgs = [fp[s]["_images"][i] for s, i in pick]
    labels = []
    for s, i in pick:
        p = sets[s][i]
        ok = all(
            detector.detect(fp[s]["_images"][i])[k] == v for k, v in scenes.parse_caption(p)._asdict().items()
        )
        labels.append(("" if s == "in-domain" else "[held-out] ") + p[2:] + ("" if ok else " [WRONG]"))
    image_grid(imgs, rows=-(-len(imgs) // 8), cols=8, labels=labels, tile=112).save(
        args.images / f"demo{suffix}_grid.png"
    )

    # 3. quantization sanity (denoiser weights only, at the main setting)
    if not args.no_quant:
        fp_state = {k: v.clone() for k, v in den.state_dict().items()}
        res["quant"] = []
        quant_imgs = {"fp32": fp["in-domain"]["_images"][:8]}
        for plan, bits_of in QUANT_PLANS.items():
            den.load_state_dict(fp_state)
            n_layers = fake_quant_weights(den, bits_of)
            row = {"plan": plan, "layers_quantized": n_layers}
            for name, p in sets.items():
                s = score(pipe, p, steps=main_steps, guidance=main_g, seed=args.seed)
                quant_imgs.setdefault(plan, s["_images"][:8]) if name == "in-domain" else None
                row[name] = {a: b for a, b in s.items() if a != "_images"}
            res["quant"].append(row)
            print(f"{plan}: " + ", ".join(f"{k} {_pct(row[k]['full'])}" for k in sets), flush=True)
        den.load_state_dict(fp_state)
        show = ["fp32", "uniform W4", "uniform W3", "uniform W2"]
        qimgs = [im for k in show for im in quant_imgs[k]]
        qlabels = [f"{k}: {p[2:]}" for k in show for p in sets["in-domain"][:8]]
        image_grid(qimgs, rows=len(show), cols=8, labels=qlabels, tile=112).save(
            args.images / f"demo{suffix}_quant_grid.png"
        )

    res.update(component=component, suffix=suffix, main={"steps": main_steps, "guidance": main_g})
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"demo_quality{suffix}.json").write_text(json.dumps(res, indent=2) + "\n")
    unet = args.results / "demo_quality.json"
    beside = json.loads(unet.read_text()) if dit and unet.is_file() else None
    (args.results / f"demo_quality{suffix}.md").write_text(_markdown(res, beside))
    print((args.results / f"demo_quality{suffix}.md").read_text())
    return res


def _rows(res: dict) -> list[str]:
    return [
        f"| {r['steps']} | {r['guidance']} | {r['set']} | {r['n']} | {_pct(r['full'])} | {_pct(r['shape'])} | "
        f"{_pct(r['color'])} | {_pct(r['position'])} | {r['seconds']} |"
        for r in res["adherence"]
    ]


def _markdown(res: dict, beside: dict | None = None) -> str:
    """The report; `beside`: the UNet's results, repeated under the DiT's for comparison."""
    cmd = "OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_quality.py" + (
        " " + " ".join(res["command"].split()[1:]) if len(res["command"].split()) > 1 else ""
    )
    sfx, main = res.get("suffix", ""), res.get("main", {"steps": 20, "guidance": 4.0})
    sampler = "flow-matching Euler" if sfx else "DDIM trailing"
    header = ["| steps | guidance | set | n | full % | shape % | colour % | position % | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    out = [
        f"# Demo model{' (DiT)' if sfx else ''}: prompt adherence",
        "",
        f"Command: `{cmd}`",
        "",
        f"Model `{Path(res['model']).name}`; detector = `mpsearch.zoo.detector` (all of shape, colour, position "
        f"right = 'full'); {sampler}; seeds {res['seed']}+i per image; torch {res['machine']['torch']}, "
        f"{res['machine']['threads']} threads.",
        "",
        *header,
        *_rows(res),
    ]
    sw = res["guidance_sweep_4_steps"]
    out += [
        "",
        f"4-step guidance chosen by a sweep on {sw['prompts']} other prompts (all 90 combinations, seed "
        f"{sw['seed']}): "
        + ", ".join(f"g={g}: {_pct(v)}%" for g, v in sw["full"].items())
        + f" → **{sw['chosen']}**.",
        "",
        f"![grid](../../docs/images/demo{sfx}_grid.png)",
    ]
    if beside is not None:
        out += ["", "## Beside it: the UNet demo (`benchmarks/results/demo_quality.json`, same prompts and seeds)",
                "", *header, *_rows(beside)]  # fmt: skip
    if "quant" in res:
        out += [
            "",
            f"## Quantization sanity ({res.get('component', 'unet')} weights only, per-output-channel symmetric "
            f"min-max, {main['steps']} steps, g={main['guidance']})",
            "",
            "| plan | layers | in-domain full % | held-out full % | in-domain shape / colour / position % |",
            "|---|---|---|---|---|",
        ]
        for r in res["quant"]:
            a, b = r["in-domain"], r["held-out"]
            out.append(
                f"| {r['plan']} | {r['layers_quantized']} | {_pct(a['full'])} | {_pct(b['full'])} | "
                f"{_pct(a['shape'])} / {_pct(a['color'])} / {_pct(a['position'])} |"
            )
        out += ["", f"![quant grid](../../docs/images/demo{sfx}_quant_grid.png)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
