"""Load diffusers pipelines, find the denoiser and list its quantizable layers.

`inventory()` is the entry point: it accepts a pipeline, a denoiser module, a bundled config name
(`sd15`, `sdxl-base`, `sdxl-turbo`, `pixart-alpha`: no weights, built on the meta device), a hub id, a
local folder or a single-file checkpoint, and returns an `Inventory` of every `nn.Linear` / `nn.Conv2d`
of the denoiser with its size, MACs per denoiser call and MixDQ group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.pipelines import ADAPTERS, adapter_for
from mpsearch.pipelines.base import DEFAULT_GROUP_RULES, ModelError
from mpsearch.pipelines.demo import is_demo

__all__ = ["DEFAULT_GROUP_RULES", "Inventory", "Layer", "ModelError", "find_denoiser", "inventory", "load_pipeline"]

CONFIG_DIR = Path(__file__).parent / "configs"
QUANTIZABLE = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Layer:
    """One quantizable layer of the denoiser.

    `params` counts weight elements only; `bias` counts bias elements (0 when absent). `macs` are
    multiply-accumulates of one denoiser call at batch 1 (classifier-free guidance doubles them).
    `act_numel`: elements of the layer's input activation in one denoiser call at batch 1 (the size an
    activation bit-width multiplies, MixDQ's activation ratio); None = unknown (an inventory written
    before it was recorded).
    """

    name: str
    kind: str  # "linear" | "conv2d"
    params: int
    bias: int
    out_channels: int
    in_channels: int
    kernel: tuple[int, ...]
    macs: int
    group: str  # "quality" | "content"
    component: str  # "unet" | "transformer"
    act_numel: int | None = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel)


@dataclass
class Inventory:
    """The ordered quantizable layers of a model plus the parameters that stay unquantized.

    `fixed_params` are denoiser parameters outside the quantizable layers' weights and biases (norms,
    embeddings, positional tables); they are stored at the float dtype of the export (fp16 by default).
    """

    model: str
    component: str
    resolution: int
    layers: list[Layer]
    fixed_params: int
    text_len: int
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {layer.name: i for i, layer in enumerate(self.layers)}

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, key: int | str) -> Layer:
        return self.layers[self._index[key]] if isinstance(key, str) else self.layers[key]

    def index(self, name: str) -> int:
        return self._index[name]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def total_params(self) -> int:
        return self.fixed_params + sum(layer.params + layer.bias for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def group_totals(self) -> dict[str, dict[str, int]]:
        """Per group: number of layers, weight params and MACs."""
        totals: dict[str, dict[str, int]] = {}
        for layer in self.layers:
            t = totals.setdefault(layer.group, {"layers": 0, "params": 0, "macs": 0})
            t["layers"] += 1
            t["params"] += layer.params
            t["macs"] += layer.macs
        return totals

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inventory:
        if d.get("schema") != "mpsearch.inventory/1":
            raise ModelError(f"not an mpsearch inventory (schema {d.get('schema')!r})")
        layers = [Layer(**{**l, "kernel": tuple(l["kernel"])}) for l in d["layers"]]
        keys = ("model", "component", "resolution", "fixed_params", "text_len", "fingerprint")
        return cls(layers=layers, **{k: d[k] for k in keys})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Inventory:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "mpsearch.inventory/1",
            "model": self.model,
            "component": self.component,
            "resolution": self.resolution,
            "text_len": self.text_len,
            "fingerprint": self.fingerprint,
            "fixed_params": self.fixed_params,
            "layers": [asdict(layer) for layer in self.layers],
        }


# --------------------------------------------------------------------------------------------------
# Bundled configs (public facts: the denoiser config.json of each published pipeline)


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


@cache
def bundled_config(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ModelError(f"no bundled config {name!r}; bundled: {', '.join(bundled_configs())}")
    return json.loads(path.read_text())


def _denoiser_class(class_name: str) -> type[nn.Module]:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ModelError(f"diffusers has no model class {class_name!r}")
    return cls


def meta_denoiser(name: str) -> nn.Module:
    """The denoiser of a bundled config, built on the meta device (no memory for weights)."""
    cfg = dict(bundled_config(name)["denoiser"])
    cls = _denoiser_class(cfg.pop("_class_name"))
    with torch.device("meta"):
        return cls.from_config(cfg)


# --------------------------------------------------------------------------------------------------
# Loading pipelines


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _single_file_pipeline_class(path: Path):
    """Pick the pipeline class for an A1111/ComfyUI single-file checkpoint from its keys: the adapters'
    `single_file` maps, the longest matching model-type prefix winning."""
    import diffusers
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    model_type = infer_diffusers_model_type(load_single_file_checkpoint(str(path)))
    known = sorted(((prefix, cls) for a in ADAPTERS.values() for prefix, cls in a.single_file.items()),
                   key=lambda pc: -len(pc[0]))  # fmt: skip
    return getattr(diffusers, next(cls for prefix, cls in known if model_type.startswith(prefix)))


@contextlib.contextmanager
def damaged_weights(path: str | Path) -> Iterator[None]:
    """Turn a damaged weights file met while loading from `path` (truncated, or not safetensors) into a
    one-line `ModelError` instead of a SafetensorError traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        raise ModelError(f"{path}: a weights file is damaged or truncated ({e})") from None


def load_pipeline(model: str | Path | None = None, *, dtype: torch.dtype | None = None, device: str = "cpu"):
    """Load a diffusers pipeline from a hub id, a local folder or a single-file checkpoint.

    `None` loads the bundled demo model. Honours `HF_HUB_OFFLINE` (no network access when set).
    On CPU the default dtype is float32; on GPU float16.
    """
    import diffusers

    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.float16
    if model is None or str(model) == "demo":
        from mpsearch.zoo import load_demo

        return load_demo(dtype=dtype).to(device)
    path = Path(str(model)).expanduser()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if path.is_file():
        cls = _single_file_pipeline_class(path)
        with damaged_weights(path):
            pipe = cls.from_single_file(str(path), local_files_only=_offline() or None, **kwargs)
    elif path.is_dir():
        with damaged_weights(path):
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(path), local_files_only=True, **kwargs)
    elif str(model) in bundled_configs():
        raise ModelError(
            f"{model!r} is a bundled config without weights: use it with `inspect`, or pass its hub id "
            f"{bundled_config(str(model))['hub_id']!r} (needs the weights in the local HF cache when offline)"
        )
    else:
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(model), local_files_only=_offline(), **kwargs)
        except Exception as e:  # diffusers raises several types for a missing repo; say it plainly
            raise ModelError(f"could not load {model!r} as a hub id, folder or file: {e}") from e
    return pipe.to(device)


def find_denoiser(pipe_or_module: Any) -> tuple[str, nn.Module]:
    """Return `(component_name, module)` of the pipeline's denoiser (UNet or transformer), as its adapter
    finds it."""
    return adapter_for(pipe_or_module).find_denoiser(pipe_or_module)


# --------------------------------------------------------------------------------------------------
# Inventory


def classify(name: str, rules: Sequence[tuple[str, str]] = DEFAULT_GROUP_RULES) -> str:
    for pattern, group in rules:
        if re.search(pattern, name):
            return group
    return "quality"


def _group_rules(overrides: Sequence[tuple[str, str]] | dict[str, str] | None,
                 family: Sequence[tuple[str, str]] = DEFAULT_GROUP_RULES) -> list[tuple[str, str]]:
    """The user's `{regex: group}` overrides, then the family's content/quality rule."""
    user = list(overrides.items()) if isinstance(overrides, dict) else list(overrides or [])
    for pattern, group in user:
        if group not in ("quality", "content"):
            raise ModelError(f"group override {pattern!r} → {group!r}: group must be 'quality' or 'content'")
        re.compile(pattern)
    return user + list(family)


def dummy_inputs(denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1, device=None) -> dict:
    """Inputs of one denoiser call at `resolution` pixels (latent = resolution / 8), from its adapter."""
    return adapter_for(denoiser).dummy_inputs(denoiser, resolution, text_len, batch=batch, device=device)


def count_macs(denoiser: nn.Module, resolution: int, text_len: int) -> dict[str, int]:
    """MACs per quantizable layer for one call at batch 1, from a forward pass on the meta device."""
    return layer_counts(denoiser, resolution, text_len)[0]


def layer_counts(denoiser: nn.Module, resolution: int, text_len: int) -> tuple[dict[str, int], dict[str, int]]:
    """(MACs, input activation elements) per quantizable layer for one call at batch 1, from one forward
    pass on the meta device (a layer called several times sums its calls)."""
    meta = denoiser
    if next(denoiser.parameters()).device.type != "meta":
        cls, cfg = type(denoiser), dict(denoiser.config)
        with torch.device("meta"):
            meta = cls.from_config(cfg)
    names = {m: n for n, m in meta.named_modules() if isinstance(m, QUANTIZABLE)}
    macs: dict[str, int] = {}
    acts: dict[str, int] = {}

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(module, nn.Linear):
            n = out.numel() * module.in_features
        else:
            kh, kw = module.kernel_size
            n = out.numel() * (module.in_channels // module.groups) * kh * kw
        macs[names[module]] = macs.get(names[module], 0) + int(n)
        acts[names[module]] = acts.get(names[module], 0) + int(inputs[0].numel())

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            meta(**dummy_inputs(meta, resolution, text_len, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return macs, acts


def fingerprint(denoiser: nn.Module) -> str:
    """A short stable hash of the denoiser's class, config and layer shapes (not its weight values)."""
    h = hashlib.sha256(type(denoiser).__name__.encode())
    cfg = {k: v for k, v in dict(denoiser.config).items() if not k.startswith("_")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, p in denoiser.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}".encode())
    return h.hexdigest()[:16]


def weights_fingerprint(denoiser: nn.Module) -> str:
    """Hash of the weight values too (a profile is only valid for the exact weights it measured)."""
    h = hashlib.sha256(fingerprint(denoiser).encode())
    for _, p in sorted(denoiser.state_dict().items()):
        if p.device.type != "meta":
            h.update(p.detach().to(torch.float32).cpu().numpy().tobytes()[:: max(1, p.numel() // 4096)])
    return h.hexdigest()[:16]


def _model_name(model: Any) -> str:
    if is_demo(model):
        return "demo"
    if isinstance(model, (str, Path)):
        return str(model)
    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(path) if path else type(model).__name__


def inventory(
    model: Any = None,
    *,
    resolution: int | None = None,
    groups: Sequence[tuple[str, str]] | dict[str, str] | None = None,
    text_len: int | None = None,
) -> Inventory:
    """List every quantizable layer of a model's denoiser.

    `model`: a pipeline, a denoiser module, a bundled config name (meta device, no weights), a hub id, a
    folder, a single file, or None for the demo model. `resolution` in pixels (default: the model's
    native size). `groups`: `{regex: "content"|"quality"}` overrides, tried before MixDQ's rule.

    >>> inv = inventory("sdxl-base")
    >>> len(inv), inv.group_totals()["content"]["layers"]
    (794, 420)
    """
    name = _model_name(model)
    pipe = None
    if isinstance(model, (str, Path)) and str(model) in bundled_configs():
        cfg = bundled_config(str(model))
        denoiser = meta_denoiser(str(model))
        resolution = resolution or cfg["default_resolution"]
        text_len = text_len or cfg["text_len"]
    else:
        pipe = model if isinstance(model, nn.Module) or hasattr(model, "components") else load_pipeline(model)
        _, denoiser = find_denoiser(pipe)
        resolution = resolution or adapter_for(pipe).default_resolution(denoiser, 8)
        tokenizer = getattr(pipe, "tokenizer", None)
        text_len = text_len or (tokenizer.model_max_length if tokenizer is not None else 77)
    adapter = adapter_for(pipe if pipe is not None else denoiser)
    component, _ = adapter.find_denoiser(pipe if pipe is not None else denoiser)
    rules = _group_rules(groups, adapter.group_rules)
    if resolution % 8:
        raise ModelError(f"resolution {resolution} is not a multiple of 8 (the VAE's downsampling)")

    macs, acts = layer_counts(denoiser, resolution, text_len)
    layers, covered = [], 0
    for lname, m in denoiser.named_modules():
        if not isinstance(m, QUANTIZABLE):
            continue
        bias = m.bias.numel() if m.bias is not None else 0
        covered += m.weight.numel() + bias
        is_conv = isinstance(m, nn.Conv2d)
        layers.append(
            Layer(
                name=lname,
                kind="conv2d" if is_conv else "linear",
                params=m.weight.numel(),
                bias=bias,
                out_channels=m.out_channels if is_conv else m.out_features,
                in_channels=(m.in_channels // m.groups) if is_conv else m.in_features,
                kernel=tuple(m.kernel_size) if is_conv else (),
                macs=macs.get(lname, 0),
                group=classify(lname, rules),
                component=component,
                act_numel=acts.get(lname, 0),
            )
        )
    total = sum(p.numel() for p in denoiser.parameters())
    return Inventory(
        model=name,
        component=component,
        resolution=resolution,
        layers=layers,
        fixed_params=total - covered,
        text_len=text_len,
        fingerprint=fingerprint(denoiser),
    )
