"""DA-CLIP (degradation-aware CLIP) built from open_clip 3.3 modules, in the official parameter layout.

DA-CLIP wraps a frozen CLIP and adds an image *controller*: a trainable copy of the CLIP
image tower whose transformer also owns one zero-initialised ``Linear(width, width)`` per
block. The controller's pooled output is the *degradation* embedding; the outputs of its
zero modules after each block are added to the frozen tower's token stream, whose pooled
output is then the *content* embedding. Both feed the IR-SDE restoration network of the
paper.

Layout (identical state_dict keys to the official ``DaCLIP``, so the released
``daclip_ViT-B-32.pt`` loads with ``strict=True``):

* ``clip``: an ``open_clip.model.CLIP`` (``clip.visual``, ``clip.transformer``, ...).
* ``visual``: the same module as ``clip.visual``, registered a second time (its keys
  appear twice in ``state_dict()``, once per name).
* ``visual_control``: a deep copy of ``clip.visual`` whose ``transformer`` is a
  :class:`ControlTransformer` (``.transformer`` = the copied open_clip ``Transformer``,
  ``.zero_modules`` = the per-block zero Linears).
* ``logit_scale``: DA-CLIP's own temperature (a copy of CLIP's).

No open_clip class is patched: :func:`_visual_forward` walks the open_clip
``VisionTransformer``'s own submodules (``conv1``, ``class_embedding``,
``positional_embedding``, ``patch_dropout``, ``ln_pre``, ``transformer.resblocks``,
``ln_post``, ``proj``) so the control hiddens can be added between blocks.

Control order (official ``Transformer.forward`` calls ``x += control.pop()`` after each
block): the controller's hiddens ``[h_0, ..., h_{L-1}]`` (``h_i`` = zero module ``i`` of
the controller's state after block ``i``) are added in *reverse*: after frozen block ``i``
comes ``h_{L-1-i}``. The controller itself never adds its own hiddens.

Differences from the official code (details in docs/daclip.md, "Model and checkpoints"):

* :meth:`DAClip.initial_controller` copies the frozen weights by *name*. The official
  method zips ``named_parameters()`` of two modules whose parameter lists have different
  lengths, so it also broadcasts ``ln_post.weight`` into every row of
  ``zero_modules[0].weight`` and ``ln_post.bias`` into ``zero_modules[0].bias`` (the zero
  module of the first block then is *not* zero at the start of training, and the
  controller's own ``ln_post`` is not re-copied). Ours keeps every zero module at zero, so
  a freshly initialised DA-CLIP's content embedding equals plain CLIP's.
* ``encode_image`` defaults to ``control=True`` (official: ``False``).
* ``forward`` takes the caption and degradation tokens as two tensors (official: one
  tensor of both concatenated, split with ``chunk(2, dim=-1)``).

Paper: "Controlling Vision-Language Models for Multi-Task Image Restoration" (Luo et al.,
ICLR 2024), arXiv:2310.01018. Official code: github.com/Algolzw/daclip-uir, compared
against commit 90c957438f69d251a7a57cceadab67092f622df7 (``da-clip/src/open_clip``:
``daclip_model.py``, ``transformer.py``, ``model.py``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from textualdeg.log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    import open_clip

logger = get_logger(__name__)

# The ten degradation names of the released model, in the official order
# (universal-image-restoration: README usage example and extract_degra_feature.py).
DEGRADATIONS: tuple[str, ...] = (
    "motion-blurry",
    "hazy",
    "jpeg-compressed",
    "low-light",
    "noisy",
    "raindrop",
    "rainy",
    "shadowed",
    "snowy",
    "uncompleted",
)

# open_clip's OPENAI_DATASET_MEAN / OPENAI_DATASET_STD (the official clip_transform's values).
OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Keyword arguments of open_clip.model.CLIP that a config file may carry besides the three towers.
_CLIP_EXTRA_KEYS = ("init_logit_scale", "init_logit_bias", "nonscalar_logit_scale")


class ControlTransformer(nn.Module):
    """The controller's transformer: the copied open_clip ``Transformer`` plus zero Linears.

    Attribute names follow the official ``ControlTransformer`` (``transformer``,
    ``zero_modules``), so the state_dict keys match. ``forward`` runs the blocks only (the
    plain path); :func:`_visual_forward` collects the hiddens.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        self.layers = int(transformer.layers)
        self.width = int(transformer.width)
        self.batch_first = bool(getattr(transformer, "batch_first", True))
        self.zero_modules = nn.ModuleList(nn.Linear(self.width, self.width) for _ in range(self.layers))
        self.zero_init()

    @torch.no_grad()
    def zero_init(self) -> None:
        """Set every zero module's weight and bias to 0 (the controller then adds nothing)."""
        for module in self.zero_modules:
            module.weight.zero_()
            module.bias.zero_()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the copied transformer (no hiddens); ``x`` in the layout open_clip gives it."""
        return self.transformer(x, attn_mask=attn_mask)


def _check_visual(visual: nn.Module) -> None:
    """Refuse vision towers the hidden-injecting forward does not cover (not used by DA-CLIP)."""
    problems = []
    if not isinstance(getattr(visual, "conv1", None), nn.Conv2d):
        problems.append("the image tower is not an open_clip VisionTransformer with a conv1 patch embedding")
    elif getattr(visual, "attn_pool", None) is not None:
        problems.append("attentional pooling")
    elif getattr(visual, "output_tokens", False):
        problems.append("output_tokens=True")
    elif getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        problems.append(f"pool_type={visual.pool_type!r}")
    if problems:
        raise ValueError(
            "DAClip needs a ViT CLIP with class-token or average pooling (as DA-CLIP's ViT-B-32 / ViT-L-14); "
            f"unsupported: {problems[0]}"
        )


def _embed_patches(visual: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Patch + class + position embeddings, patch dropout and ``ln_pre``: (B, 3, S, S) -> (B, 1 + N, W)."""
    x = visual.conv1(image)  # (B, W, g, g)
    x = x.flatten(2).transpose(1, 2)  # (B, N, W)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)  # (B, 1, W)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1 + N, W)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x)


def _pool_project(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip 3.3 pooling, ``ln_post`` and ``proj``: (B, 1 + N, W) -> (B, D).

    For class-token pooling, layer-norming every token and taking the first equals the
    official order (take the first token, then ``ln_post``): LayerNorm acts per token.
    """
    pool = getattr(visual, "pool_type", "tok")
    if getattr(visual, "final_ln_after_pool", False):
        pooled = x[:, 0] if pool == "tok" else x[:, 1:].mean(dim=1)
        pooled = visual.ln_post(pooled)
    else:
        x = visual.ln_post(x)
        pooled = x[:, 0] if pool == "tok" else x[:, 1:].mean(dim=1)  # (B, W)
    if visual.proj is not None:
        pooled = pooled @ visual.proj  # (B, D)
    return pooled


def _run_blocks(
    blocks: Sequence[nn.Module],
    x: torch.Tensor,
    *,
    batch_first: bool,
    zero_modules: Sequence[nn.Module] | None = None,
    control: Sequence[torch.Tensor] | None = None,
    grad_checkpointing: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run residual blocks on (B, T, W) tokens; collect zero-module hiddens and/or add control.

    Args:
        blocks: ``transformer.resblocks``.
        x: (B, T, W) tokens.
        batch_first: the blocks' layout (open_clip 3.3: True; older: sequence-first).
        zero_modules: when given, ``hiddens[i] = zero_modules[i](x after block i)``.
        control: hiddens of a controller with as many blocks; after block ``i`` the tokens
            get ``control[L - 1 - i]`` added (the official ``control.pop()`` order).
        grad_checkpointing: recompute each block in the backward pass (when grads are on).

    Returns:
        (tokens (B, T, W), hiddens: list of L tensors (B, T, W), empty without zero_modules).
    """
    if control is not None and len(control) != len(blocks):
        raise ValueError(f"control has {len(control)} hiddens for {len(blocks)} blocks")
    x = x if batch_first else x.transpose(0, 1)
    hiddens: list[torch.Tensor] = []
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, None, None, None, use_reentrant=False)
        else:
            x = block(x, attn_mask=None)
        if zero_modules is not None:
            hiddens.append(zero_modules[index](x))
        if control is not None:
            x = x + control[last - index]
    if not batch_first:
        x = x.transpose(0, 1)
        hiddens = [h.transpose(0, 1) for h in hiddens]
    return x, hiddens


def _visual_forward(
    visual: nn.Module,
    image: torch.Tensor,
    *,
    zero_modules: Sequence[nn.Module] | None = None,
    control: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One open_clip ViT image tower, walked block by block: (B, 3, S, S) -> ((B, D), hiddens)."""
    transformer = visual.transformer
    inner = transformer.transformer if isinstance(transformer, ControlTransformer) else transformer
    x = _embed_patches(visual, image)  # (B, 1 + N, W)
    x, hiddens = _run_blocks(
        inner.resblocks,
        x,
        batch_first=bool(getattr(inner, "batch_first", True)),
        zero_modules=zero_modules,
        control=control,
        grad_checkpointing=bool(getattr(inner, "grad_checkpointing", False)),
    )
    return _pool_project(visual, x), hiddens


class DAClip(nn.Module):
    """DA-CLIP around an open_clip ``CLIP``: content and degradation image embeddings.

    Args:
        clip: an ``open_clip.model.CLIP`` with a ViT image tower (class-token or average
            pooling). It becomes ``self.clip`` (not copied); the controller is a deep copy
            of ``clip.visual`` with zeroed per-block Linears, then
            :meth:`initial_controller` copies the frozen weights into it.

    Attributes:
        config: the open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``,
            ``quick_gelu``) when built by :func:`build_daclip`; needed by ``save_daclip``.
    """

    def __init__(self, clip: "open_clip.model.CLIP") -> None:
        super().__init__()
        from open_clip.model import CLIP

        if not isinstance(clip, CLIP):
            raise TypeError(f"DAClip wraps an open_clip.model.CLIP, got {type(clip).__name__}")
        _check_visual(clip.visual)
        self.clip = clip
        self.visual = clip.visual  # registered twice, as in the official layout
        control = copy.deepcopy(clip.visual)
        control.transformer = ControlTransformer(control.transformer)
        self.visual_control = control
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone())
        self.config: dict[str, Any] | None = None
        self.initial_controller()

    # ---------------------------------------------------------------- properties
    @property
    def embed_dim(self) -> int:
        """Width of the joint embedding space (512 for ViT-B-32)."""
        return int(self.clip.visual.proj.shape[1])

    @property
    def image_size(self) -> int:
        """Square input size of the image towers (224 for ViT-B-32)."""
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def image_mean(self) -> tuple[float, float, float]:
        """Per-channel normalisation mean (OpenAI CLIP's, as the official clip_transform)."""
        return OPENAI_MEAN

    @property
    def image_std(self) -> tuple[float, float, float]:
        """Per-channel normalisation std (OpenAI CLIP's)."""
        return OPENAI_STD

    @property
    def context_length(self) -> int:
        """Text context length in tokens (77)."""
        return int(self.clip.context_length)

    @property
    def zero_modules(self) -> nn.ModuleList:
        """The controller's per-block zero Linears."""
        return self.visual_control.transformer.zero_modules

    # ---------------------------------------------------------------- set-up
    @torch.no_grad()
    def initial_controller(self) -> None:
        """Copy the frozen image tower's weights into the controller, by name.

        Every controller tensor except the zero modules gets the frozen tensor of the same
        name (``transformer.X`` <- ``transformer.transformer.X``); ``logit_scale`` gets
        CLIP's. The zero modules are left as they are (zero after construction). See the
        module docstring for how the official method differs.
        """
        frozen = dict(self.clip.visual.named_parameters())
        for name, param in self.visual_control.named_parameters():
            if name.startswith("transformer.zero_modules."):
                continue
            source = "transformer." + name[len("transformer.transformer."):] if name.startswith(
                "transformer.transformer.") else name
            param.copy_(frozen[source])
        self.logit_scale.copy_(self.clip.logit_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks in the backward pass (both image towers and the text tower)."""
        self.clip.set_grad_checkpointing(enable)
        self.visual_control.transformer.transformer.grad_checkpointing = enable

    def lock_clip(self) -> None:
        """Freeze every parameter of ``self.clip`` (the controller stays trainable)."""
        for param in self.clip.parameters():
            param.requires_grad = False

    # ---------------------------------------------------------------- encoders
    def encode_image(
        self, image: torch.Tensor, control: bool = True, normalize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Image embeddings.

        Args:
            image: (B, 3, S, S), already normalised with ``image_mean``/``image_std``.
            control: True: run the controller, then the frozen tower with its hiddens;
                False: plain CLIP.
            normalize: L2-normalise the outputs.

        Returns:
            control=True: ``(content (B, D), degradation (B, D))``; False: (B, D).
        """
        if not control:
            return self.clip.encode_image(image, normalize=normalize)  # (B, D)
        degradation, hiddens = _visual_forward(
            self.visual_control, image, zero_modules=self.visual_control.transformer.zero_modules
        )  # (B, D), L x (B, 1 + N, W)
        content, _ = _visual_forward(self.clip.visual, image, control=hiddens)  # (B, D)
        if normalize:
            content, degradation = F.normalize(content, dim=-1), F.normalize(degradation, dim=-1)
        return content, degradation

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings of (B, L) token ids -> (B, D) (open_clip's own text tower)."""
        return self.clip.encode_text(tokens, normalize=normalize)

    def forward(
        self, image: torch.Tensor, caption_tokens: torch.Tensor, degradation_tokens: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The training forward: four L2-normalised embeddings and the exp'ed temperature.

        Args:
            image: (B, 3, S, S) normalised images.
            caption_tokens: (B, L) clean-content captions.
            degradation_tokens: (B, L) degradation names.

        Returns:
            ``image_features`` (B, D) content, ``text_features`` (B, D),
            ``image_degra_features`` (B, D), ``text_degra_features`` (B, D),
            ``logit_scale`` (scalar, ``exp`` of the parameter).
        """
        content, degradation = self.encode_image(image, control=True, normalize=True)
        return {
            "image_features": content,
            "text_features": self.encode_text(caption_tokens, normalize=True),
            "image_degra_features": degradation,
            "text_degra_features": self.encode_text(degradation_tokens, normalize=True),
            "logit_scale": self.logit_scale.exp(),
        }


# -------------------------------------------------------------------- construction
def resolve_config(model: str | os.PathLike | dict) -> dict[str, Any]:
    """An open_clip model config dict from a model name, a JSON file or a dict (copied).

    Names are open_clip's (``"ViT-B-32"``, ``"ViT-L-14"``); the official ``daclip_`` prefix
    is accepted (``"daclip_ViT-B-32"`` is ``"ViT-B-32"``). A JSON file may be an open_clip
    model config or a hub ``open_clip_config.json`` (``{"model_cfg": ...}``).

    Raises:
        ValueError: unknown name, or a config without ``embed_dim``/``vision_cfg``/``text_cfg``.
    """
    if isinstance(model, dict):
        cfg = copy.deepcopy(model)
        source = "the given dict"
    elif isinstance(model, (str, os.PathLike)) and Path(model).is_file():
        cfg = json.loads(Path(model).read_text(encoding="utf-8"))
        cfg = cfg.get("model_cfg", cfg)
        source = str(model)
    elif isinstance(model, str):
        import open_clip

        name = model[len("daclip_"):] if model.startswith("daclip_") else model
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(
                f"unknown model {model!r}: neither an open_clip model name (e.g. 'ViT-B-32', 'ViT-L-14') "
                "nor an existing JSON config file"
            )
        source = f"open_clip config {name!r}"
    else:
        raise ValueError(f"model must be a name, a JSON config path or a dict, got {model!r}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"{source} is not an open_clip model config: missing {', '.join(missing)}")
    return cfg


def build_daclip(model: str | os.PathLike | dict, quick_gelu: bool | None = None) -> DAClip:
    """A randomly initialised DA-CLIP (controller copied from the frozen tower).

    Args:
        model: open_clip model name (``"ViT-B-32"``, ``"daclip_ViT-B-32"``), JSON config
            file or config dict (see :func:`resolve_config`).
        quick_gelu: override the config's ``quick_gelu`` (default: the config's, else
            False, as DA-CLIP's LAION-initialised ViT-B-32).

    Returns:
        The model in train mode, on the current default device; ``model.config`` holds
        the resolved config (with ``quick_gelu``).
    """
    from open_clip.model import CLIP

    cfg = resolve_config(model)
    gelu = bool(cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu)
    extras = {k: cfg[k] for k in _CLIP_EXTRA_KEYS if k in cfg}
    clip = CLIP(
        embed_dim=int(cfg["embed_dim"]),
        vision_cfg=copy.deepcopy(cfg["vision_cfg"]),
        text_cfg=copy.deepcopy(cfg["text_cfg"]),
        quick_gelu=gelu,
        **extras,
    )
    daclip = DAClip(clip)
    daclip.config = {
        "embed_dim": int(cfg["embed_dim"]),
        "vision_cfg": copy.deepcopy(cfg["vision_cfg"]),
        "text_cfg": copy.deepcopy(cfg["text_cfg"]),
        "quick_gelu": gelu,
        **extras,
    }
    return daclip


# -------------------------------------------------------------------- tokenizer
def tokenize(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """open_clip's BPE tokenizer (vocabulary shipped inside open_clip_torch): (B,) -> (B, L) long.

    A text needing more than ``context_length`` tokens (with start and end tokens) is
    truncated as open_clip does (end token kept in the last place), with a logged warning
    naming it; open_clip itself truncates silently.
    """
    import open_clip
    from open_clip.tokenizer import _tokenizer

    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for text in texts:
        needed = len(_tokenizer.encode(text)) + 2
        if needed > context_length:
            shown = text if len(text) <= 200 else text[:197] + "..."
            logger.warning(
                "text truncated to %d tokens (it needs %d): %r", context_length, needed, shown
            )
    return open_clip.tokenize(texts, context_length=context_length)  # (B, L)
