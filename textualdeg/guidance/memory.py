"""Memory options of the guidance stages (1-3) and the message when memory runs out.

* ``attention_backend(name)``: the attention kernel every attention layer of the UNet,
  the text encoder and the CLIP image encoder uses (they all call
  ``F.scaled_dot_product_attention``): ``sdpa`` lets PyTorch pick its fused kernels
  (flash / memory-efficient / cuDNN on a GPU, the flash kernel on a CPU), which never hold
  the (B, heads, N, L) score matrix; ``math`` forces the unfused reference kernel, which
  does, as the authors' patched attention did (D5 in docs/official_differences.md).
  The option keys are ``train.attention`` (stages 1-2) and ``generate.attention`` (stage 3).
* ``out_of_memory_hint(...)``: re-raises an out-of-memory error (device or host) with
  the stage, the options that set its batch and image size, and the memory options that
  would help, each with its measured effect (docs/real_size.md).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from textualdeg.guidance.schema import ATTENTION_BACKENDS

# The CPU allocator reports exhaustion as a RuntimeError with this text.
_CPU_OUT_OF_MEMORY = "can't allocate memory"


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Run the enclosed forward (and backward) with the named attention kernel.

    Args:
        name: ``sdpa`` (PyTorch's choice of fused kernels) or ``math`` (the unfused kernel).

    Raises:
        ValueError: an unknown name.
    """
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention={name!r}: expected one of {ATTENTION_BACKENDS}")
    if name == "sdpa":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and _CPU_OUT_OF_MEMORY in str(error)
    )


@contextlib.contextmanager
def out_of_memory_hint(stage: str, size_options: Sequence[str], memory_options: Sequence[str]) -> Iterator[None]:
    """Re-raise running out of memory as ``torch.OutOfMemoryError`` saying what to change.

    Args:
        stage: e.g. ``"stage 1 (I2T mapper) training step"``.
        size_options: ``"key=value"`` of the options that set the batch and image size.
        memory_options: ``"key: value (effect)"`` of the memory options not yet in use.

    Raises:
        torch.OutOfMemoryError: from a device or host out-of-memory error, with the hint.
    """
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not _is_out_of_memory(error):
            raise
        where = "device" if isinstance(error, torch.OutOfMemoryError) else "host"
        helps = "; ".join(memory_options) if memory_options else "none left to turn on"
        raise torch.OutOfMemoryError(
            f"{error}\n\n{stage} ran out of {where} memory with {', '.join(size_options)}. Lower those, or turn on "
            f"the memory options: {helps} (measured in docs/real_size.md)."
        ) from error


__all__ = ["ATTENTION_BACKENDS", "attention_backend", "out_of_memory_hint"]
