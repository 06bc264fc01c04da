"""Tests for textualdeg.engine on a toy regression: the step loop, resume, owed validations, trackers, lock.

The stages' own tests (tests/restoration/test_train.py, tests/guidance/test_train.py) run
the engine with real networks; these isolate it.
Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from textualdeg.checkpoint import read_state_info
from textualdeg.data.sampling import EpochSampler
from textualdeg.engine import Run, Schedule, build_accelerator, build_trackers, flat_config, validation_done
from textualdeg.experiment import ExperimentLock, ExperimentLocked
from textualdeg.options import Options


class Line(Dataset):
    """y = 3x + 1 on 16 points, indexed by the ``(epoch, index)`` pairs of ``EpochSampler``."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        x = torch.tensor([key[1] / 8.0 - 1.0])
        return {"x": x, "y": 3 * x + 1}


def _opt(exp: Path, **path) -> Options:
    return Options({"name": "toy", "manual_seed": 0,
                    "train": {"mixed_precision": "no", "process_group_timeout_min": 120},
                    "path": {"experiments_root": str(exp), "resume_state": None, "auto_resume": True, **path}})


def _train(opt: Options, total: int, accumulation: int = 1, validate=None) -> tuple[Run, dict[str, torch.Tensor]]:
    """The toy stage: SGD on a 1-D linear model, batch 2, a save every 2 steps, a validation every 2."""
    with Run.open(opt, gradient_accumulation_steps=accumulation) as run:
        model = nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        loader = DataLoader(Line(), batch_size=2, sampler=EpochSampler(16, 2 * accumulation, seed=0), drop_last=True)
        model, optimizer, loader, scheduler = run.accelerator.prepare(model, optimizer, loader, scheduler)
        run.begin("toy", keep_last=3)

        def step_fn(batch: dict, step: int, micro: int) -> dict[str, torch.Tensor]:
            with run.accelerator.accumulate(model):
                loss = F.mse_loss(model(batch["x"]), batch["y"])
                run.accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            return {"loss": loss.detach()}

        run.loop(loader, scheduler, step_fn, Schedule(total, log_every=1, save_every=2, validate_every=2),
                 validate=validate)
        return run, {k: v.clone() for k, v in run.accelerator.unwrap_model(model).state_dict().items()}


def _records(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "logs" / "val_metrics.jsonl").read_text().splitlines()]


def test_loop_counts_optimizer_steps_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    run, whole = _train(_opt(tmp_path / "whole"), total=10, accumulation=2)  # 16 items / 4 per step: 2.5 epochs
    assert run.step == 10 and (run.position.epoch, run.position.batches) == (2, 4)
    _, first = _train(_opt(tmp_path / "parts"), total=5, accumulation=2)
    run, parts = _train(_opt(tmp_path / "parts"), total=10, accumulation=2)
    assert all(torch.equal(whole[k], parts[k]) for k in whole) and not torch.equal(first["weight"], parts["weight"])
    log = (tmp_path / "parts" / "logs" / "train.log").read_text()
    assert "step 10: loss " in log and "training finished at step 10" in log
    assert "start 2: resumed" in log and "auto_resume: the newest usable state of the lineage of the last start" in log


def test_a_validation_killed_after_its_save_is_redone_first_on_resume(tmp_path):
    exp = tmp_path / "run"

    def killed_at_4(step: int) -> list[dict]:
        if step == 4:
            raise KeyboardInterrupt("killed during the validation of step 4")
        return [{"score": step}]

    with pytest.raises(KeyboardInterrupt):
        _train(_opt(exp), total=6, validate=killed_at_4)
    assert [r["step"] for r in _records(exp)] == [2]
    assert read_state_info(exp / "state" / "step_00000004") == {"start": 1, "validation_due": True}
    assert not validation_done(exp, 4, 1)

    _train(_opt(exp), total=6, validate=lambda step: [{"score": step}])
    assert [(r["step"], r["start"], r["score"]) for r in _records(exp)] == [(2, 1, 2), (4, 1, 4), (6, 2, 6)]
    assert "validating step 4 first" in (exp / "logs" / "train.log").read_text()
    _train(_opt(exp), total=6, validate=lambda step: [{"score": step}])  # step 6 was validated: nothing owed
    assert len(_records(exp)) == 3


def test_on_two_processes_every_process_validates_and_a_killed_validation_is_redone_by_all(tmp_path):
    """torchrun, 2 gloo processes (tests/_toy_engine_on_processes.py): both call the validation, the main
    process's records are written once; after a kill inside the validation of step 4 the resumed
    run validates step 4 first on both processes (the main process tells the other)."""
    import os
    import subprocess

    exp = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def launch(kill: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).parent / "_toy_engine_on_processes.py"), str(exp), str(kill)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    def validated(rank: int) -> list[int]:
        return [int(line) for line in (exp / f"validated_{rank}.txt").read_text().split()]

    assert launch(kill=4).returncode != 0
    assert [(r["step"], r["start"], r["process"]) for r in _records(exp)] == [(2, 1, 0)]
    assert validated(0) == validated(1) == [2]
    result = launch(kill=0)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [(r["step"], r["start"], r["process"]) for r in _records(exp)] == [(2, 1, 0), (4, 1, 0), (6, 2, 0)]
    assert validated(0) == validated(1) == [2, 4, 6]
    assert "validating step 4 first" in (exp / "logs" / "train.log").read_text()


def test_trackers_get_the_options_and_wandb_its_project_and_run_id(tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        def log(self, values, step=None, **kwargs):
            calls.setdefault("log", []).append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    config = types.SimpleNamespace(update=lambda values, **kw: calls.setdefault("config", values))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, config=config))
    opt = _opt(tmp_path / "run")
    with Run.open(opt, log_with=build_trackers(False, "textualdeg-runs", "abc123", run_name="toy")) as run:
        run.begin("toy", keep_last=1)
        run.accelerator.log({"train/loss": 1.0}, step=3)
    assert calls["init"] == {"project": "textualdeg-runs", "name": "toy", "id": "abc123", "resume": "allow"}
    assert calls["config"] == flat_config(opt.to_dict()) and calls["config"]["path.auto_resume"] is True
    assert calls["log"] == [(3, {"train/loss": 1.0})] and calls["finished"]
    assert build_trackers(True) == ["tensorboard"] and build_trackers(False, None, "ignored") == []


def test_flat_config_and_schedule():
    assert flat_config({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "a.d": None,
                                                                              "e": "x"}
    when = Schedule(total=7, log_every=3, save_every=5, validate_every=0, validate_at_end=True)
    assert [s for s in range(1, 8) if when.logs(s)] == [3, 6, 7]
    assert [s for s in range(1, 8) if when.saves(s)] == [5, 7]
    assert [s for s in range(1, 8) if when.validates(s)] == [7]
    with pytest.raises(ValueError, match="save_every=0"):
        Schedule(total=7, log_every=1, save_every=0)
    for total in (0, -1, True):
        with pytest.raises(ValueError, match=f"total={total!r}: expected at least 1 optimizer step"):
            Schedule(total=total, log_every=1, save_every=1)


@pytest.mark.parametrize("entry, option_file, key", [
    ("textualdeg.guidance.train:main_i2t", "train_i2t/sd21base_vith14.yml", "train.max_train_steps"),
    ("textualdeg.guidance.train:main_tr", "train_tr/sd21base_vith14.yml", "train.max_train_steps"),
    ("textualdeg.restoration.train:main", "train_restoration/tiny_cpu.yml", "train.total_iter"),
    ("textualdeg.daclip.train:main", "train_daclip/daclip_tiny_cpu.yml", "train.total_iter"),
    ("textualdeg.instruction.train:main", "train_instruction/textpromptir_tiny_cpu.yml", "train.total_iter"),
])
@pytest.mark.parametrize("steps", [0, -3])
def test_every_stage_refuses_a_plan_of_no_steps_before_it_touches_the_run_folder(tmp_path, entry, option_file,
                                                                                 key, steps):
    """A plan of no steps used to write the untrained weights as the result and exit 0."""
    import importlib

    module, name = entry.split(":")
    main = getattr(importlib.import_module(module), name)
    option_path = Path(__file__).resolve().parents[1] / "options" / option_file
    with pytest.raises(ValueError, match=r"expected at least 1 optimizer step .*nothing would be trained"):
        main(["-opt", str(option_path), "--set", f"{key}={steps}", "--set",
              f"path.experiments_root={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_the_process_group_timeout_is_an_option(tmp_path):
    """train.process_group_timeout_min reaches accelerate's InitProcessGroupKwargs (NCCL's default is 10 min)."""
    from datetime import timedelta

    from textualdeg.guidance.schema import TR_SCHEMA
    from textualdeg.options import load_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    root = Path(__file__).resolve().parents[1] / "options"
    for schema, name in ((RESTORATION_SCHEMA, "train_restoration/tiny_cpu.yml"),
                         (TR_SCHEMA, "train_tr/sd21base_vith14.yml")):  # neither sets it
        assert load_options(root / name, schema).train.process_group_timeout_min == 120  # the default
    opt = Options({**_opt(tmp_path / "run").to_dict(),
                   "train": {"mixed_precision": "no", "process_group_timeout_min": 7}})
    with Run.open(opt) as run:
        assert run.accelerator.init_handler.timeout == timedelta(minutes=7)
    with pytest.raises(ValueError, match="train.process_group_timeout_min=0"):
        build_accelerator(tmp_path / "bad", process_group_timeout_min=0)


def test_a_second_run_on_a_locked_folder_is_refused_before_it_writes_anything(tmp_path):
    holder = ExperimentLock(tmp_path / "run")
    holder.acquire()
    try:
        with pytest.raises(ExperimentLocked, match=r"pid \d+ on host .*, started"):
            _train(_opt(tmp_path / "run"), total=2)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.lock"]
    finally:
        holder.release()
    _train(_opt(tmp_path / "run"), total=2)
