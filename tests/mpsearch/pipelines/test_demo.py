"""The demo adapters (`mpsearch/pipelines/demo.py`): each bundled model (an SD and an SD3 pipeline) is claimed
by its path (not its class), sampled at its tuned few-step setting."""

from pathlib import Path
from types import SimpleNamespace

from mpsearch import zoo
from mpsearch.pipelines import adapter_for
from mpsearch.pipelines.demo import Demo, DemoDit, is_demo
from mpsearch.pipelines.sd3 import StableDiffusion3


def test_names_of_the_demo():
    assert is_demo(None) and is_demo("demo") and is_demo(Path("demo"))
    assert not is_demo("sd15") and not is_demo("demo2") and not is_demo(Path("x") / "demo")
    # a bundled model's own folder is that model (as a pipeline loaded from it is); the DiT is a demo too
    assert is_demo(str(zoo.DEMO_PATH)) and is_demo("demo-dit") and is_demo(zoo.BUNDLED["demo-dit"])


def test_the_loaded_demo_is_claimed_by_its_path_not_its_class(tiny_pipe, tmp_path):
    demo = zoo.load_demo()
    assert is_demo(demo) and adapter_for(demo).name == "demo"
    assert type(demo) is type(tiny_pipe) and not is_demo(tiny_pipe)
    assert adapter_for(tiny_pipe).name == "sd"
    tiny_pipe.register_to_config(_name_or_path=str(tmp_path))  # loaded from elsewhere: not the demo
    assert not is_demo(tiny_pipe)


def test_the_demo_samples_at_its_tuned_setting_and_keeps_sd_rules():
    got = Demo().sampling_defaults()
    assert got == {"steps": zoo.DEMO_STEPS, "guidance": zoo.DEMO_GUIDANCE} == {"steps": 8, "guidance": 3.0}
    assert type(got["steps"]) is int and type(got["guidance"]) is float
    assert Demo().call_options() == {}  # SD's pipeline call as it is
    sd = adapter_for("demo")
    assert sd.conditioning == ("encoder_hidden_states",) and sd.pipelines == ()  # SD's UNet, claimed by path


def test_the_dit_samples_at_its_tuned_setting_with_the_t5_tokens_it_was_trained_with():
    dit = DemoDit()
    got = dit.sampling_defaults()
    assert got == {"steps": zoo.DIT_STEPS, "guidance": zoo.DIT_GUIDANCE} == {"steps": 8, "guidance": 3.0}
    assert type(got["steps"]) is int and type(got["guidance"]) is float
    assert dit.call_options() == {"max_sequence_length": zoo.DIT_T5_TOKENS}
    assert dit.pipelines == dit.denoisers == () and dit.single_file == {}  # claimed by its path, not its class
    pipe = SimpleNamespace(tokenizer_max_length=zoo.DIT_CLIP_TOKENS)
    assert dit.text_len(pipe) == 10 + 8 and StableDiffusion3().text_len(pipe) == 10 + 256  # CLIP's, then T5's
    assert dit.text_len(None) == 77 + 8  # no tokenizer to read: CLIP's 77
