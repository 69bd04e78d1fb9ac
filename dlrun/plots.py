"""Plots of a run and of a sweep (matplotlib, written as PNG files; no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, works on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict], monitor: str):
    """Loss curves (train and val) and the monitored metric, per epoch or per boosting round."""
    plt = _pyplot()
    step = "round" if records and "round" in records[0] else "epoch"
    x = [r[step] for r in records]
    # One quantity on the left axis, train and val: a regression's val_rmse beside its MSE
    # losses was a flat line at the bottom (the units differ). XGBoost's rounds record their
    # eval metric (rmse, mae) instead of a loss.
    curves = [k for k in ("train_loss", "val_loss") if k in records[0]] or [
        k for k in records[0] if k.startswith(("train_", "val_"))
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for key in curves:
        axes[0].plot(x, [r[key] for r in records], label=key, marker="." if len(x) < 40 else None)
    unit = curves[0].split("_", 1)[1] if curves else "loss"
    axes[0].set(xlabel=step, ylabel=unit, title="losses")
    if curves:
        axes[0].legend()
    metric = monitor if monitor in records[0] else curves[-1]
    axes[1].plot(
        x, [r[metric] for r in records], color="tab:green", marker="." if len(x) < 40 else None
    )
    axes[1].set(xlabel=step, ylabel=metric, title=metric)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


# A confusion matrix with more classes than this is unreadable (a 219 x 219 one also took minutes
# to draw): it is not drawn.
MAX_CONFUSION_CLASSES = 30


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names) -> object:
    """Test-set confusion matrix (rows: true class, columns: predicted class)."""
    plt = _pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = np.arange(len(class_names))
    size = min(4 + 0.4 * len(labels), 14)
    fig, ax = plt.subplots(figsize=(size, size), constrained_layout=True)
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, display_labels=list(class_names), ax=ax, colorbar=False
    )
    ax.set_title("test confusion matrix")
    return fig


def plot_leaderboard(names: list[str], values: list[float], metric: str):
    """One bar per job, in leaderboard order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 4), constrained_layout=True)
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=f"{metric} per job")
    ax.grid(axis="y", alpha=0.3)
    return fig


def save(fig, path: Path) -> None:
    """Write a figure atomically (temporary file, then rename) and free it."""
    from dlrun.checkpoints import atomic_write

    plt = _pyplot()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
