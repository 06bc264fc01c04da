"""Evaluate a DA-CLIP as a degradation classifier: accuracy per class and overall, confusion matrix.

    python scripts/eval/evaluate_daclip_classifier.py --daclip experiments/daclip_tiny_cpu/daclip \
        --data labelled/ --out results/daclip_classifier

``--data`` is ``ROOT/<degradation>/*.png`` or a DA-CLIP CSV (``filepath<TAB>title``).
Writes ``classification.json`` and ``confusion_matrix.png`` under ``--out`` (the same as
``textualdeg evaluate-daclip``).

DA-CLIP: "Controlling Vision-Language Models for Multi-Task Image Restoration" (Luo et al.,
ICLR 2024), arXiv:2310.01018. See docs/daclip.md.
"""

from __future__ import annotations

import sys

from textualdeg.daclip.classify import main_evaluate

if __name__ == "__main__":
    sys.exit(main_evaluate())
