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


def _stage5_and_stage4(tiny_data: Path, tmp_path: Path, gray: bool) -> tuple[dict, dict, dict]:
    """The same guided weights and images, evaluated (stage 5) and set up for validation (stage 4).

    A paired set scored in RGB, and a set with seeded Gaussian noise scored on the Y channel
    with a border crop; gray sets are fed to the 3-channel network as three copies
    (evaluation: replicate_gray, validation: gray_to_rgb).

    Returns:
        The stage-5 ``datasets`` results, the stage-4 option dict (its ``val.metrics`` name
        the stage-5 protocols: ``psnr``/``ssim`` for the paired set, ``psnr_y``/``ssim_y`` for
        the noisy one) and the stage-4 validation sets as ``build_dataset`` specs.
    """
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

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
    channels = {"in_ch": 1, "gray_to_rgb": True} if gray else {}
    val_sets = {
        "paired": {"type": "PairedImageRefDataset", "dataroot_gt": folders["gt"], "dataroot_lq": folders["lq"],
                   "dataroot_ref": folders["ref"], "phase": "val", "name": "paired", **channels},
        "noisy": {"type": "GaussianDenoisingRefDataset", "dataroot_gt": folders["gt"], "dataroot_ref": folders["ref"],
                  "sigma_range": 25, "sigma_test": 25, "phase": "val", "name": "noisy", **channels},
    }
    return stage5, train_opt, val_sets


def _assert_stage5_equals_stage4(stage5: dict, stage4: dict, tolerance: float) -> None:
    for dataset, suffix in (("paired", ""), ("noisy", "_y")):
        for metric in ("psnr", "ssim"):
            assert abs(stage5[dataset]["mean"][metric] - stage4[dataset][metric + suffix]) <= tolerance, (
                dataset, metric, stage5[dataset]["mean"][metric], stage4[dataset][metric + suffix])


@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
def test_stage5_numbers_equal_validation_numbers(tiny_data, tmp_path, gray):
    """evaluate() on a test option and train.validate() give the same PSNR/SSIM (to 1e-9) on the same
    images and weights: a paired set, a set with seeded Gaussian noise, the Y channel with a border
    crop, and a guided network on images whose size needs padding (both reflect-pad to the
    network's multiple through restore_tensor); gray sets fed to this 3-channel network as three
    copies (evaluation: replicate_gray, validation: gray_to_rgb)."""
    from textualdeg.data import build_dataset
    from textualdeg.restoration.schema import RESTORATION_SCHEMA
    from textualdeg.restoration.train import build_model, validate

    stage5, train_opt, specs = _stage5_and_stage4(tiny_data, tmp_path, gray)
    opt = options_from_dict(train_opt, RESTORATION_SCHEMA)
    model = build_model(opt)
    assert model.pad_multiple > 4 and 60 % model.pad_multiple and 76 % model.pad_multiple  # padded
    val_sets = {name: build_dataset(spec) for name, spec in specs.items()}
    stage4 = validate(model, val_sets, opt, 0, None, torch.device("cpu"))
    _assert_stage5_equals_stage4(stage5, stage4, 1e-9)
    assert model.training  # validate put train() back


@pytest.mark.slow
def test_validation_sharded_over_two_processes_equals_one_process_and_stage5(tiny_data, tmp_path):
    """Two gloo processes (torchrun, tests/_validate_on_processes.py) validate 3 images per set, an
    uneven shard (2 + 1), each image restored once: the gathered means, the same on both
    processes, equal one process's (to 1e-12) and stage 5's (to 1e-9), and the side-by-side PNGs
    are written under their one-process names, at most val.max_vis_images per set."""
    import os
    import subprocess
    import sys

    from textualdeg.data import build_dataset
    from textualdeg.restoration.schema import RESTORATION_SCHEMA
    from textualdeg.restoration.train import build_model, validate

    stage5, train_opt, specs = _stage5_and_stage4(tiny_data, tmp_path, gray=False)
    train_opt["val"].update(save_img=True, max_vis_images=2)
    opt = options_from_dict(train_opt, RESTORATION_SCHEMA)
    one = validate(build_model(opt), {name: build_dataset(spec) for name, spec in specs.items()}, opt, 7,
                   tmp_path / "one" / "visualization", torch.device("cpu"))

    job = {"options": train_opt, "val_sets": specs, "step": 7, "vis_dir": str(tmp_path / "two" / "visualization"),
           "out": str(tmp_path / "two" / "means.json")}
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "_validate_on_processes.py"), str(tmp_path / "two" / "job.json")]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    two = json.loads((tmp_path / "two" / "means.json").read_text())

    assert two["num_processes"] == 2 and two["means"][0] == two["means"][1]
    assert two["restored"] == [4, 2]  # images 0 and 2 of each set, image 1: each image once
    sharded = two["means"][0]
    assert sharded.keys() == one.keys()
    for dataset in one:
        for metric, value in one[dataset].items():
            assert abs(sharded[dataset][metric] - value) <= 1e-12, (dataset, metric, sharded[dataset][metric], value)
    _assert_stage5_equals_stage4(stage5, sharded, 1e-9)

    def pictures(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))

    expected = [f"{name}/{stem}_7.png" for name in ("noisy", "paired") for stem in sorted(PHOTOS)[:2]]
    assert pictures(tmp_path / "one" / "visualization") == expected
    assert pictures(tmp_path / "two" / "visualization") == expected


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


# --------------------------------------------------------------------------------------
# which weights an evaluation file evaluates


def _meta_layout(network_g: dict) -> dict[str, tuple[int, ...]]:
    """(key, shape) of a network built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = ARCH_REGISTRY.build(dict(network_g))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("test_file", sorted(p.name for p in (ROOT / "options" / "test").glob("*.yml")))
def test_every_evaluation_file_evaluates_weights_that_its_training_run_writes(test_file, monkeypatch):
    """A file naming train_options evaluates <that run>/checkpoints/net_g_latest.safetensors,
    and its network_g has the training network's layout; the others name their weights or
    leave them to --set."""
    from textualdeg.evaluation import resolve_checkpoint
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    monkeypatch.chdir(ROOT)
    opt = load_options(ROOT / "options" / "test" / test_file, EVALUATION_SCHEMA)
    if opt.path.train_options is None:
        if opt.path.pretrain_network_g is None:
            with pytest.raises(ValueError, match="--set path.pretrain_network_g="):
                resolve_checkpoint(opt.path)
        return
    train_opt = load_options(ROOT / opt.path.train_options, RESTORATION_SCHEMA)
    assert resolve_checkpoint(opt.path) == Path("experiments") / train_opt.name / "checkpoints" / \
        "net_g_latest.safetensors"
    assert _meta_layout(opt.network_g.to_dict()) == _meta_layout(train_opt.network_g.to_dict())


def test_evaluation_without_weights_is_an_error_with_the_set_line_and_writes_nothing(tmp_path):
    opt = load_options(ROOT / "options" / "test" / "tiny_cpu.yml", EVALUATION_SCHEMA,
                       ["path.pretrain_network_g=null", f"path.results_root={tmp_path / 'results'}"])
    with pytest.raises(ValueError, match="--set path.pretrain_network_g="):
        evaluate(opt)
    assert not (tmp_path / "results").exists()
