"""Restoration backbones, plain and guided, registered in ``ARCH_REGISTRY``.

The registry is filled by the explicit imports below (no import scanning): adding an arch
means adding one import line here. Plain models take ``model(x)``, guided ones
``model(x, ref)``, TextPromptIR ``model(x, text_embedding)`` and GuidedTextPromptIR
``model(x, ref, text_embedding)``; inputs are (B, C, H, W) in [0, 1] of any size.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from textualdeg.restoration.archs.drsformer import DRSformer, DRSformer200LSPA
from textualdeg.restoration.archs.dsrir import DSRIR
from textualdeg.restoration.archs.nafnet import NAFNet, NAFNetLocal
from textualdeg.restoration.archs.promptir import PromptIR
from textualdeg.restoration.archs.restormer import Restormer
from textualdeg.restoration.archs.sfnet import SFNet
from textualdeg.restoration.archs.textpromptir import TextPromptIR

__all__ = ["DRSformer", "DRSformer200LSPA", "DSRIR", "NAFNet", "NAFNetLocal", "PromptIR", "Restormer", "SFNet", "TextPromptIR"]

# Guided archs: a plain backbone plus the shared reference branch (restoration/reference/).
from textualdeg.restoration.archs.guided_nafnet import GuidedNAFNet  # noqa: E402  (also "NAFNetRefFusion")
from textualdeg.restoration.archs.guided_promptir import GuidedPromptIR  # noqa: E402
from textualdeg.restoration.archs.guided_restormer import GuidedRestormer  # noqa: E402
from textualdeg.restoration.archs.guided_drsformer import (  # noqa: E402  (also "DRSformerRefFusion",
    GuidedDRSformer,  # "DRSformer200L_SPA_RefFusion")
    GuidedDRSformer200LSPA,
)
from textualdeg.restoration.archs.guided_dsrir import GuidedDSRIR  # noqa: E402
from textualdeg.restoration.archs.guided_sfnet import GuidedSFNet  # noqa: E402  (also "SFNetRefFusion")
from textualdeg.restoration.archs.guided_textpromptir import GuidedTextPromptIR  # noqa: E402

__all__ += ["GuidedNAFNet", "GuidedPromptIR", "GuidedRestormer", "GuidedDRSformer", "GuidedDRSformer200LSPA",
            "GuidedDSRIR", "GuidedSFNet", "GuidedTextPromptIR"]

# DA-CLIP-conditioned archs (content cross-attention, degradation modulation): model(..., daclip=e).
from textualdeg.restoration.archs.daclip_archs import (  # noqa: E402
    DAClipGuidedNAFNet,
    DAClipGuidedPromptIR,
    DAClipGuidedRestormer,
    DAClipGuidedTextPromptIR,
    DAClipNAFNet,
    DAClipPromptIR,
    DAClipRestormer,
    DAClipTextPromptIR,
)

__all__ += ["DAClipNAFNet", "DAClipRestormer", "DAClipPromptIR", "DAClipTextPromptIR", "DAClipGuidedNAFNet",
            "DAClipGuidedRestormer", "DAClipGuidedPromptIR", "DAClipGuidedTextPromptIR"]
