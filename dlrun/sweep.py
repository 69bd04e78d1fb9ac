"""Sweeps: one leaderboard from the jobs' run folders, and the best job's config to rerun it.

Hydra's callback `dlrun.folders.RunFolders` calls `report` after every `dlrun -m ...`;
`dlrun-report SWEEP_DIR` rebuilds the same files from a sweep folder, for a sweep that was
interrupted.

Written in the sweep folder: leaderboard.csv, leaderboard.md, leaderboard.png (the monitored
metric per job) and best.yaml (rerun the best job: `dlrun -cd SWEEP_DIR -cn best`).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

# Failures found by the last leaderboard built in this process (the CLI's exit code uses it).
LAST_FAILED: list[str] = []


def job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(
        jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def job_row(job: Path) -> dict:
    """One leaderboard row from a job's folder (its overrides and summary.json). `status` is ok,
    failed (an error, a diverging loss), interrupted (stopped or killed: it can be resumed) or
    running (its process still holds the folder)."""
    from dlrun.folders import is_active

    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    shown = [o for o in overrides if not o.startswith(("hydra.", "hparams_search="))]
    row: dict[str, Any] = {"job": job.name, "overrides": " ".join(shown)}
    summary_path = job / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    status = summary.get("status")
    if status in (None, "running"):
        if is_active(job):
            return {**row, "status": "running", "error": "still training"}
        resumable = (job / "checkpoints" / "last.pt").exists()
        return {
            **row,
            "status": "interrupted",
            "error": "killed before it finished"
            + (f"; continue with trainer.resume={job}" if resumable else " (no epoch had ended)"),
        }
    if status != "completed":  # the job's own status (diverged, interrupted, ...) leads the error
        kind = status if status in ("interrupted", "pruned") else "failed"
        kept = {k: summary[k] for k in ("model", "data", "epochs_run") if k in summary}
        return {**row, **kept, "status": kind, "error": f"{status}: {summary.get('error', '')}"}
    row["status"] = "ok"
    monitor = summary["monitor"]
    row.update(
        {"model": summary["model"], "data": summary["data"], monitor["metric"]: monitor["best"]}
    )
    row.update({f"test_{k}": v for k, v in summary["test"].items()})
    row.update({k: summary[k] for k in ("epochs_run", "wall_time_s", "params")})
    row["health"] = ", ".join(f["kind"] for f in summary.get("health", []))
    row["_monitor"] = monitor
    row["_val"] = summary.get("val", {})
    row["_family"] = summary.get("family", "torch")
    if "cv" in summary:  # cross-validated: the folds' mean, its spread and each fold's value
        cv = summary["cv"]
        name = monitor["metric"].removeprefix("val_")
        if name in cv:
            row[monitor["metric"]] = cv[name]["mean"]
            row[f"{monitor['metric']}_std"] = cv[name]["std"]
        row["_val"] = {k: m["mean"] for k, m in cv.items()}
        row["_folds"] = {k: m["folds"] for k, m in cv.items()}
        row["_std"] = {k: m["std"] for k, m in cv.items()}
        row["_cv_setup"] = summary.get("cv_setup", {})
    return row


# What jobs of different model families (networks and trees) are ranked by when they monitor
# their loss (a random forest's log-loss beside networks' cross-entropy ranked the most accurate
# model third): the metric every family has and a person compares on, with its direction.
COMMON_METRICS = (("accuracy", "max"), ("rmse", "min"))


def ranking(ok: list[dict], monitor: dict) -> tuple[dict, str]:
    """(the metric and mode the leaderboard ranks by, a line saying why when it is not the
    monitored one)."""
    models = {r["model"] for r in ok}
    networks_only = all(r["_family"] == "torch" for r in ok)
    if networks_only or len(models) < 2 or not monitor["metric"].endswith("loss"):
        return monitor, ""  # networks alone share their loss, one estimator its own: it ranks
    for name, mode in COMMON_METRICS:
        if all(name in r["_val"] for r in ok):
            metric = f"val_{name}"
            for r in ok:
                r[metric] = r["_val"][name]
                if "_std" in r:
                    r[f"{metric}_std"] = r["_std"][name]
            why = (
                f"ranked by {metric} ({'higher' if mode == 'max' else 'lower'} is better), which "
                f"every model here has: the jobs train {', '.join(sorted(models))}, and "
                f"their {monitor['metric']} is not what you would compare them on"
            )
            return {"metric": metric, "mode": mode}, why
    return monitor, ""


def corrected_t_test(a: list[float], b: list[float], train_rows: int, val_rows: int) -> float:
    """The two-sided p-value of the corrected resampled t-test (Nadeau & Bengio 2003) for the
    per-fold scores `a` and `b` of two models on the same folds: the paired t statistic with the
    variance of the mean inflated by val_rows / train_rows, because folds that share training
    rows are not independent (the plain paired t-test finds differences that are not there)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    if var == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / math.sqrt((1 / n + val_rows / train_rows) * var)
    return float(2 * stats.t.sf(abs(t), n - 1))


NOISE_LEVEL = 0.05  # a p-value below it: the difference is distinguishable from noise


def compare_with_best(ok: list[dict], ranked: dict) -> str:
    """For cross-validated jobs on the same folds, each job's `p_vs_best` (the corrected
    resampled t-test against the best job on the ranking metric), and a line on the top two.
    '' when the jobs were not cross-validated alike."""
    name = ranked["metric"].removeprefix("val_")
    cross = [r for r in ok if name in r.get("_folds", {})]
    if len(cross) < 2 or cross[0] is not ok[0]:
        return ""
    best, setup = ok[0], ok[0]["_cv_setup"]
    same = [r for r in cross[1:] if r["_cv_setup"] == setup]
    if not same or not setup.get("train_rows"):
        return ""
    for r in same:
        r["p_vs_best"] = corrected_t_test(
            best["_folds"][name], r["_folds"][name], setup["train_rows"], setup["val_rows"]
        )
    second = ok[1]
    if "p_vs_best" not in second:
        return ""
    p = second["p_vs_best"]
    runs = setup["folds"] * setup["repeats"]
    verdict = (
        "distinguishable from noise"
        if p < NOISE_LEVEL
        else "within noise: on these folds the two are not told apart"
    )
    return (
        f"job {best['job']} vs job {second['job']} on the same {runs} folds: "
        f"{ranked['metric']} {_fmt(best[ranked['metric']])} vs {_fmt(second[ranked['metric']])}, "
        f"{verdict} (p = {p:.2g}, corrected resampled t-test; p_vs_best in leaderboard.csv)"
    )


def best_so_far(sweep_dir: Path) -> str:
    """The best of the sweep's finished jobs by their monitored metric, as "val_loss 0.1234
    (job 3)"; '' before any job has finished."""
    best = None
    for job in job_dirs(Path(sweep_dir)):
        try:
            summary = json.loads((job / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        if summary.get("status") != "completed":
            continue
        monitor = summary["monitor"]
        value = monitor["best"]
        if value is None or not math.isfinite(value):
            continue
        sign = -1.0 if monitor["mode"] == "max" else 1.0
        if best is None or sign * value < sign * best[0]:
            best = (value, monitor["metric"], job.name)
    if best is None:
        return ""
    return f"{best[1]} {_fmt(float(best[0]))} (job {best[2]})"


def progress_line(sweep_dir: Path, planned: int | None) -> tuple[tuple, str]:
    """Where a sweep's jobs stand, read from their folders: (what changed is compared on,
    "2 of 6 jobs finished (1 failed); running: job 3 epoch 4/30, job 4 starting; best so far:
    ...")."""
    finished, failed, pruned, running = 0, 0, 0, []
    for job in job_dirs(Path(sweep_dir)):
        try:
            status = json.loads((job / "summary.json").read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status not in (None, "running"):
            finished += 1
            pruned += status == "pruned"
            failed += status not in ("completed", "pruned")
            continue
        try:
            last = (job / "metrics.jsonl").read_text().strip().splitlines()[-1]
            epoch = json.loads(last).get("epoch")
        except (OSError, ValueError, IndexError):
            epoch = None
        if epoch is None:
            running.append((job.name, "starting"))
            continue
        try:
            config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
            of = f"/{config['trainer']['max_epochs']}"
        except (OSError, ValueError, KeyError, TypeError):
            of = ""
        running.append((job.name, f"epoch {epoch}{of}"))
    total = f" of {planned}" if planned else ""
    counts = [f"{n} {what}" for n, what in ((pruned, "pruned"), (failed, "failed")) if n]
    line = f"{finished}{total} jobs finished" + (f" ({', '.join(counts)})" if counts else "")
    if running:
        shown = ", ".join(f"job {name} {where}" for name, where in running[:4])
        more = f" and {len(running) - 4} more" if len(running) > 4 else ""
        line += f"; running: {shown}{more}"
    best = best_so_far(sweep_dir)
    if best:
        line += f"; best so far: {best}"
    return (finished, failed, tuple(running)), line


class Watch:
    """While a launcher runs the jobs where their output cannot be seen (submitit writes it to
    files), a line on how far the sweep is: at once when a job finishes, otherwise when a
    running job moved on and `every` seconds passed since the last line."""

    def __init__(self, sweep_dir: Path, planned: int | None, every: float = 15.0):
        import threading

        self.sweep_dir, self.planned, self.every = Path(sweep_dir), planned, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="dlrun-sweep-watch", daemon=True)
        self.last: tuple = (0, 0, ())

    def start(self) -> Watch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def _watch(self) -> None:
        import logging
        import time

        log = logging.getLogger("dlrun")
        said = time.monotonic()
        while not self.stopped.wait(1.0):
            try:
                state, line = progress_line(self.sweep_dir, self.planned)
            except OSError:  # the folder went away: nothing more to tell
                return
            moved = state != self.last
            done_changed = state[:2] != self.last[:2]
            if done_changed or (moved and time.monotonic() - said >= self.every):
                log.info("sweep: %s", line)
                self.last, said = state, time.monotonic()


def report(sweep_dir: Path, *, show: bool = True) -> list[dict]:
    """Build and write the leaderboard of `sweep_dir`; return its rows, best first."""
    from dlrun.checkpoints import atomic_write

    sweep_dir = Path(sweep_dir)
    rows = [job_row(job) for job in job_dirs(sweep_dir)]
    ok = [r for r in rows if r["status"] == "ok"]
    monitor = ok[0]["_monitor"] if ok else {"metric": "val_loss", "mode": "min"}
    ranked, why = ranking(ok, monitor)
    sign = -1.0 if ranked["mode"] == "max" else 1.0
    ok.sort(key=lambda r: sign * r.get(ranked["metric"], math.inf))
    failed = [r for r in rows if r["status"] != "ok"]
    rows = ok + failed
    noise = compare_with_best(ok, ranked)

    columns = ["job", "overrides", "status", "model", "data", monitor["metric"]]
    if ranked != monitor:
        columns.insert(columns.index(monitor["metric"]), ranked["metric"])
    for metric in (ranked["metric"], monitor["metric"]):  # cross-validated: the folds' spread
        if any(f"{metric}_std" in r for r in ok) and f"{metric}_std" not in columns:
            columns.insert(columns.index(metric) + 1, f"{metric}_std")
    if noise:
        columns.insert(columns.index(f"{ranked['metric']}_std") + 1, "p_vs_best")
    columns += sorted({k for r in ok for k in r if k.startswith("test_")})
    columns += ["epochs_run", "wall_time_s", "params", "health", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(sweep_dir / "leaderboard.csv", lambda f: f.write(buffer.getvalue()), mode="w")
    note = unfinished(sweep_dir, len(rows))
    said = "".join(f"> {line}\n\n" for line in (note, why, noise) if line)
    markdown = said + _markdown(rows, columns)
    atomic_write(sweep_dir / "leaderboard.md", lambda f: f.write(markdown), mode="w")
    if ok:
        from dlrun import plots

        _, own_overrides = split_overrides(ok)
        names = [
            f"{r['job']}: {shorten(own)}"[:40] if own else r["job"]
            for r, own in zip(ok, own_overrides, strict=True)
        ]
        metric = ranked["metric"]
        twin = test_twin(metric)
        test = [r.get(twin) for r in ok] if metric.startswith("val_") and twin in columns else None
        spread = None
        if any(f"{metric}_std" in r for r in ok):  # cross-validated: each mean's spread
            runs = {
                r["_cv_setup"]["folds"] * r["_cv_setup"]["repeats"] for r in ok if "_cv_setup" in r
            }
            spread = ([r.get(f"{metric}_std") for r in ok], "/".join(map(str, sorted(runs))))
        counts = collections.Counter(r["status"] for r in failed)
        left_out = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        figure = plots.plot_leaderboard(
            names,
            [r[metric] for r in ok],
            metric,
            test,
            ranked["mode"],
            spread,
            f"not drawn: {left_out}" if left_out else "",
        )
        plots.save(figure, sweep_dir / "leaderboard.png")
        write_best(sweep_dir, ok[0], ranked)
    LAST_FAILED[:] = [r["job"] for r in failed if r["status"] not in ("running", "pruned")]
    if show:
        _print(rows, columns, sweep_dir, [line for line in (note, why, noise) if line], ranked)
    return rows


def unfinished(sweep_dir: Path, ran: int) -> str:
    """A line for a sweep that stopped before all its planned jobs ran ('' when it did not)."""
    from dlrun.folders import SWEEP_MARKER, is_active, sweep_info

    info = sweep_info(sweep_dir)
    if not info or "finished" in info:
        return ""
    planned = info.get("planned")
    if is_active(sweep_dir, SWEEP_MARKER):
        state = "is still running"
    else:
        state = "stopped before its end"
    if planned and ran < planned:
        return (
            f"the sweep {state}: {ran} of its {planned} planned jobs ran; the other "
            f"{planned - ran} never started, so the best is the best of {ran} only."
        )
    return f"the sweep {state}."


def write_best(sweep_dir: Path, best: dict, monitor: dict) -> None:
    """best.yaml: the best job's resolved config as a primary config, with its group choices."""
    from dlrun.checkpoints import atomic_write

    job = sweep_dir / best["job"]
    config = yaml.safe_load((job / "config.yaml").read_text())
    hydra_cfg = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
    choices = hydra_cfg["runtime"]["choices"]
    defaults = ["train"] + [
        {f"override {g}": choices[g]}
        for g in ("model", "optim", "sched", "data", "trainer", "logger")
        if g in choices
    ]
    head = (
        f"# The best job of this sweep (job {best['job']}: {best['overrides']}),\n"
        f"# {monitor['metric']} {best[monitor['metric']]:.6g}. Rerun it with:\n"
        f"#   dlrun -cd {sweep_dir} -cn best\n"
    )
    body = yaml.safe_dump({"defaults": defaults + ["_self_"], **config}, sort_keys=False)
    atomic_write(sweep_dir / "best.yaml", lambda f: f.write(head + body), mode="w")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def split_overrides(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(the overrides every row has, each row's others as text)."""
    tokens = [r["overrides"].split() for r in rows]
    common = [t for t in tokens[0] if all(t in other for other in tokens)] if tokens else []
    return common, [" ".join(t for t in own if t not in common) for own in tokens]


def test_twin(metric: str) -> str:
    """The test split's column of a validation metric (val_accuracy -> test_accuracy)."""
    return f"test_{metric.removeprefix('val_')}"


LONG_NUMBER = re.compile(r"(?<==)-?\d+\.\d{5,}(?:e[-+]?\d+)?|(?<==)-?\d\.\d{5,}e[-+]?\d+")


def shorten(overrides: str) -> str:
    """Overrides as a person reads them: a search's drawn numbers with 4 significant digits
    (optim.lr=0.0008468008575248334 -> optim.lr=0.0008468); the files keep every digit."""
    return LONG_NUMBER.sub(lambda m: f"{float(m.group()):.4g}", overrides)


def terminal_view(rows: list[dict], columns: list[str], ranked: dict):
    """The leaderboard as the terminal shows it, readable at 100 columns: (lines above it,
    columns, rows of text). Overrides every job shares are said once above; the ranking metric
    and the same metric on the test split come first; columns empty in every row are left out;
    numbers keep 4 significant digits. leaderboard.csv/.md keep every column (the other test metrics too)."""
    tokens = [r["overrides"].split() for r in rows]
    common, own_overrides = split_overrides(rows)
    above = [f"every job: {shorten(' '.join(common))}"] if common else []
    same, named = {}, set()
    for key in ("model", "data"):
        values = {r.get(key) for r in rows if r["status"] == "ok"}
        if all(any(t.startswith(f"{key}=") for t in own) for own in tokens):
            named.add(key)  # the overrides name it in every row already
        elif len(values) == 1 and len(rows) > 1:
            same[key] = values.pop()
    if same:
        above.append(", ".join(f"{k}: {v}" for k, v in same.items()))
    matching = test_twin(ranked["metric"])
    tests = [c for c in columns if c.startswith("test_")]
    first = ["job", "overrides", ranked["metric"], *[c for c in tests if c == matching]]
    # the other test metrics stay in the files: the terminal keeps its 100 columns; so do the
    # spreads of cross-validated jobs, shown beside their means ("0.9650 ± 0.0325")
    spreads = {c for c in columns if c.endswith("_std")}
    left_out = {*same, *named, *tests, *spreads, "wall_time_s", "params"}
    rest = [c for c in columns if c not in first and c not in left_out]
    order = first + rest
    text = []
    for r, own in zip(rows, own_overrides, strict=True):
        values = {c: _fmt(r.get(c)) for c in order}
        values["overrides"] = shorten(own)
        if r["status"] == "pruned":  # the files keep the whole sentence
            found = re.search(r"after (?:epoch|round) \d+", r.get("error", ""))
            values["error"] = found.group() if found else "pruned"
        for c in order:
            if r.get(f"{c}_std") is not None:
                values[c] += f" ± {r[f'{c}_std']:.2g}"
        if r.get("p_vs_best") is not None:
            values["p_vs_best"] = f"{r['p_vs_best']:.2g}"
        text.append(values)
    shown = [c for c in order if c == "job" or any(v[c] for v in text)]
    if all(r["status"] == "ok" for r in rows):
        shown = [c for c in shown if c != "status"]
    return above, shown, [[v[c] for c in shown] for v in text]


def _print(
    rows: list[dict], columns: list[str], sweep_dir: Path, notes: list[str], ranked, console=None
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"leaderboard: {sweep_dir}", style="bold", soft_wrap=True)
    above, shown, cells = terminal_view(rows, columns, ranked)
    for line in above:
        console.print(line, soft_wrap=True)
    table = Table()
    for c in shown:
        number = c.startswith(("val_", "test_", "p_"))  # whole, even when overrides must fold
        table.add_column(c, overflow="fold", justify="right" if number else "left", no_wrap=number)
    for r, row_cells in zip(rows, cells, strict=True):
        style = {"ok": None, "pruned": "dim"}.get(r["status"], "red")
        table.add_row(*row_cells, style=style)
    console.print(table)
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    if rows and rows[0]["status"] == "ok":
        console.print(
            f"best: job {rows[0]['job']} ({shorten(rows[0]['overrides'])}); rerun it with "
            f"dlrun -cd {sweep_dir} -cn best"
        )


def main(argv: list[str] | None = None) -> None:
    """`dlrun-report SWEEP_DIR`: rebuild the leaderboard, plot and best.yaml of a sweep folder."""
    try:
        _report_command(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `dlrun-report ... | head -1`: the reader has gone
        from dlrun.errors import stdout_closed

        stdout_closed()


def _report_command(args: list[str]) -> None:
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: dlrun-report SWEEP_DIR   (rebuilds leaderboard.csv/.md/.png and best.yaml)")
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    sweep_dir = Path(args[0])
    if not sweep_dir.is_dir() or not job_dirs(sweep_dir):
        print(
            f"dlrun-report: {sweep_dir} is not a sweep folder (no job folders with .hydra/overrides.yaml).",
            file=sys.stderr,
        )
        sys.exit(2)
    report(sweep_dir)
