"""build_network(): network_g plus weights, the one way training, evaluation and restore build it; is_guided()."""

from __future__ import annotations

import pytest
import torch

from textualdeg.checkpoint import CheckpointError, save_weights
from textualdeg.restoration.network import build_network, is_guided

PLAIN = {"type": "NAFNet", "img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1],
         "dec_blk_nums": [1, 1]}
GUIDED = {**PLAIN, "type": "GuidedNAFNet", "ext_n_blocks": [1, 1], "reffusion_n_blocks": [1, 1],
          "lr_block_size": 4, "dilations": [1, 2]}


def test_builds_and_loads_weights(tmp_path):
    torch.manual_seed(0)
    source = build_network(PLAIN)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.1)
    path = save_weights(source.state_dict(), tmp_path / "net_g.safetensors")
    loaded = build_network(PLAIN, path)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    assert loaded.training  # callers choose eval()
    fresh = build_network(PLAIN, None)
    assert not torch.equal(fresh.intro.weight, source.intro.weight)


def test_plain_weights_start_a_guided_network_only_when_not_strict(tmp_path):
    path = save_weights(build_network(PLAIN).state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match=r"plain\.safetensors: does not fit GuidedNAFNet"):
        build_network(GUIDED, path)
    guided = build_network(GUIDED, path, strict=False)
    assert is_guided(guided) and not is_guided(build_network(PLAIN))


def test_bad_network_g_is_named():
    with pytest.raises(ValueError, match="network_g needs a 'type'"):
        build_network({k: v for k, v in PLAIN.items() if k != "type"})
    with pytest.raises(KeyError, match="NAFNett"):
        build_network({**PLAIN, "type": "NAFNett"})
    with pytest.raises(TypeError, match="widht"):
        build_network({**PLAIN, "widht": 8})
