"""Tests for ``textualdeg restore``: guidance then guided restoration with a trained experiment.

Tiny models from ``make_tiny``, tiny mapper files, a guided NAFNet experiment trained for
two steps by ``textualdeg.restoration.train`` (so the run-folder layout is the real one),
and scikit-image photographs. Paper: arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage import data
from skimage.transform import resize

from textualdeg.imageio import image_to_tensor, read_image, write_image
from textualdeg.restore_photos import RestoreError, find_weights, load_experiment_options, main, restore_images

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = REPO / "options" / "train_restoration" / "tiny_cpu.yml"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine they thrash."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    image = getattr(data, name)().astype(np.float32) / 255.0  # (H, W, 3) in [0, 1]
    return resize(image, size, anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of two small photographs (sizes not multiples of the network's padding)."""
    folder = tmp_path_factory.mktemp("photos")
    write_image(folder / "astronaut.png", _photo("astronaut", (60, 84)))
    write_image(folder / "chelsea.png", _photo("chelsea", (54, 90)))
    return folder


@pytest.fixture(scope="module")
def generate_opt(tmp_path_factory) -> Path:
    """A generation option file over tiny SD/CLIP folders and tiny random I2T/TR mapper files."""
    from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper, save_mapper_weights
    from textualdeg.guidance.models import load_stable_diffusion
    from textualdeg.guidance.processors import global_kv_state_dict, install_global_kv
    from textualdeg.guidance.tiny import make_tiny

    root = tmp_path_factory.mktemp("guidance_models")
    paths = make_tiny(root / "models", seed=0, dinov2=False)
    sd = load_stable_diffusion(paths["stable_diffusion"])
    install_global_kv(sd.unet)
    torch.manual_seed(0)
    dims = dict(input_dim=32, output_dim=32, num_words=2, hidden_dim=16)  # tiny CLIP and text widths: 32
    save_mapper_weights(root / "i2t.safetensors", ImageToTextMapper(**dims), global_kv=global_kv_state_dict(sd.unet))
    save_mapper_weights(root / "tr.safetensors", TextRestorationMapper(**dims))
    options = {
        "name": "test_restore_generate",
        "path": {"stable_diffusion": str(paths["stable_diffusion"]), "clip_vision": str(paths["clip_vision"]),
                 "i2t_mapper": str(root / "i2t.safetensors"), "tr_mapper": str(root / "tr.safetensors")},
        "network_g": {"num_words": 2, "hidden_dim": 16},
        "datasets": {"unused": {"dataroot_lq": "nowhere/input", "dataroot_ref": "nowhere/guidance"}},
        "generate": {"steps": 2, "resolution": 64, "dtype": "float32", "batch_size": 2},
    }
    path = root / "generate.yml"
    path.write_text(yaml.safe_dump(options))
    return path


@pytest.fixture(scope="module")
def guided_experiment(tmp_path_factory) -> Path:
    """A tiny guided NAFNet run folder, written by the real training loop (2 steps, with EMA)."""
    from textualdeg.options import load_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA
    from textualdeg.restoration.train import train

    root = tmp_path_factory.mktemp("train")
    for name in ("astronaut", "coffee", "rocket", "chelsea"):
        clean = _photo(name, (64, 80))
        write_image(root / "gt" / f"{name}.png", clean)
        write_image(root / "ref" / f"{name}.png", clean[::2, ::2])
    folders = [f"datasets.{k}.dataroot_{d}={root / d}" for k in ("train", "val") for d in ("gt", "ref")]
    opt = load_options(TINY_TRAIN, RESTORATION_SCHEMA, folders + [
        f"path.experiments_root={root / 'exp'}", "train.total_iter=2", "train.scheduler.periods=[2]",
        "train.warmup_iter=-1", "train.ema_decay=0.9", "val.save_img=false", "logger.save_checkpoint_freq=100"])
    return train(opt)


@pytest.fixture(scope="module")
def local_experiment(tmp_path_factory) -> Path:
    """A plain tiny NAFNet run folder laid out as train.py writes it (``save_network_weights``).

    Its blocks are switched on (NAFNet initialises their scales beta/gamma to 0, i.e. identity
    blocks) and its simplified channel attention is zeroed: a purely local network, so tiling
    with a large enough overlap must reproduce the whole-image result (with the attention on,
    the tiled output differs by about 1e-3).
    """
    import textualdeg.restoration.archs  # noqa: F401  (fills ARCH_REGISTRY)
    from textualdeg.options import load_options, save_options
    from textualdeg.registry import ARCH_REGISTRY
    from textualdeg.restoration.schema import RESTORATION_SCHEMA
    from textualdeg.restoration.train import save_network_weights

    exp = tmp_path_factory.mktemp("local_exp")
    network = {"type": "NAFNet", "img_channel": 3, "width": 8, "middle_blk_num": 1,
               "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}
    opt_dict = load_options(TINY_TRAIN, RESTORATION_SCHEMA, [f"path.experiments_root={exp}"]).to_dict()
    opt_dict["network_g"] = network  # a --set would merge into the guided network_g; replace it whole
    save_options(opt_dict, exp / "options.yml")
    opt = load_options(exp / "options.yml", RESTORATION_SCHEMA)
    torch.manual_seed(0)
    model = ARCH_REGISTRY.build(opt.network_g.to_dict())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".beta", ".gamma")):
                param.copy_(0.5 * torch.randn_like(param))
            if ".sca." in name and name.endswith("weight"):
                param.zero_()  # x * sca(x) becomes x * bias: no dependence on the whole image
    save_network_weights(model, None, exp / "checkpoints", "latest", opt)
    return exp


def _expected(experiment: Path, lq_path: Path, ref_path: Path | None) -> np.ndarray:
    """The experiment's network run directly on one image: (H, W, 3) in [0, 1]."""
    from textualdeg.restoration.inference import restore_tensor
    from textualdeg.restoration.network import build_network

    exp_opt = load_experiment_options(experiment)
    model = build_network(exp_opt.network_g, find_weights(experiment)).eval()
    lq = image_to_tensor(read_image(lq_path))[None]  # (1, 3, H, W)
    ref = None if ref_path is None else image_to_tensor(read_image(ref_path))[None]  # (1, 3, Hr, Wr)
    return restore_tensor(model, lq, ref=ref)[0].clamp(0, 1).permute(1, 2, 0).numpy()


def test_folder_end_to_end(photos, generate_opt, guided_experiment, tmp_path):
    out = tmp_path / "restored"
    summary = restore_images(photos, out, guided_experiment, generate_opt=generate_opt, device="cpu")
    assert (summary.generated, summary.reused) == (2, 0)
    assert summary.weights.name == "net_g_ema_latest.safetensors"  # the run has EMA and validates with it
    assert [p.name for p in summary.outputs] == ["astronaut.png", "chelsea.png"]
    assert sorted(p.name for p in (out / "guidance").iterdir()) == ["astronaut.png", "chelsea.png", "manifest.json"]
    for name in ("astronaut", "chelsea"):
        lq = read_image(photos / f"{name}.png")
        restored = read_image(out / f"{name}.png")
        guidance = read_image(out / "guidance" / f"{name}.png")
        assert restored.shape == lq.shape and guidance.shape == (64, 64, 3)
        assert guidance.std() > 0.01  # a generated picture, not a blank
        # the written output is the network run on the input with that guidance image
        expected = _expected(guided_experiment, photos / f"{name}.png", out / "guidance" / f"{name}.png")
        assert np.abs(restored - expected).max() <= 1.0 / 255 + 1e-6
        assert np.abs(restored - lq).mean() > 1e-3  # the network changed the image


def test_existing_guidance_reused_not_regenerated(photos, generate_opt, guided_experiment, tmp_path):
    out = tmp_path / "restored"
    planted = {}
    for i, name in enumerate(("astronaut", "chelsea")):
        write_image(out / "guidance" / f"{name}.png", _photo(("coffee", "rocket")[i], (40, 40)))
        path = out / "guidance" / f"{name}.png"
        planted[name] = (path.read_bytes(), path.stat().st_mtime_ns)
    # the models cannot even be loaded: any attempt to regenerate would fail
    summary = restore_images(photos, out, guided_experiment, generate_opt=generate_opt, device="cpu",
                             overrides=[f"path.stable_diffusion={tmp_path / 'no_sd'}"])
    assert (summary.generated, summary.reused) == (0, 2)
    for name, (content, mtime) in planted.items():
        path = out / "guidance" / f"{name}.png"
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
        expected = _expected(guided_experiment, photos / f"{name}.png", path)
        assert np.abs(read_image(out / f"{name}.png") - expected).max() <= 1.0 / 255 + 1e-6
    assert not (out / "guidance" / "manifest.json").exists()  # nothing was generated, nothing recorded
    # without a generation option file at all, reuse works too
    assert restore_images(photos, out, guided_experiment, device="cpu").reused == 2


def test_single_file_through_the_cli(photos, generate_opt, guided_experiment, tmp_path, capsys):
    from textualdeg.cli import main as cli_main

    out = tmp_path / "one"
    status = cli_main(["restore", "--input", str(photos / "chelsea.png"), "--output", str(out),
                       "--experiment", str(guided_experiment), "--generate-opt", str(generate_opt),
                       "--device", "cpu", "--tile", "32", "--tile-overlap", "8", "--self-ensemble"])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.png", "guidance"]
    assert sorted(p.name for p in (out / "guidance").glob("*.png")) == ["chelsea.png"]
    assert read_image(out / "chelsea.png").shape == (54, 90, 3)
    assert "restored 1 image(s)" in capsys.readouterr().out
    # the folder now records its settings: generating more guidance into it with others is refused
    status = cli_main(["restore", "--input", str(photos), "--output", str(out), "--experiment",
                       str(guided_experiment), "--generate-opt", str(generate_opt), "--set", "generate.steps=3"])
    assert status == 1
    assert str(out / "guidance" / "manifest.json") in capsys.readouterr().err
    assert not (out / "astronaut.png").exists()


def test_tiled_equals_untiled_and_plain_network_needs_no_guidance(local_experiment, tmp_path):
    photo = tmp_path / "in" / "coffee.png"
    write_image(photo, _photo("coffee", (96, 130)))
    whole = restore_images(photo, tmp_path / "whole", local_experiment, device="cpu", bit_depth=16)
    tiled = restore_images(photo, tmp_path / "tiled", local_experiment, device="cpu", bit_depth=16,
                           tile=64, tile_overlap=48)
    assert whole.guidance_dir is None and not (tmp_path / "whole" / "guidance").exists()
    a, b = read_image(whole.outputs[0]), read_image(tiled.outputs[0])
    assert a.shape == (96, 130, 3)
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a - read_image(photo)).mean() > 1e-3  # the network did something


def test_missing_experiment_and_options_named(photos, tmp_path, capsys):
    missing = tmp_path / "no_such_experiment"
    status = main(["--input", str(photos), "--output", str(tmp_path / "o"), "--experiment", str(missing)])
    assert status == 1
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "empty_exp").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty_exp" / "options.yml")):
        restore_images(photos, tmp_path / "o", tmp_path / "empty_exp", device="cpu")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing_here")):
        restore_images(tmp_path / "nothing_here", tmp_path / "o", tmp_path / "empty_exp", device="cpu")


def test_missing_weight_file_named(photos, guided_experiment, tmp_path):
    exp = tmp_path / "exp_without_weights"
    exp.mkdir()
    (exp / "options.yml").write_text((guided_experiment / "options.yml").read_text())
    with pytest.raises(FileNotFoundError, match=str(exp / "checkpoints")):
        restore_images(photos, tmp_path / "o", exp, device="cpu")
    missing = tmp_path / "weights.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        restore_images(photos, tmp_path / "o", guided_experiment, device="cpu", checkpoint=missing)
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_missing_models_named_before_generation(photos, generate_opt, guided_experiment, tmp_path):
    no_sd = tmp_path / "no_sd"
    with pytest.raises(FileNotFoundError, match=str(no_sd)):
        restore_images(photos, tmp_path / "o", guided_experiment, generate_opt=generate_opt, device="cpu",
                       overrides=[f"path.stable_diffusion={no_sd}"])
    no_tr = tmp_path / "tr_missing.safetensors"
    with pytest.raises(FileNotFoundError, match=str(no_tr)):
        restore_images(photos, tmp_path / "o", guided_experiment, generate_opt=generate_opt, device="cpu",
                       overrides=[f"path.tr_mapper={no_tr}"])
    with pytest.raises(RestoreError, match="--generate-opt"):
        restore_images(photos, tmp_path / "o", guided_experiment, device="cpu")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gen.yml")):
        restore_images(photos, tmp_path / "o", guided_experiment, generate_opt=tmp_path / "gen.yml", device="cpu")
    assert not (tmp_path / "o" / "guidance").exists()


def test_output_may_not_overwrite_inputs(photos, guided_experiment):
    with pytest.raises(RestoreError, match="overwrite"):
        restore_images(photos, photos, guided_experiment, device="cpu")


def test_bad_device_and_network_are_named(photos, guided_experiment, tmp_path, capsys):
    with pytest.raises(RestoreError, match="--device 'tpu'"):
        restore_images(photos, tmp_path / "o", guided_experiment, device="tpu")
    if not torch.cuda.is_available():
        assert main(["--input", str(photos), "--output", str(tmp_path / "o"), "--experiment",
                     str(guided_experiment), "--device", "cuda"]) == 1
        assert "--device 'cuda': no CUDA device is available" in capsys.readouterr().err
    exp = tmp_path / "exp_wider"
    (exp / "checkpoints").mkdir(parents=True)
    options = yaml.safe_load((guided_experiment / "options.yml").read_text())
    options["network_g"]["widht"] = 16
    (exp / "options.yml").write_text(yaml.safe_dump(options))
    weights = guided_experiment / "checkpoints" / "net_g_latest.safetensors"
    with pytest.raises(RestoreError, match="network_g of the experiment cannot be built: .*'widht'"):
        restore_images(photos, tmp_path / "o", exp, device="cpu", checkpoint=weights)
    assert not (tmp_path / "o").exists()


def test_find_weights_order(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for name in ("net_g_500.safetensors", "net_g_1000.safetensors", "net_g_ema_500.safetensors"):
        (ckpt / name).write_bytes(b"x")
    assert find_weights(tmp_path).name == "net_g_ema_500.safetensors"
    assert find_weights(tmp_path, prefer_ema=False).name == "net_g_1000.safetensors"
    (ckpt / "net_g_latest.safetensors").write_bytes(b"x")
    assert find_weights(tmp_path, prefer_ema=False).name == "net_g_latest.safetensors"
    assert find_weights(tmp_path).name == "net_g_latest.safetensors"  # final weights beat an older EMA step
    (ckpt / "net_g_ema_latest.safetensors").write_bytes(b"x")
    assert find_weights(tmp_path).name == "net_g_ema_latest.safetensors"
