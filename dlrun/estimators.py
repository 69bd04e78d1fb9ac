"""Tree models next to the torch networks: the same splits, metrics and run folder; their own
fit. Each estimator file wraps its library in an `Estimator` (fit, predict, save, size)."""

from __future__ import annotations

import abc
import json
import time
from pathlib import Path

import numpy as np

from dlrun.metrics import compute_metrics
from dlrun.training import FitResult


class Estimator(abc.ABC):
    """Adapter around a scikit-learn-style estimator (`self.model`)."""

    def __init__(self, model, spec):
        self.model = model
        self.spec = spec
        self.row_weights = None  # data.sample_weight of the training rows (set before fit)
        self.reporter = None  # a search's dlrun.search.Reporter: per-round metrics (XGBoost)

    def fit(self, splits, conf, run_dir: Path) -> FitResult:
        x, y = splits["train"]
        from dlrun.report import fit_progress
        from dlrun.weights import sample_weights

        weight = sample_weights(conf, self.spec, y, self.row_weights)  # class and row weights
        trees = getattr(self.model, "n_estimators", None)
        started = time.perf_counter()
        with fit_progress(f"fitting {trees} trees" if trees else "fitting"):
            self.model.fit(x, y, **({} if weight is None else {"sample_weight": weight}))
        elapsed = time.perf_counter() - started
        record = {"epoch": 1}
        for name in ("train", "val"):
            xs, ys = splits[name]
            if not len(ys):  # a cross-validated run's refit: no validation rows
                continue
            scores = compute_metrics(self.spec.task, ys, self.predict(xs), conf.trainer.loss)
            record.update({f"{name}_{k}": v for k, v in scores.items()})
        record["fit_time_s"] = elapsed
        write_records(run_dir, [record])
        return FitResult(
            best_epoch=1,
            best_value=None,
            epochs_run=1,
            stopped_early=False,
            train_time_s=elapsed,
            samples_seen=len(y),
            history=[record],
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) for classification, predictions (N,) for regression."""
        if self.spec.task == "regression":
            return self.model.predict(x)
        proba = self.model.predict_proba(x)
        full = np.zeros((len(x), self.spec.num_classes))
        full[:, np.asarray(self.model.classes_, dtype=int)] = proba  # classes absent from train: 0
        return full / full.sum(axis=1, keepdims=True)  # float32 outputs may not sum to exactly 1

    @abc.abstractmethod
    def save(self, ckpt_dir: Path) -> Path:
        """Write the fitted model in a format that runs no code on load; return its path."""

    @abc.abstractmethod
    def load(self, ckpt_dir: Path) -> None:
        """Replace `self.model` by the fitted model saved in `ckpt_dir`."""

    @abc.abstractmethod
    def size(self) -> int:
        """What the model learns, in place of parameters, counted in its registered
        `size_unit`: tree nodes for a tree model, coefficients for a linear one."""


class SkopsEstimator(Estimator):
    """A scikit-learn model saved with skops as checkpoints/model.skops; loading builds only the
    types skops trusts by default and the class's `trusted` ones, and refuses any other."""

    trusted: list[str] = []
    what = "scikit-learn model"  # as the message for a run without one names it

    def save(self, ckpt_dir: Path) -> Path:
        import skops.io

        from dlrun.checkpoints import atomic_write

        path = ckpt_dir / "model.skops"
        atomic_write(path, lambda f: f.write(skops.io.dumps(self.model)))
        return path

    def load(self, ckpt_dir: Path) -> None:
        import skops.io

        from dlrun.errors import UserError, first_line, unreadable

        path = ckpt_dir / "model.skops"
        if not path.is_file():
            raise UserError(f"{path} does not exist: no {self.what} was saved in this run.")
        try:
            self.model = skops.io.load(path, trusted=self.trusted)
        except skops.io.exceptions.UntrustedTypesFoundException as ex:
            raise UserError(
                f"{path} holds types dlrun does not trust; it was not loaded ({ex})."
            ) from None
        except Exception as ex:  # a damaged zip, schema or array fails in any of skops' readers
            raise unreadable(path, first_line(ex)) from None


def write_records(run_dir: Path, records: list[dict]) -> None:
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
