"""Prunable units of diffusers denoisers and their stand-ins (`mpsearch/pipelines/blocks.py`), on the tiny
SD UNet: which modules are units, and that each stand-in returns its input in the structure the real
module's caller unpacks."""

import pytest
import torch
from torch import nn

from mpsearch.pipelines import blocks


def test_unit_kinds_of_the_tiny_unet(tiny_pipe):
    """Transformer2D containers and same-width resnets of the down/mid/up blocks, and every
    BasicTransformerBlock; not the resnets that change width (a shortcut conv) or take a skip concat."""
    kinds = {n: blocks.unit_kind(n, m) for n, m in tiny_pipe.unet.named_modules() if blocks.unit_kind(n, m)}
    containers = ["down_blocks.0.attentions.0", "mid_block.attentions.0", "up_blocks.1.attentions.0",
                  "up_blocks.1.attentions.1"]  # fmt: skip
    assert kinds == {**dict.fromkeys(containers, "transformer"),
                     **{f"{c}.transformer_blocks.0": "transformer_block" for c in containers},
                     **dict.fromkeys(["down_blocks.0.resnets.0", "mid_block.resnets.0", "mid_block.resnets.1"],
                                     "resnet")}  # fmt: skip
    resnet = tiny_pipe.unet.mid_block.resnets[0]
    assert blocks.unit_kind("somewhere.else.0", resnet) is None  # a container only inside down/mid/up blocks


def test_block_list_unit_is_a_top_level_list_entry():
    lists = ("transformer_blocks", "single_transformer_blocks")
    assert blocks.block_list_unit("transformer_blocks.3", lists) == "dit_block"
    assert blocks.block_list_unit("single_transformer_blocks.0", lists) == "dit_block"
    assert blocks.block_list_unit("transformer_blocks.3.attn1", lists) is None  # inside an entry
    assert blocks.block_list_unit("transformer_blocks", lists) is None
    assert blocks.block_list_unit("blocks.1", lists) is None


def test_stand_ins_return_their_input_as_the_real_module_is_unpacked(tiny_pipe):
    unet = tiny_pipe.unet
    container, resnet = unet.mid_block.attentions[0], unet.mid_block.resnets[0]
    x, text, temb = torch.randn(1, 64, 4, 4), torch.randn(1, 5, 32), torch.randn(1, 128)
    with torch.no_grad():
        real = container(x, encoder_hidden_states=text)
    fake = blocks.stand_in(container)(x, encoder_hidden_states=text)
    assert type(fake).__name__ == type(real).__name__ == "Transformer2DModelOutput"  # as the caller unpacks it
    assert fake[0] is fake.sample is x and real[0].shape == x.shape
    assert blocks.stand_in(container)(x, return_dict=False) == (x,)
    pruned = blocks.stand_in(resnet)
    assert isinstance(pruned, blocks.PrunedResnet) and pruned(x, temb) is x  # output_scale_factor 1
    assert torch.equal(blocks.PrunedResnet(2.0)(x, temb), x / 2)  # the skip path, scaled as the block scales
    block = container.transformer_blocks[0]
    assert blocks.stand_in(block)(x, attention_mask=None, encoder_hidden_states=text) is x
    assert blocks.PrunedJointBlock()(x, encoder_hidden_states=text) == (text, x)  # (text, image), as SD3/Flux
    with pytest.raises(ValueError, match="Linear is not a prunable unit"):
        blocks.stand_in(nn.Linear(2, 2))


def test_a_unet_runs_with_every_unit_stood_in(tiny_pipe):
    """Replacing every container and resnet unit keeps the UNet's shapes: it runs and returns latents."""
    unet = tiny_pipe.unet
    kinds = {n: blocks.unit_kind(n, m) for n, m in unet.named_modules()}
    units = [n for n, k in kinds.items() if k in ("transformer", "resnet")]
    x = torch.randn(1, 4, 8, 8)
    text = torch.randn(1, 16, 32)
    with torch.no_grad():
        before = unet(x, 10, encoder_hidden_states=text).sample
        for name in units:
            parent, _, child = name.rpartition(".")
            unet.get_submodule(parent)._modules[child] = blocks.stand_in(unet.get_submodule(name))
        after = unet(x, 10, encoder_hidden_states=text).sample
    assert after.shape == before.shape and not torch.equal(after, before)
