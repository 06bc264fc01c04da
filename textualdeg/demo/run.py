"""``make demo``: the method on scikit-image scenes, with a tiny prior that knows them, and its ablation.

Through the same scripts and option files a user runs (``options/demo/``):

0. installs the tiny text-to-image prior (``textualdeg.demo.prior``: a stand-in for Stable
   Diffusion trained on the demo scenes) into ``<out>/models`` and writes the demo
   dataset (``textualdeg.demo.scenes``): 64 x 64 scenes from scikit-image photographs,
   degraded by Gaussian noise, motion blur, synthetic haze and synthetic rain streaks;
1. trains the image-to-text mapper on the clean scenes (``scripts/train/train_i2t_mapping.py``);
2. trains the textual-restoration mapper on the training pairs (``scripts/train/train_tr_mapping.py``);
3. generates a guidance image for every degraded input (``scripts/generate/generate_reference.py``),
   and, for the report, the test guidance without the TR mapper and from the clean scenes' words;
4. trains, per degradation, the same tiny NAFNet three ways (``scripts/train/train_restoration.py``):
   (a) without guidance, (b) with the generated guidance, (c) with the clean target as
   guidance (the oracle); up to ``--jobs`` runs at a time, each on ``--threads`` threads;
5. scores every run on the held-out test photographs (``scripts/eval/evaluate.py``) and
   writes ``<out>/report.md``: the guidance table, the ablation, the comparison pictures
   and the loss curves;
6. beside them, DA-CLIP (arXiv:2310.01018): a tiny degradation-aware controller trained on
   the training inputs (``scripts/train/train_daclip.py``) classifies every test input's
   degradation (``textualdeg.daclip.classify.evaluate_classifier``); the report gains its
   per-class accuracy, the confusion matrix and the predictions on the pictured scenes.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from textualdeg.demo import report
from textualdeg.demo.scenes import (DEGRADATIONS, TEST_PHOTOS, build_demo_dataset, split_by_degradation,
                                    write_daclip_csvs)
from textualdeg.log import get_logger, setup_logging

logger = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / "demo_output"  # the options/demo files read and write here
#: The scenes shown in the pictures: one per test photograph (fixed, not picked by score).
PICTURE_SCENES = ("rocket-tl", "chelsea-br")
#: reference_mode -> how the report names the path of rows (b) and (c)
PATH_LABELS = {
    "refined": "improved reference path (reference_mode: refined)",
    "masa": "the authors' faithful reference path (reference_mode: masa)",
}

GUIDANCE_STAGES = (
    ("stage 1: image-to-text mapper", "scripts/train/train_i2t_mapping.py", "options/demo/train_i2t.yml"),
    ("stage 2: textual-restoration mapper", "scripts/train/train_tr_mapping.py", "options/demo/train_tr.yml"),
    ("stage 3: guidance generation", "scripts/generate/generate_reference.py", "options/demo/generate.yml"),
    ("stage 3 (report): guidance without the TR mapper", "scripts/generate/generate_reference.py",
     "options/demo/generate_without_tr.yml"),
)
DACLIP_STAGE = ("DA-CLIP: degradation-aware controller", "scripts/train/train_daclip.py",
                "options/demo/train_daclip.yml")
#: variant -> (stage-4 option file, stage-5 option file)
VARIANT_FILES = {
    "plain": ("options/demo/train_restoration_plain.yml", "options/demo/evaluate_plain.yml"),
    "guidance": ("options/demo/train_restoration.yml", "options/demo/evaluate.yml"),
    "target": ("options/demo/train_restoration.yml", "options/demo/evaluate.yml"),
}


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage process: ``threads`` intra-op threads for torch, OpenMP and BLAS.

    Without it every process sizes its pools to the whole machine, and two of them on a
    2-core machine oversubscribe it (stage 4 ran at 4.75 s/step instead of about 0.2).
    """
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.update(extra or {})
    return env


def run_script(script: str, option_file: str, env: dict[str, str], log_file: Path | None = None,
               overrides: Sequence[str] = ()) -> float:
    """Run one stage script in a fresh process from the repository root; returns seconds.

    Output goes to the console, or to ``log_file`` (runs in parallel would interleave).

    Raises:
        SystemExit: the script failed; names the command and shows the end of its log.
    """
    command = [sys.executable, script, "-opt", option_file, *[a for o in overrides for a in ("--set", o)]]
    shown = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("DEMO_")) + " python " + " ".join(command[1:])
    start = time.perf_counter()
    if log_file is None:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as handle:
            result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:]) if log_file else ""
        raise SystemExit(f"{tail}\nfailed (exit code {result.returncode}): {shown.strip()}"
                         + (f"\nfull log: {log_file}" if log_file else ""))
    return time.perf_counter() - start


@dataclass(frozen=True)
class RestorationRun:
    """One stage-4 training and its stage-5 evaluation."""

    degradation: str
    variant: str  # plain | guidance | target
    seed: int
    reference_mode: str = "refined"  # of the guided variants

    @property
    def name(self) -> str:
        return report.run_name(self.degradation, self.variant, self.seed)

    def env(self, threads: int) -> dict[str, str]:
        extra = {"DEMO_DEGRADATION": self.degradation, "DEMO_RUN": self.name}
        if self.variant != "plain":
            extra["DEMO_GUIDANCE"] = self.variant
        return thread_env(threads, extra)


def run_restoration(run: RestorationRun, out: Path, threads: int) -> float:
    """Train and evaluate one run (logs in ``<out>/logs/<run>.log``); returns seconds."""
    train_file, eval_file = VARIANT_FILES[run.variant]
    log_file = out / "logs" / f"{run.name}.log"
    env = run.env(threads)
    mode = [] if run.variant == "plain" else [f"network_g.reference_mode={run.reference_mode}"]
    seconds = run_script("scripts/train/train_restoration.py", train_file, env, log_file,
                         [f"manual_seed={run.seed}", *mode])
    seconds += run_script("scripts/eval/evaluate.py", eval_file, env, out / "logs" / f"{run.name}_eval.log", mode)
    return seconds


def run_all_restorations(runs: Sequence[RestorationRun], out: Path, jobs: int, threads: int) -> dict[str, float]:
    """Run every stage-4/5 pair, ``jobs`` at a time; returns seconds per run."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def one(run: RestorationRun) -> None:
        seconds[run.name] = run_restoration(run, out, threads)
        logger.info("[%d/%d] stage 4+5 %s: %.0f s (%.0f s elapsed)", len(seconds), len(runs), run.name,
                    seconds[run.name], time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, run) for run in runs]:
            future.result()
    return seconds


def run_daclip(out: Path, threads: int) -> float:
    """Train the demo's DA-CLIP and classify the test inputs into ``<out>/daclip/``; returns seconds."""
    from textualdeg.daclip.classify import evaluate_classifier, format_report

    title, script, option_file = DACLIP_STAGE
    logger.info("=== %s: python %s -opt %s", title, script, option_file)
    start = time.perf_counter()
    run_script(script, option_file, thread_env(threads))
    record = evaluate_classifier(out / "experiments" / "demo_daclip" / "daclip", out / "data" / "daclip_test.csv",
                                 out / "daclip")
    logger.info("DA-CLIP on the test inputs:\n%s", format_report(record))
    return time.perf_counter() - start


def write_report(out: Path, seeds: Sequence[int], timings: dict[str, float], jobs: int, threads: int,
                 reference_mode: str = "refined") -> tuple[Path, str]:
    """Write ``<out>/report.md`` from what the stages wrote; returns it and the tables for the console."""
    from textualdeg.fileio import atomic_write_text

    guidance = report.guidance_rows(out)
    path_label = PATH_LABELS[reference_mode]
    ablation = report.ablation_rows(out, seeds, path_label)
    input_psnr = {str(r["degradation"]): float(r["input"]) for r in guidance}
    tables = "\n\n".join([report.guidance_markdown(guidance), report.ablation_markdown(ablation, input_psnr),
                           "\n".join(report.verdicts(ablation))])
    report.comparison_picture(out, out / "comparison.png", PICTURE_SCENES, seeds[0])
    report.guidance_picture(out, out / "guidance.png", PICTURE_SCENES)
    panels = {
        "stage 1 (I2T mapper)": ["experiments/demo_i2t_mapping"],
        "stage 2 (TR mapper)": ["experiments/demo_tr_mapping"],
        **{f"stage 4, {kind}": [f"experiments/demo_restoration_{report.run_name(kind, v, seeds[0])}"
                                for v, _, _ in report.VARIANTS] for kind in DEGRADATIONS},
    }
    report.loss_curves(out, out / "loss_curves.png", panels)
    daclip_tables = report.daclip_markdown(out, PICTURE_SCENES)
    if daclip_tables is not None:
        tables += "\n\n" + daclip_tables
    daclip_section = "" if daclip_tables is None else f"""
## DA-CLIP: which degradation does each test input show?

A tiny DA-CLIP controller (arXiv:2310.01018; `options/demo/train_daclip.yml`, a random frozen
CLIP of 64 px with 8-px patches) trained on the training inputs' captions and degradation names
(`data/daclip_train.csv`), then classified each held-out test input's degradation (the
prediction is the degradation name whose text embedding is nearest its degradation embedding):

{daclip_tables}

![confusion matrix](daclip/confusion_matrix.png)
"""
    timing_lines = "\n".join(f"| {title} | {seconds:.0f} |" for title, seconds in timings.items())
    seed_text = "one seed" if len(seeds) == 1 else f"{len(seeds)} seeds (mean ± std over seeds)"
    text = f"""# textualdeg demo report

**What ran.** The whole method, on 64 x 64 scenes cut from scikit-image photographs. The
text-to-image model is the demo's *tiny prior*: a stand-in for Stable Diffusion 2.1-base in
miniature (the same UNet / VAE / text-encoder classes and folder layout) that was trained on
the 32 clean demo scenes, the test scenes included, as Stable Diffusion has seen photographs
of rockets and cats. It knows nothing else, so its guidance is what the method gives when
the prior knows the scene. The CLIP image encoder is tiny and random. Stage 1 learned words
for the clean scenes; stage 2 learned to restore words on the training pairs only; stage 4
trained each NAFNet on the training photographs only; everything below is scored on the held-out
test photographs ({", ".join(TEST_PHOTOS)}: {len(report.test_stems(out, DEGRADATIONS[0]))} scenes per degradation) with
the `textualdeg` protocol (RGB, no border crop, 3-D Gaussian SSIM, outputs rounded to 8 bit).

## Stages 1-3: how close is the guidance to the clean target? (PSNR, dB)

{report.guidance_markdown(guidance)}

"guidance (I2T + TR)" is what stage 4 receives; "without TR mapper" is the same generation
from the degraded image's words (what stage 2 adds is the difference); "from the clean scene's
words" is the best stages 1 and 3 can do.

![guidance](guidance.png)

Columns: {" | ".join(report.GUIDANCE_COLUMNS)}; rows: {", ".join(DEGRADATIONS)} for the scenes {", ".join(PICTURE_SCENES)}.

## Stage 4: does the guidance make the restoration better? (test scenes, {seed_text})

The same tiny NAFNet (width 8) and budget (`options/demo/train_restoration*.yml`) trained
three ways; (b) and (c) use the {path_label}.

{report.ablation_markdown(ablation, input_psnr)}

{chr(10).join(report.verdicts(ablation))}

![comparison](comparison.png)

Columns: {" | ".join(report.COMPARISON_COLUMNS)} (seed {seeds[0]}); rows: {", ".join(DEGRADATIONS)} for the scenes {", ".join(PICTURE_SCENES)}.

{daclip_section}
## Training loss

![loss curves](loss_curves.png)

## Time per stage (seconds; stage 4+5 ran {jobs} at a time, {threads} thread(s) each)

| stage | seconds |
|---|---:|
{timing_lines}
"""
    return atomic_write_text(out / "report.md", text), tables


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="textualdeg end-to-end demo (tiny models, CPU)")
    parser.add_argument("--output", type=Path, default=Path("demo_output"),
                        help="demo folder (the options/demo files expect demo_output)")
    parser.add_argument("--seeds", type=int, default=1, help="train every stage-4 model with seeds 0..N-1 (default 1; 3 for mean ± std)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="stage-4/5 runs at a time (default: one per available core)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per stage-4/5 run (default: available cores / jobs)")
    parser.add_argument("--reference-mode", choices=sorted(PATH_LABELS), default="refined",
                        help="reference path of the guided rows (default refined; masa: the authors' faithful one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0 when every run finished and the report was written."""
    from textualdeg.demo.prior import install_prior

    args = parse_args(argv)
    setup_logging()
    out = (REPO_ROOT / args.output).resolve() if not args.output.is_absolute() else args.output
    if out != DEMO_DIR:
        raise SystemExit("options/demo/*.yml read and write demo_output/ under the repository root; keep --output demo_output")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1; got {args.seeds}")
    cores = available_cores()
    jobs = max(1, args.jobs or cores)
    threads = max(1, args.threads or cores // jobs)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if out.exists():  # a fresh run every time: the stages would resume and skip what exists
        shutil.rmtree(out)
    t0 = time.perf_counter()
    install_prior(out / "models")
    build_demo_dataset(out / "data")
    write_daclip_csvs(out / "data")
    timings["tiny prior and data"] = time.perf_counter() - t0
    for title, script, option_file in GUIDANCE_STAGES:
        logger.info("=== %s: python %s -opt %s", title, script, option_file)
        timings[title] = run_script(script, option_file, thread_env(cores))
    timings[DACLIP_STAGE[0]] = run_daclip(out, cores)
    split_by_degradation(out / "data")
    seeds = list(range(args.seeds))
    # the guided runs take about twice as long as the plain ones: start them first, so the pool ends together
    runs = [RestorationRun(kind, variant, seed, args.reference_mode) for variant in ("guidance", "target", "plain")
            for seed in seeds for kind in DEGRADATIONS]
    logger.info("=== stages 4+5: %d runs, %d at a time, %d thread(s) each; logs in %s", len(runs), jobs, threads,
                out / "logs")
    t0 = time.perf_counter()
    per_run = run_all_restorations(runs, out, jobs, threads)
    timings[f"stages 4+5: {len(runs)} runs (wall)"] = time.perf_counter() - t0
    timings["stages 4+5: mean per run"] = sum(per_run.values()) / len(per_run)
    report_path, tables = write_report(out, seeds, timings, jobs, threads, args.reference_mode)
    print(f"\n{tables}\n\nreport: {report_path}  (total {time.perf_counter() - start:.0f} s)")  # the CLI's result
    return 0
