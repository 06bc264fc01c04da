"""Tests for textualdeg.experiment: the run folder's lock and the lineage of its starts.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from textualdeg.experiment import Experiment, ExperimentLock, ExperimentLocked, Lineage
from textualdeg.options import Options

HOLD_LOCK = """
import sys, time
from textualdeg.experiment import ExperimentLock
ExperimentLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """A process that takes ``folder``'s lock and sleeps; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_naming_the_holder_until_the_holder_is_killed(tmp_path):
    holder = hold_lock(tmp_path / "exp")
    try:
        with pytest.raises(ExperimentLocked, match=rf"pid {holder.pid} on host {socket.gethostname()}, started 20"):
            ExperimentLock(tmp_path / "exp").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = ExperimentLock(tmp_path / "exp")
    lock.acquire()  # the operating system released the killed holder's lock
    assert lock.held and lock.holder()["pid"] != holder.pid
    lock.release()
    assert not lock.held


def test_one_process_cannot_take_the_lock_twice_through_two_objects(tmp_path):
    first, second = ExperimentLock(tmp_path), ExperimentLock(tmp_path)
    first.acquire()
    first.acquire()  # idempotent
    with pytest.raises(ExperimentLocked, match="in use by another run"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def _write_starts(exp: Path, records: list[dict]) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "starts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _resumed(step: int, start: int | None, in_folder: bool = True) -> dict:
    return {"state": f"step_{step:08d}", "step": step, "start": start, "in_folder": in_folder}


def test_lineage_follows_each_start_back_to_the_state_it_resumed(tmp_path):
    exp = Experiment(tmp_path)
    assert exp.lineage() is None  # no start recorded: every state counts
    _write_starts(tmp_path, [
        {"start": 1, "resumed": None},
        {"start": 2, "resumed": _resumed(600, 1)},     # branch from start 1's step 600
        {"start": 3, "resumed": _resumed(700, 2)},     # auto-resume of start 2
        {"start": 4, "resumed": _resumed(650, 3)},     # branch again, below start 2's resume point
    ])
    lineage = exp.lineage()
    assert lineage.segments == ((4, float("inf")), (3, 650), (2, 650), (1, 600))
    assert lineage(900, {"start": 4}) and lineage(650, {"start": 3}) and lineage(600, {"start": 1})
    assert not lineage(700, {"start": 3}) and not lineage(800, {"start": 1}) and not lineage(100, {})
    assert str(lineage) == "start 4, start 3 up to step 650, start 2 up to step 650, start 1 up to step 600"
    assert str(Lineage(((5, float("inf")),) + lineage.segments)).endswith("start 3 up to step 650, 2 earlier starts")
    assert exp.lineage(2).segments == ((2, float("inf")), (1, 600))


def test_lineage_of_legacy_states_and_of_states_from_elsewhere(tmp_path):
    exp = Experiment(tmp_path)
    _write_starts(tmp_path, [{"start": 1, "resumed": _resumed(500, None)}])  # a state saved before starts.jsonl
    assert exp.lineage().segments == ((1, float("inf")), (None, 500))
    assert exp.lineage()(500, {}) and not exp.lineage()(600, {})
    _write_starts(tmp_path, [{"start": 1, "resumed": _resumed(500, 3, in_folder=False)}])  # another folder's state
    assert exp.lineage().segments == ((1, float("inf")),)


def test_record_start_keeps_every_start_and_its_options(tmp_path):
    exp = Experiment(tmp_path)
    state = tmp_path / "state" / "step_00000004"
    state.mkdir(parents=True)
    (state / "COMPLETE").write_text(json.dumps({"step": 4, "info": {"start": 1}}))
    first = exp.record_start(Options({"name": "a", "lr": 1}), step=0, resumed=None, reason="fresh")
    second = exp.record_start(Options({"name": "a", "lr": 2}), step=4, resumed=state, reason="why", num_processes=2)
    assert (first["start"], second["start"]) == (1, 2)
    assert second["resumed"] == {"state": "step_00000004", "step": 4, "start": 1, "in_folder": True}
    assert [r["reason"] for r in exp.starts()] == ["fresh", "why"] and exp.starts()[1]["processes"] == 2
    assert "lr: 1" in (tmp_path / "starts" / "options_0001.yml").read_text()
    assert (tmp_path / "options.yml").read_text() == (tmp_path / second["options"]).read_text()
    with open(tmp_path / "starts.jsonl", "a") as handle:
        handle.write('{"start": 3, "res')  # torn by a kill
    assert len(exp.starts()) == 2 and exp.lineage().segments == ((2, float("inf")), (1, 4))
    assert exp.record_start(Options({"name": "a"}), step=0, resumed=None, reason="next")["start"] == 3
    assert [r["start"] for r in exp.starts()] == [1, 2, 3]  # the torn line stays alone on its line
