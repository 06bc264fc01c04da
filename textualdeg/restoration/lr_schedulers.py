"""Iteration-based learning-rate schedules for restoration training.

Registered in ``SCHEDULER_REGISTRY`` under BasicSR's names, so ``train.scheduler``
blocks of the authors' option files load unchanged:

- ``CosineAnnealingRestartCyclicLR`` (all 19 authors' files): cosine periods, each
  decaying from a (weighted) base lr to its own floor ``eta_mins[i]``;
- ``CosineAnnealingRestartLR``: cosine periods with restarts to one floor;
- ``MultiStepRestartLR``: step decay by ``gamma`` at ``milestones``;
- ``ConstantLR``: the base lr (optionally after warm-up).

Every schedule is a closed-form function of the optimizer step count, computed per
parameter group from that group's base lr, so ``state_dict()``/``load_state_dict()``
(the step count and base lrs) resume it exactly. Every schedule takes ``warmup_iter``:
a linear warm-up that multiplies the schedule by ``(t + 1) / warmup_iter`` for the first
``warmup_iter`` steps (BasicSR's ``update_learning_rate`` warm-up; ``-1`` or ``0`` = none).

Floors (D41 in docs/official_differences.md): the authors' files give
``eta_mins: [3e-4, 1e-6]`` with base lrs 2e-4 and 1e-4, so their lr *rises* for 306k
iterations. Here each floor is capped
at its group's base lr (one warning says so), which gives the Restormer intent the
numbers were copied from: hold the base lr for the first period, then decay to 1e-6.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
Formulas from XPixelGroup/BasicSR@8d56e3a basicsr/models/lr_scheduler.py and
swz30/Restormer basicsr/models/lr_scheduler.py (Apache-2.0 / MIT).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from textualdeg.log import get_logger
from textualdeg.registry import SCHEDULER_REGISTRY

logger = get_logger(__name__)


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {list(values)!r}")
    return values


class _ClosedFormLR(LRScheduler):
    """Base class: ``lr_at(step, base_lr)`` times the linear warm-up factor.

    Args:
        optimizer: the wrapped optimizer; each param group's ``lr`` at construction
            is its base lr.
        warmup_iter (int): linear warm-up steps; ``<= 0`` disables it. Default -1.
        last_epoch (int): index of the last step taken (-1 = fresh). Default -1.
    """

    def __init__(self, optimizer: Optimizer, warmup_iter: int = -1, last_epoch: int = -1) -> None:
        if not isinstance(warmup_iter, int) or isinstance(warmup_iter, bool):
            raise ValueError(f"warmup_iter must be an integer, got {warmup_iter!r}")
        self.warmup_iter = warmup_iter
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float, group_index: int) -> float:
        """The schedule's lr (without warm-up) for optimizer step ``step`` (0-based)."""
        raise NotImplementedError

    def _lrs(self) -> list[float]:
        step = max(self.last_epoch, 0)
        factor = 1.0
        if self.warmup_iter > 0 and step < self.warmup_iter:
            factor = (step + 1) / self.warmup_iter
        return [factor * self.lr_at(step, float(base), i) for i, base in enumerate(self.base_lrs)]

    def get_lr(self) -> list[float]:
        return self._lrs()

    def _get_closed_form_lr(self) -> list[float]:
        return self._lrs()


@SCHEDULER_REGISTRY.register()
class CosineAnnealingRestartCyclicLR(_ClosedFormLR):
    """Cyclic cosine: in period i, lr decays from ``w_i * base`` to the floor ``eta_i``.

    For step t in period i (starting at ``start_i``, length ``periods[i]``)::

        lr = eta_i + w_i * 0.5 * (base - eta_i) * (1 + cos(pi * (t - start_i) / periods[i]))

    with ``eta_i = min(eta_mins[i], base)`` per param group (D41). After the last period
    the lr stays at the last floor.

    Args:
        optimizer: the wrapped optimizer.
        periods (tuple[int, ...]): length of each cosine period in steps.
        restart_weights (tuple[float, ...]): weight of the base lr at each restart.
            Default (1,) for one period; must match ``periods`` in length.
        eta_mins (tuple[float, ...]): the floor of each period. Default (0,).
        warmup_iter (int): linear warm-up steps (<= 0: none). Default -1.
        last_epoch (int): index of the last step (-1 = fresh). Default -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        periods: Sequence[int] = (1,),
        restart_weights: Sequence[float] = (1.0,),
        eta_mins: Sequence[float] = (0.0,),
        warmup_iter: int = -1,
        last_epoch: int = -1,
    ) -> None:
        self.periods = _positive_ints("periods", periods)
        self.restart_weights = tuple(float(w) for w in restart_weights)
        self.eta_mins = tuple(float(e) for e in eta_mins)
        if len(self.restart_weights) != len(self.periods):
            raise ValueError(
                f"restart_weights {list(restart_weights)!r} must have one entry per period {list(self.periods)!r}"
            )
        if len(self.eta_mins) != len(self.periods):
            raise ValueError(f"eta_mins {list(eta_mins)!r} must have one entry per period {list(self.periods)!r}")
        if any(e < 0 for e in self.eta_mins):
            raise ValueError(f"eta_mins must be >= 0, got {list(eta_mins)!r}")
        self.cumulative = tuple(sum(self.periods[: i + 1]) for i in range(len(self.periods)))
        super().__init__(optimizer, warmup_iter, last_epoch)
        capped = [
            (i, float(base), eta) for i, base in enumerate(self.base_lrs) for eta in self.eta_mins if eta > float(base)
        ]
        if capped:
            logger.warning(
                "scheduler eta_mins %s exceed the base lr of some parameter groups (%s); those floors are "
                "capped at the group's base lr, so the lr never rises above it (D41 in docs/official_differences.md)",
                list(self.eta_mins),
                sorted({base for _, base, _ in capped}),
            )

    def lr_at(self, step: int, base_lr: float, group_index: int) -> float:
        i = bisect_right(self.cumulative, step)
        if i >= len(self.periods):
            return min(self.eta_mins[-1], base_lr)
        start = self.cumulative[i] - self.periods[i]
        eta = min(self.eta_mins[i], base_lr)
        cos = 1.0 + math.cos(math.pi * (step - start) / self.periods[i])
        return eta + self.restart_weights[i] * 0.5 * (base_lr - eta) * cos


@SCHEDULER_REGISTRY.register()
class CosineAnnealingRestartLR(CosineAnnealingRestartCyclicLR):
    """Cosine annealing with restarts to one floor ``eta_min`` (BasicSR): the cyclic
    schedule with the same floor in every period.

    Args:
        optimizer: the wrapped optimizer.
        periods (tuple[int, ...]): length of each cosine period in steps.
        restart_weights (tuple[float, ...]): base-lr weight at each restart. Default (1,).
        eta_min (float): the floor, capped at each group's base lr. Default 0.
        warmup_iter (int): linear warm-up steps (<= 0: none). Default -1.
        last_epoch (int): index of the last step (-1 = fresh). Default -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        periods: Sequence[int] = (1,),
        restart_weights: Sequence[float] = (1.0,),
        eta_min: float = 0.0,
        warmup_iter: int = -1,
        last_epoch: int = -1,
    ) -> None:
        if eta_min < 0:
            raise ValueError(f"eta_min must be >= 0, got {eta_min!r}")
        self.eta_min = float(eta_min)
        eta_mins = (self.eta_min,) * len(tuple(periods))
        super().__init__(optimizer, periods, restart_weights, eta_mins, warmup_iter, last_epoch)


@SCHEDULER_REGISTRY.register()
class MultiStepRestartLR(_ClosedFormLR):
    """Multiply the lr by ``gamma`` at each milestone; restart to ``w * base`` at restarts.

    Args:
        optimizer: the wrapped optimizer.
        milestones (tuple[int, ...]): steps at which the lr is multiplied by ``gamma``.
        gamma (float): decay factor. Default 0.1.
        restarts (tuple[int, ...]): steps at which the decay count restarts. Default ().
        restart_weights (tuple[float, ...]): base-lr weight after each restart. Default ().
        warmup_iter (int): linear warm-up steps (<= 0: none). Default -1.
        last_epoch (int): index of the last step (-1 = fresh). Default -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        restarts: Sequence[int] = (),
        restart_weights: Sequence[float] = (),
        warmup_iter: int = -1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = tuple(sorted(int(m) for m in milestones))
        self.gamma = float(gamma)
        self.restarts = tuple(int(r) for r in restarts)
        self.restart_weights = tuple(float(w) for w in restart_weights)
        if len(self.restarts) != len(self.restart_weights):
            raise ValueError(
                f"restarts {list(restarts)!r} and restart_weights {list(restart_weights)!r} must have the same length"
            )
        if list(self.restarts) != sorted(self.restarts):
            raise ValueError(f"restarts must be increasing, got {list(restarts)!r}")
        super().__init__(optimizer, warmup_iter, last_epoch)

    def lr_at(self, step: int, base_lr: float, group_index: int) -> float:
        r = bisect_right(self.restarts, step)
        weight = self.restart_weights[r - 1] if r else 1.0
        since = self.restarts[r - 1] if r else 0
        decays = sum(1 for m in self.milestones if since < m <= step)
        return base_lr * weight * self.gamma**decays


@SCHEDULER_REGISTRY.register()
class ConstantLR(_ClosedFormLR):
    """The base lr of every group, after an optional linear warm-up.

    Args:
        optimizer: the wrapped optimizer.
        warmup_iter (int): linear warm-up steps (<= 0: none). Default -1.
        last_epoch (int): index of the last step (-1 = fresh). Default -1.
    """

    def lr_at(self, step: int, base_lr: float, group_index: int) -> float:
        return base_lr


def check_schedule(spec: dict, total_iter: int) -> None:
    """Refuse a plan that trains nothing or runs past its schedule; warn when it is cut short.

    Args:
        spec: ``train.scheduler`` as a dict.
        total_iter: ``train.total_iter``.

    Raises:
        ValueError: ``total_iter <= 0`` (nothing would be trained, yet weights would be
            written), or cosine ``periods`` that add up to less than ``total_iter`` (the
            remaining steps would silently run at the floor lr).
    """
    if isinstance(total_iter, bool) or not isinstance(total_iter, int) or total_iter <= 0:
        raise ValueError(f"train.total_iter must be a positive number of steps, got {total_iter!r}: "
                         f"nothing would be trained")
    periods = spec.get("periods")
    if not periods:
        return
    length = sum(int(p) for p in periods)
    if length < total_iter:
        raise ValueError(f"train.scheduler.periods {list(periods)} add up to {length} steps, fewer than "
                         f"train.total_iter={total_iter}: the last {total_iter - length} steps would run at the "
                         f"floor lr; make them add up to {total_iter}")
    if length > total_iter:
        logger.warning("train.scheduler.periods add up to %d steps but training stops at train.total_iter=%d: "
                       "the schedule is cut before its end (intended e.g. when reproducing an epoch-cut recipe)",
                       length, total_iter)


def build_scheduler(
    optimizer: Optimizer, spec: dict, warmup_iter: int = -1, total_iter: int | None = None
) -> LRScheduler:
    """Build ``spec['type']`` from ``SCHEDULER_REGISTRY`` over ``optimizer``.

    Args:
        optimizer: the optimizer whose param groups' current lrs are the base lrs.
        spec: ``train.scheduler`` as a dict (``type`` plus constructor kwargs; keys set to
            None are left out).
        warmup_iter: ``train.warmup_iter`` (<= 0: no warm-up).
        total_iter: ``train.total_iter``, checked against the schedule
            (:func:`check_schedule`); None skips the check.

    Returns:
        The scheduler, already at step 0 (the group lrs are set for the first step).
    """
    # a null value means "not set": an option file can unset a key its base file sets
    # (e.g. eta_mins of a cyclic schedule when it switches to eta_min)
    spec = {k: v for k, v in dict(spec).items() if v is not None}
    if "warmup_iter" in spec:
        raise ValueError("set the warm-up with train.warmup_iter, not train.scheduler.warmup_iter")
    if total_iter is not None:
        check_schedule(spec, total_iter)
    return SCHEDULER_REGISTRY.build(spec, optimizer=optimizer, warmup_iter=int(warmup_iter))


__all__ = [
    "CosineAnnealingRestartCyclicLR",
    "CosineAnnealingRestartLR",
    "MultiStepRestartLR",
    "ConstantLR",
    "build_scheduler",
    "check_schedule",
]
