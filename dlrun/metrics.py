"""The metrics every model family is scored with (scikit-learn), on val and test alike.

Models hand over their outputs as numpy arrays: class probabilities (N, K) for classification,
predictions (N,) or (N, T) for regression. The same function then scores a torch network, a
random forest or XGBoost.
"""

from __future__ import annotations

import numpy as np

METRICS = {
    "classification": ("accuracy", "f1_macro", "loss"),
    "regression": ("rmse", "mae", "r2", "loss"),
}
HIGHER_IS_BETTER = {"accuracy", "f1_macro", "r2", "elbo", "coverage", "diversity"}


def metric_names(task: str) -> tuple[str, ...]:
    return METRICS[task]


def best_mode(metric: str) -> str:
    """'max' for metrics where higher is better, else 'min' (`val_` prefix allowed)."""
    return "max" if metric.removeprefix("val_") in HIGHER_IS_BETTER else "min"


def compute_metrics(
    task: str, y_true: np.ndarray, outputs: np.ndarray, loss: str = "auto"
) -> dict[str, float]:
    """`loss` names the training loss for regression: mse (auto) or l1."""
    from sklearn import metrics as skm

    if task == "classification":
        proba = np.asarray(outputs, dtype=np.float64)
        y_pred = proba.argmax(axis=1)
        return {
            "accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "loss": float(skm.log_loss(y_true, proba, labels=np.arange(proba.shape[1]))),
        }
    pred = np.asarray(outputs, dtype=np.float64).reshape(np.shape(y_true))
    mse = float(skm.mean_squared_error(y_true, pred))
    mae = float(skm.mean_absolute_error(y_true, pred))
    return {
        "rmse": mse**0.5,
        "mae": mae,
        "r2": r2(y_true, pred),
        "loss": mae if loss == "l1" else mse,
    }


def r2(y_true: np.ndarray, pred: np.ndarray) -> float:
    """The coefficient of determination; NaN where it is undefined (a target without variance).

    scikit-learn's default (`force_finite=True`) reports a constant target predicted exactly as a
    perfect 1.0, a score the model did not earn. `dlrun.data.build_data` refuses a regression
    split whose target is constant, so runs never meet the NaN."""
    from sklearn.metrics import r2_score

    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0: the NaN returned below
        value = float(r2_score(y_true, pred, force_finite=False))
    return value if np.isfinite(value) else float("nan")
