"""Tests for textualdeg.guidance.tiny: tiny model folders in the real formats (arXiv:2312.17334)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from textualdeg.guidance.tiny import SD21_SCHEDULER_CONFIG, main, make_tiny

SENTENCES = [
    "a photo of a S",
    "",
    "A Photo of a cat, sitting on the mat.",
    "Héllo wörld: accents, unicode ✓ and emoji 🙂",
    "numbers 12345 and 3.14159",
    "lots    of   extra   whitespace",
    "word " * 100,  # truncated at 77, end token kept at 76
]


def test_layout(tiny_paths):
    sd = tiny_paths["stable_diffusion"]
    for part in ("unet/config.json", "vae/config.json", "text_encoder/config.json", "model_index.json"):
        assert (sd / part).is_file(), part
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        assert (sd / "tokenizer" / name).is_file(), name
    scheduler = json.loads((sd / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler == SD21_SCHEDULER_CONFIG
    index = json.loads((sd / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (tiny_paths["clip_vision"] / "config.json").is_file()
    assert tiny_paths["open_clip"].name == "open_clip_pytorch_model.bin"
    assert (tiny_paths["open_clip"].parent / "open_clip_config.json").is_file()


def test_tiny_dinov2_loads(tiny_paths):
    from textualdeg.pretrained.dinov2 import load_dinov2

    assert tiny_paths["dinov2"] is not None
    model = load_dinov2(tiny_paths["dinov2"])
    with torch.no_grad():
        out = model(pixel_values=torch.rand(1, 3, 56, 56)).last_hidden_state
    assert out.shape == (1, 1 + 16, model.config.hidden_size)


def test_tokenizer_is_the_real_clip_tokenizer(sd):
    import open_clip

    reference = open_clip.get_tokenizer("ViT-H-14")
    ours = sd.tokenizer(SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    torch.testing.assert_close(ours, reference(SENTENCES))
    assert ours[0, :7].tolist() == [49406, 320, 1125, 539, 320, 338, 49407]  # "S" is one token (338)
    assert ours[-1, 76].item() == 49407


def test_tokenizer_pads_with_exclamation_mark_like_sd21(sd):
    assert sd.tokenizer.pad_token == "!" and sd.tokenizer.pad_token_id == 0
    # the real SD 2.1 quirk: a literal '!' is the pad token, so it becomes id 0 (open_clip: 256)
    assert sd.tokenizer("hi!", add_special_tokens=False).input_ids[-1] == 0


def test_cli_is_deterministic_and_leaves_global_rng_alone(tiny_paths, tmp_path, capsys):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    assert main([str(tmp_path / "again"), "--seed", "0", "--no-dinov2"]) == 0
    torch.testing.assert_close(torch.rand(1), expected_next)  # global RNG untouched
    assert "stable_diffusion" in capsys.readouterr().out
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        first = load_file(str(tiny_paths["stable_diffusion"] / part))
        second = load_file(str(tmp_path / "again" / "stable-diffusion" / part))
        assert first.keys() == second.keys()
        for key in first:
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert not (tmp_path / "again" / "dinov2").exists()


def test_another_seed_gives_other_weights(tiny_paths, tmp_path):
    other = make_tiny(tmp_path, seed=1, dinov2=False)
    part = "unet/diffusion_pytorch_model.safetensors"
    a = load_file(str(tiny_paths["stable_diffusion"] / part))
    b = load_file(str(other["stable_diffusion"] / part))
    assert not torch.equal(a["conv_in.weight"], b["conv_in.weight"])
