"""Task mixtures for all-in-one training: the 3-task denoise / derain / dehaze setting.

``MixtureDataset`` draws, for every index, a task with the given sampling ratios and an
item of that task, both from a Generator seeded by (seed, epoch, index): the mixture is
a pure function of the index, so DDP shards and resumed runs see the same samples.
``AllInOneRefDataset`` builds the authors' ``Dataset_PairedUnifiedWithRef`` (YAML 001)
from folders: Gaussian denoising at sigma 15, 25 and 50 from clean images (BSD400 + WED),
deraining pairs (Rain100L) and dehazing pairs (RESIDE OTS, many hazy images per clear
one), each with its guidance folder; the authors draw one of the five choices uniformly
(the default here) and PromptIR weights them by its repeated file lists (set
``task_ratios``). Items carry a ``task`` string (``denoise_15``, ``derain``, ...).

The authors' version matches files by position in sorted globs and reads the guidance
from the consumed LQ file handle (D29 in docs/official_differences.md); here every task
uses the stem-matched datasets.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from textualdeg.data.noise import GaussianDenoisingRefDataset
from textualdeg.data.paired import PairedImageRefDataset
from textualdeg.data.transforms import make_rng
from textualdeg.log import get_logger
from textualdeg.registry import DATASET_REGISTRY

logger = get_logger(__name__)


class MixtureDataset(Dataset):
    """Sample from several datasets with fixed ratios, deterministically per index.

    Args:
        datasets (Sequence[Dataset]): components; each must offer ``load(index, rng)``,
            ``__len__`` and ``set_epoch`` (the datasets of ``textualdeg.data`` do).
        names (Sequence[str]): one task name per component (the items' ``task`` key).
        ratios (Sequence[float] | None): sampling weights (normalised; default equal).
        length (int | None): items per epoch (default: the sum of the component lengths).
        seed (int): base seed; item ``i`` of epoch ``e`` depends on (seed, e, i) only.
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        names: Sequence[str],
        ratios: Sequence[float] | None = None,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not datasets:
            raise ValueError("datasets must not be empty")
        if len(names) != len(datasets):
            raise ValueError(f"names has {len(names)} entries for {len(datasets)} datasets")
        ratios = [1.0] * len(datasets) if ratios is None else [float(r) for r in ratios]
        if len(ratios) != len(datasets):
            raise ValueError(f"ratios={ratios} must have one entry per task {list(names)}")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"ratios must be >= 0 with a positive sum, got {ratios}")
        if length is not None and length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.datasets = list(datasets)
        self.names = list(names)
        self.probabilities = np.asarray(ratios, dtype=np.float64) / sum(ratios)
        self._cumulative = np.cumsum(self.probabilities)
        self.length = int(length) if length is not None else sum(len(d) for d in self.datasets)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch for this mixture and every component."""
        self.epoch = int(epoch)
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def _draw_task(self, rng: np.random.Generator) -> int:
        task = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        return min(task, len(self.datasets) - 1)  # guards against cumsum rounding just below 1

    def task_of(self, index: int) -> str:
        """The task that item ``index`` of the current epoch is drawn from."""
        return self.names[self._draw_task(make_rng(self.seed, self.epoch, index))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = make_rng(self.seed, self.epoch, index)
        task = self._draw_task(rng)
        dataset = self.datasets[task]
        item = dataset.load(int(rng.integers(len(dataset))), rng)
        item["task"] = self.names[task]
        return item


_SUBFOLDERS = {"lq": ("lq", "input"), "gt": ("gt", "hq", "target"), "ref": ("ref", "guidance")}


def _subfolder(root: Path, role: str) -> str | None:
    """The first existing conventional subfolder of ``root`` for ``role`` (lq, gt, ref)."""
    for name in _SUBFOLDERS[role]:
        if (root / name).is_dir():
            return str(root / name)
    return None


def _task_roots(value: str | Sequence[str] | None, roles: tuple[str, ...], key: str) -> dict[str, str | None]:
    """Resolve the authors' ``<task>_root`` key: a folder with lq/gt/ref subfolders, or a list.

    A list gives the folders in the order of ``roles`` (the guidance last and optional);
    for dehazing a leading ``meta_info`` file is also accepted.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        root = Path(value)
        if not root.is_dir():
            raise ValueError(f"{key}={value!r} is not a folder")
        found = {role: _subfolder(root, role) for role in (*roles, "ref")}
        missing = [role for role in roles if found[role] is None]
        if missing:
            raise ValueError(f"{key}={value!r} has no {missing} subfolder (looked for "
                             f"{[_SUBFOLDERS[r] for r in missing]})")
        return found
    items = [str(v) for v in value]
    out: dict[str, str | None] = {}
    if key == "dehaze_root" and len(items) == len(roles) + 2:
        out["meta_info_file"] = items.pop(0)
    if len(items) not in (len(roles), len(roles) + 1):
        raise ValueError(f"{key} must list {list(roles)} and optionally the guidance folder, got {items}")
    out.update(zip((*roles, "ref"), items))
    out.setdefault("ref", None)
    return out


def _parse_tasks(tasks: Sequence[str]) -> list[tuple[str, tuple[float, ...] | None]]:
    """``denoise_<sigma>``, ``denoise_<low>-<high>`` (blind), ``derain``, ``dehaze`` -> (kind, sigmas)."""
    parsed = []
    for task in tasks:
        if task in ("derain", "dehaze"):
            parsed.append((task, None))
        elif task.startswith("denoise_"):
            try:
                sigmas = tuple(float(v) for v in task[len("denoise_"):].split("-"))
            except ValueError:
                sigmas = ()
            if len(sigmas) not in (1, 2) or (len(sigmas) == 2 and sigmas[0] > sigmas[1]):
                raise ValueError(f"tasks: {task!r} needs a sigma (denoise_25) or a range low-high (denoise_0-55) "
                                 f"after 'denoise_'")
            parsed.append(("denoise", sigmas))
        else:
            raise ValueError(f"tasks: unknown task {task!r}; expected denoise_<sigma>, denoise_<low>-<high>, "
                             f"derain or dehaze")
    return parsed


@DATASET_REGISTRY.register()
class AllInOneRefDataset(MixtureDataset):
    """The 3-task all-in-one mixture with guidance (Dataset_PairedUnifiedWithRef).

    Each task's folders come from the explicit ``dataroot_<task>_<role>`` keys or from the
    authors' ``<task>_root`` keys: a folder holding ``lq/`` (or ``input/``), ``gt/`` (or
    ``hq/``, ``target/``) and ``ref/`` (or ``guidance/``), or a list of folders
    (denoise: [gt, ref]; derain: [lq, gt, ref]; dehaze: [lq, gt, ref] or
    [meta_info, lq, gt, ref]; the guidance is optional). The tasks are ``tasks`` if given,
    else ``denoise_<sigma>`` for each of ``sigmas`` (when denoising data is given),
    ``derain`` and ``dehaze`` (when theirs is).

    Args:
        dataroot_denoise_gt (str | None): clean images for on-the-fly noise.
        dataroot_denoise_ref (str | None): their guidance images.
        dataroot_derain_lq (str | None): rainy images.
        dataroot_derain_gt (str | None): their clean images.
        dataroot_derain_ref (str | None): their guidance images.
        dataroot_dehaze_lq (str | None): hazy images (``<clear stem>_<...>``).
        dataroot_dehaze_gt (str | None): clear images.
        dataroot_dehaze_ref (str | None): guidance images (hazy or clear stem).
        denoise_root (str | Sequence[str] | None): the authors' key (see above).
        derain_root (str | Sequence[str] | None): the authors' key.
        dehaze_root (str | Sequence[str] | None): the authors' key.
        tasks (Sequence[str] | None): task names in order, e.g. ``("denoise_15",
            "denoise_25", "denoise_50", "derain", "dehaze")``; ``denoise_0-55`` is blind
            denoising, sigma uniform in [0, 55] per image (DSRIR's recipe).
        sigmas (Sequence[float]): noise levels when ``tasks`` is not given.
        task_ratios (Sequence[float] | None): one weight per task (default equal, as the
            authors' uniform choice among five).
        dataset_length (int | None): items per epoch (default: number of clean denoise
            images + derain pairs + dehaze pairs, as the authors).
        derain_filename_tmpl (str): rainy stem = template.format(clean stem).
        dehaze_gt_stem_separator (str): hazy stem up to this separator = clear stem.
        dehaze_meta_info_file (str | None): restrict the hazy images to this list.
        clip_noise (bool): clip the noisy images to [0, 1].
        seed (int): base seed.
        name (str): name in logs; the components are named ``<name>/<task>``.
        **kwargs: shared options for every component (``phase``, ``gt_size``,
            ``use_hflip``, ``use_rot``, ``ref_crop``, ``dino_window``, ...).
    """

    def __init__(
        self,
        dataroot_denoise_gt: str | None = None,
        dataroot_denoise_ref: str | None = None,
        dataroot_derain_lq: str | None = None,
        dataroot_derain_gt: str | None = None,
        dataroot_derain_ref: str | None = None,
        dataroot_dehaze_lq: str | None = None,
        dataroot_dehaze_gt: str | None = None,
        dataroot_dehaze_ref: str | None = None,
        denoise_root: str | Sequence[str] | None = None,
        derain_root: str | Sequence[str] | None = None,
        dehaze_root: str | Sequence[str] | None = None,
        tasks: Sequence[str] | None = None,
        sigmas: Sequence[float] = (15.0, 25.0, 50.0),
        task_ratios: Sequence[float] | None = None,
        dataset_length: int | None = None,
        derain_filename_tmpl: str = "{}",
        dehaze_gt_stem_separator: str = "_",
        dehaze_meta_info_file: str | None = None,
        clip_noise: bool = False,
        seed: int = 0,
        name: str = "all_in_one",
        **kwargs: Any,
    ) -> None:
        denoise = _task_roots(denoise_root, ("gt",), "denoise_root")
        derain = _task_roots(derain_root, ("lq", "gt"), "derain_root")
        dehaze = _task_roots(dehaze_root, ("lq", "gt"), "dehaze_root")
        explicit = (
            (denoise, "gt", dataroot_denoise_gt), (denoise, "ref", dataroot_denoise_ref),
            (derain, "lq", dataroot_derain_lq), (derain, "gt", dataroot_derain_gt),
            (derain, "ref", dataroot_derain_ref), (dehaze, "lq", dataroot_dehaze_lq),
            (dehaze, "gt", dataroot_dehaze_gt), (dehaze, "ref", dataroot_dehaze_ref),
        )
        for roots, role, value in explicit:
            if value is not None:
                roots[role] = value
        if dehaze_meta_info_file is not None:
            dehaze["meta_info_file"] = dehaze_meta_info_file
        if tasks is None:
            tasks = [f"denoise_{s:g}" for s in sigmas] if denoise.get("gt") else []
            tasks += [t for t, roots in (("derain", derain), ("dehaze", dehaze)) if roots.get("lq") or roots.get("gt")]
        if not tasks:
            raise ValueError("AllInOneRefDataset needs at least one task: give denoise/derain/dehaze folders "
                             "(dataroot_<task>_<role> or <task>_root)")
        if task_ratios is not None and len(task_ratios) != len(tasks):
            raise ValueError(f"task_ratios={list(task_ratios)} needs one weight per task {list(tasks)}")
        datasets, names, unique = [], [], 0
        for task, (kind, sigma) in zip(tasks, _parse_tasks(tasks)):
            roots = {"denoise": denoise, "derain": derain, "dehaze": dehaze}[kind]
            needed = ("gt",) if kind == "denoise" else ("lq", "gt")
            missing = [role for role in needed if not roots.get(role)]
            if missing:
                raise ValueError(f"task {task!r} needs its {missing} folder(s): set dataroot_{kind}_<role> "
                                 f"or {kind}_root")
            if kind == "denoise":
                # one sigma, or blind: uniform in [low, high] per image (DSRIR's sigma 0-55)
                dataset = GaussianDenoisingRefDataset(
                    dataroot_gt=roots["gt"], dataroot_ref=roots.get("ref"),
                    sigma_type="constant" if len(sigma) == 1 else "random", sigma_range=sigma,
                    sigma_test=sum(sigma) / len(sigma), clip_noise=clip_noise, seed=seed,
                    name=f"{name}/{task}", **kwargs)
                if not any(n.startswith("denoise_") for n in names):
                    unique += len(dataset)
            else:
                dataset = PairedImageRefDataset(
                    dataroot_gt=roots["gt"], dataroot_lq=roots["lq"], dataroot_ref=roots.get("ref"),
                    filename_tmpl=derain_filename_tmpl if kind == "derain" else "{}",
                    gt_stem_separator=dehaze_gt_stem_separator if kind == "dehaze" else None,
                    meta_info_file=roots.get("meta_info_file") if kind == "dehaze" else None,
                    seed=seed, name=f"{name}/{task}", **kwargs)
                unique += len(dataset)
            datasets.append(dataset)
            names.append(task)
        super().__init__(datasets, names, ratios=task_ratios, length=dataset_length or unique, seed=seed)
        logger.info("%s: %s", name, ", ".join(
            f"{n} ({len(d)} items, p={p:.3f})" for n, d, p in zip(names, datasets, self.probabilities)))


DATASET_REGISTRY.register(AllInOneRefDataset, name="Dataset_PairedUnifiedWithRef")


__all__ = ["AllInOneRefDataset", "MixtureDataset"]
