"""restore_tensor(): padding, tiled inference equal to untiled for local models, x8 self-ensemble; resolve_device()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textualdeg.restoration.inference import pad_to_multiple, resolve_device, restore_tensor


class LocalNet(nn.Module):
    """Three 3x3 convs with a residual: receptive-field radius 3, output depends on position only locally."""

    def __init__(self, pad_multiple: int = 4) -> None:
        super().__init__()
        self.pad_multiple = pad_multiple
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1),
                                  nn.GELU(), nn.Conv2d(8, 3, 3, padding=1))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.pad_multiple == 0 and x.shape[-1] % self.pad_multiple == 0
        self.seen.append(tuple(x.shape))
        return x + self.body(x)


class GuidedLocalNet(LocalNet):
    """LocalNet plus a per-image term computed from the whole reference."""

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        self.refs = getattr(self, "refs", []) + [tuple(ref.shape)]
        return super().forward(x) + ref.mean(dim=(1, 2, 3), keepdim=True)


class Identity(nn.Module):
    pad_multiple = 8

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return x.clone()


@pytest.fixture(scope="module")
def photo_batch() -> torch.Tensor:
    """(2, 3, 100, 150) crops of two photographs in [0, 1] (sizes not multiples of 4)."""
    from skimage import data

    crops = [data.astronaut()[150:250, 150:300], data.coffee()[100:200, 200:350]]
    return torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 255.0 for c in crops])


def test_pad_to_multiple_reflects():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    padded = pad_to_multiple(x, 4, mode="reflect")
    assert padded.shape == (1, 2, 8, 8)
    assert torch.equal(padded[..., :5, :7], x)
    assert torch.equal(padded[..., 5, :7], x[..., 3, :])  # reflect without repeating the edge
    assert pad_to_multiple(x, 1, mode="reflect") is x


def test_untiled_pads_and_crops(photo_batch):
    torch.manual_seed(0)
    model = LocalNet().eval()
    out = restore_tensor(model, photo_batch)
    assert out.shape == photo_batch.shape
    assert model.seen == [(2, 3, 100, 152)]
    padded = pad_to_multiple(photo_batch, 4, mode="reflect")
    assert torch.allclose(out, model(padded)[..., :100, :150])


@pytest.mark.parametrize("tile", [32, 48, 64])
def test_tiled_equals_untiled_for_local_model(photo_batch, tile):
    torch.manual_seed(0)
    model = LocalNet().eval()
    full = restore_tensor(model, photo_batch)
    model.seen.clear()
    tiled = restore_tensor(model, photo_batch, tile=tile, tile_overlap=16)
    assert len(model.seen) > 4 and all(s[-1] <= tile and s[-2] <= tile for s in model.seen)
    assert (tiled - full).abs().max().item() <= 1e-4


def test_too_small_overlap_shows_seams(photo_batch):
    """The equality above is not automatic: an overlap smaller than the receptive field breaks it."""
    torch.manual_seed(0)
    model = LocalNet().eval()
    full = restore_tensor(model, photo_batch)
    tiled = restore_tensor(model, photo_batch, tile=32, tile_overlap=4)
    assert (tiled - full).abs().max().item() > 1e-3


def test_guided_tiles_receive_the_full_reference(photo_batch):
    torch.manual_seed(0)
    model = GuidedLocalNet().eval()
    ref = torch.rand(2, 3, 64, 96)
    full = restore_tensor(model, photo_batch, ref=ref)
    model.refs = []
    tiled = restore_tensor(model, photo_batch, ref=ref, tile=48, tile_overlap=16)
    assert len(model.refs) > 1 and set(model.refs) == {(2, 3, 64, 96)}
    assert (tiled - full).abs().max().item() <= 1e-4


def test_tiled_equals_untiled_for_tiny_nafnet(photo_batch):
    archs = pytest.importorskip("textualdeg.restoration.archs")
    torch.manual_seed(0)
    # a fresh NAFNet's blocks are identities (beta = gamma = 0): a local conv U-Net
    model = archs.NAFNet(width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1)).eval()
    x = photo_batch[:, :, :62, :90]  # 2 x 4 tiles
    full = restore_tensor(model, x)
    tiled = restore_tensor(model, x, tile=48, tile_overlap=32)
    assert full.shape == x.shape
    assert (tiled - full).abs().max().item() <= 1e-4
    # trained blocks use global pooling (simplified channel attention): tiling then only
    # approximates the whole-image result, which is why a TLC model (NAFNetLocal) exists
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)
    approx = restore_tensor(model, x, tile=48, tile_overlap=32)
    assert approx.shape == x.shape and torch.isfinite(approx).all()


def test_self_ensemble_of_identity_returns_input(photo_batch):
    out = restore_tensor(Identity(), photo_batch, self_ensemble=True)
    assert torch.allclose(out, photo_batch, atol=1e-7)
    out = restore_tensor(Identity(), photo_batch, ref=torch.rand(2, 3, 40, 60), tile=64, tile_overlap=16,
                  self_ensemble=True)
    assert torch.allclose(out, photo_batch, atol=1e-6)


def test_self_ensemble_averages_the_eight_transforms(photo_batch):
    torch.manual_seed(0)
    model = LocalNet(pad_multiple=1).eval()
    x = photo_batch[:, :, :64, :64]
    expected = torch.zeros_like(x)
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                t = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                y = torch.rot90(model(t), -k, dims=(-2, -1))
                expected += (y.flip(-1) if flip else y) / 8
    out = restore_tensor(model, x, self_ensemble=True)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, restore_tensor(model, x), atol=1e-4)  # the model is not equivariant


def test_bad_arguments(photo_batch):
    model = LocalNet()
    with pytest.raises(ValueError, match="tile_overlap"):
        restore_tensor(model, photo_batch, tile=32, tile_overlap=32)
    with pytest.raises(ValueError, match="tile"):
        restore_tensor(model, photo_batch, tile=0)
    with pytest.raises(ValueError, match="lq"):
        restore_tensor(model, photo_batch[0])
    with pytest.raises(ValueError, match="ref"):
        restore_tensor(model, photo_batch, ref=torch.rand(1, 3, 8, 8))


def test_resolve_device():
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device() == resolve_device(None) == resolve_device("auto") == auto
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"test\.device 'gpu0': expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0", "test.device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device 'cuda:1': no CUDA device is available"):
            resolve_device("cuda:1", "--device")
