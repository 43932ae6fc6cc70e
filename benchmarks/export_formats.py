"""Export formats side by side: bytes, export and load time, peak memory and generation time (issue #19).

    python benchmarks/export_formats.py                       # the demo model, every format, ~4 bits
    python benchmarks/export_formats.py --sizes sdxl-base     # + predicted bytes of an SDXL UNet (meta device)
    python benchmarks/export_formats.py --denoiser sd15       # a random-weight SD 1.5-size UNet alone (memory)
    python benchmarks/export_formats.py --denoiser sdxl-base --baseline /tmp/base   # + an earlier tree's
        # export and load in the same run (git archive <commit> | tar -x -C /tmp/base), rows <fmt>@base

For each format the demo model is exported with the same per-layer recipe (4 bits where the format has
them for the layer, else 8, else 16: gguf keeps convs fp16), then loaded in a fresh Python process the
way its users load it (fp16: diffusers `from_pretrained` of the float model; packed, quanto:
`mpsearch.load_quantized`; sdnq: `DiffusionPipeline.from_pretrained`; gguf: `from_single_file` with
`GGUFQuantizationConfig`), which reports its resident memory (VmRSS after loading, peak `ru_maxrss`, and
the same after the imports alone, so the difference is the pipeline) and the time of one image. CPU only:
GPU memory is measured when a GPU is lent (`--device cuda`).
RSS columns are above the process's RSS after its imports (the peak: above the imports' peak). `--sizes` adds the cost model's bytes of
bundled configs' denoisers (no weights: bytes do not depend on their values). Results: benchmarks/results/export_formats[_<denoiser>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")

FORMATS = ("fp16", "packed", "quanto", "sdnq", "gguf")  # also "packed-numpy": packed with the NumPy reference packer

LOADER = r"""
import json, os, sys, time
import torch
fmt, path, device, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
dtype = torch.float32 if device == "cpu" else torch.float16
import diffusers  # noqa: F401  (imports are the baseline)
if fmt in ("packed", "quanto", "packed-numpy"):
    import mpsearch.export.load  # noqa: F401
    import optimum.quanto.nn  # noqa: F401  (its runtime; ~107 MB of imports, not the checkpoint's)
if fmt == "packed-numpy":  # the same format, unpacked by the NumPy reference (the packer before #19)
    import mpsearch.export.formats.packed as _p
    from mpsearch.export.packing import unpack_bits_numpy
    _p.unpack_bits = unpack_bits_numpy
if fmt == "sdnq":
    import sdnq  # noqa: F401
if fmt == "gguf":
    import gguf  # noqa: F401
def rss(key="VmRSS"):  # VmHWM: this process's peak (ru_maxrss would include the parent's, inherited at fork)
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
base, base_peak = rss(), rss("VmHWM")
t0 = time.perf_counter()
if fmt in ("packed", "quanto", "packed-numpy"):
    from mpsearch.export.load import load_quantized
    pipe = load_quantized(path, dtype=dtype, device=device)
elif fmt == "gguf":
    from diffusers import GGUFQuantizationConfig, UNet2DConditionModel
    unet = UNet2DConditionModel.from_single_file(os.path.join(path, "unet", "diffusion_pytorch_model.gguf"),
        config=os.path.join(path, "unet"), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        torch_dtype=dtype)
    pipe = diffusers.DiffusionPipeline.from_pretrained(path, unet=unet, torch_dtype=dtype).to(device)
else:  # fp16 (the float model) and sdnq: diffusers' own from_pretrained
    pipe = diffusers.DiffusionPipeline.from_pretrained(path, torch_dtype=dtype).to(device)
load_s = time.perf_counter() - t0
loaded = rss()
if device == "cuda":
    torch.cuda.synchronize()
    gpu_loaded = torch.cuda.memory_allocated()
pipe.set_progress_bar_config(disable=True)
t0 = time.perf_counter()
with torch.inference_mode():
    pipe("red circle at the top", num_inference_steps=steps, guidance_scale=3.0,
         generator=torch.Generator().manual_seed(0), output_type="np")
gen_s = time.perf_counter() - t0
out = {"load_s": load_s, "generate_s": gen_s, "rss_imports": base, "rss_loaded": loaded,
       "rss_pipeline": loaded - base, "rss_after_call": rss() - base, "peak_rss": rss("VmHWM"),
       "peak_rss_imports": base_peak}
if device == "cuda":
    out["gpu_allocated_loaded"] = gpu_loaded
    out["gpu_peak"] = torch.cuda.max_memory_allocated()
print("RESULT " + json.dumps(out))
"""


DENOISER_LOADER = r"""
import json, os, sys, time
import torch
fmt, path, cfg_name = sys.argv[1], sys.argv[2], sys.argv[3]
dtype = torch.float16
import diffusers  # noqa: F401
if fmt in ("packed", "quanto", "packed-numpy"):
    import mpsearch.export.load  # noqa: F401
    import optimum.quanto.nn  # noqa: F401  (its runtime; ~107 MB of imports, not the checkpoint's)
if fmt == "packed-numpy":  # the same format, unpacked by the NumPy reference (the packer before #19)
    import mpsearch.export.formats.packed as _p
    from mpsearch.export.packing import unpack_bits_numpy
    _p.unpack_bits = unpack_bits_numpy
if fmt == "sdnq":
    import sdnq  # noqa: F401
if fmt == "gguf":
    import gguf  # noqa: F401
def rss(key="VmRSS"):  # VmHWM: this process's peak (ru_maxrss would include the parent's, inherited at fork)
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
base, base_peak = rss(), rss("VmHWM")
folder = os.path.join(path, "unet")
t0 = time.perf_counter()
if fmt in ("packed", "quanto", "packed-numpy"):
    from mpsearch.export.load import load_denoiser
    unet = load_denoiser(folder, dtype=dtype)
elif fmt == "gguf":
    from diffusers import GGUFQuantizationConfig, UNet2DConditionModel
    unet = UNet2DConditionModel.from_single_file(os.path.join(folder, "diffusion_pytorch_model.gguf"), config=folder,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)
else:
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, torch_dtype=dtype)
load_s = time.perf_counter() - t0
loaded, loaded_peak = rss(), rss("VmHWM")
c = unet.config
x = torch.randn(1, c.in_channels, 32, 32, dtype=dtype)
ctx = torch.randn(1, 77, c.cross_attention_dim, dtype=dtype)
extra = {}
if c.addition_embed_type == "text_time":
    extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, c.projection_class_embeddings_input_dim
             - 6 * c.addition_time_embed_dim, dtype=dtype), "time_ids": torch.zeros(1, 6, dtype=dtype)}}
t0 = time.perf_counter()
with torch.no_grad():
    unet(x, 500, ctx, **extra)
call_s = time.perf_counter() - t0
print("RESULT " + json.dumps({"load_s": load_s, "generate_s": call_s, "rss_imports": base, "rss_loaded": loaded,
      "rss_pipeline": loaded - base, "rss_after_call": rss() - base, "peak_rss": rss("VmHWM"),
      "peak_rss_imports": base_peak, "peak_rss_load": loaded_peak}))
"""


BASELINE_EXPORT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, ".")  # the baseline tree (cwd): its mpsearch and its benchmarks/export_formats.py
from benchmarks.export_formats import export_all
work, formats, bits, denoiser = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4] or None
print("RESULT " + json.dumps(export_all(work, formats, bits, denoiser)))
"""


def random_pipeline(config: str):
    """The tiny test pipeline around a random-weight fp16 denoiser of the bundled config's size (the other
    components are never run: exports here skip BOS rows and components)."""
    import diffusers
    import torch

    from mpsearch.model import bundled_config
    from tests.conftest import build_tiny_pipeline, build_tiny_sdxl_pipeline

    torch.manual_seed(0)
    cfg = bundled_config(config)["denoiser"]
    torch.set_default_dtype(torch.float16)  # built in fp16 directly: SDXL's fp32 copy alone would be 10 GB
    try:
        unet = getattr(diffusers, cfg["_class_name"]).from_config(cfg).to(torch.float16)
    finally:
        torch.set_default_dtype(torch.float32)
    pipe = (build_tiny_sdxl_pipeline if cfg.get("addition_embed_type") == "text_time" else build_tiny_pipeline)()
    pipe.register_modules(unet=unet)
    return pipe


def recipe(inv, fmt_name: str, bits: int):
    """The same plan for every format: `bits` where the format has it for the layer, else 8, else 16."""
    from mpsearch.planning.cost import get_format
    from mpsearch.planning.plan import LayerBits, Plan

    fmt = get_format(fmt_name)
    pick = lambda layer: next(b for b in (bits, 8, 16) if fmt.stores(layer, b))  # noqa: E731
    plan = Plan({l.name: LayerBits(pick(l)) for l in inv.layers}, model=inv.model, fingerprint=inv.fingerprint,
                format=fmt_name)
    plan.predict(inv)
    return plan


def export_all(work: Path, formats, bits: int, denoiser: str | None = None) -> dict:
    """Export the demo (or a random `denoiser`-size UNet) in each format: bytes and export seconds."""
    import torch

    from mpsearch.export.write import export
    from mpsearch.model import inventory, load_pipeline
    from mpsearch.planning.cost import fp16_bytes, stored_mean_bits

    pipe = random_pipeline(denoiser) if denoiser else load_pipeline(None)
    inv = inventory(pipe)
    rows = {}
    for fmt in formats:
        out = work / fmt
        t0 = time.perf_counter()
        if fmt == "fp16":
            if denoiser:
                pipe.unet.save_pretrained(out / "unet")
            else:
                load_pipeline(None, dtype=torch.float16).save_pretrained(out)
            size = sum(f.stat().st_size for f in (out / "unet").glob("*.safetensors"))
            rows[fmt] = {"export_s": time.perf_counter() - t0, "predicted_bytes": fp16_bytes(inv),
                         "file_bytes": size, "mean_stored_bits": 16.0}
            continue
        plan = recipe(inv, fmt.removesuffix("-numpy"), bits)
        with numpy_packer(fmt == "packed-numpy"):
            r = export(plan, out, model=pipe, bos=not denoiser, components=not denoiser)
        rows[fmt] = {"export_s": time.perf_counter() - t0, "predicted_bytes": r.predicted_bytes,
                     "tensor_bytes": r.tensor_bytes, "file_bytes": r.file_bytes, "matches": r.matches,
                     "quantized_layers": r.quantized_layers, "layers": r.layers,
                     "mean_stored_bits": stored_mean_bits(inv, plan.w_bits(), plan.format)}
    return rows


@contextmanager
def numpy_packer(on: bool):
    """`packed-numpy`: export the `packed` format with the NumPy reference packer (the one before issue
    #19), for the old/new ratio in the same run; the bytes are the same."""
    import mpsearch.export.formats.packed as packed
    from mpsearch.export.packing import pack_bits_numpy

    saved = packed.pack_bits
    packed.pack_bits = pack_bits_numpy if on else saved
    try:
        yield
    finally:
        packed.pack_bits = saved


def child(args: list[str], tree: Path, what: str) -> dict:
    """Run a script of this file in a fresh Python whose `mpsearch` is the one in `tree`; its RESULT."""
    run = subprocess.run([sys.executable, "-c", *args], cwd=tree, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree)})
    line = next((l for l in run.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{what} failed:\n{run.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def load_in_child(fmt: str, path: Path, device: str, steps: int, denoiser: str | None = None,
                  tree: Path = ROOT) -> dict:
    args = [DENOISER_LOADER, fmt, str(path), denoiser] if denoiser else [LOADER, fmt, str(path), device, str(steps)]
    return child(args, tree, f"{fmt}: the loader")


def baseline(tree: Path, work: Path, formats, bits: int, denoiser: str | None, device: str, steps: int) -> dict:
    """Every format exported and loaded by an earlier mpsearch source tree (`--baseline`), in child
    processes of this run: `{"<fmt>@base": row}`, with whether its file equals this tree's byte for byte."""
    fmts = [f for f in formats if f != "fp16"]
    rows = child([BASELINE_EXPORT, str(work), ",".join(fmts), str(bits), denoiser or ""], tree, "the baseline export")
    out = {}
    for fmt in fmts:
        out[f"{fmt}@base"] = {**rows[fmt], **load_in_child(fmt, work / fmt, device, steps, denoiser, tree)}
    return out


def same_files(a: Path, b: Path) -> bool:
    """Whether two exports' denoiser folders hold the same files: safetensors files the same tensors
    (names, dtypes, shapes, bytes) and metadata (their order in the file may differ: safetensors orders its
    metadata at random), every other file the same bytes."""
    import filecmp

    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    same = {".safetensors": same_tensors, ".gguf": same_gguf, ".json": same_json}
    return fa == fb and all(same.get(f.suffix, lambda x, y: filecmp.cmp(x, y, shallow=False))(a / f, b / f)
                            for f in fa)


def same_json(a: Path, b: Path) -> bool:
    """The same JSON but for `_name_or_path` (diffusers records where the source model was read from) and
    the order of lists of names (sdnq writes its module sets in Python's per-process set order)."""
    def norm(x):
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items() if k != "_name_or_path"}
        if isinstance(x, list):
            items = [norm(v) for v in x]
            return sorted(items) if all(isinstance(v, str) for v in items) else items
        return x

    return norm(json.loads(a.read_text())) == norm(json.loads(b.read_text()))


def same_gguf(a: Path, b: Path) -> bool:
    """The same tensors (names, types, shapes, bytes) and fields but for `general.name` (the source path)."""
    import gguf

    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    fields = lambda r: {k: [bytes(p) for p in f.parts] for k, f in r.fields.items() if k != "general.name"}  # noqa: E731
    tensors = lambda r: [(t.name, t.tensor_type, list(t.shape), bytes(t.data)) for t in r.tensors]  # noqa: E731
    return fields(ra) == fields(rb) and tensors(ra) == tensors(rb)


def same_tensors(a: Path, b: Path) -> bool:
    import torch

    from mpsearch.export.tensorfile import Reader

    raw = lambda r, k: r.get(k).reshape(-1).view(torch.uint8)  # noqa: E731
    with Reader(a) as ra, Reader(b) as rb:
        if ra.metadata != rb.metadata or sorted(ra.keys()) != sorted(rb.keys()):
            return False
        return all(ra.entries[k]["dtype"] == rb.entries[k]["dtype"] and ra.shape(k) == rb.shape(k)
                   and torch.equal(raw(ra, k), raw(rb, k)) for k in ra.keys())


def config_bytes(names, bits: int, formats) -> dict:
    """Predicted denoiser bytes of bundled configs (meta device) with the same recipe per format."""
    from mpsearch.model import inventory
    from mpsearch.planning.cost import fp16_bytes, model_bytes

    out = {}
    for name in names:
        inv = inventory(name)
        out[name] = {"fp16": fp16_bytes(inv)}
        for fmt in formats:
            if fmt != "fp16" and not fmt.endswith("-numpy"):
                out[name][fmt] = model_bytes(inv, recipe(inv, fmt, bits).w_bits(), fmt)
    return out


def markdown(res: dict) -> str:
    mib = lambda b: f"{b / 2**20:.2f}"  # noqa: E731
    peak_load = lambda r: mib(r["peak_rss_load"] - r["peak_rss_imports"]) if "peak_rss_load" in r else "-"  # noqa: E731
    if res.get("denoiser"):
        head = (f"Random-weight `{res['denoiser']}`-size UNet alone, loaded in float16 on CPU, one denoiser call "
                f"at 32x32 latents, {res['bits']}-bit recipe (`{res['command']}`):")
        cols = "RSS after load MiB | peak RSS during load MiB | RSS after the call MiB | peak RSS MiB | call s"
    else:
        head = (f"Demo model, {res['bits']}-bit recipe, whole pipeline loaded in float32 on {res['device']}, one "
                f"image of {res['steps']} steps (`{res['command']}`):")
        cols = "RSS after load MiB | RSS after the image MiB | peak RSS MiB | image s"
    ratio = bool(res.get("denoiser"))  # the denoiser alone: its RSS against its stored bytes (fp16 parts included)
    lines = [head, "", "| format | mean stored bits | denoiser bytes (predicted = written) | file MiB | export s | "
             f"load s | {cols} |" + (" RSS after load / denoiser bytes |" if ratio else ""),
             "|---" * (12 if ratio else 10) + "|"]
    base = bool(res.get("baseline"))
    if base:
        lines[-2] += " same bytes as base |"
        lines[-1] += "---|"
    order = [k for f in res["formats"] if "@" not in f for k in (f"{f}@base", f) if k in res["formats"]]
    for fmt in order or res["formats"]:
        r = res["formats"][fmt]
        lines.append(f"| {fmt} | {r['mean_stored_bits']:.2f} | {r['predicted_bytes']:,}"
                     f"{'' if r.get('matches', True) else ' (MISMATCH)'} | {mib(r['file_bytes'])} | "
                     f"{r['export_s']:.1f} | {r['load_s']:.1f} | {mib(r['rss_pipeline'])} | "
                     + (f"{peak_load(r)} | " if ratio else "") +
                     f"{mib(r['rss_after_call'])} | {mib(r['peak_rss'] - r['peak_rss_imports'])} | "
                     f"{r['generate_s']:.2f} |" + (f" {r['rss_pipeline'] / r['predicted_bytes']:.2f} |" if ratio else "")
                     + (f" {'yes' if r.get('same_bytes_as_base') else 'no' if 'same_bytes_as_base' in r else '-'} |"
                        if base else ""))
    for name, row in res.get("configs", {}).items():
        lines += ["", f"Predicted denoiser bytes of `{name}` (meta device, same recipe):", "",
                  "| " + " | ".join(row) + " |", "|" + "---|" * len(row),
                  "| " + " | ".join(f"{v / 1e9:.3f} GB" for v in row.values()) + " |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--denoiser", default=None, help="a bundled config (sd15, sdxl-base): measure a random-weight "
                    "UNet of that size alone instead of the demo pipeline")
    ap.add_argument("--sizes", default="", help="bundled configs whose predicted bytes to add, e.g. sdxl-base,sd15")
    ap.add_argument("--baseline", type=Path, default=None, help="an earlier mpsearch source tree (e.g. `git archive "
                    "<commit> | tar -x -C DIR`): each format also exported and loaded by its code, rows `<fmt>@base`")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    res = {"command": "OMP_WAIT_POLICY=PASSIVE python benchmarks/export_formats.py " + " ".join(sys.argv[1:]), "bits": args.bits,
           "steps": args.steps, "device": args.device, "denoiser": args.denoiser, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:  # first, so that its process and this one never hold a model at the same time
            res["baseline"] = str(args.baseline)
            res["formats"].update(baseline(args.baseline, Path(tmp) / "base", formats, args.bits, args.denoiser,
                                           args.device, args.steps))
        rows = export_all(Path(tmp), formats, args.bits, args.denoiser)
        for fmt in formats:
            res["formats"][fmt] = {**rows[fmt], **load_in_child(fmt, Path(tmp) / fmt, args.device, args.steps,
                                                                args.denoiser)}
            if args.baseline and fmt != "fp16":
                same = same_files(Path(tmp) / "base" / fmt / "unet", Path(tmp) / fmt / "unet")
                res["formats"][fmt]["same_bytes_as_base"] = res["formats"][f"{fmt}@base"]["same_bytes_as_base"] = same
            print(fmt, json.dumps(res["formats"][fmt]), flush=True)
    if args.sizes:
        res["configs"] = config_bytes([s for s in args.sizes.split(",") if s], args.bits, formats)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "export_formats" + (f"_{args.denoiser}" if args.denoiser else "")
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=1))
    (args.out / f"{name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
