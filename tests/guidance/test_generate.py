"""Tests of guidance generation (textualdeg.guidance.generate) through the real script, on tiny models.

For a given batch size, results do not depend on the process count, the resume point or
the other pending images; another batch size changes float rounding only (one grey level
at most on the tiny models). Existing outputs are skipped, a manifest is written, datasets
sharing an input folder each get their images, and mapper files that do not fit are named
in the error.
Paper: arXiv:2312.17334.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper, save_mapper_weights
from textualdeg.guidance.models import clip_image_features, load_clip_vision, load_stable_diffusion
from textualdeg.guidance.processors import global_kv_state_dict, install_global_kv
from textualdeg.imageio import read_image, write_image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "generate" / "generate_reference.py"
STEMS = ("astronaut", "chelsea", "coffee")
MANY = 24  # random inputs for the batch tests: a 1-LSB difference shows in a few of them


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (two threads spin against each other on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _script():
    spec = importlib.util.spec_from_file_location("generate_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(opt_file: Path, *overrides: str) -> dict:
    script = _script()
    args = ["-opt", str(opt_file)]
    for item in overrides:
        args += ["--set", item]
    from textualdeg.guidance.generate import generate
    from textualdeg.guidance.schema import GENERATE_SCHEMA
    from textualdeg.options import load_options

    parsed = script.parse_args(args)
    return generate(load_options(parsed.opt, GENERATE_SCHEMA, parsed.set))


@pytest.fixture(scope="module")
def setup(tiny_paths, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Random-weight mapper files (4 words), three input photographs and an options file."""
    from skimage import data

    root = tmp_path_factory.mktemp("generate")
    sd = load_stable_diffusion(tiny_paths["stable_diffusion"])
    clip = load_clip_vision(tiny_paths["clip_vision"])
    torch.manual_seed(0)
    i2t = ImageToTextMapper.for_models(clip, sd.text_encoder, num_words=4, hidden_dim=16)
    install_global_kv(sd.unet)
    save_mapper_weights(root / "i2t.safetensors", i2t, global_kv_state_dict(sd.unet))
    save_mapper_weights(root / "tr.safetensors", TextRestorationMapper.for_models(sd.text_encoder, 4, 16))
    save_mapper_weights(root / "tr5.safetensors", TextRestorationMapper.for_models(sd.text_encoder, 5, 16))
    for name, step in zip(STEMS, (4, 2, 3)):  # 128x128, 150x226, 134x200
        write_image(root / "input" / f"{name}.png", getattr(data, name)()[::step, ::step].astype(np.float32) / 255)
    options = {
        "path": {
            "stable_diffusion": str(tiny_paths["stable_diffusion"]),
            "clip_vision": str(tiny_paths["clip_vision"]),
            "i2t_mapper": str(root / "i2t.safetensors"),
            "tr_mapper": str(root / "tr.safetensors"),
        },
        "network_g": {"num_words": 4, "hidden_dim": 16},
        "datasets": {"test": {"dataroot_lq": str(root / "input"), "dataroot_ref": str(root / "out_b2")}},
        "generate": {"steps": 3, "resolution": 32, "dtype": "float32", "batch_size": 2},
    }
    opt_file = root / "generate.yml"
    opt_file.write_text(yaml.safe_dump(options))
    counts = _run(opt_file)
    return {"root": root, "opt": opt_file, "first_run": counts, "reference": _read_all(root / "out_b2")}


def _read_all(folder: Path, stems=STEMS) -> dict[str, np.ndarray]:
    return {stem: read_image(folder / f"{stem}.png") for stem in stems}


def _totals(counts: dict) -> dict:
    return {key: counts[key] for key in ("pending", "skipped", "written")}


@pytest.fixture(scope="module")
def many(setup) -> dict:
    """MANY random inputs and their guidance at batch size 4 (the reference of the batch tests)."""
    root = setup["root"]
    rng = np.random.default_rng(0)
    for i in range(MANY):
        write_image(root / "many" / f"im{i:02d}.png", rng.random((40 + i, 48, 3)).astype(np.float32))
    stems = tuple(f"im{i:02d}" for i in range(MANY))
    overrides = [f"datasets.test.dataroot_lq={root / 'many'}", "generate.batch_size=4"]
    out = root / "many_b4"
    assert _run(setup["opt"], *overrides, f"datasets.test.dataroot_ref={out}")["written"] == MANY
    return {"opt": setup["opt"], "stems": stems, "overrides": overrides, "out": out, "reference": _read_all(out, stems)}


def test_outputs_manifest_and_skip_existing(setup):
    out = setup["root"] / "out_b2"
    assert _totals(setup["first_run"]) == {"pending": 3, "skipped": 0, "written": 3}
    assert all(image.shape == (32, 32, 3) for image in setup["reference"].values())
    assert not np.array_equal(setup["reference"]["astronaut"], setup["reference"]["coffee"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["steps"] == 3 and manifest["settings"]["guidance_scale"] == 5.0
    assert manifest["settings"]["dtype"] == "float32" and manifest["batch_size"] == 2
    unet_files = manifest["models"]["stable_diffusion"]["files"]
    assert len(unet_files["unet/diffusion_pytorch_model.safetensors"]["fingerprint"]) == 64
    assert set(manifest["models"]) == {"stable_diffusion", "clip_vision", "i2t_mapper", "tr_mapper"}

    stamps = {stem: (out / f"{stem}.png").stat().st_mtime_ns for stem in STEMS}
    assert _totals(_run(setup["opt"])) == {"pending": 0, "skipped": 3, "written": 0}
    assert stamps == {stem: (out / f"{stem}.png").stat().st_mtime_ns for stem in STEMS}

    (out / "chelsea.png").unlink()  # as if the run had been killed before this image
    assert _totals(_run(setup["opt"])) == {"pending": 1, "skipped": 2, "written": 1}
    np.testing.assert_array_equal(read_image(out / "chelsea.png"), setup["reference"]["chelsea"])


def test_same_batch_size_is_bit_exact_whatever_is_pending(many):
    """Resuming regenerates a few images in a short batch: it is padded, so they come out bit-identical.

    Unpadded, a batch of 3 runs kernels of another shape than the batches of 4 (float
    rounding), and some images differed by one grey level.
    """
    out = many["out"]
    for first in range(0, MANY, 3):  # regenerate every image, three per resumed run
        stems = many["stems"][first : first + 3]
        for stem in stems:
            (out / f"{stem}.png").unlink()
        counts = _run(many["opt"], *many["overrides"], f"datasets.test.dataroot_ref={out}")
        assert _totals(counts) == {"pending": 3, "skipped": MANY - 3, "written": 3}
    for stem, image in _read_all(out, many["stems"]).items():
        np.testing.assert_array_equal(image, many["reference"][stem], err_msg=stem)


def test_batch_size_changes_only_rounding(many, tmp_path, capsys):
    """Another batch size: the same images up to float rounding, at most one grey level on few pixels.

    Resuming a folder with another batch size warns that the images may then differ.
    """
    out = tmp_path / "b1"
    _run(many["opt"], many["overrides"][0], "generate.batch_size=1", f"datasets.test.dataroot_ref={out}")
    images = _read_all(out, many["stems"])
    levels = np.stack([np.abs(images[s] - many["reference"][s]) for s in many["stems"]]) * 255  # (N, H, W, 3)
    assert levels.max() <= 1 + 1e-3
    assert (levels > 0.5).mean() < 0.01
    assert "records generate.batch_size" not in capsys.readouterr().err
    (out / "im00.png").unlink()
    _run(many["opt"], many["overrides"][0], "generate.batch_size=4", f"datasets.test.dataroot_ref={out}")
    assert "records generate.batch_size=1, this run uses 4" in capsys.readouterr().err


def test_manifest_refuses_mixing_settings(setup):
    with pytest.raises(ValueError, match="manifest.json"):
        _run(setup["opt"], "generate.steps=4")


def test_datasets_sharing_an_input_folder_each_get_their_images(setup, tmp_path, capsys):
    """Two datasets reading one dataroot_lq: both folders filled, counts true per dataset.

    Outputs used to be looked up by input path, so both datasets' images went to the last
    folder and the first stayed empty while the log counted them as written.
    """
    root = setup["root"]
    datasets = {
        "train": {"dataroot_lq": str(root / "input"), "dataroot_ref": str(tmp_path / "train")},
        "val": {"dataroot_lq": str(root / "input"), "dataroot_ref": str(tmp_path / "val")},
    }
    options = yaml.safe_load(setup["opt"].read_text())
    opt_file = tmp_path / "shared.yml"
    opt_file.write_text(yaml.safe_dump({**options, "datasets": datasets}))
    (tmp_path / "val").mkdir()
    write_image(tmp_path / "val" / "coffee.png", setup["reference"]["coffee"])  # already there: skipped

    counts = _run(opt_file)
    for name in ("train", "val"):
        for stem, image in _read_all(tmp_path / name).items():
            np.testing.assert_array_equal(image, setup["reference"][stem], err_msg=f"{name}/{stem}")
        assert json.loads((tmp_path / name / "manifest.json").read_text())["dataset"] == name
    assert counts["datasets"] == {
        "train": {"pending": 3, "skipped": 0, "written": 3},
        "val": {"pending": 2, "skipped": 1, "written": 2},
    }
    assert _totals(counts) == {"pending": 5, "skipped": 1, "written": 5}
    log = capsys.readouterr().err
    assert "datasets.train: 3 images to generate, 0 already there" in log
    assert "datasets.val: 2 images to generate, 1 already there" in log
    assert "wrote 5 images on process 0 (train: 3, val: 2)" in log


def test_two_datasets_writing_one_folder_are_refused(setup, tmp_path):
    options = yaml.safe_load(setup["opt"].read_text())
    same = {"dataroot_lq": str(setup["root"] / "input"), "dataroot_ref": str(tmp_path / "out")}
    opt_file = tmp_path / "same.yml"
    opt_file.write_text(yaml.safe_dump({**options, "datasets": {"a": same, "b": same}}))
    with pytest.raises(ValueError, match="datasets.a and datasets.b would both write"):
        _run(opt_file)
    assert not (tmp_path / "out").exists()


def test_mismatched_mapper_names_the_file(setup, tmp_path):
    tr5 = setup["root"] / "tr5.safetensors"
    with pytest.raises(ValueError, match="tr5.safetensors"):
        _run(setup["opt"], f"path.tr_mapper={tr5}", f"datasets.test.dataroot_ref={tmp_path / 'out'}")


def test_without_tr_mapper_injects_the_i2t_words(setup, tmp_path):
    """``use_tr_mapper: false`` (the stage-2 ablation) needs no TR file and equals an identity TR mapper."""
    from textualdeg.guidance.generate import load_pipeline
    from textualdeg.guidance.schema import GENERATE_SCHEMA
    from textualdeg.options import load_options

    out = tmp_path / "without_tr"
    overrides = ["generate.use_tr_mapper=false", "path.tr_mapper=null", f"datasets.test.dataroot_ref={out}"]
    assert _run(setup["opt"], *overrides)["written"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["use_tr_mapper"] is False and manifest["models"]["tr_mapper"] is None
    without = _read_all(out)
    assert any(not np.array_equal(without[s], setup["reference"][s]) for s in STEMS)  # the TR mapper mattered
    opt = load_options(setup["opt"], GENERATE_SCHEMA, overrides)
    pipeline = load_pipeline(opt, torch.device("cpu"), torch.float32)
    assert pipeline.tr_mapper is None
    image = torch.from_numpy(setup["reference"]["astronaut"]).permute(2, 0, 1)[None]
    words = pipeline.word_embeddings(image)
    expected = pipeline.i2t_mapper(clip_image_features(pipeline.image_encoder, image))  # (1, 4, D)
    np.testing.assert_array_equal(words.numpy(), expected.detach().numpy())
    with pytest.raises(ValueError, match="path.tr_mapper is required"):
        _run(setup["opt"], "path.tr_mapper=null", f"datasets.test.dataroot_ref={tmp_path / 'other'}")


@pytest.mark.slow
def test_two_processes_equal_one(setup, tmp_path):
    out = tmp_path / "out_2proc"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SCRIPT), "-opt", str(setup["opt"]), "--set", f"datasets.test.dataroot_ref={out}",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr and "wrote 2 images on process 0" in result.stderr
    for stem, image in _read_all(out).items():
        np.testing.assert_array_equal(image, setup["reference"][stem], err_msg=stem)
