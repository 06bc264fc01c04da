"""DA-CLIP (degradation-aware CLIP, arXiv:2310.01018) on open_clip 3.3 modules.

``DAClip`` (official parameter layout; the released ``daclip_ViT-B-32.pt`` loads with
``strict=True``), ``build_daclip``, ``tokenize``; ``load_daclip`` / ``save_daclip``;
``DAClipEmbedder`` (the frozen (content, degradation) embedder and degradation classifier);
``save_tiny_daclip`` for tests. Details and parity numbers: docs/daclip.md.
"""

from textualdeg.daclip.checkpoint import DAClipCheckpointError, load_daclip, read_degradations, save_daclip
from textualdeg.daclip.embedder import DAClipEmbedder
from textualdeg.daclip.model import DEGRADATIONS, DAClip, build_daclip, tokenize
from textualdeg.daclip.tiny import TINY_DACLIP_CONFIG, save_tiny_daclip

__all__ = [
    "DEGRADATIONS",
    "DAClip",
    "DAClipCheckpointError",
    "DAClipEmbedder",
    "TINY_DACLIP_CONFIG",
    "build_daclip",
    "load_daclip",
    "read_degradations",
    "save_daclip",
    "save_tiny_daclip",
    "tokenize",
]
