"""Pipeline adapters: which family each model gets, and that mpsearch reads a family's knowledge from its
adapter only (a family registered here changes groups, BOS layers, units and sampling defaults)."""

import copy

import pytest
from torch import nn

from mpsearch.model import find_denoiser, inventory, meta_denoiser
from mpsearch.pipelines import ADAPTERS, ModelError, PipelineAdapter, adapter_for, denoiser_components
from mpsearch.pipelines.sampling import sampling_defaults
from mpsearch.profiling.calibration import capture_call, initial_noise
from mpsearch.profiling.pruning import find_units
from mpsearch.profiling.session import bos_layers
from tests.conftest import build_tiny_pixart_pipeline, build_tiny_sdxl_pipeline


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


def test_family_knowledge_comes_from_the_adapter(tiny_pipe):
    pixart = build_tiny_pixart_pipeline()
    sd_bos = bos_layers(tiny_pipe.unet, tiny_pipe)
    assert sd_bos and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in sd_bos)
    assert bos_layers(tiny_pipe.unet) == sd_bos  # no pipeline given: the family's pattern alone
    assert bos_layers(pixart.transformer, pixart) == []  # T5: no constant BOS token
    assert sampling_defaults() == {"steps": 8, "guidance": 3.0}  # the demo's tuned setting
    assert sampling_defaults("sdxl-turbo") == {"steps": 1, "guidance": 0.0}
    assert sampling_defaults("sd15") == {"steps": 50, "guidance": 5.0}
    assert sampling_defaults("someone/some-model") == {"steps": 20, "guidance": 5.0}


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
