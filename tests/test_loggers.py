"""logger=csv, logger=mlflow, logger.also: what each records, read back."""

from __future__ import annotations

import csv
import json
import math

import pytest
from test_sweeps import sweep

from conftest import read_metrics, train


def client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{store}")


def test_csv_logger_writes_every_epoch(tmp_path):
    _, run_dir = train(tmp_path, "trainer.max_epochs=3", "logger=csv")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    records = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_loss"]) for r in rows] == [r["val_loss"] for r in records]
    assert list(rows[0])[:3] == ["epoch", "train_loss", "grad_norm"]


def test_mlflow_records_a_run_with_its_params_metrics_tags_and_artifacts(tmp_path):
    store = tmp_path / "store" / "mlflow.db"
    summary, run_dir = train(
        tmp_path,
        "trainer.max_epochs=3",
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{store}",
        "logger.experiment=tests",
        "logger.also=[csv]",
    )
    mlflow = client(store)
    experiment = mlflow.get_experiment_by_name("tests")
    (found,) = mlflow.search_runs([experiment.experiment_id])
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    assert (
        found.data.params["model.name"] == "mlp" and found.data.params["trainer.max_epochs"] == "3"
    )
    assert found.data.tags["model"] == "mlp" and found.data.tags["status"] == "completed"
    history = mlflow.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == [r["val_loss"] for r in read_metrics(run_dir)]
    assert found.data.metrics["final/test_accuracy"] == summary["test"]["accuracy"]
    artifacts = {a.path for a in mlflow.list_artifacts(run_id)}
    assert {"summary.json", "curves.png", "config.yaml", "checkpoints"} <= artifacts
    assert [a.path for a in mlflow.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert (run_dir / "metrics.csv").is_file()  # logger.also: both loggers wrote


def test_a_tracking_error_is_a_warning_and_the_run_completes(tmp_path, caplog):
    # a folder where the database file should be: the store cannot open
    (tmp_path / "taken.db").mkdir()
    summary, run_dir = train(
        tmp_path,
        "trainer.max_epochs=2",
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'taken.db'}",
    )
    assert summary["status"] == "completed"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert any(
        "logger=mlflow:" in r.message and "the run goes on" in r.message for r in caplog.records
    )


# joblib's parallel jobs are the harder case (one SQLite store, three writers); the in-process
# launcher runs the same code one job at a time: slow suite
@pytest.mark.parametrize("launcher", [pytest.param("basic", marks=pytest.mark.slow), "joblib"])
def test_a_sweep_is_a_parent_run_with_a_child_run_per_job(tmp_path, launcher):
    store = tmp_path / "mlflow.db"
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"] if launcher == "joblib" else []
    result, sweep_dir = sweep(
        tmp_path,
        *extra,
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{store}",
        "model=mlp,linear,random_forest",
        "trainer.max_epochs=2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    mlflow = client(store)
    experiment = mlflow.get_experiment_by_name("train")
    runs = mlflow.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_name.startswith("sweep")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parent) == 1 and len(children) == 3  # parallel jobs into one store lose nothing
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    assert sorted(r.data.tags["model"] for r in children) == ["linear", "mlp", "random_forest"]
    assert all(r.info.status == "FINISHED" for r in runs)
    mlp = next(r for r in children if r.data.tags["model"] == "mlp")
    assert len(mlflow.get_metric_history(mlp.info.run_id, "val_loss")) == 2  # its epochs
    leaderboard = {a.path for a in mlflow.list_artifacts(parent[0].info.run_id)}
    assert {"leaderboard.csv", "best.yaml"} <= leaderboard
    assert all(math.isfinite(r.data.metrics["final/test_accuracy"]) for r in children)


def test_bad_logger_settings(tmp_path):
    from dlrun.errors import ConfigError

    with pytest.raises(ConfigError, match=r"logger.also must list loggers among: csv, mlflow, "):
        train(tmp_path, "logger=csv", "logger.also=[wandb]")
    with pytest.raises(ConfigError, match="logger.also lists a logger twice"):
        train(tmp_path, "logger=csv", "logger.also=[csv]")


@pytest.mark.parametrize("refit", [True, False])
def test_a_cross_validated_runs_folds_are_children_of_its_mlflow_run(tmp_path, refit):
    """One MLflow run per command: the cross-validated run's, with its folds as child runs
    (they used to be separate top-level runs beside the refit's)."""
    store = tmp_path / "store" / "mlflow.db"
    summary, run_dir = train(
        tmp_path,
        "data=iris",
        "trainer.max_epochs=3",
        "data.cv.folds=3",
        f"data.cv.refit={str(refit).lower()}",
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{store}",
        "logger.experiment=cv",
    )
    mlflow = client(store)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("cv").experiment_id])
    parent_key = "mlflow.parentRunId"
    (top,) = [r for r in runs if parent_key not in r.data.tags]
    folds = sorted(
        (r for r in runs if parent_key in r.data.tags), key=lambda r: r.data.tags["mlflow.runName"]
    )
    assert [r.data.tags["mlflow.runName"] for r in folds] == ["fold 1", "fold 2", "fold 3"]
    assert {r.data.tags[parent_key] for r in folds} == {top.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert top.data.tags["mlflow.runName"] == run_dir.name
    assert top.data.metrics["final/val_accuracy"] == pytest.approx(summary["val"]["accuracy"])
    if refit:  # the refit logged its epochs, its params and its test scores into that run
        assert top.data.params["data.cv.folds"] == "3"
        assert top.data.metrics["final/test_accuracy"] == summary["test"]["accuracy"]
        assert (
            len(mlflow.get_metric_history(top.info.run_id, "train_loss")) == summary["epochs_run"]
        )
    else:
        assert "final/test_accuracy" not in top.data.metrics
