"""Tests for textualdeg.restoration.train: learning, exact resume, two processes, bad input.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import textualdeg.restoration.archs.guided_nafnet  # noqa: F401  (registers GuidedNAFNet)
from textualdeg.checkpoint import StateCheckpointer, load_weights
from textualdeg.imageio import ImageReadError, read_image, write_image
from textualdeg.metrics import Protocol, psnr
from textualdeg.options import load_options
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.schema import RESTORATION_SCHEMA
from textualdeg.restoration.train import EpochSampler, build_restoration_dataset, train

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_data import make_tiny_folders, tiny_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "options" / "train_restoration" / "tiny_cpu.yml"
SCRIPT = REPO / "scripts" / "train" / "train_restoration.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small models train far faster than with two contending threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_folders(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> Path:
    from textualdeg.pretrained.dinov2 import save_tiny_dinov2

    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2"), seed=3)


def _opt(folders: dict[str, Path], exp: Path, *extra: str):
    return load_options(TINY, RESTORATION_SCHEMA, tiny_overrides(folders, exp) + list(extra))


def _weights(exp: Path, tag: str = "latest", ema: bool = False) -> dict[str, torch.Tensor]:
    return load_weights(exp / "checkpoints" / f"net_g_{'ema_' if ema else ''}{tag}.safetensors")


def test_training_raises_val_psnr_3db_above_noisy_input(folders, tmp_path):
    exp = tmp_path / "run"
    opt = _opt(folders, exp, "train.total_iter=120", "train.scheduler.periods=[120]", "val.val_freq=120",
               "logger.save_checkpoint_freq=120", "logger.use_tb_logger=true")
    assert train(opt) == exp
    assert list((exp / "logs").glob("tiny_cpu/events.out.tfevents.*"))  # TensorBoard scalars
    record = [json.loads(line) for line in (exp / "logs" / "val_metrics.jsonl").read_text().splitlines()]
    assert record[-1]["step"] == 120 and record[-1]["dataset"] == "tiny_val"
    val_set = build_restoration_dataset(opt.datasets["val"], "val", "tiny_val", opt.manual_seed)
    protocol = Protocol(channels="rgb", crop_border=0, ssim_variant="gaussian3d", quantize="uint8")
    noisy = np.mean([psnr(val_set[i]["lq"].permute(1, 2, 0).numpy(), val_set[i]["gt"].permute(1, 2, 0).numpy(),
                          protocol).value for i in range(len(val_set))])
    assert 19.0 < noisy < 21.5  # sigma 25
    assert record[-1]["psnr"] > noisy + 3.0, (record[-1], noisy)
    # run folder: resolved options reload, weights, side-by-side images (input | guidance | output | target)
    assert load_options(exp / "options.yml", RESTORATION_SCHEMA).train.total_iter == 120
    assert set(_weights(exp)) == set(_weights(exp, "120"))
    vis = sorted((exp / "visualization" / "tiny_val").glob("*_120.png"))
    assert len(vis) == 2
    assert read_image(vis[0]).shape == (48, 4 * 48, 3)


def test_resume_mid_epoch_equals_uninterrupted_run(folders, tmp_path):
    common = ["datasets.train.batch_size_per_gpu=2", "train.ema_decay=0.9", "train.param_fix_iterations=2",
              "train.param_fix_group=backbone", "train.scheduler.periods=[8]", "train.warmup_iter=3",
              "val.val_freq=100", "logger.print_freq=2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(_opt(folders, whole, "train.total_iter=8", "logger.save_checkpoint_freq=1", "logger.keep_last_states=8",
               *common))  # keep every net_g_<step> file (rotated with the states)
    train(_opt(folders, parts, "train.total_iter=4", "logger.save_checkpoint_freq=4", *common))
    assert StateCheckpointer(parts / "state").latest().name == "step_00000004"
    # 12 images / batch 2 = 6 batches per epoch: step 4 is mid-epoch, 8 is in the next epoch
    train(_opt(folders, parts, "train.total_iter=8", "logger.save_checkpoint_freq=4", *common))
    for ema in (False, True):
        a, b = _weights(whole, ema=ema), _weights(parts, ema=ema)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    # the backbone is frozen for the first 2 steps, then trains; the masa_* parameters train throughout
    w1, w2, w3 = (_weights(whole, str(s)) for s in (1, 2, 3))
    backbone = [k for k in w1 if not k.startswith("masa_")]
    masa = [k for k in w1 if k.startswith("masa_") and w1[k].dtype.is_floating_point]
    assert all(torch.equal(w1[k], w2[k]) for k in backbone)
    assert any(not torch.equal(w1[k], w2[k]) for k in masa)
    assert any(not torch.equal(w2[k], w3[k]) for k in backbone)


def test_dino_windows_chosen_in_the_step_resume_bit_identically(folders, tiny_dino, tmp_path):
    """ref_crop: dino with references of two sizes (collated as a list) and a progressive
    schedule: the windows are chosen on the device after the progressive crop; resuming
    mid-epoch in the second stage gives the uninterrupted run's weights."""
    refs = tmp_path / "ref"
    for path in sorted(folders["train_ref"].glob("*.png")):
        image = read_image(path)
        if path.stem.endswith("_1"):  # a second reference size in most batches
            image = np.ascontiguousarray(np.pad(image, ((0, 8), (0, 16), (0, 0)), mode="reflect"))
        write_image(refs / path.name, image)
    common = ["datasets.train.ref_crop=dino", f"path.pretrain_dino={tiny_dino}", f"datasets.train.dataroot_ref={refs}",
              "datasets.train.mini_batch_sizes=[4,2]", "datasets.train.iters=[3,5]", "datasets.train.gt_sizes=[32,40]",
              "datasets.train.gt_size=40", "train.scheduler.periods=[8]", "val.val_freq=100"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"  # 12 images, batch 4: step 4 is mid-epoch
    train(_opt(folders, whole, "train.total_iter=8", "logger.save_checkpoint_freq=8", *common))
    train(_opt(folders, parts, "train.total_iter=4", "logger.save_checkpoint_freq=4", *common))
    train(_opt(folders, parts, "train.total_iter=8", "logger.save_checkpoint_freq=4", *common))
    assert "DINOv2 window selection (ref_crop: dino) in the training step on cpu" in (
        whole / "logs" / "train.log").read_text()
    a, b = _weights(whole), _weights(parts)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dino_without_pretrain_dino_is_an_error_naming_the_key(folders, tmp_path):
    with pytest.raises(ValueError, match="path.pretrain_dino"):
        train(_opt(folders, tmp_path / "run", "datasets.train.ref_crop=dino", "train.total_iter=1"))


def test_refined_path_resumes_bit_identically_with_correspondence_loss_and_frozen_reference(folders, tmp_path):
    """reference_mode: refined, the correspondence loss (its random shifts come from the
    resumed RNG) and param_fix_group: reference (the authors' intent: masa_* frozen)."""
    common = ["datasets.train.batch_size_per_gpu=2", "train.param_fix_iterations=2",
              "train.param_fix_group=reference", "train.correspondence_opt.loss_weight=0.1",
              "network_g.reference_mode=refined", "train.scheduler.periods=[6]", "val.val_freq=100"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(_opt(folders, whole, "train.total_iter=6", "logger.save_checkpoint_freq=1", "logger.keep_last_states=6",
               *common))  # keep every net_g_<step> file (rotated with the states)
    train(_opt(folders, parts, "train.total_iter=3", "logger.save_checkpoint_freq=3", *common))
    train(_opt(folders, parts, "train.total_iter=6", "logger.save_checkpoint_freq=3", *common))
    a, b = _weights(whole), _weights(parts)
    assert a.keys() == b.keys() and "masa_gate.weight" in a
    assert "step 6: loss" in (whole / "logs" / "train.log").read_text()
    assert ", correspondence " in (whole / "logs" / "train.log").read_text()  # logged beside the total loss
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the masa_* parameters are frozen for the first 2 steps, the backbone trains throughout
    w1, w2, w3 = (_weights(whole, str(s)) for s in (1, 2, 3))
    masa = [k for k in w1 if k.startswith("masa_")]
    backbone = [k for k in w1 if not k.startswith("masa_")]
    assert all(torch.equal(w1[k], w2[k]) for k in masa)
    assert any(not torch.equal(w1[k], w2[k]) for k in backbone)
    assert any(not torch.equal(w2[k], w3[k]) for k in masa if k.startswith("masa_enc"))


def test_correspondence_loss_needs_the_refined_path(folders, tmp_path):
    opt = _opt(folders, tmp_path / "run", "train.correspondence_opt.loss_weight=0.1", "train.total_iter=1")
    with pytest.raises(ValueError, match="reference_mode: refined"):
        train(opt)


@pytest.mark.slow
@pytest.mark.parametrize("path_options", [[], ["network_g.reference_mode=refined",
                                               "train.correspondence_opt.loss_weight=0.1"],
                                          ["datasets.train.ref_crop=dino", "path.pretrain_dino={dino}",
                                           "datasets.train.gt_size=32"],
                                          ["train.param_fix_iterations=2", "train.param_fix_group=reference",
                                           "train.micro_batches=2"]],
                         ids=["masa", "refined", "dino", "frozen-then-trained-accumulated"])
def test_two_processes_match_one_process_with_same_global_batch(folders, tiny_dino, tmp_path, path_options):
    path_options = [option.format(dino=tiny_dino) for option in path_options]
    common = ["train.total_iter=3", "train.scheduler.periods=[3]", "val.val_freq=100", "train.warmup_iter=-1",
              "logger.save_checkpoint_freq=3", *path_options]
    one = tmp_path / "one"
    train(_opt(folders, one, "datasets.train.batch_size_per_gpu=4", *common))
    two = tmp_path / "two"
    overrides = tiny_overrides(folders, two) + ["datasets.train.batch_size_per_gpu=2", *common]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           "-opt", str(TINY)] + [arg for item in overrides for arg in ("--set", item)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (two / "state" / "step_00000003").is_dir()
    a, b = _weights(one), _weights(two)
    worst = max(a, key=lambda k: (a[k] - b[k]).abs().max().item())
    # refined: the correspondence loss's softmax over all positions is summed in another
    # order on two processes, and Adam's first steps divide the deepest encoder biases'
    # tiny gradients by their own size (measured 1.5e-5 after 3 steps at lr 1e-3)
    tolerance = 5e-5 if "network_g.reference_mode=refined" in path_options else 1e-5
    assert (a[worst] - b[worst]).abs().max().item() < tolerance, (worst, (a[worst] - b[worst]).abs().max().item())
    torch.manual_seed(100)  # manual_seed: the initial weights of both runs
    start = ARCH_REGISTRY.build(_opt(folders, one, *path_options).network_g.to_dict()).state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # the runs really trained
    # the validation at the end ran on both processes (2 of the 4 images each), its record written once
    one_val, two_val = ([json.loads(line) for line in (exp / "logs" / "val_metrics.jsonl").read_text().splitlines()]
                        for exp in (one, two))
    assert [(r["step"], r["dataset"]) for r in two_val] == [(3, "tiny_val")]
    assert [(r["step"], r["dataset"]) for r in one_val] == [(3, "tiny_val")]
    assert abs(one_val[0]["psnr"] - two_val[0]["psnr"]) < 0.01 and abs(one_val[0]["ssim"] - two_val[0]["ssim"]) < 1e-4

    def pictures(exp: Path) -> list[str]:
        return sorted(p.name for p in (exp / "visualization" / "tiny_val").glob("*.png"))

    assert pictures(two) == pictures(one) and len(pictures(one)) == 2  # val.max_vis_images


def test_missing_guidance_image_is_an_error_naming_the_file(folders, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(folders["train_ref"], ref)
    (ref / "coffee_1.png").unlink()
    exp = tmp_path / "run"
    with pytest.raises(ValueError, match="coffee_1"):
        train(_opt(folders, exp, f"datasets.train.dataroot_ref={ref}", "train.total_iter=2"))
    assert not (exp / "state").exists()


def _paired_folders(folders: dict[str, Path], root: Path) -> list[str]:
    """LQ/GT folders for PairedImageRefDataset (LQ = seeded noisy GT); one LQ of the wrong size."""
    lq = root / "lq"
    lq.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted(folders["train_gt"].glob("*.png")):
        gt = read_image(path)
        noisy = np.clip(gt + rng.normal(0, 25 / 255, gt.shape), 0, 1).astype(np.float32)
        write_image(lq / path.name, noisy[:40] if path.stem == "chelsea_2" else noisy)
    return ["datasets.train.type=PairedImageRefDataset", f"datasets.train.dataroot_lq={lq}",
            "datasets.train.sigma_type=null", "datasets.train.sigma_range=null", "datasets.train.sigma_test=null"]


def test_lq_gt_size_mismatch_is_an_error_naming_both_files_or_a_logged_skip(folders, tmp_path):
    paired = _paired_folders(folders, tmp_path)
    with pytest.raises(ValueError, match=r"chelsea_2.*chelsea_2"):
        train(_opt(folders, tmp_path / "strict", *paired, "train.total_iter=3", "val.val_freq=100"))
    exp = tmp_path / "skip"
    train(_opt(folders, exp, *paired, "datasets.train.skip_bad_images=true", "train.total_iter=3",
               "val.val_freq=100", "datasets.train.use_shuffle=false"))
    assert (exp / "checkpoints" / "net_g_latest.safetensors").is_file()
    assert "skipping bad training sample" in (exp / "logs" / "train.log").read_text()


def test_corrupt_image_mid_run_keeps_last_state_resumable(folders, tmp_path):
    gt = tmp_path / "gt"
    shutil.copytree(folders["train_gt"], gt)
    exp = tmp_path / "run"
    extra = [f"datasets.train.dataroot_gt={gt}", "logger.save_checkpoint_freq=2", "val.val_freq=100"]
    train(_opt(folders, exp, "train.total_iter=2", *extra))
    good = (gt / "rocket_1.png").read_bytes()
    (gt / "rocket_1.png").write_bytes(good[: len(good) // 3])  # truncated PNG: read fails mid-epoch
    with pytest.raises(ImageReadError, match="rocket_1"):
        train(_opt(folders, exp, "train.total_iter=8", *extra))
    assert StateCheckpointer(exp / "state").latest().name == "step_00000002"
    skipped = tmp_path / "skipped"
    shutil.copytree(exp, skipped)
    train(_opt(folders, skipped, "train.total_iter=8", "datasets.train.skip_bad_images=true", *extra))
    assert StateCheckpointer(skipped / "state").latest().name == "step_00000008"
    (gt / "rocket_1.png").write_bytes(good)
    train(_opt(folders, exp, "train.total_iter=8", *extra))
    assert StateCheckpointer(exp / "state").latest().name == "step_00000008"
    assert "resumed training state of step 2" in (exp / "logs" / "train.log").read_text()


def test_epoch_sampler_is_seeded_per_epoch_and_cut_to_global_batches():
    sampler = EpochSampler(num_items=10, global_batch=4, seed=1)
    first = list(sampler)
    assert len(first) == 8 and all(epoch == 0 for epoch, _ in first)
    assert len({i for _, i in first}) == 8
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in first]
    with pytest.raises(ValueError, match="batch_size_per_gpu"):
        EpochSampler(num_items=3, global_batch=4, seed=1)


def test_script_main_trains_then_resumes_step_lr_and_optimizer_state(folders, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_restoration_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    exp = tmp_path / "run"
    args = ["-opt", str(TINY)] + [a for item in tiny_overrides(folders, exp) for a in ("--set", item)]
    args += ["--set", "logger.save_checkpoint_freq=2", "--set", "val.val_freq=100"]
    script.main(script.parse_args(args + ["--set", "train.total_iter=2"]))
    script.main(script.parse_args(args + ["--set", "train.total_iter=4"]))
    assert "resumed training state of step 2" in (exp / "logs" / "train.log").read_text()
    state = exp / "state" / "step_00000004"
    scheduler = torch.load(state / "scheduler.bin", weights_only=False)
    optimizer = torch.load(state / "optimizer.bin", weights_only=False)
    assert scheduler["last_epoch"] == 4
    assert all(int(s["step"]) == 4 for s in optimizer["state"].values())
    assert [g["lr"] for g in optimizer["param_groups"]] == pytest.approx(scheduler["_last_lr"])


def _val_steps(exp: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (exp / "logs" / "val_metrics.jsonl").read_text().splitlines()]


def test_validation_killed_after_the_save_is_redone_by_the_resumed_run(folders, tmp_path, monkeypatch):
    import textualdeg.restoration.train as stage4

    exp = tmp_path / "run"
    extra = ["train.total_iter=6", "train.scheduler.periods=[6]", "logger.save_checkpoint_freq=2", "val.val_freq=2"]
    real_validate = stage4.validate

    def killed_at_4(model, val_sets, opt, step, *args):
        if step == 4:
            raise KeyboardInterrupt("killed inside the validation of step 4")
        return real_validate(model, val_sets, opt, step, *args)

    monkeypatch.setattr(stage4, "validate", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(_opt(folders, exp, *extra))
    assert StateCheckpointer(exp / "state").latest().name == "step_00000004" and _val_steps(exp) == [2]
    monkeypatch.setattr(stage4, "validate", real_validate)
    train(_opt(folders, exp, *extra))
    assert _val_steps(exp) == [2, 4, 6]
    assert "validating step 4 first" in (exp / "logs" / "train.log").read_text()
    assert len(list((exp / "visualization" / "tiny_val").glob("*_4.png"))) == 2


def test_auto_resume_follows_the_branch_that_ran_last_and_every_start_is_recorded(folders, tmp_path):
    exp = tmp_path / "run"
    common = ["train.scheduler.periods=[6]", "logger.save_checkpoint_freq=2", "logger.keep_last_states=4",
              "val.val_freq=100"]
    train(_opt(folders, exp, "train.total_iter=6", *common))  # states 2, 4, 6
    # a branch from step 2 with changed options, stopped at step 3
    train(_opt(folders, exp, "train.total_iter=3", "logger.print_freq=1", *common,
               f"path.resume_state={exp / 'state' / 'step_00000002'}"))
    train(_opt(folders, exp, "train.total_iter=6", *common))  # auto-resume: step 3 of the branch, not step 6
    log = (exp / "logs" / "train.log").read_text()
    assert "resumed training state of step 3 from" in log
    assert "states of other lineages, left alone: step_00000004, step_00000006" in log
    starts = [json.loads(line) for line in (exp / "starts.jsonl").read_text().splitlines()]
    assert [(s["start"], s["step"], s["resumed"] and s["resumed"]["start"]) for s in starts] == [
        (1, 0, None), (2, 2, 1), (3, 3, 2)]
    assert starts[1]["reason"].startswith("path.resume_state=")
    assert starts[2]["reason"] == ("auto_resume: the newest usable state of the lineage of the last start "
                                   "(start 2, start 1 up to step 2)")
    assert load_options(exp / starts[1]["options"], RESTORATION_SCHEMA).logger.print_freq == 1
    assert load_options(exp / "options.yml", RESTORATION_SCHEMA).logger.print_freq == 50
    from textualdeg.checkpoint import read_state_info

    assert [read_state_info(exp / "state" / f"step_0000000{s}")["start"] for s in (2, 3, 4, 6)] == [1, 2, 3, 3]


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(folders, tmp_path):
    import signal
    import socket

    from textualdeg.experiment import ExperimentLocked

    exp = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from textualdeg.experiment import ExperimentLock; "
         "ExperimentLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(exp)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExperimentLocked, match=rf"in use by another run \(pid {holder.pid} on host "
                                                   rf"{socket.gethostname()}, started "):
            train(_opt(folders, exp, "train.total_iter=2"))
        assert not (exp / "logs").exists() and not (exp / "state").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(_opt(folders, exp, "train.total_iter=2", "val.val_freq=100"))  # the killed holder's lock is gone
    assert (exp / "checkpoints" / "net_g_latest.safetensors").is_file()
