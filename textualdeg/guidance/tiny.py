"""Tiny random-weight models in the real on-disk formats, for tests and the demo.

``make_tiny(DIR)`` writes, from a fixed seed:

* ``DIR/stable-diffusion/``: a diffusers Stable Diffusion 2.1-base-like folder
  (``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``). The UNet has
  the SD layout in miniature (down, mid and up cross-attention: 4 ``attn2`` layers, text
  width 32), the VAE downsamples by 8 like SD's, the scheduler config is SD 2.1-base's.
  The tokenizer is the *real* CLIP BPE tokenizer, built from the vocabulary that ships
  inside open_clip_torch.
* ``DIR/open_clip/``: an open_clip checkpoint (``open_clip_pytorch_model.bin``, a bare
  state dict of a whole tiny CLIP) with its ``open_clip_config.json``, as on the hub.
* ``DIR/clip-vision/``: a transformers ``CLIPVisionModel`` folder holding the *same*
  vision weights as the open_clip file (converted), so both give the same features.
  224 px input, patch 14: 257 tokens of width 32.
* ``DIR/dinov2/``: a tiny DINOv2 written by ``textualdeg.pretrained.dinov2.save_tiny_dinov2``.
* ``DIR/bert/``: a tiny BERT (TextPromptIR's instruction reader) written by
  ``textualdeg.pretrained.bert.save_tiny_bert``, its vocabulary the instruction set's words
  plus every letter and digit as a word-piece.
* ``DIR/daclip/``: a tiny DA-CLIP folder written by ``textualdeg.daclip.tiny.save_tiny_daclip``
  (loads back with ``textualdeg.daclip.load_daclip``).

Everything loads back through the loaders users run (``load_stable_diffusion``,
``load_clip_vision``). Paper: "Improving Image Restoration through Removing Degradations
in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Tokenizer padding: the real SD 2.1-base tokenizer pads with ``'!'`` (id 0, like
open_clip's zero padding), so ours does too; the known quirk that a literal ``'!'`` in a
prompt also becomes id 0 is therefore the same as with the real folder
(docs/ecosystem_notes.md, section 2).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from textualdeg.log import get_logger

logger = get_logger(__name__)

# Configs are data, kept apart from the code that writes them (timm's default_cfgs).
TINY_UNET_CONFIG: dict = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "norm_num_groups": 8,
}
TINY_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (16, 32, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
# SD 2.1's text tower uses the legacy ids bos 0 / eos 2 (pooling at argmax of the ids).
TINY_TEXT_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# SD 2.1-base's scheduler/scheduler_config.json, verbatim.
SD21_SCHEDULER_CONFIG: dict = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# open_clip model config of the tiny CLIP (the ViT-H-14 config in miniature).
TINY_OPEN_CLIP_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 8, "mlp_ratio": 2.0, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
}
# The pad token of the real SD 2.1-base tokenizer (see the module docstring).
SD21_PAD_TOKEN = "!"


def write_clip_tokenizer(folder: str | Path, *, pad_token: str = SD21_PAD_TOKEN) -> Path:
    """Write the real CLIP BPE tokenizer (as in SD 2.1's ``tokenizer/``) from open_clip's vocabulary.

    Files: ``vocab.json``, ``merges.txt``, ``special_tokens_map.json``, ``tokenizer_config.json``.
    The conversion is described in docs/ecosystem_notes.md, section 2: 48894 merges,
    49408 vocabulary entries.

    Args:
        folder: output folder (created).
        pad_token: ``'!'`` as SD 2.1 (matches open_clip's zero padding), or ``'<|endoftext|>'``.

    Returns:
        The folder.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    token_ids = {token: index for index, token in enumerate(vocab)}
    (folder / "vocab.json").write_text(json.dumps(token_ids, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Fork the CPU RNG and seed it, so make_tiny leaves the global RNG state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _write_stable_diffusion(folder: Path, seed: int) -> None:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with _seeded(seed):
        UNet2DConditionModel(**TINY_UNET_CONFIG).save_pretrained(folder / "unet")
    with _seeded(seed + 1):
        AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(folder / "vae")
    with _seeded(seed + 2):
        CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG)).save_pretrained(folder / "text_encoder")
    write_clip_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER_CONFIG, indent=2))
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))


def _write_clip(open_clip_dir: Path, vision_dir: Path, seed: int) -> Path:
    """Write the tiny open_clip checkpoint and the CLIPVisionModel folder with the same weights."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from transformers import CLIPVisionModel

    from textualdeg.guidance.models import convert_open_clip_vision

    cfg = TINY_OPEN_CLIP_CONFIG
    with _seeded(seed):
        model = CLIP(
            embed_dim=cfg["embed_dim"],
            vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
            text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
        )
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    open_clip_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = open_clip_dir / "open_clip_pytorch_model.bin"
    torch.save(state, checkpoint)
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    preprocess.update({"interpolation": "bicubic", "resize_mode": "shortest"})
    (open_clip_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2)
    )
    config, weights = convert_open_clip_vision(state, cfg["vision_cfg"], source=str(checkpoint))
    vision = CLIPVisionModel.from_pretrained(None, config=config, state_dict=weights)
    vision.save_pretrained(vision_dir)
    return checkpoint


def make_tiny(folder: str | Path, *, seed: int = 0, dinov2: bool = True) -> dict[str, Path | None]:
    """Write tiny random-weight versions of every model the pipeline loads.

    Deterministic: the same seed writes the same weights. Takes about 2 s on 2 CPU cores.

    Args:
        folder: output root (created; existing files are overwritten).
        seed: base seed; each component uses its own offset from it.
        dinov2: also write the tiny DINOv2 (through ``textualdeg.pretrained.dinov2``).

    Returns:
        Paths keyed ``stable_diffusion`` (folder), ``clip_vision`` (transformers folder),
        ``open_clip`` (checkpoint file), ``dinov2`` (folder, or None when not written),
        ``bert`` (folder) and ``daclip`` (folder).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {
        "stable_diffusion": root / "stable-diffusion",
        "clip_vision": root / "clip-vision",
        "open_clip": None,
        "dinov2": None,
        "bert": root / "bert",
    }
    _write_stable_diffusion(paths["stable_diffusion"], seed)
    paths["open_clip"] = _write_clip(root / "open_clip", paths["clip_vision"], seed + 10)
    if dinov2:
        from textualdeg.pretrained.dinov2 import save_tiny_dinov2

        save_tiny_dinov2(root / "dinov2", seed=seed + 20)
        paths["dinov2"] = root / "dinov2"
    from textualdeg.instruction.phrasings import instruction_split
    from textualdeg.pretrained.bert import save_tiny_bert

    split = instruction_split()
    save_tiny_bert(paths["bert"], [text for text, _ in split.train + split.val], seed=seed + 30)
    from textualdeg.daclip.tiny import save_tiny_daclip

    paths["daclip"] = save_tiny_daclip(root / "daclip", seed=seed + 40)
    logger.info("wrote tiny models under %s", root)
    return paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``textualdeg make-tiny DIR [--seed N]``."""
    parser = argparse.ArgumentParser(prog="textualdeg make-tiny", description=make_tiny.__doc__.splitlines()[0])
    parser.add_argument("dir", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--no-dinov2", action="store_true", help="skip the tiny DINOv2")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``textualdeg make-tiny DIR``; prints the written paths (the CLI report)."""
    args = parse_args(argv)
    paths = make_tiny(args.dir, seed=args.seed, dinov2=not args.no_dinov2)
    for name, path in paths.items():
        print(f"{name}: {path if path is not None else '(not written)'}")
    return 0
