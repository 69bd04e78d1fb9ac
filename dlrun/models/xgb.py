"""Gradient-boosted trees (Chen & Guestrin 2016): XGBoost's XGBClassifier / XGBRegressor with the
`hist` tree method, early stopping on the validation split, and the validation metric of every
boosting round in metrics.jsonl. Saved in XGBoost's own UBJSON format."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dlrun.config import ModelConfig, setting
from dlrun.errors import UserError, first_line, unreadable
from dlrun.estimators import Estimator
from dlrun.registry import register_model
from dlrun.report import number
from dlrun.training import FitResult

# XGBoost's evaluation metrics under dlrun's names (its mlogloss is dlrun's classification loss).
METRIC_NAMES = {"mlogloss": "loss", "logloss": "loss", "rmse": "rmse", "mae": "mae"}


@dataclass
class XGBoostConfig(ModelConfig):
    name: str = "xgboost"
    n_estimators: int = setting(500, lo=1)  # boosting rounds at most; early stopping may end sooner
    max_depth: int = setting(6, lo=1)
    learning_rate: float = setting(0.1, lo=0, lo_open=True)
    subsample: float = setting(1.0, lo=0, hi=1, lo_open=True)
    colsample_bytree: float = setting(1.0, lo=0, hi=1, lo_open=True)
    reg_lambda: float = setting(1.0, lo=0)
    min_child_weight: float = setting(1.0, lo=0)
    tree_method: str = setting("hist", choices=("hist", "approx", "exact"))
    n_jobs: Optional[int] = None  # null: every core


class Boosted(Estimator):
    def fit(self, splits, conf, run_dir: Path) -> FitResult:
        (x, y), (xv, yv) = splits["train"], splits["val"]
        if self.spec.task == "classification" and len(np.unique(y)) < self.spec.num_classes:
            raise UserError(
                f"xgboost needs every class in the training split; it has {len(np.unique(y))} of "
                f"{self.spec.num_classes}. Use a larger data.test_split/val_split share or more data."
            )
        from dlrun.report import fit_progress
        from dlrun.weights import sample_weights

        weight = sample_weights(conf, self.spec, y, self.row_weights)  # class and row weights
        started = time.perf_counter()
        total = self.model.n_estimators
        with fit_progress("boosting rounds", total) as update:
            recorder = round_records(run_dir, update, self.reporter)
            self.model.set_params(callbacks=[recorder])
            try:
                # a cross-validated run's refit has no validation rows: its rounds are fixed
                evals = [(x, y), (xv, yv)] if len(yv) else [(x, y)]
                self.model.fit(x, y, sample_weight=weight, eval_set=evals, verbose=False)
            finally:
                self.model.set_params(callbacks=None)
                recorder.close()
        elapsed = time.perf_counter() - started
        records = recorder.records
        rounds = len(records)
        best = getattr(self.model, "best_iteration", None)
        best_round = rounds if best is None else int(best) + 1
        return FitResult(
            best_epoch=best_round,
            best_value=None,
            epochs_run=rounds,
            stopped_early=rounds < self.model.n_estimators,
            train_time_s=elapsed,
            samples_seen=len(y) * rounds,
            history=records,
        )

    def save(self, ckpt_dir: Path) -> Path:
        from dlrun.checkpoints import atomic_write

        path = ckpt_dir / "model.ubj"
        raw = self.model.get_booster().save_raw(raw_format="ubj")
        atomic_write(path, lambda f: f.write(bytes(raw)))
        return path

    def load(self, ckpt_dir: Path) -> None:
        import xgboost

        path = ckpt_dir / "model.ubj"
        if not path.is_file():
            raise UserError(f"{path} does not exist: no XGBoost model was saved in this run.")
        try:
            self.model.load_model(path)
        except xgboost.core.XGBoostError as ex:
            # "[18:24:10] /src/common/json.cc:409: Unknown construct, ...": keep what it says
            raise unreadable(path, re.sub(r"^\[[\d:]+\] \S+: ", "", first_line(ex))) from None

    def size(self) -> int:
        return sum(len(tree.strip().splitlines()) for tree in self.model.get_booster().get_dump())


def round_records(run_dir: Path, update, reporter=None):
    """An XGBoost callback that writes each boosting round's train and validation metric to
    metrics.jsonl as the round ends (a long fit shows its curve while it runs), moves the bar
    of rounds, and gives each round to a search's pruner (`reporter`, which may stop the fit)."""
    from xgboost.callback import TrainingCallback

    class Recorder(TrainingCallback):
        def __init__(self):
            super().__init__()
            self.records, self.file = [], (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
            self.best = math.inf  # the lowest value shown so far (every metric here: lower)

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            (metric,) = evals_log["validation_0"]
            name = METRIC_NAMES[metric]
            record = {"round": epoch + 1}
            for split, key in (("train", "validation_0"), ("val", "validation_1")):
                if key in evals_log:  # no validation_1 without validation rows
                    record[f"{split}_{name}"] = float(evals_log[key][metric][-1])
            self.records.append(record)
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            shown = f"val_{name}" if f"val_{name}" in record else f"train_{name}"
            self.best = min(self.best, record[shown])
            update(epoch + 1, f"{shown} {number(record[shown])}  best {number(self.best)}")
            if reporter is not None:
                reporter.log(record)  # dlrun.search.Pruned ends the fit here
            return False  # go on (early stopping is XGBoost's own)

        def close(self) -> None:
            self.file.close()

    return Recorder()


@register_model("xgboost", schema=XGBoostConfig, takes="flat", family="estimator")
def build_xgboost(
    cfg: XGBoostConfig, spec, *, seed: int, device, patience: Optional[int] = None
) -> Boosted:
    import xgboost

    classify = spec.task == "classification"
    params = dict(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth,
        learning_rate=cfg.learning_rate,
        subsample=cfg.subsample,
        colsample_bytree=cfg.colsample_bytree,
        reg_lambda=cfg.reg_lambda,
        min_child_weight=cfg.min_child_weight,
        tree_method=cfg.tree_method,
        n_jobs=cfg.n_jobs,
        random_state=seed,
        device="cuda" if device.type == "cuda" else "cpu",
        early_stopping_rounds=patience,
    )
    if classify:
        metric = "mlogloss" if spec.num_classes > 2 else "logloss"
        return Boosted(xgboost.XGBClassifier(eval_metric=metric, **params), spec)
    return Boosted(xgboost.XGBRegressor(eval_metric="rmse", **params), spec)
