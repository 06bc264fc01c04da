"""The instruction encoder: a BERT that reads "remove the rain" and a head that names the task.

TextPromptIR (arXiv:2312.06162) prompts its network with the sentence embedding of a BERT
fine-tuned on task instructions (a sentence-transformers model: mean of the token
features). :class:`InstructionEncoder` is that BERT plus a linear classification head over
the tasks on the same mean-pooled embedding; fine-tuning the head with cross-entropy
(``textualdeg.instruction.train``) makes the embedding task-specific, and the head turns
any instruction into a task with a confidence.

Folder layout (``save_pretrained`` / ``from_pretrained``): the BERT folder files
(``textualdeg.pretrained.bert``) plus ``instruction_head.safetensors`` and
``instruction.json`` (the tasks and the maximum token length). A plain BERT folder (no
head) loads too, with a new head (``tasks`` must then be given).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textualdeg.log import get_logger
from textualdeg.pretrained.bert import load_bert

logger = get_logger(__name__)

__all__ = ["InstructionEncoder", "Prediction", "HEAD_FILE", "META_FILE"]

HEAD_FILE = "instruction_head.safetensors"
META_FILE = "instruction.json"


@dataclass(frozen=True)
class Prediction:
    """The task an instruction names, with the head's softmax probability of it."""

    task: str
    confidence: float


class InstructionEncoder(nn.Module):
    """BERT + mean pooling (the sentence embedding) + a linear head over ``tasks``.

    Args:
        bert (transformers.BertModel): the text model (trained with the head).
        tokenizer: its WordPiece tokenizer.
        tasks (Sequence[str]): the task names, in label order.
        max_length (int): tokens kept per instruction (longer ones are truncated with a
            warning); capped at the model's position embeddings.
    """

    def __init__(self, bert: nn.Module, tokenizer: Any, tasks: Sequence[str], max_length: int = 64) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("tasks must name at least one task")
        self.bert = bert
        self.tokenizer = tokenizer
        self.tasks = tuple(tasks)
        self.max_length = int(min(max_length, bert.config.max_position_embeddings))
        self.classifier = nn.Linear(bert.config.hidden_size, len(self.tasks))

    @property
    def embedding_dim(self) -> int:
        """Width of the sentence embedding (768 for BERT-base)."""
        return int(self.bert.config.hidden_size)

    @classmethod
    def from_pretrained(cls, folder: str | Path, tasks: Sequence[str] | None = None,
                        max_length: int | None = None) -> InstructionEncoder:
        """Load a fine-tuned encoder folder, or a plain BERT folder with a new head.

        Args:
            folder: the folder (``save_pretrained`` output, or a transformers BERT folder).
            tasks: task names for a new head; for a fine-tuned folder they must match its own.
            max_length: tokens per instruction (default: the folder's, else 64).

        Raises:
            textualdeg.pretrained.bert.BertFolderError: config, weights or tokenizer missing.
            ValueError: ``tasks`` disagree with the folder's, or no tasks for a plain BERT.
        """
        path = Path(folder)
        bert, tokenizer = load_bert(path)
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
        if meta and tasks is not None and tuple(tasks) != tuple(meta["tasks"]):
            raise ValueError(f"{path} was trained for tasks {meta['tasks']}, not {list(tasks)}")
        names = tuple(meta.get("tasks", ())) or (tuple(tasks) if tasks else ())
        if not names:
            raise ValueError(f"{path} is a plain BERT folder (no {META_FILE}): give the tasks of the new head")
        encoder = cls(bert, tokenizer, names, max_length or meta.get("max_length", 64))
        if (path / HEAD_FILE).is_file():
            from safetensors.torch import load_file

            encoder.classifier.load_state_dict(load_file(path / HEAD_FILE))
        return encoder

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write BERT, tokenizer, head and ``instruction.json`` to ``folder``."""
        from safetensors.torch import save_file

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        self.bert.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}, path / HEAD_FILE)
        (path / META_FILE).write_text(json.dumps({"tasks": list(self.tasks), "max_length": self.max_length,
                                                  "pooling": "mean"}, indent=2) + "\n")
        return path

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask (B, L) on the encoder's device; longer texts are cut with a warning."""
        texts = [str(t) for t in texts]
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for text, ids in zip(texts, full):
            if len(ids) > self.max_length:
                logger.warning("instruction of %d tokens truncated to %d: %.60s...", len(ids), self.max_length, text)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        device = self.classifier.weight.device
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and mask (B, L) -> (sentence embedding (B, H), task logits (B, T))."""
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        mask = attention_mask[:, :, None].to(tokens.dtype)  # (B, L, 1)
        embedding = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return embedding, self.classifier(embedding)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings (B, H) of ``texts`` (no gradient)."""
        return self(**self.tokenize(texts))[0]

    @torch.no_grad()
    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The task each text names and its confidence; an empty or garbled text still gets one."""
        logits = self(**self.tokenize(texts))[1]
        probs = logits.float().softmax(dim=-1)  # (B, T)
        conf, index = probs.max(dim=-1)
        return [Prediction(self.tasks[i], float(c)) for i, c in zip(index.tolist(), conf.tolist())]
