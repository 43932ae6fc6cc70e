"""The pipeline-adapter contract (`mpsearch/pipelines/base.py`): which family each model gets, that
mpsearch reads a family's knowledge from its adapter only (a family registered here changes groups, BOS
layers, units and sampling defaults), and the generic hooks every family inherits, on the tiny SD pipeline.
A family's own hooks are tested in `test_<family>.py`."""

import copy

import pytest
import torch
from torch import nn

from mpsearch.model import find_denoiser, inventory, meta_denoiser
from mpsearch.pipelines import (
    ADAPTERS,
    ModelError,
    PipelineAdapter,
    adapter_for,
    adapter_named,
    denoiser_components,
)
from mpsearch.pipelines.base import DEFAULT_SAMPLING, register_adapter
from mpsearch.pipelines.blocks import PrunedJointBlock, PrunedResnet
from mpsearch.pipelines.sampling import sampling_defaults
from mpsearch.pipelines.sd import StableDiffusion
from mpsearch.profiling.calibration import capture_call, initial_noise
from mpsearch.profiling.pruning import find_units
from mpsearch.profiling.session import bos_layers
from tests.conftest import build_tiny_lcm_pipeline, build_tiny_pixart_pipeline, build_tiny_sdxl_pipeline

GENERIC = ADAPTERS.lookup("generic")


def test_each_model_gets_its_family(tiny_pipe):
    assert adapter_for(tiny_pipe).name == "sd"
    assert adapter_for(tiny_pipe.unet).name == "sd"  # a bare UNet without SDXL's text-time embedding
    assert adapter_for(None).name == adapter_for("demo").name == "demo"
    assert adapter_for(meta_denoiser("sdxl-base")).name == "sdxl"  # claimed by its text-time embedding
    assert adapter_for(build_tiny_sdxl_pipeline()).name == "sdxl"
    assert adapter_for(build_tiny_pixart_pipeline()).name == "pixart"
    assert adapter_for(meta_denoiser("pixart-alpha")).name == "pixart"

    import tests.conftest as c

    families = {"sd3": "sd3", "flux": "flux", "sana": "sana", "pixart_sigma": "pixart", "auraflow": "auraflow",
                "lumina2": "lumina2", "hunyuandit": "hunyuandit", "lcm": "lcm"}  # fmt: skip
    for builder, family in families.items():
        pipe = getattr(c, f"build_tiny_{builder}_pipeline")()
        assert adapter_for(pipe).name == family
        # a bare denoiser by its class (an LCM UNet is SD's class: its pipeline makes it LCM)
        assert adapter_for(find_denoiser(pipe)[1]).name == ("sd" if family == "lcm" else family)
    for name, family in (("flux-dev", "flux"), ("sd3.5-large", "sd3"), ("sana-1600m", "sana"), ("pixart-sigma", "pixart")):
        assert adapter_for(meta_denoiser(name)).name == family

    class Holder:  # a pipeline no adapter knows: the generic rules find its denoiser
        components: dict = {}
        prior = nn.Linear(2, 2)

    assert adapter_for(Holder()).name == "generic"
    assert find_denoiser(Holder())[0] == "prior"
    assert {"unet", "transformer", "prior"} <= set(denoiser_components())


class Everything(PipelineAdapter):
    """A family whose layers are all content, with no BOS layers, no units and its own defaults."""

    name = "_test_everything"
    pipelines = ("EverythingPipeline",)
    group_rules = ((r".*", "content"),)
    bos_pattern = None
    conditioning = ("encoder_hidden_states", "never_passed")

    def unit_kind(self, name, module):
        return None

    def sampling_defaults(self):
        return {"steps": 3, "guidance": 1.5}


@pytest.fixture()
def everything(tiny_pipe):
    """`tiny_pipe` as an instance of a pipeline class only the `Everything` adapter knows."""
    ADAPTERS.add(Everything.name, Everything())
    pipe = copy.copy(tiny_pipe)
    pipe.__class__ = type("EverythingPipeline", (type(tiny_pipe),), {})
    yield pipe
    ADAPTERS.pop(Everything.name)


def test_a_new_family_is_one_adapter(everything, tiny_pipe):
    assert adapter_for(everything).name == "_test_everything"
    inv = inventory(everything)
    assert inv.group_totals().keys() == {"content"} and len(inv) == len(inventory(tiny_pipe))
    assert bos_layers(everything.unet, everything) == []
    assert find_units(everything) == [] and find_units(tiny_pipe)
    assert sampling_defaults(everything) == {"steps": 3, "guidance": 1.5}
    noise = initial_noise(everything, [0], 32)
    with pytest.raises(ModelError, match="EverythingPipeline passed no never_passed to its denoiser"):
        capture_call(everything, ["a cat"], noise=noise, steps=2, guidance=2.0, resolution=32)


def test_registering_follows_the_one_duplicate_rule():
    """Re-registering a family's own class replaces its instance (a module reloaded); another class under a
    taken name is refused, naming it."""
    before = ADAPTERS["sd"]
    try:
        assert register_adapter(StableDiffusion) is StableDiffusion
        assert type(ADAPTERS["sd"]) is StableDiffusion and ADAPTERS["sd"] is not before
    finally:
        ADAPTERS.add("sd", before, replace=True)

    class Impostor(PipelineAdapter):
        name = "sd"

    with pytest.raises(ValueError, match="pipeline adapter 'sd' is already registered"):
        register_adapter(Impostor)
    assert ADAPTERS["sd"] is before


def test_adapter_named_takes_the_first_class_any_family_covers():
    assert adapter_named(["NoSuchPipeline", "FluxTransformer2DModel"]).name == "flux"
    assert adapter_named(["StableDiffusionXLPipeline", "UNet2DConditionModel"]).name == "sdxl"
    assert adapter_named(["UNet2DConditionModel"]).name == "sd"
    assert adapter_named(["NoSuchPipeline"]).name == adapter_named([]).name == "generic"


def test_find_denoiser_of_a_pipeline_a_bare_module_or_neither(tiny_pipe):
    assert GENERIC.find_denoiser(tiny_pipe) == ("unet", tiny_pipe.unet)
    assert GENERIC.find_denoiser(tiny_pipe.unet) == ("unet", tiny_pipe.unet)
    pixart = build_tiny_pixart_pipeline().transformer  # a bare module: its name from its class
    assert GENERIC.find_denoiser(pixart) == ("transformer", pixart)

    class Empty:
        components: dict = {}
        unet = "not a module"

    with pytest.raises(ModelError, match="Empty has no `unet` or `transformer` component"):
        GENERIC.find_denoiser(Empty())


def test_generic_dummy_inputs_run_the_denoiser(tiny_pipe):
    """Inputs of one call at 16 px through the tiny 2x VAE: 8x8 latents, the text width of the UNet's
    cross-attention; the UNet runs on them. A UNet with a guidance embedding (LCM) also gets `timestep_cond`."""
    unet = tiny_pipe.unet
    kw = GENERIC.dummy_inputs(unet, 16, 7, batch=2, vae_scale=2)
    assert set(kw) == {"sample", "timestep", "encoder_hidden_states"}
    assert kw["sample"].shape == (2, 4, 8, 8) and kw["encoder_hidden_states"].shape == (2, 7, 32)
    assert kw["timestep"].tolist() == [10, 10]
    with torch.no_grad():
        assert unet(**kw).sample.shape == (2, 4, 8, 8)
    lcm = build_tiny_lcm_pipeline().unet
    kw = GENERIC.dummy_inputs(lcm, 16, 7, vae_scale=2)
    assert kw["timestep_cond"].shape == (1, 16)
    with torch.no_grad():
        assert lcm(**kw).sample.shape == (1, 4, 8, 8)


def test_generic_sizes_of_text_image_and_latents(tiny_pipe):
    assert GENERIC.text_len(tiny_pipe) == tiny_pipe.tokenizer.model_max_length == 16  # CLIP: its tokenizer
    assert GENERIC.text_len(build_tiny_pixart_pipeline()) == 120  # T5 pipelines pad to max_sequence_length
    assert GENERIC.text_len(nn.Linear(2, 2)) == 77  # nothing to read: CLIP's length
    assert GENERIC.default_resolution(tiny_pipe.unet, tiny_pipe.vae_scale_factor) == 8 * 2  # sample_size x VAE
    assert GENERIC.default_resolution(tiny_pipe.unet) == 64  # an 8x VAE by default
    assert GENERIC.latent_shape(tiny_pipe, 16) == (4, 8, 8)
    lat = torch.randn(1, 4, 8, 8)
    assert GENERIC.vae_latents(tiny_pipe, lat) is lat


def test_generic_guidance_and_sampling_rules(tiny_pipe):
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.0])
    assert GENERIC.guide(uncond, cond, 4.0).tolist() == [9.0, 2.0]  # u + g·(c - u)
    assert GENERIC.prediction(cond) is cond
    assert GENERIC.one_step_denoised(tiny_pipe) is False and GENERIC.call_options() == {}
    defaults = GENERIC.sampling_defaults()
    assert defaults == DEFAULT_SAMPLING == {"steps": 20, "guidance": 5.0}
    defaults["steps"] = 1  # a copy: the caller may change it
    assert GENERIC.sampling_defaults()["steps"] == 20
    GENERIC.check_conditioning({}, "anything")  # the generic family requires nothing


def test_generic_units_stand_ins_and_feature_blocks(tiny_pipe):
    unet = tiny_pipe.unet
    units = {n: GENERIC.unit_kind(n, m) for n, m in unet.named_modules() if GENERIC.unit_kind(n, m)}
    assert units["down_blocks.0.resnets.0"] == "resnet" and units["mid_block.attentions.0"] == "transformer"
    assert isinstance(GENERIC.stand_in(unet.mid_block.resnets[0]), PrunedResnet)
    assert [n for n, _ in GENERIC.feature_blocks(unet)] == [
        "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]  # fmt: skip
    pixart = build_tiny_pixart_pipeline().transformer  # a DiT: its transformer blocks
    assert [n for n, _ in GENERIC.feature_blocks(pixart)] == ["transformer_blocks.0", "transformer_blocks.1"]
    hidden, text = torch.ones(1), torch.zeros(1)
    assert GENERIC.block_feature(unet.mid_block, (hidden, text)) is hidden  # the first output
    assert GENERIC.block_feature(unet.mid_block, hidden) is hidden
    assert GENERIC.block_feature(PrunedJointBlock(), (text, hidden)) is hidden  # the image stream


# every family whose denoiser takes unpacked latents: (tiny pipeline builder, family, latent argument)
LATENT_FAMILIES = (("", "sd", "sample"), ("sdxl", "sdxl", "sample"), ("lcm", "lcm", "sample"),
                   ("pixart", "pixart", "hidden_states"), ("pixart_sigma", "pixart", "hidden_states"),
                   ("sd3", "sd3", "hidden_states"), ("sana", "sana", "hidden_states"),
                   ("auraflow", "auraflow", "hidden_states"), ("lumina2", "lumina2", "hidden_states"),
                   ("hunyuandit", "hunyuandit", "hidden_states"))  # fmt: skip


def test_dummy_latents_are_the_image_input_of_every_family():
    """Zero float32 latents `[batch, in_channels, side, side]` at resolution / vae_scale, on the device asked
    for, else the denoiser's; each family's `dummy_inputs` passes exactly these as its image input."""
    import tests.conftest as c

    for builder, family, arg in LATENT_FAMILIES:
        pipe = getattr(c, f"build_tiny_{builder}_pipeline" if builder else "build_tiny_pipeline")()
        adapter, (_, den) = adapter_for(pipe), find_denoiser(pipe)
        assert adapter.name == family
        scale = pipe.vae_scale_factor  # 2 (SD-like), 4 (Sana's tiny DC-AE) or 8 (Lumina 2, HunyuanDiT)
        lat = adapter.dummy_latents(den, 4 * scale, batch=2, vae_scale=scale)
        assert lat.shape == (2, 4, 4, 4) and lat.dtype == torch.float32 and lat.device.type == "cpu", family
        assert not lat.any()
        kw = adapter.dummy_inputs(den, 4 * scale, 7, batch=2, device="meta", vae_scale=scale)
        assert kw[arg].shape == (2, 4, 4, 4) and kw[arg].dtype == torch.float32 and kw[arg].device.type == "meta"
        # the call's other tensors follow the latents' device
        assert all(t.device.type == "meta" for t in kw.values() if isinstance(t, torch.Tensor)), family
    for name, shape in (("sd3.5-medium", (1, 16, 128, 128)), ("sana-1600m", (1, 32, 32, 32))):  # channels: the config's
        den = meta_denoiser(name)
        assert adapter_for(den).dummy_inputs(den, 1024, 7)["hidden_states"].shape == shape  # Sana: a 32x DC-AE
        assert GENERIC.dummy_latents(den, 1024, vae_scale=32).shape == (1, shape[1], 32, 32)
