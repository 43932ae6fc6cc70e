"""Train the bundled demo model from scratch on CPU and save it as a StableDiffusionPipeline.

    python -m mpsearch.zoo.train --out mpsearch/zoo/demo            # ~35 min on 2 cores
    python -m mpsearch.zoo.train --smoke                            # a few steps of each stage, temp dir

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mpsearch.zoo import scenes

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


def build_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_tokenizer_files(folder)
    tok = CLIPTokenizer(
        str(vocab_file),
        str(merges_file),
        bos_token=SPECIAL[0],
        eos_token=SPECIAL[1],
        unk_token=SPECIAL[1],
        pad_token=SPECIAL[1],
        model_max_length=MAX_TOKENS,
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


def train_denoiser(unet, text_encoder, latents, ids, empty_ids, recipe, deadline, on_checkpoint=None):
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
    sched = DDPMScheduler(**{k: SCHEDULER_CONFIG[k] for k in keys})
    alphas = sched.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=recipe.weight_decay)
    ema = _EMA([unet, text_encoder], recipe.ema_decay)
    unet.train()
    text_encoder.train()
    start = time.time()
    step = 0
    for step in range(recipe.unet_steps):
        progress = max(step / recipe.unet_steps, (time.time() - start) / max(deadline - start, 1e-9))
        if progress >= 1.0:
            _log(f"unet: time cap reached at step {step}/{recipe.unet_steps}: schedule followed time")
            break
        for g in opt.param_groups:
            g["lr"] = recipe.unet_lr * _lr_factor(progress, step, recipe)
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
        loss = (w * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        if step % 100 == 0:
            _log(
                f"unet step {step} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({(step + 1) / (time.time() - start):.2f} it/s)"
            )
        if on_checkpoint and step > 0 and step % recipe.checkpoint_every == 0:
            ema.swap()
            on_checkpoint(step)
            ema.swap()
    ema.swap()  # leave the EMA weights in the modules
    unet.eval()
    text_encoder.eval()
    return step


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


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: temp dir with --smoke)")
    ap.add_argument("--minutes", type=float, default=Recipe.minutes, help="wall-time cap, whole run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a few steps of each stage, into a temp dir")
    ap.add_argument("--checkpoints", type=Path, default=None, help="folder for intermediate pipelines")
    args = ap.parse_args(argv)

    torch.set_flush_denormal(True)  # denormals made one run ~40x slower
    recipe = Recipe(seed=args.seed, minutes=args.minutes)
    if args.smoke:
        recipe = Recipe(
            seed=args.seed, renders_per_combo=4, vae_steps=3, vae_batch=8, unet_steps=3, unet_batch=8,
            warmup=1, minutes=args.minutes, checkpoint_every=2,
        )  # fmt: skip
    out = args.out or Path(tempfile.mkdtemp(prefix="mpsearch-demo-"))
    torch.manual_seed(recipe.seed)
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

    uniq = sorted(set(caps))
    tok_of = {c: tokenizer(c, padding="max_length", max_length=MAX_TOKENS).input_ids for c in uniq}
    ids = torch.tensor([tok_of[c] for c in caps])
    empty_ids = torch.tensor(tokenizer("", padding="max_length", max_length=MAX_TOKENS).input_ids)

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
