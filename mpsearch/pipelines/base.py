"""The pipeline-adapter contract: everything mpsearch needs to know about a family of diffusers pipelines.

A family (SD, SDXL, PixArt, SD3, Flux, Sana, ...) is one subclass of `PipelineAdapter` in its own file under
`mpsearch/pipelines/`, registered with `@register_adapter`. `adapter_for(obj)` picks the adapter of a
pipeline, a denoiser module, a model name or a bundled config: first an adapter that `claims` it (the demo
by its path, SDXL's UNet by its text-time embedding), then by the pipeline's class name, then by the
denoiser's class name, else the generic adapter, whose hooks read only what every diffusers pipeline has.

What a pipeline passes to its denoiser, how it guides and how it sets up its scheduler is never declared
here: `mpsearch.pipelines.capture` records it from the pipeline's own `__call__` (conditioning, arguments
shared by all rows, CFG batch / separate calls / no CFG, the timestep it passes, the schedule). The hooks
say what a recording cannot:

- `pipelines`, `denoisers`: the diffusers class names the family covers (the registry's keys).
- `denoiser_attrs`, `component`: where the denoiser lives on the pipeline, and the name of a bare one.
- `dummy_inputs`, `text_len`: inputs of one denoiser call at a resolution, for the meta-device inventory
  (`dummy_latents`: their image part, shared by the families whose denoiser takes unpacked latents).
- `latent_shape`, `vae_latents`: the latents of one image as the denoiser takes them (Flux packs 2x2
  patches) and back to what the VAE decodes.
- `conditioning`, `shared_args`, `call_options`: what the pipeline must pass (checked after capture),
  arguments without a batch dimension (Flux's `img_ids`), extra `__call__` options for sampling.
- `guidance`, `separate_order`, `guide`, `prediction`: the guidance style the family's pipeline uses
  ("cfg_batch", "separate" or "embedded"; documentation, the capture reads the real one), which of two
  separate calls is the conditional one, how two halves combine (`u + g·(c - u)`, Lumina 2 normalises) and
  what the scheduler gets (Lumina 2 negates the model's output).
- `one_step_denoised`: one-step sampling keeps the scheduler's denoised estimate (PixArt-α).
- `bos_layers`: layers whose first text token is kept in full precision (MixDQ's BOS-aware quantization).
- `unit_kind`, `stand_in`, `feature_blocks`: prunable units (LAPTOP-Diff), the module that replaces a
  removed one, and the blocks whose outputs distillation matches.
- `sampling_defaults`: steps and guidance a user would pick.
- `group_by`, `group_rules`, `group_note`: content vs quality. "names": regex → group, first match wins
  (MixDQ's rule by default); "stream": the text stream is content, measured per layer (`mpsearch.model`
  runs the denoiser on the meta device at two resolutions and sees which layers take text tokens).
- `default_resolution`, `single_file`: native resolution; single-file checkpoint types → pipeline class.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.pipelines import blocks
from solvers.registry import Registry

GUIDANCE_STYLES = ("cfg_batch", "separate", "embedded")
DEFAULT_SAMPLING = {"steps": 20, "guidance": 5.0}

# MixDQ's rule: cross-attention and feed-forward layers change *what* is drawn (content), the rest
# changes *how well* it is drawn (quality). First matching regex wins; users prepend their own.
DEFAULT_GROUP_RULES: tuple[tuple[str, str], ...] = ((r"(^|\.)(attn2|ff)(\.|$)", "content"), (r".*", "quality"))
MIXDQ_NOTE = "MixDQ's rule: cross-attention (attn2) and feed-forward (ff) layers are content, the rest quality"
STREAM_NOTE = ("joint attention: layers that take text tokens (measured: their input length follows the prompt, "
               "not the image) are content, image and joint-token layers quality")

# the BOS token of a causal CLIP text encoder is a constant: its cross-attention key/value rows are kept in FP
BOS_PATTERN = r"(^|\.)attn2\.to_[kv]$"


class ModelError(ValueError):
    """A model cannot be found, loaded or understood."""


class PipelineAdapter:
    """What mpsearch knows about one pipeline family; the defaults are the generic (any diffusers) rules.
    Adapters are stateless: the registry holds one instance of each."""

    name: ClassVar[str] = "generic"
    pipelines: ClassVar[tuple[str, ...]] = ()
    denoisers: ClassVar[tuple[str, ...]] = ()
    denoiser_attrs: ClassVar[tuple[str, ...]] = ("unet", "transformer", "prior")
    component: ClassVar[str | None] = None  # the name of a bare denoiser; None: sniffed from its class name
    conditioning: ClassVar[tuple[str, ...]] = ()
    shared_args: ClassVar[tuple[str, ...]] = ()  # arguments without a batch dimension, whatever their shape
    guidance: ClassVar[str] = "cfg_batch"
    separate_order: ClassVar[tuple[str, str]] = ("cond", "uncond")  # call order of separate guidance calls
    group_by: ClassVar[str] = "names"  # "names" (group_rules) | "stream" (text-stream layers are content)
    group_rules: ClassVar[tuple[tuple[str, str], ...]] = DEFAULT_GROUP_RULES
    group_note: ClassVar[str] = MIXDQ_NOTE
    single_file: ClassVar[dict[str, str]] = {}  # diffusers single-file model type prefix → pipeline class
    bos_pattern: ClassVar[str | None] = BOS_PATTERN
    unit_lists: ClassVar[tuple[str, ...]] = ()  # a DiT's top-level block lists whose entries are prunable units
    pair_blocks: ClassVar[tuple[str, ...]] = ()  # block classes returning (encoder_hidden_states, hidden_states)

    def claims(self, obj: Any) -> bool:
        """Whether this adapter is the one for `obj` whatever its class (checked before class names)."""
        return False

    # --- the denoiser -------------------------------------------------------------------------------

    def find_denoiser(self, pipe_or_module: Any) -> tuple[str, nn.Module]:
        """`(component_name, module)` of the pipeline's denoiser (a bare denoiser is returned as it is)."""
        if isinstance(pipe_or_module, nn.Module) and not hasattr(pipe_or_module, "components"):
            name = self.component or ("transformer" if "Transformer" in type(pipe_or_module).__name__ else "unet")
            return name, pipe_or_module
        for name in self.denoiser_attrs:
            module = getattr(pipe_or_module, name, None)
            if isinstance(module, nn.Module):
                return name, module
        raise ModelError(f"{type(pipe_or_module).__name__} has no `unet` or `transformer` component")

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        """Keyword inputs of one denoiser call at `resolution` pixels (latent side = resolution / vae_scale)."""
        sample = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        cfg, device = denoiser.config, sample.device
        cross = cfg.cross_attention_dim
        cross = cross[0] if isinstance(cross, (list, tuple)) else cross
        out = {"sample": sample, "timestep": torch.full((batch,), 10, device=device, dtype=torch.long),
               "encoder_hidden_states": torch.zeros(batch, text_len, cross, device=device)}  # fmt: skip
        if getattr(cfg, "time_cond_proj_dim", None):  # LCM/TCD: the guidance embedding
            out["timestep_cond"] = torch.zeros(batch, cfg.time_cond_proj_dim, device=device)
        return out

    def dummy_latents(self, denoiser: nn.Module, resolution: int, *, batch: int = 1, device: Any = None,
                      vae_scale: int = 8) -> torch.Tensor:  # fmt: skip
        """The image input of `dummy_inputs`: zero float32 latents `[batch, in_channels, side, side]`, side =
        resolution / vae_scale, on `device` (else the denoiser's); the call's other inputs go on its device."""
        device = device or next(denoiser.parameters()).device
        side = resolution // vae_scale
        return torch.zeros(batch, denoiser.config.in_channels, side, side, device=device)

    def on_meta(self, denoiser: nn.Module) -> contextlib.AbstractContextManager:
        """Context for running `denoiser` on the meta device with `dummy_inputs` (a family whose forward
        reads tensor values, e.g. Lumina 2's mask lengths, patches that here)."""
        return contextlib.nullcontext()

    def text_len(self, pipe: Any) -> int:
        """Text tokens of one denoiser call (for MACs): the pipeline's default `max_sequence_length` (T5 and
        Gemma pipelines pad to it), else the tokenizer's length, else CLIP's 77."""
        param = inspect.signature(pipe).parameters.get("max_sequence_length") if callable(pipe) else None
        if param is not None and isinstance(param.default, int):
            return param.default
        tokenizer = getattr(pipe, "tokenizer", None)
        return int(tokenizer.model_max_length) if tokenizer is not None else 77

    def default_resolution(self, denoiser: nn.Module, vae_scale_factor: int = 8, pipe: Any = None) -> int:
        """Native resolution in pixels: the denoiser's `sample_size` latents × the VAE's scale factor, else
        the VAE's own `sample_size` (DiTs without one, e.g. Flux), else 1024."""
        side = getattr(denoiser.config, "sample_size", None)
        if side is None:
            vae_side = getattr(getattr(getattr(pipe, "vae", None), "config", None), "sample_size", None)
            side = vae_side[0] if isinstance(vae_side, (list, tuple)) else vae_side
            return int(side) if side else 1024
        side = side[0] if isinstance(side, (list, tuple)) else side
        return int(side) * vae_scale_factor

    def latent_shape(self, pipe: Any, resolution: int) -> tuple[int, ...]:
        """The latents of one image as the denoiser takes them: `(channels, side, side)`."""
        _, den = self.find_denoiser(pipe)
        side = resolution // pipe.vae_scale_factor
        return (int(den.config.in_channels), side, side)

    def vae_latents(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """Denoiser-layout latents `[N, ...]` as the VAE decodes them (before its scaling)."""
        return latents

    # --- sampling and calibration ---------------------------------------------------------------------

    def call_options(self) -> dict[str, Any]:
        """Extra `__call__` options for sampling (dropped where the pipeline lacks them)."""
        return {}

    def check_conditioning(self, cond: dict[str, Any], who: str) -> None:
        """Refuse a captured call that lacks the conditioning this family's denoiser needs (`cond`: every
        captured tensor path, per-row and shared)."""
        missing = [k for k in self.conditioning if k not in cond]
        if missing:
            raise ModelError(f"{who} passed no {', '.join(missing)} to its denoiser ({self.name} pipelines do)")

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance of the two halves' outputs, as the family's pipeline combines them."""
        return uncond + scale * (cond - uncond)

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """What the scheduler steps with, from the (guided) denoiser output."""
        return output

    def one_step_denoised(self, pipe: Any) -> bool:
        """Whether one-step sampling keeps the scheduler's denoised estimate (`step(...)[1]`), not the latents."""
        return False

    def sampling_defaults(self) -> dict[str, Any]:
        """`{"steps", "guidance"}` a user would pick for this family."""
        return dict(DEFAULT_SAMPLING)

    # --- quantization and pruning ---------------------------------------------------------------------

    def bos_layers(self, denoiser: nn.Module, pipe: Any = None) -> list[str]:
        """Cross-attention `to_k` / `to_v` layers whose first text token (BOS) is kept in full precision.
        BOS is a constant only with a causal CLIP text encoder: given a pipeline with another encoder, none."""
        encoder = getattr(pipe, "text_encoder", None) if pipe is not None else None
        if self.bos_pattern is None or pipe is not None and (encoder is None or "CLIPText" not in type(encoder).__name__):
            return []
        return [n for n, m in denoiser.named_modules() if isinstance(m, nn.Linear) and re.search(self.bos_pattern, n)]

    def unit_kind(self, name: str, module: nn.Module) -> str | None:
        """The kind of prunable unit `module` is ("transformer", "transformer_block", "resnet", or "dit_block":
        an entry of one of the family's `unit_lists`), or None."""
        return blocks.block_list_unit(name, self.unit_lists) or blocks.unit_kind(name, module)

    def stand_in(self, module: nn.Module) -> nn.Module:
        """The module that replaces a removed unit (returns its input, in the structure diffusers expects)."""
        if type(module).__name__ in self.pair_blocks:
            return blocks.PrunedJointBlock()
        if self.unit_lists and type(module).__name__ not in ("Transformer2DModel", "ResnetBlock2D"):
            return blocks.PrunedTransformerBlock()
        return blocks.stand_in(module)

    def feature_blocks(self, denoiser: nn.Module) -> list[tuple[str, nn.Module]]:
        """The blocks whose outputs feature distillation matches (LAPTOP-Diff): a UNet's down, mid and up
        blocks; a DiT's transformer blocks."""
        if hasattr(denoiser, "down_blocks"):
            out = [(f"down_blocks.{i}", b) for i, b in enumerate(denoiser.down_blocks)]
            out += [("mid_block", denoiser.mid_block)] if denoiser.mid_block is not None else []
            return out + [(f"up_blocks.{i}", b) for i, b in enumerate(denoiser.up_blocks)]
        return [(n, m) for n, m in denoiser.named_modules() if self.unit_kind(n, m) is not None]

    def block_feature(self, module: nn.Module, output: Any) -> torch.Tensor:
        """The feature of a block's output that distillation matches: the image stream of a two-stream
        block (`(encoder_hidden_states, hidden_states)`), else the first output."""
        if type(module).__name__ in self.pair_blocks or isinstance(module, blocks.PrunedJointBlock):
            return output[1]
        return output[0] if isinstance(output, tuple) else output


ADAPTERS: Registry[PipelineAdapter] = Registry("pipeline adapter")


def register_adapter(cls: type[PipelineAdapter]) -> type[PipelineAdapter]:
    """Class decorator: register one instance of an adapter under `cls.name`."""
    old = ADAPTERS.get(cls.name)
    ADAPTERS.add(cls.name, cls(), replace=old is not None and type(old) is cls)
    return cls


def _class_names(obj: Any) -> tuple[str | None, str | None]:
    """(pipeline class name, denoiser class name) of a pipeline or a bare denoiser."""
    if isinstance(obj, nn.Module) and not hasattr(obj, "components"):
        return None, type(obj).__name__
    den = next((getattr(obj, a) for a in ("unet", "transformer", "prior")
                if isinstance(getattr(obj, a, None), nn.Module)), None)  # fmt: skip
    return type(obj).__name__, type(den).__name__ if den is not None else None


def adapter_for(obj: Any) -> PipelineAdapter:
    """The adapter of a pipeline or denoiser: one that claims it, else by pipeline class, else by denoiser
    class, else the generic one."""
    adapters = [a for n, a in sorted(ADAPTERS.items()) if n != "generic"]
    for a in adapters:
        if a.claims(obj):
            return a
    pipe_cls, den_cls = _class_names(obj)
    for a in adapters:
        if pipe_cls in a.pipelines:
            return a
    for a in adapters:
        if den_cls in a.denoisers:
            return a
    return ADAPTERS.lookup("generic")


def denoiser_components() -> list[str]:
    """Every pipeline attribute (and checkpoint folder) name a registered family keeps its denoiser under."""
    return list(dict.fromkeys(a for adapter in ADAPTERS.values() for a in adapter.denoiser_attrs))


def adapter_named(class_names: Sequence[str]) -> PipelineAdapter:
    """The adapter of the first of `class_names` (pipeline or denoiser classes) any adapter covers."""
    for cls in class_names:
        for a in ADAPTERS.values():
            if cls in a.pipelines or cls in a.denoisers:
                return a
    return ADAPTERS.lookup("generic")
