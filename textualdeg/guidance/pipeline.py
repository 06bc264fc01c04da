"""Guidance-image generation: LQ image -> CLIP -> I2T -> TR -> injected prompt -> DDIM + CFG.

``GuidancePipeline`` is the stage-3 core: the image's CLIP tokens become
word embeddings (I2T mapper, then optionally the TR mapper), injected into
"a photo of a S"; DDIM sampling with classifier-free guidance against the empty prompt
runs the conditional and unconditional passes in one batched UNet call per step. Each
image draws its initial noise from its own ``torch.Generator`` (seed from its file name
via :func:`seed_from_name`), so its starting noise does not depend on the batch it is in
(its result does only up to float rounding: the kernels sum in a batch-shape-dependent order).
It also holds the VAE helpers the training loops share (:func:`encode_latents`,
:func:`decode_latents`).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPVisionModel

from textualdeg.guidance.injection import build_injection_prompt, encode_injected, encode_text, tokenize
from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper
from textualdeg.guidance.models import StableDiffusionModels, center_crop_square, clip_image_features
from textualdeg.log import get_logger

logger = get_logger(__name__)


def seed_from_name(stem: str, base_seed: int = 42) -> int:
    """A stable per-image seed from a file stem (SHA-256, same on every machine and run).

    Args:
        stem: the input file name without extension.
        base_seed: run-level seed mixed into the hash.

    Returns:
        An int in [0, 2**63).
    """
    digest = hashlib.sha256(f"{base_seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def encode_latents(
    vae: AutoencoderKL,
    images: torch.Tensor,
    scaling_factor: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Encode [0, 1] images to UNet latents (a sample of the posterior, times the scaling factor).

    Args:
        vae: the Stable Diffusion VAE.
        images: (B, 3, H, W) float RGB in [0, 1]; H, W multiples of 8.
        scaling_factor: latent scaling (``vae.config.scaling_factor``, 0.18215, by default).
        generator: optional generator for the posterior sample.

    Returns:
        (B, 4, H/8, W/8) latents in the VAE's dtype.
    """
    param = next(vae.parameters())
    scale = vae.config.scaling_factor if scaling_factor is None else scaling_factor
    pixels = images.to(device=param.device, dtype=param.dtype) * 2.0 - 1.0  # [0, 1] -> [-1, 1]
    return vae.encode(pixels).latent_dist.sample(generator) * scale


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, scaling_factor: float | None = None) -> torch.Tensor:
    """Decode UNet latents to [0, 1] float32 images.

    Args:
        vae: the Stable Diffusion VAE.
        latents: (B, 4, h, w) UNet latents.
        scaling_factor: latent scaling (``vae.config.scaling_factor`` by default).

    Returns:
        (B, 3, 8h, 8w) float32 RGB in [0, 1].
    """
    param = next(vae.parameters())
    scale = vae.config.scaling_factor if scaling_factor is None else scaling_factor
    pixels = vae.decode(latents.to(device=param.device, dtype=param.dtype) / scale).sample
    return (pixels.float() / 2 + 0.5).clamp(0.0, 1.0)  # [-1, 1] -> [0, 1]


def initial_latents(
    seeds: Sequence[int],
    shape: tuple[int, int, int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw each image's starting noise from its own CPU generator (float32), then move and cast.

    Args:
        seeds: one seed per image.
        shape: (C, h, w) of one latent.
        device: target device.
        dtype: target dtype.

    Returns:
        (len(seeds), C, h, w) standard normal noise, identical for a seed whatever the batch.
    """
    noise = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.cat(noise).to(device=device, dtype=dtype)  # (B, C, h, w)


class GuidancePipeline:
    """Generate guidance images from degraded images.

    The UNet should carry the trained global K/V processors
    (``processors.install_global_kv`` + ``load_global_kv``); they are then used for both
    guidance branches, as in the paper. Models keep the device and dtype they are given
    (cast them before, e.g. ``sd.to("cuda", torch.float16)``); the initial noise is always
    drawn in float32 on the CPU.

    Args:
        sd: the Stable Diffusion parts (``load_stable_diffusion``).
        image_encoder: the CLIP image encoder (``load_clip_vision``).
        i2t_mapper: the image-to-text mapper (output width = the text width).
        tr_mapper: the textual-restoration mapper, or None to inject the I2T words directly.
        template: prompt template ("a photo of a {}" or a prompt holding ``placeholder``).
        placeholder: the placeholder word.

    Raises:
        ValueError: a template without the placeholder (named), or mappers whose widths or
            word counts do not fit the models.
    """

    def __init__(
        self,
        sd: StableDiffusionModels,
        image_encoder: CLIPVisionModel,
        i2t_mapper: ImageToTextMapper,
        tr_mapper: TextRestorationMapper | None = None,
        template: str = "a photo of a {}",
        placeholder: str = "S",
    ):
        text_width = sd.text_encoder.config.hidden_size
        if i2t_mapper.input_dim != image_encoder.config.hidden_size or i2t_mapper.output_dim != text_width:
            raise ValueError(
                f"i2t_mapper maps {i2t_mapper.input_dim} -> {i2t_mapper.output_dim} but the models need "
                f"{image_encoder.config.hidden_size} -> {text_width}"
            )
        if tr_mapper is not None and (
            (tr_mapper.input_dim, tr_mapper.output_dim, tr_mapper.num_words)
            != (text_width, text_width, i2t_mapper.num_words)
        ):
            raise ValueError(
                f"tr_mapper has num_words={tr_mapper.num_words}, widths {tr_mapper.input_dim} -> "
                f"{tr_mapper.output_dim}; expected {i2t_mapper.num_words} words of width {text_width}"
            )
        self.sd, self.image_encoder, self.i2t_mapper, self.tr_mapper = sd, image_encoder, i2t_mapper, tr_mapper
        self.prompt = build_injection_prompt(sd.tokenizer, template, placeholder)
        self.uncond_ids = tokenize(sd.tokenizer, [""])  # (1, 77)

    @torch.no_grad()
    def word_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP -> I2T (-> TR) words for [0, 1] images.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1]; the central square is used.

        Returns:
            (B, num_words, D) word embeddings.
        """
        features = clip_image_features(self.image_encoder, center_crop_square(images))  # (B, 1 + P, C)
        param = next(self.i2t_mapper.parameters())
        words = self.i2t_mapper(features.to(device=param.device, dtype=param.dtype))  # (B, K, D)
        if self.tr_mapper is not None:
            words = self.tr_mapper(words.to(next(self.tr_mapper.parameters()).dtype))
        return words

    @torch.no_grad()
    def contexts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional and unconditional UNet contexts.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1].

        Returns:
            (cond, uncond), each (B, 77, D): the prompt with injected words, and the empty prompt.
        """
        return self.word_contexts(self.word_embeddings(images))

    @torch.no_grad()
    def word_contexts(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional and unconditional UNet contexts for given word embeddings.

        Args:
            words: (B, num_words, D) words (from the mappers, or any others).

        Returns:
            (cond, uncond), each (B, 77, D).
        """
        batch = words.shape[0]
        ids = self.prompt.input_ids.unsqueeze(0).expand(batch, -1)  # (B, 77)
        cond = encode_injected(self.sd.text_encoder, ids, self.prompt.placeholder_index, words).last_hidden_state
        uncond = encode_text(self.sd.text_encoder, self.uncond_ids).last_hidden_state.expand(batch, -1, -1)
        return cond, uncond

    def guided_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        batched: bool = True,
    ) -> torch.Tensor:
        """Classifier-free-guided noise prediction eps_u + s (eps_c - eps_u).

        Args:
            latents: (B, 4, h, w) current latents.
            timestep: scalar timestep.
            cond: (B, L, D) conditional context.
            uncond: (B, L, D) unconditional context.
            guidance_scale: s.
            batched: one UNet call on the 2B batch (True) or two calls (the authors' way).

        Returns:
            (B, 4, h, w) guided noise prediction.
        """
        unet = self.sd.unet
        if batched:
            context = torch.cat([uncond, cond])  # (2B, L, D)
            noise = unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=context).sample
            noise_uncond, noise_cond = noise.chunk(2)  # 2 x (B, 4, h, w)
        else:
            noise_uncond = unet(latents, timestep, encoder_hidden_states=uncond).sample
            noise_cond = unet(latents, timestep, encoder_hidden_states=cond).sample
        return noise_uncond + guidance_scale * (noise_cond - noise_uncond)

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        seeds: Sequence[int],
        *,
        num_inference_steps: int = 100,
        guidance_scale: float = 5.0,
        resolution: int = 512,
        batched_cfg: bool = True,
    ) -> torch.Tensor:
        """Generate one guidance image per input.

        DDIM with eta 0 (deterministic given the initial noise), as the authors sample.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1], any size (the central square is read).
            seeds: B seeds, e.g. ``[seed_from_name(stem) for stem in stems]``.
            num_inference_steps: DDIM steps (100 in the paper).
            guidance_scale: classifier-free guidance scale (5.0 in the paper).
            resolution: output side in pixels (512 in the paper); a multiple of the
                VAE factor times the UNet's downsampling (64 for SD).
            batched_cfg: run both guidance branches in one UNet call (False: two calls).

        Returns:
            (B, 3, resolution, resolution) float32 RGB in [0, 1], on the UNet's device.

        Raises:
            ValueError: bad ``seeds`` length, step count, scale or resolution.
        """
        return self.generate_from_words(
            self.word_embeddings(images),
            seeds,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            resolution=resolution,
            batched_cfg=batched_cfg,
        )

    @torch.no_grad()
    def generate_from_words(
        self,
        words: torch.Tensor,
        seeds: Sequence[int],
        *,
        num_inference_steps: int = 100,
        guidance_scale: float = 5.0,
        resolution: int = 512,
        batched_cfg: bool = True,
    ) -> torch.Tensor:
        """Generate one image per set of words (what ``__call__`` does after the mappers).

        Args:
            words: (B, num_words, D) word embeddings spliced into the prompt.
            seeds, num_inference_steps, guidance_scale, resolution, batched_cfg: as ``__call__``.

        Returns:
            (B, 3, resolution, resolution) float32 RGB in [0, 1], on the UNet's device.
        """
        batch = words.shape[0]
        if len(seeds) != batch:
            raise ValueError(f"seeds has {len(seeds)} entries for {batch} images")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0; got {guidance_scale}")
        unet = self.sd.unet
        multiple = self.sd.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        if resolution <= 0 or resolution % multiple:
            raise ValueError(f"resolution must be a positive multiple of {multiple}; got {resolution}")

        cond, uncond = self.word_contexts(words)
        param = next(unet.parameters())
        cond, uncond = cond.to(param.dtype), uncond.to(param.dtype)
        scheduler = DDIMScheduler.from_config(self.sd.scheduler.config)  # fresh state per call
        scheduler.set_timesteps(num_inference_steps, device=param.device)
        side = resolution // self.sd.vae_scale_factor
        latents = initial_latents(
            seeds, (unet.config.in_channels, side, side), device=param.device, dtype=param.dtype
        ) * scheduler.init_noise_sigma
        for timestep in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, timestep)
            noise = self.guided_noise(model_input, timestep, cond, uncond, guidance_scale, batched=batched_cfg)
            latents = scheduler.step(noise, timestep, latents, eta=0.0).prev_sample
        return decode_latents(self.sd.vae, latents, self.sd.latent_scaling)
