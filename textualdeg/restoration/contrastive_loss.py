"""DSRIR's positive contrastive regularisation (a term of ``stage_losses.DSRIRLoss``).

Paper: "DSRIR: Dynamic spatial refinement learning for progressive all-in-one image
restoration" (no authors, venue or arXiv id in the official README), whose training
adds ``0.2 *`` this loss to the stage losses; used with DSRIR as a backbone for "Improving
Image Restoration through Removing Degradations in Textual Representations" (Lin et al.,
CVPR 2024, arXiv:2312.17334).

Re-implemented from xfwang23/DSRIR@31f8e1f42848cd2a41f0be7c172e506601cdd563
``losses/loss.py`` (``Vgg19``, ``PositiveContrastLoss``; no license file upstream) and its
call in ``train.py`` (``criterion_pocl(restored[0], target, restored[1], restored[2], input_)``).
On frozen VGG19 features at relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 (torchvision
``features[:2]``, ``[2:7]``, ``[7:12]``, ``[12:21]``, ``[21:30]``), the final restored image
(anchor) is pulled towards three positives and pushed from one negative, per layer i::

    loss = sum_i lw_i * (w0 * |a_i - gt_i| + w1 * |a_i - s2_i| + w2 * |a_i - s1_i|)
                        / (|a_i - lq_i| + 1e-7)

with ``|.|`` the mean absolute difference, ``a`` the final image, ``gt`` the ground truth
(strong positive), ``s2`` / ``s1`` the images of stages 2 and 1 (normal and weak
positives), ``lq`` the degraded input (negative), layer weights ``lw = (1/32, 1/16, 1/8,
1/4, 1)`` and positive weights ``w = (1, 0.25, 0.125)`` (the official ``layer_weights``
and ``neg_weights``; despite that name the latter weigh the positives).

As in the official code: images enter VGG in [0, 1] without ImageNet normalisation; the
ground-truth and input features carry no gradient, the stage-2 and stage-1 features do
(so the earlier stages are pulled towards the final image too).

Differences: the ImageNet VGG19 weights come from a local file (no download); the five
VGG passes run as two batched passes (one with gradients for the predictions, one
without for ground truth and input), which changes nothing but float rounding; a
prediction may also be a single image (only the ground-truth positive is then used), so
any backbone can take this loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.log import get_logger

__all__ = ["PositiveContrastLoss", "VGG19Features"]

logger = get_logger(__name__)

# torchvision vgg19 ``features`` indices just after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)
LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
POSITIVE_WEIGHTS = (1.0, 0.25, 0.125)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


class VGG19Features(nn.Module):
    """Frozen torchvision VGG19 ``features[:30]``, returning relu1_1 ... relu5_1.

    Args:
        weights (str | os.PathLike | None): a torchvision ``vgg19`` state-dict file
            (``.pth`` as torchvision saves it, e.g. ``vgg19-dcbb9e9d.pth``, or
            ``.safetensors``); only its ``features.*`` entries are read. None: random
            weights (tests only; a warning is logged). Nothing is downloaded.
    """

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        import torchvision

        # Built on the meta device: the classifier (120 M weights) is never allocated.
        with torch.device("meta"):
            features = torchvision.models.vgg19(weights=None).features[: VGG19_SLICE_ENDS[-1]]
        features = features.to_empty(device="cpu")
        if weights is None:
            logger.warning("VGG19Features: random weights (weights=None); use a VGG19 file for training")
            for module in features.modules():
                if isinstance(module, nn.Conv2d):  # torchvision's initialisation
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"VGG19 weights file not found: {str(path)!r}")
            state = {
                k[len("features."):]: v for k, v in _read_state_dict(path).items() if k.startswith("features.")
            }
            wanted = features.state_dict().keys()
            missing = [k for k in wanted if k not in state]
            if missing:
                raise ValueError(f"{path} is not a torchvision vgg19 state dict: missing features.{missing[0]} "
                                 f"(and {len(missing) - 1} more)")
            features.load_state_dict({k: state[k] for k in wanted}, strict=True)
        features.requires_grad_(False)
        self.features = features.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (B, 3, H, W) in [0, 1]. Returns the five relu_1 features, (B, C_i, H/2**i, W/2**i)."""
        outs, start = [], 0
        for end in VGG19_SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


class PositiveContrastLoss(nn.Module):
    """DSRIR's positive contrastive regularisation on VGG19 features (see the module doc).

    Args:
        loss_weight (float): multiplier of the loss (the official training uses 0.2).
            Default 1.0.
        vgg_weights (str | None): torchvision VGG19 state-dict file (ImageNet weights);
            None: random weights, for tests only. Default None.
        layer_weights (Sequence[float]): weights of relu1_1 ... relu5_1. Default
            (1/32, 1/16, 1/8, 1/4, 1).
        positive_weights (Sequence[float]): weights of the ground truth, then of the
            further predictions (stage 2, stage 1). Default (1, 0.25, 0.125).
        eps (float): added to the negative distance. Default 1e-7.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        vgg_weights: str | None = None,
        layer_weights: Sequence[float] = LAYER_WEIGHTS,
        positive_weights: Sequence[float] = POSITIVE_WEIGHTS,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
            raise ValueError(f"loss_weight must be a number, got {loss_weight!r}")
        self.layer_weights = _weights("layer_weights", layer_weights, length=len(VGG19_SLICE_ENDS))
        self.positive_weights = _weights("positive_weights", positive_weights)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.loss_weight = float(loss_weight)
        self.eps = float(eps)
        self.vgg = VGG19Features(vgg_weights)

    def forward(
        self, pred: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, lq: torch.Tensor
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: (B, 3, H, W) restored image in [0, 1], or a sequence of them, final
                first (``DSRIR.forward_stages(x).images``: stages 3, 2, 1); at most
                ``len(positive_weights)``.
            target: (B, 3, H, W) ground truth in [0, 1].
            lq: (B, 3, H, W) degraded input in [0, 1].

        Returns:
            Scalar tensor.
        """
        preds = [pred] if isinstance(pred, torch.Tensor) else list(pred)
        if not 1 <= len(preds) <= len(self.positive_weights):
            raise ValueError(
                f"PositiveContrastLoss takes 1 to {len(self.positive_weights)} predictions "
                f"(one per positive weight), got {len(preds)}"
            )
        shape = tuple(target.shape)
        for name, t in [("target", target), ("lq", lq)] + [(f"pred[{i}]", p) for i, p in enumerate(preds)]:
            if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 3 or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"PositiveContrastLoss: {name} must be (B, 3, H, W) like target {shape}, got {got}")
        n, b = len(preds), shape[0]
        feats = [f.split(b) for f in self.vgg(torch.cat(preds))]  # per layer: n x (B, C_i, h_i, w_i)
        with torch.no_grad():
            fixed = [f.split(b) for f in self.vgg(torch.cat([target, lq]))]  # per layer: (target, lq)
        loss = target.new_zeros(())
        for lw, pred_f, (target_f, lq_f) in zip(self.layer_weights, feats, fixed):
            anchor = pred_f[0]
            positive = self.positive_weights[0] * F.l1_loss(anchor, target_f)
            for j in range(1, n):
                positive = positive + self.positive_weights[j] * F.l1_loss(anchor, pred_f[j])
            loss = loss + lw * positive / (F.l1_loss(anchor, lq_f) + self.eps)
        return self.loss_weight * loss


def _weights(name: str, value, length: int | None = None) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}")
    items = tuple(value)
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in items):
        raise ValueError(f"{name} must be a non-empty sequence of numbers >= 0, got {value!r}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries (relu1_1 ... relu5_1), got {value!r}")
    return tuple(float(v) for v in items)
