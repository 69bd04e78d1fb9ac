"""Sweeps through the command line: leaderboards, failures, Optuna, launchers, dlrun-report."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import cli
from dlrun import folders


def run(tmp_path: Path, *args: str, tool: str = "dlrun") -> subprocess.CompletedProcess:
    return cli(*args, cwd=tmp_path, tool=tool)


def sweep(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    sweep_dir = tmp_path / "sweep"
    return run(tmp_path, "-m", *args, f"hydra.sweep.dir={sweep_dir}"), sweep_dir


def leaderboard(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def test_leaderboard_matches_the_jobs_and_lists_the_failures(tmp_path):
    result, sweep_dir = sweep(
        tmp_path, "model=mlp,lenet5", "optim.lr=0.001,1e12", "trainer.max_epochs=2"
    )
    assert result.returncode == 1  # two jobs diverged; the sweep went on
    assert "2 job(s) of the sweep failed" in result.stderr and "Traceback" not in result.stderr
    rows = leaderboard(sweep_dir)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert all(r["error"].startswith("diverged: the training loss became") for r in rows[2:])
    assert {r["overrides"] for r in rows[2:]} == {
        "model=mlp optim.lr=1000000000000.0 trainer.max_epochs=2",
        "model=lenet5 optim.lr=1000000000000.0 trainer.max_epochs=2",
    }
    for row in rows[:2]:
        summary = json.loads((sweep_dir / row["job"] / "summary.json").read_text())
        assert row["model"] == summary["model"]
        assert float(row["val_loss"]) == summary["monitor"]["best"]
        for name, value in summary["test"].items():
            assert float(row[f"test_{name}"]) == value
        assert (
            int(row["epochs_run"]) == summary["epochs_run"]
            and int(row["params"]) == summary["params"]
        )
    assert float(rows[0]["val_loss"]) <= float(rows[1]["val_loss"])  # best first
    assert "leaderboard" in result.stdout and "model=" in result.stdout  # the rich table
    said = " ".join(result.stdout.split())  # (rich wraps long lines)
    assert "job 1 of 4: model=mlp optim.lr=0.001 trainer.max_epochs=2" in said
    assert (
        "job 2 of 4: model=mlp optim.lr=1000000000000.0 trainer.max_epochs=2 (best so far: "
        f"val_loss {float(rows[0 if rows[0]['job'] == '0' else 1]['val_loss']):.4g} (job 0))"
        in said
    )
    md = (sweep_dir / "leaderboard.md").read_text().splitlines()
    assert len(md) == 2 + 4 and md[2].startswith(f"| {rows[0]['job']} |")
    with Image.open(sweep_dir / "leaderboard.png") as image:
        assert image.format == "PNG" and image.size[0] >= 500

    # dlrun-report rebuilds the same leaderboard from the folder (an interrupted sweep, say)
    before = (sweep_dir / "leaderboard.csv").read_text()
    (sweep_dir / "leaderboard.csv").unlink()
    (sweep_dir / "best.yaml").unlink()
    report = run(tmp_path, str(sweep_dir), tool="dlrun-report")
    assert report.returncode == 0
    assert (sweep_dir / "leaderboard.csv").read_text() == before and (
        sweep_dir / "best.yaml"
    ).exists()
    assert run(tmp_path, str(tmp_path / "nothing"), tool="dlrun-report").returncode == 2


@pytest.mark.slow  # (~25 s) tests/test_search.py reruns a search's best trial in the fast suite
def test_optuna_search_and_rerunning_its_best_trial(tmp_path):
    result, sweep_dir = sweep(
        tmp_path,
        "hparams_search=mlp_optuna",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.pruner=none",
        "trainer.max_epochs=2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = leaderboard(sweep_dir)
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    optuna = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert optuna["best_value"] == float(rows[0]["val_loss"])
    assert "best: job" in result.stdout

    again = run(
        tmp_path, "-cd", str(sweep_dir), "-cn", "best", f"hydra.run.dir={tmp_path / 'best'}"
    )
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert summary["monitor"]["best"] == optuna["best_value"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_run_a_sweep(tmp_path, launcher):
    extra = (
        ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    )
    result, sweep_dir = sweep(
        tmp_path, f"hydra/launcher={launcher}", *extra, "model=mlp,gru", "trainer.max_epochs=2"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = leaderboard(sweep_dir)
    assert sorted(r["model"] for r in rows) == ["gru", "mlp"]
    if launcher == "joblib":  # side by side: each job's lines carry its number
        said = " ".join((result.stdout + result.stderr).split())
        assert "[job 1] job 1 of 2: model=mlp" in said and "[job 2] job 2 of 2: model=gru" in said
        assert "[job 2] epoch 1/2" in said
    else:  # the jobs' lines go to files: the sweep says how far they are
        said = " ".join((result.stdout + result.stderr).split())
        assert "sweep: 2 of 2 jobs finished; best so far: val_loss" in said
    assert all(r["status"] == "ok" and math.isfinite(float(r["test_accuracy"])) for r in rows)


def test_the_terminal_leaderboard_fits_and_families_are_ranked_by_accuracy():
    from dlrun.sweep import ranking, terminal_view

    def row(job, model, val, test_acc, val_acc):
        return {
            "job": job,
            "overrides": f"model={model} data=wine trainer.max_epochs=5",
            "status": "ok",
            "model": model,
            "data": "wine",
            "val_loss": val,
            "test_accuracy": test_acc,
            "test_loss": val * 1.1,
            "epochs_run": 5,
            "wall_time_s": 1.23456789,
            "params": 1000,
            "health": "",
            "error": "",
            "_monitor": {"metric": "val_loss", "mode": "min"},
            "_val": {"accuracy": val_acc, "loss": val},
            "_family": "torch" if model == "mlp" else "estimator",
        }

    ok = [
        row("0", "mlp", 0.0812345678901234, 0.9722222222222222, 0.96),
        row("1", "random_forest", 0.2012345, 1.0, 1.0),
        row("2", "xgboost", 0.05, 0.9444, 0.93),
    ]
    ranked, why = ranking(ok, ok[0]["_monitor"])
    assert ranked == {"metric": "val_accuracy", "mode": "max"}
    assert why.startswith("ranked by val_accuracy (higher is better), which every model here")
    ok.sort(key=lambda r: -r["val_accuracy"])
    assert [r["model"] for r in ok] == ["random_forest", "mlp", "xgboost"]
    columns = ["job", "overrides", "status", "model", "data", "val_accuracy", "val_loss"]
    columns += ["test_accuracy", "test_loss", "epochs_run", "wall_time_s", "params", "health"]
    columns += ["error"]
    above, shown, cells = terminal_view(ok, columns, ranked)
    assert above == ["every job: data=wine trainer.max_epochs=5"]
    # the ranking metric and its test twin first; empty, shared and repeated columns left out
    assert shown == ["job", "overrides", "val_accuracy", "test_accuracy", "val_loss", "epochs_run"]
    assert cells[1] == ["0", "model=mlp", "0.96", "0.9722", "0.08123", "5"]
    width = sum(max(len(c), *(len(r[i]) for r in cells)) + 3 for i, c in enumerate(shown))
    assert width <= 100
    # networks alone (mlp, lenet5) share their loss: it ranks them
    same = [row("0", "mlp", 0.2, 0.9, 0.9), row("1", "mlp", 0.1, 0.8, 0.8)]
    same[1]["model"] = "lenet5"
    assert ranking(same, same[0]["_monitor"]) == (same[0]["_monitor"], "")
    # estimators alone (linear, random_forest): their log-losses are not comparable either
    trees = [row("0", "linear", 0.07, 0.97, 0.979), row("1", "random_forest", 0.3, 0.98, 0.986)]
    assert ranking(trees, trees[0]["_monitor"])[0] == {"metric": "val_accuracy", "mode": "max"}
    one = [row("0", "random_forest", 0.3, 0.98, 0.986), row("1", "random_forest", 0.2, 0.9, 0.9)]
    assert ranking(one, one[0]["_monitor"]) == (one[0]["_monitor"], "")


def test_a_sweeps_progress_is_read_from_its_job_folders(tmp_path):
    from dlrun.sweep import progress_line

    def job(name, *, status=None, epochs=0, max_epochs=30, best=None):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
        (folder / ".hydra" / "config.yaml").write_text(f"trainer:\n  max_epochs: {max_epochs}\n")
        lines = [json.dumps({"epoch": e, "val_loss": 1.0 / e}) for e in range(1, epochs + 1)]
        (folder / "metrics.jsonl").write_text("".join(f"{line}\n" for line in lines))
        if status is not None:
            monitor = {"metric": "val_loss", "mode": "min", "best": best}
            (folder / "summary.json").write_text(json.dumps({"status": status, "monitor": monitor}))

    job("0", status="completed", epochs=30, best=0.25)
    job("1", status="failed")
    job("2", status="running", epochs=4)  # a run's summary says running while it trains
    job("3")  # its folder is there, no epoch yet
    job("4", status="completed", epochs=30, best=0.125)
    state, line = progress_line(tmp_path, 6)
    assert line == (
        "3 of 6 jobs finished (1 failed); running: job 2 epoch 4/30, job 3 starting; "
        "best so far: val_loss 0.125 (job 4)"
    )
    assert state == (3, 1, (("2", "epoch 4/30"), ("3", "starting")))
    assert progress_line(tmp_path, None)[1].startswith("3 jobs finished (1 failed); running:")


ROOT = Path(__file__).parent.parent
SEARCHES = sorted(p.stem for p in (ROOT / "configs" / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_each_search_names_its_task_and_searches_keys_its_model_has(search):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dlrun.catalog import load_catalog
    from dlrun.validate import validate

    load_catalog()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train", [f"hparams_search={search}"], return_hydra_config=True)
        again = compose(
            "train", [f"hparams_search={search}", "task_name=mine", "trainer.max_epochs=3"]
        )
    assert cfg.task_name == search  # the search's own task_name, not train.yaml's
    assert search.startswith(cfg.model.name) and cfg.hydra.sweeper.study_name == search
    assert again.task_name == "mine" and again.trainer.max_epochs == 3  # the command line wins
    absent = object()
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key, default=absent) is not absent, key
    del cfg.hydra
    validate(cfg)  # a valid config as the search starts it


def test_sigterm_stops_a_sweep_after_its_running_job(tmp_path):
    """SIGTERM (a cluster's time limit, or Ctrl-C) during job 1 of 3: that job stops cleanly
    and can be resumed, the other two never start, and the leaderboard says so."""
    import signal

    from conftest import BIN, signal_once_recorded

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "data=iris", "optim.lr=0.001,0.002,0.003", "trainer.max_epochs=300"]
    args += ["trainer.early_stopping.patience=null", f"hydra.sweep.dir={sweep_dir}"]
    process = subprocess.Popen(
        [str(BIN / "dlrun"), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    signal_once_recorded(process, sweep_dir / "0" / "metrics.jsonl", 2, signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0"]
    rows = leaderboard(sweep_dir)
    assert [r["status"] for r in rows] == ["interrupted"]
    said = " ".join(out.decode().split())
    assert "1 of its 3 planned jobs ran; the other 2 never started" in said
    assert (sweep_dir / "0" / "checkpoints" / "last.pt").is_file()  # it can be resumed


@pytest.mark.parametrize("signum", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_signal_stops_a_parallel_sweep_and_its_workers(tmp_path, signum):
    """Under joblib the jobs run in worker processes. SIGTERM to the launching process alone (a
    scheduler's `kill`) used to end it at once while its workers trained on, orphaned; Ctrl-C
    killed the workers in the middle of their jobs. Now the running jobs stop cleanly
    (resumable), no job starts after them, the leaderboard is written, and nothing is left."""
    import signal

    from conftest import BIN, signal_once_recorded

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data=iris"]
    args += ["optim.lr=0.001,0.002,0.003,0.004,0.005", "trainer.max_epochs=300"]
    args += ["trainer.early_stopping.patience=null", f"hydra.sweep.dir={sweep_dir}"]
    process = subprocess.Popen(
        [str(BIN / "dlrun"), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    signal_once_recorded(process, sweep_dir / "0" / "metrics.jsonl", 2, signal.Signals[signum])
    out, err = process.communicate(timeout=300)
    code = 128 + signal.Signals[signum]
    assert process.returncode == code, err[-2000:]
    assert err.decode().startswith(f"dlrun: interrupted by {signum}: the sweep stopped")
    assert "Traceback" not in err.decode()
    rows = leaderboard(sweep_dir)
    assert {r["status"] for r in rows} == {"interrupted"} and 1 <= len(rows) <= 2
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == [r["job"] for r in rows]  # the jobs after them never started
    for job in jobs:  # every process is gone: no job writes on
        assert not folders.is_active(sweep_dir / job)
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        assert summary["status"] == "interrupted"
    said = " ".join(out.decode().split())
    assert f"{len(rows)} of its 5 planned jobs ran" in said
    assert (sweep_dir / "0" / "checkpoints" / "last.pt").is_file()  # it can be resumed
