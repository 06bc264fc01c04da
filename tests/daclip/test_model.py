"""DAClip: official parity, the ViT-B-32 key layout, the zero-initialised controller, the tokenizer."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from textualdeg.daclip import model as daclip_model
from textualdeg.daclip.checkpoint import load_daclip
from textualdeg.daclip.model import DEGRADATIONS, DAClip, build_daclip, tokenize

from .conftest import KEYS_FILE, SMALL_CONFIG

TOLERANCE = 1e-5


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_official_parity_through_the_official_file_path(parity, tmp_path):
    # The official checkpoint layout: {"state_dict": {"module." + key: tensor}} in a torch file.
    path = tmp_path / "daclip_tiny.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in parity["state_dict"].items()}}, path)
    model = load_daclip(path, model=parity["config"])
    t = parity["tensors"]
    with torch.no_grad():
        content, degradation = model.encode_image(t["in.image"], control=True)
        plain = model.encode_image(t["in.image"], control=False)
        text = model.encode_text(t["in.caption"])
        out = model(t["in.image"], t["in.caption"], t["in.degradation"])
    errors = {
        "content": _max_abs(content, t["out.content"]),
        "degradation": _max_abs(degradation, t["out.degradation"]),
        "plain": _max_abs(plain, t["out.plain"]),
        "text": _max_abs(text, t["out.text"]),
    }
    errors.update({f"forward.{k}": _max_abs(v, t[f"out.forward.{k}"]) for k, v in out.items()})
    assert max(errors.values()) < TOLERANCE, errors
    # The control path matters in the reference (non-zero zero modules).
    assert _max_abs(t["out.content"], t["out.plain"]) > 1e-2


def test_parity_state_dict_has_the_official_keys(parity):
    model = build_daclip(parity["config"])
    assert set(model.state_dict()) == set(parity["state_dict"])


def _reference_layout() -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in KEYS_FILE.read_text().splitlines():
        key, shape = line.split("\t")
        layout[key] = tuple(int(s) for s in shape.split("x")) if shape else ()
    return layout


@pytest.mark.parametrize("name", ["ViT-B-32", "daclip_ViT-B-32"])
def test_vit_b_32_layout_matches_the_official(name):
    with torch.device("meta"):
        model = build_daclip(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _reference_layout()
    assert sum(p.numel() for p in model.parameters()) == 246_213_634
    assert (model.embed_dim, model.image_size, model.context_length) == (512, 224, 77)


def test_visual_is_registered_twice(small_daclip):
    assert small_daclip.visual is small_daclip.clip.visual
    keys = small_daclip.state_dict()
    assert "visual.conv1.weight" in keys and "clip.visual.conv1.weight" in keys
    assert len(small_daclip.zero_modules) == SMALL_CONFIG["vision_cfg"]["layers"]


def test_zero_modules_make_the_controller_an_identity_at_init(small_daclip):
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        content, degradation = small_daclip.encode_image(image, control=True)
        plain = small_daclip.encode_image(image, control=False)
    assert all(p.abs().max() == 0 for m in small_daclip.zero_modules for p in m.parameters())
    torch.testing.assert_close(content, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(degradation, plain, rtol=0, atol=1e-6)  # controller = copy of the frozen tower


def test_initial_controller_copies_by_name_and_keeps_zero_modules(small_daclip):
    with torch.no_grad():
        for p in small_daclip.clip.visual.parameters():
            p.add_(torch.randn_like(p))
        small_daclip.clip.logit_scale.fill_(3.0)
    small_daclip.initial_controller()
    frozen = dict(small_daclip.clip.visual.named_parameters())
    for name, param in small_daclip.visual_control.named_parameters():
        if "zero_modules" in name:
            assert param.abs().max() == 0, name
        else:
            assert torch.equal(param, frozen[name.replace("transformer.transformer.", "transformer.")]), name
    assert small_daclip.logit_scale.item() == 3.0


def test_hiddens_enter_in_reverse_block_order(small_daclip):
    # Only the last zero module active: its hidden joins the frozen path after block 0.
    last = small_daclip.zero_modules[-1]
    with torch.no_grad():
        last.bias.fill_(0.5)
    image = torch.randn(1, 3, 32, 32)
    visual = small_daclip.clip.visual
    with torch.no_grad():
        content, _ = small_daclip.encode_image(image)
        x = daclip_model._embed_patches(visual, image)
        x = visual.transformer.resblocks[0](x) + 0.5
        for block in visual.transformer.resblocks[1:]:
            x = block(x)
        expected = daclip_model._pool_project(visual, x)
    torch.testing.assert_close(content, expected, rtol=0, atol=1e-5)


def test_lock_clip_freezes_only_clip(small_daclip):
    small_daclip.lock_clip()
    assert not any(p.requires_grad for p in small_daclip.clip.parameters())
    assert all(p.requires_grad for p in small_daclip.visual_control.parameters())
    assert small_daclip.logit_scale.requires_grad


def test_forward_outputs_are_normalised(small_daclip):
    tokens = torch.randint(1, 400, (2, 16))
    out = small_daclip(torch.randn(2, 3, 32, 32), tokens, tokens.flip(0))
    assert set(out) == {"image_features", "text_features", "image_degra_features", "text_degra_features",
                        "logit_scale"}
    for key in ("image_features", "text_features", "image_degra_features", "text_degra_features"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(2))
    assert out["logit_scale"].ndim == 0


def test_build_from_json_file_and_unknown_name(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(SMALL_CONFIG))
    assert isinstance(build_daclip(config), DAClip)
    with pytest.raises(ValueError, match="unknown model 'ViT-Nope'"):
        build_daclip("ViT-Nope")


def test_tokenize_matches_open_clip_and_warns_on_truncation(caplog):
    import open_clip

    logger = logging.getLogger(daclip_model.__name__)
    logger.addHandler(caplog.handler)
    try:
        caplog.set_level(logging.WARNING, logger=daclip_model.__name__)
        tokens = tokenize(list(DEGRADATIONS))
        assert not caplog.records
        long_text = "a very long caption about " + "rain " * 100
        tokens_long = tokenize(["hazy", long_text], context_length=77)
    finally:
        logger.removeHandler(caplog.handler)
    assert tokens.shape == (10, 77) and tokens.dtype == torch.long
    assert torch.equal(tokens, open_clip.tokenize(list(DEGRADATIONS)))
    assert tokens_long.shape == (2, 77)
    records = {id(r): r for r in caplog.records}.values()  # the handler may see a record twice
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and "a very long caption about" in messages[0]


def test_grad_checkpointing_gives_the_same_gradients(small_daclip):
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for m in small_daclip.zero_modules:
            m.weight.normal_(0, 0.1)
    small_daclip.lock_clip()

    def grads():
        small_daclip.zero_grad()
        content, degradation = small_daclip.encode_image(image)
        (content.sum() + degradation.square().sum()).backward()
        return [p.grad.clone() for p in small_daclip.visual_control.parameters()]

    plain = grads()
    small_daclip.set_grad_checkpointing(True)
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)
