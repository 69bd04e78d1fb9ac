"""Cross-validation (`data.cv.folds=K`, `data.cv.repeats=R`): one run, K x R models.

The rows outside the test split are cut into K folds (dlrun.data.cv_folds: stratified for
classes, seeded, the same for every model), R times. Each fold is a run of its own in
`folds/<n>/` of the run folder: trained on the other folds, its fold as the validation part
(scores, early stopping, best checkpoint), with everything a run writes. Then, with
`data.cv.refit` (the default), the run folder itself holds one model trained on every row
outside the test split, for as long as the folds found best (their median best epoch or
boosting round; there is no validation part left to stop it), scored once on the test split:
what `dlrun-eval`, `dlrun-predict` and `dlrun-export` use. Its `val` scores are the folds'
means. `summary.json` gains `cv`: each validation metric's mean, standard
deviation and per-fold values, and `cv_setup`.

A stopped run continues with `trainer.resume=RUN_DIR`: finished folds are kept, the fold that
was training continues from its last epoch, and the folds after it and the refit follow.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import signal
import statistics
import time
from pathlib import Path

from omegaconf import OmegaConf

from dlrun.errors import Interrupted, UserError

log = logging.getLogger("dlrun")
FOLDS = "folds"


def cross_validate(cfg, conf, run_dir: Path) -> dict:
    """Every fold's run, then the refit (or a summary of the folds alone); returns the run's
    summary, with `cv`."""
    from dlrun import folders
    from dlrun.checkpoints import write_json

    started = time.perf_counter()
    cv = conf.data.cv
    total = cv.folds * cv.repeats
    resuming = conf.trainer.resume is not None
    run_dir = cv_run_dir(conf.trainer.resume, conf.task_name) if resuming else Path(run_dir)
    if resuming:
        folders.hold_run(run_dir)
        done = read_summary(run_dir)
        if done.get("status") == "completed" and "cv" in done:
            raise UserError(
                f"trainer.resume: {run_dir} finished its cross-validation; there is nothing "
                "to continue. Start a new run to train again."
            )
    else:
        folders.claim_run(run_dir)
    from dlrun import loggers

    try:
        loggers.start_cv(cfg, run_dir)  # logger=mlflow: the run its folds are children of
        summaries = []
        log.info(
            "cross-validation: %s of the rows outside the test split, each a run in %s",
            runs_label(cv.folds, cv.repeats),
            run_dir / FOLDS,
        )
        for index in range(total):
            try:
                summaries.append(run_fold(cfg, run_dir, index, cv))
            except Interrupted as ex:  # the whole run continues from here, not the fold alone
                raise Interrupted(
                    f"{str(ex).split(';')[0]} in fold run {index + 1} of {total}; "
                    f"the finished folds are kept: continue with trainer.resume={run_dir}",
                    signal.Signals[ex.signal],
                ) from None
        scores = fold_scores(summaries, cv, conf.data.split_seed)
        log.info("cross-validation, %s", describe(scores))
        if cv.refit:
            refit = refit_cfg(cfg, summaries, resumable(run_dir))
            from dlrun.runner import run

            summary = run(refit, run_dir, part="refit", folds=scores)  # val: the folds' means
        else:
            summary = with_fold_scores(folds_only_summary(conf, summaries, run_dir), scores, conf)
        summary["wall_time_s"] = time.perf_counter() - started  # the folds' runs and the refit
        write_json(run_dir / "summary.json", summary)
        if cv.refit:
            from dlrun.report import print_summary

            print_summary(summary, summary["family"])
        else:
            loggers.end_cv(cfg, run_dir, summary)
        print_cv(summary)
        return summary
    except BaseException:
        made = run_dir / FOLDS  # holding only the MLflow run's id: nothing of the run's own
        if made.is_dir() and {p.name for p in made.iterdir()} <= {loggers.PARENT_FILE}:
            shutil.rmtree(made)
        folders.discard_if_unused(run_dir)  # stopped before any fold's run kept anything
        raise
    finally:
        folders.release(run_dir)


def cv_run_dir(resume: str, task_name: str) -> Path:
    """The cross-validated run that trainer.resume names: its folder, or the folder of one of
    its folds or checkpoints; auto: the task's latest."""
    path = Path(resume)
    if resume == "auto":
        from dlrun.runner import find_checkpoint

        path = find_checkpoint(resume, task_name).parent.parent
    if path.is_file():
        path = path.parent.parent  # checkpoints/last.pt -> its run
    path = path.absolute()
    if (path / FOLDS).is_dir():
        return path
    if path.parent.name == FOLDS:  # one of its folds
        return path.parent.parent
    raise UserError(
        f"trainer.resume: {resume} is not a cross-validated run (it has no {FOLDS}/ folder). "
        "Resume a run of data.cv.folds in its own folder."
    )


def run_fold(cfg, run_dir: Path, index: int, cv) -> dict:
    """Fold `index`'s run in folds/<index + 1>: kept when it finished, continued from its last
    epoch when it has one, else (again) from the start. Returns its summary."""
    from dlrun.runner import run

    where = run_dir / FOLDS / str(index + 1)
    summary = read_summary(where)
    repeat, fold = divmod(index, cv.folds)
    said = f"fold {fold + 1} of {cv.folds}" + (
        f", repeat {repeat + 1} of {cv.repeats}" if cv.repeats > 1 else ""
    )
    if summary.get("status") == "completed":
        log.info("%s: finished before, kept (%s)", said, where)
        return summary
    resume = resumable(where)
    if resume is None and where.exists():  # stopped before its first epoch: nothing to keep
        shutil.rmtree(where)
    with quiet_console():  # the fold's log goes to its train.log; one line here
        summary = run(fold_cfg(cfg, index, resume), where, part="fold")
    from dlrun.report import number

    scores = "  ".join(f"{k} {number(v)}" for k, v in summary["val"].items())
    kept = f"best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
    if summary.get("family") != "torch":
        kept = ""
    log.info("%s: validation %s (%s%.1f s)", said, scores, kept, summary["wall_time_s"])
    return summary


@contextlib.contextmanager
def quiet_console():
    """While a fold trains, dlrun's INFO lines reach its train.log but not the terminal (its
    warnings still do): ten folds would print ten runs' worth of lines."""

    def keep(record: logging.LogRecord) -> bool:
        return not (record.name.startswith("dlrun") and record.levelno < logging.WARNING)

    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def resumable(run_dir: Path) -> str | None:
    return str(run_dir) if (run_dir / "checkpoints" / "last.pt").is_file() else None


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def fold_cfg(cfg, index: int | None, resume: str | None):
    """The run's config for fold `index` (None: the refit), resumed from `resume` if given."""
    sub = copy.deepcopy(cfg)
    OmegaConf.update(sub, "data.cv.fold", index)
    OmegaConf.update(sub, "trainer.resume", resume)
    return sub


def refit_cfg(cfg, summaries: list[dict], resume: str | None):
    """The refit's config: every row outside the test split trains (data.cv.fold ALL_ROWS),
    with no validation part to stop it: a network for the folds' median best epoch
    (data.cv.epochs), XGBoost for their median best round (model.n_estimators); no early
    stopping, no health probes (they watch the validation split)."""
    from dlrun.config import ALL_ROWS

    sub = fold_cfg(cfg, ALL_ROWS, resume)
    best = [s["best_epoch"] for s in summaries if s.get("best_epoch")]
    kept = max(1, round(statistics.median(best))) if best else None
    rows = sum(summaries[0]["rows"][k] for k in ("train", "val"))
    family = summaries[0].get("family")
    if family == "torch":
        OmegaConf.update(sub, "data.cv.epochs", kept)
        said = f"{kept} epochs (the folds' median best epoch)"
    elif summaries[0]["epochs_run"] > 1 and kept is not None:  # boosting rounds (XGBoost)
        OmegaConf.update(sub, "model.n_estimators", kept)
        said = f"{kept} rounds (the folds' median best round)"
    else:
        said = "one fit"
    OmegaConf.update(sub, "trainer.early_stopping.patience", None)
    OmegaConf.update(sub, "trainer.diagnostics", False)
    log.info(
        "the refit: every one of the %d rows outside the test split, %s, scored on the "
        "test split once",
        rows,
        said,
    )
    return sub


def with_fold_scores(summary: dict, scores: dict, conf) -> dict:
    """`summary` of the run that cross-validated (its refit's, or the folds' alone) with the
    folds' scores: `cv`, `cv_setup`, and as its `val` and monitored best the folds' means."""
    summary.update(scores)
    summary["val"] = {k: m["mean"] for k, m in scores["cv"].items()}
    name = conf.trainer.early_stopping.monitor.removeprefix("val_")
    summary["monitor"]["best"] = summary["val"].get(name)
    return summary


def fold_scores(summaries: list[dict], cv, split_seed: int) -> dict:
    """summary.json's `cv` (each validation metric: mean, standard deviation over the folds
    with n - 1, per-fold values in fold order) and `cv_setup` (what makes two runs' folds the
    same, and the rows of a fold, for the corrected resampled t-test)."""
    metrics = {}
    for name in summaries[0]["val"]:
        values = [float(s["val"][name]) for s in summaries]
        metrics[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "folds": values,
        }
    setup = {
        "folds": cv.folds,
        "repeats": cv.repeats,
        "split_seed": split_seed,
        "train_rows": summaries[0].get("rows", {}).get("train"),
        "val_rows": summaries[0].get("rows", {}).get("val"),
    }
    return {"cv": metrics, "cv_setup": setup}


def runs_label(folds: int, repeats: int) -> str:
    """'5 folds', or '2 folds x 5' with repeats."""
    return f"{folds} folds" + (f" x {repeats}" if repeats > 1 else "")


def describe(scores: dict) -> str:
    """'5 folds x 2, validation: accuracy 0.9612 ± 0.0123, loss ...' for the log."""
    from dlrun.report import number

    setup = scores["cv_setup"]
    runs = runs_label(setup["folds"], setup["repeats"])
    shown = ", ".join(
        f"{name} {number(m['mean'])} ± {number(m['std'])}" for name, m in scores["cv"].items()
    )
    return f"{runs}, validation: {shown}"


def folds_only_summary(conf, summaries, run_dir: Path) -> dict:
    """summary.json of a run that cross-validated without a refit: no model of its own, no
    test scores; the monitored metric is the mean over the folds (its wall time: the
    caller's, over every fold)."""
    stopping = conf.trainer.early_stopping
    first = summaries[0]
    return {
        "status": "completed",
        "model": conf.model.name,
        "data": conf.data.name,
        "task": first["task"],
        "objective": first["objective"],
        "family": first["family"],
        "monitor": {
            "metric": stopping.monitor,
            "mode": first["monitor"]["mode"],
            "best": None,  # (with_fold_scores: the folds' mean)
        },
        "best_epoch": None,
        "epochs_run": sum(s["epochs_run"] for s in summaries),
        "stopped_early": False,
        "val": {},
        "test": {},
        "params": first["params"],
        "run_dir": str(run_dir),
        "health": [],
    }


def print_cv(summary: dict) -> None:
    """The folds' validation scores on the terminal: mean ± standard deviation, and the range."""
    from rich.console import Console
    from rich.table import Table

    from dlrun.report import number

    setup = summary["cv_setup"]
    runs = runs_label(setup["folds"], setup["repeats"])
    table = Table()
    for column in ("metric", "mean ± std", "min", "max"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in summary["cv"].items():
        table.add_row(
            name,
            f"{number(m['mean'])} ± {number(m['std'])}",
            number(min(m["folds"])),
            number(max(m["folds"])),
        )
    console = Console()
    console.print(f"cross-validation ({runs}), on each fold's validation part:", style="bold")
    console.print(table)
