"""The Stable Diffusion 1.x/2.x adapter (`mpsearch/pipelines/sd.py`) on the tiny SD pipeline: CLIP's
constant BOS token kept in full precision, the conditioning it requires, the inputs of one UNet call and
the single-file fallback."""

import pytest
import torch

from mpsearch.pipelines import ModelError, adapter_for
from mpsearch.pipelines.capture import record
from mpsearch.pipelines.sd import StableDiffusion
from mpsearch.profiling.session import bos_layers

SD = StableDiffusion()


def test_bos_layers_are_the_cross_attention_keys_and_values(tiny_pipe):
    """(Moved from test_adapters.py's family-knowledge test.)"""
    sd_bos = bos_layers(tiny_pipe.unet, tiny_pipe)
    assert sd_bos and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in sd_bos)
    assert bos_layers(tiny_pipe.unet) == sd_bos  # no pipeline given: the family's pattern alone
    n_attn2 = sum(1 for n, _ in tiny_pipe.unet.named_modules() if n.endswith(".attn2"))
    assert len(sd_bos) == 2 * n_attn2 == 8  # to_k and to_v of each of the 4 cross-attentions


def test_the_captured_call_carries_the_required_conditioning(tiny_pipe):
    """The pipeline's own first call (a CFG batch of 2) passes the CLIP states SD requires; a call without
    them is refused, naming what is missing."""
    assert adapter_for(tiny_pipe) is adapter_for(tiny_pipe.unet) and adapter_for(tiny_pipe).name == SD.name == "sd"
    rec = record(tiny_pipe, dict(prompt=["a red circle"], guidance_scale=3.0, num_inference_steps=2, height=16,
                                 width=16))  # fmt: skip
    call = rec.calls[0]
    assert call["encoder_hidden_states"].shape == (2, 16, 32)  # 16 CLIP tokens of width 32
    SD.check_conditioning(call, "StableDiffusionPipeline")
    with pytest.raises(ModelError, match=r"^X passed no encoder_hidden_states to its denoiser \(sd pipelines do\)$"):
        SD.check_conditioning({"sample": call["sample"]}, "X")


def test_dummy_inputs_are_one_real_unet_call(tiny_pipe):
    kw = SD.dummy_inputs(tiny_pipe.unet, 16, tiny_pipe.tokenizer.model_max_length, vae_scale=2)
    with torch.no_grad():
        out = tiny_pipe.unet(**kw).sample
    assert out.shape == kw["sample"].shape == (1, 4, 8, 8)


def test_single_file_checkpoints_of_no_other_family_load_as_sd():
    assert SD.single_file == {"": "StableDiffusionPipeline"}
    assert SD.denoiser_attrs == ("unet",) and SD.component == "unet"
