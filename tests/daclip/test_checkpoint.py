"""load_daclip / save_daclip: official files, our folders, plain CLIP files, wrong architectures."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from textualdeg.daclip.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    DAClipCheckpointError,
    load_daclip,
    read_degradations,
    save_daclip,
)
from textualdeg.daclip.model import DEGRADATIONS

from .conftest import SMALL_CONFIG


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_save_load_round_trip_is_exact(small_daclip, tmp_path):
    model = _perturbed(small_daclip)
    folder = save_daclip(model, tmp_path / "out", degradations=["hazy", "noisy"])
    assert (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()
    loaded = load_daclip(folder)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.visual is loaded.clip.visual
    assert not loaded.training
    assert read_degradations(folder) == ("hazy", "noisy")
    assert loaded.config == model.config


def test_save_leaves_no_temporary_files(small_daclip, tmp_path):
    folder = save_daclip(small_daclip, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    assert "degradations" not in json.loads((folder / CONFIG_NAME).read_text())
    assert read_degradations(folder) == DEGRADATIONS


def test_official_file_is_read_with_weights_only(small_daclip, tmp_path, monkeypatch):
    path = tmp_path / "daclip.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": small_daclip.state_dict()}, path)
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_daclip(path, model=SMALL_CONFIG)
    assert calls and all(flag is True for flag in calls)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in small_daclip.state_dict().items())
    assert read_degradations(path) == DEGRADATIONS


def test_other_architecture_names_file_arch_and_first_mismatch(small_daclip, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": small_daclip.state_dict()}, path)
    wider = json.loads(json.dumps(SMALL_CONFIG))
    wider["vision_cfg"]["width"] = 64
    with pytest.raises(DAClipCheckpointError) as info:
        load_daclip(path, model=wider)
    message = str(info.value)
    assert str(path) in message and "given config dict" in message
    assert "of another shape" in message and "is 32 in the file, 64 in the model" in message
    # Without `model`, the default architectures are tried and named.
    with pytest.raises(DAClipCheckpointError, match=r"'ViT-B-32', 'ViT-L-14'") as info:
        load_daclip(path)
    assert str(path) in str(info.value) and "missing" in str(info.value)


def test_plain_clip_checkpoint_starts_training(small_daclip, tmp_path):
    clip_state = _perturbed(small_daclip).clip.state_dict()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip_state, path)
    loaded = load_daclip(path, model=SMALL_CONFIG)
    assert all(torch.equal(v, loaded.clip.state_dict()[k]) for k, v in clip_state.items())
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        content, degradation = loaded.encode_image(image)
        plain = loaded.encode_image(image, control=False)
    torch.testing.assert_close(content, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(degradation, plain, rtol=0, atol=1e-6)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DAClipCheckpointError, match="broken.pt"):
        load_daclip(bad)
    with pytest.raises(DAClipCheckpointError, match="no such"):
        load_daclip(tmp_path / "absent.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DAClipCheckpointError, match="not a DA-CLIP folder"):
        load_daclip(tmp_path / "empty")


def test_save_needs_a_config(tmp_path):
    from open_clip.model import CLIP

    from textualdeg.daclip.model import DAClip

    model = DAClip(CLIP(SMALL_CONFIG["embed_dim"], SMALL_CONFIG["vision_cfg"], SMALL_CONFIG["text_cfg"]))
    with pytest.raises(ValueError, match="model.config"):
        save_daclip(model, tmp_path / "x")


def test_tiny_daclip_loads_back(tiny_daclip):
    model = load_daclip(tiny_daclip)
    assert (model.embed_dim, model.image_size, model.context_length) == (32, 224, 77)
    assert read_degradations(tiny_daclip) == DEGRADATIONS
    assert any(p.abs().max() > 0 for m in model.zero_modules for p in m.parameters())


def test_make_tiny_writes_daclip():
    # make_tiny writes every tiny model (seconds); check the call, the loader path is tested above.
    from textualdeg.guidance import tiny

    source = inspect.getsource(tiny.make_tiny)
    assert 'save_tiny_daclip(root / "daclip"' in source
    assert "DIR/daclip/" in tiny.__doc__
