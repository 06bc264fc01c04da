"""DINOv2 from local files: torch-hub checkpoints, transformers folders, tiny models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from textualdeg.pretrained.dinov2 import DinoFeatureExtractor, load_dinov2, save_tiny_dinov2


def test_importing_pretrained_does_not_import_transformers():
    code = "import sys, textualdeg.pretrained; sys.exit(int('transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


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


def test_a_folder_with_missing_weights_is_an_error(tiny_dino, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_dino / "config.json").read_text())
    weights = load_file(tiny_dino / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, broken / "model.safetensors")
    with pytest.raises(ValueError, match="layer.1"):
        load_dinov2(broken)


def test_feature_extractor_gives_patch_tokens_in_float32(tiny_dino):
    model = load_dinov2(tiny_dino, dtype=torch.bfloat16)
    extractor = DinoFeatureExtractor(model)
    tokens = extractor(torch.rand(2, 3, 42, 56))
    assert tokens.shape == (2, 3 * 4, 32) and tokens.dtype == torch.float32
