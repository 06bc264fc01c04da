"""PositiveContrastLoss (DSRIR): value against a hand computation, weights from a local file
only, gradients (to every prediction, none to target or input), registry, bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textualdeg.restoration.contrastive_loss import VGG19_SLICE_ENDS, PositiveContrastLoss, VGG19Features


@pytest.fixture(scope="module")
def loss() -> PositiveContrastLoss:
    torch.manual_seed(0)
    return PositiveContrastLoss()  # random VGG weights


@pytest.fixture
def images(photo_rgb):
    g = torch.Generator().manual_seed(0)
    target = torch.from_numpy(photo_rgb[100:132, 150:182]).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)  # (2, 3, 32, 32)
    lq = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    preds = [(target + s * torch.randn(target.shape, generator=g)).clamp(0, 1) for s in (0.02, 0.05, 0.1)]
    return preds, target, lq


def _hand(vgg: VGG19Features, preds, target, lq) -> float:
    """The official formula, written out: five VGG passes, per-layer ratio of L1 means."""
    layers = list(vgg.features)
    lw, pw = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0), (1.0, 0.25, 0.125)

    def relu_k1(x):  # relu1_1 ... relu5_1 by hand from the layer list
        outs, start = [], 0
        for end in (2, 7, 12, 21, 30):
            x = nn.Sequential(*layers[start:end])(x)
            outs.append(x)
            start = end
        return outs

    a, gt, n = relu_k1(preds[0]), relu_k1(target), relu_k1(lq)
    others = [relu_k1(p) for p in preds[1:]]
    total = 0.0
    for i in range(5):
        pos = pw[0] * (a[i] - gt[i]).abs().mean()
        for j, o in enumerate(others, start=1):
            pos = pos + pw[j] * (a[i] - o[i]).abs().mean()
        total += lw[i] * (pos / ((a[i] - n[i]).abs().mean() + 1e-7)).item()
    return total


def test_value_matches_hand_computation(loss, images) -> None:
    preds, target, lq = images
    with torch.no_grad():
        assert loss(preds, target, lq).item() == pytest.approx(_hand(loss.vgg, preds, target, lq), rel=1e-5)
        assert loss(preds[0], target, lq).item() == pytest.approx(_hand(loss.vgg, preds[:1], target, lq), rel=1e-5)
        assert loss(target, target, lq).item() == 0.0  # the anchor equals its only positive
        weighted = PositiveContrastLoss(loss_weight=0.2)
        weighted.vgg.load_state_dict(loss.vgg.state_dict())
        assert weighted(preds, target, lq).item() == pytest.approx(0.2 * loss(preds, target, lq).item(), rel=1e-6)
    assert VGG19_SLICE_ENDS == (2, 7, 12, 21, 30)
    assert [type(loss.vgg.features[e - 1]) for e in VGG19_SLICE_ENDS] == [nn.ReLU] * 5


def test_gradients_reach_every_prediction_only(loss, images) -> None:
    preds, target, lq = images
    preds = [p.clone().requires_grad_() for p in preds]
    target, lq = target.clone().requires_grad_(), lq.clone().requires_grad_()
    loss(preds, target, lq).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in preds)
    assert target.grad is None and lq.grad is None
    assert all(p.grad is None for p in loss.parameters()) and not any(p.requires_grad for p in loss.parameters())


def test_weights_come_from_a_local_file(tmp_path, loss, images) -> None:
    import torchvision

    torch.manual_seed(1)
    with torch.device("meta"):
        full = torchvision.models.vgg19(weights=None)  # the layout of torchvision's vgg19-*.pth
    state = {f"features.{k}": v for k, v in loss.vgg.features.state_dict().items()}
    state.update({k: torch.zeros(v.shape) for k, v in full.state_dict().items() if k.startswith("classifier.0.b")})
    torch.save(state, tmp_path / "vgg19.pth")
    loaded = PositiveContrastLoss(vgg_weights=str(tmp_path / "vgg19.pth"))
    preds, target, lq = images
    with torch.no_grad():
        assert loaded(preds, target, lq).item() == loss(preds, target, lq).item()

    with pytest.raises(FileNotFoundError, match="missing_vgg19.pth"):
        PositiveContrastLoss(vgg_weights=str(tmp_path / "missing_vgg19.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth is not a torchvision vgg19 state dict: missing features.0.bias"):
        PositiveContrastLoss(vgg_weights=str(tmp_path / "partial.pth"))


def test_bad_inputs_and_arguments(loss, images) -> None:
    preds, target, lq = images
    with pytest.raises(ValueError, match="1 to 3 predictions .* got 4"):
        loss(preds + preds[:1], target, lq)
    with pytest.raises(ValueError, match=r"lq must be \(B, 3, H, W\) like target \(2, 3, 32, 32\), got \(2, 3, 16"):
        loss(preds, target, lq[..., :16, :])
    with pytest.raises(ValueError, match=r"pred\[1\] must be"):
        loss([preds[0], preds[1][:, :1]], target, lq)
    with pytest.raises(ValueError, match="layer_weights must have 5 entries"):
        PositiveContrastLoss(layer_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive_weights must be a non-empty"):
        PositiveContrastLoss(positive_weights=(1.0, -0.5))
    with pytest.raises(ValueError, match="loss_weight must be a number"):
        PositiveContrastLoss(loss_weight="0.2")
