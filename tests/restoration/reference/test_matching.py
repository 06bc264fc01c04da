"""CoarseToFineMatcher: finds a known shift (also per batch element and on non-square
pairs), agrees with a straightforward per-block loop, keeps windows inside small
references (the authors' D55), and checks its inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textualdeg.restoration.reference.matching import CoarseToFineMatcher, Match, gather_windows


def _features(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, c, h, w, generator=g)


def _crop_pair(canvas: torch.Tensor, h: int, w: int, dy: int, dx: int) -> torch.Tensor:
    return canvas[:, :, dy : dy + h, dx : dx + w]


@pytest.mark.parametrize("lq_size, ref_size", [((16, 16), (24, 24)), ((16, 24), (40, 32))])
def test_finds_the_shift_of_a_shifted_copy(lq_size, ref_size) -> None:
    h, w = lq_size
    refs = [_features(6, *ref_size, seed=1), _features(6, *ref_size, seed=2)]
    shifts = [(3, 5), (7, 2)]  # one per batch element
    lq = torch.cat([_crop_pair(r, h, w, dy, dx) for r, (dy, dx) in zip(refs, shifts)])
    ref = torch.cat(refs)
    match = CoarseToFineMatcher(block_size=8, dilations=(1, 2, 3))(lq, ref)
    assert match.ref_y.shape == (2, h, w) and match.confidence.shape == (2, 1, h, w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    inner = (slice(1, h - 1), slice(1, w - 1))  # border 3x3 patches contain replicated pixels
    for n, (dy, dx) in enumerate(shifts):
        assert torch.equal(match.ref_y[n][inner], (ys + dy)[inner])
        assert torch.equal(match.ref_x[n][inner], (xs + dx)[inner])
        torch.testing.assert_close(match.confidence[n, 0][inner], torch.ones(h - 2, w - 2))


def _loop_reference(matcher: CoarseToFineMatcher, lq: torch.Tensor, ref: torch.Tensor):
    """The search written block by block, as the method describes it."""
    n_, c, h, w = lq.shape
    hr, wr = ref.shape[2:]
    k = matcher.block_size
    win_h, win_w = matcher.window_size((h, w), (hr, wr))
    dh, dw = matcher.diameters((h, w), (hr, wr))
    padded = F.pad(lq, (1, 1, 1, 1), mode="replicate")
    ref_y = torch.zeros(n_, h, w, dtype=torch.long)
    ref_x = torch.zeros(n_, h, w, dtype=torch.long)
    conf = torch.zeros(n_, 1, h, w)
    for n in range(n_):
        for by in range(h // k):
            for bx in range(w // k):
                block = padded[n, :, by * k : by * k + k + 2, bx * k : bx * k + k + 2]
                ctr = (k + 2) // 2
                score = torch.zeros(hr, wr)
                for d in matcher.dilations:
                    q = F.normalize(block[:, ctr - d : ctr + d + 1 : d, ctr - d : ctr + d + 1 : d].reshape(-1), dim=0)
                    cand = F.unfold(ref[n : n + 1], 3, dilation=d, padding=d)[0]  # (C*9, Hr*Wr)
                    score += (q @ F.normalize(cand, dim=0)).view(hr, wr)
                best = int(score.argmax())
                y0 = min(max(best // wr - dh // 2 - 1, 0), hr - win_h)
                x0 = min(max(best % wr - dw // 2 - 1, 0), wr - win_w)
                window = ref[n, :, y0 : y0 + win_h, x0 : x0 + win_w]
                for i in range(k):
                    for j in range(k):
                        q = F.normalize(block[:, i : i + 3, j : j + 3].reshape(-1), dim=0)
                        best_v, best_p = -2.0, None
                        for u in range(win_h - 2):
                            for v in range(win_w - 2):
                                s = float(q @ F.normalize(window[:, u : u + 3, v : v + 3].reshape(-1), dim=0))
                                if s > best_v:
                                    best_v, best_p = s, (u, v)
                        ref_y[n, by * k + i, bx * k + j] = y0 + best_p[0] + 1
                        ref_x[n, by * k + i, bx * k + j] = x0 + best_p[1] + 1
                        conf[n, 0, by * k + i, bx * k + j] = best_v
    return ref_y, ref_x, conf


def test_vectorised_search_equals_block_loop() -> None:
    lq = torch.cat([_features(3, 8, 12, seed=3), _features(3, 8, 12, seed=4)])  # non-square, 2x3 blocks
    ref = torch.cat([_features(3, 10, 7, seed=5), _features(3, 10, 7, seed=6)])
    matcher = CoarseToFineMatcher(block_size=4, window_scale=1.5, dilations=(1, 2))
    match = matcher(lq, ref)
    ref_y, ref_x, conf = _loop_reference(matcher, lq, ref)
    assert torch.equal(match.ref_y, ref_y) and torch.equal(match.ref_x, ref_x)
    torch.testing.assert_close(match.confidence, conf, atol=1e-5, rtol=1e-5)


def test_window_is_clamped_into_a_small_reference() -> None:
    # Authors' arithmetic on a 16x16 input and an 8x8 reference: diameter 7, window 9 > 8,
    # so their window started at -1 and wrapped around (D55). Here it is the whole reference.
    matcher = CoarseToFineMatcher(block_size=8)
    lq, ref = _features(4, 16, 16, seed=7), _features(4, 8, 8, seed=8)
    assert matcher.diameters((16, 16), (8, 8)) == (7, 7)
    match = matcher(lq, ref)
    assert match.window_size == (8, 8)
    assert int(match.window_y0.min()) == 0 and int(match.window_x0.min()) == 0
    for t, size in ((match.ref_y, 8), (match.ref_x, 8)):
        assert int(t.min()) >= 1 and int(t.max()) <= size - 2  # 3x3 patch centres inside ref
    # a window near the border of a larger reference is shifted inside, not cut
    wide = CoarseToFineMatcher(block_size=8)(lq, _features(4, 40, 40, seed=9))
    hw = wide.window_size
    assert hw == (33, 33)
    assert int(wide.window_y0.min()) >= 0 and int((wide.window_y0 + hw[0]).max()) <= 40


def test_gather_windows_scales_origins() -> None:
    feat = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    y0 = torch.tensor([[0, 1], [2, 0]])
    x0 = torch.tensor([[1, 0], [0, 2]])
    win = gather_windows(feat, y0, x0, (2, 1), scale=2)  # (N*P, C, 4, 2)
    assert win.shape == (4, 1, 4, 2)
    torch.testing.assert_close(win[3, 0], feat[1, 0, 0:4, 4:6])
    torch.testing.assert_close(win[2, 0], feat[1, 0, 4:8, 0:2])


def test_confidence_is_differentiable() -> None:
    lq = _features(3, 8, 8, seed=10).requires_grad_()
    ref = _features(3, 12, 12, seed=11).requires_grad_()
    match = CoarseToFineMatcher(block_size=4, dilations=(1,))(lq, ref)
    assert isinstance(match, Match)
    match.confidence.sum().backward()
    assert lq.grad.abs().sum() > 0 and ref.grad.abs().sum() > 0


def test_input_checks() -> None:
    matcher = CoarseToFineMatcher(block_size=4, dilations=(1, 2))
    with pytest.raises(ValueError, match=r"multiples of block_size=4.*\(1, 3, 6, 8\)"):
        matcher(torch.zeros(1, 3, 6, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\).*\(1, 4, 8, 8\)"):
        matcher(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="at least 3x3"):
        matcher(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 2, 8))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(block_size=0), "block_size"),
        (dict(window_scale=-1.0), "window_scale"),
        (dict(dilations=(1, 5)), "dilations"),
    ],
)
def test_bad_arguments(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        CoarseToFineMatcher(**kwargs)
