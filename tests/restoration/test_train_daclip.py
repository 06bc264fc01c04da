"""A DA-CLIP conditioned network trains through stage 4, resumes bit-identically, and is
evaluated and used by ``textualdeg restore`` with per-image embeddings of the whole image.

DA-CLIP: arXiv:2310.01018 (docs/daclip.md, docs/daclip_conditioning.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from textualdeg.checkpoint import StateCheckpointer, load_weights
from textualdeg.daclip import DAClipEmbedder, save_tiny_daclip
from textualdeg.daclip.conditions import daclip_view, embed_inputs
from textualdeg.imageio import image_to_tensor, read_image
from textualdeg.options import load_options
from textualdeg.restoration.network import ConditionedNetwork, build_network, takes_daclip
from textualdeg.restoration.schema import RESTORATION_SCHEMA
from textualdeg.restoration.train import build_train_loader, train

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_data import make_tiny_folders  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OPTIONS = REPO / "options" / "train_restoration" / "daclip_tiny_cpu.yml"
GUIDED = REPO / "options" / "train_restoration" / "tiny_cpu.yml"
SHORT = ["train.scheduler.periods=[2]", "val.val_freq=2", "logger.save_checkpoint_freq=2", "train.total_iter=2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("daclip_stage4")
    folders = make_tiny_folders(root / "data")
    folders["daclip"] = save_tiny_daclip(root / "daclip", seed=3)
    return folders


def _opt(setup: dict[str, Path], exp: Path, *extra: str):
    sets = [f"datasets.train.dataroot_gt={setup['train_gt']}", f"datasets.val.dataroot_gt={setup['val_gt']}",
            f"path.daclip={setup['daclip']}", f"path.experiments_root={exp}"]
    return load_options(OPTIONS, RESTORATION_SCHEMA, sets + list(extra))


def test_loader_items_hold_no_embedding(setup, tmp_path) -> None:
    """The data-loader workers hold no DA-CLIP: items are images only, embedded in the step."""
    _, dataset = build_train_loader(_opt(setup, tmp_path / "run"), 1)
    dataset.set_epoch(0)
    assert "daclip" not in dataset[0] and "lq" in dataset[0]


def test_trains_and_resumes_bit_identically(setup, tmp_path) -> None:
    common = ["train.scheduler.periods=[6]", "val.val_freq=6", "logger.print_freq=2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(_opt(setup, whole, "train.total_iter=6", "logger.save_checkpoint_freq=6", *common))
    train(_opt(setup, parts, "train.total_iter=3", "logger.save_checkpoint_freq=3", *common))
    assert StateCheckpointer(parts / "state").latest().name == "step_00000003"
    train(_opt(setup, parts, "train.total_iter=6", "logger.save_checkpoint_freq=3", *common))
    a = load_weights(whole / "checkpoints" / "net_g_latest.safetensors")
    b = load_weights(parts / "checkpoints" / "net_g_latest.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the conditioning blocks trained (they start at zero: a gradient reached them)
    assert any(k.startswith("daclip_") and a[k].abs().sum() > 0 and k.endswith("weight")
               for k in a if "modulation" in k or "out" in k)
    record = [json.loads(line) for line in (whole / "logs" / "val_metrics.jsonl").read_text().splitlines()]
    assert record[-1]["step"] == 6 and np.isfinite(record[-1]["psnr"])


def test_missing_daclip_is_an_error_naming_the_option(setup, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"path\.daclip"):
        train(_opt(setup, tmp_path / "run", "path.daclip=null", "train.total_iter=1"))


def test_daclip_of_another_width_is_an_error_naming_both(setup, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"embeds to width 32.*daclip_dim.*16"):
        train(_opt(setup, tmp_path / "run", "network_g.daclip_dim=16", "train.total_iter=1"))


def test_guided_network_with_daclip_trains(setup, tmp_path) -> None:
    """Guidance image and DA-CLIP embeddings together (DAClipGuidedNAFNet on tiny_cpu.yml)."""
    sets = [f"datasets.train.dataroot_gt={setup['train_gt']}", f"datasets.train.dataroot_ref={setup['train_ref']}",
            f"datasets.val.dataroot_gt={setup['val_gt']}", f"datasets.val.dataroot_ref={setup['val_ref']}",
            f"path.experiments_root={tmp_path / 'run'}", f"path.daclip={setup['daclip']}",
            "network_g.type=DAClipGuidedNAFNet", "network_g.daclip_dim=32", *SHORT]
    exp = train(load_options(GUIDED, RESTORATION_SCHEMA, sets))
    weights = load_weights(exp / "checkpoints" / "net_g_latest.safetensors")
    assert any(k.startswith("masa_") for k in weights) and any(k.startswith("daclip_") for k in weights)


def test_stage5_and_restore_embed_each_whole_image_once(setup, tmp_path) -> None:
    from textualdeg.evaluation import EVALUATION_SCHEMA, evaluate
    from textualdeg.options import options_from_dict
    from textualdeg.restore_photos import restore_images

    exp = tmp_path / "run"
    opt = _opt(setup, exp, *SHORT)
    train(opt)
    weights = exp / "checkpoints" / "net_g_latest.safetensors"
    noise = {"sigma": 25, "seed": 0, "seed_mode": "stem", "clip": True, "quantize": True}
    spec = {"name": "dc", "network_g": opt.network_g.to_dict(),
            "path": {"pretrain_network_g": str(weights), "daclip": str(setup["daclip"]),
                     "results_root": str(tmp_path / "results")},
            "datasets": {"noise": {"task": "gaussian_denoise", "dataroot_gt": str(setup["val_gt"]), "noise": noise}},
            "metrics": {"preset": "textualdeg"}, "test": {"device": "cpu", "progress": False, "tile": 32,
                                                          "tile_overlap": 8}}
    record = evaluate(options_from_dict(spec, EVALUATION_SCHEMA))
    assert np.isfinite(record["datasets"]["noise"]["mean"]["psnr"])
    # another DA-CLIP gives other embeddings, hence other numbers: the embeddings reach the network
    other = save_tiny_daclip(tmp_path / "other_daclip", seed=11)
    spec["path"]["daclip"] = str(other)
    spec["path"]["results_root"] = str(tmp_path / "results_other")
    assert evaluate(options_from_dict(spec, EVALUATION_SCHEMA))["datasets"]["noise"]["mean"]["psnr"] != \
        record["datasets"]["noise"]["mean"]["psnr"]

    # restore: each image embedded whole, every tile conditioned on that one embedding
    photo = sorted(setup["val_gt"].glob("*.png"))[0]
    summary = restore_images(photo, tmp_path / "restored", exp, device="cpu", tile=32, tile_overlap=8, bit_depth=16)
    model = build_network(opt.network_g, weights).eval()
    assert takes_daclip(model)
    embedder = DAClipEmbedder.from_pretrained(setup["daclip"])
    lq = image_to_tensor(read_image(photo, "rgb"))[None]  # (1, 3, H, W)
    from textualdeg.restoration.inference import restore_tensor

    with torch.no_grad():
        expected = restore_tensor(ConditionedNetwork(model, None, embed_inputs(embedder, lq)), lq, tile=32,
                                  tile_overlap=8)[0].clamp(0, 1)
    got = image_to_tensor(read_image(summary.outputs[0], "rgb"))
    assert (got - expected).abs().max() <= 1.0 / 65535 + 1e-6


def test_daclip_view_of_gray_and_dual_pixel_inputs() -> None:
    gray = torch.rand(2, 1, 8, 8)
    assert torch.equal(daclip_view(gray), gray.expand(-1, 3, -1, -1))
    pair = torch.rand(2, 6, 8, 8)
    assert torch.allclose(daclip_view(pair), (pair[:, :3] + pair[:, 3:]) / 2)
    with pytest.raises(ValueError, match="4 channels"):
        daclip_view(torch.rand(1, 4, 8, 8))
