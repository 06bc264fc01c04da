"""Tests for configs/accelerate: every file parses and is consistent, and the CPU config
really starts two processes (world size 2), not the silent single process of
`--cpu --num_processes 2` (see docs/ecosystem_notes.md, section 5).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "accelerate"
EXPECTED = {  # file -> (num_machines, num_processes)
    "1_gpu.yaml": (1, 1),
    "2_gpu.yaml": (1, 2),
    "4_gpu.yaml": (1, 4),
    "8_gpu.yaml": (1, 8),
    "2_node_8_gpu.yaml": (2, 16),
    "cpu_2proc.yaml": (1, 2),
}


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command() -> list[str]:
    """The `accelerate` console script of the running interpreter's environment."""
    script = Path(sys.executable).parent / "accelerate"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def cpu_launch_env() -> dict[str, str]:
    """Environment for a two-process CPU launch: CPU forced, one thread per process."""
    env = dict(os.environ)
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_every_expected_config_exists_and_nothing_else():
    present = {path.name for path in CONFIG_DIR.glob("*.yaml")}
    assert present == set(EXPECTED)
    assert (CONFIG_DIR / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_and_counts_are_consistent(name):
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load((CONFIG_DIR / name).read_text())
    machines, processes = EXPECTED[name]
    assert raw["num_machines"] == machines
    assert raw["num_processes"] == processes
    assert raw["num_processes"] % raw["num_machines"] == 0
    assert raw["mixed_precision"] == "no"
    if processes > 1:
        assert raw["distributed_type"] == "MULTI_GPU"
    else:
        assert raw["distributed_type"] == "NO"
    if machines > 1:
        assert raw["machine_rank"] == 0 and raw["main_process_ip"]
    assert raw["use_cpu"] is (name == "cpu_2proc.yaml")
    # accelerate itself accepts the file (unknown keys would raise TypeError here)
    config = load_config_from_file(str(CONFIG_DIR / name))
    assert config.num_processes == processes


def test_cpu_2proc_config_starts_two_processes(tmp_path):
    script = tmp_path / "report_world.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            from pathlib import Path
            from accelerate import Accelerator

            accelerator = Accelerator()
            record = {
                "process_index": accelerator.process_index,
                "num_processes": accelerator.num_processes,
                "distributed_type": str(accelerator.distributed_type),
                "device": str(accelerator.device),
            }
            Path(sys.argv[1], f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
            accelerator.wait_for_everyone()
            """
        )
    )
    command = accelerate_command() + [
        "launch",
        "--config_file", str(CONFIG_DIR / "cpu_2proc.yaml"),
        "--main_process_port", str(free_port()),
        str(script), str(tmp_path),
    ]
    result = subprocess.run(
        command, env=cpu_launch_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert len(records) == 2, result.stderr[-3000:]
    assert sorted(record["process_index"] for record in records) == [0, 1]
    assert all(record["num_processes"] == 2 for record in records)
    assert all(record["distributed_type"].endswith("MULTI_CPU") for record in records)
    assert all(record["device"].startswith("cpu") for record in records), records
