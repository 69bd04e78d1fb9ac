"""Plots of a run and of a sweep (matplotlib, written as PNG files; no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, works on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict], monitor: str, title: str = "", best: int | None = None):
    """Losses (train and val) on the left; on the right the metric a person judges the model by:
    the monitored one unless it is a loss, else the task's first metric (accuracy, rmse), with
    its training value where recorded. `best`: the epoch (or round) the run kept, marked on
    both. Per epoch or per boosting round."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    step = "round" if records and "round" in records[0] else "epoch"
    x = [r[step] for r in records]
    # One quantity on the left axis, train and val: a regression's val_rmse beside its MSE
    # losses was a flat line at the bottom (the units differ). XGBoost's rounds record their
    # eval metric (rmse, mae) instead of a loss.
    curves = [k for k in ("train_loss", "val_loss") if k in records[0]] or [
        k for k in records[0] if k.startswith(("train_", "val_")) and not k.endswith("_time_s")
    ]
    marker = "." if len(x) < 40 else None
    metric = judged_metric(records[0], monitor, curves)
    name = metric.split("_", 1)[1]
    repeats = metric in curves  # nothing but losses recorded (XGBoost's rounds): one panel
    fig, axes = plt.subplots(1, 1 if repeats else 2, figsize=(6 if repeats else 10, 4))
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(axes)
    for key in curves:
        axes[0].plot(x, [r[key] for r in records], label=key, marker=marker)
    unit = curves[0].split("_", 1)[1] if curves else "loss"
    axes[0].set(xlabel=step, ylabel=unit, title=f"{unit} (lower is better)")
    if not repeats:
        for key, color in dict(((f"train_{name}", "tab:blue"), (metric, "tab:orange"))).items():
            if key in records[0]:
                values = [r.get(key, float("nan")) for r in records]
                axes[1].plot(x, values, color=color, label=key, marker=marker)
        better = "higher" if name in HIGHER_IS_BETTER else "lower"
        axes[1].set(xlabel=step, ylabel=name, title=f"{name} ({better} is better)")
    kept = f"best {step} {best}" + (f" (by {monitor})" if monitor in records[0] else "")
    if records and not any(k.startswith("val_") for k in records[0]):
        kept = f"kept: the last {step} (no validation rows)"  # a refit on every non-test row
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best is not None and len(x) > 1:
            ax.axvline(best, color="gray", linestyle="--", linewidth=1, label=kept)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


HIGHER_IS_BETTER = ("accuracy", "f1_macro", "r2", "auc")


def judged_metric(record: dict, monitor: str, losses: list[str]) -> str:
    """The validation metric the right panel shows: the monitored one unless it is a loss
    (then it would repeat the left panel), else accuracy or rmse or any other val_ metric."""
    if monitor in record and not monitor.endswith("_loss") and monitor not in losses:
        return monitor
    for key in ("val_accuracy", "val_rmse", "val_f1_macro", "val_mae", "val_r2"):
        if key in record:
            return key
    if "train_accuracy" in record and not any(k.startswith("val_") for k in record):
        return "train_accuracy"  # a refit on every non-test row: no validation rows
    others = [
        k
        for k in record
        if k.startswith("val_") and k not in losses and not k.endswith(("_loss", "_time_s"))
    ]
    return others[0] if others else (monitor if monitor in record else losses[-1])


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


def save_predictions(run_dir: Path, spec, y_true: np.ndarray, outputs: np.ndarray) -> dict:
    """The pictures of the test split's predictions: for classes the confusion matrix and
    per_class.png (precision, recall and F1 of each class), for a regression predictions.png
    (predicted against true, and the residuals). Returns what summary.json adds: for classes
    `test_per_class`."""
    if spec.task == "regression":
        save(plot_regression(y_true, outputs, spec.name), run_dir / "predictions.png")
        return {}
    save_confusion(run_dir, spec, y_true, outputs)
    per_class = class_scores(y_true, outputs.argmax(axis=1), spec.class_labels)
    if len(per_class) <= MAX_CONFUSION_CLASSES:
        save(plot_per_class(per_class), run_dir / "per_class.png")
    return {"test_per_class": per_class}


def class_scores(y_true, y_pred, names) -> dict[str, dict]:
    """Each class's precision, recall, F1 and support (its test samples), scikit-learn's."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = np.arange(len(names))
    scores = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    keys = ("precision", "recall", "f1", "support")
    return {
        str(name): {
            k: (int(v[i]) if k == "support" else float(v[i]))
            for k, v in zip(keys, scores, strict=True)
        }
        for i, name in enumerate(names)
    }


def plot_per_class(per_class: dict[str, dict]):
    """Precision, recall and F1 of each class as grouped bars, with each class's support."""
    plt = _pyplot()
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4), constrained_layout=True)
    for k, (key, color) in enumerate(
        (("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green"))
    ):
        values = [per_class[n][key] for n in names]
        ax.bar(x + (k - 1) * 0.27, values, width=0.27, color=color, label=key)
    labels = [f"{n}\n(n={per_class[n]['support']})" for n in names]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score (higher is better)", title="test split, per class")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_regression(y_true: np.ndarray, outputs: np.ndarray, name: str):
    """Predicted against true values of the test split (the diagonal is perfect), and the
    residuals (predicted - true) against the predictions; the first target of several."""
    plt = _pyplot()
    true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)[:, 0]
    pred = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)[:, 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    axes[0].scatter(true, pred, s=10, alpha=0.6)
    axes[0].plot([low, high], [low, high], color="gray", linestyle="--", label="predicted = true")
    axes[0].set(xlabel="true", ylabel="predicted", title="predicted against true")
    axes[0].legend()
    residual = pred - true
    axes[1].scatter(pred, residual, s=10, alpha=0.6)
    axes[1].axhline(0, color="gray", linestyle="--")
    rmse = float(np.sqrt(np.mean(residual**2)))
    axes[1].set(xlabel="predicted", ylabel="predicted - true", title=f"residuals (rmse {rmse:.4g})")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: test split ({len(true)} samples)")
    return fig


TOP_FEATURES = 20  # the bars of feature_importance.png (the csv lists every feature)


def save_importance(run_dir: Path, importance, spec, names, how: str = "the model's own") -> None:
    """A tree model's feature importances (scikit-learn's / XGBoost's `feature_importances_`):
    feature_importance.csv (every feature, most important first) and feature_importance.png —
    the top features as bars for a table, a map over the pixels (or steps and features) for
    images and sequences, where one feature alone means little."""
    import csv
    import io

    from dlrun.checkpoints import atomic_write

    importance = np.asarray(importance, dtype=np.float64)
    if names is None or len(names) != len(importance):
        names = [f"feature {i}" for i in range(len(importance))]
    order = np.argsort(-importance, kind="stable")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["feature", "importance"])
    writer.writerows([names[i], f"{importance[i]:.6g}"] for i in order)
    atomic_write(run_dir / "feature_importance.csv", lambda f: f.write(buffer.getvalue()), mode="w")
    save(plot_importance(importance, list(names), spec, how), run_dir / "feature_importance.png")


def plot_importance(importance: np.ndarray, names: list[str], spec, how: str = "the model's own"):
    plt = _pyplot()
    shape = tuple(spec.shape)
    if spec.kind in ("image", "sequence") and int(np.prod(shape)) == len(importance):
        grid = importance.reshape(shape)
        if spec.kind == "image":
            grid = grid.sum(axis=0)  # (H, W): a pixel's importance over its channels
            labels = ("column", "row")
        else:
            grid = grid.T  # (D, T): features down, time along
            labels = ("time step", "feature")
        fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
        shown = ax.imshow(grid, cmap="viridis", aspect="auto" if spec.kind == "sequence" else None)
        fig.colorbar(shown, ax=ax, label="importance")
        ax.set(xlabel=labels[0], ylabel=labels[1], title=f"feature importance ({how})")
        return fig
    top = np.argsort(-importance, kind="stable")[:TOP_FEATURES][::-1]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.3 * len(top)), constrained_layout=True)
    ax.barh(range(len(top)), importance[top], color="tab:blue")
    ax.set_yticks(range(len(top)), [names[i] for i in top], fontsize=8)
    more = f", top {len(top)} of {len(importance)}" if len(importance) > len(top) else ""
    unit = (
        "validation score lost when the feature is shuffled"
        if how == "permutation"
        else f"importance ({how})"
    )
    ax.set(xlabel=unit, title=f"feature importance{more}")
    ax.grid(axis="x", alpha=0.3)
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


def plot_leaderboard(
    names: list[str],
    values: list[float],
    metric: str,
    test=None,
    mode="min",
    spread=None,
    left_out: str = "",
):
    """One group of bars per job, in leaderboard order: the ranking metric on validation and,
    when given, the same metric on the test split; the direction in the title. `spread`
    (cross-validated jobs: (the standard deviation over the folds of each, the folds' count))
    draws each mean's ± std as an error bar. `left_out`: what the title adds about the jobs
    without bars ("3 pruned, 1 failed: not drawn")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 4), constrained_layout=True)
    x = np.arange(len(names))
    width = 0.4 if test is not None else 0.8
    label, errors = metric, None
    if spread is not None:
        errors = [np.nan if s is None else s for s in spread[0]]
        label = f"{metric}: mean ± std of {spread[1]} folds"
    ax.bar(
        x - (width / 2 if test is not None else 0),
        values,
        width,
        label=label,
        yerr=errors,
        capsize=4 if errors is not None else 0,
    )
    if errors is not None and test is None:
        ax.legend(fontsize=8, loc="upper right")
    if test is not None:
        tested = [np.nan if v is None else v for v in test]
        ax.bar(x + width / 2, tested, width, color="tab:orange", label=f"test_{metric[4:]}")
        top = np.nanmax([*values, *tested])
        if np.isfinite(top) and top > 0:
            ax.set_ylim(top=top * 1.18)  # room for the legend above the bars
        ax.legend(fontsize=8, loc="upper right", ncols=2)
    ax.set_xticks(
        x,
        names,
        rotation=30 if len(names) > 3 else 0,
        ha="right" if len(names) > 3 else "center",
        fontsize=8,
    )
    better = "higher" if mode == "max" else "lower"
    name = metric.removeprefix("val_") if test is not None else metric
    title = f"{metric} per job, best first ({better} is better)"
    ax.set(ylabel=name, title=title + (f"\n{left_out}" if left_out else ""))
    ax.grid(axis="y", alpha=0.3)
    return fig


def save(fig, path: Path) -> None:
    """Write a figure atomically (temporary file, then rename) and free it."""
    from dlrun.checkpoints import atomic_write

    plt = _pyplot()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
