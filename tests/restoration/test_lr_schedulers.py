"""Tests for textualdeg.restoration.lr_schedulers (BasicSR formulas, D41 floors, resume).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import math

import pytest
import torch

from textualdeg.registry import SCHEDULER_REGISTRY
from textualdeg.restoration.lr_schedulers import build_scheduler


def _optimizer(lrs=(2e-4, 1e-4)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.AdamW(groups)


def _run(scheduler, steps):
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_cyclic_cosine_follows_basicsr_formula_per_group():
    sched = build_scheduler(_optimizer((1.0, 0.5)), {"type": "CosineAnnealingRestartCyclicLR", "periods": [10, 20],
                                                     "restart_weights": [1, 0.5], "eta_mins": [0.1, 0.0]})
    lrs = _run(sched, 35)
    for t in (0, 3, 9):
        assert lrs[t][0] == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * t / 10)))
    for t in (10, 17, 29):
        assert lrs[t][1] == pytest.approx(0.5 * 0.5 * 0.5 * (1 + math.cos(math.pi * (t - 10) / 20)))
    assert lrs[34] == [pytest.approx(0.0), pytest.approx(0.0)]


def test_authors_floors_are_capped_so_the_lr_never_rises():
    """D41: eta_mins [3e-4, 1e-6] with lrs 2e-4 / 1e-4: hold each lr, then decay to 1e-6."""
    sched = build_scheduler(_optimizer(), {"type": "CosineAnnealingRestartCyclicLR", "periods": [306, 694],
                                           "restart_weights": [1, 1], "eta_mins": [3e-4, 1e-6]})
    lrs = _run(sched, 1000)
    assert all(lr[0] == pytest.approx(2e-4) and lr[1] == pytest.approx(1e-4) for lr in lrs[:306])
    assert max(lr[0] for lr in lrs) == pytest.approx(2e-4)
    assert lrs[999][0] == pytest.approx(1e-6, abs=1e-8) and lrs[999][1] == pytest.approx(1e-6, abs=1e-8)
    assert all(a[0] >= b[0] for a, b in zip(lrs, lrs[1:]))


def test_linear_warmup_multiplies_the_schedule():
    sched = build_scheduler(_optimizer((1.0,)), {"type": "ConstantLR"}, warmup_iter=4)
    assert [lr[0] for lr in _run(sched, 6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_multistep_and_cosine_restart():
    sched = build_scheduler(_optimizer((1.0,)), {"type": "MultiStepRestartLR", "milestones": [2, 4], "gamma": 0.5,
                                                 "restarts": [5], "restart_weights": [0.5]})
    assert [lr[0] for lr in _run(sched, 7)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.5, 0.5])
    sched = build_scheduler(_optimizer((1.0,)), {"type": "CosineAnnealingRestartLR", "periods": [4, 4],
                                                 "restart_weights": [1, 1], "eta_min": 0.0})
    lrs = [lr[0] for lr in _run(sched, 8)]
    assert lrs[0] == lrs[4] == pytest.approx(1.0) and lrs[2] == pytest.approx(0.5)


def test_state_dict_resumes_exactly():
    spec = {"type": "CosineAnnealingRestartCyclicLR", "periods": [7, 9], "restart_weights": [1, 1],
            "eta_mins": [1e-4, 1e-6]}
    whole = build_scheduler(_optimizer(), spec, warmup_iter=3)
    expected = _run(whole, 16)
    first = build_scheduler(_optimizer(), spec, warmup_iter=3)
    head = _run(first, 5)
    state = first.state_dict()
    second = build_scheduler(_optimizer(), spec, warmup_iter=3)
    second.load_state_dict(state)
    for group, lr in zip(second.optimizer.param_groups, second.get_last_lr()):
        group["lr"] = lr  # accelerate/torch restore the optimizer's lr with the optimizer state
    assert head + _run(second, 11) == expected


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="eta_mins"):
        build_scheduler(_optimizer(), {"type": "CosineAnnealingRestartCyclicLR", "periods": [5, 5],
                                       "restart_weights": [1, 1], "eta_mins": [0.0]})
    with pytest.raises(ValueError, match="periods"):
        build_scheduler(_optimizer(), {"type": "CosineAnnealingRestartCyclicLR", "periods": [0]})
    with pytest.raises(ValueError, match="warmup_iter"):
        build_scheduler(_optimizer(), {"type": "ConstantLR", "warmup_iter": 3})
    assert "CosineAnnealingRestartCyclicLR" in SCHEDULER_REGISTRY


def test_null_keys_are_unset_so_a_child_file_can_switch_schedule_type():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    spec = {"type": "CosineAnnealingRestartLR", "periods": [10], "restart_weights": [1], "eta_min": 0.0,
            "eta_mins": None}  # left over from a base file's cyclic schedule
    sched = build_scheduler(opt, spec)
    assert sched.get_last_lr() == [1.0]
    with pytest.raises(TypeError, match="unknown argument 'eta_mins'"):
        build_scheduler(opt, spec | {"eta_mins": [0.1]})


def test_training_plan_is_checked_against_the_schedule(caplog):
    from textualdeg.restoration.lr_schedulers import check_schedule

    spec = {"type": "CosineAnnealingRestartCyclicLR", "periods": [30, 70], "restart_weights": [1, 1],
            "eta_mins": [1e-4, 1e-6]}
    check_schedule(spec, 100)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="total_iter must be a positive number of steps"):
            check_schedule(spec, bad)
    with pytest.raises(ValueError, match=r"periods \[30, 70\] add up to 100 steps, fewer than train.total_iter=150"):
        build_scheduler(_optimizer(), spec, total_iter=150)
    with caplog.at_level("WARNING"):
        build_scheduler(_optimizer(), spec, total_iter=80)  # cut short on purpose (PromptIR's 120 of 150 epochs)
    assert any("the schedule is cut before its end" in r.getMessage() for r in caplog.records)
    check_schedule({"type": "ConstantLR"}, 10)
