"""BERT from a local folder (TextPromptIR's instruction reader), and a tiny one for tests.

A BERT folder is what ``transformers`` writes with ``save_pretrained``: ``config.json``,
the weights (``model.safetensors``, ``pytorch_model.bin`` or a sharded index) and the
WordPiece tokenizer (``vocab.txt`` or ``tokenizer.json``). ``check_bert_folder`` names
every missing part in one error; nothing is fetched from a hub. ``save_tiny_bert`` writes a
random-weight BERT whose vocabulary covers the instruction set's words plus every letter
and digit as a word-piece, so any text (typos included) tokenizes without ``[UNK]``.

TextPromptIR: arXiv:2312.06162. Paper: "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["BertFolderError", "check_bert_folder", "load_bert", "save_tiny_bert"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertFolderError(FileNotFoundError):
    """A BERT folder lacks its config, weights or tokenizer (the message lists each)."""


def check_bert_folder(folder: str | Path) -> Path:
    """Raise ``BertFolderError`` listing what ``folder`` lacks; return it as a ``Path``.

    Args:
        folder: a transformers BERT folder (``save_pretrained`` output).
    """
    path = Path(folder)
    if not path.is_dir():
        raise BertFolderError(f"BERT folder {path} does not exist (write a tiny one with `textualdeg make-tiny DIR`, "
                              f"or save bert-base-uncased there with save_pretrained)")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json (the model config)")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(_WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(f"tokenizer (one of {', '.join(_TOKENIZER_FILES)})")
    if missing:
        raise BertFolderError(f"BERT folder {path} is missing: " + "; ".join(missing))
    return path


def load_bert(folder: str | Path) -> tuple[Any, Any]:
    """Load ``(BertModel, tokenizer)`` from a local folder (no hub access).

    Raises:
        BertFolderError: the folder or one of its parts is missing (all are named).
    """
    from transformers import BertModel, BertTokenizer, BertTokenizerFast

    path = check_bert_folder(folder)
    model = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
    tokenizer_cls = BertTokenizerFast if (path / "tokenizer.json").is_file() else BertTokenizer
    tokenizer = tokenizer_cls.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _words(sentences: Iterable[str]) -> list[str]:
    found = set()
    for sentence in sentences:
        found.update(re.findall(r"[a-z0-9]+", sentence.lower()))
    return sorted(found)


def save_tiny_bert(folder: str | Path, words: Iterable[str] = (), hidden_size: int = 32, num_hidden_layers: int = 2,
                   num_attention_heads: int = 2, max_position_embeddings: int = 64, seed: int = 0) -> Path:
    """Write a tiny random-weight ``BertModel`` with an uncased WordPiece vocabulary.

    Args:
        folder: output folder (created): ``config.json``, ``model.safetensors``, ``vocab.txt``
            and the tokenizer configs.
        words: text whose words become whole vocabulary entries (e.g. the instruction set).
        hidden_size: token width (the sentence embedding's width).
        num_hidden_layers: transformer layers.
        num_attention_heads: heads (must divide ``hidden_size``).
        max_position_embeddings: the longest token sequence.
        seed: torch seed of the random weights.

    Returns:
        The folder path.
    """
    from transformers import BertConfig, BertModel, BertTokenizer

    if hidden_size % num_attention_heads:
        raise ValueError(f"num_attention_heads={num_attention_heads} must divide hidden_size={hidden_size}")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits)
    punctuation = list(string.punctuation)
    vocab = list(_SPECIAL) + punctuation + chars + [f"##{c}" for c in chars] + _words(words)
    vocab = list(dict.fromkeys(vocab))  # unique, in order
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), do_lower_case=True, model_max_length=max_position_embeddings)
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=2 * hidden_size,
                        max_position_embeddings=max_position_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    model.save_pretrained(path, safe_serialization=True)
    return path
