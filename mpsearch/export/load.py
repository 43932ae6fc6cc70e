"""Load a checkpoint written by `mpsearch.export.write.export` as a working diffusers pipeline.

    qpipe = load_quantized("out/")          # quantized layers compute with the stored integer codes

The denoiser is built from its `config.json` on the meta device (without the plan's pruned units), then
each quantized layer is decoded by its format's storage and replaced by the format's runtime module
(`WeightFormat.module`: optimum-quanto `QLinear` / `QConv2d` for `packed` and `quanto`), or by plain
float weights with `dequantize=True`. BOS rows are put back as forward hooks, as in the simulation.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.export.simulate import ExportError, bos_hook
from mpsearch.export.tensorfile import Reader
from mpsearch.export.write import BOS_FILE, QMAP_FILE, SCHEMA, WEIGHTS_FILE
from mpsearch.model import damaged_weights, fingerprint
from mpsearch.pipelines import denoiser_components
from mpsearch.planning.cost import FLOAT_BITS, WeightFormat, get_format
from mpsearch.planning.plan import Plan

TRIM_EVERY = 16  # layers between returns of freed heap memory to the OS (each return walks the heap)


def load_denoiser(folder: str | Path, *, dtype: torch.dtype = torch.float32, dequantize: bool = False,
                  device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a quantized denoiser from its checkpoint folder (config.json + quantized safetensors) on
    `device`: the file is streamed layer by layer (`mpsearch.export.tensorfile.Reader`: each layer's
    tensors are read into fresh memory, moved there and unpacked there, a GPU's vectorised bit unpacking
    when one is given, then dropped; the file is never mapped). Memory after loading is the stored
    bytes (the runtime modules hold the packed codes) plus the unquantized parts in `dtype`, and the
    peak adds one layer's temporaries and what the C heap keeps of them."""
    import diffusers
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from safetensors.torch import load_file

    folder = Path(folder)
    qinfo = json.loads((folder / QMAP_FILE).read_text())
    if qinfo.get("schema") != SCHEMA:
        raise ExportError(f"{folder / QMAP_FILE}: schema {qinfo.get('schema')!r}, expected {SCHEMA!r}")
    cfg = json.loads((folder / "config.json").read_text())
    cls = getattr(diffusers, cfg["_class_name"])
    with init_empty_weights(include_buffers=False):
        den = cls.from_config(cfg)
    if fingerprint(den) != qinfo["fingerprint"]:
        raise ExportError(f"{folder}: the denoiser built from config.json has fingerprint {fingerprint(den)}, "
                          f"the checkpoint was written for {qinfo['fingerprint']}")
    if qinfo.get("pruned_units"):
        from mpsearch.profiling.pruning import remove_units

        remove_units(den, qinfo["pruned_units"])
    fmt = get_format(qinfo["format"]["name"])
    with Reader(folder / WEIGHTS_FILE) as reader:  # each tensor read when its layer is built, then dropped
        tensors = stored_tensors(reader, qinfo, device)
        for i, (name, entry) in enumerate(qinfo["modules"].items()):
            _load_layer(den, name, entry, tensors, fmt, dtype, dequantize)
            if i % TRIM_EVERY == TRIM_EVERY - 1:
                release_freed_memory()  # else the C heap keeps the layers' temporaries: peak 2.8x the stored bytes
        for key, read in tensors.items():  # accelerate casts to the meta tensor's (config) dtype unless told
            t = read()
            t = t.to(dtype) if t.is_floating_point() else t
            set_module_tensor_to_device(den, key.removeprefix("__buffer__."), device, value=t,
                                        dtype=dtype if t.is_floating_point() else None)
    del tensors
    left = [n for n, p in den.named_parameters() if p.device.type == "meta"]
    if left:
        raise ExportError(f"parameter {left[0]!r} is missing from {folder / WEIGHTS_FILE}")
    if (folder / BOS_FILE).exists():
        for name, row in load_file(str(folder / BOS_FILE), device=str(device)).items():
            den.get_submodule(name).register_forward_hook(bos_hook(row))
    den.eval().requires_grad_(False)
    den.mpsearch_quantization = qinfo
    release_freed_memory()
    if not dequantize:
        _outside_inference_mode(den)
    return den


def stored_tensors(reader: Reader, qinfo: dict[str, Any], device) -> dict[str, Callable[[], torch.Tensor]]:
    """The checkpoint's tensors by name, each a function that reads it (in the `blobs` layout, its range
    of its dtype's blob) onto `device`."""
    def part(key: str, start: int = 0, count: int | None = None, shape: list[int] | None = None):
        return lambda: reader.get(key, start, count, device).reshape(shape if shape is not None else -1)

    if qinfo.get("layout") != "blobs":
        return {k: part(k, shape=reader.shape(k)) for k in reader.keys()}
    return {name: part(f"blob.{dt}", offset, math.prod(shape), shape)
            for name, (dt, offset, shape) in qinfo["blobs"].items()}


def _load_layer(den: nn.Module, name: str, entry: dict[str, Any], tensors: dict[str, Callable[[], torch.Tensor]],
                fmt: WeightFormat, dtype: torch.dtype, dequantize: bool) -> None:
    """Decode layer `name`'s stored weight (taking its tensors out of `tensors`) into `den`: float
    weights (`dequantize`) or the format's runtime module. A 16-bit layer is left to the plain loading."""
    from accelerate.utils import set_module_tensor_to_device

    try:
        module = den.get_submodule(name)
    except AttributeError:
        raise ExportError(f"layer {name!r} of the checkpoint is not a module of {type(den).__name__}") from None
    if list(module.weight.shape) != entry["shape"]:
        raise ExportError(f"layer {name!r}: checkpoint shape {entry['shape']} != model shape "
                          f"{list(module.weight.shape)}")
    stored = entry["stored_bits"]
    if stored >= FLOAT_BITS:
        return
    prefix = f"{name}.weight."
    parts = {k[len(prefix):]: tensors.pop(k)() for k in [k for k in tensors if k.startswith(prefix)]}
    if not parts:
        raise ExportError(f"layer {name!r}: no quantized weight tensors in {WEIGHTS_FILE}")
    q, scale = fmt.decode(parts, stored, tuple(entry["shape"]))
    if dequantize:
        w = (q.reshape(q.shape[0], -1).float() * scale.reshape(-1, 1)).reshape(q.shape)
        set_module_tensor_to_device(den, f"{name}.weight", w.device, value=w, dtype=dtype)
        return
    bias = module.bias
    qmod = fmt.module(module, q, scale, stored, dtype)
    if bias is not None:
        qmod.bias = nn.Parameter(tensors.pop(f"{name}.bias")().to(dtype), requires_grad=False)
    qmod.name = name
    den.set_submodule(name, qmod)


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`; nothing elsewhere). Unpacking
    allocates a few temporaries per layer, interleaved with the codes the model keeps; glibc keeps such
    freed blocks resident, which measured +0.5 GB of RSS after loading a 411 MB SD 1.5-size checkpoint."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc: nothing to trim
            pass


def _outside_inference_mode(module: nn.Module) -> None:
    """optimum-quanto's autograd functions fail under `torch.inference_mode` (diffusers pipelines use it):
    run the module's forward under `no_grad` instead, which is what inference mode would save anyway."""
    forward = module.forward

    def wrapped(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return forward(*args, **kwargs)

    module.forward = wrapped


def load_quantized(path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
                   dequantize: bool = False):
    """Load a checkpoint written by `export` as a working diffusers pipeline.

    `packed` / `quanto`: quantized layers become optimum-quanto `QLinear` / `QConv2d` modules holding the
    integer codes (qint2 / qint4 / qint8 containers: 3-bit codes in qint4, 5/6-bit in qint8), dequantized
    on the fly; `dequantize=True` gives plain float modules instead. `gguf` / `sdnq`: the denoiser is
    loaded by the format's own runtime (`WeightFormat.load_denoiser`: diffusers, as a user without mpsearch
    would). `dtype` defaults to float32 on CPU.
    """
    import diffusers

    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    plan = Plan.load(path / "plan.json") if (path / "plan.json").exists() else None
    fmt = get_format(plan.format if plan is not None else None)
    marker = "config.json" if fmt.native else QMAP_FILE
    den_name = next((n for n in denoiser_components() if (path / n / marker).exists()), None)
    if den_name is None:
        raise ExportError(f"{path} holds no {marker} under a unet/ or transformer/ folder")
    dtype = dtype or (torch.float32 if device == "cpu" else torch.float16)
    with damaged_weights(path), warnings.catch_warnings():
        if fmt.native:
            den = fmt.load_denoiser(path / den_name, dtype)
        else:
            den = load_denoiser(path / den_name, dtype=dtype, dequantize=dequantize, device=device)
        cls = getattr(diffusers, index["_class_name"])
        warnings.simplefilter("ignore", FutureWarning)  # diffusers 0.42 renames torch_dtype to dtype; older ones lack dtype
        pipe = cls.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype, **{den_name: den})
    pipe.set_progress_bar_config(disable=True)
    pipe.mpsearch_plan = plan
    return pipe.to(device)
