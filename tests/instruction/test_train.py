"""Fine-tuning the tiny random BERT on CPU lifts held-out phrasing accuracy far above chance."""

from __future__ import annotations

import json
from pathlib import Path

from textualdeg.instruction.encoder import InstructionEncoder
from textualdeg.instruction.phrasings import instruction_split
from textualdeg.instruction.train import evaluate_accuracy, main

REPO = Path(__file__).resolve().parents[2]
OPTIONS = REPO / "options" / "train_instruction" / "textpromptir_tiny_cpu.yml"


def test_finetuning_beats_chance_on_held_out_phrasings(tiny_bert, tmp_path) -> None:
    split = instruction_split(("denoise", "derain", "dehaze"))
    before = evaluate_accuracy(InstructionEncoder.from_pretrained(tiny_bert, tasks=split.tasks), split.val)
    folder = main(["-opt", str(OPTIONS), "--set", f"path.pretrained_bert={tiny_bert}",
                   "--set", f"path.experiments_root={tmp_path / 'run'}"])
    encoder = InstructionEncoder.from_pretrained(folder)
    after = evaluate_accuracy(encoder, split.val)
    # chance is 1/3; 100 steps reach 0.79 with one thread (docs/textpromptir.md)
    assert after > 0.6 and after > before + 0.15, (before, after)
    records = [json.loads(line) for line in (tmp_path / "run" / "logs" / "val_metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 100 and abs(records[-1]["accuracy"] - after) < 1e-9
    (pred,) = encoder.predict(["I desire to remove rain from the image."])
    assert pred.task == "derain"


def test_a_run_killed_after_step_2_resumes_to_the_uninterrupted_weights(tiny_bert, tmp_path, monkeypatch) -> None:
    import pytest
    import torch.nn.functional as F
    from safetensors.torch import load_file

    common = ["-opt", str(OPTIONS), "--set", f"path.pretrained_bert={tiny_bert}", "--set", "val.val_freq=100",
              "--set", "logger.save_checkpoint_freq=2", "--set", "train.warmup_iter=2", "--set", "train.total_iter=4"]
    whole = main([*common, "--set", f"path.experiments_root={tmp_path / 'whole'}"])
    calls, cross_entropy = [], F.cross_entropy

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed at step 3")
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        main([*common, "--set", f"path.experiments_root={tmp_path / 'parts'}"])
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    parts = main([*common, "--set", f"path.experiments_root={tmp_path / 'parts'}"])  # auto-resumes step 2
    for name in ("model.safetensors", "instruction_head.safetensors"):
        a, b = load_file(whole / name), load_file(parts / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name


def test_option_files_validate() -> None:
    import pytest

    from textualdeg.instruction.schema import INSTRUCTION_SCHEMA
    from textualdeg.options import OptionsError, load_options

    bert_base = load_options(OPTIONS.parent / "textpromptir_bert_base.yml", INSTRUCTION_SCHEMA)
    assert bert_base.path.pretrained_bert.endswith("pretrained/bert-base-uncased")
    with pytest.raises(OptionsError, match="typo_prob"):
        load_options(OPTIONS, INSTRUCTION_SCHEMA, ["datasets.typo_prop=0.2"])
