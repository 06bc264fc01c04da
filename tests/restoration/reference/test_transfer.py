"""PatchTransfer: identity and shifted correspondences reproduce the reference, the
confidence scales the output, the gather formulation equals the authors' unfold/fold
formulation at every scale (batch 2, non-square), gradients reach features and
confidence, shape errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textualdeg.restoration.reference.matching import CoarseToFineMatcher, Match, gather_windows
from textualdeg.restoration.reference.transfer import PatchTransfer


def _pyramid(n: int, c: int, h: int, w: int, levels: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # finest first: level j at scale 2**(levels-1-j) of the deepest (h, w)
    scales = [2 ** (levels - 1 - j) for j in range(levels)]
    return [torch.randn(n, c * 2**j, h * s, w * s, generator=g) for j, s in enumerate(scales)]


def _match(ref_y, ref_x, conf, block: int, ref_size) -> Match:
    n, h, w = ref_y.shape
    zeros = torch.zeros(n, h // block, w // block, dtype=torch.long)
    return Match(ref_y, ref_x, conf, zeros, zeros, (3, 3), block, ref_size)


def test_identity_and_shifted_correspondences_copy_the_reference() -> None:
    feats = _pyramid(1, 2, 8, 12, levels=3, seed=0)  # deepest (1, 8, 8, 12)
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(8), indexing="ij")
    dy, dx = 1, 3  # input grid 6x8 (blocks of 2) matched to ref at +(1, 3)
    match = _match((ys + dy)[None], (xs + dx)[None], torch.ones(1, 1, 6, 8), 2, (8, 12))
    out = PatchTransfer()(feats, match)
    for j, (f, o) in enumerate(zip(feats, out)):
        s = 2 ** (2 - j)
        assert o.shape == (1, f.shape[1], 6 * s, 8 * s)
        torch.testing.assert_close(o, f[:, :, dy * s : (dy + 6) * s, dx * s : (dx + 8) * s])


def test_confidence_scales_the_output() -> None:
    feats = _pyramid(1, 2, 6, 6, levels=2, seed=1)
    ys, xs = torch.meshgrid(torch.arange(1, 5), torch.arange(1, 5), indexing="ij")  # patch centres inside
    full = PatchTransfer()(feats, _match(ys[None], xs[None], torch.ones(1, 1, 4, 4), 2, (6, 6)))
    half = PatchTransfer()(feats, _match(ys[None], xs[None], torch.full((1, 1, 4, 4), 0.5), 2, (6, 6)))
    for a, b in zip(full, half):
        torch.testing.assert_close(b, 0.5 * a)


def _authors_transfer(feat: torch.Tensor, match: Match, s: int) -> torch.Tensor:
    """unfold windows (kernel 3s, stride s) -> pick matched patch -> fold (padding s) /
    fold(ones) * per-block bilinear confidence, as in the authors' ``transfer``."""
    n, h, w = match.ref_y.shape
    k = match.block_size
    py, px = h // k, w // k
    win_h, win_w = match.window_size
    y0, x0 = match.window_y0.view(n, -1), match.window_x0.view(n, -1)
    windows = gather_windows(feat, y0, x0, (win_h, win_w), scale=s)  # (N*P, C, win_h*s, win_w*s)
    unfolded = F.unfold(windows, kernel_size=3 * s, stride=s)  # (N*P, C*9s^2, L)

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (N, H, W) -> (N*P, k*k)
        return t.view(n, py, k, px, k).permute(0, 1, 3, 2, 4).reshape(n * py * px, k * k)

    local = (blocks(match.ref_y) - y0.reshape(-1, 1) - 1) * (win_w - 2) + blocks(match.ref_x) - x0.reshape(-1, 1) - 1
    picked = torch.gather(unfolded, 2, local[:, None, :].expand(-1, unfolded.shape[1], -1))
    folded = F.fold(picked, (k * s, k * s), kernel_size=3 * s, padding=s, stride=s)
    divisor = F.fold(torch.ones_like(picked), (k * s, k * s), kernel_size=3 * s, padding=s, stride=s)
    conf = match.confidence.view(n, 1, py, k, px, k).permute(0, 2, 4, 1, 3, 5).reshape(n * py * px, 1, k, k)
    conf = F.interpolate(conf, size=(k * s, k * s), mode="bilinear", align_corners=False)
    out = folded / divisor * conf  # (N*P, C, k*s, k*s)
    c = feat.shape[1]
    return out.view(n, py, px, c, k * s, k * s).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h * s, w * s)


def test_gather_formulation_equals_authors_fold() -> None:
    lq = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    feats = _pyramid(2, 4, 10, 6, levels=3, seed=3)  # deepest (2, 16, 10, 6): non-square, other size
    match = CoarseToFineMatcher(block_size=4, dilations=(1, 2))(lq, feats[-1])
    out = PatchTransfer()(feats, match)
    for j, feat in enumerate(feats):
        torch.testing.assert_close(out[j], _authors_transfer(feat, match, 2 ** (2 - j)), atol=1e-6, rtol=1e-5)


def test_gradients_reach_features_and_confidence() -> None:
    feats = [f.requires_grad_() for f in _pyramid(1, 2, 8, 8, levels=2, seed=4)]
    lq = torch.randn(1, 4, 8, 8, requires_grad=True)
    match = CoarseToFineMatcher(block_size=4, dilations=(1,))(lq, feats[-1])
    sum(o.sum() for o in PatchTransfer()(feats, match)).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    assert lq.grad.abs().sum() > 0  # through the confidence


def test_level_of_wrong_size_is_rejected() -> None:
    ys, xs = torch.meshgrid(torch.arange(1, 3), torch.arange(1, 3), indexing="ij")
    match = _match(ys[None], xs[None], torch.ones(1, 1, 2, 2), 2, (4, 4))
    with pytest.raises(ValueError, match=r"\(1, 2, 6, 8\)"):
        PatchTransfer()([torch.zeros(1, 2, 6, 8), torch.zeros(1, 4, 4, 4)], match)
