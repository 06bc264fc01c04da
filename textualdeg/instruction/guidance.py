"""Instruction embeddings for a text-prompted network, at training, evaluation and restore time.

:class:`InstructionEmbedder` holds a frozen, fine-tuned ``InstructionEncoder`` on the
device and turns sentences into (B, H) embeddings. Each distinct sentence is embedded
alone (batch 1) and cached, so an embedding never depends on which other sentences share
its batch: exact resume and any process count give the same numbers, and the finite
instruction set costs one BERT pass per sentence per run.

TextPromptIR: arXiv:2312.06162. Paper: "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from textualdeg.instruction.encoder import InstructionEncoder, Prediction
from textualdeg.log import get_logger

logger = get_logger(__name__)

__all__ = ["InstructionEmbedder"]


class InstructionEmbedder:
    """Frozen instruction encoder + per-sentence cache.

    Args:
        encoder (InstructionEncoder): the fine-tuned encoder (frozen and put in eval mode here).
        device (torch.device | str): where the embeddings are computed and returned.
    """

    def __init__(self, encoder: InstructionEncoder, device: torch.device | str = "cpu") -> None:
        self.encoder = encoder.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> InstructionEmbedder:
        """Load the ``instruction_encoder/`` folder of an instruction run (``path.instruction_encoder``).

        Raises:
            ValueError: ``folder`` is None or empty (the option to set is named).
            textualdeg.pretrained.bert.BertFolderError: a part of the folder is missing.
        """
        if not folder:
            raise ValueError("a text-prompted network needs path.instruction_encoder: the instruction_encoder/ "
                             "folder written by scripts/train/train_instruction_encoder.py")
        encoder = InstructionEncoder.from_pretrained(folder)
        logger.info("instruction encoder %s: tasks %s, embedding width %d", folder, list(encoder.tasks),
                    encoder.embedding_dim)
        return cls(encoder, device)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the encoder was fine-tuned on."""
        return self.encoder.tasks

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, H) float32 embeddings of ``texts`` on the device."""
        for text in texts:
            if text not in self._cache:
                self._cache[text] = self.encoder.embed([text])[0].float()
        return torch.stack([self._cache[text] for text in texts])

    def predict(self, text: str) -> Prediction:
        """The task ``text`` names, with its confidence."""
        return self.encoder.predict([text])[0]


class InstructionChooser:
    """The instruction of each image at restore time: the user's, or one predicted from the image.

    With ``instruction`` every image gets it (its task as the encoder reads it is logged).
    Without, ``textualdeg.instruction.image_task`` predicts the degradation from image
    statistics (among the encoder's tasks) and the image gets that task's canonical
    instruction (its first training phrasing, "I desire to remove rain from the image.").

    Args:
        embedder (InstructionEmbedder): the network's instruction encoder.
        instruction (str | None): the user's instruction, or None.
    """

    def __init__(self, embedder: InstructionEmbedder, instruction: str | None = None) -> None:
        self.embedder, self.instruction = embedder, instruction
        self._classifier = None
        if instruction is not None:
            pred = embedder.predict(instruction)
            logger.info("instruction %r read as %s (confidence %.2f)", instruction, pred.task, pred.confidence)

    def __call__(self, image) -> tuple[str, torch.Tensor]:
        """(instruction, its (H,) embedding) for one (H, W, 3) float image in [0, 1]."""
        if self.instruction is not None:
            return self.instruction, self.embedder([self.instruction])[0]
        from textualdeg.instruction.image_task import fit_on_demo_photographs
        from textualdeg.instruction.phrasings import instruction_split

        if self._classifier is None:
            logger.info("no --instruction: predicting each image's degradation from image statistics "
                        "(textualdeg/instruction/image_task.py)")
            self._classifier = fit_on_demo_photographs()
        task, confidence = self._classifier.predict(image, allowed=self.embedder.tasks)
        text = instruction_split(self.embedder.tasks).sentences(task)[0]
        logger.info("predicted %s (p=%.2f): %r", task, confidence, text)
        return text, self.embedder([text])[0]
