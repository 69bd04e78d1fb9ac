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


def save_confusion(run_dir: Path, spec, y_true: np.ndarray, outputs: np.ndarray) -> None:
    """confusion_matrix.png of the test split, for classes (not drawn beyond
    MAX_CONFUSION_CLASSES: the log says so)."""
    import logging

    if spec.task != "classification":
        return
    if spec.num_classes > MAX_CONFUSION_CLASSES:
        logging.getLogger("dlrun").info(
            "confusion_matrix.png not drawn: %d classes are too many to read (at most %d)",
            spec.num_classes,
            MAX_CONFUSION_CLASSES,
        )
        return
    names = spec.class_labels
    save(plot_confusion(y_true, outputs.argmax(axis=1), names), run_dir / "confusion_matrix.png")


def plot_reconstructions(inputs: np.ndarray, outputs: np.ndarray, title: str):
    """Inputs (top row) above their reconstructions (bottom row), in the input's own scale:
    images (N, C, H, W) as pictures, anything else (N, F) as two heatmaps of the values."""
    plt = _pyplot()
    if inputs.ndim == 4:
        n = len(inputs)
        fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8), constrained_layout=True)
        for row, (images, name) in enumerate(((inputs, "input"), (outputs, "reconstruction"))):
            for k in range(n):
                ax = axes[row, k]
                ax.imshow(_picture(images[k]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(name, fontsize=8)
    else:
        flat_in, flat_out = inputs.reshape(len(inputs), -1), outputs.reshape(len(outputs), -1)
        low, high = (
            float(min(flat_in.min(), flat_out.min())),
            float(max(flat_in.max(), flat_out.max())),
        )
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
        for ax, values, name in (
            (axes[0], flat_in, "inputs"),
            (axes[1], flat_out, "reconstructions"),
        ):
            shown = ax.imshow(values, aspect="auto", cmap="viridis", vmin=low, vmax=high)
            ax.set(xlabel="feature", ylabel="test sample", title=name)
        fig.colorbar(shown, ax=axes, shrink=0.8)
    fig.suptitle(title)
    return fig


def plot_latent(points: np.ndarray, labels, class_names, title: str, axes_names: tuple[str, str]):
    """The test split in a 2-D latent space, coloured by its label (classes) or value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5), constrained_layout=True)
    if class_names is not None:
        cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
        for k, name in enumerate(class_names):
            chosen = labels == k
            if chosen.any():
                ax.scatter(*points[chosen].T, s=9, color=cmap(k % cmap.N), label=str(name))
        ax.legend(title="label", fontsize=7, markerscale=1.5, loc="best")
    else:
        shown = ax.scatter(*points.T, s=9, c=np.asarray(labels).reshape(len(points), -1)[:, 0])
        fig.colorbar(shown, ax=ax, label="target")
    ax.set(xlabel=axes_names[0], ylabel=axes_names[1], title=title)
    ax.grid(alpha=0.3)
    return fig


def plot_real_and_generated(real: np.ndarray, fake: np.ndarray, title: str):
    """Real and generated rows (N, 2) in the same 2-D projection."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5), constrained_layout=True)
    ax.scatter(*real.T, s=12, color="tab:blue", label="test rows")
    ax.scatter(*fake.T, s=12, color="tab:orange", marker="x", label="generated")
    ax.set(xlabel="first principal component", ylabel="second principal component", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_image_grid(images: np.ndarray, title: str):
    """Images (N, C, H, W) with values in [0, 1], in a square grid."""
    plt = _pyplot()
    side = int(np.ceil(np.sqrt(len(images))))
    fig, axes = plt.subplots(side, side, figsize=(0.9 * side + 0.6, 0.9 * side + 0.8))
    for k, ax in enumerate(np.asarray(axes).reshape(-1)):
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(_picture(images[k]), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _picture(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow draws: (H, W) for one channel, (H, W, C) for colour."""
    image = np.clip(image, 0, 1)
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


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
