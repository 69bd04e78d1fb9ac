"""Experiment loggers beyond the files every run writes (metrics.jsonl, summary.json).

`logger=tensorboard` writes TensorBoard event files into the run folder: every per-epoch (or
per-round) number as a scalar, and the hyperparameters with the final metrics.
`logger=csv` writes metrics.csv into the run folder: one row per epoch (or round), every number
a column, rewritten as each epoch ends.
`logger=mlflow` records the run in an MLflow tracking store (a SQLite file under outputs/ by
default): the flattened config as parameters, every per-epoch number with its step, the final
metrics, tags (model, data, status, health findings) and artifacts (summary.json, the plots,
the best checkpoint). A sweep is a parent run, each job a child run. A tracking error is a
warning: the run goes on, and its own folder stays complete.
`logger.also=[...]` adds other loggers, with their default settings, beside the chosen one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dlrun.config import LoggerConfig, store_schema

log = logging.getLogger("dlrun")

# The MLflow run of a sweep: its id, written by the launching process into the sweep folder,
# read by every job (whatever launcher runs it) to record itself as a child run.
PARENT_FILE = ".dlrun-mlflow-parent"
# A cross-validated run's folds folder holds the same file: the run's own MLflow run, made
# before its folds (their parent), which the refit then logs into (start_cv).
FOLDS = "folds"  # dlrun.crossval.FOLDS


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


@dataclass
class TensorBoardConfig(LoggerConfig):
    name: str = "tensorboard"
    subdir: str = "tensorboard"  # inside the run folder


@dataclass
class CsvLoggerConfig(LoggerConfig):
    name: str = "csv"
    file: str = "metrics.csv"  # inside the run folder


@dataclass
class MLflowConfig(LoggerConfig):
    name: str = "mlflow"
    # where runs are recorded: a database (sqlite:///...), a folder, or a tracking server (http://)
    tracking_uri: str = "sqlite:///outputs/mlflow.db"
    experiment: Optional[str] = None  # null: the run's task_name
    # where a new experiment keeps its artifacts; null: beside a SQLite file (mlflow-artifacts/),
    # else the tracking store's default
    artifact_location: Optional[str] = None
    log_checkpoint: bool = True  # checkpoints/best.pt (or the estimator's model file)


LOGGERS = {
    "none": NoLoggerConfig,
    "tensorboard": TensorBoardConfig,
    "csv": CsvLoggerConfig,
    "mlflow": MLflowConfig,
}


def logger_problems(cfg: LoggerConfig) -> list[str]:
    """logger.also names loggers, other than the chosen one, once each."""
    also = list(cfg.also)
    allowed = sorted(n for n in LOGGERS if n != "none")
    bad = [n for n in also if n not in allowed]
    if bad:
        return [f"logger.also must list loggers among: {', '.join(allowed)}. Got {bad}."]
    if cfg.name in also or len(set(also)) != len(also):
        return [f"logger.also lists a logger twice (with logger={cfg.name}). Got {also}."]
    return []


class NoLogger:
    def log(self, record: dict) -> None:
        pass

    def close(self, config: dict, summary: dict, run_dir: Path) -> None:
        pass

    def stop(self, status: str) -> None:
        pass


class TensorBoardLogger(NoLogger):
    def __init__(self, log_dir: Path):
        from dlrun.errors import UserError, install_hint

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "logger: 'tensorboard' needs the tensorboard package (dlrun's tensorboard "
                f"extra). Install it with: {install_hint('tensorboard')}"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: dict) -> None:
        step = record.get("epoch", record.get("round"))
        for key, value in record.items():
            if key not in ("epoch", "round"):
                self.writer.add_scalar(key.replace("_", "/", 1), value, step)

    def close(self, config: dict, summary: dict, run_dir: Path) -> None:
        hparams = {
            k: v for k, v in _flatten(config).items() if isinstance(v, (int, float, str, bool))
        }
        final = {
            f"hparam/{split}_{k}": v for split in ("val", "test") for k, v in summary[split].items()
        }
        self.writer.add_hparams(hparams, final, run_name=".")
        self.writer.close()

    def stop(self, status: str) -> None:
        self.writer.close()


class CsvLogger(NoLogger):
    """metrics.csv: the run's records so far (a resumed run's earlier epochs first), one row
    each, the columns in the order they first appear."""

    def __init__(self, path: Path):
        from dlrun.training import read_records

        self.path = path
        self.records = read_records(path.parent)  # a resumed run's epochs, as metrics.jsonl

    def log(self, record: dict) -> None:
        import csv
        import io

        from dlrun.checkpoints import atomic_write

        step = record.get("epoch", record.get("round"))
        self.records = [r for r in self.records if r.get("epoch", r.get("round")) != step]
        self.records.append(record)
        columns = list(dict.fromkeys(k for r in self.records for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write(self.path, lambda f: f.write(text.getvalue()), mode="w")


class MLflowLogger(NoLogger):
    """One MLflow run (a child of its sweep's run, in a sweep), written through MlflowClient;
    every call retried while a SQLite store is locked by another job, and any failure a
    warning after which the logger stays quiet."""

    def __init__(self, cfg: MLflowConfig, run_dir: Path, task_name: str):
        self.client, self.run_id, self.cfg = None, None, cfg
        self.step = 0
        require_mlflow()  # a missing package is a clear error, before training
        self.guarded(self._start, run_dir, task_name)

    def _start(self, run_dir: Path, task_name: str) -> None:
        client = open_client(self.cfg)
        own = run_dir / FOLDS / PARENT_FILE
        if own.is_file():  # the refit of a cross-validated run: the run its folds are under
            self.client, self.run_id = client, own.read_text().strip()
            return
        experiment = experiment_id(client, self.cfg, task_name)
        run = retried(client.create_run, experiment, tags=run_tags(run_dir))
        self.client, self.run_id = client, run.info.run_id

    def guarded(self, call, *args) -> None:
        try:
            call(*args)
        except Exception as ex:  # tracking never stops a run: its folder has everything
            first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
            log.warning(
                "logger=mlflow: %s (%s); the run goes on, and its folder keeps every result",
                first,
                self.cfg.tracking_uri,
            )
            self.client = None

    def log(self, record: dict) -> None:
        if self.client is not None:
            self.guarded(self._log, record)

    def _log(self, record: dict) -> None:
        from mlflow.entities import Metric

        step = int(record.get("epoch", record.get("round", self.step + 1)))
        self.step = step
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, step)
            for k, v in record.items()
            if k not in ("epoch", "round") and isinstance(v, (int, float))
        ]
        retried(self.client.log_batch, self.run_id, metrics=metrics)

    def close(self, config: dict, summary: dict, run_dir: Path) -> None:
        if self.client is not None:
            self.guarded(self._close, config, summary, run_dir)

    def _close(self, config: dict, summary: dict, run_dir: Path) -> None:
        from mlflow.entities import Metric, Param, RunTag

        params = [Param(k[:250], str(v)[:6000]) for k, v in _flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes 100 parameters a batch
            retried(self.client.log_batch, self.run_id, params=params[start : start + 100])
        now = int(time.time() * 1000)
        finals = [
            Metric(f"final/{split}_{k}", float(v), now, self.step)
            for split in ("val", "test")
            for k, v in summary.get(split, {}).items()
        ]
        tags = [
            RunTag("model", str(summary["model"])),
            RunTag("data", str(summary["data"])),
            RunTag("status", str(summary["status"])),
            RunTag("health", ", ".join(f["kind"] for f in summary.get("health", [])) or "none"),
        ]
        retried(self.client.log_batch, self.run_id, metrics=finals, tags=tags)
        for name in ("summary.json", "config.yaml", *sorted(p.name for p in run_dir.glob("*.png"))):
            if (run_dir / name).is_file():
                retried(self.client.log_artifact, self.run_id, str(run_dir / name))
        if self.cfg.log_checkpoint:
            for name in ("best.pt", "model.skops", "model.ubj"):
                path = run_dir / "checkpoints" / name
                if path.is_file():
                    retried(self.client.log_artifact, self.run_id, str(path), "checkpoints")
        retried(self.client.set_terminated, self.run_id, "FINISHED")
        self.client = None

    def stop(self, status: str) -> None:
        """The run stopped early: interrupted (KILLED) or failed (FAILED)."""
        if self.client is not None:
            state = "KILLED" if status == "interrupted" else "FAILED"
            self.guarded(self._stop, status, state)

    def _stop(self, status: str, state: str) -> None:
        from mlflow.entities import RunTag

        retried(self.client.log_batch, self.run_id, tags=[RunTag("status", status)])
        retried(self.client.set_terminated, self.run_id, state)
        self.client = None


class Loggers(NoLogger):
    """The chosen logger and those of logger.also, each told everything."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self, config: dict, summary: dict, run_dir: Path) -> None:
        for logger in self.loggers:
            logger.close(config, summary, run_dir)

    def stop(self, status: str) -> None:
        for logger in self.loggers:
            logger.stop(status)


def require_mlflow() -> None:
    """A UserError naming the install command when MLflow is not installed."""
    from dlrun.errors import UserError, install_hint

    try:
        import mlflow.tracking  # noqa: F401
    except ImportError:
        raise UserError(
            "logger: 'mlflow' needs the mlflow package (dlrun's mlflow extra). Install it with: "
            f"{install_hint('mlflow')}"
        ) from None


def open_client(cfg: MLflowConfig):
    """An MlflowClient on the tracking store (a SQLite file's folder is made first)."""
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # their notes on making the store's tables: not ours
        logging.getLogger(name).setLevel(logging.WARNING)
    database = sqlite_path(cfg.tracking_uri)
    if database is not None:
        import sqlite3

        database.parent.mkdir(parents=True, exist_ok=True)
        # opened once here: MLflow itself retries a store it cannot open for minutes
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
            connection.execute("pragma schema_version").fetchone()
    return MlflowClient(tracking_uri=cfg.tracking_uri)


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// tracking URI (relative to the current folder), or None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :].split("?")[0]) if uri.startswith(prefix) else None


def experiment_id(client, cfg: MLflowConfig, task_name: str) -> str:
    """The experiment (logger.experiment, or the task's name), made when it is new."""
    name = cfg.experiment or task_name
    found = retried(client.get_experiment_by_name, name)
    if found is not None:
        return found.experiment_id
    location = cfg.artifact_location
    database = sqlite_path(cfg.tracking_uri)
    if location is None and database is not None:
        location = (database.parent / "mlflow-artifacts").absolute().as_uri()
    try:
        return retried(client.create_experiment, name, artifact_location=location)
    except Exception:  # another job made it first
        found = retried(client.get_experiment_by_name, name)
        if found is None:
            raise
        return found.experiment_id


def retried(call, *args, tries: int = 8, **kwargs):
    """`call`, again while a SQLite store is locked by another process (0.1 s, doubling)."""
    for attempt in range(tries):
        try:
            return call(*args, **kwargs)
        except Exception as ex:
            if "locked" not in str(ex) or attempt == tries - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    return None


def run_tags(run_dir: Path) -> dict:
    """A run's MLflow tags: its name, its folder, and its parent run (its sweep's, or for a fold
    its cross-validated run's) when there is one."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    tags = {MLFLOW_RUN_NAME: run_dir.name, "dlrun.run_dir": str(run_dir.absolute())}
    parent = run_dir.parent / PARENT_FILE
    if parent.is_file():
        tags[MLFLOW_PARENT_RUN_ID] = parent.read_text().strip()
        what = "fold" if run_dir.parent.name == FOLDS else "job"
        tags[MLFLOW_RUN_NAME] = f"{what} {run_dir.name}"
    return tags


def start_cv(config, run_dir: Path) -> None:
    """A cross-validated run that logs to MLflow: its own run, made (as any run's logger makes
    one) before its folds so that they record themselves as its children; the refit logs into
    it, or end_cv closes it with the folds' scores. A resumed run keeps the run it had."""
    cfg = mlflow_config(config.logger)
    marker = run_dir / FOLDS / PARENT_FILE
    if cfg is None or marker.is_file():
        return
    run_id = MLflowLogger(cfg, run_dir, str(config.task_name)).run_id  # (None: a warning said why)
    if run_id is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(run_id + "\n")


def end_cv(config, run_dir: Path, summary: dict) -> None:
    """A cross-validated run without a refit: its MLflow run is closed as a run's logger closes
    it (the config, the folds' means as `final/val_*`, the tags, summary.json), by a logger
    that takes that run on (the refit's own logger closes it otherwise)."""
    from omegaconf import OmegaConf

    cfg = mlflow_config(config.logger)
    if cfg is None or not (run_dir / FOLDS / PARENT_FILE).is_file():
        return
    logger = MLflowLogger(cfg, run_dir, str(config.task_name))
    logger.close(OmegaConf.to_container(config, resolve=True), summary, run_dir)


def start_sweep(config, sweep_dir: Path) -> None:
    """A sweep that logs to MLflow: its parent run, whose id its jobs read from the sweep
    folder. Made by the launching process before any job starts."""
    cfg = mlflow_config(config.logger)
    if cfg is None:
        return
    try:
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
    except ImportError:  # each job says how to install it
        return
    try:
        client = open_client(cfg)
        experiment = experiment_id(client, cfg, str(config.task_name))
        tags = {MLFLOW_RUN_NAME: f"sweep {sweep_dir.name}", "dlrun.sweep_dir": str(sweep_dir)}
        run = retried(client.create_run, experiment, tags=tags)
        (sweep_dir / PARENT_FILE).write_text(run.info.run_id + "\n")
    except Exception as ex:
        log.warning("logger=mlflow: the sweep's run was not made (%s); its jobs go on", ex)


def end_sweep(config, sweep_dir: Path) -> None:
    """The sweep's parent run ends with its leaderboard as an artifact."""
    cfg = mlflow_config(config.logger)
    parent = sweep_dir / PARENT_FILE
    if cfg is None or not parent.is_file():
        return
    try:
        client = open_client(cfg)
        run_id = parent.read_text().strip()
        for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png", "best.yaml"):
            if (sweep_dir / name).is_file():
                retried(client.log_artifact, run_id, str(sweep_dir / name))
        retried(client.set_terminated, run_id, "FINISHED")
    except Exception as ex:
        log.warning("logger=mlflow: the sweep's run was not closed (%s)", ex)


def mlflow_config(cfg) -> MLflowConfig | None:
    """The MLflow settings of a logger node (chosen, or in logger.also), or None."""
    from omegaconf import OmegaConf

    if cfg is None:
        return None
    if cfg.name == "mlflow":
        return OmegaConf.to_object(cfg)  # the structured node: an MLflowConfig
    if "mlflow" in list(cfg.get("also", [])):
        return MLflowConfig()
    return None


def open_logger(cfg: LoggerConfig | None, run_dir: Path, task_name: str = "train"):
    """The configured loggers (None: none, as on every rank but the first under torchrun)."""
    if cfg is None:
        return NoLogger()
    chosen = [cfg] + [LOGGERS[name]() for name in getattr(cfg, "also", [])]
    loggers = []
    for each in chosen:
        if each.name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir / each.subdir))
        elif each.name == "csv":
            loggers.append(CsvLogger(run_dir / each.file))
        elif each.name == "mlflow":
            loggers.append(MLflowLogger(each, run_dir, task_name))
    if not loggers:
        return NoLogger()
    return loggers[0] if len(loggers) == 1 else Loggers(loggers)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def store_schemas() -> None:
    for name, schema in LOGGERS.items():
        store_schema("logger", name, schema)
