"""Matching LQ, GT and guidance files by file stem, with one report of every unmatched file.

Fixes the authors' pairing defects (IDs as in docs/official_differences.md):

- files are matched by stem, never by position or sorted order (D32, D45); every
  unmatched file is listed in one error. ``filename_tmpl`` maps a GT stem to its LQ stem
  (``"{}x2"`` for Rain200H's ``norain-1x2``), ``gt_stem_separator`` maps many LQ images
  to one GT (RESIDE ``0001_0.8_0.2.jpg`` -> ``0001``) with extensions kept (D30);
- the guidance image is found by the LQ stem (the generator names its outputs after the
  LQ file), falling back to the GT stem.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from textualdeg.imageio import list_images

__all__ = [
    "ImageTriple",
    "format_unmatched",
    "match_ref",
    "pair_folders",
]

_MAX_LISTED = 20


@dataclass(frozen=True)
class ImageTriple:
    """Paths of one training item: LQ (None when made on the fly), GT and guidance."""

    lq: Path | None
    gt: Path
    ref: Path | None


def _by_stem(paths: Iterable[Path], folder: str | Path, role: str) -> dict[str, Path]:
    """Map stem -> path; ValueError if two files in a folder share a stem (a.png, a.jpg)."""
    table: dict[str, Path] = {}
    clashes = []
    for path in paths:
        if path.stem in table:
            clashes.append(f"{table[path.stem].name} / {path.name}")
        table[path.stem] = path
    if clashes:
        raise ValueError(f"{role} folder {folder} has files sharing a stem: {', '.join(clashes[:_MAX_LISTED])}")
    return table


def format_unmatched(title: str, names: Sequence[str]) -> str:
    """One line of an unmatched-files report (first names and the count)."""
    shown = ", ".join(names[:_MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")
    return f"  {title} ({len(names)}): {shown}"


def _read_meta_info(meta_info_file: str | Path) -> set[str]:
    """Stems listed in a BasicSR/authors ``meta_info`` file (first token of each line)."""
    names = set()
    for line in Path(meta_info_file).read_text().splitlines():
        if line.strip():
            names.add(Path(line.split()[0]).stem)
    return names


def match_ref(
    triples: Sequence[tuple[Path | None, Path]],
    dataroot_ref: str | Path | None,
) -> tuple[list[ImageTriple], list[str]]:
    """Attach the guidance image to each (lq, gt): by LQ stem, else by GT stem.

    Returns:
        The triples, and the names of the items that have no guidance image.
    """
    if dataroot_ref is None:
        return [ImageTriple(lq, gt, None) for lq, gt in triples], []
    refs = _by_stem(list_images(dataroot_ref), dataroot_ref, "guidance")
    out, missing = [], []
    for lq, gt in triples:
        ref = (refs.get(lq.stem) if lq is not None else None) or refs.get(gt.stem)
        if ref is None:
            missing.append((lq or gt).name)
        out.append(ImageTriple(lq, gt, ref))
    return out, missing


def pair_folders(
    dataroot_gt: str | Path,
    dataroot_lq: str | Path,
    dataroot_ref: str | Path | None = None,
    filename_tmpl: str = "{}",
    gt_stem_separator: str | None = None,
    meta_info_file: str | Path | None = None,
) -> list[ImageTriple]:
    """Match LQ, GT and guidance files by stem.

    Args:
        dataroot_gt: folder of ground-truth images.
        dataroot_lq: folder of degraded images.
        dataroot_ref: folder of guidance images, or None.
        filename_tmpl: LQ stem = ``filename_tmpl.format(GT stem)`` (BasicSR's key).
        gt_stem_separator: if set, GT stem = LQ stem up to the first separator and
            many LQ files may share one GT (dehazing); GT files without LQ are allowed.
        meta_info_file: if set, only the LQ stems listed there are used.

    Returns:
        Triples sorted by LQ path.

    Raises:
        ValueError: listing every LQ without GT, GT without LQ (one-to-one mode) and LQ
            without guidance, with the folders searched.
    """
    if "{}" not in filename_tmpl:
        raise ValueError(f"filename_tmpl must contain '{{}}', got {filename_tmpl!r}")
    gts = _by_stem(list_images(dataroot_gt), dataroot_gt, "GT")
    lqs = list_images(dataroot_lq)
    if meta_info_file is not None:
        wanted = _read_meta_info(meta_info_file)
        lqs = [p for p in lqs if p.stem in wanted]
    _by_stem(lqs, dataroot_lq, "LQ")
    if gt_stem_separator is not None:
        gt_of = {p.stem: p.stem.split(gt_stem_separator)[0] for p in lqs}
    else:
        lq_to_gt = {filename_tmpl.format(stem): stem for stem in gts}
        gt_of = {p.stem: lq_to_gt.get(p.stem) for p in lqs}
    pairs, lq_alone = [], []
    for lq in lqs:
        gt_stem = gt_of[lq.stem]
        if gt_stem is None or gt_stem not in gts:
            lq_alone.append(lq.name)
        else:
            pairs.append((lq, gts[gt_stem]))
    used = {gt.stem for _, gt in pairs}
    gt_alone = [] if gt_stem_separator is not None else [p.name for s, p in sorted(gts.items()) if s not in used]
    triples, ref_missing = match_ref(pairs, dataroot_ref)
    problems = []
    if lq_alone:
        problems.append(format_unmatched(f"LQ files in {dataroot_lq} without a GT file in {dataroot_gt}", lq_alone))
    if gt_alone:
        problems.append(format_unmatched(f"GT files in {dataroot_gt} without an LQ file in {dataroot_lq}", gt_alone))
    if ref_missing:
        problems.append(format_unmatched(f"LQ files without a guidance image (same stem) in {dataroot_ref}", ref_missing))
    if problems:
        hint = f" (LQ stem = filename_tmpl.format(GT stem), filename_tmpl={filename_tmpl!r})"
        raise ValueError("unmatched files" + hint + ":\n" + "\n".join(problems))
    if not triples:
        raise ValueError(f"no images found in {dataroot_lq} / {dataroot_gt}")
    return triples
