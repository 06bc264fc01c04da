"""Stage 5: evaluate a restoration checkpoint on test sets, with the metric protocol recorded.

Replaces the authors' six ``main_evaluation_*_denoise*.py`` scripts and
``main_evaluation_deblur_derain_dehaze.py``, which pair files by sorted position (D45),
feed numpy to CUDA models (D42), have no Y channel or border crop, and hard-code the 3-D
SSIM on CUDA (D47; IDs as in docs/official_differences.md). Here one option file
(``EVALUATION_SCHEMA``, declared in this module) says which network, which weights, which
test sets and which metric protocol; :func:`evaluate` then

1. builds ``network_g`` and loads ``path.pretrain_network_g``
   (``textualdeg.restoration.network.build_network``, as training does);
2. pairs LQ / GT / guidance files by stem (``textualdeg.data.pairing.pair_folders``), or,
   for Gaussian denoising, adds seeded noise to the clean images (below);
3. restores each image with :func:`textualdeg.restoration.inference.restore_tensor` (reflect
   padding to the model's multiple, optional tiling, optional x8 self-ensemble), the
   guided models receiving the whole guidance image;
4. scores the clamped output with :func:`textualdeg.metrics.score` under the protocol
   (``metrics``: a preset plus optional field overrides, per dataset if needed): the numpy
   reference on the CPU, the batched torch metrics in float64 on a GPU (same definitions,
   equal to 1e-10);
5. writes, under ``path.results_root`` (default ``results/<name>``), atomically:
   ``<dataset>/per_image.csv``, ``results.json`` (means, per-image values, the protocol
   record, noise settings, checkpoint hash, options) and ``results.md`` (a table).

Gaussian-denoising noise (``datasets.<key>.noise``,
``textualdeg.data.degradations.add_seeded_noise``, which validation during training uses
too): ``LQ = GT + N(0, (sigma/255)^2)`` added to the float [0, 1] clean image in float64,
not clipped and not quantized unless ``clip`` / ``quantize`` say so (the authors and
Restormer neither clip nor quantize; PromptIR's uint8 pipeline does both). The noise of
each image is fixed and does not depend on the order of the files:

- ``seed_mode: stem`` (default): the generator is seeded from (``seed``, CRC-32 of the
  file stem, sigma), so every image gets its own noise, identical from run to run;
- ``seed_mode: fixed``: ``np.random.seed(seed)`` before every image, as the authors' and
  Restormer's test scripts do (every image of a given size then gets the same noise);
  ``channel_order: bgr`` lays the noise out as the authors did on BGR arrays.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import textualdeg
from textualdeg.data.degradations import NOISE_CHANNEL_ORDERS, NOISE_SEED_MODES, add_seeded_noise
from textualdeg.data.pairing import format_unmatched, match_ref, pair_folders
from textualdeg.fileio import atomic_write_text
from textualdeg.imageio import image_to_tensor, list_images, read_image, tensor_to_image, write_image
from textualdeg.log import get_logger, setup_logging
from textualdeg.metrics import PRESETS, Protocol, score
from textualdeg.metrics.protocol import CHANNELS, QUANTIZATIONS, SSIM_VARIANTS, Y_ROUNDINGS
from textualdeg.options import Field, MapOf, Options, Section, parse_options, save_options
from textualdeg.restoration.inference import resolve_device, restore_tensor
from textualdeg.daclip.conditions import embed_inputs, load_condition_embedder
from textualdeg.restoration.network import InstructedNetwork, build_network, is_guided, takes_instruction, with_daclip

logger = get_logger(__name__)

TASKS = ("paired", "gaussian_denoise")

# ----------------------------------------------------------------------------- schema
def _protocol_schema(default_preset: str | None) -> Section:
    preset_help = ("named metric protocol (textualdeg.metrics.PRESETS); the fields below override it"
                   if default_preset else "named protocol for this dataset (null: the top-level metrics)")
    return Section(
        {
            "preset": Field(str, default_preset, choices=tuple(PRESETS), help=preset_help),
            "channels": Field(str, None, choices=CHANNELS, help="rgb | y (BT.601 as MATLAB rgb2ycbcr)"),
            "y_rounding": Field(str, None, choices=Y_ROUNDINGS, help="float (BasicSR) | matlab (Y rounded to uint8)"),
            "crop_border": Field(int, None, help="pixels removed from every edge before scoring"),
            "ssim_variant": Field(str, None, choices=SSIM_VARIANTS, help="gaussian | gaussian3d | skimage"),
            "quantize": Field(str, None, choices=QUANTIZATIONS, help="uint8 (round outputs to 8 bit) | float"),
        },
        help="metric protocol (see textualdeg.metrics.protocol)",
    )


PROTOCOL_SCHEMA = _protocol_schema("textualdeg")
DATASET_PROTOCOL_SCHEMA = _protocol_schema(None)

NOISE_SCHEMA = Section(
    {
        "sigma": Field(float, help="noise standard deviation in 0..255 units (15, 25, 50)"),
        "seed": Field(int, 0, help="base seed of the test noise"),
        "seed_mode": Field(str, "stem", choices=NOISE_SEED_MODES,
                           help="stem: seed from (seed, file stem, sigma) | fixed: np.random.seed(seed) per image"),
        "channel_order": Field(str, "rgb", choices=NOISE_CHANNEL_ORDERS,
                               help="layout of the noise array (bgr reproduces the authors' cv2 arrays)"),
        "clip": Field(bool, False, help="clip the noisy image to [0, 1]"),
        "quantize": Field(bool, False, help="round the noisy image to 8 bit (implies clip), as uint8 pipelines"),
    },
    help="synthetic Gaussian noise of a denoising test set",
)

TEST_DATASET_SCHEMA = Section(
    {
        "name": Field(str, None, help="name in the results (default: the section key)"),
        "task": Field(str, "paired", choices=TASKS,
                      help="paired: LQ/GT folders | gaussian_denoise: clean GT + seeded noise"),
        "dataroot_gt": Field(str, path=True, help="folder of ground-truth images"),
        "dataroot_lq": Field(str, None, path=True, help="folder of degraded images (task: paired)"),
        "dataroot_ref": Field(str, None, path=True, help="folder of guidance images, named after the LQ (or GT) stem"),
        "filename_tmpl": Field(str, "{}", help="LQ stem = filename_tmpl.format(GT stem)"),
        "gt_stem_separator": Field(str, None, help="many LQ per GT: GT stem = LQ stem up to this separator"),
        "color": Field(str, "rgb", choices=("rgb", "gray"), help="read images as rgb or gray (BT.601)"),
        "noise": Field(NOISE_SCHEMA, None, help="Gaussian noise (task: gaussian_denoise)"),
        "metrics": Field(DATASET_PROTOCOL_SCHEMA, None,
                         help="protocol of this dataset: overrides of the top-level metrics, or another preset"),
        "instruction": Field(str, None, help="text-prompted networks (TextPromptIR): the instruction given with "
                                             "every image of this set"),
    },
    help="one test set",
    aliases={"lqroot": "dataroot_lq", "hqroot": "dataroot_gt", "refroot": "dataroot_ref"},
    ignored={"type", "phase", "io_backend", "scale"},
)

EVALUATION_SCHEMA = Section(
    {
        "name": Field(str, help="evaluation name; results go to results/<name>/ by default"),
        "model_type": Field(str, None, help="informational (BasicSR vocabulary)"),
        "network_g": Section({}, open=True, help="network: type (ARCH_REGISTRY) plus constructor kwargs"),
        "path": Section(
            {
                "pretrain_network_g": Field(str, None, path=True,
                                            help="weights to evaluate (safetensors or .pth); default: the latest "
                                                 "weights of the run of train_options"),
                "train_options": Field(str, None, path=True,
                                       help="the stage-4 option file these weights come from: pretrain_network_g "
                                            "defaults to <its run folder>/checkpoints/net_g_latest.safetensors"),
                "param_key_g": Field(str, None, help="entry of a wrapped .pth (params, params_ema)"),
                "strict_load_g": Field(bool, True, help="require every weight key to match"),
                "results_root": Field(str, None, path=True, help="output folder (default results/<name>)"),
                "instruction_encoder": Field(str, None, path=True,
                                             help="fine-tuned instruction encoder folder (text-prompted networks)"),
                "daclip": Field(str, None, path=True,
                                help="DA-CLIP file or folder (DA-CLIP conditioned networks; default: the "
                                     "train_options file's path.daclip)"),
            },
            help="files and folders",
        ),
        "datasets": MapOf(TEST_DATASET_SCHEMA, help="test sets (test_1, test_2, ...)"),
        "metrics": PROTOCOL_SCHEMA,
        "test": Section(
            {
                "tile": Field(int, None, help="tile side for tiled inference (null: whole images)"),
                "tile_overlap": Field(int, 32, help="overlap between tiles in pixels"),
                "self_ensemble": Field(bool, False, help="average the 8 flip/rot90 versions (x8)"),
                "device": Field(str, "auto", help="auto | cpu | cuda | cuda:N"),
                "save_img": Field(bool, False, help="write restored images to <results_root>/<dataset>/images/"),
                "replicate_gray": Field(bool, False,
                                        help="gray sets: feed 3 copies to a 3-channel network, average its output"),
                "progress": Field(bool, True, help="show a tqdm progress bar"),
            },
            help="inference settings",
        ),
    },
    help="evaluation (scripts/eval/evaluate.py)",
    ignored={"num_gpu", "dist_params", "launcher", "manual_seed", "scale", "is_train", "dist"},
)


# ----------------------------------------------------------------------------- helpers
def build_protocol(section: Options | dict | None, base: Protocol | None = None) -> Protocol:
    """The protocol a ``metrics`` section describes.

    Args:
        section: a validated metrics section (or plain dict) with ``preset`` and optional
            field overrides, or None.
        base: the protocol a section without ``preset`` (a per-dataset section) modifies;
            also returned when ``section`` is None.

    Returns:
        ``PRESETS[preset]`` (or ``base``) with the non-null fields replaced.
    """
    if section is None:
        if base is None:
            raise ValueError("metrics: no protocol given")
        return base
    values = dict(section)
    preset = values.pop("preset", None)
    protocol = PRESETS[preset] if preset is not None else base
    if protocol is None:
        raise ValueError("metrics.preset is required")
    return dataclasses.replace(protocol, **{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class TestItem:
    """One test image: its name and files (``lq`` None for synthetic noise)."""

    name: str
    gt: Path
    lq: Path | None
    ref: Path | None


def collect_items(dataset: Options | dict, key: str) -> list[TestItem]:
    """Pair the files of one test set by stem.

    Raises:
        ValueError: listing every unmatched file (LQ without GT, GT without LQ, image
            without guidance), or naming a missing option of the task.
    """
    if dataset["task"] == "paired":
        if dataset["dataroot_lq"] is None:
            raise ValueError(f"datasets.{key}.dataroot_lq is required for task 'paired'")
        triples = pair_folders(dataset["dataroot_gt"], dataset["dataroot_lq"], dataset["dataroot_ref"],
                               filename_tmpl=dataset["filename_tmpl"],
                               gt_stem_separator=dataset["gt_stem_separator"])
        return [TestItem(t.lq.stem, t.gt, t.lq, t.ref) for t in triples]
    if dataset["noise"] is None:
        raise ValueError(f"datasets.{key}.noise (with sigma) is required for task 'gaussian_denoise'")
    gts = list_images(dataset["dataroot_gt"])
    if not gts:
        raise ValueError(f"datasets.{key}: no images found in {dataset['dataroot_gt']}")
    triples, missing = match_ref([(None, gt) for gt in gts], dataset["dataroot_ref"])
    if missing:
        raise ValueError("unmatched files:\n" + format_unmatched(
            f"clean images in {dataset['dataroot_gt']} without a guidance image (same stem) in "
            f"{dataset['dataroot_ref']}", missing))
    return [TestItem(t.gt.stem, t.gt, None, t.ref) for t in triples]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: Path, color: str) -> np.ndarray:
    return read_image(path, "gray" if color == "gray" else "rgb")


def restore_item(model: nn.Module, item: TestItem, dataset: Options | dict, test: Options | dict,
                 device: torch.device, daclip: Any = None) -> tuple[torch.Tensor, np.ndarray]:
    """Read (or synthesise) one LQ image and restore it.

    The guidance image is read in the colour of the set (a gray set has gray guidance, as
    the stage-4 datasets read it) and given only to a guided network. With ``daclip`` (the
    frozen ``DAClipEmbedder`` of a DA-CLIP conditioned network) the whole input is embedded
    once, before any tiling.

    Returns:
        The output, (1, C, H, W) clamped to [0, 1] on ``device``, and the GT as float32
        (H, W, C) in [0, 1].
    """
    gt = _read(item.gt, dataset["color"])
    if item.lq is not None:
        lq = _read(item.lq, dataset["color"])
    else:
        lq = add_seeded_noise(gt, stem=item.name, **dataset["noise"])
    if lq.shape != gt.shape:
        raise ValueError(f"LQ {item.lq} is {lq.shape[:2]} but GT {item.gt} is {gt.shape[:2]}")
    x = image_to_tensor(lq).unsqueeze(0).to(device)  # (1, C, H, W)
    gray_trick = test["replicate_gray"] and x.shape[1] == 1
    if gray_trick:
        x = x.expand(-1, 3, -1, -1)  # (1, 3, H, W)
    ref = None
    if item.ref is not None and is_guided(model):
        ref = image_to_tensor(_read(item.ref, dataset["color"])).unsqueeze(0).to(device)  # (1, C, Hr, Wr)
        if gray_trick:
            ref = ref.expand(-1, 3, -1, -1)  # (1, 3, Hr, Wr)
    if daclip is not None:
        model = with_daclip(model, embed_inputs(daclip, x))  # (1, 2, D) for every tile
    out = restore_tensor(model, x, ref=ref, tile=test["tile"], tile_overlap=test["tile_overlap"],
                  self_ensemble=test["self_ensemble"])
    if gray_trick:
        out = out.mean(dim=1, keepdim=True)  # (1, 1, H, W)
    return out.float().clamp(0.0, 1.0), gt


@dataclass
class DatasetResult:
    """Scores of one test set."""

    name: str
    protocol: Protocol
    rows: list[dict[str, Any]]
    noise: dict[str, Any] | None

    @property
    def means(self) -> dict[str, float]:
        """Mean PSNR and SSIM over the images."""
        return {k: float(np.mean([r[k] for r in self.rows])) for k in ("psnr", "ssim")}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_images": len(self.rows), "mean": self.means,
                "protocol": self.protocol.to_dict(), "noise": self.noise, "per_image": self.rows}


def evaluate_dataset(model: nn.Module, key: str, dataset: Options, protocol: Protocol, test: Options,
                     device: torch.device, out_dir: Path, daclip: Any = None) -> DatasetResult:
    """Restore and score every image of one test set; write its per-image CSV (``daclip``: see ``restore_item``)."""
    name = dataset["name"] or key
    items = collect_items(dataset, key)
    logger.info("%s: %d images (%s), protocol %s", name, len(items), dataset["task"], protocol.to_dict())
    rows = []
    bar = tqdm(items, desc=name, unit="img", disable=not test["progress"], dynamic_ncols=True)
    for item in bar:
        start = time.perf_counter()
        out, gt = restore_item(model, item, dataset, test, device, daclip)
        scores = score(out, image_to_tensor(gt), protocol)
        rows.append({"image": item.name, "psnr": scores["psnr"], "ssim": scores["ssim"],
                     "height": gt.shape[0], "width": gt.shape[1], "seconds": round(time.perf_counter() - start, 4),
                     "lq": str(item.lq) if item.lq is not None else "", "gt": str(item.gt),
                     "ref": str(item.ref) if item.ref is not None else ""})
        bar.set_postfix(psnr=f"{scores['psnr']:.2f}", ssim=f"{scores['ssim']:.4f}")
        if test["save_img"]:
            write_image(out_dir / name / "images" / f"{item.name}.png", tensor_to_image(out[0]))
    result = DatasetResult(name, protocol, rows, dataset["noise"].to_dict() if dataset["noise"] is not None else None)
    _write_csv(out_dir / name / "per_image.csv", rows)
    logger.info("%s: PSNR %.4f dB, SSIM %.4f over %d images", name, result.means["psnr"], result.means["ssim"],
                len(rows))
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _describe_protocol(protocol: Protocol) -> str:
    channels = "Y (" + protocol.y_rounding + ")" if protocol.channels == "y" else "RGB"
    return f"{channels}, SSIM {protocol.ssim_variant}, {protocol.quantize}, crop {protocol.crop_border}"


def _describe_noise(noise: dict[str, Any] | None) -> str:
    if noise is None:
        return "-"
    extra = ", clip" if noise["clip"] else ""
    extra += ", 8-bit" if noise["quantize"] else ""
    return f"sigma {noise['sigma']:g} (seed {noise['seed']}, {noise['seed_mode']}{extra})"


def _markdown(name: str, checkpoint: str, results: list[DatasetResult], test: Options) -> str:
    lines = [f"# Evaluation: {name}", "", f"- checkpoint: `{checkpoint}`",
             f"- tile: {test['tile']} (overlap {test['tile_overlap']}), self-ensemble: {test['self_ensemble']}", "",
             "| dataset | images | PSNR (dB) | SSIM | protocol | noise |", "|---|---:|---:|---:|---|---|"]
    for r in results:
        m = r.means
        lines.append(f"| {r.name} | {len(r.rows)} | {m['psnr']:.4f} | {m['ssim']:.4f} | "
                     f"{_describe_protocol(r.protocol)} | {_describe_noise(r.noise)} |")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """inf PSNR (identical images) as the string "inf": JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------- entry point
def resolve_checkpoint(path: Options) -> Path:
    """The weights to evaluate: ``path.pretrain_network_g``, else the latest of ``path.train_options``'s run.

    Stage 4 writes ``<run folder>/checkpoints/net_g_latest.safetensors``, the run folder
    being ``path.experiments_root`` of the training file or ``experiments/<its name>``
    (``textualdeg.engine.experiment_dir``), so an evaluation file that names its training
    file follows a renamed run instead of pointing at a folder nothing writes.

    Raises:
        ValueError: neither is set (the message shows the ``--set`` line), or the training
            option file cannot be read.
    """
    if path.pretrain_network_g:
        return Path(path.pretrain_network_g)
    if not path.train_options:
        raise ValueError(
            "no weights to evaluate: set path.pretrain_network_g, e.g. --set "
            "path.pretrain_network_g=experiments/<training name>/checkpoints/net_g_latest.safetensors, or "
            "path.train_options to the stage-4 option file (--set path.train_options=options/train_restoration/"
            "<file>.yml) to evaluate the latest weights of its run"
        )
    from textualdeg.engine import experiment_dir
    from textualdeg.options import load_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    train_file = Path(path.train_options)
    if not train_file.is_file():
        raise ValueError(f"path.train_options={train_file} is not a file (the stage-4 option file whose run is "
                         "evaluated; or set path.pretrain_network_g)")
    train_opt = load_options(train_file, RESTORATION_SCHEMA)
    return experiment_dir(train_opt) / "checkpoints" / "net_g_latest.safetensors"


def _instruction_embeddings(opt: Options, model: nn.Module, device: torch.device) -> dict[str, torch.Tensor] | None:
    """Test set key -> the (H,) embedding of its ``instruction`` for a text-prompted network, else None.

    Raises:
        ValueError: a test set without ``instruction``, or no ``path.instruction_encoder``.
    """
    if not takes_instruction(model):
        return None
    from textualdeg.instruction.guidance import InstructionEmbedder

    missing = [key for key, dataset in opt.datasets.items() if not dataset["instruction"]]
    if missing:
        raise ValueError(f"datasets.{missing[0]}.instruction is required: {opt.network_g.type} restores as an "
                         "instruction says (e.g. 'I desire to remove rain from the image.')")
    embedder = InstructionEmbedder.from_pretrained(opt.path.instruction_encoder, device)
    return {key: embedder([dataset["instruction"]])[0] for key, dataset in opt.datasets.items()}


def _daclip_path(opt: Options) -> str | None:
    """``path.daclip``, or the ``path.daclip`` of ``path.train_options`` when unset."""
    if opt.path.daclip or not opt.path.train_options:
        return opt.path.daclip
    from textualdeg.options import load_options
    from textualdeg.restoration.schema import RESTORATION_SCHEMA

    return load_options(Path(opt.path.train_options), RESTORATION_SCHEMA).path.daclip


def evaluate(opt: Options) -> dict[str, Any]:
    """Evaluate ``path.pretrain_network_g`` on every test set of ``opt`` (``EVALUATION_SCHEMA``).

    Args:
        opt: validated options (``load_options(file, EVALUATION_SCHEMA, overrides)``).

    Returns:
        The content of ``results.json``: ``{"name", "checkpoint", "test", "datasets":
        {name: {"num_images", "mean": {"psnr", "ssim"}, "protocol", "noise",
        "per_image": [...]}}, "options", "environment"}``.

    Raises:
        ValueError: unmatched files (all listed), a missing task option, mismatched sizes,
            an unavailable ``test.device``, a guided network without ``dataroot_ref``.
        textualdeg.checkpoint.CheckpointError: a weight file that is missing, unreadable or
            does not fit ``network_g``.
    """
    if not opt.datasets:
        raise ValueError("datasets: at least one test set is required")
    checkpoint = resolve_checkpoint(opt.path)
    device = resolve_device(opt.test.device, "test.device")
    out_dir = Path(opt.path.results_root or Path("results") / opt.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_options(opt, out_dir / "options.yml")
    default_protocol = build_protocol(opt.metrics)
    # check every test set's files before spending time on the model
    for key, dataset in opt.datasets.items():
        collect_items(dataset, key)
    model = build_network(opt.network_g, str(checkpoint), strict=opt.path.strict_load_g,
                          param_key=opt.path.param_key_g).eval().requires_grad_(False).to(device)
    unguided = [key for key, dataset in opt.datasets.items() if dataset["dataroot_ref"] is None]
    if is_guided(model) and unguided:
        raise ValueError(f"datasets.{unguided[0]}.dataroot_ref is required: {opt.network_g.type} is a guided "
                         "network (it restores with a guidance image)")
    instructions = _instruction_embeddings(opt, model, device)
    daclip = load_condition_embedder(_daclip_path(opt), model, device)
    results = []
    for key, dataset in opt.datasets.items():
        protocol = build_protocol(dataset["metrics"], default_protocol)
        net = InstructedNetwork(model, instructions[key]) if instructions else model
        results.append(evaluate_dataset(net, key, dataset, protocol, opt.test, device, out_dir, daclip=daclip))
    record = {
        "name": opt.name,
        "checkpoint": {"path": str(checkpoint), "sha256": _sha256(checkpoint)},
        "test": opt.test.to_dict(),
        "datasets": {r.name: r.to_dict() for r in results},
        "options": opt.to_dict(),
        "environment": {"textualdeg": textualdeg.__version__, "torch": torch.__version__, "device": str(device),
                        "metrics": "numpy" if device.type == "cpu" else "torch float64"},
    }
    atomic_write_text(out_dir / "results.json", json.dumps(_json_safe(record), indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", _markdown(opt.name, str(checkpoint), results, opt.test))
    logger.info("results written to %s", out_dir)
    return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``textualdeg evaluate -opt FILE [--set key=value ...]``: load the options, :func:`evaluate`."""
    setup_logging()
    return evaluate(parse_options(argv, EVALUATION_SCHEMA, description="Stage 5: PSNR/SSIM of a restoration "
                                                                        "checkpoint under a recorded protocol."))


__all__ = ["main", "EVALUATION_SCHEMA", "PROTOCOL_SCHEMA", "NOISE_SCHEMA", "TEST_DATASET_SCHEMA", "evaluate",
           "DATASET_PROTOCOL_SCHEMA", "evaluate_dataset", "build_protocol", "collect_items", "restore_item",
           "TestItem", "DatasetResult"]
