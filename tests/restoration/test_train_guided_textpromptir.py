"""A tiny network taking both a guidance image and an instruction (GuidedTextPromptIR) trains
through stage 4, resumes bit-identically, and restores through stage 5 and ``textualdeg restore``
with both (options/train_restoration/textpromptir_guided_tiny_cpu.yml)."""

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
OPTIONS = REPO / "options" / "train_restoration" / "textpromptir_guided_tiny_cpu.yml"
SHORT = ["train.total_iter=2", "train.scheduler.periods=[2]", "val.val_freq=2", "logger.save_checkpoint_freq=2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guided_textpromptir")
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
            f"datasets.train.dataroot_denoise_ref={setup['train_ref']}",
            f"datasets.train.dataroot_derain_lq={setup['train_rain']}",
            f"datasets.train.dataroot_derain_gt={setup['train_gt']}",
            f"datasets.train.dataroot_derain_ref={setup['train_ref']}",
            f"datasets.val.dataroot_gt={setup['val_gt']}", f"datasets.val.dataroot_ref={setup['val_ref']}",
            f"path.instruction_encoder={setup['encoder']}", f"path.experiments_root={exp}"]
    return load_options(OPTIONS, RESTORATION_SCHEMA, sets + list(extra))


def test_items_carry_guidance_and_instruction(setup, tmp_path) -> None:
    _, dataset = build_train_loader(_opt(setup, tmp_path / "run"), 1, ("denoise", "derain", "dehaze"))
    dataset.set_epoch(0)
    item = dataset[0]
    assert item["ref"].shape == (3, 48, 48) and isinstance(item["instruction"], str)


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
    assert any(k.startswith("masa_") and not torch.equal(a[k], first[k]) for k in a)  # the fusion too
    record = [json.loads(line) for line in (whole / "logs" / "val_metrics.jsonl").read_text().splitlines()]
    assert record[-1]["step"] == 6 and np.isfinite(record[-1]["psnr"])


def test_restore_and_stage5_pass_guidance_and_instruction(setup, tmp_path) -> None:
    from textualdeg.evaluation import EVALUATION_SCHEMA, evaluate
    from textualdeg.options import options_from_dict
    from textualdeg.restore_photos import main as restore_main

    exp = tmp_path / "run"
    opt = _opt(setup, exp, *SHORT)
    train(opt)
    photos, out = tmp_path / "photos", tmp_path / "out"
    (out / "guidance").mkdir(parents=True)
    photos.mkdir()
    for path in sorted(setup["train_rain"].glob("*.png"))[:2]:
        (photos / path.name).write_bytes(path.read_bytes())
        (out / "guidance" / path.name).write_bytes((setup["train_ref"] / path.name).read_bytes())  # reused
    assert restore_main(["--input", str(photos), "--output", str(out), "--experiment", str(exp),
                         "--instruction", "remove the rain", "--device", "cpu"]) == 0
    assert len(list(out.glob("*.png"))) == 2

    noise = {"sigma": 50, "seed": 0, "seed_mode": "stem", "clip": True, "quantize": True}
    test_set = {"task": "gaussian_denoise", "dataroot_gt": str(setup["val_gt"]),
                "dataroot_ref": str(setup["val_ref"]), "noise": noise}
    spec = {"name": "gtp", "network_g": opt.network_g.to_dict(),
            "path": {"pretrain_network_g": str(exp / "checkpoints" / "net_g_latest.safetensors"),
                     "instruction_encoder": str(setup["encoder"]), "results_root": str(tmp_path / "results")},
            "datasets": {"noise": dict(test_set, instruction="I desire to remove noise from the image."),
                         "rain_words": dict(test_set, instruction="I desire to remove rain from the image.")},
            "metrics": {"preset": "promptir_skimage"}, "test": {"device": "cpu", "progress": False}}
    record = evaluate(options_from_dict(spec, EVALUATION_SCHEMA))
    a, b = (record["datasets"][k]["mean"]["psnr"] for k in ("noise", "rain_words"))
    assert np.isfinite(a) and np.isfinite(b) and a != b  # the instruction reaches the network
    assert all(row["ref"] for row in record["datasets"]["noise"]["per_image"])  # and the guidance
