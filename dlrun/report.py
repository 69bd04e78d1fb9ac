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


TASK_METRICS = ("val_accuracy", "val_rmse")  # the one metric an epoch line shows beside the loss


def number(value: float) -> str:
    """A number as a person reads it: 4 significant digits (0.3980 -> 0.398, 107.214 -> 107.2),
    whole numbers up to 999,999 as they are (13888.32 -> 13888), and anything larger or smaller
    in scientific notation (34692616192.0 -> 3.469e+10)."""
    import math

    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size == 0:
        return "0"
    if 1e-3 <= size < 1e6:
        digits = max(0, 3 - math.floor(math.log10(size)))
        return f"{value:.{digits}f}"
    return f"{value:.3e}"


def epoch_line(record: dict, max_epochs: int, monitor: str) -> str:
    """One line per epoch, within 80 columns (a 100-column terminal with the log's time):
    the training/validation loss, the task's metric on validation, the learning rate, the
    gradient norm and the time (metrics.jsonl has every number)."""
    width = len(str(max_epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{max_epochs}"]
    phases = [k for k in record if k.startswith("train_loss/")]  # several phases: each one's loss
    if phases:
        parts.append(
            "loss " + " ".join(f"{k.split('/', 1)[1]} {number(record[k])}" for k in phases)
        )
    elif "train_loss" in record:
        val = f"/{number(record['val_loss'])}" if "val_loss" in record else ""
        parts.append(f"loss {number(record['train_loss'])}{val}")
    shown = [k for k in TASK_METRICS if k in record]
    if monitor in record and not monitor.endswith("_loss"):  # the metric that picks best.pt
        shown = [monitor]
    parts += [f"{k.removeprefix('val_')} {number(record[k])}" for k in shown]
    if "lr" in record:
        parts.append(f"lr {record['lr']:.3g}")
    if "grad_norm" in record:
        parts.append(f"grad {record['grad_norm']:.3g}")
    seconds = record["epoch_time_s"]
    parts.append(f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.0f}s")
    return "  ".join(parts)


def epoch_legend(record_keys: list[str], monitor: str) -> str:
    """What the epoch lines hold, said once before the first."""
    if not any(k.startswith("val_") for k in record_keys):  # a refit on every non-test row
        return "loss on the training rows (there are no validation rows); * = best.pt"
    loss = "loss train/val" if "val_loss" in record_keys else "loss per phase"
    return f"{loss}, other metrics on validation; * = a new best {monitor} (best.pt)"


STEP_BAR_AFTER_S = 1.0  # an epoch shorter than this shows no bar of its steps
STEP_BAR_EVERY_S = 0.25  # how often the bar of steps is updated (each update reads one number)
STEP_BAR_REFRESH = 4  # redraws a second (rich's default, 10, wakes a thread 10 times a second)


@contextlib.contextmanager
def epoch_progress(max_epochs: int, monitor: str):
    """A rich progress bar over epochs, and inside an epoch that takes more than a second a bar
    of its steps (steps done, samples/s, the running training loss). Yields the callback the
    training loop calls per epoch; its `step` attribute is the one it calls between steps."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        transient=True,
        refresh_per_second=STEP_BAR_REFRESH,
    )
    task = progress.add_task("training", total=max_epochs, status="")
    steps = progress.add_task("  steps", total=1, status="", visible=False)
    said = []

    def on_epoch(record: dict, improved: bool) -> None:
        if not said:
            log.info(epoch_legend(list(record), monitor))
            said.append(True)
        log.info(epoch_line(record, max_epochs, monitor) + ("  *" if improved else ""))
        loss = next(k for k in record if k.startswith("train_loss"))
        status = f"{loss} {number(record[loss])}"
        if monitor in record:  # (a refit on every non-test row has no validation metric)
            status += f"  {monitor} {number(record[monitor])}"
        progress.update(task, advance=1, status=status)
        progress.update(steps, visible=False)

    def on_step(done: int, total: int, samples: int, elapsed: float, loss) -> None:
        """`done` of the epoch's `total` steps have trained `samples` samples in `elapsed`
        seconds; `loss()` reads their mean training loss (one number from the device)."""
        if elapsed < STEP_BAR_AFTER_S:
            return
        status = f"{samples / elapsed:,.0f} samples/s  train_loss {number(loss())}"
        progress.update(steps, completed=done, total=total, status=status, visible=True)

    on_epoch.step = on_step
    on_epoch.every = STEP_BAR_EVERY_S
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
    spent = time.perf_counter() - started
    level = (
        logging.INFO if spent >= BUSY_LOG_AFTER_S else logging.DEBUG
    )  # instant: not worth a line
    log.log(level, "%s: %s in %.1f s", what, f"{total:,}", spent)


BUSY_LOG_AFTER_S = 1.0  # a moment that took longer is named in the log, with its time


@contextlib.contextmanager
def busy(what: str):
    """A moment without items to count (reading a CSV, encoding a table, opening a dataset's
    files): a spinner with the time spent while it lasts, and a log line when it took more
    than a second."""
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), TextColumn(f"[bold]{what}"), TimeElapsedColumn(), transient=True
    )
    progress.add_task(what, total=None)
    started = time.perf_counter()
    with progress:
        yield
    spent = time.perf_counter() - started
    if spent >= BUSY_LOG_AFTER_S:
        log.info("%s: %.1f s", what, spent)


@contextlib.contextmanager
def fit_progress(what: str, total: int | None = None):
    """A rich bar while a tree model fits: its rounds done of `total` (XGBoost), or the time
    spent when the library tells nothing until it is done (a random forest). Yields
    `update(done, status)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn(f"[bold]{what}"), BarColumn()]
    if total is not None:
        columns.append(MofNCompleteColumn())
    columns += [TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    progress = Progress(*columns, transient=True)
    task = progress.add_task(what, total=total, status="")
    with progress:
        yield lambda done, status="": progress.update(task, completed=done, status=status)


def metrics_table(title: str, val: dict, test: dict, val_label: str = "val"):
    """The table a run ends with: each metric on validation and test."""
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("metric")
    table.add_column(val_label, justify="right")
    table.add_column("test", justify="right")
    # (a cross-validated run's refit has no validation scores, its folds no test scores)
    for name in test or val:
        row = [table_number(part[name]) if name in part else "-" for part in (val, test)]
        table.add_row(name, *row)
    return table


def table_number(value: float) -> str:
    """A metric in the final table: 4 decimals, or `number` for values of 100,000 and more."""
    return f"{value:.4f}" if abs(value) < 1e5 else number(value)


def size_unit(model: str, family: str) -> str:
    """What a model's `params` counts: parameters for a network, its own unit for an
    estimator (tree nodes for a tree model, coefficients for the linear model)."""
    from dlrun.registry import MODELS

    entry = MODELS.get(model)
    if entry is not None:
        return entry.size_unit
    return "parameters" if family == "torch" else "tree nodes"


def print_summary(summary: dict, family: str = "torch") -> None:
    """The end of a run on the terminal: what was kept (best epoch or round), the table of
    metrics (its title on its own line, so it never wraps inside the table), health findings,
    and the cost. Estimators (`family` other than torch) count what they learn in their own
    unit (the registry's `size_unit`: tree nodes, coefficients), not parameters."""
    from rich.console import Console

    console = Console()
    heading = f"{summary['model']} on {summary['data']}"
    val_label = "val"
    if "cv" in summary:  # the refit of a cross-validated run: no validation rows of its own
        val_label = "folds' mean"
        rows = summary["rows"]["train"]
        count = f", {summary['epochs_run']} {'epochs' if family == 'torch' else 'rounds'}"
        heading += f": refit on all {rows} rows outside the test split" + (
            count if summary["epochs_run"] > 1 else ""
        )
    elif family != "torch" and summary["epochs_run"] > 1:  # boosting rounds (XGBoost)
        heading += f": best round {summary['best_epoch']} of {summary['epochs_run']}"
    elif family == "torch":
        heading += f": best epoch {summary['best_epoch']} of {summary['epochs_run']}"
    console.print(heading, style="bold", soft_wrap=True)
    console.print(metrics_table("", summary["val"], summary["test"], val_label))
    for finding in summary.get("health", []):
        console.print(f"[yellow]health:[/] {finding['message']}: {finding['advice']}")
    size = f"{summary['params']:,} {size_unit(summary['model'], family)}"
    speed = ""
    if family == "torch":
        speed = f", {summary['samples_per_s']:,.0f} samples/s"
    console.print(
        f"{size}, {summary['wall_time_s']:.1f} s{speed} on {summary['device']}. "
        f"Run folder: {summary['run_dir']}"
    )
