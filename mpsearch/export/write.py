"""Write a plan's low-bit checkpoint, all or nothing, with exactly the bytes the cost model predicts.

    result = export(plan, "out/", model=pipe)   # out/<denoiser>/mpsearch_quantized.safetensors + maps

Checkpoint folder: the pipeline's other components as diffusers saves them, `model_index.json`,
`plan.json`, `export.json` (bytes) and, under the denoiser's folder, `config.json`,
`mpsearch_quantized.safetensors` (every denoiser parameter; by default one tensor per dtype with the
offsets in the map, see `export(layout=)`), `quantization_map.json` (per module: qtype, nominal/stored
bits, activation bits, shape, code offset) and `bos.safetensors`. How a quantized layer's tensors are laid
out is its format's storage (`mpsearch/export/formats/<name>.py`); the weights are the simulation's
(`mpsearch.export.simulate`), bit for bit. `export` writes it all or nothing
(`mpsearch.export.atomic.staged`: a temporary sibling renamed into place), after checking the plan's budget.

Pruned units (`plan.pruned_units`, LAPTOP-Diff layer pruning) are removed for real: `export` writes none of
their parameters or buffers and lists them in `quantization_map.json` (`mpsearch.export.load` builds the
denoiser without them).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.export.atomic import check_target, staged
from mpsearch.export.simulate import (
    FLOAT_DTYPE,
    ExportError,
    as_pipeline,
    bos_rows,
    bos_targets,
    check_plan,
    in_pruned,
    plan_of,
)
from mpsearch.model import Inventory, find_denoiser, inventory
from mpsearch.pipelines import adapter_for
from mpsearch.planning.cost import (
    FLOAT_BITS,
    fp16_bytes,
    get_format,
    layer_bytes,
    model_bytes,
    stored_mean_bits,
)
from mpsearch.planning.plan import Plan
from mpsearch.planning.quantizer import weight_config
from mpsearch.profiling.quantizers import WeightQuantConfig, quantize_weight

SCHEMA = "mpsearch.quantized/1"
WEIGHTS_FILE = "mpsearch_quantized.safetensors"
QMAP_FILE = "quantization_map.json"
BOS_FILE = "bos.safetensors"
EXPORT_FILE = "export.json"  # written last: byte accounting of a finished export


@dataclass
class ExportResult:
    """Byte accounting of one export (all in bytes)."""

    out: str
    format: str
    fp16_bytes: int  # every denoiser parameter at 16 bits: the reference size
    predicted_bytes: int  # cost.model_bytes of the plan
    tensor_bytes: int  # sum of the denoiser parameter tensors written (must equal predicted)
    header_bytes: int  # the weights file beyond the parameter tensors: safetensors header (8-byte length +
    # JSON); for a native format also its alignment padding and buffers
    file_bytes: int  # size of the denoiser's weights file (mpsearch_quantized.safetensors, .gguf, ...)
    buffer_bytes: int = 0  # denoiser buffers written alongside (not parameters; not in the cost model)
    bos_bytes: int = 0  # bos.safetensors file size
    budget: str | None = None
    budget_bytes: int | None = None
    layers: int = 0
    quantized_layers: int = 0
    pruned_units: int = 0

    @property
    def matches(self) -> bool:
        return self.tensor_bytes == self.predicted_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mpsearch.export.exporter/1", **asdict(self), "matches_prediction": self.matches}


def safetensors_header_bytes(path: str | Path) -> int:
    """Bytes of a safetensors file before its first tensor: the 8-byte length plus the JSON header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def check_budget(plan: Plan, inv: Inventory) -> int | None:
    """Refuse a plan over the budget it records, before anything is written; returns the budget in bytes
    (None for a budget of another kind). A bits budget counts stored bits (`cost.layer_wbits`: quanto
    keeps 3-bit weights in 4-bit containers); a MixDQ plan may exceed it by MixDQ's band. BitOPs budgets
    are the plan's compute, not the checkpoint's."""
    if not plan.budget:
        return None
    from mpsearch.planning.budget import Budget

    b = Budget.parse(plan.budget)
    fmt = get_format(plan.format)
    limit = b.resolve(inv, fmt)
    if b.resource == "bytes":
        used = model_bytes(inv, plan.w_bits(), fmt, plan.pruned_fixed_params)
        if used > limit:
            raise ExportError(f"the plan needs {used:,} bytes in format {fmt.name!r}, over its budget {plan.budget} "
                              f"= {int(limit):,} bytes; nothing written")
        return int(limit)
    if b.resource == "wbits":
        from solvers.mixdq import BAND

        used = stored_mean_bits(inv, plan.w_bits(), fmt)
        # MixDQ's procedure meets a bits target within its band (±0.02 bits), not under a ceiling
        slack = BAND if str(plan.solver.get("backend", "")).startswith("mixdq") else 0.0
        if used > (b.value + slack) * (1 + 1e-9):
            raise ExportError(f"the plan stores {used:.4f} bits per weight in format {fmt.name!r}, over its budget "
                              f"{plan.budget}; nothing written (re-solve it with --format {fmt.name})")
    return None


def quantized_state(den: nn.Module, plan: Plan, inv: Inventory, cfg: WeightQuantConfig | None = None):
    """`(tensors, qmap)`: every denoiser parameter as stored, and the per-module quantization map."""
    fmt = get_format(plan.format)
    cfg = cfg or weight_config(fmt)
    if cfg.group_size != fmt.group_size or cfg.symmetric != (fmt.zero_bytes == 0):
        raise ExportError(f"quantizer {cfg} does not match format {fmt.name!r} (group {fmt.group_size}, "
                          f"{fmt.zero_bytes} zero-point bytes)")
    tensors: dict[str, torch.Tensor] = {}
    qmap: dict[str, dict[str, Any]] = {}
    layers = {l.name for l in inv.layers}
    codes = torch.int8 if cfg.symmetric else torch.uint8  # every width <= 8 bits, a quarter of int32
    with torch.no_grad():
        for pname, p in den.named_parameters():
            if in_pruned(plan, pname):
                continue
            module, _, kind = pname.rpartition(".")
            bits = plan.layers[module].w_bits if module in layers and kind == "weight" else FLOAT_BITS
            stored = fmt.stored_bits(bits)
            if stored >= FLOAT_BITS:
                tensors[pname] = p.detach().to(FLOAT_DTYPE).contiguous()
                continue
            q, scale, _ = quantize_weight(p.detach(), bits, cfg, dtype=codes)
            for suffix, t in fmt.encode(q, scale, stored).items():
                tensors[f"{pname}.{suffix}"] = t
    for layer in inv.layers:
        b = plan.layers[layer.name]
        if b.pruned:
            continue
        stored = fmt.stored_bits(b.w_bits)
        qmap[layer.name] = {
            "weights": fmt.qtype(stored) if stored < FLOAT_BITS else "none",
            "activations": "none" if b.a_bits >= FLOAT_BITS else f"int{b.a_bits}",
            "w_bits": b.w_bits,
            "stored_bits": stored,
            "a_bits": b.a_bits,
            "kind": layer.kind,
            "shape": list(layer.weight_shape),
            "zero_point": fmt.zero_point(stored) if stored < FLOAT_BITS else None,
            "bytes": layer_bytes(layer, b.w_bits, fmt),
        }
    return tensors, qmap


def export(
    plan: Plan | str | Path,
    out: str | Path,
    *,
    model: Any = None,
    cfg: WeightQuantConfig | None = None,
    bos: bool = True,
    components: bool = True,
    layout: str = "blobs",
    overwrite: bool = False,
) -> ExportResult:
    """Write the plan's checkpoint in its format to the folder `out` and return its byte accounting.

    `packed` / `quanto`: mpsearch's layout, loaded by `load_quantized`. `gguf` / `sdnq`: the format's own
    file, written with its library and loaded by diffusers with no mpsearch code (see their modules in
    `mpsearch/export/formats/`); `cfg`, `bos` and `layout` do not apply to them.

    `model`: a pipeline, or anything `load_pipeline` accepts (None = demo). `components`: also save
    the pipeline's other components so that `load_quantized(out)` returns a whole pipeline.
    `layout`: "blobs" concatenates the tensors of each dtype into one safetensors tensor (offsets in
    quantization_map.json), so the file is the predicted bytes plus a header of a few hundred bytes;
    "tensors" writes one named tensor per parameter part (readable with any safetensors tool, but the
    header grows by ~130 bytes per tensor: several % of a small model).

    All or nothing (`mpsearch.export.atomic.staged`): the checkpoint is written to a temporary sibling of `out`
    and renamed into place at the end, so an error or a kill leaves `out` absent or as it was. An
    existing non-empty `out` is refused unless `overwrite`, which replaces a previous export (a folder
    with export.json) whole. Before anything is written: raises `PlanError` (naming the layer) for a plan
    made for another model, `ExportError` for a plan over its own budget, `FileExistsError` /
    `NotADirectoryError` for an `out` it may not write; `ExportError` when the bytes written differ from
    the cost model's prediction (then nothing is left either).
    """
    if layout not in ("blobs", "tensors"):
        raise ValueError(f"layout must be 'blobs' or 'tensors', not {layout!r}")
    plan = plan_of(plan)
    fmt = get_format(plan.format)
    if fmt.native and cfg is not None:
        raise ValueError(f"cfg= sets mpsearch's min-max quantizer; format {fmt.name!r} quantizes with its own library")
    check_target(out, overwrite, _is_export)
    pipe = as_pipeline(model, plan)
    den_name, den = find_denoiser(pipe)
    inv = inventory(pipe)
    check_plan(plan, inv, den)
    if why := fmt.unsupported(den):
        raise ExportError(f"format {fmt.name!r}: {why}; nothing written")
    budget_bytes = check_budget(plan, inv)
    base = ExportResult(
        out=str(out), format=fmt.name, fp16_bytes=fp16_bytes(inv), tensor_bytes=0, header_bytes=0, file_bytes=0,
        predicted_bytes=model_bytes(inv, plan.w_bits(), fmt, plan.pruned_fixed_params), budget=plan.budget,
        budget_bytes=budget_bytes, layers=len(inv), pruned_units=len(plan.pruned_units),
    )  # fmt: skip
    with staged(out, overwrite=overwrite, is_ours=_is_export) as tmp:
        folder = tmp / den_name
        folder.mkdir()
        if fmt.native:
            result = _write_native(folder, pipe, den, plan, inv, base)
        else:
            result = _write_mpsearch(folder, pipe, den, plan, inv, base, cfg=cfg, bos=bos, layout=layout)
        plan.save(tmp / "plan.json")
        if components:
            _save_components(pipe, den_name, tmp)
        (tmp / EXPORT_FILE).write_text(json.dumps(result.to_dict(), indent=1))
    return result


def _check_bytes(written: int, base: ExportResult) -> None:
    if written != base.predicted_bytes:
        raise ExportError(f"the checkpoint would hold {written:,} bytes of denoiser tensors but the cost model "
                          f"predicts {base.predicted_bytes:,} for format {base.format!r}; nothing written")


def _write_mpsearch(folder: Path, pipe: Any, den: nn.Module, plan: Plan, inv: Inventory, base: ExportResult, *,
                    cfg: WeightQuantConfig | None, bos: bool, layout: str) -> ExportResult:
    """mpsearch's layout (`packed`, `quanto`): the weights file, BOS rows and quantization map in `folder`."""
    tensors, qmap = quantized_state(den, plan, inv, cfg)
    params = {n for n, _ in den.named_parameters()}
    buffers = {f"__buffer__.{n}": t.detach().contiguous() for n, t in den.state_dict().items()
               if n not in params and not in_pruned(plan, n)}
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    _check_bytes(tensor_bytes, base)
    rows = bos_rows(pipe, bos_targets(plan, den, pipe)) if bos else {}
    for name in rows:
        qmap[name]["bos"] = True
    fmt = get_format(plan.format)
    qinfo = {
        "schema": SCHEMA, "format": fmt.to_dict(), "fingerprint": inv.fingerprint, "model": inv.model,
        "component": folder.name, "denoiser_class": type(den).__name__,
        "quantizer": (cfg or weight_config(fmt)).to_dict(), "float_dtype": "float16", "bos_layers": sorted(rows),
        "layout": layout, "pruned_units": list(plan.pruned_units), "modules": qmap,
    }  # fmt: skip
    path, bos_bytes = _write_denoiser(folder, {**tensors, **buffers}, rows, qinfo)
    den.save_config(folder)
    return replace(base, tensor_bytes=tensor_bytes, header_bytes=safetensors_header_bytes(path),
                   file_bytes=path.stat().st_size, bos_bytes=bos_bytes,
                   buffer_bytes=sum(t.numel() * t.element_size() for t in buffers.values()),
                   quantized_layers=sum(1 for v in qmap.values() if v["weights"] != "none"))


def _write_native(folder: Path, pipe: Any, den: nn.Module, plan: Plan, inv: Inventory,
                  base: ExportResult) -> ExportResult:
    """A native format's own checkpoint (`gguf`, `sdnq`), written by the format with its library."""
    fmt = get_format(plan.format)
    w_bits = {n: b.w_bits for n, b in plan.layers.items() if not b.pruned and b.w_bits < FLOAT_BITS}
    meta = {"model": inv.model, "fingerprint": inv.fingerprint, "family": adapter_for(pipe).name}
    written = fmt.write_denoiser(den, w_bits, folder, meta)
    _check_bytes(written.tensor_bytes, base)
    return replace(base, tensor_bytes=written.tensor_bytes, file_bytes=written.file_bytes,
                   header_bytes=written.file_bytes - written.tensor_bytes, quantized_layers=len(w_bits))


def _write_denoiser(folder: Path, tensors: dict[str, torch.Tensor], rows: dict[str, torch.Tensor],
                    qinfo: dict[str, Any]) -> tuple[Path, int]:
    """The denoiser's safetensors file (in `qinfo["layout"]`, streamed tensor by tensor:
    `mpsearch.export.tensorfile`), its BOS rows and quantization map; returns the weights file and the BOS
    file's size in bytes (0 when there are no BOS rows)."""
    from safetensors.torch import save_file

    from mpsearch.export import tensorfile

    path = folder / WEIGHTS_FILE
    meta = {"schema": SCHEMA, "format": qinfo["format"]["name"], "fingerprint": qinfo["fingerprint"],
            "component": qinfo["component"], "layout": qinfo["layout"]}
    if qinfo["layout"] == "blobs":
        parts, qinfo["blobs"] = blob_parts(tensors)
        tensorfile.save(path, parts, metadata=meta)
    else:
        tensorfile.save(path, tensors, metadata=meta)
    bos_bytes = 0
    if rows:
        save_file({n: r.contiguous() for n, r in rows.items()}, str(folder / BOS_FILE), metadata={"schema": SCHEMA})
        bos_bytes = (folder / BOS_FILE).stat().st_size
    (folder / QMAP_FILE).write_text(json.dumps(qinfo, indent=1))
    return path, bos_bytes


def _is_export(folder: Path) -> bool:
    """Whether a folder holds a finished export (the only kind `overwrite` replaces)."""
    return (folder / EXPORT_FILE).is_file()


def blob_parts(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, list[torch.Tensor]], dict[str, list]]:
    """Tensors grouped per dtype into blobs: `({"blob.<dtype>": [flat parts, in order]}, {name: [dtype,
    offset, shape]})`; a blob is the concatenation of its parts, offsets count its elements.

    The blobs hold exactly the tensors' bytes (no padding): byte equality with the cost model survives.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    index: dict[str, list] = {}
    offsets: dict[str, int] = {}
    for name, t in tensors.items():
        dt = str(t.dtype).removeprefix("torch.")
        index[name] = [dt, offsets.get(dt, 0), list(t.shape)]
        offsets[dt] = offsets.get(dt, 0) + t.numel()
        groups.setdefault(f"blob.{dt}", []).append(t.reshape(-1))
    return groups, index


def _save_components(pipe: Any, den_name: str, out: Path) -> None:
    for name, comp in pipe.components.items():
        if comp is None or name == den_name:
            continue
        if hasattr(comp, "save_pretrained"):
            comp.save_pretrained(out / name)
    pipe.save_config(out)


