"""The demo's tiny text-to-image prior: a stand-in for Stable Diffusion that has seen the demo scenes.

Stable Diffusion 2.1-base cannot be downloaded here, so the demo ships a prior of its own
that plays SD's part in miniature. It is the tiny SD-format folder ``textualdeg make-tiny``
writes (the same UNet, VAE, text encoder and tokenizer classes and configs) with its UNet
and VAE *trained* on the 32 clean demo scenes (``textualdeg.demo.scenes``): 24 from the
training photographs and 8 from the test photographs, as SD has seen photographs of
rockets and cats. It knows nothing else. Each scene was taught as the prompt
"a photo of a S" with S replaced by 20 learned word embeddings (the scene's *words*), the
interface stages 1-3 use, so the frozen prior generates a scene when the text encoder
receives that scene's words.

Training (``train_prior``), from a fixed seed, on the CPU:

1. the VAE on the scenes (flips as augmentation), MSE + a small KL term; its
   ``scaling_factor`` is set to 1 / std of the scene latents, as SD's 0.18215 was;
2. the UNet (epsilon prediction, SD 2.1-base's noise schedule) on the scene latents
   conditioned on the text encoder's encoding of "a photo of a S" with the scene's
   words spliced in, the words learned with it; 10% of the conditions are the empty
   prompt, so classifier-free guidance works. The text encoder stays at its random
   initialisation (frozen).

The weights ship as one safetensors file of float16 tensors (``assets/tiny_prior.safetensors``,
under 5 MB): the UNet, the VAE, the text encoder's layers and the rows of its token table the
prompts use, and the scene words. ``install_prior`` writes a complete SD-format folder from
it (``make_tiny`` then the trained weights), which ``load_stable_diffusion`` loads like the
real one. Reproduce the file with one command (fixed seed)::

    python -m textualdeg.demo.prior --output textualdeg/demo/assets/tiny_prior.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from textualdeg.log import get_logger, setup_logging

logger = get_logger("textualdeg.demo.prior")  # also under `python -m`

PRIOR_FILE = Path(__file__).resolve().parent / "assets" / "tiny_prior.safetensors"
TEMPLATE = "a photo of a {}"
PLACEHOLDER = "S"
NUM_WORDS = 20
_FORMAT = "textualdeg-tiny-prior-1"
_TOKEN_TABLE = "token_embedding.weight"  # the text encoder's (vocabulary, D) table


@dataclass(frozen=True)
class PriorConfig:
    """How the tiny prior is trained (the defaults made the shipped file)."""

    seed: int = 0
    vae_steps: int = 1500
    vae_lr: float = 2e-3
    vae_batch: int = 8
    kl_weight: float = 1e-6
    unet_steps: int = 4000
    unet_lr: float = 1e-3
    words_lr: float = 1e-2
    unet_batch: int = 32
    uncond_probability: float = 0.1


def _scene_tensor(scenes: dict[str, np.ndarray]) -> torch.Tensor:
    """(N, 3, S, S) float32 in [-1, 1] from the scene dict."""
    images = np.stack(list(scenes.values()))  # (N, S, S, 3)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() * 2.0 - 1.0


def _cosine_lr(optimizer: torch.optim.Optimizer, base: list[float], step: int, total: int) -> None:
    factor = 0.5 * (1.0 + np.cos(np.pi * step / total))
    for group, lr in zip(optimizer.param_groups, base):
        group["lr"] = lr * max(factor, 0.02)


def train_vae(vae, images: torch.Tensor, config: PriorConfig, generator: torch.Generator) -> list[float]:
    """Train the VAE to reconstruct ``images`` ((N, 3, S, S) in [-1, 1]); returns the loss per step."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    losses = []
    vae.train()
    for step in range(config.vae_steps):
        _cosine_lr(optimizer, [config.vae_lr], step, config.vae_steps)
        index = torch.randint(0, images.shape[0], (config.vae_batch,), generator=generator)
        batch = images[index]  # (B, 3, S, S)
        flip = torch.rand(config.vae_batch, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(latents).sample  # (B, 3, S, S)
        loss = F.mse_loss(recon, batch) + config.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 500 == 0 or step == config.vae_steps - 1:
            logger.info("vae step %d/%d loss %.5f", step + 1, config.vae_steps, loss.item())
    vae.eval()
    return losses


@torch.no_grad()
def scene_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of ``images``, unscaled: (N, 4, S/8, S/8)."""
    return vae.encode(images).latent_dist.mean


def train_unet(sd, latents: torch.Tensor, config: PriorConfig, generator: torch.Generator) -> tuple[torch.Tensor, list[float]]:
    """Train the UNet and one set of words per scene; returns the words (N, K, D) and the losses.

    ``latents`` are the scaled scene latents (N, 4, h, w).
    """
    from diffusers import DDPMScheduler

    from textualdeg.guidance.injection import build_injection_prompt, encode_injected, encode_text, tokenize

    unet, text_encoder = sd.unet, sd.text_encoder
    scheduler = DDPMScheduler.from_config(sd.scheduler.config)
    prompt = build_injection_prompt(sd.tokenizer, TEMPLATE, PLACEHOLDER)
    token_std = float(text_encoder.get_input_embeddings().weight.detach().std())
    words = torch.nn.Parameter(torch.randn(latents.shape[0], NUM_WORDS, text_encoder.config.hidden_size,
                                           generator=generator) * token_std)  # (N, K, D)
    with torch.no_grad():
        uncond = encode_text(text_encoder, tokenize(sd.tokenizer, [""])).last_hidden_state  # (1, 77, D)
    optimizer = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": config.unet_lr, "weight_decay": 1e-4},
        {"params": [words], "lr": config.words_lr, "weight_decay": 0.0},
    ])
    base = [config.unet_lr, config.words_lr]
    unet.train()
    losses = []
    batch = config.unet_batch
    for step in range(config.unet_steps):
        _cosine_lr(optimizer, base, step, config.unet_steps)
        index = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        clean = latents[index]  # (B, 4, h, w)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        ids = prompt.input_ids.unsqueeze(0).expand(batch, -1)  # (B, 77)
        context = encode_injected(text_encoder, ids, prompt.placeholder_index, words[index]).last_hidden_state
        drop = torch.rand(batch, generator=generator) < config.uncond_probability
        context = torch.where(drop[:, None, None], uncond.expand(batch, -1, -1), context)  # (B, 77, D)
        prediction = unet(noisy, timesteps, encoder_hidden_states=context).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 500 == 0 or step == config.unet_steps - 1:
            logger.info("unet step %d/%d loss %.5f", step + 1, config.unet_steps, np.mean(losses[-100:]))
    unet.eval()
    return words.detach(), losses


def _prompt_token_ids(tokenizer) -> list[int]:
    """Every token id of the template prompt and of the empty prompt (the rows the demo needs)."""
    from textualdeg.guidance.injection import tokenize

    ids = torch.cat([tokenize(tokenizer, [TEMPLATE.format(PLACEHOLDER)]), tokenize(tokenizer, [""])], 1)
    return sorted(set(ids.flatten().tolist()))


def train_prior(models_dir: Path, scenes: dict[str, np.ndarray], config: PriorConfig = PriorConfig()) -> dict:
    """Write tiny models to ``models_dir`` and train the SD folder's VAE and UNet on ``scenes``.

    Returns a dict with the scene names, the learned words (N, K, D) and the loss curves.
    """
    from textualdeg.guidance.models import load_stable_diffusion
    from textualdeg.guidance.tiny import make_tiny

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    paths = make_tiny(models_dir, seed=config.seed)
    sd = load_stable_diffusion(paths["stable_diffusion"])
    sd.text_encoder.requires_grad_(False)
    images = _scene_tensor(scenes)  # (N, 3, S, S)
    vae_losses = train_vae(sd.vae, images, config, generator)
    raw = scene_latents(sd.vae, images)  # (N, 4, h, w)
    scaling = float(1.0 / raw.std())
    sd.vae.register_to_config(scaling_factor=scaling)
    words, unet_losses = train_unet(sd, raw * scaling, config, generator)
    sd.vae.save_pretrained(paths["stable_diffusion"] / "vae")
    sd.unet.save_pretrained(paths["stable_diffusion"] / "unet")
    return {"scenes": list(scenes), "words": words, "vae_losses": vae_losses, "unet_losses": unet_losses}


def pack_prior(models_dir: Path, scene_names: Sequence[str], words: torch.Tensor, file: Path, config: PriorConfig) -> Path:
    """Write the trained parts of ``models_dir/stable-diffusion`` into one float16 safetensors file."""
    from safetensors.torch import save_file

    from textualdeg.guidance.models import load_stable_diffusion

    sd = load_stable_diffusion(Path(models_dir) / "stable-diffusion")
    token_ids = _prompt_token_ids(sd.tokenizer)
    tensors = {f"unet.{k}": v for k, v in sd.unet.state_dict().items()}
    tensors.update({f"vae.{k}": v for k, v in sd.vae.state_dict().items()})
    for key, value in sd.text_encoder.state_dict().items():
        if key.endswith(_TOKEN_TABLE):
            tensors["text_encoder_token_rows"] = value[token_ids]  # (T, D)
        elif not key.endswith("position_ids"):
            tensors[f"text_encoder.{key}"] = value
    tensors["scene_words"] = words  # (N, K, D)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}
    metadata = {
        "format": _FORMAT,
        "scenes": json.dumps(list(scene_names)),
        "token_ids": json.dumps(token_ids),
        "scaling_factor": repr(float(sd.vae.config.scaling_factor)),
        "template": TEMPLATE,
        "placeholder": PLACEHOLDER,
        "config": json.dumps(asdict(config)),
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(file)
    return file


@dataclass(frozen=True)
class InstalledPrior:
    """Where ``install_prior`` wrote the models, and the scenes the prior knows."""

    paths: dict
    scenes: list[str]
    words: torch.Tensor  # (N, K, D) float32


def install_prior(models_dir: Path, file: Path = PRIOR_FILE) -> InstalledPrior:
    """Write tiny models (``make_tiny``) and replace the SD folder's weights by the trained prior's.

    Raises:
        FileNotFoundError / ValueError: a missing file, or one that is not a tiny-prior file.
    """
    from safetensors import safe_open
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from textualdeg.guidance.tiny import make_tiny

    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"tiny prior file not found: {file} (make it: python -m textualdeg.demo.prior)")
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{file} is not a tiny-prior file (format {metadata.get('format')!r}, expected {_FORMAT!r})")
        tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    paths = make_tiny(models_dir, seed=json.loads(metadata["config"])["seed"])
    folder = paths["stable_diffusion"]

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    unet.load_state_dict(part("unet."), strict=True)
    unet.save_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    vae.register_to_config(scaling_factor=float(metadata["scaling_factor"]))
    vae.load_state_dict(part("vae."), strict=True)
    vae.save_pretrained(folder / "vae")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    state = text_encoder.state_dict()
    table_key = next(key for key in state if key.endswith(_TOKEN_TABLE))
    table = state[table_key].clone()
    table[json.loads(metadata["token_ids"])] = tensors["text_encoder_token_rows"]
    layers = part("text_encoder.")
    layers[table_key] = table
    missing, unexpected = text_encoder.load_state_dict(layers, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ValueError(f"{file}: text encoder keys do not match (missing {missing}, unexpected {unexpected})")
    text_encoder.save_pretrained(folder / "text_encoder")
    return InstalledPrior(paths=paths, scenes=json.loads(metadata["scenes"]), words=tensors["scene_words"])


def _psnr(images: torch.Tensor, scenes: torch.Tensor) -> np.ndarray:
    """Per-image PSNR (dB, ``textualdeg`` protocol) of (B, 3, H, W) [0, 1] images against the scenes."""
    from textualdeg.metrics import psnr_torch

    return psnr_torch(images.clamp(0, 1), scenes, "textualdeg").numpy()


@torch.no_grad()
def prior_fidelity(prior: InstalledPrior, scenes: dict[str, np.ndarray], *, steps: int = 20,
                   guidance_scale: float = 5.0, seed: int = 42) -> dict[str, np.ndarray]:
    """How well the installed prior knows ``scenes``: per-scene PSNR (dB) against the scene of

    * ``vae``: the VAE reconstruction;
    * ``scene_words``: the image generated from the scene's own words (stage 3's sampler:
      DDIM, classifier-free guidance against the empty prompt);
    * ``random_words``: the image generated from random words of the same scale.
    """
    from textualdeg.guidance.mappers import ImageToTextMapper
    from textualdeg.guidance.models import load_clip_vision, load_stable_diffusion
    from textualdeg.guidance.pipeline import GuidancePipeline, decode_latents, encode_latents

    sd = load_stable_diffusion(prior.paths["stable_diffusion"])
    clip = load_clip_vision(prior.paths["clip_vision"])
    pipeline = GuidancePipeline(sd, clip, ImageToTextMapper.for_models(clip, sd.text_encoder, NUM_WORDS, 8),
                                template=TEMPLATE, placeholder=PLACEHOLDER)
    names = list(scenes)
    index = [prior.scenes.index(name) for name in names]
    images = (_scene_tensor(scenes) + 1) / 2  # (N, 3, S, S) in [0, 1]
    words = prior.words[index]  # (N, K, D)
    generator = torch.Generator().manual_seed(seed)
    random_words = torch.randn(words.shape, generator=generator) * words.std()
    side = images.shape[-1]
    seeds = [seed + i for i in range(len(names))]
    kwargs = {"num_inference_steps": steps, "guidance_scale": guidance_scale, "resolution": side}
    recon = decode_latents(sd.vae, encode_latents(sd.vae, images, generator=generator), sd.latent_scaling)
    return {
        "vae": _psnr(recon, images),
        "scene_words": _psnr(pipeline.generate_from_words(words, seeds, **kwargs), images),
        "random_words": _psnr(pipeline.generate_from_words(random_words, seeds, **kwargs), images),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="train the demo's tiny text-to-image prior and pack it")
    parser.add_argument("--output", type=Path, default=PRIOR_FILE, help=f"packed file (default {PRIOR_FILE})")
    parser.add_argument("--work", type=Path, default=Path("prior_work"), help="folder for the full model folders")
    parser.add_argument("--vae-steps", type=int, default=PriorConfig.vae_steps,
                        help=f"VAE training steps (default {PriorConfig.vae_steps}, as the shipped file)")
    parser.add_argument("--unet-steps", type=int, default=PriorConfig.unet_steps,
                        help=f"UNet training steps (default {PriorConfig.unet_steps}, as the shipped file)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--fidelity", action="store_true",
                        help="train nothing: install --output (default: the shipped file) and print how well it knows the scenes")
    return parser.parse_args(argv)


def print_fidelity(file: Path, work: Path) -> None:
    """Install ``file`` under ``work`` and print the ``prior_fidelity`` table over all demo scenes."""
    from textualdeg.demo.scenes import demo_scenes

    fidelity = prior_fidelity(install_prior(work, file), demo_scenes())
    rows = [("VAE reconstruction", "vae"), ("the scene's own words", "scene_words"), ("random words", "random_words")]
    print("| generated from | mean PSNR | worst scene |\n|---|---:|---:|")
    for label, key in rows:
        print(f"| {label} | {fidelity[key].mean():.2f} | {fidelity[key].min():.2f} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Train the prior on the demo scenes (fixed seed) and write the packed file."""
    from textualdeg.demo.scenes import demo_scenes

    args = parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    if args.fidelity:
        print_fidelity(args.output, args.work)
        return 0
    config = PriorConfig(vae_steps=args.vae_steps, unet_steps=args.unet_steps)
    start = time.perf_counter()
    scenes = demo_scenes()
    result = train_prior(args.work, scenes, config)
    file = pack_prior(args.work, result["scenes"], result["words"], args.output, config)
    logger.info("wrote %s (%.2f MB) in %.0f s", file, file.stat().st_size / 2**20, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
