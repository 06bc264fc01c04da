"""Evaluation (stage 5): numbers equal the metrics module's and validation's, pairing by stem, tiling.

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
from textualdeg.data.degradations import add_seeded_noise
from textualdeg.evaluation import EVALUATION_SCHEMA, build_protocol, evaluate
from textualdeg.imageio import image_to_tensor, read_image, write_image
from textualdeg.metrics import PRESETS, compute_metrics
from textualdeg.options import load_options, options_from_dict
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.inference import restore_tensor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "options" / "test" / "tiny_cpu.yml"
TINY_TRAIN = ROOT / "options" / "train_restoration" / "tiny_cpu.yml"
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
                lq = add_seeded_noise(gt, stem=name, **opt.datasets.test_2.noise)
            with torch.no_grad():
                pred = restore_tensor(model, image_to_tensor(lq)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
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


def _guided_weights(path: Path) -> tuple[dict, Path]:
    """The guided network of the tiny training options, its blocks switched on, saved to ``path``."""
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    spec = load_options(TINY_TRAIN, RESTORATION_SCHEMA).network_g.to_dict()
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):  # a fresh NAFNet's blocks are identities
                p.normal_(0, 0.3)
    return spec, save_weights(model.state_dict(), path)


@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
def test_stage5_numbers_equal_validation_numbers(tiny_data, tmp_path, gray):
    """evaluate() on a test option and train.validate() give the same PSNR/SSIM (to 1e-9) on the same
    images and weights: a paired set, a set with seeded Gaussian noise, the Y channel with a border
    crop, and a guided network on images whose size needs padding; gray sets fed to this 3-channel
    network as three copies (evaluation: replicate_gray, validation: gray_to_rgb)."""
    from textualdeg.data import GaussianDenoisingRefDataset, PairedImageRefDataset
    from textualdeg.restoration.schema import RESTORATION_SCHEMA
    from textualdeg.restoration.train import build_model, validate

    spec, weights = _guided_weights(tmp_path / "guided.safetensors")
    folders = {role: str(tiny_data / role) for role in ("lq", "gt", "ref")}

    test_opt = load_options(TINY, EVALUATION_SCHEMA).to_dict()
    test_opt["network_g"] = spec
    test_opt["path"].update(pretrain_network_g=str(weights), results_root=str(tmp_path / "results"))
    test_opt["datasets"]["test_1"].update(dataroot_lq=folders["lq"], dataroot_gt=folders["gt"],
                                          dataroot_ref=folders["ref"])
    test_opt["datasets"]["test_2"].update(dataroot_gt=folders["gt"], dataroot_ref=folders["ref"],
                                          metrics={"preset": "nafnet_gaussian3d_y", "crop_border": 2})
    test_opt["test"].update(save_img=False, replicate_gray=gray)
    for key in ("test_1", "test_2"):
        test_opt["datasets"][key]["color"] = "gray" if gray else "rgb"
    stage5 = evaluate(options_from_dict(test_opt, EVALUATION_SCHEMA))["datasets"]
    assert stage5["noisy"]["noise"]["seed_mode"] == "stem"  # the test files' default

    train_opt = load_options(TINY_TRAIN, RESTORATION_SCHEMA).to_dict()
    train_opt["path"]["pretrain_network_g"] = str(weights)
    train_opt["val"]["metrics"] = {
        "psnr": {"type": "calculate_psnr"},
        "ssim": {"type": "calculate_ssim", "ssim_variant": "gaussian3d"},
        "psnr_y": {"type": "calculate_psnr", "test_y_channel": True, "crop_border": 2},
        "ssim_y": {"type": "calculate_ssim", "test_y_channel": True, "crop_border": 2, "ssim_variant": "gaussian3d"},
    }
    opt = options_from_dict(train_opt, RESTORATION_SCHEMA)
    model = build_model(opt)
    assert model.pad_multiple > 4 and 60 % model.pad_multiple and 76 % model.pad_multiple  # padded
    channels = {"in_ch": 1, "gray_to_rgb": True} if gray else {}
    val_sets = {
        "paired": PairedImageRefDataset(dataroot_gt=folders["gt"], dataroot_lq=folders["lq"],
                                        dataroot_ref=folders["ref"], phase="val", name="paired", **channels),
        "noisy": GaussianDenoisingRefDataset(dataroot_gt=folders["gt"], dataroot_ref=folders["ref"],
                                             sigma_range=25, sigma_test=25, phase="val", name="noisy", **channels),
    }
    stage4 = validate(model, val_sets, opt, 0, None, torch.device("cpu"))

    for dataset, suffix in (("paired", ""), ("noisy", "_y")):
        for metric in ("psnr", "ssim"):
            assert abs(stage5[dataset]["mean"][metric] - stage4[dataset][metric + suffix]) <= 1e-9, (dataset, metric)
    assert model.training  # validate put train() back


def test_guided_network_without_guidance_is_named(tiny_data, tmp_path):
    spec, weights = _guided_weights(tmp_path / "guided.safetensors")
    script = _script()
    args = _overrides(tiny_data, tmp_path, weights, f"network_g={json.dumps(spec)}",
                      f"datasets.test_2.dataroot_ref={tiny_data / 'ref'}")
    with pytest.raises(ValueError, match=r"datasets\.test_1\.dataroot_ref is required: GuidedNAFNet is a guided"):
        script.main(script.parse_args(["-opt", str(TINY), *args]))


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


def test_textualdeg_evaluate_command(tiny_data, tmp_path):
    from textualdeg.cli import main as cli_main

    weights = save_weights(_network(False).state_dict(), tmp_path / "w.safetensors")
    args = _overrides(tiny_data, tmp_path, weights, "test.save_img=false")
    assert cli_main(["evaluate", "-opt", str(TINY), *args]) == 0
    assert json.loads((tmp_path / "results" / "results.json").read_text())["datasets"]["noisy"]["num_images"] == 3


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
    pred = restore_tensor(model, lq, ref=ref).clamp(0, 1)[0].permute(1, 2, 0).numpy()
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
