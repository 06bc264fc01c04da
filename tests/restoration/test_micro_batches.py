"""Tests for stage-4 gradient accumulation (train.micro_batches) and the freeze window.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from textualdeg.checkpoint import load_weights
from textualdeg.options import load_options
from textualdeg.registry import ARCH_REGISTRY
from textualdeg.restoration.micro_batches import split_batch
from textualdeg.restoration.schema import RESTORATION_SCHEMA
from textualdeg.restoration.train import FreezeWindow, train

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_data import make_tiny_folders, tiny_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "options" / "train_restoration" / "tiny_cpu.yml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_folders(tmp_path_factory.mktemp("tiny_data"))


def _opt(folders: dict[str, Path], exp: Path, *extra: str):
    return load_options(TINY, RESTORATION_SCHEMA, tiny_overrides(folders, exp) + list(extra))


def test_split_batch_splits_per_sample_values_and_shares_sum_to_one():
    batch = {"lq": torch.arange(5.0).view(5, 1, 1, 1), "gt": torch.zeros(5, 1, 2, 2),
             "lq_path": [f"{i}.png" for i in range(5)], "note": "shared"}
    parts = split_batch(batch, 2)
    assert [len(p["lq_path"]) for p, _ in parts] == [3, 2]
    assert [share for _, share in parts] == [0.6, 0.4]
    assert torch.equal(torch.cat([p["lq"] for p, _ in parts]), batch["lq"])
    assert parts[1][0]["lq_path"] == ["3.png", "4.png"] and parts[1][0]["note"] == "shared"
    assert len(split_batch(batch, 8)) == 5  # never an empty micro-batch
    assert split_batch(batch, 1) == [(batch, 1.0)]
    with pytest.raises(ValueError, match="micro_batches"):
        split_batch(batch, 0)


@pytest.mark.parametrize("micro", [2, 3], ids=["even", "uneven"])
def test_accumulated_micro_batches_equal_the_whole_batch(folders, tmp_path, micro):
    """Batch 4 in 2 (2+2) or 3 (2+1+1) micro-batches: the weights after 3 steps equal batch 4 at once."""
    common = ["datasets.train.batch_size_per_gpu=4", "train.total_iter=3", "train.scheduler.periods=[3]",
              "train.warmup_iter=-1", "val.val_freq=100", "logger.save_checkpoint_freq=3"]
    whole, accumulated = tmp_path / "whole", tmp_path / "accumulated"
    train(_opt(folders, whole, *common))
    train(_opt(folders, accumulated, *common, f"train.micro_batches={micro}"))
    a = load_weights(whole / "checkpoints" / "net_g_latest.safetensors")
    b = load_weights(accumulated / "checkpoints" / "net_g_latest.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    torch.manual_seed(100)  # manual_seed: both runs start from these weights
    start = ARCH_REGISTRY.build(_opt(folders, whole).network_g.to_dict()).state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # they really trained


def test_freeze_window_takes_the_group_out_of_autograd_then_trains_it(folders, tmp_path):
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build(_opt(folders, tmp_path).network_g.to_dict())
    window = FreezeWindow(model, 2, "reference")
    masa = [p for n, p in model.named_parameters() if n.startswith("masa_")]
    assert window.params and len(window.params) == len(masa)
    window.apply(0)
    assert not any(p.requires_grad for p in masa)
    lq, ref = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    model(lq, ref).mean().backward()
    assert all(p.grad is None for p in masa)  # no gradient computed for the frozen group
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("masa_"))
    window.apply(2)
    assert all(p.requires_grad for p in masa)
    assert not FreezeWindow(model, 0, "reference").needs_unused_parameter_search


def test_freeze_window_needs_a_guided_network():
    plain = ARCH_REGISTRY.build({"type": "NAFNet", "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1],
                                 "dec_blk_nums": [1]})
    with pytest.raises(ValueError, match="param_fix_iterations=3"):
        FreezeWindow(plain, 3, "backbone")


def test_micro_batches_must_be_positive_before_anything_is_written(folders, tmp_path):
    opt = _opt(folders, tmp_path / "run", "train.micro_batches=0", "train.total_iter=1")
    with pytest.raises(ValueError, match="train.micro_batches must be >= 1"):
        train(opt)
    assert not (tmp_path / "run").exists()


class _OutOfMemoryNet(torch.nn.Module):
    """Raises what a full device (or the CPU allocator) raises."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")],
                         ids=["device", "host"])
def test_out_of_memory_in_the_step_names_the_options_that_reduce_memory(error):
    from accelerate import Accelerator

    from textualdeg.restoration.train import training_step

    model = _OutOfMemoryNet(error)
    optimizer = torch.optim.AdamW(model.parameters())
    batch = {"lq": torch.zeros(2, 3, 8, 8), "gt": torch.zeros(2, 3, 8, 8)}
    with pytest.raises(torch.OutOfMemoryError) as caught:
        training_step(model, batch, torch.nn.L1Loss(), optimizer, Accelerator(cpu=True), False, None)
    message = str(caught.value)
    assert "ran out of" in message and "_OutOfMemoryNet" in message
    assert "train.activation_checkpointing" in message and "train.mixed_precision: bf16" in message
    assert "train.micro_batches" in message and "batch_size_per_gpu" in message


def test_other_runtime_errors_in_the_step_pass_unchanged():
    from accelerate import Accelerator

    from textualdeg.restoration.train import training_step

    model = _OutOfMemoryNet(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        training_step(model, {"lq": torch.zeros(1, 3, 8, 8), "gt": torch.zeros(1, 3, 8, 8)}, torch.nn.L1Loss(),
                      torch.optim.AdamW(model.parameters()), Accelerator(cpu=True), False, None)
