"""What the terminal shows: a rich progress bar while training, a table of metrics at the end,
and the plain `train.log` in the run folder."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger("dlrun")

LOG_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"


@contextlib.contextmanager
def run_log(run_dir: Path):
    """Send dlrun's log records to `run_dir/train.log` for the duration of a run."""
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        handler.close()


CONSOLE_KEYS = ("train_loss", "val_loss", "val_accuracy", "val_rmse", "lr", "grad_norm")


def epoch_line(record: dict, max_epochs: int, monitor: str) -> str:
    """One line per epoch: the main numbers (metrics.jsonl has them all)."""
    keys = [k for k in CONSOLE_KEYS if k in record]
    phases = [k for k in record if k.startswith("train_loss/")]  # several phases: each one's loss
    keys = phases + keys if phases else keys
    if monitor not in keys:
        keys.insert(min(2, len(keys)), monitor)
    parts = [f"epoch {record['epoch']}/{max_epochs}"]
    parts += [
        f"{k} {record[k]:.3g}" if k in ("lr", "grad_norm") else f"{k} {record[k]:.4f}" for k in keys
    ]
    parts.append(f"{record['epoch_time_s']:.2f}s")
    return "  ".join(parts)


@contextlib.contextmanager
def epoch_progress(max_epochs: int, monitor: str):
    """A rich progress bar over epochs; yields the callback the training loop calls per epoch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        transient=True,
    )
    task = progress.add_task("epochs", total=max_epochs, status="")

    def on_epoch(record: dict, improved: bool) -> None:
        log.info(epoch_line(record, max_epochs, monitor) + ("  *" if improved else ""))
        loss = next(k for k in record if k.startswith("train_loss"))
        status = f"{loss} {record[loss]:.4f}  {monitor} {record[monitor]:.4f}"
        progress.update(task, advance=1, status=status)

    with progress:
        yield on_epoch


@contextlib.contextmanager
def item_progress(what: str, total: int):
    """A rich progress bar over `total` items (files read, rows encoded) while data loads;
    yields `advance(n=1)`. The log then says how long it took."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    task = progress.add_task(what, total=total)
    started = time.perf_counter()
    with progress:
        yield lambda n=1: progress.advance(task, n)
    log.info("%s: %s in %.1f s", what, f"{total:,}", time.perf_counter() - started)


def metrics_table(title: str, val: dict, test: dict):
    """The table a run ends with: each metric on validation and test."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    for name in test:
        table.add_row(name, f"{val[name]:.4f}", f"{test[name]:.4f}")
    return table


def print_summary(summary: dict) -> None:
    from rich.console import Console

    title = (
        f"{summary['model']} on {summary['data']}: best epoch {summary['best_epoch']}"
        f" of {summary['epochs_run']}"
    )
    console = Console()
    console.print(metrics_table(title, summary["val"], summary["test"]))
    for finding in summary.get("health", []):
        console.print(f"[yellow]health:[/] {finding['message']}: {finding['advice']}")
    console.print(
        f"{summary['params']:,} parameters, {summary['wall_time_s']:.1f} s, "
        f"{summary['samples_per_s']:,.0f} samples/s on {summary['device']}. "
        f"Run folder: {summary['run_dir']}"
    )
