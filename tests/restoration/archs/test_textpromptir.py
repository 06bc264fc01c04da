"""TextPromptIR: the official key layout loads strictly, outputs equal the official code's
(a committed fixture), dead official tensors are frozen, any input size, text checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from keylists import REFERENCE_DIR, build_on_meta, model_keys, read_keys
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.archs.textpromptir import TextPromptIR
from tiny_configs import TEXTPROMPTIR_TINY


def seeded_weights(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The fixture's weights: one generator over the keys in sorted order (independent of init).

    Norm weights and temperatures 1 + 0.1 N(0, 1); matrices N(0, 1/fan_in) (prompt banks
    N(0, 1)); other 1-D tensors 0.02 N(0, 1). The official state_dict is 45M numbers, so
    the fixture stores this recipe and a checksum instead of the tensors.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        t = state[key]
        if t.ndim <= 1 and (key.endswith("body.weight") or key.endswith("temperature")):
            out[key] = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        elif t.ndim >= 2 and not key.endswith("temperature"):
            fan_in = 1 if key.endswith("prompt_param") else t[0].numel()
            out[key] = torch.randn(t.shape, generator=g) / fan_in**0.5
        else:
            out[key] = 0.02 * torch.randn(t.shape, generator=g)
    return out


def test_official_key_layout_and_parameter_count() -> None:
    """Same keys and shapes as the official TextPromptIR() (order differs only inside attention)."""
    expected, total = read_keys("textpromptir_default")
    model = build_on_meta(TextPromptIR)
    assert sorted(model_keys(model)) == sorted(expected)
    assert total == 123_642_572 == sum(p.numel() for p in model.parameters())
    # the dead official tensors are frozen: 39.8M of the 123.6M parameters train
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 39_849_408


def test_official_state_dict_loads_strictly() -> None:
    expected, _ = read_keys("textpromptir_default")
    model = build_on_meta(TextPromptIR)
    state = {k: torch.empty(shape, device="meta") for k, shape in expected}
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_outputs_equal_the_official_code() -> None:
    """Official layout, seeded weights, two input shapes: max |diff| < 1e-5."""
    with safe_open(REFERENCE_DIR / "textpromptir_small_parity.safetensors", framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = TextPromptIR(**json.loads(meta["kwargs"])).eval()
    weights = seeded_weights(model.state_dict(), int(meta["seed"]))
    checksum = float(sum(v.double().abs().sum() for v in weights.values()))
    assert checksum == pytest.approx(float(meta["weights_abs_sum"]), rel=1e-12)  # same weights as the official run
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        for i in range(2):
            out = model(tensors[f"input.{i}"], tensors[f"text.{i}"])
            assert (out - tensors[f"output.{i}"]).abs().max() < 1e-5


def test_registered_and_tiny_forward_any_size() -> None:
    assert ARCH_REGISTRY.get("TextPromptIR") is TextPromptIR
    torch.manual_seed(0)
    model = TextPromptIR(**TEXTPROMPTIR_TINY)
    for h, w in ((13, 17), (8, 8), (31, 9)):
        assert model(torch.rand(2, 3, h, w), torch.randn(2, 16)).shape == (2, 3, h, w)
    # one embedding shared by the batch
    assert model(torch.rand(2, 3, 8, 8), torch.randn(16)).shape == (2, 3, 8, 8)


def test_the_instruction_changes_the_output() -> None:
    torch.manual_seed(0)
    model = TextPromptIR(**TEXTPROMPTIR_TINY).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        a, b = model(x, torch.randn(1, 16)), model(x, torch.randn(1, 16))
    assert (a - b).abs().max() > 1e-4


def test_bad_text_embedding_names_its_shape() -> None:
    model = TextPromptIR(**TEXTPROMPTIR_TINY)
    with pytest.raises(ValueError, match=r"text_embedding must have shape \(2, 16\); got \(2, 15\)"):
        model(torch.rand(2, 3, 8, 8), torch.randn(2, 15))
    with pytest.raises(ValueError, match="embed_dim"):
        TextPromptIR(**dict(TEXTPROMPTIR_TINY, embed_dim=0))
