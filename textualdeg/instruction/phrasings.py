"""The instruction set: many phrasings of "remove <degradation>" for each restoration task.

TextPromptIR (arXiv:2312.06162) conditions its network on a sentence such as "I desire to
remove rain from the image.", read by a BERT fine-tuned to tell the tasks apart; its
official list (``sentence_embeddings.txt``) holds 50 first-person sentences per task. Ours
is written in the same style and composed from two parts, so that held-out sentences are
new *phrasings*, never copies of training ones:

* a frame, the way of asking: "I desire to {}.", "Please {}.", "My goal is to {}." ...
* a request, what to remove: "remove rain from the image", "get rid of the haze" ...

:func:`instruction_split` holds out every fourth frame and every fourth request of each
task: a validation sentence has a frame or a request (or both) that no training sentence
uses. Tasks: ``denoise``, ``derain``, ``dehaze`` (the all-in-one 3-task setting), plus
``deblur`` and ``lowlight``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ALL_TASKS", "FRAMES", "REQUESTS", "InstructionSplit", "instruction_split", "task_of_restoration_task"]

ALL_TASKS: tuple[str, ...] = ("denoise", "derain", "dehaze", "deblur", "lowlight")

# "{}" is the request; frames are first-person as in the official list, plus imperatives.
FRAMES: tuple[str, ...] = (
    "I desire to {} .",
    "My goal is to {} .",
    "I wish to {} .",
    "It is my intention to {} .",
    "Please {} .",
    "I want to {} .",
    "I am determined to {} .",
    "I would like to {} .",
    "I am eager to {} .",
    "Could you {} ?",
    "I aim to {} .",
    "I have a strong desire to {} .",
    "My main focus is to {} .",
    "I hope to {} .",
    "It is my top priority to {} .",
    "{} .",
    "I need you to {} .",
    "I am keen to {} .",
    "Help me {} .",
    "I have made it my mission to {} .",
)

REQUESTS: dict[str, tuple[str, ...]] = {
    "denoise": (
        "remove noise from the image", "denoise the image", "reduce the noise in the image",
        "get rid of the noise in the picture", "eliminate the grain from the photo", "clean up the noisy image",
        "suppress the noise in the image", "remove the speckles from the image", "make the image noise-free",
        "remove the sensor noise from the photo", "decrease the noise on the image", "remove the grainy noise",
    ),
    "derain": (
        "remove rain from the image", "derain the image", "get rid of the rain streaks in the image",
        "eliminate the raindrops from the picture", "clear the rain from the photo", "remove the rainy effect",
        "remove the rain streaks", "erase the rain from the image", "wash out the rain in the picture",
        "remove the precipitation from the image", "eliminate the rain from the image", "remove rain from the photo",
    ),
    "dehaze": (
        "remove haze from the image", "dehaze the image", "get rid of the haze in the picture",
        "reduce the haziness of the photo", "clear the fog from the image", "remove the mist from the picture",
        "make the hazy image clearer", "eliminate the haze from the image", "remove the smog from the photo",
        "lift the fog in the image", "remove the atmospheric haze", "clear the haze from the photo",
    ),
    "deblur": (
        "remove blur from the image", "deblur the image", "sharpen the blurry picture",
        "get rid of the motion blur in the photo", "make the blurred image sharp", "remove the camera shake",
        "fix the blurry photo", "eliminate the blur from the image", "restore the sharpness of the image",
        "remove the motion blur", "undo the blur in the picture", "make the image less blurry",
    ),
    "lowlight": (
        "brighten the dark image", "enhance the low-light image", "make the photo brighter",
        "lighten the underexposed picture", "fix the dark photo", "improve the lighting of the image",
        "increase the brightness of the image", "make the night photo brighter", "brighten the image",
        "correct the underexposure of the photo", "light up the dark picture", "enhance the dim image",
    ),
}

# The stage-4 task names of an all-in-one dataset (``denoise_15``, ``derain``...) -> instruction task.
_TASK_PREFIXES = {"denoise": "denoise", "derain": "derain", "dehaze": "dehaze", "deblur": "deblur",
                  "lowlight": "lowlight"}


def task_of_restoration_task(name: str) -> str:
    """The instruction task of a dataset task name (``denoise_25`` -> ``denoise``).

    Raises:
        ValueError: naming ``name`` when it maps to no instruction task.
    """
    for prefix, task in _TASK_PREFIXES.items():
        if name == prefix or name.startswith(prefix + "_"):
            return task
    raise ValueError(f"no instruction task for dataset task {name!r}; expected one starting with {ALL_TASKS}")


@dataclass(frozen=True)
class InstructionSplit:
    """Sentences with their task index, split by phrasing.

    Attributes:
        tasks: the task names; labels index this tuple.
        train: (sentence, label) pairs for training.
        val: (sentence, label) pairs whose frame or request no training pair uses.
    """

    tasks: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]

    def sentences(self, task: str, split: str = "train") -> list[str]:
        """The sentences of one task in ``split`` (``train`` or ``val``)."""
        label = self.tasks.index(task)
        return [s for s, y in (self.train if split == "train" else self.val) if y == label]


def _sentence(frame: str, request: str) -> str:
    text = frame.format(request).replace(" .", ".").replace(" ?", "?")
    return text[0].upper() + text[1:]


def instruction_split(tasks: Sequence[str] = ALL_TASKS, holdout_every: int = 4) -> InstructionSplit:
    """Compose every (frame, request) sentence of ``tasks`` and split it by phrasing.

    Args:
        tasks: task names from ``ALL_TASKS``, in label order.
        holdout_every: frames and requests with index ``i % holdout_every == holdout_every - 1``
            are held out (validation only).

    Returns:
        The split: training sentences use training frames *and* training requests.

    Raises:
        ValueError: an unknown task or ``holdout_every < 2``.
    """
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in REQUESTS]
    if unknown or not tasks:
        raise ValueError(f"tasks={list(tasks)}: expected a non-empty subset of {ALL_TASKS}")
    if holdout_every < 2:
        raise ValueError(f"holdout_every={holdout_every}: expected >= 2")

    def held(i: int) -> bool:
        return i % holdout_every == holdout_every - 1

    train, val = [], []
    for label, task in enumerate(tasks):
        for i, frame in enumerate(FRAMES):
            for j, request in enumerate(REQUESTS[task]):
                (val if held(i) or held(j) else train).append((_sentence(frame, request), label))
    return InstructionSplit(tasks, tuple(train), tuple(val))
