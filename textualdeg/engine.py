"""The training engine every stage uses: experiment folder, accelerator, trackers, resume, step loop.

A stage (``textualdeg.guidance.train``, ``textualdeg.restoration.train``) builds its models,
optimizer, schedule and data, and supplies two functions: its training step (one
micro-batch: forward, backward, optimizer step; returns its losses) and its validation
(called on every process, so that a stage can shard its images; the records the main
process returns become lines of ``logs/val_metrics.jsonl``). The engine does the rest, in
the diffusers order::

    with Run.open(opt, log_with=...) as run:       # folder, accelerator, lock, logging, seed
        ... build, accelerator.prepare, "Running training" block ...
        run.begin(tracker_name, keep_last=...)     # trackers (config = the options), resume
        run.loop(loader, scheduler, step_fn, Schedule(...), validate=...)
        ... final weights ...

``Run.loop`` runs epochs of micro-batches (skipping those a resumed state consumed),
steps the lr schedule once per optimizer step, shows tqdm on the local main process,
logs mean losses every ``log_every`` steps, saves the full state every ``save_every``
steps (and at the end), and validates every ``validate_every`` steps.

Process-group timeout: every collective (``wait_for_everyone``, gathers, DDP) gives up after
``train.process_group_timeout_min`` minutes (default 120; NCCL's own default is 10), so a
long validation or checkpoint write does not kill the processes waiting for it.

Validation after a kill: a state saved at a step whose validation is due records that in
its marker; a run resumed from it validates first when ``logs/val_metrics.jsonl`` holds no
record of that step, so a kill between the save and the end of the validation loses nothing.

The run folder (``textualdeg.experiment``): ``run.lock`` refuses a second run on the same
folder; ``starts.jsonl`` and ``starts/options_<n>.yml`` record every (re)start with its
options, the state it resumed and why; auto-resume follows the lineage of the newest start.

Part of textualdeg, a reimplementation of "Improving Image Restoration through Removing
Degradations in Textual Representations" (Lin et al., CVPR 2024, arXiv:2312.17334).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from textualdeg.checkpoint import StateCheckpointer, read_state_info
from textualdeg.data.sampling import DataPosition
from textualdeg.experiment import Experiment, ExperimentLocked, append_records
from textualdeg.log import get_logger, setup_logging
from textualdeg.options import Options

logger = get_logger(__name__)

VAL_RECORD = Path("logs") / "val_metrics.jsonl"

#: ``step_fn(batch, step, micro) -> {"loss": scalar tensor, ...}``: one micro-batch.
StepFn = Callable[[Any, int, int], Mapping[str, torch.Tensor]]
#: ``validate(step) -> records``: called on every process; each record the main process returns
#: becomes one line of val_metrics.jsonl (the other processes' records are ignored).
ValidateFn = Callable[[int], Sequence[Mapping[str, Any]]]


def experiment_dir(opt: Options) -> Path:
    """``path.experiments_root`` or ``experiments/<name>`` (relative to the working folder)."""
    root = opt.path.experiments_root
    return Path(root) if root else Path("experiments") / opt.name


def build_trackers(tensorboard: bool, wandb_project: str | None = None, wandb_resume_id: str | None = None,
                   run_name: str | None = None) -> list[Any]:
    """The ``log_with`` list of an ``Accelerator``: TensorBoard and/or a W&B tracker.

    Args:
        tensorboard: log to TensorBoard under the run's ``logs/``.
        wandb_project: the W&B project (``logger.wandb.project``); None: no W&B.
        wandb_resume_id: a W&B run id to continue (``logger.wandb.resume_id``), passed
            to ``wandb.init`` as ``id=..., resume="allow"``.
        run_name: the W&B run name (the experiment name).
    """
    trackers: list[Any] = ["tensorboard"] if tensorboard else []
    if wandb_project:
        from accelerate.tracking import WandBTracker

        kwargs: dict[str, Any] = {"name": run_name} if run_name else {}
        if wandb_resume_id:
            kwargs.update(id=wandb_resume_id, resume="allow")
        trackers.append(WandBTracker(wandb_project, **kwargs))
    return trackers


def build_accelerator(exp_dir: Path, *, mixed_precision: str = "no", gradient_accumulation_steps: int = 1,
                      log_with: Sequence[Any] = (), process_group_timeout_min: int = 120,
                      find_unused_parameters: bool = False) -> Any:
    """An ``Accelerator`` with its project and logging folders in ``exp_dir``.

    Multi-process runs without a GPU use gloo on the CPU (accelerate would otherwise run
    each process alone; docs/ecosystem_notes.md). The lr schedule is stepped by the loop
    once per optimizer step (``step_scheduler_with_optimizer=False``), whatever the
    process count.

    Args:
        exp_dir: the run folder.
        mixed_precision: ``no``, ``fp16`` or ``bf16``.
        gradient_accumulation_steps: micro-batches per optimizer step.
        log_with: trackers (:func:`build_trackers`).
        process_group_timeout_min: minutes a collective waits for the other processes
            before the run fails (``InitProcessGroupKwargs(timeout=...)``; torch's defaults
            are 10 for NCCL and 30 for gloo). Applies when this call creates the
            process group (the first accelerator of the process).
        find_unused_parameters: DDP searches the autograd graph for parameters that get
            no gradient each step (needed when some are out of autograd for a while,
            e.g. stage 4's ``param_fix_iterations``; a graph walk per step otherwise).

    Raises:
        ValueError: ``process_group_timeout_min`` < 1, naming ``train.process_group_timeout_min``.
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

    if process_group_timeout_min < 1:
        raise ValueError(f"train.process_group_timeout_min={process_group_timeout_min}: expected minutes >= 1")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        cpu=world_size > 1 and not torch.cuda.is_available(),
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=list(log_with) or None,
        project_config=ProjectConfiguration(project_dir=str(exp_dir), logging_dir=str(exp_dir / "logs")),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=process_group_timeout_min)),
                         DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    if world_size > 1 and accelerator.num_processes != world_size:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but accelerate runs {accelerator.num_processes} process(es); "
            "on CPU set ACCELERATE_USE_CPU=1 (see configs/accelerate/cpu_2proc.yaml)"
        )
    return accelerator


def flat_config(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as ``{"train.optim_g.lr": 0.001, ...}`` for ``init_trackers(config=...)``.

    Lists become JSON strings (TensorBoard's hparams take only scalars and strings).
    """
    flat: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class Schedule:
    """When the loop logs, saves and validates, in optimizer steps.

    Args:
        total: the last step (>= 1: a plan of no steps would write untrained weights as
            its result).
        log_every: log the mean losses every this many steps (and at ``total``).
        save_every: save the full state every this many steps (and at ``total``).
        validate_every: validate every this many steps (0: never).
        validate_at_end: validate at ``total`` too.
    """

    total: int
    log_every: int
    save_every: int
    validate_every: int = 0
    validate_at_end: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.total, bool) or not isinstance(self.total, int) or self.total < 1:
            raise ValueError(f"total={self.total!r}: expected at least 1 optimizer step (the stage's "
                             "train.total_iter or train.max_train_steps); nothing would be trained")
        for name in ("log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a number of steps >= 1")

    def logs(self, step: int) -> bool:
        """Whether the mean losses are logged after ``step``."""
        return step % self.log_every == 0 or step == self.total

    def saves(self, step: int) -> bool:
        """Whether the full state is saved after ``step``."""
        return step % self.save_every == 0 or step == self.total

    def validates(self, step: int) -> bool:
        """Whether the stage validates after ``step``."""
        return (self.validate_every > 0 and step % self.validate_every == 0) or (
            self.validate_at_end and step == self.total)


class _RunningMeans:
    """Sums of the step function's scalar outputs since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: Mapping[str, torch.Tensor | None]) -> None:
        """Add one micro-batch's outputs; what is not a tensor (e.g. no grad norm) is left out."""
        for key, value in values.items():
            if torch.is_tensor(value):
                value = value.detach().float()
                self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def reduce(self, accelerator: Any) -> dict[str, float]:
        """Means over the micro-batches and the processes; resets the sums."""
        means = {key: accelerator.reduce(total / self.count, reduction="mean").item()
                 for key, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def validation_done(exp_dir: Path, step: int, start: int | None) -> bool:
    """Whether ``logs/val_metrics.jsonl`` records the validation of ``step`` by start ``start``.

    A torn last line (a kill inside the write) counts as no record.
    """
    path = exp_dir / VAL_RECORD
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("step") == step and record.get("start") == start:
                    return True
    return False


@dataclass
class Run:
    """One training run: its folder, accelerator, full-state checkpointer, step and data position.

    Made by :meth:`open`; :meth:`begin` resumes, :meth:`loop` trains.

    Attributes:
        opt: the resolved options.
        exp_dir: the run folder.
        accelerator: the ``accelerate.Accelerator``.
        experiment: the folder's lock and start records.
        position: epoch and batches consumed (saved with every state).
        checkpointer: the full-state checkpointer (set by :meth:`begin`).
        step: optimizer steps done.
        start: this start's number in ``starts.jsonl`` (main process; 0 elsewhere).
    """

    opt: Options
    exp_dir: Path
    accelerator: Any
    experiment: Experiment
    position: DataPosition = field(default_factory=DataPosition)
    checkpointer: StateCheckpointer | None = None
    step: int = 0
    start: int = 0
    _owed_validation: dict[str, Any] | None = field(default=None, init=False, repr=False)

    @classmethod
    @contextlib.contextmanager
    def open(cls, opt: Options, *, log_with: Sequence[Any] = (), gradient_accumulation_steps: int = 1,
             find_unused_parameters: bool = False) -> Iterator[Run]:
        """Folder, accelerator, the folder's lock (main process), logging to ``logs/train.log``, seed.

        The lock is taken before anything is written, so a refused run leaves the folder
        untouched; on exit the trackers are closed and the lock released.

        Args:
            opt: options with ``name``, ``manual_seed``, ``path.experiments_root``,
                ``train.mixed_precision`` and ``train.process_group_timeout_min``.
            log_with: trackers (:func:`build_trackers`).
            gradient_accumulation_steps: micro-batches per optimizer step.
            find_unused_parameters: see :func:`build_accelerator`.

        Raises:
            ExperimentLocked: another run holds the folder (on every process).
        """
        from accelerate.utils import set_seed

        exp_dir = experiment_dir(opt)
        accelerator = build_accelerator(exp_dir, mixed_precision=opt.train.mixed_precision,
                                        gradient_accumulation_steps=gradient_accumulation_steps, log_with=log_with,
                                        process_group_timeout_min=opt.train.process_group_timeout_min,
                                        find_unused_parameters=find_unused_parameters)
        experiment = Experiment(exp_dir)
        _lock(experiment, accelerator)
        try:
            setup_logging(exp_dir / "logs" / "train.log", is_main_process=accelerator.is_main_process)
            set_seed(opt.manual_seed)
            yield cls(opt, exp_dir, accelerator, experiment)
        finally:
            accelerator.end_training()
            experiment.lock.release()

    def begin(self, tracker_name: str, *, keep_last: int | None, weight_prefixes: tuple[str, ...] = (),
              objects: Mapping[str, Any] | None = None) -> int:
        """Start the trackers, resume (``path.resume_state`` / ``path.auto_resume``), record the start.

        Call after ``accelerator.prepare`` on every process. Auto-resume follows the
        lineage of the newest recorded start; the log says which state and why.

        Args:
            tracker_name: the TensorBoard folder under ``logs/``.
            keep_last: full states to keep (``StateCheckpointer``).
            weight_prefixes: per-step weight files in ``checkpoints/`` rotated with the states.
            objects: more ``state_dict`` objects saved with every state (e.g. ``{"ema": ema}``).

        Returns:
            The step training starts from.
        """
        acc, opt = self.accelerator, self.opt
        acc.init_trackers(tracker_name, config=flat_config(opt.to_dict()))
        followed = self.experiment.lineage() if acc.is_main_process else None
        self.checkpointer = StateCheckpointer(
            self.experiment.state_root, keep_last=keep_last, lineage=followed,
            weights_dir=self.exp_dir / "checkpoints" if weight_prefixes else None, weight_prefixes=weight_prefixes)
        self.checkpointer.register("position", self.position)
        for name, obj in (objects or {}).items():
            self.checkpointer.register(name, obj)
        self.step = self.checkpointer.start_step(acc, opt.path.resume_state, opt.path.auto_resume)
        if acc.is_main_process:
            self._record_start(followed)
        return self.step

    def _record_start(self, followed: Any) -> None:
        """Main process: the start record, the lineage from here on, and whether a validation is owed."""
        opt, resumed = self.opt, self.checkpointer.resumed
        if opt.path.resume_state:
            reason = f"path.resume_state={opt.path.resume_state}"
        elif not opt.path.auto_resume:
            reason = "path.auto_resume is false: fresh start"
        else:
            scope = ("the run folder (no earlier start recorded)" if followed is None
                     else f"the lineage of the last start ({followed})")
            reason = (f"auto_resume: the newest usable state of {scope}" if resumed is not None
                      else f"auto_resume: no usable state in {scope}: fresh start")
        record = self.experiment.record_start(opt, step=self.step, resumed=resumed, reason=reason,
                                              num_processes=self.accelerator.num_processes)
        self.start = record["start"]
        self.checkpointer.lineage = self.experiment.lineage(self.start)
        others = sorted({folder.name for _, folder in self.checkpointer.complete_states()}
                        - {folder.name for _, folder in self.checkpointer.lineage_states()})
        logger.info("start %d: %s (%s)%s", self.start,
                    f"resumed {resumed} at step {self.step}" if resumed is not None else "from step 0", reason,
                    f"; states of other lineages, left alone: {', '.join(others)}" if others else "")
        in_folder = resumed is not None and resumed.resolve().parent == self.experiment.state_root.resolve()
        info = read_state_info(resumed) if in_folder else {}
        if info.get("validation_due") and not validation_done(self.exp_dir, self.step, info.get("start")):
            self._owed_validation = {"start": info.get("start")}  # whose weights: the start that saved them

    def loop(self, loader: Any, scheduler: Any, step_fn: StepFn, when: Schedule, *,
             validate: ValidateFn | None = None, save_weights: Callable[[int], None] | None = None,
             desc: str = "train") -> int:
        """Train from ``self.step`` to ``when.total``; returns the last step.

        Args:
            loader: the prepared DataLoader (``set_epoch``; an ``EpochSampler`` inside).
            scheduler: the prepared lr schedule, stepped once per optimizer step.
            step_fn: one micro-batch (see ``StepFn``); the loop counts an optimizer step
                when ``accelerator.sync_gradients`` is True after it.
            when: when to log, save and validate.
            validate: the stage's validation (see ``ValidateFn``), or None.
            save_weights: main process, before each full-state save: the stage's weight files.
            desc: the tqdm label.
        """
        from accelerate import skip_first_batches
        from tqdm.auto import tqdm

        acc, position = self.accelerator, self.position
        if validate is not None:
            self._validate_owed(validate)
        progress = tqdm(total=when.total, initial=self.step, desc=desc, disable=not acc.is_local_main_process)
        running, micro, last = _RunningMeans(), 0, {}
        while self.step < when.total:
            loader.set_epoch(position.epoch)
            for batch in skip_first_batches(loader, position.batches) if position.batches else loader:
                out = step_fn(batch, self.step, micro)
                position.batches, micro = position.batches + 1, micro + 1
                running.add(out)
                if not acc.sync_gradients:
                    continue
                scheduler.step()
                self.step, micro = self.step + 1, 0
                progress.update(1)
                if acc.is_local_main_process:
                    progress.set_postfix(loss=f"{out['loss'].item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if when.logs(self.step):
                    last = self._log(running.reduce(acc), scheduler)
                due = validate is not None and when.validates(self.step)
                if when.saves(self.step):
                    self._save(save_weights, due)
                if due:
                    self._validate(validate)
                if self.step >= when.total:
                    break
            else:
                position.epoch, position.batches = position.epoch + 1, 0
        progress.close()
        logger.info("training finished at step %d%s", self.step,
                    f" (loss {last['train/loss']:.4f})" if "train/loss" in last else "")
        return self.step

    def _log(self, means: dict[str, float], scheduler: Any) -> dict[str, float]:
        """Log the mean losses and the lr of every parameter group (``train/lr_<group name>`` after the first)."""
        lrs = scheduler.get_last_lr()
        groups = getattr(scheduler, "scheduler", scheduler).optimizer.param_groups  # accelerate wraps it
        values = {f"train/{key}": value for key, value in means.items()}
        values["train/lr"] = float(lrs[0])
        for index in range(1, len(lrs)):
            values[f"train/lr_{groups[index].get('name', index)}"] = float(lrs[index])
        self.accelerator.log(values, step=self.step)
        losses = ", ".join(f"{key} {value:.5f}" if key == "loss" else f"{key} {value:.4f}"
                           for key, value in means.items())
        logger.info("step %d: %s, lr %s", self.step, losses, ", ".join(f"{lr:.3e}" for lr in lrs))
        return values

    def _save(self, save_weights: Callable[[int], None] | None, validation_due: bool) -> None:
        """The stage's weight files (main process), then the full state; its marker says if a validation is due."""
        self.accelerator.wait_for_everyone()
        if save_weights is not None and self.accelerator.is_main_process:
            save_weights(self.step)
        self.checkpointer.save(self.accelerator, self.step,
                               info={"start": self.start, "validation_due": validation_due})

    def _validate(self, validate: ValidateFn, *, run: bool = True, start: int | None = None) -> None:
        """When ``run``, every process validates and the main process appends its records; all wait.

        The records go to ``logs/val_metrics.jsonl``; the other processes' are ignored.

        Each record carries the step and the start whose weights were validated (this one
        unless ``start`` is given). ``run`` must be the same on every process.
        """
        if run:
            records = validate(self.step)
            if self.accelerator.is_main_process:
                owner = self.start if start is None else start
                append_records(self.exp_dir / VAL_RECORD,
                               [{"step": self.step, "start": owner, **record} for record in records or [{}]])
        self.accelerator.wait_for_everyone()

    def _validate_owed(self, validate: ValidateFn) -> None:
        """Validate the resumed step first if its state was saved but its validation never completed.

        Only the main process knows (from the state's marker and val_metrics.jsonl); it
        tells the others, and every process validates.
        """
        owed = self._owed_validation
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            owed = broadcast_object_list([owed], from_process=0)[0]
        if owed is not None:
            logger.info("validating step %d first: its state was saved, its validation never completed", self.step)
        self._validate(validate, run=owed is not None, start=owed["start"] if owed else None)
        self._owed_validation = None


def _lock(experiment: Experiment, accelerator: Any) -> None:
    """The main process takes the folder's lock; a refusal is raised on every process."""
    message = [None]
    if accelerator.is_main_process:
        try:
            experiment.lock.acquire()
        except ExperimentLocked as error:
            message[0] = str(error)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(message, from_process=0)
    if message[0] is not None:
        raise ExperimentLocked(message[0])


__all__ = [
    "Run",
    "Schedule",
    "build_accelerator",
    "build_trackers",
    "experiment_dir",
    "flat_config",
    "validation_done",
]
