"""Registry-wide smoke test (timm style): every registered arch builds from a tiny config,
restores odd-sized photographs (a batch of 2) to the same shape, back-propagates, and rejects a wrong
channel count. Guided archs (``forward(x, ref)``) get a reference of another size."""

from __future__ import annotations

import inspect

import pytest
import torch

import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
from keylists import REFERENCE_DIR, SHARED_REFERENCE_DIR
from textualdeg.registry import ARCH_REGISTRY
from tiny_configs import TINY_CONFIGS


def _is_guided(cls) -> bool:
    return "ref" in inspect.signature(cls.forward).parameters


def _inputs(photo_rgb, cls, channels: int = 3, text_dim: int = 0):
    """A batch of 2 (SFNet normalises its dynamic filters over the batch in training).

    Archs that read an instruction (``forward(x, text_embedding)``) get 2 random embeddings,
    after the reference for those that take both (``forward(x, ref, text_embedding)``)."""
    x = torch.from_numpy(photo_rgb[:37, :53]).permute(2, 0, 1)[None][:, :channels]  # (1, 3, 37, 53)
    x = torch.cat([x, x.flip(-1)])  # (2, 3, 37, 53)
    inputs = [x.contiguous()]
    if _is_guided(cls):
        ref = torch.from_numpy(photo_rgb[200:264, 200:264]).permute(2, 0, 1)[None][:, :channels]  # (1, 3, 64, 64)
        inputs.append(torch.cat([ref, ref.flip(-2)]).contiguous())
    if "text_embedding" in inspect.signature(cls.forward).parameters:
        inputs.append(torch.randn(2, text_dim))
    return tuple(inputs)


def test_core_archs_registered() -> None:
    assert {"NAFNet", "NAFNetLocal", "Restormer", "PromptIR"} <= set(ARCH_REGISTRY.keys())


@pytest.mark.parametrize("name", ARCH_REGISTRY.keys())
def test_registered_arch_smoke(name: str, photo_rgb) -> None:
    assert name in TINY_CONFIGS, f"add a tiny config for {name!r} to tests/restoration/archs/tiny_configs.py"
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build({"type": name, **TINY_CONFIGS[name]})
    assert isinstance(model.pad_multiple, int) and model.pad_multiple >= 1
    inputs = _inputs(photo_rgb, type(model), text_dim=getattr(model, "text_dim", 0))
    # DA-CLIP-conditioned archs also take the (B, 2, D) embeddings as the keyword ``daclip``
    kw = {"daclip": torch.randn(2, 2, model.daclip_dim)} if getattr(model, "takes_daclip", False) else {}
    y = model(*inputs, **kw)
    assert y.shape == inputs[0].shape and torch.isfinite(y).all()
    try:  # multi-stage networks train on every output (stage_losses.py)
        outputs = [t for field in model(*inputs, stages=True, **kw) for t in field]  # images (and variances)
    except ValueError:
        outputs = [y]
    sum(out.square().mean() for out in outputs).backward()
    # every trainable parameter is used: DDP then needs no search for unused parameters
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs, **kw), model(*inputs, **kw), atol=0, rtol=0)
    bad = (torch.zeros(1, 5, 16, 16),) + tuple(inputs[1:])
    with pytest.raises(ValueError, match=r"\(1, 5, 16, 16\)"):
        model(*bad, **kw)


def test_keylists_match_shared() -> None:
    if not SHARED_REFERENCE_DIR.is_dir():
        pytest.skip(f"no shared reference folder at {SHARED_REFERENCE_DIR}")
    shared = [c for c in sorted(REFERENCE_DIR.glob("*.keys.tsv")) if (SHARED_REFERENCE_DIR / c.name).exists()]
    assert len(shared) >= 5  # the layouts the project started from; newer ones exist only here
    for copy in shared:
        assert copy.read_text() == (SHARED_REFERENCE_DIR / copy.name).read_text(), copy.name
