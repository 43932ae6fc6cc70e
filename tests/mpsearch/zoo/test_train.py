"""The training recipe runs end to end (a few steps per stage) and saves a loadable pipeline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from mpsearch.zoo import train


def test_tokenizer_has_one_token_per_word(tmp_path):
    tok = train.build_tokenizer(tmp_path)
    for cap in ("a yellow triangle at the top right", "a cyan circle in the center"):
        ids = tok(cap).input_ids
        assert len(ids) == len(cap.split()) + 2
        assert tok.decode(ids, skip_special_tokens=True) == cap


def test_smoke_run_saves_a_standard_pipeline(tmp_path):
    from diffusers import DiffusionPipeline

    out = train.main(["--smoke", "--out", str(tmp_path / "demo"), "--checkpoints", str(tmp_path / "ck")])
    assert (out / "model_index.json").exists() and (tmp_path / "ck" / "latest" / "model_index.json").exists()
    assert list(out.rglob("*.safetensors"))
    pipe = DiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red circle at the top left", num_inference_steps=2, output_type="np").images[0]
    assert img.shape == (32, 32, 3)
