"""dlrun's own Optuna sweeper (hydra/sweeper=dlrun_optuna): pruning, a study in the sweep
folder that a rerun continues, parallel trials, trees, best.yaml, clear errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest

from conftest import BIN, cli, signal_once_recorded

SEARCH = ("hparams_search=mlp_optuna", "data=iris", "hydra.sweeper.sampler=random")


def search(
    tmp_path: Path, *args: str, searched: tuple = SEARCH
) -> tuple[subprocess.CompletedProcess, Path]:
    sweep_dir = tmp_path / "search"
    return cli("-m", *searched, *args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path), sweep_dir


def leaderboard(sweep_dir: Path) -> dict[str, dict]:
    with (sweep_dir / "leaderboard.csv").open() as f:
        return {r["job"]: r for r in csv.DictReader(f)}


def study(sweep_dir: Path, name: str = "mlp_optuna"):
    """The study a search keeps in its sweep folder, read back through Optuna's own API."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def test_a_pruned_search_keeps_each_pruned_trials_folder_and_says_so(tmp_path):
    result, sweep_dir = search(
        tmp_path,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruner_startup_trials=1",
        "hydra.sweeper.pruner_warmup_epochs=1",
        "hydra.sweeper.params={optim.lr: 'choice(0.00001, 0.03)'}",
        "trainer.max_epochs=6",
        "trainer.early_stopping.patience=null",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trials = {str(t.number): t for t in study(sweep_dir).trials}
    rows = leaderboard(sweep_dir)
    assert sorted(rows) == sorted(trials) == [str(n) for n in range(6)]
    states = {n: t.state.name for n, t in trials.items()}
    assert "PRUNED" in states.values() and "COMPLETE" in states.values()
    for number, trial in trials.items():
        summary = json.loads((sweep_dir / number / "summary.json").read_text())
        records = (sweep_dir / number / "metrics.jsonl").read_text().splitlines()
        reported = sorted(trial.intermediate_values)
        if trial.state.name == "PRUNED":
            # its folder keeps the epochs it trained, and why it stopped
            assert summary["status"] == "pruned" and rows[number]["status"] == "pruned"
            assert summary["epochs_run"] == len(records) == reported[-1] < 6
            assert "median pruner after epoch" in summary["error"]
            assert (sweep_dir / number / "checkpoints" / "last.pt").is_file()
        else:
            assert summary["status"] == "completed" and rows[number]["status"] == "ok"
            assert reported == list(range(1, 7))  # every epoch's val_loss reached the study
            assert trial.value == summary["monitor"]["best"] == float(rows[number]["val_loss"])
    said = " ".join(result.stdout.split()) + " ".join(result.stderr.split())
    pruned = sum(s == "PRUNED" for s in states.values())
    assert f"6 trials: {6 - pruned} complete, {pruned} pruned" in said
    assert "failed" not in result.stderr


def test_a_killed_search_continues_its_study_when_run_again(tmp_path):
    """Killed (SIGKILL) while its third trial trains: the same command again records that trial
    as failed, keeps the two finished ones, and runs the trials the study lacks, numbered on."""
    args = [
        "-m",
        *SEARCH,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=none",
        "trainer.max_epochs=60",
        "trainer.early_stopping.patience=null",
        f"hydra.sweep.dir={tmp_path / 'search'}",
    ]
    sweep_dir = tmp_path / "search"
    process = subprocess.Popen(
        [str(BIN / "dlrun"), *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (sweep_dir / "2" / "metrics.jsonl").exists() and time.time() < deadline:
        assert process.poll() is None, "the search ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {n: (sweep_dir / n / "summary.json").read_bytes() for n in ("0", "1")}
    assert all(json.loads(text)["status"] == "completed" for text in finished.values())

    again = cli(*args, "trainer.max_epochs=2", cwd=tmp_path)  # (a later epoch count is refused)
    assert again.returncode == 2 and "trainer.max_epochs" in again.stderr
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    said = " ".join(again.stderr.split()) + " ".join(again.stdout.split())
    assert "continues: 3 trials: 2 complete, 1 failed; 2 more trial(s) of 4" in said
    trials = study(sweep_dir).trials
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE", 4: "COMPLETE"}
    drawn = [t.params for t in trials]
    assert all(d not in drawn[:3] for d in drawn[3:])  # not the first run's draws again
    for number, text in finished.items():  # not run again
        assert (sweep_dir / number / "summary.json").read_bytes() == text
    rows = leaderboard(sweep_dir)
    assert rows["2"]["status"] == "interrupted" and rows["4"]["status"] == "ok"
    assert "trial 4 of 4:" in said and "trial 5: hparams_search" in said

    # the study is whole: a third run has nothing left to do and runs nothing
    third = cli(*args, cwd=tmp_path)
    assert third.returncode == 0 and not (sweep_dir / "5").exists()
    assert "0 more trial(s) of 4" in " ".join((third.stderr + third.stdout).split())


def test_sigterm_stops_the_whole_search_and_leaves_it_to_continue(tmp_path):
    """SIGTERM (or Ctrl-C) while a trial trains: that trial stops cleanly and no other starts;
    the leaderboard is written and dlrun exits 143."""
    sweep_dir = tmp_path / "search"
    args = [*SEARCH, "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=none"]
    args += ["trainer.max_epochs=300", "trainer.early_stopping.patience=null"]
    process = subprocess.Popen(
        [str(BIN / "dlrun"), "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    signal_once_recorded(process, sweep_dir / "0" / "metrics.jsonl", 2, signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert "run the same command to continue" in " ".join((out + err).split())
    assert [t.state.name for t in study(sweep_dir).trials] == ["FAIL"]
    assert not (sweep_dir / "1").exists()
    assert leaderboard(sweep_dir)["0"]["status"] == "interrupted"


def test_a_search_under_joblib_runs_its_trials_side_by_side(tmp_path):
    result, sweep_dir = search(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruner_startup_trials=1",
        "trainer.max_epochs=3",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trials = study(sweep_dir).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(leaderboard(sweep_dir)) == ["0", "1", "2", "3", "4"]
    said = " ".join(result.stderr.split()) + " ".join(result.stdout.split())
    assert "5 trials (2 at once)" in said and "[trial 5] trial 5 of 5" in said


def test_xgboost_rounds_feed_the_pruner_and_best_yaml_reruns_the_best_trial(tmp_path):
    result, sweep_dir = search(
        tmp_path,
        "hydra.sweeper.n_trials=4",
        "model.n_estimators=40",
        "hydra.sweeper.pruner_startup_trials=1",
        "model.max_depth=range(2, 6)",  # a sweep on the command line joins the search space
        searched=("hparams_search=xgboost_optuna", "data=wine"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trials = study(sweep_dir, "xgboost_optuna").trials
    for trial in trials:
        summary = json.loads((sweep_dir / str(trial.number) / "summary.json").read_text())
        assert len(trial.intermediate_values) == summary["epochs_run"]  # one value a round
        assert 2 <= trial.params["model.max_depth"] <= 5
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert f"best_trial: {best.number}" in results

    again = cli("-cd", str(sweep_dir), "-cn", "best", "hydra.run.dir=best", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((tmp_path / "best" / "summary.json").read_text())
    original = json.loads((sweep_dir / str(best.number) / "summary.json").read_text())
    assert rerun["monitor"]["best"] == best.value == original["monitor"]["best"]
    assert rerun["test"] == original["test"]


def test_a_multi_objective_search_finds_its_pareto_front(tmp_path):
    result, sweep_dir = search(
        tmp_path,
        "hydra.sweeper.n_trials=3",
        "trainer.max_epochs=2",
        "hydra.sweeper.metrics=[val_accuracy,params]",  # (mlp_optuna's pruner goes off)
        "model.hidden_sizes=choice([16],[64,64])",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = study(sweep_dir)
    assert [d.name for d in found.directions] == ["MAXIMIZE", "MINIMIZE"]
    for trial in found.trials:
        summary = json.loads((sweep_dir / str(trial.number) / "summary.json").read_text())
        assert trial.values == [summary["val"]["accuracy"], summary["params"]]
    said = " ".join((result.stderr + result.stdout).split())
    assert "the Pareto front: trial(s)" in said
    assert "no pruning (Optuna prunes single-objective searches only" in said
    assert all(not t.intermediate_values for t in found.trials)  # the jobs did not report


@pytest.mark.parametrize(
    "args, message",
    [
        (["hydra.sweeper.sampler=annealing"], "hydra.sweeper.sampler: 'annealing' is not a"),
        (["hydra.sweeper.sampler=grid"], "hydra.sweeper.sampler=grid: optim.lr is an interval"),
        (
            ["hydra.sweeper.pruner=median", "hydra.sweeper.metrics=[val_accuracy,params]"],
            "Optuna prunes single-objective searches only",
        ),
        (["hydra.sweeper.metrics=[val_accuracy,test_loss]"], "'test_loss' is not a metric"),
        (["hydra.sweeper.direction=upward"], "'upward' is not a direction"),
    ],
)
def test_bad_search_settings_are_one_clear_message(tmp_path, args, message):
    result, sweep_dir = search(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not sweep_dir.exists()


def test_the_install_has_current_optuna_and_not_hydras_optuna_sweeper():
    assert int(metadata.version("optuna").split(".")[0]) >= 4
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("hydra-optuna-sweeper")
