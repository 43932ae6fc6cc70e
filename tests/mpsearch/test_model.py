"""Inventories: tiny SD / SDXL / PixArt denoisers built from config dicts, and the published meta figures."""

import pytest
import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from torch import nn

from mpsearch.model import ModelError, classify, count_macs, dummy_inputs, inventory

TINY_SD = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TINY_SDXL = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, attention_head_dim=(4, 8), transformer_layers_per_block=(1, 2), norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
    use_linear_projection=True,
)
TINY_PIXART = dict(
    sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=2, in_channels=4, out_channels=8,
    cross_attention_dim=16, caption_channels=24, patch_size=2, norm_type="ada_norm_single",
    num_embeds_ada_norm=1000, norm_elementwise_affine=False, norm_eps=1e-6, activation_fn="gelu-approximate",
    attention_bias=True, use_additional_conditions=False,
)


def build(cls, cfg):
    torch.manual_seed(0)
    return cls(**cfg).eval()


@pytest.mark.parametrize(
    "cls,cfg,component",
    [(UNet2DConditionModel, TINY_SD, "unet"), (UNet2DConditionModel, TINY_SDXL, "unet"),
     (PixArtTransformer2DModel, TINY_PIXART, "transformer")],
    ids=["sd", "sdxl", "pixart"],
)
def test_inventory_lists_every_linear_and_conv(cls, cfg, component):
    model = build(cls, cfg)
    inv = inventory(model, text_len=7)
    expected = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert inv.names == expected
    assert inv.component == component
    assert inv.total_params == sum(p.numel() for p in model.parameters())
    for layer in inv:
        module = model.get_submodule(layer.name)
        assert layer.params == module.weight.numel()
        assert layer.group == ("content" if (".attn2." in layer.name or ".ff." in layer.name) else "quality")
        assert layer.macs > 0, layer.name


def test_meta_macs_equal_a_real_forward():
    """MACs counted on the meta device equal MACs counted on a real CPU forward with real weights."""
    model = build(UNet2DConditionModel, TINY_SDXL)
    inv = inventory(model, resolution=64, text_len=7)
    real: dict[str, int] = {}

    def hook(m, i, o):
        n = o.numel() * (m.in_features if isinstance(m, nn.Linear) else m.in_channels * m.kernel_size[0] * m.kernel_size[1])
        real[names[m]] = real.get(names[m], 0) + n

    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    hs = [m.register_forward_hook(hook) for m in names]
    with torch.no_grad():
        model(**dummy_inputs(model, 64, 7))
    for h in hs:
        h.remove()
    assert {l.name: l.macs for l in inv} == real
    assert count_macs(model, 64, 7) == real


def test_macs_scale_with_resolution():
    model = build(UNet2DConditionModel, TINY_SD)
    small, big = inventory(model, resolution=64, text_len=7), inventory(model, resolution=128, text_len=7)
    conv_in = "conv_in"
    assert big[conv_in].macs == 4 * small[conv_in].macs


def test_sdxl_published_figures_on_meta_device():
    inv = inventory("sdxl-base")
    linear = [l for l in inv if l.kind == "linear"]
    conv = [l for l in inv if l.kind == "conv2d"]
    assert len(inv) == 794
    assert (len(linear), sum(l.params + l.bias for l in linear)) == (743, 2_233_603_520)
    assert (len(conv), sum(l.params + l.bias for l in conv)) == (51, 333_272_004)
    totals = inv.group_totals()
    assert totals["content"]["layers"] == 420  # 70 transformer blocks x 6 (MixDQ)
    assert totals["content"]["params"] / (totals["content"]["params"] + totals["quality"]["params"]) == pytest.approx(0.692, abs=1e-3)
    turbo = inventory("sdxl-turbo")  # same UNet, trained for 512 px
    assert [(l.name, l.params) for l in turbo] == [(l.name, l.params) for l in inv]
    assert turbo.total_macs < inv.total_macs


def test_sd15_published_figures_on_meta_device():
    inv = inventory("sd15")
    assert sum(l.kind == "linear" for l in inv) == 184
    assert sum(l.kind == "conv2d" for l in inv) == 98
    assert inv.group_totals()["content"]["layers"] == 96  # MixDQ's LCM-LoRA ratio file


def test_pixart_meta_inventory():
    inv = inventory("pixart-alpha")
    assert inv.component == "transformer"
    assert inv.total_params == 611_349_152
    assert sum(".attn2." in l.name for l in inv) == 28 * 4


def test_group_overrides_and_rule():
    assert classify("down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2") == "content"
    assert classify("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "quality"
    assert classify("diff_layer.conv") == "quality"  # 'ff' only as a path component
    inv = inventory("sd15", groups={r"conv_out": "content"})
    assert inv["conv_out"].group == "content"
    with pytest.raises(ModelError, match="must be 'quality' or 'content'"):
        inventory("sd15", groups={"conv_out": "fancy"})


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="could not load"):
        inventory(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="not a multiple of 8"):
        inventory("sd15", resolution=100)


def test_inventory_file_roundtrip(tmp_path):
    inv = inventory("sd15")
    back = type(inv).load(inv.save(tmp_path / "inventory.json"))
    assert back.to_dict() == inv.to_dict()
    assert back["conv_in"] == inv["conv_in"]


@pytest.mark.parametrize("name,published,layers", [
    ("flux-dev", 11.9e9, 504),  # FLUX.1 [dev]: a 12 B model; its transformer holds 11.9 B parameters
    ("flux-schnell", 11.9e9, 502),  # no guidance embedder
    ("sd3.5-large", 8.1e9, 537),  # SD 3.5 Large: 8.1 B
    ("sana-1600m", 1.6e9, 227),  # Sana 1600M
    ("pixart-sigma", 0.61e9, 287),  # PixArt-Σ XL-2: 0.6 B, as PixArt-α without its size embedders
])
def test_bundled_family_configs_have_the_published_sizes(name, published, layers):
    """Counted on the meta device, no weights, no forward (these are large)."""
    from mpsearch.model import QUANTIZABLE, meta_denoiser

    den = meta_denoiser(name)
    assert sum(p.numel() for p in den.parameters()) == pytest.approx(published, rel=0.01)
    assert sum(isinstance(m, QUANTIZABLE) for m in den.modules()) == layers


def test_sd35_medium_and_a_meta_inventory_of_a_family():
    """SD3.5 Medium: 24 MMDiT-X blocks of width 1536, the first 13 with a second (image) attention: 2.24 B
    transformer parameters. Sana's meta inventory: every layer runs (MACs), the groups are MixDQ's."""
    from mpsearch.model import meta_denoiser

    medium = meta_denoiser("sd3.5-medium")
    assert sum(p.numel() for p in medium.parameters()) == 2_243_171_520
    assert sum(n.endswith(".attn2.to_q") for n, _ in medium.named_modules()) == 13
    inv = inventory("sana-1600m")
    assert inv.total_params == 1_604_462_752 and len(inv) == 227 and not inv.excluded
    assert all(l.macs > 0 for l in inv) and inv.resolution == 1024 and inv.text_len == 300
    assert {l.group for l in inv if ".attn2." in l.name} == {"content"}
