"""Default sampling settings per model (`mpsearch/pipelines/sampling.py`): the demo's tuned setting, a
bundled config's published steps and guidance, a family's defaults."""

from pathlib import Path

from mpsearch import zoo
from mpsearch.pipelines.base import DEFAULT_SAMPLING
from mpsearch.pipelines.sampling import sampling_defaults


def test_defaults_of_the_demo_bundled_configs_and_other_models():
    """(Moved from test_adapters.py's family-knowledge test.)"""
    assert sampling_defaults() == {"steps": 8, "guidance": 3.0}  # the demo's tuned setting
    assert sampling_defaults("sdxl-turbo") == {"steps": 1, "guidance": 0.0}
    assert sampling_defaults("sd15") == {"steps": 50, "guidance": 5.0}
    assert sampling_defaults("someone/some-model") == {"steps": 20, "guidance": 5.0}


def test_a_bundled_config_s_own_guidance_wins_over_its_family_s():
    assert sampling_defaults("flux-dev") == {"steps": 28, "guidance": 3.5}
    assert sampling_defaults("flux-schnell") == {"steps": 4, "guidance": 0.0}
    assert sampling_defaults("pixart-alpha") == {"steps": 20, "guidance": 5.0}  # none given: PixArt's default


def test_a_loaded_pipeline_gets_its_family_s_and_a_folder_any_family_s(tiny_pipe, tmp_path):
    assert sampling_defaults(tiny_pipe) == DEFAULT_SAMPLING  # SD: the generic defaults
    assert sampling_defaults(tmp_path) == DEFAULT_SAMPLING  # a folder, not loaded here
    assert sampling_defaults(Path("demo")) == sampling_defaults("demo") == {
        "steps": zoo.DEMO_STEPS, "guidance": zoo.DEMO_GUIDANCE}  # fmt: skip
    assert sampling_defaults(zoo.load_demo()) == sampling_defaults()  # the demo claimed by its path
    out = sampling_defaults("sd15")
    out["steps"] = 1  # the caller's copy
    assert sampling_defaults("sd15")["steps"] == 50
