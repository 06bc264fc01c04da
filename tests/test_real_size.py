"""Real sizes kept honest without the weights.

* Every real model builds on the meta device with the parameter count of its released
  checkpoint (``textualdeg.guidance.real_configs.PUBLISHED_PARAMETERS``), and every option
  file's models with their pinned counts (the backbone part equal to the official
  backbone's, docs/backbones.md).
* A forward of every stage runs at real size on shapes only: stages 1-3 on the meta device;
  stages 4-5 on fake tensors (PyTorch's meta-backed tensors that report the CPU), because
  the LayerNorm2d of the restoration networks turns autocast off for its input's device
  and ``torch.autocast`` has no meta device.
* A model folder or checkpoint whose config says one size while the option file expects
  another is an error naming both.
* ``bench/real_size.py --tiny`` (the CI form of the real-size benchmark) runs every stage.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from textualdeg.guidance.real_configs import (
    PUBLISHED_PARAMETERS,
    build_clip_vision,
    build_dinov2,
    build_stable_diffusion,
    clip_vision_config,
    parameter_count,
)

REPO = Path(__file__).resolve().parents[1]
OPTIONS = REPO / "options"


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: the shapes-only forwards and the tiny bench gain nothing from more, and a
    shared 2-core machine thrashes with two threads per process."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def meta_models(tmp_path_factory):
    """SD 2.1-base and CLIP ViT-H/14 on the meta device, global K/V installed."""
    from textualdeg.guidance.processors import install_global_kv

    sd = build_stable_diffusion(tmp_path_factory.mktemp("tokenizer"), device="meta")
    encoder = build_clip_vision(device="meta")
    install_global_kv(sd.unet)
    return sd, encoder


# ---------------------------------------------------------------------------------------
# parameter counts


def test_real_models_have_the_published_parameter_counts(meta_models):
    sd, encoder = meta_models
    kv = sum(p.numel() for name, p in sd.unet.named_parameters() if "_global" in name)
    counts = {
        "unet": parameter_count(sd.unet) - kv,  # the released UNet, without our global K/V copies
        "vae": parameter_count(sd.vae),
        "text_encoder": parameter_count(sd.text_encoder),
        "clip_vision": parameter_count(encoder),
        "dinov2": parameter_count(build_dinov2(device="meta")),
    }
    assert counts == {name: count for name, (count, _) in PUBLISHED_PARAMETERS.items()}
    assert counts["unet"] == 865_910_724  # SD 2.1-base unet/diffusion_pytorch_model.safetensors
    # 16 cross-attention layers get trainable K/V copies of their 1024-wide context projections
    assert kv == 2 * 1024 * (2 * 320 + 2 * 640 + 2 * 1280 + 1280 + 3 * 1280 + 3 * 640 + 3 * 320)
    assert encoder.config.hidden_size == 1280 and sd.text_encoder.config.hidden_size == 1024


# Mapper counts: num_words x 2 MLPs (CLS and patches) of Linear(C, H), 2 x Linear(H, H), Linear(H, D)
# with a LayerNorm after each of the first three; C = 1280 (CLIP), D = 1024 (text), H = hidden_dim.
def _mlp(c: int, h: int, d: int) -> int:
    return (c * h + h) + 2 * (h * h + h) + (h * d + d) + 3 * 2 * h


@pytest.mark.parametrize("stage, option_file", [
    ("i2t", "train_i2t/sd21base_vith14.yml"),
    ("tr", "train_tr/sd21base_vith14.yml"),
    ("generate", "generate/sd21base_vith14.yml"),
])
def test_guidance_option_files_build_at_real_size(meta_models, stage, option_file):
    from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper
    from textualdeg.guidance.schema import GENERATE_SCHEMA, I2T_SCHEMA, TR_SCHEMA
    from textualdeg.options import load_options

    schema = {"i2t": I2T_SCHEMA, "tr": TR_SCHEMA, "generate": GENERATE_SCHEMA}[stage]
    opt = load_options(OPTIONS / option_file, schema)
    sd, _ = meta_models
    vision = clip_vision_config(opt.path.open_clip_model)  # the encoder the file's open_clip_model describes
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (1280, 32, 224)
    if stage != "generate":
        assert opt.datasets["train"].clip_size == vision.image_size
        assert opt.datasets["train"].resolution % (8 * 8) == 0  # VAE x UNet downsampling of SD
    with torch.device("meta"):
        i2t = ImageToTextMapper(vision.hidden_size, sd.text_encoder.config.hidden_size, opt.network_g.num_words,
                                opt.network_g.hidden_dim)
        tr = TextRestorationMapper(1024, 1024, opt.network_g.num_words, opt.network_g.hidden_dim)
    assert parameter_count(i2t) == 2 * 20 * _mlp(1280, 1280, 1024) == 249_538_560
    assert parameter_count(tr) == 20 * _mlp(1024, 1280, 1024) == 118_215_680


# (total, backbone without masa_*) per option file; the backbone counts are the official
# backbones' (docs/backbones.md), 002's total the authors' 223.79 M (D56).
OPTION_COUNTS = {
    "train_restoration/001_promptir_all_in_one_3task_promptir_schedule.yml": (69_561_757, 35_592_263),
    "train_restoration/001_promptir_all_in_one_restoration.yml": (69_561_757, 35_592_263),
    "train_restoration/002_nafnet_single_image_motion_deblurring.yml": (223_791_683, 67_888_835),
    "train_restoration/002_nafnet_single_image_motion_deblurring_refined.yml": (223_793_485, 67_888_835),
    "train_restoration/003_restormer_single_image_motion_deblurring.yml": (60_096_138, 26_126_644),
    "train_restoration/004_0_restormer_defocus_deblur_dual_16bit.yml": (60_102_042, 26_132_548),
    "train_restoration/004_1_restormer_defocus_deblur_single_8bit.yml": (60_096_138, 26_126_644),
    "train_restoration/005_sfnet_image_dehazing_indoor.yml": (18_193_036, 13_271_209),
    "train_restoration/006_sfnet_image_dehazing_outdoor.yml": (18_193_036, 13_271_209),
    "train_restoration/007_drsformer_image_deraining_rain200l.yml": (71_648_678, 32_610_304),
    "train_restoration/008_drsformer_image_deraining_rain200h.yml": (72_693_798, 33_655_424),
    "train_restoration/009_drsformer_image_deraining_diddata.yml": (72_693_798, 33_655_424),
    "train_restoration/010_drsformer_image_deraining_ddndata.yml": (72_693_798, 33_655_424),
    "train_restoration/011_restormer_gaussian_grayscale_denoising_blind.yml": (60_071_946, 26_109_076),
    "train_restoration/012_restormer_gaussian_grayscale_denoising_sigma15.yml": (60_071_946, 26_109_076),
    "train_restoration/013_restormer_gaussian_grayscale_denoising_sigma25.yml": (60_071_946, 26_109_076),
    "train_restoration/014_restormer_gaussian_grayscale_denoising_sigma50.yml": (60_071_946, 26_109_076),
    "train_restoration/015_restormer_gaussian_color_denoising_blind.yml": (60_075_402, 26_111_668),
    "train_restoration/016_restormer_gaussian_color_denoising_sigma15.yml": (60_075_402, 26_111_668),
    "train_restoration/017_restormer_gaussian_color_denoising_sigma25.yml": (60_075_402, 26_111_668),
    "train_restoration/018_restormer_gaussian_color_denoising_sigma50.yml": (60_075_402, 26_111_668),
    "train_restoration/019_restormer_realworld_denoising.yml": (60_075_402, 26_111_668),
    "train_restoration/dsrir_all_in_one_3task.yml": (3_516_837, 3_516_837),
    "train_restoration/dsrir_all_in_one_3task_guided.yml": (7_266_379, 3_516_837),
    # the official TextPromptIR (dead tensors included) plus GuidedPromptIR's masa_* branch (33,969,494)
    "train_restoration/textpromptir_all_in_one_3task_guided.yml": (157_612_066, 123_642_572),
    "test/allinone_3task.yml": (69_561_757, 35_592_263),
    "test/deblur_gopro.yml": (223_791_683, 67_888_835),
    "test/dehaze_sots.yml": (69_561_757, 35_592_263),
    "test/denoise_color_sigma15.yml": (60_075_402, 26_111_668),
    "test/denoise_color_sigma25.yml": (60_075_402, 26_111_668),
    "test/denoise_color_sigma50.yml": (60_075_402, 26_111_668),
    "test/denoise_gray_sigma15.yml": (60_071_946, 26_109_076),
    "test/denoise_gray_sigma25.yml": (60_071_946, 26_109_076),
    "test/denoise_gray_sigma50.yml": (60_071_946, 26_109_076),
    "test/derain.yml": (60_096_138, 26_126_644),
    "test/real_denoise_sidd.yml": (60_075_402, 26_111_668),
}


def _load(option_file: str):
    from textualdeg.evaluation import EVALUATION_SCHEMA
    from textualdeg.options import load_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    schema = RESTORATION_SCHEMA if option_file.startswith("train_restoration") else EVALUATION_SCHEMA
    return load_options(OPTIONS / option_file, schema)


#: every stage-4 and stage-5 option file of the repository, the tiny CPU ones aside
REAL_OPTION_FILES = sorted(str(p.relative_to(OPTIONS)) for d in ("train_restoration", "test")
                           for p in (OPTIONS / d).glob("*.yml") if "tiny" not in p.name)


def test_pinned_counts_name_existing_option_files():
    assert set(OPTION_COUNTS) <= set(REAL_OPTION_FILES)


@pytest.mark.parametrize("option_file", REAL_OPTION_FILES)
def test_restoration_option_files_build_on_meta_with_their_counts(option_file):
    """Every file builds on the meta device; the pinned ones with their counts."""
    from textualdeg.restoration.network import REF_PREFIX, build_network

    with torch.device("meta"):
        model = build_network(_load(option_file).network_g)
    backbone = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(REF_PREFIX))
    assert all(p.is_meta for p in model.parameters())
    if option_file in OPTION_COUNTS:
        assert (parameter_count(model), backbone) == OPTION_COUNTS[option_file]


# ---------------------------------------------------------------------------------------
# shapes-only forwards at real size


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def _context(sd, words: torch.Tensor) -> torch.Tensor:
    """The UNet context of "a photo of a S" with ``words`` at S, through the text encoder's modules.

    ``encode_injected`` checks the placeholder position and splices per row from its
    values (``.any()``, ``.tolist()``), which meta tensors do not have; the same splice
    (position 5, as ``build_injection_prompt`` finds it) is done here on shapes, and the
    spliced values are tested at tiny size in tests/guidance/test_injection.py.
    """
    from textualdeg.guidance.injection import _encode_embeddings

    batch, length = words.shape[0], sd.tokenizer.model_max_length
    tokens = sd.text_encoder.embeddings.token_embedding(torch.zeros(batch, length, dtype=torch.long, device="meta"))
    spliced = torch.cat([tokens[:, :5], words, tokens[:, 6:]], dim=1)[:, :length]  # (B, 77, 1024)
    return _encode_embeddings(sd.text_encoder, spliced)


@pytest.mark.parametrize("stage", ["i2t", "tr"])
def test_mapper_training_step_runs_on_meta_at_real_size(meta_models, stage):
    """Stages 1 and 2 at 512 px, batch 2: CLIP, VAE, noise, mappers, text encoder, UNet, loss, backward."""
    from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper
    from textualdeg.guidance.models import clip_image_features
    from textualdeg.guidance.pipeline import encode_latents
    from textualdeg.guidance.processors import global_kv_processors

    sd, encoder = meta_models
    with torch.device("meta"):
        i2t = ImageToTextMapper.for_models(encoder, sd.text_encoder)
        tr = TextRestorationMapper.for_models(sd.text_encoder)
    features = clip_image_features(encoder, _meta(2, 3, 224, 224))  # (2, 257, 1280)
    latents = encode_latents(sd.vae, _meta(2, 3, 512, 512))  # (2, 4, 64, 64)
    timesteps = torch.zeros(2, dtype=torch.long, device="meta")
    noisy = sd.scheduler.add_noise(latents, torch.randn_like(latents), timesteps)
    words = i2t(features) if stage == "i2t" else tr(i2t(features).detach())  # (2, 20, 1024)
    pred = sd.unet(noisy, timesteps, encoder_hidden_states=_context(sd, words)).sample
    loss = F.mse_loss(pred, torch.randn_like(pred))
    loss.backward()
    assert features.shape == (2, 257, 1280) and latents.shape == (2, 4, 64, 64)
    assert words.shape == (2, 20, 1024) and pred.shape == (2, 4, 64, 64)
    trained = i2t if stage == "i2t" else tr
    assert trained.mapping_0[0].weight.grad.shape == (1280, 1280 if stage == "i2t" else 1024)
    kv = next(iter(global_kv_processors(sd.unet).values()))
    assert kv.to_k_global.weight.grad.shape == (320, 1024)
    for module in (sd.unet, i2t, tr):
        module.zero_grad(set_to_none=True)


def test_generation_runs_on_meta_at_real_size(meta_models):
    """Stage 3, batch 4 at 512 px: CLIP -> I2T -> TR, both contexts, one batched-CFG UNet call, VAE decode.

    The DDIM update itself is not run: ``DDIMScheduler.step`` indexes its (CPU) alpha
    table with the timestep's value; it is scalar arithmetic on the (4, 4, 64, 64) latents.
    """
    from textualdeg.guidance.injection import encode_text, tokenize
    from textualdeg.guidance.mappers import ImageToTextMapper, TextRestorationMapper
    from textualdeg.guidance.pipeline import GuidancePipeline, decode_latents

    sd, encoder = meta_models
    with torch.device("meta"):
        i2t = ImageToTextMapper.for_models(encoder, sd.text_encoder)
        tr = TextRestorationMapper.for_models(sd.text_encoder)
    pipeline = GuidancePipeline(sd, encoder, i2t, tr)
    with torch.no_grad():
        words = pipeline.word_embeddings(_meta(4, 3, 720, 1280))  # central square, CLIP view
        cond = _context(sd, words)
        uncond = encode_text(sd.text_encoder, tokenize(sd.tokenizer, [""])).last_hidden_state.expand(4, -1, -1)
        noise = pipeline.guided_noise(_meta(4, 4, 64, 64), torch.tensor(999, device="meta"), cond, uncond, 5.0)
        images = decode_latents(sd.vae, noise)
    assert words.shape == (4, 20, 1024) and cond.shape == uncond.shape == (4, 77, 1024)
    assert noise.shape == (4, 4, 64, 64) and images.shape == (4, 3, 512, 512)


def test_dinov2_window_selection_runs_on_meta_at_real_size():
    """Stage 4's DINOv2 ViT-B/14 picks a 384-px window of the 512-px guidance for each of 2 crops."""
    from textualdeg.pretrained.dinov2 import DinoFeatureExtractor
    from textualdeg.restoration.dino_window import DinoWindowSelector

    extractor = DinoFeatureExtractor(build_dinov2(device="meta")).to("meta")
    crops, offsets, scores = DinoWindowSelector(extractor).select(_meta(2, 3, 384, 384), _meta(2, 3, 512, 512))
    assert crops.shape == (2, 3, 384, 384) and offsets.shape == (2, 2) and scores.shape == (2, 9)


def _fake_mode():
    # Fake tensors: meta storage, CPU device type (see the module docstring for why not meta).
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


#: one stage-4 file per guided backbone (and each input layout: dual-pixel, gray)
STAGE4_FILES = (
    "001_promptir_all_in_one_restoration.yml",
    "002_nafnet_single_image_motion_deblurring.yml",
    "002_nafnet_single_image_motion_deblurring_refined.yml",
    "003_restormer_single_image_motion_deblurring.yml",
    "004_0_restormer_defocus_deblur_dual_16bit.yml",
    "005_sfnet_image_dehazing_indoor.yml",
    "007_drsformer_image_deraining_rain200l.yml",
    "008_drsformer_image_deraining_rain200h.yml",
    "011_restormer_gaussian_grayscale_denoising_blind.yml",
    "dsrir_all_in_one_3task_guided.yml",
)


@pytest.mark.parametrize("name", STAGE4_FILES)
def test_guided_training_forward_runs_at_real_size_on_fake_tensors(name):
    """Stage 4: the option file's network at its crop, batch 2 (SFNet's BatchNorm needs two)."""
    from textualdeg.restoration.network import build_network

    opt = _load(f"train_restoration/{name}")
    crop = opt.datasets["train"].gt_size
    with _fake_mode():
        model = build_network(opt.network_g).train()
        x = torch.empty(2, model.image_channels, crop, crop)
        out = model(x, torch.empty(2, model.ref_channels, crop, crop))
    assert out.shape == (2, model.ref_channels if model.image_channels == 6 else model.image_channels, crop, crop)


def test_evaluation_forward_runs_at_real_size_on_fake_tensors():
    """Stage 5: option test/deblur_gopro.yml on a 1280x720 frame with 512x512 guidance (pad, match, crop)."""
    from textualdeg.restoration.inference import restore_tensor
    from textualdeg.restoration.network import build_network

    opt = _load("test/deblur_gopro.yml")
    with _fake_mode(), torch.no_grad():
        model = build_network(opt.network_g).eval()
        out = restore_tensor(model, torch.empty(1, 3, 720, 1280), torch.empty(1, 3, 512, 512), tile=opt.test.tile)
    assert out.shape == (1, 3, 720, 1280)


# ---------------------------------------------------------------------------------------
# a folder of one size where the option file expects another


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from textualdeg.guidance.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"), dinov2=False)


def test_stable_diffusion_parts_of_two_sizes_name_both(tiny, tmp_path):
    from textualdeg.guidance.models import load_stable_diffusion

    folder = shutil.copytree(tiny["stable_diffusion"], tmp_path / "sd")
    config_file = folder / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(ValueError, match=r"cross_attention_dim 32 but text_encoder/config.json has hidden_size 48"):
        load_stable_diffusion(folder)


def test_open_clip_checkpoint_of_another_size_than_open_clip_model_names_both(tiny, tmp_path):
    """The option path.open_clip_model (ViT-H-14) describes another tower than the file holds."""
    from textualdeg.guidance.models import load_clip_vision

    checkpoint = shutil.copy(tiny["open_clip"], tmp_path / "open_clip_pytorch_model.bin")  # no config beside it
    with pytest.raises(ValueError) as info:
        load_clip_vision(checkpoint, open_clip_model="ViT-H-14")
    message = str(info.value)
    assert "width 32, layers 2" in message and "width 1280, layers 32" in message
    assert "path.open_clip_model" in message


def test_clip_size_other_than_the_encoder_input_names_both(tiny):
    from textualdeg.guidance.models import load_clip_vision
    from textualdeg.guidance.schema import I2T_SCHEMA
    from textualdeg.guidance.train import check_clip_size
    from textualdeg.options import load_options

    opt = load_options(OPTIONS / "train_i2t/sd21base_vith14.yml", I2T_SCHEMA, ["datasets.train.clip_size=336"])
    with pytest.raises(ValueError, match=r"clip_size=336 but the CLIP image encoder .* takes 224-px images"):
        check_clip_size(opt, load_clip_vision(tiny["clip_vision"]))


# ---------------------------------------------------------------------------------------
# the benchmark's CI form


def test_real_size_bench_tiny_runs_every_stage(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    bench = importlib.import_module("real_size")
    rows = bench.main(bench.parse_args(["--tiny", "--threads", "1"]))
    stages = {row.stage for row in rows}
    assert {"build", "1 I2T", "2 TR", "3 gen", "4 dino", "4 train", "4 ratio", "5 eval"} <= stages
    trained = [row.what for row in rows if row.stage == "4 train"]
    assert len(trained) == len(bench.STAGE4_FILES)
    ratios = {row.stage: row.note for row in rows if "speed-up" in row.what}
    assert "equal numerics" in ratios["3 gen"] and "target >= 1x on cpu" in ratios["3 gen"]

    def max_difference(note: str) -> float:
        return float(re.search(r"max \|ours - theirs\| = (\S+)", note).group(1))

    # the rebuilt authors' paths compute what ours compute
    assert max_difference(ratios["3 gen"]) < 1e-4
    assert max_difference(ratios["4 ratio"]) < 1e-5
    sys.modules.pop("real_size", None)
