"""Pairing LQ / GT / guidance files by stem (pairing only: the files are never read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from textualdeg.data.pairing import ImageTriple, format_unmatched, match_ref, pair_folders


def _touch(folder: Path, *names: str) -> Path:
    """Empty files ``names`` in ``folder`` (pairing looks at names only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


def test_guidance_is_found_by_lq_stem_then_by_gt_stem(tmp_path):
    gt = _touch(tmp_path / "gt", "a.png", "b.png")
    lq = _touch(tmp_path / "lq", "ax2.png", "bx2.png")
    ref = _touch(tmp_path / "ref", "ax2.jpg", "b.jpg")  # one named after the LQ, one after the GT
    triples = pair_folders(gt, lq, ref, filename_tmpl="{}x2")
    assert triples == [ImageTriple(lq / "ax2.png", gt / "a.png", ref / "ax2.jpg"),
                       ImageTriple(lq / "bx2.png", gt / "b.png", ref / "b.jpg")]
    assert match_ref([(None, gt / "a.png")], ref) == ([ImageTriple(None, gt / "a.png", None)], ["a.png"])


def test_many_lq_per_gt_and_meta_info_restrict_the_pairs(tmp_path):
    gt = _touch(tmp_path / "gt", "0001.png", "0002.png")
    lq = _touch(tmp_path / "lq", "0001_0.8_0.2.jpg", "0001_0.9_0.1.jpg", "0002_0.7_0.3.jpg")
    triples = pair_folders(gt, lq, gt_stem_separator="_")
    assert [(t.lq.name, t.gt.name) for t in triples] == [
        ("0001_0.8_0.2.jpg", "0001.png"), ("0001_0.9_0.1.jpg", "0001.png"), ("0002_0.7_0.3.jpg", "0002.png")]
    meta = tmp_path / "meta_info.txt"
    meta.write_text("0001_0.9_0.1.jpg (10,10,3)\n\n")
    assert [t.lq.name for t in pair_folders(gt, lq, gt_stem_separator="_", meta_info_file=meta)] == [
        "0001_0.9_0.1.jpg"]


def test_unmatched_report_counts_everything_and_lists_the_first_names(tmp_path):
    names = [f"{i:03d}.png" for i in range(25)]
    line = format_unmatched("LQ files without GT", names)
    assert line.startswith("  LQ files without GT (25): 000.png, ") and line.endswith("019.png, ... (25 in all)")
    with pytest.raises(ValueError, match="no images found"):
        pair_folders(_touch(tmp_path / "gt"), _touch(tmp_path / "lq"))
