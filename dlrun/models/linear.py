"""The linear baseline to try first: scikit-learn's LogisticRegression (lbfgs; multinomial for
several classes) for classification, LinearRegression or Ridge for regression. Its inputs are
the data pipeline's, standardized with the training split's statistics (data.normalize), so no
scaler is fitted here. Saved with skops, which loads only the types it is told to trust."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dlrun.config import ModelConfig, setting
from dlrun.estimators import SkopsEstimator
from dlrun.registry import register_model

log = logging.getLogger("dlrun")


@dataclass
class LinearConfig(ModelConfig):
    name: str = "linear"
    # classification: LogisticRegression with an L2 penalty
    C: float = setting(1.0, lo=0, lo_open=True)  # inverse regularization strength
    max_iter: int = setting(1000, lo=1)  # lbfgs iterations at most
    class_weight: Optional[str] = setting(None, choices=("balanced",))
    # regression: 0 is LinearRegression (least squares), > 0 is Ridge(alpha)
    alpha: float = setting(0.0, lo=0)


# Every type in a linear model's file is one skops trusts by default (numpy arrays and
# scikit-learn's linear models): nothing more is trusted, so loading builds nothing else.
TRUSTED_TYPES: list[str] = []


class Linear(SkopsEstimator):
    trusted = TRUSTED_TYPES
    what = "linear model"

    def fit(self, splits, conf, run_dir: Path):
        """The shared fit, with scikit-learn's multi-line ConvergenceWarning said as one line
        that names the setting to change."""
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            result = super().fit(splits, conf, run_dir)
        stalled = False
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                stalled = True
            else:  # anything else is shown as it would have been
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if stalled:
            hint = "" if conf.data.normalize else ", or set data.normalize=true"
            log.warning(
                "linear: lbfgs did not converge in model.max_iter=%d iterations; the model is "
                "kept as it stopped. Raise model.max_iter%s.",
                self.model.max_iter,
                hint,
            )
        return result

    def size(self) -> int:
        """Learned coefficients: the weights (K or 1 rows of F) and the intercepts."""
        return int(np.size(self.model.coef_) + np.size(self.model.intercept_))


@register_model(
    "linear", schema=LinearConfig, takes="flat", family="estimator", size_unit="coefficients"
)
def build_linear(cfg: LinearConfig, spec, *, seed: int, device, patience=None) -> Linear:
    """`device` and `patience` are unused: scikit-learn fits on the CPU, to convergence."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    if spec.task == "classification":
        model = LogisticRegression(
            C=cfg.C,
            solver="lbfgs",
            max_iter=cfg.max_iter,
            class_weight=cfg.class_weight,
            random_state=seed,
        )
    elif cfg.alpha == 0:
        model = LinearRegression()
    else:
        model = Ridge(alpha=cfg.alpha, random_state=seed)
    return Linear(model, spec)
