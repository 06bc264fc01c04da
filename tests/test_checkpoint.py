"""Tests for textualdeg.checkpoint: weight files, full-state save/resume, rotation, and
crash safety under SIGKILL from a parent process.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from textualdeg.checkpoint import (
    COMPLETE_MARKER,
    LATEST_POINTER,
    CheckpointError,
    StateCheckpointer,
    find_resume_state,
    load_network_weights,
    load_weights,
    read_state_step,
    save_weights,
    state_dir_name,
    verify_state,
)
from textualdeg.fileio import temp_path_for

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 120

# A child process that saves in a loop until the parent kills it. Also imported by the
# parent (same model builder and registered object) to resume what the child saved.
CHILD_SOURCE = textwrap.dedent(
    '''
    import sys
    import time
    from pathlib import Path

    import torch
    from torch import nn


    class SaveProbe:
        """Registered for checkpointing; can stop inside the save (after accelerate wrote
        model, optimizer, scheduler and RNG files, before the registered objects and marker)."""

        def __init__(self, signal_dir=None, pause_at=None):
            self.step = 0
            self.signal_dir = signal_dir
            self.pause_at = pause_at

        def state_dict(self):
            if self.signal_dir is not None and self.step == self.pause_at:
                Path(self.signal_dir, f"inside_save_{self.step}").touch()
                time.sleep(120)  # the parent SIGKILLs us here
            return {"step": self.step}

        def load_state_dict(self, state):
            self.step = state["step"]


    def build(width=512, depth=4):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        model(torch.ones(2, width)).sum().backward()
        optimizer.step()  # creates Adam moments, so optimizer.bin is twice the model size
        return model, optimizer, scheduler


    def set_weights(model, value):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)


    def run_states(root, signal_dir, pause_at):
        from accelerate import Accelerator
        from textualdeg.checkpoint import StateCheckpointer

        accelerator = Accelerator(cpu=True)
        model, optimizer, scheduler = accelerator.prepare(*build())
        probe = SaveProbe(signal_dir, pause_at)
        checkpointer = StateCheckpointer(root, keep_last=2)
        checkpointer.register("probe", probe)
        for step in range(1, 10_000):
            set_weights(model, float(step))
            probe.step = step
            Path(signal_dir, f"saving_{step}").touch()
            checkpointer.save(accelerator, step)
            Path(signal_dir, f"saved_{step}").touch()


    def run_weights(path, signal_dir):
        from textualdeg.checkpoint import save_weights

        tensor = torch.empty(2048, 2048)  # 16 MiB per write
        for version in range(1, 10_000):
            tensor.fill_(float(version))
            save_weights({"w": tensor}, path, metadata={"version": str(version)})
            Path(signal_dir, f"wrote_{version}").touch()


    if __name__ == "__main__":
        torch.set_num_threads(1)
        if sys.argv[1] == "states":
            pause = int(sys.argv[4]) if len(sys.argv) > 4 else None
            run_states(sys.argv[2], sys.argv[3], pause)
        else:
            run_weights(sys.argv[2], sys.argv[3])
    '''
)


@pytest.fixture
def child_module(tmp_path):
    """The child script on disk plus the same code imported into this process."""
    path = tmp_path / "ckpt_child.py"
    path.write_text(CHILD_SOURCE)
    spec = importlib.util.spec_from_file_location("ckpt_child", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_accelerate_state():
    """Each test gets its own accelerate singletons (accelerate's own tests do the same)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def start_child(script: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = CHILD_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def markers(folder: Path, prefix: str) -> list[int]:
    return sorted(int(path.name[len(prefix):]) for path in folder.glob(f"{prefix}*"))


# ---------------------------------------------------------------------------------------
# weight files


def test_save_load_weights_roundtrip_keeps_dtypes_and_metadata(tmp_path):
    tensors = {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "half": torch.randn(5).half(),
        "bf16": torch.randn(5).bfloat16(),
        "index": torch.arange(7),
        "view": torch.randn(6, 4).t(),  # non-contiguous
    }
    path = save_weights(tensors, tmp_path / "sub" / "net.safetensors", metadata={"arch": "NAFNet"})
    loaded = load_weights(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["arch"] == "NAFNet"
    assert os.listdir(path.parent) == ["net.safetensors"]


def test_save_weights_handles_tied_weights_and_checks_types(tmp_path):
    embedding = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight  # tied: same storage twice
    state = {"emb": embedding.weight, "head": head.weight}
    loaded = load_weights(save_weights(state, tmp_path / "tied.safetensors"))
    assert torch.equal(loaded["emb"], loaded["head"])
    with pytest.raises(ValueError, match="expected torch.Tensor"):
        save_weights({"a": np.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="metadata"):
        save_weights({"a": torch.zeros(3)}, tmp_path / "bad.safetensors", metadata={"step": 3})
    assert not (tmp_path / "bad.safetensors").exists()


def test_load_weights_errors_name_path_and_cause(tmp_path):
    good = save_weights({"w": torch.randn(64, 64)}, tmp_path / "good.safetensors").read_bytes()
    cases = {
        "missing.safetensors": (None, "no such file"),
        "empty.safetensors": (b"", "empty"),
        "half.safetensors": (good[: len(good) // 2], "truncated"),
        "header_cut.safetensors": (good[:20], "truncated"),
        "text.safetensors": (b"this is not a checkpoint at all" * 10, "not a safetensors or torch"),
    }
    for name, (content, cause) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=cause) as info:
            load_weights(path)
        assert str(path) in str(info.value) and info.value.path == path
        assert isinstance(info.value, OSError)
    with pytest.raises(CheckpointError, match="folder"):
        load_weights(tmp_path)


def test_load_weights_reads_official_torch_checkpoints(tmp_path):
    params = {"intro.weight": torch.randn(16, 3, 3, 3), "intro.bias": torch.randn(16)}
    ema = {name: tensor + 1 for name, tensor in params.items()}
    torch.save({"params": params}, tmp_path / "NAFNet-GoPro-width32.pth")  # official layout
    torch.save({"params": params, "params_ema": ema}, tmp_path / "both.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in params.items()}}, tmp_path / "ddp.pt")
    torch.save(params, tmp_path / "plain.pth")
    for name in ("NAFNet-GoPro-width32.pth", "both.pth", "ddp.pt", "plain.pth"):
        loaded = load_weights(tmp_path / name)
        assert set(loaded) == set(params), name
        assert all(torch.equal(loaded[key], params[key]) for key in params), name
    chosen = load_weights(tmp_path / "both.pth", param_key="params_ema")
    assert torch.equal(chosen["intro.bias"], ema["intro.bias"])
    with pytest.raises(CheckpointError, match="no entry 'params_ema'"):
        load_weights(tmp_path / "plain.pth", param_key="params_ema")
    # a torch file under a .safetensors name is still recognised by its content
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "plain.pth").read_bytes())
    assert set(load_weights(tmp_path / "renamed.safetensors")) == set(params)


def test_load_weights_rejects_broken_or_unsafe_torch_files(tmp_path):
    torch.save({"params": {"w": torch.randn(256, 256)}}, tmp_path / "full.pth")
    full = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match="cut.pth.*truncated"):
        load_weights(tmp_path / "cut.pth")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module, not tensors
    with pytest.raises(CheckpointError, match="module.pth"):
        load_weights(tmp_path / "module.pth")
    torch.save({"params": {"w": torch.ones(2)}, "iter": 5, "w2": 3}, tmp_path / "mixed.pth")
    assert set(load_weights(tmp_path / "mixed.pth")) == {"w"}
    torch.save({"w": torch.ones(2), "iter": 5}, tmp_path / "notensor.pth")
    with pytest.raises(CheckpointError, match="'iter' is a int"):
        load_weights(tmp_path / "notensor.pth")


def test_sigkill_during_save_weights_keeps_previous_file(tmp_path, child_module):
    signals = tmp_path / "signals"
    signals.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    target = out / "net_g.safetensors"
    proc = start_child(tmp_path / "ckpt_child.py", "weights", str(target), str(signals))
    try:
        wait_for(proc, lambda: (signals / "wrote_1").exists(), "the first complete write")

        def temp_file_present() -> bool:
            return any(name.startswith(".net_g.safetensors.") for name in os.listdir(out))

        for _ in range(50):
            wait_for(proc, temp_file_present, "a write in progress")
            os.kill(proc.pid, signal.SIGSTOP)  # freeze it, then check we froze it mid-write
            if temp_file_present():
                break
            os.kill(proc.pid, signal.SIGCONT)  # the write finished meanwhile: catch the next one
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    leftovers = [name for name in os.listdir(out) if name != "net_g.safetensors"]
    assert leftovers, "the kill should have landed inside a write (temporary file left behind)"
    written = markers(signals, "wrote_")
    loaded = load_weights(target)  # must load: the previous version, complete
    value = loaded["w"][0, 0].item()
    assert value in (written[-1], written[-1] + 1)  # + 1: killed between rename and marker
    assert torch.all(loaded["w"] == value)


# ---------------------------------------------------------------------------------------
# full training state


class Counter:
    """An object registered with StateCheckpointer.register."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def _tiny_run(seed: int = 0):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    counter = Counter()
    return accelerator, model, optimizer, scheduler, counter


def _checkpointer(root: Path, counter: Counter, **kwargs) -> StateCheckpointer:
    checkpointer = StateCheckpointer(root, **kwargs)
    checkpointer.register("counter", counter)
    return checkpointer


def _train_step(accelerator, model, optimizer, scheduler, counter) -> None:
    loss = model(torch.randn(4, 8)).pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    counter.count += 1


def _draws() -> tuple:
    return torch.rand(3).tolist(), float(np.random.rand()), random.random()


def test_save_then_resume_restores_everything(tmp_path, fresh_accelerate_state):
    run = _tiny_run()
    for _ in range(2):
        _train_step(*run)
    accelerator, model, optimizer, scheduler, counter = run
    folder = _checkpointer(tmp_path / "state", counter).save(accelerator, 2)
    assert folder == tmp_path / "state" / "step_00000002"
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    expected_lr = scheduler.get_last_lr()
    expected_draws = _draws()  # the RNG streams right after the save
    _train_step(*run)  # move every piece of state away from the saved one
    assert counter.count == 3

    resumed = _tiny_run(seed=123)
    accelerator, model, optimizer, scheduler, counter = resumed
    assert _checkpointer(tmp_path / "state", counter).resume(accelerator) == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected_weights[name]), name
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], expected_moments)
    assert scheduler.get_last_lr() == expected_lr
    assert counter.count == 2
    assert _draws() == expected_draws


def test_resume_without_any_state_returns_none_and_bad_path_raises(tmp_path, fresh_accelerate_state):
    accelerator = _tiny_run()[0]
    checkpointer = StateCheckpointer(tmp_path / "state")
    assert checkpointer.latest() is None
    assert checkpointer.resume(accelerator) is None
    with pytest.raises(CheckpointError, match="no complete training state") as info:
        checkpointer.resume(accelerator, path=tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_start_step_prefers_the_named_state_then_auto_resume_then_zero(tmp_path, fresh_accelerate_state):
    run = _tiny_run()
    accelerator = run[0]
    checkpointer = StateCheckpointer(tmp_path / "state")
    assert checkpointer.start_step(accelerator, None, auto_resume=True) == 0  # nothing saved yet
    _train_step(*run)
    checkpointer.save(accelerator, 1)
    _train_step(*run)
    checkpointer.save(accelerator, 2)
    assert checkpointer.start_step(accelerator, None, auto_resume=False) == 0
    assert checkpointer.start_step(accelerator, None, auto_resume=True) == 2
    assert checkpointer.start_step(accelerator, tmp_path / "state" / "step_00000001", auto_resume=True) == 1
    with pytest.raises(CheckpointError, match="no complete training state"):
        checkpointer.start_step(accelerator, tmp_path / "nowhere", auto_resume=True)


def test_keep_last_rotation_and_latest_pointer(tmp_path, fresh_accelerate_state):
    accelerator = _tiny_run()[0]
    checkpointer = StateCheckpointer(tmp_path / "state", keep_last=2)
    for step in (10, 20, 30, 40):
        checkpointer.save(accelerator, step)
    names = sorted(path.name for path in (tmp_path / "state").iterdir())
    assert names == ["latest", "step_00000030", "step_00000040"]
    assert (tmp_path / "state" / LATEST_POINTER).read_text().strip() == "step_00000040"
    record = json.loads((tmp_path / "state" / "step_00000040" / COMPLETE_MARKER).read_text())
    assert record["step"] == 40 and record["num_processes"] == 1 and "time" in record
    assert checkpointer.latest() == tmp_path / "state" / "step_00000040"
    # re-saving an existing step replaces it in place
    checkpointer.save(accelerator, 40)
    assert read_state_step(tmp_path / "state" / "step_00000040") == 40
    assert [s for s, _ in checkpointer.complete_states()] == [30, 40]
    with pytest.raises(ValueError, match="keep_last=0"):
        StateCheckpointer(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="step=-1"):
        checkpointer.save(accelerator, -1)


def test_latest_ignores_partial_states_and_stale_pointer(tmp_path, fresh_accelerate_state):
    root = tmp_path / "state"
    checkpointer = StateCheckpointer(root, keep_last=5)
    accelerator = _tiny_run()[0]
    checkpointer.save(accelerator, 1)
    checkpointer.save(accelerator, 2)
    # a killed save: files present but no marker (hidden temp name, or a final-looking name)
    partial = root / ".tmp_step_00000003"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    unmarked = root / state_dir_name(4)
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"x")
    wrong = root / state_dir_name(5)  # marker disagreeing with the folder name
    wrong.mkdir()
    (wrong / COMPLETE_MARKER).write_text(json.dumps({"step": 9}))
    garbled = root / state_dir_name(6)
    garbled.mkdir()
    (garbled / COMPLETE_MARKER).write_text("{not json")
    assert checkpointer.latest() == root / "step_00000002"
    # pointer stale (kill between rename and pointer write) or missing: scanning wins
    (root / LATEST_POINTER).write_text("step_00000001\n")
    assert checkpointer.latest() == root / "step_00000002"
    (root / LATEST_POINTER).unlink()
    assert checkpointer.latest() == root / "step_00000002"
    assert find_resume_state(root) == root / "step_00000002"
    assert find_resume_state(root / "step_00000001") == root / "step_00000001"
    assert find_resume_state(partial) is None
    assert find_resume_state(tmp_path / "missing") is None
    # the next save removes the leftovers of the killed save (once stale) but never user folders
    _backdate(partial)
    checkpointer.save(accelerator, 7)
    assert not partial.exists() and unmarked.exists()
    assert checkpointer.resume(accelerator, path=root / "step_00000001") == 1


def test_automatic_checkpoint_naming_is_refused(tmp_path, fresh_accelerate_state):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    accelerator = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True),
    )
    with pytest.raises(ValueError, match="automatic_checkpoint_naming"):
        StateCheckpointer(tmp_path / "state").save(accelerator, 1)


def _assert_resumes(root: Path, child_module, expected_step: int) -> None:
    """Resume ``root`` in this process with the child's objects; weights must equal the step."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = accelerator.prepare(*child_module.build())
    probe = child_module.SaveProbe()
    checkpointer = StateCheckpointer(root)
    checkpointer.register("probe", probe)
    assert checkpointer.resume(accelerator) == expected_step
    assert probe.step == expected_step
    assert all(torch.all(p == expected_step) for p in model.parameters())
    assert len(optimizer.state_dict()["state"]) == 8  # Adam moments of 4 weights + 4 biases


def test_sigkill_inside_state_save_keeps_previous_state(tmp_path, child_module, fresh_accelerate_state):
    root, signals = tmp_path / "state", tmp_path / "signals"
    signals.mkdir()
    proc = start_child(tmp_path / "ckpt_child.py", "states", str(root), str(signals), "2")
    try:
        # the child pauses inside save_state of step 2, after accelerate wrote the model,
        # optimizer, scheduler and RNG files: kill it there
        wait_for(proc, lambda: (signals / "inside_save_2").exists(), "the middle of the second save")
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = root / ".tmp_step_00000002"
    assert (partial / "model.safetensors").is_file()  # the new weights were being written...
    assert torch.all(load_weights(partial / "model.safetensors")["0.weight"] == 2)
    assert not (partial / COMPLETE_MARKER).exists()
    checkpointer = StateCheckpointer(root)
    assert checkpointer.latest() == root / "step_00000001"  # ...but never taken as complete
    assert (root / LATEST_POINTER).read_text().strip() == "step_00000001"
    assert torch.all(load_weights(root / "step_00000001" / "model.safetensors")["0.weight"] == 1)
    _assert_resumes(root, child_module, expected_step=1)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_exposes_a_partial_state(tmp_path, child_module, fresh_accelerate_state):
    root, signals = tmp_path / "state", tmp_path / "signals"
    signals.mkdir()
    proc = start_child(tmp_path / "ckpt_child.py", "states", str(root), str(signals))
    delay = random.Random().uniform(0.0, 1.0)
    try:
        wait_for(proc, lambda: (signals / "saved_1").exists(), "the first complete save")
        time.sleep(delay)
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved, started = markers(signals, "saved_"), markers(signals, "saving_")
    latest = StateCheckpointer(root).latest()
    step = read_state_step(latest)
    context = f"delay={delay:.3f}s saved={saved} started={started} folders={os.listdir(root)}"
    assert saved[-1] <= step <= started[-1], context
    for folder in root.iterdir():  # every complete-looking state really is complete
        if read_state_step(folder) is not None:
            value = read_state_step(folder)
            assert torch.all(load_weights(folder / "model.safetensors")["0.weight"] == value), context
            assert (folder / "objects.json").is_file(), context
    _assert_resumes(root, child_module, expected_step=step)


MULTI_PROCESS_SCRIPT = textwrap.dedent(
    '''
    import json, sys
    from pathlib import Path

    import torch
    from accelerate import Accelerator
    from torch import nn

    from textualdeg.checkpoint import StateCheckpointer

    root, report = Path(sys.argv[1]), Path(sys.argv[2])
    accelerator = Accelerator()
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpointer = StateCheckpointer(root, keep_last=1)
    for step in (1, 2):
        with torch.no_grad():
            model.module.weight.fill_(step)
        checkpointer.save(accelerator, step)
    files = sorted(p.name for p in (root / "step_00000002").iterdir())
    with torch.no_grad():
        model.module.weight.fill_(-1.0)
    torch.manual_seed(1000 + accelerator.process_index)
    resumed = checkpointer.resume(accelerator)
    record = {
        "rank": accelerator.process_index,
        "world": accelerator.num_processes,
        "resumed": resumed,
        "weight": model.module.weight[0, 0].item(),
        "files": files,
        "folders": sorted(p.name for p in root.iterdir()),
    }
    (report / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
    '''
)


@pytest.mark.slow
def test_two_process_save_and_resume(tmp_path):
    script = tmp_path / "two_rank_checkpoint.py"
    script.write_text(MULTI_PROCESS_SCRIPT)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free a moment ago; no fixed port to collide on
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate), "launch", "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port", str(port),
        str(script), str(tmp_path / "state"), str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1]
    for record in records:
        assert record["world"] == 2 and record["resumed"] == 2 and record["weight"] == 2.0
        assert record["folders"] == ["latest", "step_00000002"]  # keep_last=1, no leftovers
        # save_state ran on both ranks: one RNG file per rank (safetensors, no pickle), plus the marker
        assert {"rng_state_0.safetensors", "rng_state_1.safetensors", COMPLETE_MARKER} <= set(record["files"])
        assert not [name for name in record["files"] if name.endswith(".pkl")]


# --- integrity, fallback, no pickle, stale temporaries, weight rotation -------------------


def _backdate(path: Path, seconds: float = 3600.0) -> None:
    """Make ``path`` (and everything under it) look untouched for ``seconds``."""
    stamp = time.time() - seconds
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (stamp, stamp))


def _flip_bit(path: Path, offset_from_end: int = 1) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _saved_states(root: Path, steps=(1, 2)) -> dict[int, dict[str, torch.Tensor]]:
    """Train and save a tiny run at ``steps``; returns the weights of each step."""
    run = _tiny_run()
    checkpointer = _checkpointer(root, run[4], keep_last=None)
    weights = {}
    for step in steps:
        _train_step(*run)
        checkpointer.save(run[0], step)
        weights[step] = {k: v.clone() for k, v in run[1].state_dict().items()}
    return weights


def _forge_checksum(folder: Path, name: str) -> None:
    """What an attacker who edits the state folder would do: record ``name``'s new checksum."""
    record = json.loads((folder / COMPLETE_MARKER).read_text())
    data = (folder / name).read_bytes()
    record.setdefault("files", {})[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / COMPLETE_MARKER).write_text(json.dumps(record))


def test_state_folder_is_pickle_free_where_we_write_and_records_every_files_sha256(tmp_path, fresh_accelerate_state):
    _saved_states(tmp_path / "state", steps=(1,))
    folder = tmp_path / "state" / "step_00000001"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([COMPLETE_MARKER, "model.safetensors", "optimizer.bin", "scheduler.bin",
                            "rng_state_0.safetensors", "objects.json"])
    assert json.loads((folder / "objects.json").read_text()) == {"counter": {"count": 1}}
    record = json.loads((folder / COMPLETE_MARKER).read_text())
    assert set(record["files"]) == set(names) - {COMPLETE_MARKER}
    for name, entry in record["files"].items():
        assert entry == {"size": (folder / name).stat().st_size,
                         "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
    assert verify_state(folder) == 1
    # accelerate pickles what is registered with it, and unpickles it without restriction
    accelerator, *_ = _tiny_run()
    accelerator.register_for_checkpointing(Counter())
    with pytest.raises(ValueError, match="StateCheckpointer.register"):
        StateCheckpointer(tmp_path / "other").save(accelerator, 1)


def test_registered_tensors_round_trip_without_pickle(tmp_path, fresh_accelerate_state):
    from textualdeg.restoration.ema import ModelEMA

    run = _tiny_run()
    ema = ModelEMA(run[1], decay=0.9)
    ema.update(run[1])
    checkpointer = _checkpointer(tmp_path / "state", run[4])
    checkpointer.register("ema", ema)
    folder = checkpointer.save(run[0], 1)
    assert json.loads((folder / "objects.json").read_text())["ema"]["num_updates"] == 1
    other = _tiny_run(seed=3)
    ema2 = ModelEMA(other[1], decay=0.5)
    resumed = _checkpointer(tmp_path / "state", other[4])
    resumed.register("ema", ema2)
    assert resumed.resume(other[0]) == 1
    assert ema2.decay == 0.9 and ema2.num_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(), ema2.module.state_dict().values()))
    with pytest.raises(ValueError, match="already registered"):
        resumed.register("ema", ema2)
    bare = StateCheckpointer(tmp_path / "bare")
    bare.register("bad", type("Bad", (), {"state_dict": lambda self: {"x": object()},
                                          "load_state_dict": lambda self, state: None})())
    with pytest.raises(ValueError, match="bad/x.*object"):
        bare.save(run[0], 1)


@pytest.mark.parametrize("damage", ["bit_flip_in_tensor_data", "truncated", "file_missing"])
def test_auto_resume_falls_back_from_a_corrupt_newest_state_with_a_warning(tmp_path, damage, caplog,
                                                                          fresh_accelerate_state):
    weights = _saved_states(tmp_path / "state")
    bad = tmp_path / "state" / "step_00000002" / "model.safetensors"
    if damage == "bit_flip_in_tensor_data":
        _flip_bit(bad)
        assert load_weights(bad).keys() == weights[2].keys()  # safetensors alone does not notice
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-7])
    else:
        bad.unlink()
    run = _tiny_run(seed=5)
    with caplog.at_level("WARNING"):
        assert _checkpointer(tmp_path / "state", run[4]).resume(run[0]) == 1
    assert all(torch.equal(v, weights[1][k]) for k, v in run[1].state_dict().items())
    assert run[4].count == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    why = {"bit_flip_in_tensor_data": "sha256", "truncated": "bytes", "file_missing": "missing"}[damage]
    assert any(str(bad) in m and why in m and "falling back" in m for m in warnings), warnings


def test_explicit_corrupt_state_raises_naming_the_file_and_no_usable_state_stops_auto_resume(
        tmp_path, fresh_accelerate_state):
    root = tmp_path / "state"
    _saved_states(root)
    bad = root / "step_00000002" / "model.safetensors"
    _flip_bit(bad)
    run = _tiny_run(seed=5)
    checkpointer = _checkpointer(root, run[4])
    for path in (root / "step_00000002", root):  # a state folder, or a root resolving to its newest state
        with pytest.raises(CheckpointError, match="sha256 differs.*requested explicitly") as info:
            checkpointer.start_step(run[0], path, auto_resume=True)
        assert info.value.path == bad
    assert run[4].count == 0  # nothing was loaded
    # a state of the old format (no checksums, pickled objects) is refused, not unpickled
    legacy = root / "step_00000003"
    shutil.copytree(root / "step_00000001", legacy)
    (legacy / COMPLETE_MARKER).write_text(json.dumps({"step": 3}))
    with pytest.raises(CheckpointError, match="no checksums") as info:
        checkpointer.resume(run[0], path=legacy)
    assert info.value.path == legacy / COMPLETE_MARKER
    # every complete state unusable: auto-resume stops rather than start over
    _flip_bit(root / "step_00000001" / "optimizer.bin", 30)
    with pytest.raises(CheckpointError, match=r"none of its 3 complete states can be resumed.*optimizer\.bin"):
        checkpointer.resume(run[0])


class _Payload:
    """Unpickling this creates a file: what a planted pickle could do on resume."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin",
                                     "random_states_0.pkl"])
def test_resume_never_executes_a_planted_pickle(tmp_path, planted, monkeypatch, fresh_accelerate_state):
    _saved_states(tmp_path / "state", steps=(1,))
    folder = tmp_path / "state" / "step_00000001"
    works = tmp_path / "payload_works"
    torch.save(_Payload(works), tmp_path / "payload.bin")
    torch.load(tmp_path / "payload.bin", weights_only=False)  # what unrestricted unpickling does
    assert works.exists()
    pwned = tmp_path / "pwned"
    torch.save(_Payload(pwned), folder / planted)
    _forge_checksum(folder, planted)  # checksums catch accidents; the loaders must refuse forgeries
    weights_only = []
    real_load = torch.load

    def spy(*args, **kwargs):
        weights_only.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    run = _tiny_run(seed=5)
    checkpointer = _checkpointer(tmp_path / "state", run[4])
    if planted == "random_states_0.pkl":  # not ours: accelerate tries it with weights_only=True, we ignore it
        assert checkpointer.resume(run[0]) == 1 and run[4].count == 1
    else:
        with pytest.raises(CheckpointError) as info:
            checkpointer.resume(run[0])
        assert f"{planted}: " in str(info.value), str(info.value)  # names the refused file
    assert not pwned.exists()
    assert all(flag is True for flag in weights_only), weights_only


def test_start_up_removes_stale_temporaries_of_ours_only(tmp_path, fresh_accelerate_state):
    run = _tiny_run()
    root, ckpt = tmp_path / "state", tmp_path / "checkpoints"
    prefixes = ("net_g", "net_g_ema")
    checkpointer = _checkpointer(root, run[4], keep_last=3, weights_dir=ckpt, weight_prefixes=prefixes)
    for step in (1, 2, 4):
        checkpointer.save(run[0], step)
    os.replace(root / "step_00000004", root / ".tmp_step_00000004")  # killed between marker and rename
    (root / LATEST_POINTER).write_text("step_00000002\n")
    dead, live = _dead_pid(), os.getppid()
    ckpt.mkdir()
    stale = [
        root / ".tmp_step_00000003",  # killed inside save_state
        root / ".trash_step_00000001.0123abcd",  # killed during a rotation
        root / f".{LATEST_POINTER}.{dead}.0123abcd.tmp",  # killed while writing the pointer
        temp_path_for(root / LATEST_POINTER),  # this process's own name (a previous run with our pid)
        ckpt / f".net_g_2.safetensors.{dead}.89abcdef.tmp",
        ckpt / f".net_g_ema_latest.safetensors.{dead}.89abcdef.tmp",
    ]
    kept = [
        root / f".{LATEST_POINTER}.{live}.0123abcd.tmp",  # a live process is writing it
        ckpt / f".net_g_3.safetensors.{live}.0123abcd.tmp",
        ckpt / f".notes.txt.{dead}.0123abcd.tmp",  # not a name of ours
        ckpt / f".net_g_5.safetensors.{dead}.0123abcd",
        root / ".tmp_other",
        root / "step_00000005",  # unmarked: not ours to judge
        root / "notes.txt",
    ]
    fresh = [root / ".tmp_step_00000006", ckpt / f".net_g_6.safetensors.{dead}.0123abcd.tmp"]  # maybe in use
    folders = {root / ".tmp_step_00000003", root / ".trash_step_00000001.0123abcd", root / ".tmp_other",
               root / "step_00000005", root / ".tmp_step_00000006"}
    for path in stale + kept + fresh:
        if path in folders:
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"partial")
        else:
            path.write_bytes(b"partial")
    for path in stale + kept + [root / ".tmp_step_00000004"]:
        _backdate(path)
    fresh_run = _tiny_run(seed=1)
    restarted = _checkpointer(root, fresh_run[4], keep_last=3, weights_dir=ckpt, weight_prefixes=prefixes)
    assert restarted.start_step(fresh_run[0], None, auto_resume=True) == 4
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept + fresh if not p.exists()] == []
    # the complete state under its temporary name was published, never deleted
    assert not (root / ".tmp_step_00000004").exists() and verify_state(root / "step_00000004") == 4
    assert [s for s, _ in restarted.complete_states()] == [1, 2, 4]


def test_a_full_disk_during_the_state_save_says_so_and_names_the_state_folder(tmp_path, monkeypatch,
                                                                             fresh_accelerate_state):
    import errno
    import shutil
    from collections import namedtuple

    run = _tiny_run()
    checkpointer = _checkpointer(tmp_path / "state", run[4])
    checkpointer.save(run[0], 1)

    def torch_save_on_a_full_disk(folder):  # what torch.save raises when the disk fills up
        (Path(folder) / "optimizer.bin").write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(run[0], "save_state", torch_save_on_a_full_disk)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    with pytest.raises(OSError, match=r"No space left on device while writing the training state of step 2 into "
                                      r".*\.tmp_step_00000002") as info:
        checkpointer.save(run[0], 2)
    assert info.value.errno == errno.ENOSPC
    assert [s for s, _ in checkpointer.complete_states()] == [1]  # the earlier state is intact


def test_rotation_keeps_last_weight_files_latest_and_those_of_kept_states(tmp_path, fresh_accelerate_state):
    run = _tiny_run()
    root, ckpt = tmp_path / "state", tmp_path / "checkpoints"
    checkpointer = _checkpointer(root, run[4], keep_last=2, weights_dir=ckpt, weight_prefixes=("net_g", "net_g_ema"))
    tensors = {"w": torch.zeros(2)}
    others = ["net_g_latest", "net_g_ema_latest", "net_g_best", "other_10", "net_g_ema_x"]
    for name in others:
        save_weights(tensors, ckpt / f"{name}.safetensors")

    def weights_at(step: int) -> None:
        save_weights(tensors, ckpt / f"net_g_{step}.safetensors")
        save_weights(tensors, ckpt / f"net_g_ema_{step}.safetensors")

    for step in (10, 20, 30, 40):
        weights_at(step)
        checkpointer.save(run[0], step)
    assert sorted(p.name for p in ckpt.glob("net_g_*0.safetensors")) == [
        "net_g_30.safetensors", "net_g_40.safetensors", "net_g_ema_30.safetensors", "net_g_ema_40.safetensors"]
    weights_at(50)  # weights written, then the run died before its state (twice)
    weights_at(60)
    weights_at(70)
    checkpointer.save(run[0], 70)
    # states 40 and 70 are kept (keep_last=2); weights: the last 2 steps (60, 70) plus 40
    steps = sorted(int(p.stem.rsplit("_", 1)[1]) for p in ckpt.glob("net_g_[0-9]*.safetensors"))
    assert steps == [40, 60, 70]
    assert sorted(p.name for p in ckpt.glob("net_g_ema_[0-9]*.safetensors")) == [
        "net_g_ema_40.safetensors", "net_g_ema_60.safetensors", "net_g_ema_70.safetensors"]
    assert all((ckpt / f"{name}.safetensors").is_file() for name in others)
    with pytest.raises(ValueError, match="give both or neither"):
        StateCheckpointer(root, weights_dir=ckpt)


# --- load_network_weights: the one place weights enter a network --------------------------------


def _tiny_nets():
    from textualdeg.restoration.archs import NAFNet, Restormer

    small = dict(img_channel=3, middle_blk_num=1, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1))
    return NAFNet(width=4, **small), NAFNet(width=8, **small), Restormer(
        dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2), ffn_expansion_factor=2.0)


def test_load_network_weights_names_file_arch_and_first_mismatched_keys(tmp_path, caplog):
    narrow, wide, restormer = _tiny_nets()
    path = tmp_path / "nafnet_w4.safetensors"
    save_weights(narrow.state_dict(), path)
    other = _tiny_nets()[0]
    assert load_network_weights(other, path) == {"missing": [], "unexpected": [], "reshaped": []}
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), narrow.state_dict().values()))
    # another width: one line naming the file, the network and the first key of another shape
    with pytest.raises(CheckpointError, match=r"nafnet_w4\.safetensors: does not fit NAFNet: .*of another shape "
                                              r"\(first: intro\.weight is 4x3x3x3 in the file, 8x3x3x3 in the network\)"):
        load_network_weights(wide, path)
    # another architecture: missing and unexpected keys, the first ones named
    with pytest.raises(CheckpointError, match=r"does not fit Restormer: \d+ of its \d+ tensors missing "
                                              r"\(first: patch_embed\.proj\.weight, .*\d+ unexpected \(first: decoders\."):
        load_network_weights(restormer, path)
    # non-strict: what fits is loaded; a file that leaves most of the network empty is a warning
    before = {k: v.clone() for k, v in restormer.state_dict().items()}
    with caplog.at_level("WARNING"):
        report = load_network_weights(restormer, path, strict=False)
    assert len(report["missing"]) == len(before) and report["unexpected"]
    assert all(torch.equal(before[k], v) for k, v in restormer.state_dict().items())
    assert any("loaded 0 of" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_lineage_limits_auto_resume_and_rotation_and_info_is_kept_in_the_marker(tmp_path, fresh_accelerate_state):
    from textualdeg.checkpoint import read_state_info

    accelerator = _tiny_run()[0]
    old = StateCheckpointer(tmp_path / "state", keep_last=2)
    for step in (10, 20, 30):
        old.save(accelerator, step, info={"branch": "a"})
    assert read_state_info(tmp_path / "state" / "step_00000030") == {"branch": "a"}
    assert sorted(s for s, _ in old.complete_states()) == [20, 30]
    # a branch resumed from step 20: its states beside branch a's newer step 30
    branch = StateCheckpointer(tmp_path / "state", keep_last=2,
                               lineage=lambda step, info: info.get("branch") == "b" or step <= 20)
    for step in (21, 22, 23):
        branch.save(accelerator, step, info={"branch": "b"})
    # rotation counted and deleted only the branch's states; branch a's step 30 is left alone
    assert [s for s, _ in branch.complete_states()] == [22, 23, 30]
    assert [s for s, _ in branch.lineage_states()] == [22, 23]
    assert branch.start_step(accelerator, None, auto_resume=True) == 23
    assert branch.resumed == tmp_path / "state" / "step_00000023"
    assert StateCheckpointer(tmp_path / "state").start_step(accelerator, None, auto_resume=True) == 30
    assert read_state_info(tmp_path / "state" / "missing") == {}
