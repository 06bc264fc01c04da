"""The image-to-text (I2T) and textual-restoration (TR) mappers, and loading their weights.

``ImageToTextMapper`` turns CLIP image tokens into ``num_words`` pseudo-word embeddings
for the text encoder; ``TextRestorationMapper`` maps those words to "clean" words. Both
keep the authors' module names (``mapping_{i}``, ``mapping_patch_{i}``, 10-layer
``nn.Sequential``s), so their ``torch.save`` files load by key.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334. The MLP layout comes from
ELITE (csyxwei/ELITE) as adapted by mrluin/TextualDegRemoval@e755c39
``scripts/train/main_train_{i2t,tr}_mapping.py`` (``Mapper``, ``CleanMapper``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from textualdeg.checkpoint import load_weights, save_weights
from textualdeg.guidance.processors import convert_authors_global_kv, is_authors_global_kv_key
from textualdeg.log import get_logger

logger = get_logger(__name__)

_OUR_GLOBAL_KV = re.compile(r"\.attn2\.to_[kv]_global\.(weight|bias)$")
_WORD_KEY = re.compile(r"^mapping(_patch)?_(\d+)\.")


def _word_mlp(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Sequential:
    """The authors' per-word MLP: 3 x (Linear, LayerNorm, LeakyReLU) then Linear.

    Indices 0, 3, 6, 9 are Linear and 1, 4, 7 LayerNorm (the state-dict contract).
    """
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
        nn.LeakyReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
        nn.LeakyReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
        nn.LeakyReLU(),
        nn.Linear(hidden_dim, output_dim),
    )


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value}")


class ImageToTextMapper(nn.Module):
    """CLIP image tokens -> ``num_words`` word embeddings (the paper's I2T mapper).

    Word i = ``mapping_i(CLS)`` + mean over patch tokens of ``mapping_patch_i(patch)``.

    Args:
        input_dim: CLIP image width (1280 for ViT-H/14, 1024 for ViT-L/14).
        output_dim: text-encoder width (1024 for SD 2.1, 768 for SD 1.5).
        num_words: number of pseudo-words injected into the prompt (20 in the paper).
        hidden_dim: hidden width of every MLP (1280 in the authors' code).
    """

    def __init__(self, input_dim: int = 1280, output_dim: int = 1024, num_words: int = 20, hidden_dim: int = 1280):
        super().__init__()
        _check_dims(input_dim=input_dim, output_dim=output_dim, num_words=num_words, hidden_dim=hidden_dim)
        self.input_dim, self.output_dim, self.num_words, self.hidden_dim = input_dim, output_dim, num_words, hidden_dim
        for i in range(num_words):
            self.add_module(f"mapping_{i}", _word_mlp(input_dim, hidden_dim, output_dim))
            self.add_module(f"mapping_patch_{i}", _word_mlp(input_dim, hidden_dim, output_dim))

    @classmethod
    def for_models(
        cls,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        num_words: int = 20,
        hidden_dim: int = 1280,
    ) -> ImageToTextMapper:
        """A mapper whose widths are read from the loaded models' configs.

        Args:
            image_encoder: the CLIP image encoder (``config.hidden_size`` -> ``input_dim``).
            text_encoder: the SD text encoder (``config.hidden_size`` -> ``output_dim``).
            num_words: number of words.
            hidden_dim: hidden MLP width.
        """
        return cls(
            input_dim=image_encoder.config.hidden_size,
            output_dim=text_encoder.config.hidden_size,
            num_words=num_words,
            hidden_dim=hidden_dim,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map CLIP tokens to word embeddings.

        Args:
            features: (B, 1 + P, input_dim) CLIP ``last_hidden_state``, CLS first.

        Returns:
            (B, num_words, output_dim) word embeddings.
        """
        if features.ndim != 3 or features.shape[-1] != self.input_dim or features.shape[1] < 2:
            raise ValueError(f"features must be (B, 1 + P, {self.input_dim}) with P >= 1; got {tuple(features.shape)}")
        cls_token, patches = features[:, :1], features[:, 1:]  # (B, 1, C), (B, P, C)
        words = [
            getattr(self, f"mapping_{i}")(cls_token)  # (B, 1, D)
            + getattr(self, f"mapping_patch_{i}")(patches).mean(1, keepdim=True)  # (B, P, D) -> (B, 1, D)
            for i in range(self.num_words)
        ]  # num_words x (B, 1, D)
        return torch.cat(words, dim=1)  # (B, num_words, D)


class TextRestorationMapper(nn.Module):
    """Word embeddings -> "clean" word embeddings, one MLP per word (the paper's TR mapper).

    Args:
        input_dim: width of the I2T words (the text width, 1024 for SD 2.1).
        output_dim: width of the output words (the text width).
        num_words: number of words (must equal the I2T mapper's).
        hidden_dim: hidden width of every MLP (1280 in the authors' code).
        residual: map ``w -> w + MLP(w)`` with the last layer zero-initialised, so the
            mapper starts as the identity and learns a correction of the degraded words
            (ours; the authors map ``w -> MLP(w)``, the default). With few training
            scenes the plain MLP maps unseen scenes onto training ones (docs/demo.md).
            Same parameters and keys either way; files record it (``residual`` metadata).
    """

    def __init__(
        self,
        input_dim: int = 1024,
        output_dim: int = 1024,
        num_words: int = 20,
        hidden_dim: int = 1280,
        residual: bool = False,
    ):
        super().__init__()
        _check_dims(input_dim=input_dim, output_dim=output_dim, num_words=num_words, hidden_dim=hidden_dim)
        if residual and input_dim != output_dim:
            raise ValueError(f"a residual TR mapper needs input_dim == output_dim; got {input_dim} -> {output_dim}")
        self.input_dim, self.output_dim, self.num_words, self.hidden_dim = input_dim, output_dim, num_words, hidden_dim
        self.residual = residual
        for i in range(num_words):
            mlp = _word_mlp(input_dim, hidden_dim, output_dim)
            if residual:
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)
            self.add_module(f"mapping_{i}", mlp)

    @classmethod
    def for_models(
        cls, text_encoder: nn.Module, num_words: int = 20, hidden_dim: int = 1280, residual: bool = False
    ) -> TextRestorationMapper:
        """A mapper whose widths are the loaded text encoder's ``config.hidden_size``.

        Args:
            text_encoder: the SD text encoder.
            num_words: number of words (the I2T mapper's).
            hidden_dim: hidden MLP width.
            residual: see the class.
        """
        width = text_encoder.config.hidden_size
        return cls(input_dim=width, output_dim=width, num_words=num_words, hidden_dim=hidden_dim, residual=residual)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """Map each word through its own MLP (plus the word itself when residual).

        Args:
            words: (B, num_words, input_dim).

        Returns:
            (B, num_words, output_dim).
        """
        if words.ndim != 3 or words.shape[1:] != (self.num_words, self.input_dim):
            raise ValueError(f"words must be (B, {self.num_words}, {self.input_dim}); got {tuple(words.shape)}")
        mapped = torch.cat([getattr(self, f"mapping_{i}")(words[:, i : i + 1]) for i in range(self.num_words)], dim=1)
        return words + mapped if self.residual else mapped


def is_residual_tr_file(path: str | Path) -> bool:
    """Whether a TR mapper file was saved from a residual mapper (its ``residual`` metadata).

    The authors' ``torch.save`` files and files without the record are not residual.
    """
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("residual") == "true"
    except Exception:  # not a safetensors file (the authors' .pt): their mapper is not residual
        return False


def _word_count(keys: list[str]) -> int:
    indices = [int(m.group(2)) for key in keys if (m := _WORD_KEY.match(key))]
    return max(indices) + 1 if indices else 0


def load_mapper_weights(
    mapper: ImageToTextMapper | TextRestorationMapper,
    path: str | Path,
) -> dict[str, torch.Tensor]:
    """Load mapper weights from our safetensors file or the authors' ``torch.save`` file.

    The file may also hold global K/V projections, in the authors' layout
    (``<attn2 path with . -> _>_to_k.weight``, as their I2T ``mapper.pt`` does) or in ours
    (``<attn2 path>.to_k_global.weight``). They are not part of the mapper; they are
    returned in our layout for :func:`textualdeg.guidance.processors.load_global_kv`.

    Args:
        mapper: the module to fill (its word count and widths are checked against the file).
        path: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` (a state dict saved with torch.save).

    Returns:
        The global K/V tensors found in the file, in our flat layout (empty dict if none).

    Raises:
        textualdeg.checkpoint.CheckpointError: (an ``OSError``) the file is missing or unreadable.
        ValueError: naming the file, when its word count, widths or keys do not match ``mapper``.
    """
    path = Path(path)
    state = load_weights(path)
    authors_kv = {key: value for key, value in state.items() if is_authors_global_kv_key(key)}
    ours_kv = {key: value for key, value in state.items() if _OUR_GLOBAL_KV.search(key)}
    weights = {key: value for key, value in state.items() if key not in authors_kv and key not in ours_kv}
    kind = type(mapper).__name__

    file_words, mapper_words = _word_count(list(weights)), mapper.num_words
    if file_words != mapper_words:
        raise ValueError(f"{path}: holds {file_words} words but the {kind} has num_words={mapper_words}")
    expected = mapper.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        hint = ""
        if any(key.startswith("mapping_patch_") for key in unexpected):
            hint = " (an ImageToTextMapper file?)"
        elif any(key.startswith("mapping_patch_") for key in missing):
            hint = " (a TextRestorationMapper file?)"
        raise ValueError(
            f"{path}: keys do not match the {kind}{hint}; missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for key, tensor in expected.items():
        if weights[key].shape != tensor.shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(weights[key].shape)} but the {kind} "
                f"(input_dim={mapper.input_dim}, hidden_dim={mapper.hidden_dim}, output_dim={mapper.output_dim}) "
                f"expects {tuple(tensor.shape)}"
            )
    mapper.load_state_dict(weights, strict=True)
    global_kv = {**convert_authors_global_kv(authors_kv), **ours_kv}
    logger.info(
        "loaded %s weights (%d words) from %s%s",
        kind,
        mapper_words,
        path,
        f" with {len(global_kv)} global K/V tensors" if global_kv else "",
    )
    return global_kv


def save_mapper_weights(
    path: str | Path,
    mapper: ImageToTextMapper | TextRestorationMapper,
    global_kv: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write mapper weights (and optionally the global K/V in our layout) to one safetensors file.

    The file records the mapper class, word count and widths as metadata. Written
    atomically through ``textualdeg.checkpoint.save_weights``.

    Args:
        path: output ``.safetensors`` file.
        mapper: the mapper to save.
        global_kv: ``textualdeg.guidance.processors.global_kv_state_dict(unet)`` for an I2T file.
    """
    tensors = {key: value.detach() for key, value in mapper.state_dict().items()}
    if global_kv:
        tensors.update({key: value.detach() for key, value in global_kv.items()})
    metadata = {
        "class": type(mapper).__name__,
        "num_words": str(mapper.num_words),
        "input_dim": str(mapper.input_dim),
        "hidden_dim": str(mapper.hidden_dim),
        "output_dim": str(mapper.output_dim),
    }
    if isinstance(mapper, TextRestorationMapper):
        metadata["residual"] = "true" if mapper.residual else "false"
    save_weights(tensors, path, metadata=metadata)
