"""DINOv2 window selection: the selection math, tiny DINOv2 folders and hub checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import nn

from textualdeg.restoration.dino_window import (
    DinoWindowSelector,
    load_dinov2,
    save_tiny_dinov2,
    window_offsets,
)


def _photo(step: int) -> torch.Tensor:
    """The astronaut photograph as (1, 3, H, W) in [0, 1]."""
    image = skdata.astronaut()[::step, ::step].astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()


def _pool_features(x: torch.Tensor) -> torch.Tensor:
    """A stub extractor: 4x4 average colours as tokens, centred. (N, 3, H, W) -> (N, P, 3)."""
    return F.avg_pool2d(x, 4).flatten(2).transpose(1, 2) - 0.5


# -- selection math (no transformers) ----------------------------------------------------
def test_offsets_cover_the_last_window():
    assert window_offsets(512, 384, 96).tolist() == [0, 96, 128]  # the authors try 0 and 96 only (D24)
    assert window_offsets(512, 384, 96, cover_edge=False).tolist() == [0, 96]
    assert window_offsets(512, 256, 64).tolist() == [0, 64, 128, 192, 256]
    with pytest.raises(ValueError, match="longer"):
        window_offsets(100, 101, 10)


def test_selection_finds_each_samples_window_including_the_edge():
    ref = _photo(8).repeat(3, 1, 1, 1)  # (3, 3, 64, 64)
    spots = [(0, 0), (18, 30), (40, 40)]  # window 24, stride 6: (40, 40) exists only as the edge offset
    lq = torch.stack([ref[i, :, y : y + 24, x : x + 24] for i, (y, x) in enumerate(spots)])
    selector = DinoWindowSelector(_pool_features, patch_size=4)
    crops, offsets, scores = selector.select(lq, ref)
    assert offsets.tolist() == [list(s) for s in spots]
    torch.testing.assert_close(crops, lq)
    assert scores.shape == (3, 8 * 8) and torch.allclose(scores.max(dim=1).values, torch.ones(3))
    no_edges = DinoWindowSelector(_pool_features, patch_size=4, cover_edges=False)
    assert no_edges.select(lq, ref)[1][2].tolist() != [40, 40]


def test_selection_with_a_scaled_window_and_gray_input():
    full = _photo(4)  # 128 x 128
    ref = F.interpolate(full, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)  # 64 x 64
    lq = full[:, :, 48:96, 32:80]  # 48 x 48 at (48, 32) -> (24, 16) in the half-size reference
    selector = DinoWindowSelector(_pool_features, patch_size=4, stride_divisor=3)
    crops, offsets, _ = selector.select(lq, ref, window=(24, 24))
    assert offsets.tolist() == [[24, 16]] and crops.shape == (1, 3, 48, 48)
    gray = DinoWindowSelector(_pool_features, patch_size=4, stride_divisor=3)
    assert gray.select(lq.mean(1, keepdim=True), ref.mean(1, keepdim=True), window=(24, 24))[1].tolist() == [[24, 16]]


def test_a_reference_smaller_than_the_window_is_enlarged():
    ref = _photo(16)  # 32 x 32
    lq = _photo(8)[:, :, :48, :48]
    crops = DinoWindowSelector(_pool_features, patch_size=4)(lq, ref)
    assert crops.shape == (1, 3, 48, 48)
    with pytest.raises(ValueError, match="channels"):
        DinoWindowSelector(_pool_features)(lq, ref[:, :2])



def test_shared_selector_loads_once_per_weights_path(monkeypatch):
    from textualdeg.restoration import dino_window

    loads = []

    def fake_from_pretrained(path, device="cpu"):
        loads.append((path, device))
        return DinoWindowSelector(_pool_features)

    monkeypatch.setattr(dino_window, "_SHARED_SELECTORS", {})
    monkeypatch.setattr(DinoWindowSelector, "from_pretrained", staticmethod(fake_from_pretrained))
    first = dino_window.shared_selector("dino_a")
    assert dino_window.shared_selector("dino_a") is first
    assert dino_window.shared_selector("dino_b") is not first
    assert loads == [("dino_a", "cpu"), ("dino_b", "cpu")]

def test_importing_restoration_does_not_import_transformers():
    code = ("import sys, textualdeg.restoration, textualdeg.restoration.dino_window, textualdeg.data; "
            "sys.exit(int('transformers' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- transformers models -----------------------------------------------------------------
class _HubBlock(nn.Module):
    """facebookresearch/dinov2 ``NestedTensorBlock`` layout (plain attention, LayerScale)."""

    def __init__(self, dim: int, heads: int, swiglu: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ls1, self.ls2 = nn.Module(), nn.Module()
        self.ls1.gamma, self.ls2.gamma = nn.Parameter(torch.rand(dim)), nn.Parameter(torch.rand(dim))
        self.mlp = nn.Module()
        self.swiglu = swiglu
        if swiglu:
            hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8  # SwiGLUFFNFused
            self.mlp.w12, self.mlp.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)
        else:
            self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.attn.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        out = (q @ k.transpose(-2, -1)).softmax(-1) @ v  # (B, h, N, d)
        return self.attn.proj(out.transpose(1, 2).reshape(b, n, c))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            x1, x2 = self.mlp.w12(x).chunk(2, dim=-1)
            return self.mlp.w3(F.silu(x1) * x2)
        return self.mlp.fc2(F.gelu(self.mlp.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1.gamma * self._attention(self.norm1(x))
        return x + self.ls2.gamma * self._mlp(self.norm2(x))


class _HubViT(nn.Module):
    """A tiny DINOv2 in the torch-hub layout; forward returns the normed patch tokens."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, patch: int = 14, image: int = 42,
                 swiglu: bool = False) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image // patch) ** 2, dim))
        self.mask_token = nn.Parameter(torch.randn(1, dim))
        self.blocks = nn.ModuleList(_HubBlock(dim, heads, swiglu) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.normal_(self.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, P, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (B, 1+P, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:]


@pytest.mark.parametrize("variant", ["mlp", "swiglu", "wrapped"])
def test_hub_checkpoint_loads_with_the_same_output(tmp_path, variant):
    torch.manual_seed(0)
    hub = _HubViT(swiglu=variant == "swiglu").eval()
    state = hub.state_dict()
    if variant == "wrapped":  # a DINOv2 training checkpoint: teacher weights under backbone.
        state = {"teacher": {f"backbone.{k}": v for k, v in state.items()}, "iteration": 5}
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(state, path)
    model = load_dinov2(path, num_attention_heads=2)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    images = torch.rand(2, 3, 42, 42)
    with torch.no_grad():
        expected = hub(images)
        got = model(pixel_values=images).last_hidden_state[:, 1:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_hub_checkpoint_errors(tmp_path):
    path = tmp_path / "not_dino.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not_dino.pth"):
        load_dinov2(path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dinov2(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"), seed=3)


def test_tiny_dinov2_folder_round_trip(tiny_dino):
    assert (tiny_dino / "config.json").is_file() and (tiny_dino / "model.safetensors").is_file()
    from transformers import Dinov2Model

    model = load_dinov2(tiny_dino)
    assert isinstance(model, Dinov2Model) and model.config.hidden_size == 32
    again = load_dinov2(save_tiny_dinov2(tiny_dino.parent / "again", seed=3))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)  # the seed fixes the weights


def test_tiny_dinov2_finds_the_window_in_a_shifted_resized_reference(tiny_dino):
    full = _photo(2)  # 256 x 256
    shifted = full[:, :, 16:240, 24:248]  # the reference shows the scene moved by (-16, -24)
    ref = F.interpolate(shifted, size=(168, 168), mode="bilinear", antialias=True, align_corners=False)  # x0.75
    selector = DinoWindowSelector.from_pretrained(tiny_dino)
    generator = torch.Generator().manual_seed(0)
    for y, x in [(16, 24), (80, 120), (176, 184), (128, 72)]:
        lq = (full[:, :, y : y + 64, x : x + 64] + 0.05 * torch.randn(1, 3, 64, 64, generator=generator)).clamp(0, 1)
        _, offsets, _ = selector.select(lq, ref, window=(48, 48))
        assert offsets.tolist() == [[round((y - 16) * 0.75), round((x - 24) * 0.75)]]


def test_dataset_dino_crop_from_a_model_folder(tiny_dino, tmp_path):
    from textualdeg.data import PairedImageRefDataset
    from textualdeg.imageio import write_image

    image = skdata.astronaut()[::4, ::4].astype(np.float32) / 255.0
    for folder in ("gt", "lq", "ref"):
        write_image(tmp_path / folder / "a.png", image)
    ds = PairedImageRefDataset(dataroot_gt=str(tmp_path / "gt"), dataroot_lq=str(tmp_path / "lq"),
                               dataroot_ref=str(tmp_path / "ref"), gt_size=56, ref_crop="dino",
                               pretrain_dino=str(tiny_dino), use_hflip=False, use_rot=False)
    item = ds[0]
    assert item["ref"].shape == (3, 56, 56)
    # the chosen window is on the stride-14 grid and close to the LQ crop
    assert float((item["ref"] - item["gt"]).abs().mean()) < float((item["gt"] - item["gt"].mean()).abs().mean())


def test_a_folder_with_missing_weights_is_an_error(tiny_dino, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_dino / "config.json").read_text())
    weights = load_file(tiny_dino / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, broken / "model.safetensors")
    with pytest.raises(ValueError, match="layer.1"):
        load_dinov2(broken)
