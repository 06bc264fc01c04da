"""Activation memory of the backbones: checkpointing, a saved-tensor meter, advice.

Training a guided backbone at the authors' 384x384 crops keeps tens of GiB of
activations per sample for the backward pass (measured in docs/memory.md). Activation
(gradient) checkpointing trades that memory for one more forward: a checkpointed region
keeps only its inputs and recomputes its inside during backward
(``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, which replays the RNG
state, so dropout draws and therefore outputs and gradients are exactly those of the
plain run and a resumed training run stays exact).

The mode is the training option ``train.activation_checkpointing``:

* ``none``: nothing is recomputed;
* ``level``: one checkpoint per stage, i.e. per :class:`CheckpointedSequential` (an
  encoder or decoder level, the middle blocks, a refinement stage, a reference-fusion
  stack, a reference-encoder level);
* ``block``: one checkpoint per block of those stages.

In both modes the few blocks outside a stage are checkpointed on their own (PromptIR's
prompt steps, DRSformer's MEFC, DSRIR's refine and attention units), and so is a guided
model's reference branch (reference encoding, matching and transfer). docs/memory.md lists
the regions per backbone.

Every backbone of ``ARCH_REGISTRY`` declares the modes it supports
(``checkpoint_modes``) and reads its ``checkpointing`` attributes in its own forward;
:func:`apply_activation_checkpointing` sets them. Module types and parameter names are
unchanged by it (:class:`CheckpointedSequential` is an ``nn.Sequential``), so official
checkpoints keep loading with ``strict=True``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from textualdeg.registry import ARCH_REGISTRY

__all__ = [
    "CHECKPOINT_MODES",
    "CheckpointedSequential",
    "SavedTensorMeter",
    "active_checkpointing",
    "apply_activation_checkpointing",
    "checkpoint_call",
    "memory_advice",
]

CHECKPOINT_MODES = ("none", "level", "block")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

# Depth of checkpointed regions being run on this thread (forward or recomputation): a
# region nested in another is run plainly, so each activation is recomputed at most once.
_state = threading.local()


def _depth() -> int:
    return getattr(_state, "depth", 0)


def active_checkpointing(module: nn.Module) -> str:
    """The checkpointing mode ``module`` applies now.

    Its ``checkpointing`` attribute while training with gradients enabled and outside
    another checkpointed region; ``"none"`` otherwise (eval and ``no_grad`` forwards are
    unchanged).
    """
    mode = getattr(module, "checkpointing", "none")
    if mode == "none" or not module.training or not torch.is_grad_enabled() or _depth():
        return "none"
    return mode


def _nested(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` marking the thread as inside a checkpointed region while it runs."""

    def run(*args: Any) -> Any:
        _state.depth = _depth() + 1
        try:
            return fn(*args)
        finally:
            _state.depth -= 1

    return run


def _running_stats(norm: nn.Module) -> list[torch.Tensor]:
    return [b for b in (norm.running_mean, norm.running_var, norm.num_batches_tracked) if b is not None]


@contextlib.contextmanager
def _keep_batchnorm_stats(norms: list[nn.Module]) -> Iterator[None]:
    """Undo the running-statistics update a recomputed BatchNorm forward makes a second time."""
    saved = [[b.clone() for b in _running_stats(m)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, copies in zip(norms, saved):
                for live, copy in zip(_running_stats(m), copies):
                    live.copy_(copy)


def checkpoint_call(module: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` as a checkpointed region: only ``args`` are kept for backward.

    Non-reentrant ``torch.utils.checkpoint`` with the RNG state replayed. BatchNorm layers
    of ``module`` (SFNet's dynamic filters) get their running statistics restored after
    the recomputation, so they are updated once per step, as without checkpointing.

    Args:
        module: the module ``fn`` runs (searched for BatchNorm layers).
        fn: the computation.
        *args: its inputs (tensors and other values).

    Returns:
        What ``fn`` returns.
    """
    norms = [m for m in module.modules() if isinstance(m, _BATCH_NORMS) and m.training and m.track_running_stats]
    context_fn = (lambda: (contextlib.nullcontext(), _keep_batchnorm_stats(norms))) if norms else None
    kwargs = {"context_fn": context_fn} if context_fn is not None else {}
    return checkpoint(_nested(fn), *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


class CheckpointedSequential(nn.Sequential):
    """A stage of blocks (an ``nn.Sequential``) that can recompute its activations in backward.

    With ``checkpointing`` ``"block"`` each child is a checkpointed region, with
    ``"level"`` the whole stage is one; ``"none"`` (the default) is ``nn.Sequential``.
    Set by :func:`apply_activation_checkpointing`; only applies in training mode with
    gradients enabled. Parameter names are those of ``nn.Sequential`` (``<index>.<...>``).
    """

    checkpointing: str = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, H, W) -> the stage's output."""
        mode = active_checkpointing(self) if len(self) else "none"
        if mode == "level":
            return checkpoint_call(self, super().forward, x)
        if mode == "block":
            for block in self:
                x = checkpoint_call(block, block, x)
            return x
        return super().forward(x)


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Set the activation-checkpointing mode of a backbone (``train.activation_checkpointing``).

    Sets ``checkpointing = mode`` on the model and on every submodule that reads it (the
    :class:`CheckpointedSequential` stages and the few blocks checkpointed on their own).
    Outputs and gradients are unchanged; eval and ``no_grad`` forwards are untouched.
    Call it on the bare model, before wrapping it (DDP, ``torch.compile``).

    Args:
        model: a backbone of ``ARCH_REGISTRY`` (plain or guided).
        mode: one of the model's ``checkpoint_modes`` (:data:`CHECKPOINT_MODES`).

    Raises:
        ValueError: ``model`` is not a textualdeg backbone, or does not support ``mode``;
            the message names the class and the modes it supports.
    """
    name = type(model).__name__
    supported = getattr(model, "checkpoint_modes", None)
    if supported is None:
        raise ValueError(
            f"train.activation_checkpointing: {name} is not a textualdeg backbone (an arch of "
            f"ARCH_REGISTRY, which supports {CHECKPOINT_MODES}); got mode {mode!r}"
        )
    if mode not in supported:
        raise ValueError(f"train.activation_checkpointing={mode!r}: {name} supports {tuple(supported)}")
    for module in model.modules():
        if hasattr(type(module), "checkpointing"):
            module.checkpointing = mode


class _Saved:
    """What the meter's pack hook returns: the saved tensor, alive as long as the graph node."""

    __slots__ = ("tensor", "weight_copy", "__weakref__")

    def __init__(self, tensor: torch.Tensor, weight_copy: bool) -> None:
        self.tensor = tensor
        self.weight_copy = weight_copy


class SavedTensorMeter:
    """Counts the bytes autograd keeps for backward while the context is open.

    A ``torch.autograd.graph.saved_tensors_hooks`` pack hook records every tensor saved for
    backward; :meth:`kept_bytes` adds up the storages of those still held by the graph,
    each storage once (views and tensors saved by several nodes share one), leaving out
    parameters and their casts (autocast's bf16 copies of the weights, one per step whatever
    the batch: :meth:`weight_copy_bytes`). A checkpointed region saves its inputs here
    and nothing else: its inside is packed by checkpoint's own inner hooks. Keep the output
    referenced until :meth:`kept_bytes` is read: a graph whose output is gone is freed.

    Example::

        with SavedTensorMeter(model) as meter:
            out = model(x)
        bytes_per_pixel = meter.kept_bytes() / (x.shape[0] * x.shape[-2] * x.shape[-1])

    Args:
        model: its parameters are excluded (None: nothing is).
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in model.parameters()} if model is not None else set()
        self._saved: list[weakref.ref] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        # detached: a saved output holding its own grad_fn would make a reference cycle
        # (node -> packed -> tensor -> node) that keeps the whole graph alive
        saved = _Saved(tensor.detach(), self._is_weight_copy(tensor))
        self._saved.append(weakref.ref(saved))
        return saved

    def _is_weight_copy(self, tensor: torch.Tensor) -> bool:
        """A dtype cast of a parameter: ``ToCopyBackward0`` straight into its ``AccumulateGrad``."""
        fn = tensor.grad_fn
        if fn is None or fn.name() != "ToCopyBackward0" or len(fn.next_functions) != 1:
            return False
        source = getattr(fn.next_functions[0][0], "variable", None)
        return source is not None and source.untyped_storage().data_ptr() in self._params

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    def kept_bytes(self) -> int:
        """Activation bytes: distinct storages saved for backward and still held by the graph."""
        return self._bytes(weight_copies=False)

    def weight_copy_bytes(self) -> int:
        """Bytes of the saved casts of parameters (autocast's per-step bf16 weight copies)."""
        return self._bytes(weight_copies=True)

    def _bytes(self, weight_copies: bool) -> int:
        storages: dict[tuple[torch.device, int], int] = {}
        for ref in self._saved:
            saved = ref()
            if saved is None or saved.weight_copy != weight_copies:
                continue
            storage = saved.tensor.untyped_storage()
            if storage.data_ptr() in self._params:
                continue
            storages[(saved.tensor.device, storage.data_ptr())] = storage.nbytes()
        return sum(storages.values())


# Kept-activation KiB per input pixel of the option files' network_g (real widths), measured
# at 128x128 with bench/activation_memory.py --crop 128 (docs/memory.md): {arch class: {setting: KiB/px}}.
_SETTINGS = ("plain", "block", "level", "bf16", "block+bf16")
MEASURED_KIB_PER_PIXEL: dict[str, dict[str, float]] = {
    arch: dict(zip(_SETTINGS, values))
    for arch, values in {
        "GuidedNAFNet": (67.14, 7.59, 4.35, 37.11, 5.41),  # option 002
        "GuidedRestormer": (215.24, 10.31, 4.17, 113.92, 8.09),  # option 003
        "GuidedPromptIR": (223.70, 10.44, 4.30, 118.51, 8.16),  # option 001
        "GuidedSFNet": (58.78, 11.45, 3.79, 38.25, 6.80),  # option 005
        "GuidedDRSformer": (365.06, 11.81, 4.36, 187.55, 8.09),  # option 008
        "GuidedDRSformer200LSPA": (290.06, 8.81, 3.80, 150.05, 6.59),  # option 007
        "GuidedDSRIR": (35.75, 12.20, 5.95, 18.23, 7.08),  # dsrir_all_in_one_3task_guided
    }.items()
}


def memory_advice(arch: str) -> str:
    """A sentence for an out-of-memory message: the options that cut activation memory.

    Args:
        arch: a registered arch name (``network_g.type``; aliases such as
            ``NAFNetRefFusion`` resolve to their class).

    Returns:
        The settings that reduce memory with the factors measured for that backbone
        (docs/memory.md), or the general advice where it was not measured.
    """
    name = ARCH_REGISTRY.get(arch).__name__ if arch in ARCH_REGISTRY else arch
    measured = MEASURED_KIB_PER_PIXEL.get(name)
    if not measured:
        return (
            f"{arch}: set train.activation_checkpointing: block (or level) to recompute activations in "
            f"backward instead of keeping them, and train.mixed_precision: bf16; or lower "
            f"datasets.train.batch_size_per_gpu or gt_size (docs/memory.md)"
        )
    plain = measured["plain"]
    labels = {
        "block": "train.activation_checkpointing: block",
        "level": "level",
        "bf16": "train.mixed_precision: bf16",
        "block+bf16": "block with bf16",
    }
    parts = [f"{labels[s]} keeps {plain / measured[s]:.1f}x fewer activation bytes ({measured[s]:.1f} KiB/px)"
             for s in ("block", "level", "bf16", "block+bf16") if s in measured]
    return (
        f"{name} keeps {plain:.1f} KiB of activations per input pixel for backward in float32 "
        f"({plain * 384 * 384 / 2**20:.1f} GiB per 384x384 sample); " + ", ".join(parts)
        + " (measured at real widths with bench/activation_memory.py; docs/memory.md)"
    )
