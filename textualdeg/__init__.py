"""textualdeg: a training framework for TextualDegRemoval.

Reimplements "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).

Importing this package (or ``textualdeg.restoration``) never imports diffusers,
transformers or open_clip; only ``textualdeg.guidance`` does.
"""

__version__ = "0.1.0"
