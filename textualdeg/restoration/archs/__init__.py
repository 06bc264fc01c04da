"""Restoration backbones, plain and guided, registered in ``ARCH_REGISTRY``.

The registry is filled by the explicit imports below (no import scanning): adding an arch
means adding one import line here. Plain models take ``model(x)``, guided ones
``model(x, ref)``; inputs are (B, C, H, W) in [0, 1] of any size.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from textualdeg.restoration.archs.nafnet import NAFNet, NAFNetLocal
from textualdeg.restoration.archs.promptir import PromptIR
from textualdeg.restoration.archs.restormer import Restormer

__all__ = ["NAFNet", "NAFNetLocal", "PromptIR", "Restormer"]

# Guided archs (GUIDED engineer) are appended below.
from textualdeg.restoration.archs.guided_nafnet import GuidedNAFNet  # noqa: E402  (also "NAFNetRefFusion")
from textualdeg.restoration.archs.guided_promptir import GuidedPromptIR  # noqa: E402
from textualdeg.restoration.archs.guided_restormer import GuidedRestormer  # noqa: E402

__all__ += ["GuidedNAFNet", "GuidedPromptIR", "GuidedRestormer"]
