"""Reference guidance for the restoration backbones (stage 4).

"Improving Image Restoration through Removing Degradations in Textual Representations"
(Lin et al., CVPR 2024, arXiv:2312.17334): the generated guidance image is encoded with
the degraded input by one :class:`ReferenceEncoder`, matched coarse-to-fine
(:class:`CoarseToFineMatcher`), warped level by level (:class:`PatchTransfer`) and fused
into the backbone's encoder by identity-initialised blocks (:class:`ReferenceFusion`).
:class:`ReferenceGuidedMixin` wires them into a backbone (see ``restoration/archs/guided_*.py``).
``reference_mode: refined`` replaces matching and transfer by ours (``refined.py``,
docs/reference_path.md).
"""

# The building blocks below import textualdeg.restoration.archs (padding, checkpointing),
# whose package imports the guided backbones, which import this package's guided.py: load
# the archs package first so any module of this package can be the first one imported.
import textualdeg.restoration.archs  # noqa: F401  (import order, see above)
from textualdeg.restoration.reference.encoder import ReferenceEncoder, ResidualBlock
from textualdeg.restoration.reference.fusion import ReferenceFusion, ZeroGatedResidual
from textualdeg.restoration.reference.guided import ReferenceGuidedMixin
from textualdeg.restoration.reference.matching import CoarseToFineMatcher, Match, gather_windows
from textualdeg.restoration.reference.refined import MatchGate, Move, RefinedMatcher, correspondence_loss
from textualdeg.restoration.reference.transfer import PatchTransfer

__all__ = [
    "CoarseToFineMatcher",
    "Match",
    "MatchGate",
    "Move",
    "PatchTransfer",
    "ReferenceEncoder",
    "ReferenceFusion",
    "ReferenceGuidedMixin",
    "RefinedMatcher",
    "ResidualBlock",
    "ZeroGatedResidual",
    "correspondence_loss",
    "gather_windows",
]
