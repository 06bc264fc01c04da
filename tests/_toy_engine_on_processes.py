"""The toy stage of tests/test_engine.py on every process of a torchrun launch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_toy_engine_on_processes.py RUN_DIR KILL_STEP

Trains 6 steps, validating every 2. The validation raises ``KeyboardInterrupt`` at step
KILL_STEP (0: never) on every process, and otherwise returns one record naming the process
that made it. Each process appends the steps it validated to ``RUN_DIR/validated_<rank>.txt``.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_engine import _opt, _train  # noqa: E402


def main(exp: Path, kill: int) -> None:
    from accelerate import PartialState

    def validate(step: int) -> list[dict]:
        if step == kill:
            raise KeyboardInterrupt(f"killed during the validation of step {step}")
        rank = PartialState().process_index
        with open(exp / f"validated_{rank}.txt", "a") as handle:
            handle.write(f"{step}\n")
        return [{"score": step, "process": rank}]

    _train(_opt(exp), total=6, validate=validate)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
