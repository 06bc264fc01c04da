"""Stage 3: generate one guidance image per degraded input image.

``generate(opt)`` reads an option file validated by ``schema.GENERATE_SCHEMA``: for every
``datasets.<key>`` it turns each image of ``dataroot_lq`` into ``dataroot_ref/<stem>.png``
through CLIP -> I2T mapper -> TR mapper -> "a photo of a S" -> DDIM with classifier-free
guidance against the empty prompt (``pipeline.GuidancePipeline``).

* **Reproducible per image.** Each image's initial noise comes from
  ``seed_from_name(stem, generate.seed)`` (the authors re-seeded 42 for every image, D51,
  so all images started from the same noise). The matmul and convolution kernels sum in an
  order that depends on the batch *shape* (measured on CPU: mapper, text encoder, UNet and
  VAE decoder all change in the last float bits between a batch of 1 and of 4), but not on
  a row's position or its companions. So every batch is padded to ``generate.batch_size``
  (repeating its last image): for a given batch size the PNGs are bit-identical whatever
  the process count, the resume point or the other images in the folder. Another batch
  size changes float rounding only (on the tiny test models: at most one grey level on a
  few pixels); ``manifest.json`` records the batch size and a run with another one warns.
* **Resumable.** Outputs are written atomically and existing ones are skipped (unless
  ``generate.overwrite``), so a killed run picks up where it stopped.
* **Sharded.** The pending inputs are split across processes with accelerate's
  ``PartialState.split_between_processes`` (``accelerate launch``, ``torchrun`` or plain
  ``python``).
* **Shared inputs.** Datasets may read the same ``dataroot_lq``: each input is generated
  once and written into every dataset's ``dataroot_ref`` that still lacks it, and the
  counts are logged per dataset. Two datasets writing the same output file are refused.
* **Recorded.** ``dataroot_ref/manifest.json`` records the settings, the input folder and
  a fingerprint of every model file. Fingerprint = SHA-256 over the file size (8 bytes,
  little endian), its first MiB and its last MiB: cheap on multi-GB weights and it changes
  with any retraining, though unlike a full hash it would miss an edit confined to the
  middle of a file. A folder whose manifest records other settings or models is refused
  (mixing guidance of two configurations), unless ``generate.overwrite``.
* **Memory.** ``generate.dtype`` (bf16/fp16 halve weights and activations),
  ``generate.attention: sdpa`` (fused kernels; ``math`` holds the score matrices, as the
  authors' attention did) and ``generate.batch_size``; running out of memory names them
  (``memory_advice``; measurements in docs/real_size.md).

The authors' script loaded CLIP from the SD folder (D13), read flags that did not exist
(D13, D14) and ignored ``--num_words`` (D15); here every path comes from ``path:`` and the
word count from ``network_g.num_words``, checked against the mapper files.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from textualdeg.fileio import atomic_write_text
from textualdeg.guidance.data import GuidanceInputDataset
from textualdeg.guidance.mappers import (
    ImageToTextMapper,
    TextRestorationMapper,
    is_residual_tr_file,
    load_mapper_weights,
)
from textualdeg.guidance.memory import attention_backend, out_of_memory_hint
from textualdeg.guidance.models import load_clip_vision, load_stable_diffusion
from textualdeg.guidance.pipeline import GuidancePipeline, seed_from_name
from textualdeg.guidance.processors import install_global_kv, load_global_kv
from textualdeg.guidance.schema import GENERATE_SCHEMA
from textualdeg.imageio import list_images, tensor_to_image, write_image
from textualdeg.log import get_logger, setup_logging
from textualdeg.options import Options, parse_options

logger = get_logger(__name__)

MANIFEST_NAME = "manifest.json"
FINGERPRINT_CHUNK = 1 << 20  # 1 MiB from each end
FINGERPRINT_RULE = "sha256(size as 8-byte little-endian + first 1 MiB + last 1 MiB)"
SEED_RULE = "seed_from_name(stem, generate.seed): int(sha256(f'{seed}:{stem}')[:8], big-endian) >> 1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def fingerprint(path: str | Path) -> str:
    """Quick content fingerprint of a (possibly huge) file; see the module docstring.

    Args:
        path: a file.

    Returns:
        Hex SHA-256 of the size, the first MiB and the last MiB.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_CHUNK))
        if size > FINGERPRINT_CHUNK:
            handle.seek(max(FINGERPRINT_CHUNK, size - FINGERPRINT_CHUNK))
            digest.update(handle.read())
    return digest.hexdigest()


def model_fingerprints(path: str | Path) -> dict[str, Any]:
    """Fingerprints of a model file, or of every file under a model folder (sorted, relative names).

    Returns:
        ``{"path": str, "files": {relative name: {"size": int, "fingerprint": hex}}}``.
    """
    path = Path(path)
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    root = path if path.is_dir() else path.parent
    return {
        "path": str(path),
        "files": {
            str(f.relative_to(root)): {"size": f.stat().st_size, "fingerprint": fingerprint(f)} for f in files
        },
    }


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``generate.dtype`` as a torch dtype; float16 on a CPU falls back to float32 (with a warning)."""
    dtype = _DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        logger.warning("generate.dtype=float16 is not supported on the CPU; using float32")
        return torch.float32
    return dtype


def plan_jobs(opt: Options) -> tuple[list[tuple[str, Path, Path]], dict[str, int]]:
    """Pair every input image with its output path and keep those still to generate.

    Returns:
        The pending ``(dataset key, input, output)`` jobs (sorted by output path) and, per
        dataset key, how many outputs already existed and were skipped. Datasets sharing a
        ``dataroot_lq`` each get their own jobs.

    Raises:
        ValueError: two inputs of one folder share a stem, or two datasets would write the
            same output file (both named).
    """
    jobs, skipped, writers = [], {}, {}
    for key in opt.datasets:
        ds = opt.datasets[key]
        out_dir, seen, skipped[key] = Path(ds.dataroot_ref), {}, 0
        for path in list_images(ds.dataroot_lq):
            if path.stem in seen:
                raise ValueError(
                    f"datasets.{key}.dataroot_lq={ds.dataroot_lq}: {seen[path.stem].name} and {path.name} share the "
                    f"stem {path.stem!r}; their guidance files would collide"
                )
            seen[path.stem] = path
            out = out_dir / f"{path.stem}.png"
            other = writers.setdefault(out.resolve(), key)
            if other != key:
                raise ValueError(
                    f"datasets.{other} and datasets.{key} would both write {out}; give each dataset its own "
                    "dataroot_ref (datasets may share a dataroot_lq)"
                )
            if out.exists() and not opt.generate.overwrite:
                skipped[key] += 1
            else:
                jobs.append((key, path, out))
    return sorted(jobs, key=lambda job: str(job[2])), skipped


def group_by_input(jobs: Sequence[tuple[Path, Path]]) -> list[tuple[Path, tuple[Path, ...]]]:
    """Merge ``(input, output)`` jobs that read one file (datasets sharing a ``dataroot_lq``).

    An input's guidance depends only on the file and the settings, so it is generated once
    and written to all its outputs.

    Args:
        jobs: ``(input, output)`` pairs; an input may appear more than once.

    Returns:
        ``(input, outputs)`` pairs, sorted by input path, outputs in job order.
    """
    outputs: dict[Path, tuple[Path, list[Path]]] = {}
    for src, out in jobs:
        outputs.setdefault(Path(src).resolve(), (Path(src), []))[1].append(Path(out))
    return [(src, tuple(outs)) for _, (src, outs) in sorted(outputs.items(), key=lambda item: str(item[0]))]


def build_manifest(opt: Options, dtype: torch.dtype) -> dict[str, Any]:
    """Settings and model fingerprints, shared by every output folder of the run."""
    g = opt.generate
    settings = {
        "steps": g.steps,
        "guidance_scale": g.guidance_scale,
        "seed": g.seed,
        "seed_rule": SEED_RULE,
        "resolution": g.resolution,
        "dtype": str(dtype).removeprefix("torch."),
        "batched_cfg": g.batched_cfg,
        "use_tr_mapper": g.use_tr_mapper,
        "template": g.template,
        "placeholder": g.placeholder,
        "num_words": opt.network_g.num_words,
        "hidden_dim": opt.network_g.hidden_dim,
        "scheduler": "DDIM, eta 0",
        "unconditional_prompt": "",
        "crop": "central square, CLIP view bicubic to the encoder size",
    }
    models = {
        "stable_diffusion": model_fingerprints(opt.path.stable_diffusion),
        "clip_vision": model_fingerprints(opt.path.clip_vision),
        "i2t_mapper": model_fingerprints(opt.path.i2t_mapper),
        "tr_mapper": model_fingerprints(opt.path.tr_mapper) if g.use_tr_mapper else None,
    }
    return {"settings": settings, "models": models, "fingerprint_rule": FINGERPRINT_RULE}


def _files(models: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fingerprints of a manifest's models without their paths (moving a folder changes nothing)."""
    return None if models is None else {name: record and record.get("files") for name, record in models.items()}


def write_manifests(opt: Options, manifest: dict[str, Any]) -> None:
    """Main process: write ``manifest.json`` into every output folder, refusing to mix configurations."""
    for key in opt.datasets:
        ds = opt.datasets[key]
        out_dir = Path(ds.dataroot_ref)
        path = out_dir / MANIFEST_NAME
        if path.is_file() and not opt.generate.overwrite:
            old = json.loads(path.read_text())
            if (old.get("settings"), _files(old.get("models"))) != (manifest["settings"], _files(manifest["models"])):
                raise ValueError(
                    f"{path} records other settings or models than this run; its guidance images would mix two "
                    "configurations. Use another datasets.*.dataroot_ref, or --set generate.overwrite=true"
                )
            if old.get("batch_size", opt.generate.batch_size) != opt.generate.batch_size:
                logger.warning(
                    "%s records generate.batch_size=%s, this run uses %d: the images added now may differ from "
                    "those already there by float rounding (not bit-identical)",
                    path, old["batch_size"], opt.generate.batch_size,
                )
        record = {
            **manifest,
            "batch_size": opt.generate.batch_size,  # not a setting: it changes float rounding only
            "attention": opt.generate.attention,  # neither: the kernels differ in float rounding only
            "dataset": key,
            "dataroot_lq": str(ds.dataroot_lq),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def check_mapper_paths(opt: Options) -> None:
    """ValueError naming ``path.i2t_mapper`` or ``path.tr_mapper`` when the run needs it and it is unset."""
    needed = ("i2t_mapper", "tr_mapper") if opt.generate.use_tr_mapper else ("i2t_mapper",)
    for key in needed:
        if not opt.path[key]:
            hint = " (or set generate.use_tr_mapper: false for the ablation without it)" if key == "tr_mapper" else ""
            raise ValueError(f"path.{key} is required for generation{hint}")


def load_pipeline(opt: Options, device: torch.device, dtype: torch.dtype) -> GuidancePipeline:
    """Models from ``path:``, mappers checked against them, global K/V installed.

    Raises:
        ValueError: naming the mapper file whose word count or widths do not match the
            models or ``network_g``, or an I2T file without global K/V.
    """
    p, net = opt.path, opt.network_g
    use_tr = opt.generate.use_tr_mapper
    check_mapper_paths(opt)
    sd = load_stable_diffusion(p.stable_diffusion, dtype=dtype, device=device)
    image_encoder = load_clip_vision(p.clip_vision, open_clip_model=p.open_clip_model, dtype=dtype, device=device)
    i2t = ImageToTextMapper.for_models(image_encoder, sd.text_encoder, net.num_words, net.hidden_dim)
    global_kv = load_mapper_weights(i2t, p.i2t_mapper)
    if not global_kv:
        raise ValueError(f"{p.i2t_mapper}: holds no global K/V projections; expected a stage-1 (I2T) file")
    install_global_kv(sd.unet)
    load_global_kv(sd.unet, global_kv, source=str(p.i2t_mapper))
    tr = None
    if use_tr:
        residual = is_residual_tr_file(p.tr_mapper)
        tr = TextRestorationMapper.for_models(sd.text_encoder, net.num_words, net.hidden_dim, residual)
        load_mapper_weights(tr, p.tr_mapper)
    else:
        logger.warning("generate.use_tr_mapper is false: the I2T words of the degraded inputs go to SD unrestored")
    for mapper in (i2t, tr) if tr is not None else (i2t,):
        mapper.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return GuidancePipeline(sd, image_encoder, i2t, tr, opt.generate.template, opt.generate.placeholder)


def memory_advice(opt: Options, dtype: torch.dtype) -> tuple[str, list[str], list[str]]:
    """What an out-of-memory error of generation names (``memory.out_of_memory_hint``).

    Args:
        opt: options validated by ``GENERATE_SCHEMA``.
        dtype: the dtype the models run in (``resolve_dtype``).

    Returns:
        (stage, the options setting the batch and image size, the memory options not yet on).
    """
    g = opt.generate
    sizes = [f"generate.batch_size={g.batch_size}", f"generate.resolution={g.resolution}"]
    helps = []
    if dtype == torch.float32:
        helps.append("generate.dtype: bfloat16 (or float16 on a GPU; half the weights and activations)")
    if g.attention != "sdpa":
        helps.append("generate.attention: sdpa (no attention score matrices)")
    if g.batched_cfg:
        helps.append("generate.batched_cfg: false (two UNet calls per step at half the batch; slower)")
    return "stage 3 (guidance generation)", sizes, helps


def _pad_batch(images: torch.Tensor, seeds: list[int], size: int) -> tuple[torch.Tensor, list[int]]:
    """Repeat the last image and seed up to ``size`` rows, so every model call has one shape.

    Args:
        images: (n, 3, S, S) CLIP inputs, n <= size.
        seeds: n seeds.
        size: the batch size to reach.

    Returns:
        (size, 3, S, S) images and ``size`` seeds; the first n rows are the inputs.
    """
    extra = size - len(seeds)
    if extra <= 0:
        return images, seeds
    padding = images[-1:].expand(extra, *images.shape[1:])  # (extra, 3, S, S)
    return torch.cat([images, padding]), seeds + [seeds[-1]] * extra


@torch.no_grad()
def write_guidance(
    pipeline: GuidancePipeline,
    units: Sequence[tuple[Path, Sequence[Path]]],
    opt: Options,
    show_progress: bool,
    pad_batches: bool = True,
) -> list[Path]:
    """Generate each input of ``units`` once, in batches of ``generate.batch_size``, and write it to all its outputs.

    Args:
        pipeline: the loaded guidance pipeline.
        units: ``(input, outputs)`` pairs (``group_by_input``).
        opt: options validated by ``GENERATE_SCHEMA``.
        show_progress: show a tqdm bar (local main process).
        pad_batches: pad the last, short batch to ``generate.batch_size`` so that an
            image's PNG does not depend on how many images were pending (see the module
            docstring); False saves the padded rows' compute.

    Returns:
        The output files written (atomically), in order.
    """
    from tqdm.auto import tqdm

    g = opt.generate
    dataset = GuidanceInputDataset([src for src, _ in units], clip_size=pipeline.image_encoder.config.image_size)
    loader = DataLoader(dataset, batch_size=g.batch_size, shuffle=False, num_workers=0)
    progress = tqdm(total=len(dataset), desc="guidance", disable=not show_progress)
    advice = memory_advice(opt, next(pipeline.sd.unet.parameters()).dtype)
    written, start = [], 0
    for batch in loader:
        count = len(batch["stem"])
        seeds = [seed_from_name(stem, g.seed) for stem in batch["stem"]]
        clip_input = batch["clip_input"]
        if pad_batches:
            clip_input, seeds = _pad_batch(clip_input, seeds, g.batch_size)
        with out_of_memory_hint(*advice), attention_backend(g.attention):
            images = pipeline(
                clip_input,
                seeds,
                num_inference_steps=g.steps,
                guidance_scale=g.guidance_scale,
                resolution=g.resolution,
                batched_cfg=g.batched_cfg,
            )
        for image, (_, outs) in zip(images[:count], units[start : start + count]):
            pixels = tensor_to_image(image)
            for out in outs:
                write_image(out, pixels)
                written.append(Path(out))
        start += count
        progress.update(count)
    progress.close()
    return written


def run_jobs(
    pipeline: GuidancePipeline,
    jobs: Sequence[tuple[Path, Path]],
    opt: Options,
    show_progress: bool,
    pad_batches: bool = False,
) -> int:
    """Generate ``(input, output)`` jobs (``write_guidance`` after ``group_by_input``).

    Args:
        pipeline, opt, show_progress: as ``write_guidance``.
        jobs: ``(input, output)`` pairs.
        pad_batches: as ``write_guidance``, but False by default: a caller with a few
            images (``textualdeg restore``) would otherwise pay for a full batch.

    Returns:
        The number of images written.
    """
    return len(write_guidance(pipeline, group_by_input(jobs), opt, show_progress, pad_batches))


def _per_dataset(counts: Counter, keys: Sequence[str]) -> str:
    """``"a: 3, b: 0"`` in dataset order."""
    return ", ".join(f"{key}: {counts[key]}" for key in keys)


def generate(opt: Options) -> dict[str, Any]:
    """Generate the guidance images of every ``datasets.<key>`` (see the module docstring).

    Args:
        opt: options validated by ``GENERATE_SCHEMA``.

    Returns:
        Counts over all processes' shares as seen by this process: ``pending`` (outputs
        to write at start), ``skipped`` (already there) and ``written`` (by this process),
        and the same three per dataset key under ``datasets``.
    """
    from accelerate import PartialState

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    state = PartialState(cpu=world_size > 1 and not torch.cuda.is_available())
    setup_logging(is_main_process=state.is_main_process)
    g = opt.generate
    if g.batch_size < 1:
        raise ValueError(f"generate.batch_size must be >= 1; got {g.batch_size}")
    check_mapper_paths(opt)
    dtype = resolve_dtype(g.dtype, state.device)
    jobs, skipped = plan_jobs(opt)
    keys = list(opt.datasets)
    pending = Counter(key for key, _, _ in jobs)
    units = group_by_input([(src, out) for _, src, out in jobs])
    state.wait_for_everyone()  # every rank has listed the folders before anything is written
    if state.is_main_process:
        write_manifests(opt, build_manifest(opt, dtype))
        for key in keys:
            logger.info(
                "guidance: datasets.%s: %d images to generate, %d already there (skipped) -> %s",
                key, pending[key], skipped[key], opt.datasets[key].dataroot_ref,
            )
        logger.info(
            "guidance: %d images to write from %d inputs, %d already there (skipped), %d process(es)",
            len(jobs), len(units), sum(skipped.values()), state.num_processes,
        )
    dataset_of = {out.resolve(): key for key, _, out in jobs}
    written = []
    if units:
        pipeline = load_pipeline(opt, state.device, dtype)
        with state.split_between_processes(units) as share:
            written = write_guidance(pipeline, share, opt, show_progress=state.is_local_main_process)
    state.wait_for_everyone()
    written_per = Counter(dataset_of[out.resolve()] for out in written)
    logger.info(
        "guidance: wrote %d images on process %d (%s)",
        len(written), state.process_index, _per_dataset(written_per, keys),
    )
    per_dataset = {key: {"pending": pending[key], "skipped": skipped[key], "written": written_per[key]} for key in keys}
    return {"pending": len(jobs), "skipped": sum(skipped.values()), "written": len(written), "datasets": per_dataset}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``scripts/generate/generate_reference.py -opt FILE [--set k=v ...]``."""
    return generate(parse_options(argv, GENERATE_SCHEMA, "Generate guidance images (stage 3)."))


__all__ = [
    "MANIFEST_NAME",
    "build_manifest",
    "fingerprint",
    "generate",
    "group_by_input",
    "load_pipeline",
    "main",
    "memory_advice",
    "model_fingerprints",
    "plan_jobs",
    "resolve_dtype",
    "run_jobs",
    "write_guidance",
    "write_manifests",
]
