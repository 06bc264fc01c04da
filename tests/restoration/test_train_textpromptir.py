"""A tiny text-prompted network (TextPromptIR) trains through stage 4 and resumes bit-identically.

Each training sample gets a phrasing of its task (seeded per sample), embedded by a tiny
fine-tuned instruction encoder; validation uses the set's ``instruction``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from textualdeg.checkpoint import StateCheckpointer, load_weights
from textualdeg.data.degradations import synthetic_rain
from textualdeg.imageio import read_image, write_image
from textualdeg.instruction.encoder import InstructionEncoder
from textualdeg.instruction.phrasings import instruction_split
from textualdeg.options import load_options
from textualdeg.pretrained.bert import save_tiny_bert
from textualdeg.restoration.schema import RESTORATION_SCHEMA
from textualdeg.restoration.train import build_train_loader, train

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_data import make_tiny_folders  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OPTIONS = REPO / "options" / "train_restoration" / "textpromptir_tiny_cpu.yml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("textpromptir")
    folders = make_tiny_folders(root / "data")
    rain = root / "data" / "train" / "rain"
    rain.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted(folders["train_gt"].glob("*.png")):
        write_image(rain / path.name, synthetic_rain(read_image(path), rng))
    split = instruction_split(("denoise", "derain", "dehaze"))
    bert = save_tiny_bert(root / "bert", [t for t, _ in split.train + split.val], seed=30)
    encoder = InstructionEncoder.from_pretrained(bert, tasks=split.tasks)  # an untrained head serves here
    folders["encoder"] = encoder.save_pretrained(root / "instruction_encoder")
    folders["train_rain"] = rain
    return folders


def _opt(setup: dict[str, Path], exp: Path, *extra: str):
    sets = [f"datasets.train.dataroot_denoise_gt={setup['train_gt']}",
            f"datasets.train.dataroot_derain_lq={setup['train_rain']}",
            f"datasets.train.dataroot_derain_gt={setup['train_gt']}",
            f"datasets.val.dataroot_gt={setup['val_gt']}",
            f"path.instruction_encoder={setup['encoder']}", f"path.experiments_root={exp}"]
    return load_options(OPTIONS, RESTORATION_SCHEMA, sets + list(extra))


def test_items_get_a_seeded_phrasing_of_their_task(setup, tmp_path) -> None:
    opt = _opt(setup, tmp_path / "run")
    _, dataset = build_train_loader(opt, 1, ("denoise", "derain", "dehaze"))
    split = instruction_split(("denoise", "derain", "dehaze"))
    items = []
    for index in range(len(dataset)):
        dataset.set_epoch(0)
        items.append(dataset[index])
    for item in items:
        task = "derain" if item["task"] == "derain" else "denoise"
        assert item["instruction"] in split.sentences(task)
    again = dataset[3]
    assert again["instruction"] == items[3]["instruction"]
    dataset.set_epoch(1)
    assert len({dataset[i]["instruction"] for i in range(len(dataset))}) > 1


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
    first = load_weights(parts / "checkpoints" / "net_g_3.safetensors")
    assert any(not torch.equal(a[k], first[k]) for k in a)  # it trained
    record = [json.loads(line) for line in (whole / "logs" / "val_metrics.jsonl").read_text().splitlines()]
    assert record[-1]["step"] == 6 and np.isfinite(record[-1]["psnr"])


def test_validation_set_without_instruction_is_an_error_naming_the_key(setup, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"datasets\.val\.instruction is required"):
        train(_opt(setup, tmp_path / "run", "datasets.val.instruction=null", "train.total_iter=1"))


def test_missing_instruction_encoder_is_an_error_naming_the_option(setup, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"path\.instruction_encoder"):
        train(_opt(setup, tmp_path / "run", "path.instruction_encoder=null", "train.total_iter=1"))


def test_restore_with_an_instruction_and_with_one_predicted_from_the_image(setup, tmp_path) -> None:
    from textualdeg.restore_photos import main as restore_main, restore_images

    exp = tmp_path / "run"
    train(_opt(setup, exp, "train.total_iter=2", "train.scheduler.periods=[2]", "val.val_freq=2",
               "logger.save_checkpoint_freq=2"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(setup["train_rain"].glob("*.png"))[:2]:
        (photos / path.name).write_bytes(path.read_bytes())
    assert restore_main(["--input", str(photos), "--output", str(tmp_path / "out"), "--experiment", str(exp),
                         "--instruction", "remove the rain", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    summary = restore_images(photos, tmp_path / "out2", exp, device="cpu")
    split = instruction_split(("denoise", "derain", "dehaze"))
    canonical = {split.sentences(task)[0] for task in split.tasks}
    assert len(summary.outputs) == 2 and set(summary.instructions) <= canonical


def test_stage5_evaluates_each_set_with_its_instruction(setup, tmp_path) -> None:
    from textualdeg.evaluation import EVALUATION_SCHEMA, evaluate
    from textualdeg.options import options_from_dict

    exp = tmp_path / "run"
    opt = _opt(setup, exp, "train.total_iter=2", "train.scheduler.periods=[2]", "val.val_freq=2",
               "logger.save_checkpoint_freq=2")
    train(opt)
    noise = {"sigma": 50, "seed": 0, "seed_mode": "stem", "clip": True, "quantize": True}
    test_set = {"task": "gaussian_denoise", "dataroot_gt": str(setup["val_gt"]), "noise": noise}
    spec = {"name": "tp", "network_g": opt.network_g.to_dict(),
            "path": {"pretrain_network_g": str(exp / "checkpoints" / "net_g_latest.safetensors"),
                     "instruction_encoder": str(setup["encoder"]), "results_root": str(tmp_path / "results")},
            "datasets": {"noise": dict(test_set, instruction="I desire to remove noise from the image."),
                         "rain_words": dict(test_set, instruction="I desire to remove rain from the image.")},
            "metrics": {"preset": "promptir_skimage"}, "test": {"device": "cpu", "progress": False}}
    record = evaluate(options_from_dict(spec, EVALUATION_SCHEMA))
    a, b = (record["datasets"][k]["mean"]["psnr"] for k in ("noise", "rain_words"))
    assert np.isfinite(a) and np.isfinite(b) and a != b  # the instruction reaches the network
    assert record["datasets"]["noise"]["protocol"]["ssim_variant"] == "skimage"
    del spec["datasets"]["noise"]["instruction"]
    with pytest.raises(ValueError, match=r"datasets\.noise\.instruction is required"):
        evaluate(options_from_dict(spec, EVALUATION_SCHEMA))
