"""Evaluation (stage 5): numbers equal the metrics module's, pairing by stem, tiling, noise seeding.

The script is run in-process (``main(parse_args([...]))``) on a tiny dataset written from
scikit-image photographs, with a tiny NAFNet whose random weights are saved by save_weights.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from textualdeg.checkpoint import save_weights
from textualdeg.evaluation import EVALUATION_SCHEMA, add_test_noise, build_protocol, score
from textualdeg.imageio import image_to_tensor, read_image, write_image
from textualdeg.metrics import PRESETS, compute_metrics
from textualdeg.options import load_options
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.inference import restore

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "options" / "test" / "tiny_cpu.yml"
PHOTOS = ("astronaut", "coffee", "chelsea")


def _script():
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "eval" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """gt/, lq/ (noisy, 8-bit PNG) and ref/ folders of three 60x76 photograph crops."""
    from skimage import data

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        gt = getattr(data, name)()[100:160, 100:176].astype(np.float32) / 255.0
        write_image(root / "gt" / f"{name}.png", gt)
        write_image(root / "lq" / f"{name}.png", np.clip(gt + rng.normal(0, 0.08, gt.shape), 0, 1))
        write_image(root / "ref" / f"{name}.png", getattr(data, name)()[:64, :64])
    return root


def _network(random_blocks: bool) -> torch.nn.Module:
    opt = load_options(TINY, EVALUATION_SCHEMA)
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build(opt.network_g.to_dict())
    if random_blocks:  # otherwise a fresh NAFNet's blocks are identities
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("beta", "gamma")):
                    p.normal_(0, 0.3)
    return model.eval()


def _overrides(tiny_data: Path, tmp_path: Path, weights: Path, *extra: str) -> list[str]:
    sets = [f"path.pretrain_network_g={weights}", f"path.results_root={tmp_path / 'results'}",
            f"datasets.test_1.dataroot_lq={tiny_data / 'lq'}", f"datasets.test_1.dataroot_gt={tiny_data / 'gt'}",
            f"datasets.test_2.dataroot_gt={tiny_data / 'gt'}", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def test_evaluation_numbers_equal_the_metrics_module(tiny_data, tmp_path):
    model = _network(random_blocks=True)
    weights = save_weights(model.state_dict(), tmp_path / "net_g.safetensors")
    script = _script()
    record = script.main(script.parse_args(["-opt", str(TINY), *_overrides(tiny_data, tmp_path, weights)]))
    out = tmp_path / "results"

    opt = load_options(TINY, EVALUATION_SCHEMA)
    paired_protocol = PRESETS["textualdeg"]
    noisy_protocol = build_protocol(opt.datasets.test_2.metrics, paired_protocol)
    assert noisy_protocol.channels == "y" and noisy_protocol.y_rounding == "matlab" and noisy_protocol.crop_border == 2

    for dataset, protocol in (("paired", paired_protocol), ("noisy", noisy_protocol)):
        rows = _read_csv(out / dataset / "per_image.csv")
        assert sorted(rows) == sorted(PHOTOS)
        scores = []
        for name in PHOTOS:
            gt = read_image(tiny_data / "gt" / f"{name}.png")
            if dataset == "paired":
                lq = read_image(tiny_data / "lq" / f"{name}.png")
            else:
                lq = add_test_noise(gt, name, opt.datasets.test_2.noise)
            with torch.no_grad():
                pred = restore(model, image_to_tensor(lq)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            expected = compute_metrics(pred, gt, protocol)
            assert abs(float(rows[name]["psnr"]) - expected["psnr"]) <= 1e-9
            assert abs(float(rows[name]["ssim"]) - expected["ssim"]) <= 1e-9
            scores.append(expected)
            assert (out / dataset / "images" / f"{name}.png").is_file()
        mean = record["datasets"][dataset]["mean"]
        assert abs(mean["psnr"] - np.mean([s["psnr"] for s in scores])) <= 1e-9
        assert record["datasets"][dataset]["protocol"] == protocol.to_dict()

    saved = json.loads((out / "results.json").read_text())
    assert saved["datasets"]["noisy"]["noise"]["sigma"] == 25.0
    assert saved["checkpoint"]["sha256"] and saved["options"]["name"] == "tiny_cpu"
    table = (out / "results.md").read_text()
    assert "| paired | 3 |" in table and f"{record['datasets']['paired']['mean']['psnr']:.4f}" in table
    assert "Y (matlab)" in table and "sigma 25" in table


def test_noise_does_not_depend_on_file_order_or_set(tiny_data, tmp_path):
    noise = {"sigma": 25.0, "seed": 0, "seed_mode": "stem", "channel_order": "rgb", "clip": False,
             "quantize": False}
    gt = read_image(tiny_data / "gt" / "coffee.png")
    first = add_test_noise(gt, "coffee", noise)
    assert np.array_equal(first, add_test_noise(gt, "coffee", noise))
    assert not np.array_equal(first, add_test_noise(gt, "astronaut", noise))  # per-image noise
    assert not np.array_equal(first, add_test_noise(gt, "coffee", {**noise, "sigma": 15.0}))
    assert abs(np.std(first - gt) * 255 - 25) < 1.0
    # the authors' protocol: np.random.seed(0) then np.random.normal(0, sigma/255) for every image
    fixed = {**noise, "seed_mode": "fixed"}
    np.random.seed(0)
    expected = (gt.astype(np.float64) + np.random.normal(0, 25 / 255, gt.shape)).astype(np.float32)
    assert np.array_equal(add_test_noise(gt, "anything", fixed), expected)
    bgr = add_test_noise(gt, "anything", {**fixed, "channel_order": "bgr"})
    np.testing.assert_allclose(bgr - gt, (expected - gt)[:, :, ::-1], atol=1e-6)
    quantized = add_test_noise(gt, "coffee", {**noise, "quantize": True})
    assert quantized.min() >= 0 and quantized.max() <= 1
    assert np.allclose(quantized * 255, np.round(quantized * 255), atol=1e-4)


def test_unmatched_files_are_listed(tiny_data, tmp_path):
    lq = tmp_path / "lq"
    gt = tmp_path / "gt"
    for name in ("astronaut", "coffee"):
        write_image(lq / f"{name}.png", read_image(tiny_data / "lq" / f"{name}.png"))
    for name in ("astronaut", "chelsea"):
        write_image(gt / f"{name}.png", read_image(tiny_data / "gt" / f"{name}.png"))
    weights = save_weights(_network(False).state_dict(), tmp_path / "w.safetensors")
    script = _script()
    args = ["-opt", str(TINY), *_overrides(tiny_data, tmp_path, weights, f"datasets.test_1.dataroot_lq={lq}",
                                           f"datasets.test_1.dataroot_gt={gt}")]
    with pytest.raises(ValueError, match="unmatched") as info:
        script.main(script.parse_args(args))
    assert "coffee.png" in str(info.value) and "chelsea.png" in str(info.value)
    assert not (tmp_path / "results" / "results.json").exists()


def test_tiled_equals_untiled_through_evaluate(tiny_data, tmp_path):
    # a fresh NAFNet (identity blocks) is a local conv U-Net: tiling must not change it
    weights = save_weights(_network(random_blocks=False).state_dict(), tmp_path / "w.safetensors")
    script = _script()
    common = ["metrics.preset=promptir_skimage", "test.save_img=false"]
    whole = script.main(script.parse_args(
        ["-opt", str(TINY), *_overrides(tiny_data, tmp_path / "a", weights, *common)]))
    tiled = script.main(script.parse_args(
        ["-opt", str(TINY), *_overrides(tiny_data, tmp_path / "b", weights, *common, "test.tile=48",
                                        "test.tile_overlap=32")]))
    assert tiled["test"]["tile"] == 48
    for dataset in ("paired", "noisy"):
        for a, b in zip(whole["datasets"][dataset]["per_image"], tiled["datasets"][dataset]["per_image"]):
            assert a["image"] == b["image"]
            assert abs(a["psnr"] - b["psnr"]) <= 1e-4 and abs(a["ssim"] - b["ssim"]) <= 1e-5


def test_guided_model_gets_its_guidance(tiny_data, tmp_path):
    torch.manual_seed(0)
    spec = dict(type="GuidedNAFNet", width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1),
                ext_n_blocks=(1, 1), reffusion_n_blocks=(1, 1), lr_block_size=4, dilations=(1, 2))
    model = ARCH_REGISTRY.build(spec).eval()
    weights = save_weights(model.state_dict(), tmp_path / "g.safetensors")
    net = [f"network_g={json.dumps(spec)}", f"datasets.test_1.dataroot_ref={tiny_data / 'ref'}",
           f"datasets.test_2.dataroot_gt={tiny_data / 'gt'}", f"datasets.test_2.dataroot_ref={tiny_data / 'ref'}"]
    script = _script()
    record = script.main(script.parse_args(["-opt", str(TINY), *_overrides(tiny_data, tmp_path, weights, *net)]))
    row = record["datasets"]["paired"]["per_image"][0]
    assert row["ref"].endswith(f"ref/{row['image']}.png")
    gt = read_image(tiny_data / "gt" / f"{row['image']}.png")
    lq = image_to_tensor(read_image(tiny_data / "lq" / f"{row['image']}.png"))[None]
    ref = image_to_tensor(read_image(tiny_data / "ref" / f"{row['image']}.png"))[None]
    pred = restore(model, lq, ref=ref).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert abs(row["psnr"] - compute_metrics(pred, gt, "textualdeg")["psnr"]) <= 1e-9


def test_every_test_option_file_loads_and_builds():
    import textualdeg.restoration.archs  # noqa: F401

    files = sorted((ROOT / "options" / "test").glob("*.yml"))
    assert len(files) >= 11
    for path in files:
        opt = load_options(path, EVALUATION_SCHEMA)
        build_protocol(opt.metrics)
        with torch.device("meta"):
            ARCH_REGISTRY.build(opt.network_g.to_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_scores_equal_cpu_scores(tiny_data):
    gt = read_image(tiny_data / "gt" / "coffee.png")
    out = image_to_tensor(read_image(tiny_data / "lq" / "coffee.png"))[None]
    for name in PRESETS:
        cpu, gpu = score(out, gt, name), score(out.cuda(), gt, name)
        assert abs(cpu["psnr"] - gpu["psnr"]) <= 1e-9 and abs(cpu["ssim"] - gpu["ssim"]) <= 1e-9
