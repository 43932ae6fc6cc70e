"""The SDXL adapter (`mpsearch/pipelines/sdxl.py`) on the tiny SDXL pipeline: a bare UNet claimed by its
text-time embedding, the pooled text and size/crop ids it requires, the inputs of one UNet call."""

import pytest
import torch

from mpsearch.model import meta_denoiser
from mpsearch.pipelines import ModelError, adapter_for
from mpsearch.pipelines.capture import record
from mpsearch.pipelines.sdxl import N_TIME_IDS, StableDiffusionXL, is_text_time
from tests.conftest import build_tiny_sdxl_pipeline

SDXL = StableDiffusionXL()


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_sdxl_pipeline()


def test_a_bare_unet_is_sdxl_by_its_text_time_embedding(sdxl, tiny_pipe):
    assert is_text_time(sdxl.unet) and not is_text_time(tiny_pipe.unet)
    assert not is_text_time(sdxl) and not is_text_time(sdxl.unet.config)  # a pipeline, a config: no module
    assert SDXL.claims(sdxl.unet) and not SDXL.claims(sdxl)  # the pipeline goes by its class name
    assert adapter_for(sdxl).name == adapter_for(sdxl.unet).name == "sdxl"
    assert adapter_for(tiny_pipe.unet).name == "sd"  # the same UNet class without the embedding
    assert is_text_time(meta_denoiser("sdxl-turbo"))


def test_dummy_inputs_are_one_real_unet_call(sdxl):
    """Pooled text = the addition embedding's input less 6 time ids of 8 channels each (80 - 48 = 32)."""
    kw = SDXL.dummy_inputs(sdxl.unet, 16, 7, batch=2, vae_scale=2)
    added = kw["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, 32) and added["time_ids"].shape == (2, N_TIME_IDS) == (2, 6)
    assert kw["encoder_hidden_states"].shape == (2, 7, 64)  # the two CLIPs' states side by side
    with torch.no_grad():
        assert sdxl.unet(**kw).sample.shape == (2, 4, 8, 8)


def test_the_captured_call_carries_pooled_text_and_size_ids(sdxl):
    rec = record(sdxl, dict(prompt=["a red circle"], guidance_scale=3.0, num_inference_steps=2, height=16, width=16))
    call = rec.calls[0]
    assert call["added_cond_kwargs"]["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * 2
    paths = {"encoder_hidden_states": 1, **{f"added_cond_kwargs.{k}": 1 for k in call["added_cond_kwargs"]}}
    SDXL.check_conditioning(paths, "StableDiffusionXLPipeline")
    with pytest.raises(ModelError, match="X passed no added_cond_kwargs.text_embeds, added_cond_kwargs.time_ids"):
        SDXL.check_conditioning({"encoder_hidden_states": 1}, "X")
