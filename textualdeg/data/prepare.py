"""Dataset preparation: turn downloaded archives into the layout the option files read.

Every public dataset the option files name is described once, as data, in
``DATASETS`` below: where its files sit inside the extracted download, how an input
finds its target, which output split it feeds and how many pairs the real dataset has.
``data_prepare/prepare_<name>.py`` is a thin script that calls :func:`main` with
one name. The layout written is the project convention::

    <output>/<Name>/<split>/input/<stem>.<ext>     degraded image
    <output>/<Name>/<split>/target/<stem>.<ext>    clean image (same stem)

Clean-only sets (for synthetic Gaussian noise) have ``target/`` only. Sets where many
degraded images share one clean image (RESIDE, DDN-Data) get one target per input
stem, as hard links, so stage-4 datasets can pair strictly by stem. Files are hard
linked (or copied with ``--copy``, or when linking fails across file systems), never
re-encoded, except DID-Data whose downloads store input and target side by side in
one JPEG and are split into two PNGs.

``--check`` counts what the output folder holds against the real dataset's counts and
reports every input without a target (and vice versa).

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from textualdeg.log import get_logger, setup_logging

logger = get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
KeyFn = Callable[[Path], str]


class PrepareError(RuntimeError):
    """A downloaded dataset does not have the structure its spec expects."""


def stem(path: Path) -> str:
    """Pairing key: the file name without its extension."""
    return path.stem


def parent_and_stem(path: Path) -> str:
    """Pairing key for sets whose frame names repeat per sequence (GoPro): ``<seq>_<frame>``."""
    return f"{path.parent.parent.name}_{path.stem}"


def prefix_before_underscore(path: Path) -> str:
    """Clean-image key of RESIDE / DDN hazy or rainy names (``1400_3`` -> ``1400``)."""
    return path.stem.split("_")[0]


def _realblur_key(path: Path) -> str:
    """``scene230/blur/blur_1.png`` and ``scene230/gt/gt_1.png`` -> ``scene230_1``."""
    return f"{path.parent.parent.name}_{path.stem.split('_', 1)[1]}"


def _replace(pattern: str, repl: str) -> KeyFn:
    compiled = re.compile(pattern)
    return lambda path: compiled.sub(repl, path.stem)


@dataclass(frozen=True)
class SplitRule:
    """How one output split is found inside the extracted download.

    Args:
        split: output split folder, e.g. ``"train"`` or ``"outdoor/test"``.
        inputs: glob (relative to the source root) of degraded images; ``None`` for
            clean-only sets.
        targets: glob of clean images.
        input_key: maps an input path to its pairing key with a target.
        target_key: maps a target path to the same pairing key.
        output_stem: maps an input path (or target path for clean-only sets) to the
            stem written in the output folders; unique per pair.
        expected: number of pairs (or clean images) in the real dataset.
        side_by_side: inputs are ``[input | target]`` images to be split in halves
            (DID-Data); ``targets`` is then ignored.
        input_folder: name of the output folder for inputs (DPDD uses inputC/L/R).
        mat_key: ``inputs`` / ``targets`` are MATLAB files holding image arrays under
            this variable name (``"<stem>"``: the file's own stem, as SIDD names them);
            each array (one image, or blocks of shape (N, M, H, W, C)) is written as PNG.
        list_file: a text file (relative to the source root) naming the files of this
            split; only inputs whose relative path appears in it are used (RealBlur).
    """

    split: str
    inputs: str | None
    targets: str | None
    expected: int | None = None
    input_key: KeyFn = stem
    target_key: KeyFn = stem
    output_stem: KeyFn = stem
    side_by_side: bool = False
    input_folder: str = "input"
    mat_key: str | None = None
    list_file: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One public dataset: where it comes from, its terms and how to lay it out."""

    name: str
    source: str
    license: str
    rules: tuple[SplitRule, ...]
    note: str = ""
    extra_rules: tuple[SplitRule, ...] = field(default=())


def _glob(root: Path, pattern: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() in suffixes and p.is_file())


def _listed_paths(list_file: Path) -> set[str]:
    if not list_file.is_file():
        raise PrepareError(f"split list {list_file} is missing (it ships with the download)")
    return {token for line in list_file.read_text().splitlines() for token in line.split()}


def plan_pairs(root: Path, rule: SplitRule) -> list[tuple[str, Path | None, Path | None]]:
    """List ``(output_stem, input_path, target_path)`` for one split rule.

    Raises:
        PrepareError: when a glob matches nothing, when an input has no target, or when
            two inputs would be written under the same output stem.
    """
    if rule.inputs is None:  # clean-only set
        targets = _glob(root, rule.targets or "")
        if not targets:
            raise PrepareError(f"{rule.split}: no images match '{rule.targets}' under {root}")
        return [(rule.output_stem(t), None, t) for t in targets]
    inputs = _glob(root, rule.inputs)
    if rule.list_file is not None:
        listed = _listed_paths(root / rule.list_file)
        inputs = [p for p in inputs if p.relative_to(root).as_posix() in listed]
    if not inputs:
        raise PrepareError(f"{rule.split}: no images match '{rule.inputs}' under {root}")
    if rule.side_by_side or rule.targets is None:  # side-by-side pairs, or inputs without ground truth
        return [(rule.output_stem(p), p, None) for p in inputs]
    target_by_key: dict[str, Path] = {}
    for target in _glob(root, rule.targets or ""):
        target_by_key.setdefault(rule.target_key(target), target)
    pairs, missing, seen = [], [], set()
    for path in inputs:
        target = target_by_key.get(rule.input_key(path))
        if target is None:
            missing.append(str(path.relative_to(root)))
            continue
        out_stem = rule.output_stem(path)
        if out_stem in seen:
            raise PrepareError(f"{rule.split}: two inputs map to the output stem '{out_stem}'")
        seen.add(out_stem)
        pairs.append((out_stem, path, target))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise PrepareError(
            f"{rule.split}: {len(missing)} input(s) have no target matching '{rule.targets}': {shown}"
        )
    return pairs


def _place(source: Path, destination: Path, copy: bool) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        destination.unlink()
    if not copy:
        try:
            os.link(source, destination)
            return
        except OSError:
            pass  # another file system: fall back to a copy
    shutil.copy2(source, destination)


def _split_side_by_side(source: Path, input_path: Path, target_path: Path) -> None:
    from textualdeg.imageio import read_image, write_image

    image = read_image(source)  # (H, 2W, 3): [degraded | clean]
    half = image.shape[1] // 2
    write_image(input_path, image[:, :half])
    write_image(target_path, image[:, half : 2 * half])


def _load_mat(path: Path, key: str):
    """Read one array from a MATLAB file (v5 through scipy, v7.3/HDF5 through h5py)."""
    import numpy as np
    import scipy.io

    key = path.stem if key == "<stem>" else key
    try:
        data = scipy.io.loadmat(path, variable_names=[key])
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        try:
            import h5py
        except ImportError as err:
            raise PrepareError(f"{path} is a MATLAB v7.3 file: install h5py to read it") from err
        with h5py.File(path, "r") as handle:
            if key not in handle:
                raise PrepareError(f"{path} has no variable '{key}'; it holds {sorted(handle)}")
            return np.asarray(handle[key]).transpose()  # HDF5 stores MATLAB arrays reversed
    if key not in data:
        raise PrepareError(f"{path} has no variable '{key}'")
    return data[key]


def _write_mat_images(path: Path, key: str, folder: Path, out_stem: str) -> int:
    """Write the image(s) of one MATLAB variable as PNG; returns how many were written."""
    import numpy as np

    from textualdeg.imageio import write_image

    array = _load_mat(path, key)
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    bit_depth = 8 if array.dtype == np.uint8 else 16
    if array.ndim == 3:  # (H, W, C): one image
        write_image(folder / f"{out_stem}.png", array, bit_depth=bit_depth)
        return 1
    blocks = array.reshape(-1, *array.shape[-3:])  # (N*M, H, W, C)
    per_image = array.shape[1] if array.ndim == 5 else 1
    for index, block in enumerate(blocks):
        write_image(folder / f"{index // per_image:04d}_{index % per_image:02d}.png", block, bit_depth=bit_depth)
    return len(blocks)


def _prepare_mat_split(root: Path, split_dir: Path, rule: SplitRule) -> int:
    inputs = _glob(root, rule.inputs or "", (".mat",))
    targets = _glob(root, rule.targets, (".mat",)) if rule.targets else []
    if not inputs:
        raise PrepareError(f"{rule.split}: no MATLAB files match '{rule.inputs}' under {root}")
    assert rule.mat_key is not None
    written = sum(_write_mat_images(p, rule.mat_key, split_dir / rule.input_folder, p.stem) for p in inputs)
    for target in targets:
        _write_mat_images(target, rule.mat_key, split_dir / "target", target.stem)
    return written


def prepare_split(root: Path, out_root: Path, rule: SplitRule, copy: bool = False) -> int:
    """Write one split into ``out_root/<split>/``; returns the number of pairs written."""
    if rule.mat_key is not None:
        count = _prepare_mat_split(root, out_root / rule.split, rule)
        logger.info("%s: %d images from MATLAB files -> %s", rule.split, count, out_root / rule.split)
        return count
    pairs = plan_pairs(root, rule)
    split_dir = out_root / rule.split
    for out_stem, input_path, target_path in pairs:
        if rule.side_by_side:
            assert input_path is not None
            _split_side_by_side(
                input_path,
                split_dir / rule.input_folder / f"{out_stem}.png",
                split_dir / "target" / f"{out_stem}.png",
            )
            continue
        if input_path is not None:
            _place(input_path, split_dir / rule.input_folder / f"{out_stem}{input_path.suffix.lower()}", copy)
        if target_path is not None:
            _place(target_path, split_dir / "target" / f"{out_stem}{target_path.suffix.lower()}", copy)
    logger.info("%s: %d files -> %s", rule.split, len(pairs), split_dir)
    return len(pairs)


def check_split(out_root: Path, rule: SplitRule) -> list[str]:
    """Problems found in a prepared split: counts against the real dataset, unpaired stems."""
    split_dir = out_root / rule.split
    targets = {p.stem for p in _glob(split_dir / "target", "*")}
    problems = []
    if rule.inputs is None:
        count = len(targets)
    elif rule.targets is None and not rule.side_by_side:  # inputs without ground truth (DND)
        count = len(_glob(split_dir / rule.input_folder, "*"))
    else:
        inputs = {p.stem for p in _glob(split_dir / rule.input_folder, "*")}
        count = len(inputs)
        for name in sorted(inputs - targets)[:20]:
            problems.append(f"{rule.split}: input '{name}' has no target")
        for name in sorted(targets - inputs)[:20]:
            problems.append(f"{rule.split}: target '{name}' has no input")
    if count == 0:
        problems.append(f"{rule.split}: {split_dir} holds no images")
    elif rule.expected is not None and count != rule.expected:
        problems.append(f"{rule.split}: {count} images, the real dataset has {rule.expected}")
    return problems


def prepare(spec: DatasetSpec, source: Path, output: Path, copy: bool = False) -> dict[str, int]:
    """Lay out every split of ``spec`` found under ``source``; returns counts per split."""
    source, out_root = Path(source), Path(output) / spec.name
    if not source.is_dir():
        raise PrepareError(f"{spec.name}: source folder {source} does not exist (extract the download first)")
    return {rule.split: prepare_split(source, out_root, rule, copy) for rule in spec.rules}


def check(spec: DatasetSpec, output: Path) -> list[str]:
    """All problems of a prepared dataset (empty list when it matches the real one)."""
    out_root = Path(output) / spec.name
    return [problem for rule in spec.rules for problem in check_split(out_root, rule)]


def main(name: str, argv: Sequence[str] | None = None) -> int:
    """Command line of ``data_prepare/prepare_<name>.py``; returns the exit status."""
    spec = DATASETS[name]
    parser = argparse.ArgumentParser(
        description=f"Prepare {spec.name}. Source: {spec.source}. License: {spec.license}"
    )
    parser.add_argument("--source", type=Path, help="folder holding the extracted download")
    parser.add_argument("--output", type=Path, default=Path("datasets"), help="root of the prepared datasets")
    parser.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
    parser.add_argument("--check", action="store_true", help="only count and verify the prepared output")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.check:
        if args.source is None:
            parser.error("--source is required unless --check is given")
        try:
            prepare(spec, args.source, args.output, copy=args.copy)
        except PrepareError as err:
            logger.error("%s", err)
            return 2
    problems = check(spec, args.output)
    for problem in problems:
        logger.warning("%s", problem)
    logger.info("%s: %s", spec.name, "OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


_RESEARCH_ONLY = "research and non-commercial use only, per the dataset page; not redistributable here"

DATASETS: dict[str, DatasetSpec] = {
    "GoPro": DatasetSpec(
        "GoPro",
        "Nah et al., CVPR 2017, 'Deep Multi-scale CNN for Dynamic Scene Deblurring' (GOPRO_Large.zip)",
        "CC BY 4.0",
        (
            SplitRule("train", "GOPRO_Large/train/*/blur/*.png", "GOPRO_Large/train/*/sharp/*.png", 2103,
                      parent_and_stem, parent_and_stem, parent_and_stem),
            SplitRule("test", "GOPRO_Large/test/*/blur/*.png", "GOPRO_Large/test/*/sharp/*.png", 1111,
                      parent_and_stem, parent_and_stem, parent_and_stem),
        ),
        note="Uses 'blur' (not 'blur_gamma'), as Restormer, NAFNet and the authors do.",
    ),
    "HIDE": DatasetSpec(
        "HIDE",
        "Shen et al., ICCV 2019, 'Human-Aware Motion Deblurring' (HIDE_dataset)",
        _RESEARCH_ONLY,
        (SplitRule("test", "HIDE_dataset/test/*/*.png", "HIDE_dataset/GT/*.png", 2025),),
        note="Test only: models are trained on GoPro.",
    ),
    "RealBlur_J": DatasetSpec(
        "RealBlur_J",
        "Rim et al., ECCV 2020, 'Real-World Blur Dataset for Learning and Benchmarking Deblurring Algorithms'",
        _RESEARCH_ONLY,
        tuple(
            SplitRule(split, "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/*/blur/blur_*.png", "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/*/gt/gt_*.png", count,
                      _realblur_key, _realblur_key, _realblur_key, list_file=f"RealBlur_J_{split}_list.txt")
            for split, count in (("train", 3758), ("test", 980))
        ),
        note="Splits follow the RealBlur_J_train_list.txt / RealBlur_J_test_list.txt files of the download.",
    ),
    "RealBlur_R": DatasetSpec(
        "RealBlur_R",
        "Rim et al., ECCV 2020, 'Real-World Blur Dataset for Learning and Benchmarking Deblurring Algorithms'",
        _RESEARCH_ONLY,
        tuple(
            SplitRule(split, "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref/*/blur/blur_*.png", "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref/*/gt/gt_*.png", count,
                      _realblur_key, _realblur_key, _realblur_key, list_file=f"RealBlur_R_{split}_list.txt")
            for split, count in (("train", 3758), ("test", 980))
        ),
        note="Splits follow the RealBlur_R_train_list.txt / RealBlur_R_test_list.txt files of the download.",
    ),
    "SIDD": DatasetSpec(
        "SIDD",
        "Abdelhamed et al., CVPR 2018, 'A High-Quality Denoising Dataset for Smartphone Cameras' (SIDD-Medium sRGB)",
        _RESEARCH_ONLY,
        (SplitRule("train", "SIDD_Medium_Srgb/Data/*/NOISY_SRGB_*.PNG", "SIDD_Medium_Srgb/Data/*/GT_SRGB_*.PNG", 320,
                   lambda p: f"{p.parent.name}_{p.stem.split('_')[-1]}",
                   lambda p: f"{p.parent.name}_{p.stem.split('_')[-1]}",
                   lambda p: f"{p.parent.name}_{p.stem.split('_')[-1]}"),
         SplitRule("val", "ValidationNoisyBlocksSrgb.mat", "ValidationGtBlocksSrgb.mat", 1280, mat_key="<stem>")),
        note="Validation: the 1,280 256x256 blocks of ValidationNoisyBlocksSrgb.mat / ValidationGtBlocksSrgb.mat "
             "(40 images x 32 blocks), written as <image>_<block>.png.",
    ),
    "DND": DatasetSpec(
        "DND",
        "Plotz and Roth, CVPR 2017, 'Benchmarking Denoising Algorithms with Real Photographs'",
        "research use; results are submitted to the online benchmark (no public ground truth)",
        (SplitRule("test", "dnd_2017/images_srgb/*.mat", None, 50, mat_key="InoisySRGB"),),
        note="No ground truth: the prepared 16-bit PNGs are inputs for the online submission. The .mat "
             "files are MATLAB v7.3 (HDF5): reading them needs h5py (pip install h5py).",
    ),
    "BSD400": DatasetSpec(
        "BSD400", "Martin et al., ICCV 2001 (Berkeley Segmentation Dataset, 400 training images, gray)",
        "research use per the BSDS page", (SplitRule("train", None, "BSD400/*.png", 400),)),
    "WED": DatasetSpec(
        "WED", "Ma et al., TIP 2017, 'Waterloo Exploration Database' (pristine_images)",
        "research use per the database page", (SplitRule("train", None, "exploration_database_and_code/pristine_images/*.bmp", 4744),)),
    "CBSD68": DatasetSpec(
        "CBSD68", "Martin et al., ICCV 2001 (68 test images of BSDS300, colour)",
        "research use per the BSDS page", (SplitRule("test", None, "CBSD68/original_png/*.png", 68),)),
    "Kodak24": DatasetSpec(
        "Kodak24", "Kodak Lossless True Color Image Suite (kodim01-24)",
        "free for research use, as distributed by Kodak", (SplitRule("test", None, "Kodak24/kodim*.png", 24),)),
    "McMaster": DatasetSpec(
        "McMaster", "Zhang et al., JEI 2011 (McMaster colour demosaicking set, 18 images)",
        "research use", (SplitRule("test", None, "McMaster/*.tif", 18),)),
    "Urban100": DatasetSpec(
        "Urban100", "Huang et al., CVPR 2015, 'Single Image Super-Resolution from Transformed Self-Exemplars' (HR images)",
        "research use", (SplitRule("test", None, "Urban100/image_SRF_4/img_*_SRF_4_HR.png", 100,
                                   output_stem=_replace(r"_SRF_4_HR$", "")),)),
    "Set12": DatasetSpec(
        "Set12", "Zhang et al., TIP 2017 (DnCNN's 12 gray test images)",
        "research use", (SplitRule("test", None, "Set12/*.png", 12),)),
    "Rain13K": DatasetSpec(
        "Rain13K", "Zamir et al., CVPR 2021 (MPRNet's merged deraining train set: Rain14000, Rain1800, Rain800, Rain12)",
        "research use; union of sets with their own terms",
        (SplitRule("train", "train/Rain13K/input/*", "train/Rain13K/target/*", 13712),)),
    "Rain100L": DatasetSpec(
        "Rain100L", "Yang et al., CVPR 2017, 'Deep Joint Rain Detection and Removal from a Single Image'",
        "research use",
        (SplitRule("test", "test/Rain100L/input/*", "test/Rain100L/target/*", 100),
         SplitRule("train", "Train/Derain/rainy/rain-*.png", "Train/Derain/gt/norain-*.png", 200,
                   lambda p: p.stem.replace("rain-", ""), lambda p: p.stem.replace("norain-", "")),),
        note="test: from the Restormer/MPRNet test.zip; train: PromptIR's Train/Derain (rainy/rain-N, gt/norain-N).",
    ),
    "Rain100H": DatasetSpec(
        "Rain100H", "Yang et al., CVPR 2017 (heavy rain test set)", "research use",
        (SplitRule("test", "test/Rain100H/input/*", "test/Rain100H/target/*", 100),)),
    "Rain200L": DatasetSpec(
        "Rain200L", "Yang et al., CVPR 2017 / TPAMI 2019 (RainTrainL / Rain200L as DRSformer distributes it)", "research use",
        (SplitRule("train", "rain200L/train/rain/*.png", "rain200L/train/norain/*.png", 1800, _replace(r"x2$", "")),
         SplitRule("test", "rain200L/test/rain/*.png", "rain200L/test/norain/*.png", 200, _replace(r"x2$", "")))),
    "Rain200H": DatasetSpec(
        "Rain200H", "Yang et al., CVPR 2017 / TPAMI 2019 (RainTrainH / Rain200H as DRSformer distributes it)", "research use",
        (SplitRule("train", "rain200H/train/rain/*.png", "rain200H/train/norain/*.png", 1800, _replace(r"x2$", "")),
         SplitRule("test", "rain200H/test/rain/*.png", "rain200H/test/norain/*.png", 200, _replace(r"x2$", "")))),
    "DID-Data": DatasetSpec(
        "DID-Data", "Zhang and Patel, CVPR 2018, 'Density-aware Single Image De-raining using a Multi-stream Dense Network'",
        "research use",
        (SplitRule("train", "DID-MDN-training/Rain_*/train2018new/*.jpg", None, 12000, side_by_side=True,
                   output_stem=lambda p: f"{p.parent.parent.name}_{p.stem}"),
         SplitRule("test", "DID-MDN-test/*.jpg", None, 1200, side_by_side=True)),
        note="Each JPEG holds [rainy | clean] side by side; they are split into input/ and target/ PNGs.",
    ),
    "DDN-Data": DatasetSpec(
        "DDN-Data", "Fu et al., CVPR 2017, 'Removing Rain from Single Images via a Deep Detail Network' (Rain14000)",
        "research use",
        (SplitRule("train", "DDN-Data/train/rainy_image/*.jpg", "DDN-Data/train/ground_truth/*.jpg", 12600,
                   prefix_before_underscore, stem),
         SplitRule("test", "DDN-Data/test/rainy_image/*.jpg", "DDN-Data/test/ground_truth/*.jpg", 1400,
                   prefix_before_underscore, stem)),
        note="14 rainy images per clean image; targets are hard-linked once per rainy stem.",
    ),
    "RESIDE_ITS": DatasetSpec(
        "ITS", "Li et al., TIP 2019, 'Benchmarking Single-Image Dehazing and Beyond' (RESIDE Indoor Training Set)",
        _RESEARCH_ONLY,
        (SplitRule("train", "ITS/hazy/*.png", "ITS/clear/*.png", 13990, prefix_before_underscore, stem),)),
    "RESIDE_OTS": DatasetSpec(
        "OTS", "Li et al., TIP 2019 (RESIDE Outdoor Training Set)", _RESEARCH_ONLY,
        (SplitRule("train", "OTS/hazy/*.jpg", "OTS/clear/*", 72135, prefix_before_underscore, stem),),
        note="Some all-in-one papers subsample OTS (DSRIR 5,000; InstructIR 2,000): say which.",
    ),
    "RESIDE_SOTS": DatasetSpec(
        "SOTS", "Li et al., TIP 2019 (RESIDE Synthetic Objective Testing Set)", _RESEARCH_ONLY,
        (SplitRule("indoor/test", "SOTS/indoor/hazy/*.png", "SOTS/indoor/gt/*.png", 500, prefix_before_underscore, stem),
         SplitRule("outdoor/test", "SOTS/outdoor/hazy/*.jpg", "SOTS/outdoor/gt/*.png", 500, prefix_before_underscore, stem)),
    ),
    "DPDD": DatasetSpec(
        "DPDD", "Abuolaim and Brown, ECCV 2020, 'Defocus Deblurring Using Dual-Pixel Data' (dd_dp_dataset_png, 16-bit)",
        "research use per the dataset page",
        tuple(
            SplitRule(split, f"dd_dp_dataset_png/{split}_{side}/source/*.png",
                      f"dd_dp_dataset_png/{split}_c/target/*.png", count, input_folder=f"input{side.upper()}")
            for split, count in (("train", 350), ("val", 74), ("test", 76))
            for side in ("c", "l", "r")
        ),
        note="inputC is the combined (single-image) view, inputL/inputR the dual-pixel views.",
    ),
}
