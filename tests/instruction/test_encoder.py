"""InstructionEncoder: folder checks, bad instructions get a prediction, truncation warns, save/load."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from textualdeg.instruction.encoder import InstructionEncoder
from textualdeg.pretrained.bert import BertFolderError, check_bert_folder

TASKS = ("denoise", "derain", "dehaze")


def test_missing_parts_are_all_named(tiny_bert, tmp_path) -> None:
    broken = tmp_path / "bert"
    shutil.copytree(tiny_bert, broken)
    for name in ("vocab.txt", "tokenizer.json"):
        (broken / name).unlink(missing_ok=True)
    (broken / "model.safetensors").unlink()
    with pytest.raises(BertFolderError, match=r"missing: weights .*; tokenizer"):
        InstructionEncoder.from_pretrained(broken, tasks=TASKS)
    with pytest.raises(BertFolderError, match="does not exist"):
        check_bert_folder(tmp_path / "nowhere")


def test_plain_bert_needs_tasks(tiny_bert) -> None:
    with pytest.raises(ValueError, match="give the tasks"):
        InstructionEncoder.from_pretrained(tiny_bert)


@pytest.mark.parametrize("text", ["", "   ", "plese remvoe teh rian", "!!!", "ümlaut ñ 雨", "rain " * 3])
def test_bad_instructions_get_a_prediction_with_confidence(tiny_bert, text) -> None:
    encoder = InstructionEncoder.from_pretrained(tiny_bert, tasks=TASKS)
    (pred,) = encoder.predict([text])
    assert pred.task in TASKS and 1 / len(TASKS) - 1e-6 <= pred.confidence <= 1.0
    assert encoder.embed([text]).shape == (1, encoder.embedding_dim)


def test_long_instruction_is_truncated_with_a_warning(tiny_bert, caplog) -> None:
    encoder = InstructionEncoder.from_pretrained(tiny_bert, tasks=TASKS, max_length=16)
    with caplog.at_level(logging.WARNING):
        tokens = encoder.tokenize(["please remove the rain " * 20, "derain"])
    assert tokens["input_ids"].shape == (2, 16)
    assert "truncated to 16" in caplog.text


def test_save_and_load_round_trip(tiny_bert, tmp_path) -> None:
    torch.manual_seed(0)
    encoder = InstructionEncoder.from_pretrained(tiny_bert, tasks=TASKS).eval()
    folder = encoder.save_pretrained(tmp_path / "enc")
    again = InstructionEncoder.from_pretrained(folder).eval()
    assert again.tasks == TASKS
    texts = ["remove the haze", "I desire to remove rain from the image."]
    torch.testing.assert_close(again(**again.tokenize(texts))[1], encoder(**encoder.tokenize(texts))[1])
    with pytest.raises(ValueError, match="trained for tasks"):
        InstructionEncoder.from_pretrained(folder, tasks=("derain",))
