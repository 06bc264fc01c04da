"""Tests for textualdeg.guidance.mappers: I2T / TR mappers and their weight files (arXiv:2312.17334)."""

from __future__ import annotations

import pytest
import torch

from textualdeg.checkpoint import load_weights
from textualdeg.guidance.mappers import (
    ImageToTextMapper,
    TextRestorationMapper,
    load_mapper_weights,
    save_mapper_weights,
)
from textualdeg.guidance.processors import global_kv_state_dict, install_global_kv, load_global_kv

LAYER_KEYS = [f"{i}.{p}" for i in (0, 1, 3, 4, 6, 7, 9) for p in ("weight", "bias")]


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module


def test_i2t_key_layout_matches_authors():
    mapper = ImageToTextMapper(input_dim=12, output_dim=8, num_words=3, hidden_dim=16)
    expected = {f"mapping{kind}_{i}.{k}" for kind in ("", "_patch") for i in range(3) for k in LAYER_KEYS}
    assert set(mapper.state_dict()) == expected
    assert mapper.state_dict()["mapping_0.0.weight"].shape == (16, 12)
    assert mapper.state_dict()["mapping_patch_2.9.weight"].shape == (8, 16)


def test_i2t_parameter_count_for_vit_h_and_sd21():
    with torch.device("meta"):
        mapper = ImageToTextMapper()  # 1280 -> 1024, 20 words
    per_mlp = 1280 * 1280 + 1280 + 3 * 2 * 1280 + 2 * (1280 * 1280 + 1280) + 1280 * 1024 + 1024
    assert sum(p.numel() for p in mapper.parameters()) == 40 * per_mlp


def test_i2t_forward_is_cls_mlp_plus_mean_patch_mlp():
    mapper = _randomise(ImageToTextMapper(input_dim=12, output_dim=8, num_words=3, hidden_dim=16), 0).eval()
    features = torch.randn(2, 1 + 9, 12)
    words = mapper(features)
    assert words.shape == (2, 3, 8)
    for i in range(3):
        cls_part = getattr(mapper, f"mapping_{i}")(features[:, 0])
        patch_part = torch.stack([getattr(mapper, f"mapping_patch_{i}")(features[:, 1 + p]) for p in range(9)]).mean(0)
        torch.testing.assert_close(words[:, i], cls_part + patch_part)
    with pytest.raises(ValueError, match="features"):
        mapper(torch.randn(2, 10, 11))


def test_tr_mapper_applies_one_mlp_per_word():
    mapper = _randomise(TextRestorationMapper(input_dim=8, output_dim=8, num_words=3, hidden_dim=16), 1)
    assert set(mapper.state_dict()) == {f"mapping_{i}.{k}" for i in range(3) for k in LAYER_KEYS}
    words = torch.randn(2, 3, 8)
    out = mapper(words)
    for i in range(3):
        torch.testing.assert_close(out[:, i], getattr(mapper, f"mapping_{i}")(words[:, i]))
    with pytest.raises(ValueError, match="words"):
        mapper(torch.randn(2, 4, 8))


def test_widths_read_from_loaded_models(sd, clip_vision):
    i2t = ImageToTextMapper.for_models(clip_vision, sd.text_encoder, num_words=4, hidden_dim=16)
    tr = TextRestorationMapper.for_models(sd.text_encoder, num_words=4, hidden_dim=16)
    assert (i2t.input_dim, i2t.output_dim) == (clip_vision.config.hidden_size, sd.text_encoder.config.hidden_size)
    assert tr.input_dim == tr.output_dim == sd.text_encoder.config.hidden_size


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_words"):
        ImageToTextMapper(num_words=0)
    with pytest.raises(ValueError, match="hidden_dim"):
        TextRestorationMapper(hidden_dim=-1)


def test_our_safetensors_round_trip_with_global_kv(sd, tmp_path):
    install_global_kv(sd.unet)
    kv = {key: torch.randn_like(value) for key, value in global_kv_state_dict(sd.unet).items()}
    mapper = _randomise(ImageToTextMapper(input_dim=32, output_dim=32, num_words=2, hidden_dim=16), 2)
    path = tmp_path / "i2t.safetensors"
    save_mapper_weights(path, mapper, global_kv=kv)
    fresh = ImageToTextMapper(input_dim=32, output_dim=32, num_words=2, hidden_dim=16)
    loaded_kv = load_mapper_weights(fresh, path)
    for key, value in mapper.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    assert loaded_kv.keys() == kv.keys()
    tr = _randomise(TextRestorationMapper(input_dim=32, output_dim=32, num_words=2, hidden_dim=16), 3)
    save_mapper_weights(tmp_path / "tr.safetensors", tr)
    assert load_mapper_weights(TextRestorationMapper(input_dim=32, output_dim=32, num_words=2, hidden_dim=16),
                               tmp_path / "tr.safetensors") == {}


def test_authors_torch_save_file_loads_with_global_kv(sd, tmp_path):
    """A file in the authors' layout: torch.save of their Mapper, K/V under '<attn2 path _>_to_k.weight'."""
    installed = install_global_kv(sd.unet)
    mapper = _randomise(ImageToTextMapper(input_dim=32, output_dim=32, num_words=2, hidden_dim=16), 4)
    authors = dict(mapper.state_dict())
    kv_weights = {}
    for name, processor in installed.items():
        for kv in ("k", "v"):
            weight = torch.randn_like(getattr(processor, f"to_{kv}_global").weight)
            authors[f"{name.replace('.', '_')}_to_{kv}.weight"] = weight
            kv_weights[f"{name}.to_{kv}_global.weight"] = weight
    assert "mid_block_attentions_0_transformer_blocks_0_attn2_to_k.weight" in authors
    path = tmp_path / "mapper_000200.pt"
    torch.save(authors, path)

    fresh = ImageToTextMapper(input_dim=32, output_dim=32, num_words=2, hidden_dim=16)
    loaded_kv = load_mapper_weights(fresh, path)
    torch.testing.assert_close(fresh.mapping_patch_1[9].weight, mapper.mapping_patch_1[9].weight, rtol=0, atol=0)
    load_global_kv(sd.unet, loaded_kv, source=str(path))
    for key, value in global_kv_state_dict(sd.unet).items():
        torch.testing.assert_close(value, kv_weights[key], rtol=0, atol=0)


def test_authors_tr_file_loads(tmp_path):
    tr = _randomise(TextRestorationMapper(input_dim=8, output_dim=8, num_words=3, hidden_dim=16), 5)
    torch.save({f"module.{k}": v for k, v in tr.state_dict().items()}, tmp_path / "mapper.pt")  # DDP prefix
    fresh = TextRestorationMapper(input_dim=8, output_dim=8, num_words=3, hidden_dim=16)
    assert load_mapper_weights(fresh, tmp_path / "mapper.pt") == {}
    torch.testing.assert_close(fresh.mapping_2[0].bias, tr.mapping_2[0].bias, rtol=0, atol=0)


def test_mismatched_files_name_the_file(tmp_path):
    path = tmp_path / "three_words.pt"
    torch.save(ImageToTextMapper(input_dim=12, output_dim=8, num_words=3, hidden_dim=16).state_dict(), path)
    with pytest.raises(ValueError, match=r"three_words\.pt.*3 words.*num_words=2"):
        load_mapper_weights(ImageToTextMapper(input_dim=12, output_dim=8, num_words=2, hidden_dim=16), path)
    with pytest.raises(ValueError, match=r"three_words\.pt.*mapping_0\.0\.weight.*input_dim=20"):
        load_mapper_weights(ImageToTextMapper(input_dim=20, output_dim=8, num_words=3, hidden_dim=16), path)
    with pytest.raises(ValueError, match=r"three_words\.pt.*ImageToTextMapper file"):
        load_mapper_weights(TextRestorationMapper(input_dim=12, output_dim=8, num_words=3, hidden_dim=16), path)
    with pytest.raises(OSError, match="missing.pt"):
        small = TextRestorationMapper(input_dim=8, output_dim=8, num_words=1, hidden_dim=8)
        load_mapper_weights(small, tmp_path / "missing.pt")


def test_saved_file_records_metadata(tmp_path):
    from safetensors import safe_open

    mapper = TextRestorationMapper(input_dim=8, output_dim=8, num_words=2, hidden_dim=16)
    save_mapper_weights(tmp_path / "tr.safetensors", mapper)
    with safe_open(str(tmp_path / "tr.safetensors"), "pt") as handle:
        assert handle.metadata()["class"] == "TextRestorationMapper"
        assert handle.metadata()["num_words"] == "2"
    assert set(load_weights(tmp_path / "tr.safetensors")) == set(mapper.state_dict())


def test_residual_tr_mapper_starts_as_identity_and_files_record_it(tmp_path):
    from textualdeg.guidance.mappers import is_residual_tr_file

    words = torch.randn(2, 3, 8)
    residual = TextRestorationMapper(input_dim=8, output_dim=8, num_words=3, hidden_dim=16, residual=True)
    torch.testing.assert_close(residual(words), words)  # zero-initialised last layers: the identity
    plain = TextRestorationMapper(input_dim=8, output_dim=8, num_words=3, hidden_dim=16)
    assert set(residual.state_dict()) == set(plain.state_dict())  # same keys as the authors' layout
    _randomise(residual, 3)
    plain.load_state_dict(residual.state_dict())
    torch.testing.assert_close(residual(words), words + plain(words))
    save_mapper_weights(tmp_path / "residual.safetensors", residual)
    save_mapper_weights(tmp_path / "plain.safetensors", plain)
    assert is_residual_tr_file(tmp_path / "residual.safetensors")
    assert not is_residual_tr_file(tmp_path / "plain.safetensors")
    torch.save(plain.state_dict(), tmp_path / "authors.pt")
    assert not is_residual_tr_file(tmp_path / "authors.pt")
    with pytest.raises(ValueError, match="input_dim == output_dim"):
        TextRestorationMapper(input_dim=8, output_dim=4, num_words=3, hidden_dim=16, residual=True)
