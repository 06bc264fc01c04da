"""Stages 1-3 of TextualDegRemoval: image-to-text and textual-restoration mappers on
Stable Diffusion 2.1-base + CLIP ViT-H/14, and guidance-image generation.

This is the only subpackage that imports diffusers, transformers and open_clip.
Entry points: :func:`textualdeg.guidance.train_mapper` (stages 1 and 2) and
:func:`textualdeg.guidance.generate.generate` (stage 3; the function is not re-exported
here because it would hide its own module).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from textualdeg.guidance.train import train_mapper

__all__ = ["train_mapper"]
