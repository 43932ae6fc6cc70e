"""Train the bundled demo models from scratch on CPU: the UNet as a StableDiffusionPipeline, the DiT as a
StableDiffusion3Pipeline.

    python -m mpsearch.zoo.train --out mpsearch/zoo/demo            # ~35 min on 2 cores
    python -m mpsearch.zoo.train --smoke                            # a few steps of each stage, temp dir
    nice -n 5 python -m mpsearch.zoo.train --arch dit --threads 2 --minutes 55 --out mpsearch/zoo/demo-dit

`--arch dit` reuses the same scenes, captions, word-level tokenizer, learning-rate schedule, EMA, caption
dropout, logging and time cap, and the UNet demo's VAE (frozen; its latents 4x8x8 suit patch size 2), and
trains an SD3 MMDiT (`SD3Transformer2DModel`: joint attention, qk RMS-norm, adaLN) with its three toy text
encoders by rectified flow (SD3's logit-normal noise levels, velocity target); see `train_dit`.

Stages: (1) a small AutoencoderKL on the scene images (posterior mean + 5% latent noise, L1 + L2);
(2) the scenes encoded to latents once; (3) CLIPTextModel + UNet2DConditionModel trained jointly with
epsilon prediction, min-SNR weighting, 10% caption dropout (for classifier-free guidance) and EMA.
VAE and UNet weights are stored as fp16 safetensors (half the bytes); loading casts them to the dtype
asked for (diffusers loads float32 by default).

The schedule is fixed in steps, so a run is reproducible for a seed. `--minutes` is a safety cap on the
wall time of the whole run: when the machine is slower than expected, the learning-rate schedule follows
elapsed time instead of steps and the run still ends (EMA weights) within the cap; the log says so.
On a shared 2-core machine the committed weights came from a run where the cap bound: VAE 1,500 steps in
5.5 min, then 2,690 UNet steps (batch 64, ~1.2-1.5 steps/s) in the remaining 37 min; an idle machine
does ~2.4 steps/s and finishes all steps within the cap.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spin-waiting ruins shared CPUs

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mpsearch.zoo import DIT_CLIP_TOKENS, DIT_T5_TOKENS, scenes

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    mid_block_add_attention=False,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=16,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
    projection_dim=64,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
    norm_num_groups=32,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,  # unused with trailing spacing; 1 silences a diffusers deprecation warning
    timestep_spacing="trailing",
)
MAX_TOKENS = 16
# The DiT (`--arch dit`): an SD3 MMDiT on the same latents (the demo VAE's 4x8x8, so 4x4 patches of 2),
# SD3's three text encoders at toy size (two CLIPs and a T5 encoder, all trained here with a word-level
# vocabulary) and flow matching. The pipeline pads T5's tokens to `max_sequence_length` (default 256): the
# model is trained, and sampled by mpsearch, with `max_sequence_length=DIT_T5_TOKENS`.
DIT_TEXT_CONFIG = dict(TEXT_CONFIG)  # CLIPTextModelWithProjection; SD3 reads the penultimate layer
DIT_TEXT2_CONFIG = dict(TEXT_CONFIG, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, projection_dim=32)  # fmt: skip
DIT_CONFIG = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=96,  # T5's width; the two CLIPs' hidden states (64 + 32) are padded to it
    caption_projection_dim=128,  # = heads x head dim
    pooled_projection_dim=64 + 32,  # the two CLIPs' projections, concatenated
    pos_embed_max_size=8,
    qk_norm="rms_norm",
)
DIT_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)
DIT_T5_CONFIG = dict(d_model=96, d_kv=24, num_heads=4, d_ff=192, num_layers=2, relative_attention_num_buckets=8,
                     relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
DIT_OVERRIDES = dict(unet_lr=5e-4, warmup=200, unet_steps=6000)  # Recipe fields the DiT sets otherwise
SPECIAL = ("<|startoftext|>", "<|endoftext|>")


@dataclass
class Recipe:
    seed: int = 0
    renders_per_combo: int = 400
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_latent_noise: float = 0.05
    unet_steps: int = 4200
    unet_batch: int = 64
    unet_lr: float = 6e-4
    weight_decay: float = 0.01
    warmup: int = 100
    final_lr_frac: float = 0.1
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    minutes: float = 43.0  # cap on the whole run's wall time
    vae_minutes: float = 5.5  # cap on the VAE stage alone
    checkpoint_every: int = 600


# ---- tokenizer -------------------------------------------------------------------------------------


def _vocabulary_words() -> list[str]:
    words = {"a", "at", "the", "in"} | set(scenes.SHAPES) | set(scenes.COLORS)
    for p in scenes.POSITIONS:
        words |= set(p.split())
    return sorted(words)


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(pieces) > 1:
        rank, i = min((ranks.get((pieces[i], pieces[i + 1]), math.inf), i) for i in range(len(pieces) - 1))
        if rank == math.inf:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A word-level CLIP BPE vocabulary: each caption word is one token.

    transformers 5 looks up every character and every intermediate merge piece in the vocab, so they
    are all listed; merges are added word by word so that each word merges down to a single piece.
    """
    words = _vocabulary_words()
    chars = sorted({c for w in words for c in w})
    vocab = list(SPECIAL) + chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        pieces = _bpe(list(w[:-1]) + [w[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in vocab:
                vocab.append(pair[0] + pair[1])
            pieces = _bpe(pieces, ranks)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, indent=0))
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_file, merges_file


def build_tokenizer(folder: Path, max_tokens: int = MAX_TOKENS):
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_tokenizer_files(folder)
    tok = CLIPTokenizer(
        str(vocab_file),
        str(merges_file),
        bos_token=SPECIAL[0],
        eos_token=SPECIAL[1],
        unk_token=SPECIAL[1],
        pad_token=SPECIAL[1],
        model_max_length=max_tokens,
    )
    for w in _vocabulary_words():
        ids = tok(w).input_ids
        assert len(ids) == 3, f"word {w!r} is not a single token: {tok.convert_ids_to_tokens(ids)}"
    return tok


# ---- models ----------------------------------------------------------------------------------------


def build_models(vocab_size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(**VAE_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return vae, text_encoder, unet


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- data ------------------------------------------------------------------------------------------


def render_dataset(recipe: Recipe) -> tuple[torch.Tensor, list[str]]:
    """Images in [-1, 1], (N, 3, 32, 32) float32, and their captions; training combinations only."""
    rng = np.random.default_rng(recipe.seed)
    imgs, caps = [], []
    for combo in scenes.train_combinations():
        cap = scenes.caption(*combo)
        for _ in range(recipe.renders_per_combo):
            imgs.append(scenes.render(*combo, rng))
            caps.append(cap)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, caps


def _lr_factor(progress: float, step: int, recipe: Recipe) -> float:
    warm = min(1.0, (step + 1) / recipe.warmup)
    cos = recipe.final_lr_frac + (1 - recipe.final_lr_frac) * 0.5 * (
        1 + math.cos(math.pi * min(progress, 1.0))
    )
    return warm * cos


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- stage 1: VAE ----------------------------------------------------------------------------------


def train_vae(vae, images: torch.Tensor, recipe: Recipe, deadline: float) -> None:
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    start = time.time()
    vae.train()
    for step in range(recipe.vae_steps):
        progress = max(step / recipe.vae_steps, (time.time() - start) / max(deadline - start, 1e-9))
        if progress >= 1.0:
            _log(f"vae: time cap reached at step {step}/{recipe.vae_steps}")
            break
        for g in opt.param_groups:
            g["lr"] = recipe.vae_lr * _lr_factor(progress, step, recipe)
        idx = torch.randint(0, len(images), (recipe.vae_batch,), generator=gen)
        x = images[idx]
        z = vae.encode(x).latent_dist.mean
        z = z + recipe.vae_latent_noise * torch.randn(z.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == recipe.vae_steps - 1:
            _log(f"vae step {step} loss {loss.item():.4f} ({(step + 1) / (time.time() - start):.2f} it/s)")
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(images[i : i + 512]).latent_dist.mean for i in range(0, len(images), 512)])


# ---- stage 2: text encoder + UNet ------------------------------------------------------------------


class _EMA:
    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and EMA weights (call twice to restore)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def _train_loop(modules, recipe, deadline, loss_fn, on_checkpoint=None, name="unet") -> int:
    """The denoising stage shared by both architectures: AdamW with warm-up and cosine (following elapsed
    time when the cap binds), grad clip 1.0, EMA; `loss_fn(step)` draws a batch and returns its loss.
    Leaves the EMA weights in `modules`; returns the last step run."""
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=recipe.weight_decay)
    ema = _EMA(modules, recipe.ema_decay)
    for m in modules:
        m.train()
    start = time.time()
    step = 0
    for step in range(recipe.unet_steps):
        progress = max(step / recipe.unet_steps, (time.time() - start) / max(deadline - start, 1e-9))
        if progress >= 1.0:
            _log(f"{name}: time cap reached at step {step}/{recipe.unet_steps}: schedule followed time")
            break
        for g in opt.param_groups:
            g["lr"] = recipe.unet_lr * _lr_factor(progress, step, recipe)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        if step % 100 == 0 or (step < 200 and step % 20 == 0):
            _log(
                f"{name} step {step} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({(step + 1) / (time.time() - start):.2f} it/s)"
            )
        if on_checkpoint and step > 0 and step % recipe.checkpoint_every == 0:
            ema.swap()
            on_checkpoint(step)
            ema.swap()
    ema.swap()  # leave the EMA weights in the modules
    for m in modules:
        m.eval()
    return step


def train_denoiser(unet, text_encoder, latents, ids, empty_ids, recipe, deadline, on_checkpoint=None):
    """UNet + text encoder: epsilon prediction on DDPM noise levels, min-SNR weighting, caption dropout."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    sched = DDPMScheduler(**{k: SCHEDULER_CONFIG[k] for k in keys})
    alphas = sched.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(recipe.seed + 2)

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(latents), (recipe.unet_batch,), generator=gen)
        z0 = latents[idx]
        tok = ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < recipe.caption_dropout
        tok[drop] = empty_ids
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        cond = text_encoder(tok)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        w = torch.clamp(snr[t], max=recipe.min_snr_gamma) / snr[t]  # min-SNR for epsilon prediction
        return (w * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()

    return _train_loop([unet, text_encoder], recipe, deadline, loss_fn, on_checkpoint)


# ---- saving ----------------------------------------------------------------------------------------


def save_pipeline(out: Path, vae, text_encoder, unet, tokenizer, dtype=torch.float16) -> None:
    """Save as a standard StableDiffusionPipeline (safetensors, weights stored in `dtype`)."""
    import copy

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # The text encoder (0.6 MB) stays float32: transformers loads a checkpoint in its stored dtype by
    # default, and a plain `from_pretrained(path)` should give one consistent dtype.
    mods = [copy.deepcopy(vae).to(dtype), copy.deepcopy(text_encoder).float(), copy.deepcopy(unet).to(dtype)]
    pipe = StableDiffusionPipeline(
        vae=mods[0],
        text_encoder=mods[1],
        tokenizer=tokenizer,
        unet=mods[2],
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


# ---- the DiT: SD3 transformer, two CLIPs, flow matching ---------------------------------------------


def build_dit_models(vocab_size: int):
    """([text_encoder, text_encoder_2, text_encoder_3], transformer), freshly initialised (the caller
    seeds); `vocab_size`: (CLIP's, T5's)."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    te1 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=vocab_size[0], **DIT_TEXT_CONFIG))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=vocab_size[0], **DIT_TEXT2_CONFIG))
    te3 = T5EncoderModel(T5Config(vocab_size=vocab_size[1], **DIT_T5_CONFIG))
    return [te1, te2, te3], SD3Transformer2DModel(**DIT_CONFIG)


def build_t5_tokenizer():
    """A word-level T5 tokenizer (a Unigram vocabulary of whole words, each '▁word'): <pad> 0, </s> 1."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in _vocabulary_words()]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=DIT_T5_TOKENS)


def load_demo_vae():
    """The UNet demo's VAE (`zoo/demo/vae`), float32, frozen: the DiT reuses its 4x8x8 latents."""
    from diffusers import AutoencoderKL

    from mpsearch.zoo import DEMO_PATH

    vae = AutoencoderKL.from_pretrained(DEMO_PATH / "vae", torch_dtype=torch.float32, local_files_only=True)
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae.eval()


def sd3_conditioning(encoders, ids: torch.Tensor, t5_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder_hidden_states, pooled_projections) as `StableDiffusion3Pipeline.encode_prompt` builds them:
    the CLIPs' penultimate hidden states concatenated along channels and padded to T5's width, then T5's
    tokens; pooled = both CLIP projections concatenated. `ids`: CLIP token ids; `t5_ids`: T5's."""
    te1, te2, te3 = encoders
    o1 = te1(ids, output_hidden_states=True)
    o2 = te2(ids, output_hidden_states=True)
    h = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
    h = F.pad(h, (0, DIT_CONFIG["joint_attention_dim"] - h.shape[-1]))
    h = torch.cat([h, te3(t5_ids)[0]], dim=1)
    return h, torch.cat([o1.text_embeds, o2.text_embeds], dim=-1)


def train_dit(transformer, encoders, latents, ids, empty_ids, recipe, deadline, on_checkpoint=None) -> int:
    """Rectified flow as SD3 trains it: x_t = (1 - s) x0 + s noise with s logit-normal(0, 1), the
    transformer predicts the velocity noise - x0 at timestep 1000 s; 10% caption dropout for CFG.
    `ids`, `empty_ids`: (CLIP ids, T5 ids) of the captions and of the empty prompt."""
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    scale = DIT_SCHEDULER_CONFIG["num_train_timesteps"]

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(latents), (recipe.unet_batch,), generator=gen)
        z0 = latents[idx]
        tok, tok5 = ids[0][idx].clone(), ids[1][idx].clone()
        drop = torch.rand(len(idx), generator=gen) < recipe.caption_dropout
        tok[drop], tok5[drop] = empty_ids
        noise = torch.randn(z0.shape, generator=gen)
        s = torch.sigmoid(torch.randn(len(idx), generator=gen))
        zt = (1 - s)[:, None, None, None] * z0 + s[:, None, None, None] * noise
        cond, pooled = sd3_conditioning(encoders, tok, tok5)
        pred = transformer(
            hidden_states=zt, encoder_hidden_states=cond, pooled_projections=pooled, timestep=s * scale
        ).sample
        return F.mse_loss(pred, noise - z0)

    return _train_loop([transformer, *encoders], recipe, deadline, loss_fn, on_checkpoint, name="dit")


def save_dit_pipeline(out: Path, vae, encoders, transformer, tokenizers, dtype=torch.float16) -> None:
    """Save as a standard StableDiffusion3Pipeline (safetensors; VAE and transformer in `dtype`, the
    text encoders float32 as in `save_pipeline`). `tokenizers`: (CLIP's, T5's)."""
    import copy

    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    te1, te2, te3 = (copy.deepcopy(e).float() for e in encoders)
    pipe = StableDiffusion3Pipeline(
        transformer=copy.deepcopy(transformer).to(dtype),
        scheduler=FlowMatchEulerDiscreteScheduler(**DIT_SCHEDULER_CONFIG),
        vae=copy.deepcopy(vae).to(dtype),
        text_encoder=te1,
        tokenizer=tokenizers[0],
        text_encoder_2=te2,
        tokenizer_2=tokenizers[0],
        text_encoder_3=te3,
        tokenizer_3=tokenizers[1],
    )
    pipe.save_pretrained(out, safe_serialization=True)


def main_dit(args, recipe: Recipe, out: Path) -> Path:
    """`--arch dit`: the demo's data and VAE (no VAE stage), then the SD3 transformer and its encoders."""
    t0 = time.time()
    deadline = t0 + recipe.minutes * 60
    _log(f"arch dit; recipe {asdict(recipe)}; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizers = (build_tokenizer(Path(tmp), DIT_CLIP_TOKENS), build_t5_tokenizer())
    vae = load_demo_vae()
    encoders, transformer = build_dit_models((len(tokenizers[0]), len(tokenizers[1])))
    _log(f"params: text {[_n_params(e) for e in encoders]} transformer {_n_params(transformer):,}")
    images, caps = render_dataset(recipe)
    raw = encode_latents(vae, images)
    shift, scale = float(raw.mean()), float(1.0 / raw.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)  # SD3 decodes z / scale + shift
    latents = (raw - shift) * scale
    _log(f"latents {tuple(latents.shape)} of {len(scenes.train_combinations())} combinations; "
         f"shift {shift:.4f} scale {scale:.4f}")  # fmt: skip
    (ids, empty), (ids5, empty5) = (caption_ids(t, caps, t.model_max_length) for t in tokenizers)

    def checkpoint(step: int) -> None:
        if args.checkpoints:
            save_dit_pipeline(args.checkpoints / "latest", vae, encoders, transformer, tokenizers)
            (args.checkpoints / "latest" / "step.txt").write_text(f"{step}\n")
            _log(f"checkpoint at step {step} -> {args.checkpoints / 'latest'}")

    steps = train_dit(transformer, encoders, latents, (ids, ids5), (empty, empty5), recipe, deadline, checkpoint)
    save_dit_pipeline(out, vae, encoders, transformer, tokenizers)
    _log(f"saved pipeline to {out} after {steps + 1} DiT steps; total {(time.time() - t0) / 60:.1f} min")
    return out


def caption_ids(tokenizer, caps: list[str], length: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (N, length) of `caps`, and those of the empty prompt (caption dropout / CFG), padded and
    truncated as the pipelines tokenize."""
    uniq = sorted(set(caps))
    kw = dict(padding="max_length", max_length=length, truncation=True)
    tok_of = {c: tokenizer(c, **kw).input_ids for c in uniq}
    ids = torch.tensor([tok_of[c] for c in caps])
    empty_ids = torch.tensor(tokenizer("", **kw).input_ids)
    return ids, empty_ids


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: temp dir with --smoke)")
    ap.add_argument("--minutes", type=float, default=Recipe.minutes, help="wall-time cap, whole run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a few steps of each stage, into a temp dir")
    ap.add_argument("--checkpoints", type=Path, default=None, help="folder for intermediate pipelines")
    ap.add_argument("--arch", choices=("unet", "dit"), default="unet",
                    help="unet: the SD demo (mpsearch/zoo/demo); dit: the SD3 MMDiT (mpsearch/zoo/demo-dit)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--steps", type=int, default=None, help="denoiser steps (default: the recipe's)")
    args = ap.parse_args(argv)  # fmt: skip

    torch.set_flush_denormal(True)  # denormals made one run ~40x slower
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(seed=args.seed, minutes=args.minutes)
    if args.smoke:
        recipe = Recipe(
            seed=args.seed, renders_per_combo=4, vae_steps=3, vae_batch=8, unet_steps=3, unet_batch=8,
            warmup=1, minutes=args.minutes, checkpoint_every=2,
        )  # fmt: skip
    elif args.arch == "dit":
        recipe = replace(recipe, **DIT_OVERRIDES)
    if args.steps:
        recipe = replace(recipe, unet_steps=args.steps)
    out = args.out or Path(tempfile.mkdtemp(prefix="mpsearch-demo-"))
    torch.manual_seed(recipe.seed)
    if args.arch == "dit":
        return main_dit(args, recipe, out)
    t0 = time.time()
    deadline = t0 + recipe.minutes * 60
    _log(f"recipe {asdict(recipe)}; torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    vae, text_encoder, unet = build_models(len(tokenizer))
    _log(f"params: vae {_n_params(vae):,} text {_n_params(text_encoder):,} unet {_n_params(unet):,}")

    images, caps = render_dataset(recipe)
    _log(f"rendered {len(images)} images of {len(scenes.train_combinations())} combinations")
    train_vae(vae, images, recipe, min(deadline, time.time() + recipe.vae_minutes * 60))
    for p in vae.parameters():
        p.requires_grad_(False)
    latents = encode_latents(vae, images)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    with torch.no_grad():
        rec = vae.decode(latents[:256] / scale).sample
    _log(
        f"latents {tuple(latents.shape)}, scaling_factor {scale:.4f}, recon mse {F.mse_loss(rec, images[:256]):.5f}"
    )

    ids, empty_ids = caption_ids(tokenizer, caps)

    def checkpoint(step: int) -> None:
        if args.checkpoints:
            save_pipeline(args.checkpoints / "latest", vae, text_encoder, unet, tokenizer)
            (args.checkpoints / "latest" / "step.txt").write_text(f"{step}\n")
            _log(f"checkpoint at step {step} -> {args.checkpoints / 'latest'}")

    steps = train_denoiser(unet, text_encoder, latents, ids, empty_ids, recipe, deadline, checkpoint)
    save_pipeline(out, vae, text_encoder, unet, tokenizer)
    _log(f"saved pipeline to {out} after {steps + 1} denoiser steps; total {(time.time() - t0) / 60:.1f} min")
    return out


if __name__ == "__main__":
    main()
