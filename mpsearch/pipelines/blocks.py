"""Prunable units of diffusers denoisers (LAPTOP-Diff) and the modules that stand in for removed ones.

The generic rules every adapter uses unless it overrides `unit_kind` / `stand_in` (see `mpsearch.profiling.pruning`
for what a unit is): `Transformer2DModel` containers and `ResnetBlock2D`s of a UNet's down/mid/up blocks,
and `BasicTransformerBlock`s (a DiT's own top-level `transformer_blocks`, or several inside a container).
"""

from __future__ import annotations

import re

from torch import nn

TOP_BLOCK = re.compile(r"^transformer_blocks\.\d+$")
CONTAINER = re.compile(r"^(down_blocks\.\d+\.|up_blocks\.\d+\.|mid_block\.)(attentions|resnets)\.\d+$")


class PrunedTransformer2D(nn.Module):
    """Stands in for a removed `Transformer2DModel`: returns its input, in the structure diffusers expects."""

    def forward(self, hidden_states, *args, return_dict: bool = True, **kwargs):
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=hidden_states)
        return (hidden_states,)


class PrunedTransformerBlock(nn.Module):
    """Stands in for a removed `BasicTransformerBlock` (called with attention masks, text states, ...)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class PrunedJointBlock(nn.Module):
    """Stands in for a removed two-stream block (SD3's `JointTransformerBlock`, Flux's double- and
    single-stream blocks, AuraFlow's joint blocks): both streams unchanged, as `(encoder_hidden_states,
    hidden_states)`, the order those blocks return them in."""

    def forward(self, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        return encoder_hidden_states, hidden_states


class PrunedResnet(nn.Module):
    """Stands in for a removed `ResnetBlock2D`: its skip path alone, `input / output_scale_factor`."""

    def __init__(self, output_scale_factor: float = 1.0):
        super().__init__()
        self.output_scale_factor = float(output_scale_factor)

    def forward(self, input_tensor, *args, **kwargs):
        return input_tensor if self.output_scale_factor == 1.0 else input_tensor / self.output_scale_factor


def unit_kind(name: str, module: nn.Module) -> str | None:
    """"transformer_block", "transformer" (a container), "resnet" (a plain residual block), or None."""
    cls = type(module).__name__
    if cls == "BasicTransformerBlock":
        return "transformer_block"
    if not CONTAINER.match(name):
        return None
    if cls == "Transformer2DModel" and getattr(module, "is_input_continuous", False):
        return "transformer"
    if cls == "ResnetBlock2D" and getattr(module, "conv_shortcut", None) is None \
            and module.in_channels == module.out_channels:
        return "resnet"
    return None


def block_list_unit(name: str, lists: tuple[str, ...]) -> str | None:
    """"dit_block" when `name` is an entry of one of a DiT's top-level block lists (`transformer_blocks.3`)."""
    head, _, index = name.partition(".")
    return "dit_block" if head in lists and index.isdigit() else None


def stand_in(module: nn.Module) -> nn.Module:
    """The identity in the structure diffusers expects of `module`'s class."""
    cls = type(module).__name__
    if cls == "Transformer2DModel":
        return PrunedTransformer2D()
    if cls == "BasicTransformerBlock":
        return PrunedTransformerBlock()
    if cls == "ResnetBlock2D":
        return PrunedResnet(module.output_scale_factor)
    raise ValueError(f"{cls} is not a prunable unit")
