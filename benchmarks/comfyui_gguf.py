"""Our `gguf` export loaded by ComfyUI-GGUF, as its "Unet Loader (GGUF)" node loads it (issue #19).

    python benchmarks/comfyui_gguf.py --comfyui /tmp/comfy --comfyui-gguf /tmp/comfy-gguf \\
        --comfy-python /work/comfy-venv/bin/python --denoiser sd15

A random-weight UNet of a bundled config's size (`sd15`, `sdxl-base`) is exported with a mixed-width gguf
plan (the widths 2, 3, 4, 5, 6, 8 in turn over the Linear layers, the nearest stored width where a row
has no such type, convs F16), so the file holds Q2_K..Q6_K, Q8_0, Q4_0, Q5_0 and F16 tensors. Then the same
file is loaded three ways and called once on the same inputs (float32 on CPU, 32x32 latents):

- ComfyUI-GGUF, in a child process running ComfyUI's own Python environment (`--comfy-python`): the
  node class `UnetLoaderGGUF().load_unet(name)` with the file in ComfyUI's `diffusion_models` folder
  (what the node runs: `gguf_sd_loader` + `comfy.sd.load_diffusion_model_state_dict` with `GGMLOps`),
  `comfy.model_management.load_models_gpu` (CPU here), then the model's `diffusion_model` forward;
- diffusers: `UNet2DConditionModel.from_single_file(..., quantization_config=GGUFQuantizationConfig())`;
- mpsearch's simulation of the plan (`fake_quantize`: diffusers' dequantization of the same bytes) on the
  float model, and the float model itself (the quantization error, for scale); `--no-simulation` skips
  both (an fp32 SDXL copy is 10 GB).

ComfyUI and ComfyUI-GGUF are not pip packages: bring their sources (`git archive` of a snapshot) and install
ComfyUI's requirements in a separate venv (see the README's ComfyUI recipe). Their files are not part of
this repository. Results: benchmarks/results/comfyui_gguf.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

WIDTHS = (2, 3, 4, 5, 6, 8)

# Runs in ComfyUI's environment: no mpsearch, no diffusers.
CHILD = r'''
import importlib.abc, importlib.util, json, os, sys, time, types
comfy_dir, node_dir, gguf_path, inputs, out = sys.argv[1:6]
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI's own flag, parsed as its main.py parses it
sys.path.insert(0, comfy_dir)
import torch
stub = None
try:
    import torchvision  # noqa: F401
except (ImportError, OSError, RuntimeError) as e:  # the PyPI wheel is CUDA-linked: no ops beside a CPU torch
    stub = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
        del sys.modules[k]
    class Absent(types.ModuleType):  # any use (a call, a class) fails; SD/SDXL never use torchvision
        __path__ = []
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return importlib.import_module(f"{self.__name__}.{name}")
    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            return importlib.util.spec_from_loader(name, self) if name.split(".")[0] == "torchvision" else None
        def create_module(self, spec):
            return Absent(spec.name)
        def exec_module(self, module):
            pass
    sys.meta_path.insert(0, Finder())
import comfy.options
comfy.options.enable_args_parsing()
import safetensors.torch
import folder_paths
spec = importlib.util.spec_from_file_location("ComfyUI_GGUF", os.path.join(node_dir, "__init__.py"),
                                              submodule_search_locations=[node_dir])
node = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = node
spec.loader.exec_module(node)
folder_paths.add_model_folder_path("diffusion_models", os.path.dirname(gguf_path))
import comfy.model_management as mm
import logging
warnings = []  # ComfyUI logs missing / unexpected / unmapped keys as warnings
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage()[:300])
logging.getLogger().addHandler(Keep(logging.WARNING))
def rss(key="VmRSS"):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
kept = {}  # the node's state dict, to see which file tensors ComfyUI's key map left unused (it pops the rest)
read = sys.modules["ComfyUI_GGUF.nodes"].gguf_sd_loader
sys.modules["ComfyUI_GGUF.nodes"].gguf_sd_loader = lambda *a, **k: kept.setdefault("sd", read(*a, **k))
base = rss()
t0 = time.perf_counter()
(patcher,) = node.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(os.path.basename(gguf_path))
mm.load_models_gpu([patcher])
load_s = time.perf_counter() - t0
loaded = rss()
model = patcher.model
dtype = model.manual_cast_dtype or model.get_dtype()  # as BaseModel._apply_model casts its inputs
x = safetensors.torch.load_file(inputs)
kw = {"y": x["y"].to(dtype)} if "y" in x else {}
t0 = time.perf_counter()
with torch.no_grad():
    eps = model.diffusion_model(x["sample"].to(dtype), x["timestep"].float(), context=x["context"].to(dtype), **kw)
call_s = time.perf_counter() - t0
safetensors.torch.save_file({"eps": eps.float().contiguous()}, out)
quantized = sum(type(p).__name__ == "GGMLTensor" and p.tensor_type.name not in ("F16", "F32")
                for p in model.diffusion_model.parameters())
print("RESULT " + json.dumps({"load_s": load_s, "call_s": call_s, "rss_loaded": loaded - base,
      "peak_rss": rss("VmHWM"), "model": type(model).__name__, "config": type(model.model_config).__name__,
      "device": str(mm.get_torch_device()), "dtype": str(dtype), "quantized_params": quantized,
      "torchvision": stub or "real", "unused_file_tensors": sorted(kept["sd"]), "missing_or_unexpected": [w for w in warnings if w.startswith("unet ")],
      "other_warnings": [w for w in warnings if not w.startswith("unet ")]}))
'''


def mixed_plan(inv):
    """Widths 2..8 in turn over the layers, each the nearest the layer's GGUF types store (convs: 16)."""
    from mpsearch.planning.cost import get_format
    from mpsearch.planning.plan import LayerBits, Plan

    fmt = get_format("gguf")
    bits = {}
    for i, layer in enumerate(inv.layers):
        want = WIDTHS[i % len(WIDTHS)]
        bits[layer.name] = LayerBits(next(b for b in (want, 4, 5, 8, 16) if fmt.stores(layer, b)))
    plan = Plan(bits, model=inv.model, fingerprint=inv.fingerprint, format="gguf")
    plan.predict(inv)
    return plan


def inputs(unet, seed: int = 0) -> tuple[dict, dict]:
    """`(diffusers kwargs, ComfyUI inputs)` of one call: the same latents, timestep, text and, for SDXL,
    the added conditioning (ComfyUI takes it as `y` = pooled text ++ the size embedding diffusers computes)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(1, c.in_channels, 32, 32, generator=g)
    ctx = torch.randn(1, 77, c.cross_attention_dim, generator=g)
    t = torch.tensor([500.0])
    kwargs, comfy = {"sample": x, "timestep": t, "encoder_hidden_states": ctx}, {"sample": x, "timestep": t,
                                                                                   "context": ctx}
    if c.addition_embed_type == "text_time":
        text = torch.randn(1, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim, generator=g)
        time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]])
        kwargs["added_cond_kwargs"] = {"text_embeds": text, "time_ids": time_ids}
        with torch.no_grad():
            emb = unet.add_time_proj(time_ids.flatten()).reshape(1, -1).float()
        comfy["y"] = torch.cat([text, emb], 1)
    return kwargs, comfy


def call(unet, kwargs: dict):
    import torch

    with torch.no_grad():
        return unet(**kwargs).sample.float()


def compare(a, b) -> dict:
    """How far `a` is from `b`: relative L2 error and max abs difference (and b's max abs, for scale)."""
    return {"rel_l2": float((a - b).norm() / b.norm()), "max_abs": float((a - b).abs().max()),
            "ref_max_abs": float(b.abs().max())}


def qtype_counts(path: Path) -> dict:
    import gguf

    counts: dict[str, int] = {}
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    arch = reader.get_field("general.architecture")
    return {"qtypes": counts, "arch": str(bytes(arch.parts[arch.data[-1]]), "utf-8")}


def reference(pipe, plan, inv, kwargs: dict) -> dict:
    """The float model's output and mpsearch's simulation of the plan (the fp16 UNet made float32)."""
    import torch

    from mpsearch.export.simulate import fake_quantize

    pipe.unet.to(torch.float32)
    out = {"float": call(pipe.unet, kwargs)}
    with fake_quantize(pipe, plan, inv=inv, bos=False):
        out["simulation"] = call(pipe.unet, kwargs)
    return out


def run(denoiser: str, comfyui: Path, node: Path, python: str, work: Path, simulation: bool) -> dict:
    import safetensors.torch
    import torch
    from diffusers import GGUFQuantizationConfig, UNet2DConditionModel

    from benchmarks.export_formats import random_pipeline
    from mpsearch.export.write import export
    from mpsearch.model import inventory

    pipe = random_pipeline(denoiser)
    inv = inventory(pipe)
    plan = mixed_plan(inv)
    t0 = time.perf_counter()
    r = export(plan, work / "out", model=pipe, bos=False, components=False)
    row = {"export_s": time.perf_counter() - t0, "predicted_bytes": r.predicted_bytes,
           "tensor_bytes": r.tensor_bytes, "file_bytes": r.file_bytes, "matches": r.matches,
           "quantized_layers": r.quantized_layers, "layers": r.layers}
    kwargs, comfy_in = inputs(pipe.unet)
    outs = reference(pipe, plan, inv, kwargs) if simulation else {}
    del pipe
    folder = work / "out" / "unet"
    gguf_path = folder / "diffusion_pytorch_model.gguf"
    row.update(qtype_counts(gguf_path))
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_single_file(str(gguf_path), config=str(folder), torch_dtype=torch.float32,
                                                 quantization_config=GGUFQuantizationConfig(torch.float32))
    row["diffusers_load_s"] = time.perf_counter() - t0
    outs["diffusers"] = call(unet, kwargs)
    del unet
    safetensors.torch.save_file({k: v.contiguous() for k, v in comfy_in.items()}, work / "inputs.safetensors")
    row["comfyui"] = comfy_child(python, comfyui, node, gguf_path, work)
    outs["comfyui"] = safetensors.torch.load_file(work / "eps.safetensors")["eps"]
    pairs = [("comfyui", "diffusers"), ("comfyui", "simulation"), ("diffusers", "simulation"),
             ("comfyui", "float"), ("diffusers", "float")]
    row["compare"] = {f"{a} vs {b}": compare(outs[a], outs[b]) for a, b in pairs if a in outs and b in outs}
    return row


def comfy_child(python: str, comfyui: Path, node: Path, gguf_path: Path, work: Path) -> dict:
    """Load `gguf_path` with ComfyUI-GGUF in ComfyUI's Python and run one call on work/inputs.safetensors."""
    args = [python, "-c", CHILD, str(comfyui), str(node), str(gguf_path), str(work / "inputs.safetensors"),
            str(work / "eps.safetensors")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    res = subprocess.run(args, cwd=comfyui, capture_output=True, text=True, env=env)
    line = next((l for l in res.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"ComfyUI-GGUF failed to load or run the file:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def toml_version(path: Path) -> str:
    import re

    found = re.search(r'^version\s*=\s*"([^"]+)"', path.read_text(), re.M)
    return found.group(1) if found else "unknown"


def summary(name: str, r: dict) -> str:
    c = r["comfyui"]
    types = ", ".join(f"{k} {v}" for k, v in sorted(r["qtypes"].items()))
    note = c["other_warnings"][0] if c["other_warnings"] else "-"
    tv = "real" if c["torchvision"] == "real" else f"a stub ({c['torchvision']})"
    return (f"`{name}`-size random-weight UNet, mixed-width plan (`{r['command']}`): {r['tensor_bytes']:,} tensor "
            f"bytes (predicted {r['predicted_bytes']:,}), arch `{r['arch']}`, tensors {types}. ComfyUI detected "
            f"`{c['config']}` ({c['model']}) and kept {c['quantized_params']} quantized tensors as GGMLTensor; "
            f"load {c['load_s']:.1f} s (diffusers {r['diffusers_load_s']:.1f} s), call {c['call_s']:.1f} s. File "
            f"tensors left unused: {len(c['unused_file_tensors'])}; missing or unexpected keys: "
            f"{len(c['missing_or_unexpected'])}; other warnings: {len(c['other_warnings'])} (ComfyUI's diffusers "
            f"key map naming keys this UNet does not have, e.g. `{note}`); torchvision: {tv}.")


def markdown(res: dict) -> str:
    src = f" ({res['sources']})" if res["sources"] else ""
    lines = [f"ComfyUI-GGUF loads mpsearch's gguf export (ComfyUI {res['comfyui_version']}, ComfyUI-GGUF "
             f"{res['comfyui_gguf_version']}{src}; CPU, float32, one denoiser call at 32x32 latents).", ""]
    for name, r in res["denoisers"].items():
        lines += [summary(name, r), "", "| outputs | relative L2 | max abs diff | reference max abs |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['rel_l2']:.2e} | {v['max_abs']:.2e} | {v['ref_max_abs']:.3f} |"
                  for k, v in r["compare"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI source tree")
    ap.add_argument("--comfyui-gguf", type=Path, required=True, help="a ComfyUI-GGUF source tree")
    ap.add_argument("--comfy-python", default=sys.executable, help="the Python of ComfyUI's environment")
    ap.add_argument("--denoiser", default="sd15", help="bundled configs, comma-separated (sd15, sdxl-base)")
    ap.add_argument("--sources", default="", help="where the two trees came from (commits), for the record")
    ap.add_argument("--no-simulation", action="store_true", help="skip the float model and the simulation")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    for d, what in ((args.comfyui, "nodes.py"), (args.comfyui_gguf, "loader.py")):
        if not (d / what).is_file():
            sys.exit(f"comfyui_gguf: {d} has no {what}; give a ComfyUI / ComfyUI-GGUF source tree")
    version = toml_version(args.comfyui / "pyproject.toml")
    res = {"command": "OMP_WAIT_POLICY=PASSIVE python benchmarks/comfyui_gguf.py " + shlex.join(sys.argv[1:]), "comfyui_version": version,
           "comfyui_gguf_version": toml_version(args.comfyui_gguf / "pyproject.toml"),
           "sources": args.sources, "denoisers": {}}
    out_json = args.out / "comfyui_gguf.json"
    if out_json.exists():  # keep the other sizes' rows of an earlier run
        res["denoisers"] = json.loads(out_json.read_text()).get("denoisers", {})
    for name in [n for n in args.denoiser.split(",") if n]:
        with tempfile.TemporaryDirectory() as tmp:
            res["denoisers"][name] = run(name, args.comfyui, args.comfyui_gguf, args.comfy_python, Path(tmp),
                                         not args.no_simulation)
        res["denoisers"][name]["command"] = res["command"]
        print(name, json.dumps(res["denoisers"][name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1))
    (args.out / "comfyui_gguf.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
