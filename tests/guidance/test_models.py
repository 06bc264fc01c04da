"""Tests for textualdeg.guidance.models: SD folder and CLIP image-encoder loading (arXiv:2312.17334)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from textualdeg.guidance.models import (
    IncompleteModelFolderError,
    center_crop_square,
    clip_image_features,
    clip_preprocess,
    convert_open_clip_vision,
    load_clip_vision,
    load_stable_diffusion,
)


def test_load_stable_diffusion_parts(sd):
    assert isinstance(sd.scheduler, DDIMScheduler)
    assert sd.scheduler.config.beta_schedule == "scaled_linear"
    assert sd.scheduler.config.prediction_type == "epsilon"
    assert sd.vae_scale_factor == 8
    assert sd.latent_scaling == pytest.approx(0.18215)
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    assert sd.tokenizer.model_max_length == 77
    assert not sd.unet.training and not sd.vae.training


def test_load_stable_diffusion_dtype(tiny_paths):
    half = load_stable_diffusion(tiny_paths["stable_diffusion"], dtype=torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16 and half.text_encoder.dtype == torch.bfloat16


def test_incomplete_folder_lists_every_missing_file(tiny_paths, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(tiny_paths["stable_diffusion"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "tokenizer" / "merges.txt").unlink()
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(IncompleteModelFolderError) as info:
        load_stable_diffusion(broken)
    message = str(info.value)
    assert str(broken) in message
    for part in ("unet/diffusion_pytorch_model.safetensors", "tokenizer/merges.txt", "scheduler/scheduler_config.json"):
        assert part in message
    assert len(info.value.missing) == 3


def test_missing_folder(tmp_path):
    with pytest.raises(IncompleteModelFolderError, match="nowhere"):
        load_stable_diffusion(tmp_path / "nowhere")


def _open_clip_reference(tiny_paths, pixels):
    """Features computed by open_clip's own model: the last block's output and ln_post tokens."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    config = json.loads((tiny_paths["open_clip"].parent / "open_clip_config.json").read_text())["model_cfg"]
    model = CLIP(config["embed_dim"], CLIPVisionCfg(**config["vision_cfg"]), CLIPTextCfg(**config["text_cfg"]))
    open_clip.load_checkpoint(model, str(tiny_paths["open_clip"]))
    model.eval()
    captured = {}
    model.visual.transformer.resblocks[-1].register_forward_hook(lambda m, i, o: captured.update(last=o))
    model.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = model.visual(pixels)
    return captured["last"], tokens


def test_open_clip_and_transformers_give_the_same_features(tiny_paths, clip_vision, photos):
    from_file = load_clip_vision(tiny_paths["open_clip"])
    from_dir = load_clip_vision(tiny_paths["open_clip"].parent)  # hub layout: folder with the open_clip file
    with torch.no_grad():
        a = clip_image_features(clip_vision, photos)
        b = clip_image_features(from_file, photos)
        c = clip_image_features(from_dir, photos)
        pixels = clip_preprocess(photos)
        last, tokens = _open_clip_reference(tiny_paths, pixels)
        post = clip_vision(pixel_values=pixels).last_hidden_state
    assert a.shape == (2, 257, 32)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-4, rtol=0)
    # last_hidden_state is open_clip's last-block output (pre ln_post), CLS first
    torch.testing.assert_close(a, last, atol=1e-4, rtol=0)
    torch.testing.assert_close(clip_vision.post_layernorm(post)[:, 1:], tokens, atol=1e-4, rtol=0)
    assert (a - clip_vision.post_layernorm(a)).abs().max() > 1e-2  # not post-layernormed


def test_clip_model_folder_loads_vision_tower(tmp_path, photos):
    from transformers import CLIPConfig, CLIPModel

    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text["vocab_size"] = 100
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    full.save_pretrained(tmp_path / "clip")
    loaded = load_clip_vision(tmp_path / "clip")
    pixels = clip_preprocess(photos)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values=pixels).last_hidden_state, full.vision_model(pixel_values=pixels).last_hidden_state
        )


def test_open_clip_without_config_uses_named_config(tiny_paths, tmp_path):
    bare = tmp_path / "weights.bin"
    shutil.copy(tiny_paths["open_clip"], bare)  # no open_clip_config.json beside it
    # ViT-H-14's head_width (80) does not divide the tiny width (32): the error names the file
    with pytest.raises(ValueError, match="weights.bin"):
        load_clip_vision(bare, open_clip_model="ViT-H-14")
    with pytest.raises(ValueError, match="not-a-model"):
        load_clip_vision(bare, open_clip_model="not-a-model")


def test_unconvertible_open_clip_option_is_rejected(tiny_paths):
    state = torch.load(tiny_paths["open_clip"], weights_only=True)
    with pytest.raises(ValueError, match="ls_init_value"):
        convert_open_clip_vision(state, {"head_width": 8, "ls_init_value": 1e-5}, source="x.bin")


def test_clip_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(IncompleteModelFolderError, match="model.safetensors"):
        load_clip_vision(tmp_path)


def test_clip_preprocess_matches_pil_bicubic(photo_rgb):
    from PIL import Image

    image = torch.from_numpy(photo_rgb).permute(2, 0, 1)[None]  # (1, 3, 512, 512)
    ours = clip_preprocess(image)
    pil = Image.fromarray((photo_rgb * 255).round().astype(np.uint8)).resize((224, 224), Image.BICUBIC)
    reference = clip_preprocess(torch.from_numpy(np.asarray(pil, np.float32) / 255).permute(2, 0, 1)[None])
    assert ours.shape == (1, 3, 224, 224)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    assert ((ours - reference).abs() * std).mean() < 0.01  # mean error below 1% of the [0, 1] range


def test_clip_preprocess_normalises_with_openai_statistics():
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    flat = mean.expand(2, 3, 224, 224).clone()
    assert clip_preprocess(flat).abs().max() < 1e-6
    with pytest.raises(ValueError, match="B, 3, H, W"):
        clip_preprocess(torch.zeros(3, 224, 224))


def test_center_crop_square():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    crop = center_crop_square(images)
    assert crop.shape == (2, 3, 4, 4)
    torch.testing.assert_close(crop, images[..., :, 1:5])
    assert center_crop_square(images.transpose(-1, -2)).shape == (2, 3, 4, 4)
