"""The PixArt-α/Σ adapter (`mpsearch/pipelines/pixart.py`) on the tiny PixArt-α pipeline: no BOS layers
(T5), its DiT's inputs (T5 width, size conditions, learned sigma), its call options and one-step rule.
PixArt-Σ end to end: `test_pixart_sigma.py`."""

import pytest
import torch

from mpsearch.pipelines import ModelError, adapter_for
from mpsearch.pipelines.capture import call_kwargs, record
from mpsearch.pipelines.pixart import PixArt
from mpsearch.profiling.session import bos_layers
from tests.conftest import build_tiny_pixart_pipeline

PIXART = PixArt()


@pytest.fixture(scope="module")
def pixart():
    return build_tiny_pixart_pipeline()


def test_no_bos_layers_with_t5(pixart):
    """(Moved from test_adapters.py's family-knowledge test.)"""
    assert bos_layers(pixart.transformer, pixart) == []  # T5: no constant BOS token


def test_dummy_inputs_are_one_real_transformer_call(pixart):
    """T5-width text (caption_channels 32, not the DiT's 16), size conditions, and the learned-sigma output:
    8 channels for 4 latent ones."""
    kw = PIXART.dummy_inputs(pixart.transformer, 16, 120, batch=2, vae_scale=2)
    assert kw["hidden_states"].shape == (2, 4, 8, 8) and kw["encoder_hidden_states"].shape == (2, 120, 32)
    assert kw["added_cond_kwargs"]["resolution"].shape == (2, 2)
    with torch.no_grad():
        assert pixart.transformer(**kw).sample.shape == (2, 8, 8, 8)


def test_call_options_ask_for_the_exact_resolution(pixart):
    """No resolution binning (the tiny model's 16 px is no PixArt bin), no caption cleaning (needs bs4/ftfy):
    the pipeline's own first call is at 8x8 latents, with T5's attention mask."""
    assert call_kwargs(pixart, {"prompt": "a", "bogus": 1}) == {"prompt": "a", "use_resolution_binning": False,
                                                                "clean_caption": False}  # fmt: skip
    rec = record(pixart, dict(prompt=["a red circle"], guidance_scale=3.0, num_inference_steps=2, height=16, width=16))
    call = rec.calls[0]
    assert call["hidden_states"].shape == (2, 4, 8, 8) and call["encoder_attention_mask"].shape == (2, 120)
    PIXART.check_conditioning(call, "PixArtAlphaPipeline")
    with pytest.raises(ModelError, match="passed no encoder_attention_mask"):
        PIXART.check_conditioning({"encoder_hidden_states": 1}, "P")


def test_one_step_keeps_the_denoised_estimate_for_alpha_only(pixart):
    assert adapter_for(pixart) is adapter_for(pixart.transformer)
    assert PIXART.one_step_denoised(pixart) is True
    sigma = type("PixArtSigmaPipeline", (), {})()
    assert PIXART.one_step_denoised(sigma) is False
    assert PIXART.find_denoiser(pixart) == ("transformer", pixart.transformer)
