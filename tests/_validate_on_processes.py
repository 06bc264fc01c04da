"""Stage-4 validation on every process of a torchrun launch, for tests/test_evaluation.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_validate_on_processes.py JOB.json

JOB.json holds ``options`` (a stage-4 option dict whose ``path.pretrain_network_g`` names the
weights), ``val_sets`` (dataset name -> ``textualdeg.data.build_dataset`` spec), ``step``,
``vis_dir`` and ``out``: the JSON file the main process writes, with the process count, the
means ``textualdeg.restoration.train.validate`` returned on each process and the number of
images each process restored.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(job_file: str) -> None:
    from accelerate.utils import gather_object

    from textualdeg.data import build_dataset
    from textualdeg.engine import build_accelerator
    from textualdeg.options import options_from_dict
    from textualdeg.restoration.schema import RESTORATION_SCHEMA
    import textualdeg.restoration.train as stage4

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    accelerator = build_accelerator(Path(job["out"]).parent, process_group_timeout_min=5)
    opt = options_from_dict(job["options"], RESTORATION_SCHEMA)
    model = stage4.build_model(opt).to(accelerator.device)
    val_sets = {name: build_dataset(spec) for name, spec in job["val_sets"].items()}
    restore, restored = stage4._restore, [0]

    def counted(*args):
        restored[0] += 1
        return restore(*args)

    stage4._restore = counted  # count the images this process restores
    means = stage4.validate(model, val_sets, opt, job["step"], Path(job["vis_dir"]), accelerator.device, accelerator)
    every = gather_object([{"means": means, "restored": restored[0]}])  # one entry per process
    if accelerator.is_main_process:
        Path(job["out"]).write_text(json.dumps({"num_processes": accelerator.num_processes,
                                                "means": [e["means"] for e in every],
                                                "restored": [e["restored"] for e in every]}))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
