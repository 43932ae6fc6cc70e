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


def test_dit_smoke_run_saves_a_standard_sd3_pipeline(tmp_path):
    """`--arch dit`: a plain `DiffusionPipeline.from_pretrained(path)` gives an SD3 pipeline whose own
    prompt encoding is the conditioning the recipe trained on."""
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

    out = train.main(["--smoke", "--arch", "dit", "--out", str(tmp_path / "dit")])
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert pipe.transformer.config.qk_norm == "rms_norm" and pipe.transformer.config.patch_size == 2
    caps = ["a red circle at the top left", ""]
    emb, _, pooled, _ = pipe.encode_prompt(caps, caps, caps, do_classifier_free_guidance=False,
                                           max_sequence_length=train.DIT_T5_TOKENS)  # fmt: skip
    ids = train.caption_ids(pipe.tokenizer, caps, pipe.tokenizer.model_max_length)[0]
    ids5 = train.caption_ids(pipe.tokenizer_3, caps, train.DIT_T5_TOKENS)[0]
    with torch.no_grad():
        encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
        h, p = train.sd3_conditioning(encoders, ids, ids5)
    torch.testing.assert_close(h, emb)
    torch.testing.assert_close(p, pooled)
    img = pipe("a red circle", num_inference_steps=2, max_sequence_length=train.DIT_T5_TOKENS, output_type="np")
    assert img.images[0].shape == (32, 32, 3)
