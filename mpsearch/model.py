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
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.pipelines import ADAPTERS, adapter_for
from mpsearch.pipelines.base import DEFAULT_GROUP_RULES, ModelError
from mpsearch.pipelines.demo import is_demo
from mpsearch.zoo import BUNDLED, bundled_name

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
    `stream`: what its input holds, measured by running the denoiser at two resolutions (`layer_streams`):
    text tokens (length follows the prompt, not the image), image tokens or pixels, both (joint
    attention's concatenated sequence), or neither (timestep and pooled embeddings); "" for a UNet, whose
    groups follow MixDQ's names (defined on UNets), so the second forward is saved.
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
    stream: str = ""  # "text" | "image" | "joint" | "other": which tokens its input holds ("": not measured)
    act_numel: int | None = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel)


@dataclass
class Inventory:
    """The ordered quantizable layers of a model plus the parameters that stay unquantized.

    `fixed_params` are denoiser parameters outside the quantizable layers' weights and biases (norms,
    embeddings, positional tables, and the `excluded` layers); they are stored at the float dtype of the
    export (fp16 by default). `excluded`: Linear/Conv2d modules that are not quantizable, with the reason
    (e.g. HunyuanDiT's attention pool reads its projections' weights directly, so no hook ever sees them).
    `group_note`: the content/quality rule the groups come from.
    """

    model: str
    component: str
    resolution: int
    layers: list[Layer]
    fixed_params: int
    text_len: int
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    group_note: str = ""

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

    def with_groups(self, groups: dict[str, str], note: str) -> Inventory:
        """A copy whose layers are in `groups` (`{name: "content" | "quality"}`; others keep theirs), and
        whose `group_note` says why."""
        layers = [replace(layer, group=groups.get(layer.name, layer.group)) for layer in self.layers]
        return replace(self, layers=layers, group_note=note)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inventory:
        if d.get("schema") != "mpsearch.inventory/1":
            raise ModelError(f"not an mpsearch inventory (schema {d.get('schema')!r})")
        layers = [Layer(**{**l, "kernel": tuple(l["kernel"])}) for l in d["layers"]]
        keys = ("model", "component", "resolution", "fixed_params", "text_len", "fingerprint")
        return cls(layers=layers, **{k: d[k] for k in keys}, excluded=dict(d.get("excluded", {})),
                   group_note=d.get("group_note", ""))

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
            "group_note": self.group_note,
            "excluded": self.excluded,
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

    `None` loads the bundled demo model, "demo"/"demo-dit" name the bundled ones. Honours `HF_HUB_OFFLINE` (no network access when set).
    On CPU the default dtype is float32; on GPU float16.
    """
    import diffusers

    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.float16
    if model is None or str(model) in BUNDLED:
        from mpsearch.zoo import load_demo

        return load_demo(dtype=dtype, name=str(model or "demo")).to(device)
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


def _user_rules(overrides: Sequence[tuple[str, str]] | dict[str, str] | None) -> list[tuple[str, str]]:
    """The user's `{regex: group}` overrides, checked."""
    user = list(overrides.items()) if isinstance(overrides, dict) else list(overrides or [])
    for pattern, group in user:
        if group not in ("quality", "content"):
            raise ModelError(f"group override {pattern!r} → {group!r}: group must be 'quality' or 'content'")
        re.compile(pattern)
    return user


def dummy_inputs(denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1, device=None,
                 vae_scale: int = 8) -> dict:  # fmt: skip
    """Inputs of one denoiser call at `resolution` pixels (latent side = resolution / vae_scale), from its adapter."""
    return adapter_for(denoiser).dummy_inputs(denoiser, resolution, text_len, batch=batch, device=device,
                                              vae_scale=vae_scale)  # fmt: skip


def _meta(denoiser: nn.Module) -> nn.Module:
    if next(denoiser.parameters()).device.type == "meta":
        return denoiser
    cls, cfg = type(denoiser), dict(denoiser.config)
    with torch.device("meta"):
        return cls.from_config(cfg)


def _observe(meta: nn.Module, resolution: int, text_len: int,
             vae_scale: int) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:  # fmt: skip
    """MACs, input length (tokens, or pixels of a conv) and input activation elements (`Layer.act_numel`; a
    layer called several times sums its calls) of every quantizable layer that one call at batch 1 runs,
    on the meta device. A layer its forward never runs is in no dict."""
    names = {m: n for n, m in meta.named_modules() if isinstance(m, QUANTIZABLE)}
    macs: dict[str, int] = {}
    length: dict[str, int] = {}
    acts: dict[str, int] = {}

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        x = inputs[0]
        if isinstance(module, nn.Linear):
            n = out.numel() * module.in_features
            tokens = x.shape[-2] if x.dim() >= 3 else 0
        else:
            kh, kw = module.kernel_size
            n = out.numel() * (module.in_channels // module.groups) * kh * kw
            tokens = x.shape[-1] * x.shape[-2]
        name = names[module]
        macs[name] = macs.get(name, 0) + int(n)
        length.setdefault(name, int(tokens))
        acts[name] = acts.get(name, 0) + int(x.numel())

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad(), adapter_for(meta).on_meta(meta):
            meta(**dummy_inputs(meta, resolution, text_len, device="meta", vae_scale=vae_scale))
    except (TypeError, AttributeError, RuntimeError, ValueError) as e:
        raise ModelError(f"{type(meta).__name__}: cannot run its forward on dummy inputs ({type(e).__name__}: {e}); "
                         f"the {adapter_for(meta).name} adapter's dummy_inputs do not fit it") from None  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    return macs, length, acts


def count_macs(denoiser: nn.Module, resolution: int, text_len: int, vae_scale: int = 8) -> dict[str, int]:
    """MACs per quantizable layer for one call at batch 1, from a forward pass on the meta device."""
    return _observe(_meta(denoiser), resolution, text_len, vae_scale)[0]


def layer_streams(denoiser: nn.Module, resolution: int, text_len: int, vae_scale: int = 8, *,
                  lengths: dict[str, int] | None = None) -> dict[str, str]:  # fmt: skip
    """What each quantizable layer's input holds, measured: its input length at `resolution` (`lengths`,
    when `_observe` already measured them) and at twice that (four times the image tokens). Unchanged:
    "text" tokens; four times: "image" tokens (or pixels); in between: "joint" (text and image tokens in
    one sequence); no token axis: "other"."""
    meta = _meta(denoiser)
    one = lengths if lengths is not None else _observe(meta, resolution, text_len, vae_scale)[1]
    two = _observe(meta, 2 * resolution, text_len, vae_scale)[1]
    out = {}
    for name, a in one.items():
        b = two.get(name, 0)
        out[name] = ("other" if a == 0 else "text" if b == a else "image" if b == 4 * a
                     else "joint" if a < b < 4 * a else "other")  # fmt: skip
    return out


def _group(name: str, stream: str, user: list[tuple[str, str]], adapter) -> str:
    """A layer's group: the user's first matching override, else the family's rule (names or stream)."""
    for pattern, group in user:
        if re.search(pattern, name):
            return group
    if adapter.group_by == "stream":
        return "content" if stream == "text" else "quality"
    return classify(name, adapter.group_rules)


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
        return bundled_name(model)
    if isinstance(model, (str, Path)):
        return str(model)
    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(path) if path else type(model).__name__


def _layers(denoiser: nn.Module, component: str, macs: dict[str, int], acts: dict[str, int],
            streams: dict[str, str], groups: dict[str, str]) -> tuple[list[Layer], int, dict[str, str]]:  # fmt: skip
    """(the quantizable layers, parameters they cover (weights and biases), the excluded layers with the
    reason) of `denoiser`, from one meta forward's MACs and input elements (`_observe`), the measured
    streams and each layer's group. A Linear/Conv2d the forward never ran is excluded."""
    layers, covered, excluded = [], 0, {}
    for lname, m in denoiser.named_modules():
        if not isinstance(m, QUANTIZABLE):
            continue
        if lname not in macs:
            excluded[lname] = "its forward never runs in a denoiser call (weights read directly): not quantizable"
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
                macs=macs[lname],
                group=groups[lname],
                component=component,
                stream=streams.get(lname, ""),
                act_numel=acts[lname],
            )
        )
    return layers, covered, excluded


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
    native size). `groups`: `{regex: "content"|"quality"}` overrides, tried before the family's rule
    (MixDQ's names, or the measured text stream for joint-attention families).

    A Linear/Conv2d that the denoiser's forward never calls (its weight read directly, as HunyuanDiT's
    attention pool does) is not quantizable: it is listed in `excluded` and stays in `fixed_params`.

    >>> inv = inventory("sdxl-base")
    >>> len(inv), inv.group_totals()["content"]["layers"]
    (794, 420)
    """
    name = _model_name(model)
    pipe, vae_scale = None, 8
    if isinstance(model, (str, Path)) and str(model) in bundled_configs():
        cfg = bundled_config(str(model))
        denoiser = meta_denoiser(str(model))
        resolution = resolution or cfg["default_resolution"]
        text_len = text_len or cfg["text_len"]
        vae_scale = int(cfg.get("vae_scale_factor", 8))
    else:
        pipe = model if isinstance(model, nn.Module) or hasattr(model, "components") else load_pipeline(model)
        _, denoiser = find_denoiser(pipe)
        adapter = adapter_for(pipe)
        vae_scale = int(getattr(pipe, "vae_scale_factor", 8)) if hasattr(pipe, "components") else 8
        resolution = resolution or adapter.default_resolution(denoiser, vae_scale, pipe)
        text_len = text_len or adapter.text_len(pipe)
    adapter = adapter_for(pipe if pipe is not None else denoiser)
    component, _ = adapter.find_denoiser(pipe if pipe is not None else denoiser)
    user = _user_rules(groups)
    if resolution % vae_scale or resolution % 8:
        raise ModelError(f"resolution {resolution} is not a multiple of {max(vae_scale, 8)} (the VAE's downsampling)")

    meta = _meta(denoiser)
    macs, lengths, acts = _observe(meta, resolution, text_len, vae_scale)
    # a UNet's groups are MixDQ's names, defined on UNets: its streams are not measured (a second forward)
    unet = hasattr(denoiser, "down_blocks") and adapter.group_by != "stream"
    streams = {} if unet else layer_streams(meta, resolution, text_len, vae_scale, lengths=lengths)
    groups_of = {n: _group(n, streams.get(n, ""), user, adapter) for n in macs}
    layers, covered, excluded = _layers(denoiser, component, macs, acts, streams, groups_of)
    total = sum(p.numel() for p in denoiser.parameters())
    note = adapter.group_note + ("; user overrides first" if user else "")
    return Inventory(
        model=name,
        component=component,
        resolution=resolution,
        layers=layers,
        fixed_params=total - covered,
        text_len=text_len,
        fingerprint=fingerprint(denoiser),
        excluded=excluded,
        group_note=note,
    )
