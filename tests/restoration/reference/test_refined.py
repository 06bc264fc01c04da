"""Tests for the refined reference path (textualdeg/restoration/reference/refined.py).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334. The refined path is ours: it
removes the border defect, the feature collapse and the one-cell precision of the
authors' matching (docs/reference_path.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

import textualdeg.restoration.archs  # noqa: F401  (registers the archs)
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.reference.encoder import ReferenceEncoder
from textualdeg.restoration.reference.refined import (
    MatchGate,
    RefinedMatcher,
    centred_unit,
    correspondence_loss,
    identity_correspondence,
    refine,
    upsample_correspondence,
    warp,
)

TINY_NAFNET = dict(type="GuidedNAFNet", img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                   dec_blk_nums=[1, 1], nf=8, ext_n_blocks=[1, 1], reffusion_n_blocks=[1, 1],
                   reffusion_n_blocks_middle=1, lr_block_size=4, dilations=[1, 2])
# option 002's geometry (5 levels, deepest 1/16, blocks of 8 cells) at a small width
GEOMETRY_002 = dict(type="GuidedNAFNet", img_channel=3, width=4, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 1],
                    dec_blk_nums=[1, 1, 1, 1], nf=4, ext_n_blocks=[1, 1, 1, 1], reffusion_n_blocks=[1, 1, 1, 1],
                    reffusion_n_blocks_middle=1, lr_block_size=8, dilations=[1, 2, 3])


def _build(spec: dict, mode: str = "refined", seed: int = 0):
    torch.manual_seed(seed)
    return ARCH_REGISTRY.build({**spec, "reference_mode": mode}).eval()


def _photo(size: tuple[int, int], top: int = 60, left: int = 80) -> torch.Tensor:
    image = torch.from_numpy(data.astronaut().astype(np.float32) / 255.0).permute(2, 0, 1)[None]  # (1, 3, 512, 512)
    return image[:, :, top : top + size[0], left : left + size[1]].contiguous()


@pytest.mark.parametrize("spec, size", [(TINY_NAFNET, (64, 64)), (GEOMETRY_002, (384, 384))], ids=["tiny", "002"])
def test_identity_correspondences_reproduce_the_reference_exactly_borders_included(spec, size):
    """Aligned reference: the refined warp returns it unchanged, outer ring included."""
    x = _photo(size)
    refined = _build(spec).warp_reference_image(x, x)
    assert (refined - x).abs().max() < 1e-6
    # the authors' path misplaces the outer ring of deepest cells (the border defect)
    faithful = _build(spec, "masa").warp_reference_image(x, x)
    s = _build(spec, "masa").masa_enc.downsample_factor
    ring = torch.ones_like(x, dtype=torch.bool)
    ring[..., s:-s, s:-s] = False
    assert (faithful - x).abs()[ring].max() > 1e-2


@pytest.mark.parametrize("size", [(64, 64), (384, 384)])
def test_warp_with_identity_coordinates_is_exact(size):
    feat = torch.randn(2, 5, *size)
    assert torch.equal(warp(feat, identity_correspondence(2, size)), feat)


def test_upsample_and_refine_move_by_one_pixel_at_most_and_stay_inside():
    coords = identity_correspondence(1, (4, 4))
    up = upsample_correspondence(coords, (8, 8))
    assert torch.equal(up, identity_correspondence(1, (8, 8)))
    lq = centred_unit(torch.randn(1, 6, 8, 8))
    shifted = torch.roll(lq, shifts=(1, -1), dims=(2, 3))  # ref[p] = lq[p - (1, -1)]
    moved, sim = refine(lq, shifted, up, window=1)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    assert torch.equal((moved - up)[:, 0][inner], torch.ones(1, 6, 6, dtype=torch.long))
    assert torch.equal((moved - up)[:, 1][inner], -torch.ones(1, 6, 6, dtype=torch.long))
    assert moved.min() >= 0 and moved.max() <= 7
    assert sim.shape == (1, 1, 8, 8) and not sim.requires_grad


def test_centred_features_remove_the_common_component():
    feat = torch.relu(torch.randn(1, 16, 8, 8)) + 3.0  # all positions alike: raw cosine near 1
    raw = F.normalize(feat.flatten(2), dim=1)
    unit = centred_unit(feat).flatten(2)
    off = lambda gram: (gram.sum() - gram.diagonal().sum()) / (64 * 63)
    assert off(raw[0].T @ raw[0]) > 0.9
    assert off(unit[0].T @ unit[0]).abs() < 0.05


def test_gradients_reach_the_encoder_at_the_first_step_not_through_the_similarity():
    """The fusion starts as identity, so at step 1 only the correspondence loss trains the
    encoder (the faithful path's encoder gets nothing at step 1); the similarity that
    drives the gate is detached, so matching itself cannot pull the features together."""
    net = _build(TINY_NAFNET).train()
    clean = _photo((64, 64))
    ref = _photo((64, 64), top=62, left=84)
    torch.manual_seed(1)
    out, corr = net(clean + 0.1 * torch.randn_like(clean), ref, clean=clean)
    ((out - clean).abs().mean() + 0.1 * corr).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.masa_enc.parameters())
    feats = net.masa_enc(clean)
    matches = net.masa_matcher(feats, net.masa_enc(ref))
    assert all(not m.similarity.requires_grad and m.coords.dtype == torch.long for m in matches)
    # once the fusion has opened, the restoration loss reaches encoder and gate through the warp
    net.zero_grad()
    for block in net.masa_blk_enc[0]:
        torch.nn.init.constant_(block.beta, 0.5)
    net(clean, ref).mean().backward()
    assert net.masa_gate.weight.grad.abs().sum() > 0
    assert net.masa_enc.conv_L1.weight.grad.abs().sum() > 0


def test_correspondence_loss_trains_the_input_side_and_prefers_aligned_pairs():
    enc = ReferenceEncoder(nf=8, num_levels=3, num_blocks=(1, 1))
    clean = _photo((64, 64))
    noisy = clean + 0.2 * torch.randn_like(clean)
    aligned = correspondence_loss(enc(noisy), enc(clean), window=3)
    wrong = correspondence_loss(enc(noisy), enc(torch.flip(clean, dims=(2, 3))), window=3)
    assert aligned < wrong
    aligned.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    with pytest.raises(ValueError, match="equal shapes"):
        correspondence_loss(enc(noisy), enc(clean[..., :32, :32]), window=3)


def test_forward_with_clean_returns_the_loss_and_masa_mode_refuses_it():
    x = _photo((64, 64))
    out, loss = _build(TINY_NAFNET)(x, x, clean=x)
    assert out.shape == x.shape and loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="reference_mode='refined'"):
        _build(TINY_NAFNET, "masa")(x, x, clean=x)


@pytest.mark.parametrize("spec", [
    TINY_NAFNET,
    dict(type="GuidedRestormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1],
         nf=8, ext_n_blocks=[1, 1, 1, 1], reffusion_n_blocks=[1, 1, 1, 1], lr_block_size=4, dilations=[1, 2]),
    dict(type="GuidedPromptIR", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1],
         nf=8, ext_n_blocks=[1, 1, 1, 1], reffusion_n_blocks=[1, 1, 1, 1], lr_block_size=4, dilations=[1, 2]),
], ids=["nafnet", "restormer", "promptir"])
def test_refined_path_builds_for_every_guided_backbone_non_square_with_another_ref_size(spec):
    net = _build(spec).train()
    assert net.reference_mode == "refined" and any(k.startswith("masa_gate") for k in net.state_dict())
    x, ref = _photo((45, 70)), _photo((90, 56), top=10, left=30)
    out = net(x, ref)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None for p in net.masa_enc.parameters())
    warped = net.warp_reference_image(x, ref)
    assert warped.shape == x.shape


def test_masa_mode_keeps_the_authors_layout_and_refined_adds_only_gate_and_pixel_conv():
    masa, refined = _build(TINY_NAFNET, "masa").state_dict(), _build(TINY_NAFNET).state_dict()
    assert set(refined) - set(masa) == {"masa_gate.weight", "masa_gate.bias", "masa_ref_pixels.weight",
                                        "masa_ref_pixels.bias"}
    assert set(masa) <= set(refined)
    with pytest.raises(ValueError, match="reference_mode"):
        ARCH_REGISTRY.build({**TINY_NAFNET, "reference_mode": "fancy"})
    with pytest.raises(ValueError, match="refine_window"):
        ARCH_REGISTRY.build({**TINY_NAFNET, "reference_mode": "refined", "refine_window": 4})


def test_gate_closes_for_dissimilar_matches():
    gate = MatchGate(1)
    feat = torch.ones(1, 2, 2, 2)
    from textualdeg.restoration.reference.refined import Correspondence

    sims = torch.tensor([[[[1.0, 0.0], [-1.0, 0.5]]]])
    with torch.no_grad():
        out = gate([feat], [Correspondence(identity_correspondence(1, (2, 2)), sims)])[0]
    assert out[0, 0, 0, 0] > 0.95 and out[0, 0, 1, 0] < 0.05 and abs(float(out[0, 0, 0, 1]) - 0.5) < 1e-6


def test_fresh_refined_model_computes_the_plain_backbone():
    """Fusion and pixel convolution start at identity/zero: a guided model holding a plain
    NAFNet's weights computes that NAFNet (on sizes that are multiples of pad_multiple)."""
    guided = _build(TINY_NAFNET)
    plain = ARCH_REGISTRY.build({k: v for k, v in TINY_NAFNET.items() if k in (
        "type", "img_channel", "width", "middle_blk_num", "enc_blk_nums", "dec_blk_nums")} | {"type": "NAFNet"})
    plain.load_state_dict({k: v for k, v in guided.state_dict().items() if not k.startswith("masa_")})
    x = _photo((32, 48))
    assert torch.allclose(guided(x, _photo((40, 40), top=5)), plain.eval()(x), atol=1e-6)


def test_refined_matcher_rejects_mismatched_pyramids_and_even_windows():
    with pytest.raises(ValueError, match="refine_window"):
        RefinedMatcher(refine_window=2)
    matcher = RefinedMatcher(block_size=4, dilations=(1,))
    with pytest.raises(ValueError, match="levels"):
        matcher([torch.randn(1, 4, 16, 16)], [torch.randn(1, 4, 16, 16), torch.randn(1, 8, 8, 8)])


def test_move_targets_follow_the_shift_and_zoom_at_every_scale():
    from textualdeg.restoration.reference.refined import Move, _moved_targets

    move = Move(shift=(3.0, -2.0))
    target, valid = _moved_targets(1, (16, 16), (16, 16), move, 1, torch.device("cpu"))
    offset = torch.tensor([3, -2]).view(1, 2, 1, 1).expand(1, 2, 16, 16)
    assert torch.equal(target - identity_correspondence(1, (16, 16)), offset)
    assert valid[0, 1:12, 3:15].all() and not valid[0, 12:].any() and not valid[0, :, :3].any()
    # a zoom by 1.5 about the image centre (15.5) at a level of cells of 4 px: cell 3 is
    # centred at 13.5 px -> 12.5 px -> cell 2.75; cell 6 at 25.5 -> 30.5 -> 7.25; cell 1 -> -0.25
    target, _ = _moved_targets(1, (8, 8), (32, 32), Move(zoom=(1.5, 1.5)), 4, torch.device("cpu"))
    assert target[0, :, 3, 6].tolist() == [3, 7] and target[0, :, 1, 6].tolist() == [0, 7]
    # the moved image puts clean(p) at the moved place (integer path and bilinear path agree)
    image = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    moved = move.apply(image)
    assert torch.equal(moved[:, :, 3 + 5, 7 - 2], image[:, :, 5, 7])
    near = Move(shift=(3.0, -2.0), zoom=(1.0 + 1e-12, 1.0)).apply(image)
    assert (near - moved)[..., 4:-4, 4:-4].abs().max() < 1e-9
    drawn = Move.draw(4, 1.5, torch.Generator().manual_seed(0))
    assert all(abs(s) <= 4 for s in drawn.shift) and all(1 / 1.5 <= z <= 1.5 for z in drawn.zoom)
    assert drawn == Move.draw(4, 1.5, torch.Generator().manual_seed(0))


def test_multi_scale_matching_keeps_an_aligned_reference_exact_and_needs_the_refined_path():
    x = _photo((64, 64))
    net = ARCH_REGISTRY.build({**TINY_NAFNET, "reference_mode": "refined", "ref_scales": [0.667, 1.0, 1.5]}).eval()
    assert (net.warp_reference_image(x, x) - x).abs().max() < 1e-6  # scale 1 matches perfectly everywhere
    out = net(x, _photo((40, 56), top=7))
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="ref_scales"):
        ARCH_REGISTRY.build({**TINY_NAFNET, "ref_scales": [0.5, 1.0]})
    with pytest.raises(ValueError, match="ref_scales"):
        ARCH_REGISTRY.build({**TINY_NAFNET, "reference_mode": "refined", "ref_scales": [0]})
