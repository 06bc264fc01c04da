"""The instruction set is split by phrasing: no held-out sentence, frame+request pair or copy is trained on."""

from __future__ import annotations

import pytest

from textualdeg.instruction.phrasings import (
    ALL_TASKS,
    FRAMES,
    REQUESTS,
    _sentence,
    instruction_split,
    task_of_restoration_task,
)


def test_split_by_phrasing_not_by_copy() -> None:
    split = instruction_split(("denoise", "derain", "dehaze"))
    train, val = {s for s, _ in split.train}, {s for s, _ in split.val}
    assert not train & val
    assert len(split.train) == 3 * 15 * 9 and len(split.val) == 3 * (20 * 12 - 15 * 9)
    # no held-out sentence can be composed of a training frame and a training request
    train_frames = [f for i, f in enumerate(FRAMES) if i % 4 != 3]
    train_requests = [r for task in split.tasks for j, r in enumerate(REQUESTS[task]) if j % 4 != 3]
    composable = {_sentence(f, r) for f in train_frames for r in train_requests}
    assert composable >= train and not composable & val
    assert split.sentences("derain")[0] == "I desire to remove rain from the image."


def test_every_task_has_many_phrasings() -> None:
    split = instruction_split()
    assert split.tasks == ALL_TASKS
    for task in ALL_TASKS:
        assert len(split.sentences(task)) >= 100 and len(split.sentences(task, "val")) >= 80


def test_restoration_task_names_map_to_instruction_tasks() -> None:
    assert task_of_restoration_task("denoise_25") == "denoise"
    assert task_of_restoration_task("denoise_0-55") == "denoise"
    assert task_of_restoration_task("derain") == "derain"
    with pytest.raises(ValueError, match="'desnow'"):
        task_of_restoration_task("desnow")
    with pytest.raises(ValueError, match="tasks="):
        instruction_split(("derain", "desnow"))
