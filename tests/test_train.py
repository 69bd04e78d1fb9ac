"""Training runs on the bundled digits: the numbers they reach and the run folder they leave."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml

from conftest import read_metrics, train
from dlrun.errors import ConfigError, TrainingError, UserError
from dlrun.optim import OPTIMIZERS

EPOCH_KEYS = {
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_f1_macro",
    "lr",
    "grad_norm",
    "grad_norm_max",
    "epoch_time_s",
    "train_time_s",
}


def without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]


def test_default_run_reaches_95_percent_and_writes_its_folder(tmp_path):
    summary, run_dir = train(tmp_path)
    assert summary["test"]["accuracy"] >= 0.95
    assert summary["status"] == "completed" and summary["model"] == "mlp"

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert set(on_disk["val"]) == set(on_disk["test"]) == {"accuracy", "f1_macro", "loss"}
    assert on_disk["params"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert on_disk["epochs_run"] == len(read_metrics(run_dir)) <= 30
    assert 1 <= on_disk["best_epoch"] <= on_disk["epochs_run"]
    assert (
        on_disk["wall_time_s"] > 0 and on_disk["samples_per_s"] > 0 and on_disk["device"] == "cpu"
    )
    assert set(on_disk["versions"]) >= {"python", "torch", "dlrun"}

    records = read_metrics(run_dir)
    assert all(
        EPOCH_KEYS <= set(r) and all(k.startswith("health/") for k in set(r) - EPOCH_KEYS)
        for r in records
    )
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    best = min(records, key=lambda r: r["val_loss"])
    assert best["epoch"] == on_disk["best_epoch"]
    assert on_disk["monitor"] == {"metric": "val_loss", "mode": "min", "best": best["val_loss"]}

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "mlp" and config["trainer"]["seed"] == 42  # resolved
    assert config["data"]["split_seed"] == 42

    log_lines = (run_dir / "train.log").read_text().splitlines()
    assert sum("epoch " in line for line in log_lines) >= len(records)


def test_checkpoints_are_complete_and_best_reproduces_the_test_metrics(tmp_path):
    summary, run_dir = train(tmp_path, "trainer.max_epochs=6")
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 6 and best["epoch"] == summary["best_epoch"]
    for ckpt in (last, best):
        assert set(ckpt) >= {
            "model",
            "optimizers",
            "schedulers",
            "scaler",
            "epoch",
            "rng",
            "config",
            "early_stopping",
            "history",
        }
        assert set(ckpt["optimizers"]) == {"main"} and ckpt["optimizers"]["main"]["state"]
        assert len(ckpt["history"]) == ckpt["epoch"]
        assert ckpt["config"]["model"]["name"] == "mlp"
        assert set(ckpt["rng"]) >= {"torch", "shuffle", "python"}

    from omegaconf import OmegaConf

    from conftest import make_cfg
    from dlrun.data import adapt, build_data
    from dlrun.metrics import compute_metrics
    from dlrun.models.mlp import MLPConfig, build_mlp
    from dlrun.training import predict

    conf = OmegaConf.to_object(make_cfg())
    data = build_data(conf.data)
    model = build_mlp(MLPConfig(), data.spec.view("flat"))
    model.load_state_dict(best["model"])
    x = torch.as_tensor(adapt(data.x_test, data.spec, "flat"))
    assert (
        compute_metrics("classification", data.y_test, predict(model, x, "classification"))
        == summary["test"]
    )


def test_lenet5_with_adam_reaches_97_percent(tmp_path):
    summary, _ = train(tmp_path, "model=lenet5", "optim=adam")
    assert summary["test"]["accuracy"] >= 0.97
    assert summary["params"] == 61_706  # the paper's layer sizes on 1x32x32 input, 10 classes


@pytest.mark.parametrize("optim", sorted(OPTIMIZERS))
def test_every_optimizer_lowers_the_validation_loss(tmp_path, optim):
    _, run_dir = train(tmp_path, f"optim={optim}", "trainer.max_epochs=8")
    records = read_metrics(run_dir)
    assert records[-1]["val_loss"] < records[0]["val_loss"]


def test_same_seed_same_metrics_and_another_seed_differs(tmp_path):
    args = ("model=lenet5", "trainer.max_epochs=3")
    first, a = train(tmp_path, *args, name="a")
    second, b = train(tmp_path, *args, name="b")
    other, c = train(tmp_path, *args, "seed=7", name="c")
    assert without_times(read_metrics(a)) == without_times(read_metrics(b))
    assert first["test"] == second["test"] and first["val"] == second["val"]
    assert without_times(read_metrics(a)) != without_times(read_metrics(c))


def test_clipping_by_norm_records_the_norm_before_clipping_and_still_learns(tmp_path):
    clipped, c = train(tmp_path, "trainer.max_epochs=10", "trainer.clip.max_norm=0.1", name="clip")
    records = read_metrics(c)
    assert all(r["grad_norm"] > 0.1 for r in records)  # pre-clip norms, not the clipped 0.1
    assert all(0.0 < r["clip_frac"] <= 1.0 for r in records)  # share of steps clipping changed
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert clipped["test"]["accuracy"] >= 0.9


def test_clipping_changes_the_updates(tmp_path):
    _, plain = train(tmp_path, "trainer.max_epochs=2", "optim=sgd", name="plain")
    _, by_norm = train(
        tmp_path, "trainer.max_epochs=2", "optim=sgd", "trainer.clip.max_norm=0.1", name="n"
    )
    _, by_value = train(
        tmp_path, "trainer.max_epochs=2", "optim=sgd", "trainer.clip.value=0.001", name="v"
    )
    losses = [read_metrics(d)[-1]["train_loss"] for d in (plain, by_norm, by_value)]
    assert losses[0] < losses[1] and losses[0] < losses[2]  # smaller steps, slower progress


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch(tmp_path):
    summary, run_dir = train(
        tmp_path,
        "trainer.max_epochs=60",
        "trainer.early_stopping.patience=2",
        "optim.lr=0.01",
    )
    records = read_metrics(run_dir)
    assert summary["stopped_early"] and summary["epochs_run"] < 60
    assert summary["epochs_run"] == summary["best_epoch"] + 2
    assert summary["best_epoch"] == min(records, key=lambda r: r["val_loss"])["epoch"]


def test_monitoring_accuracy_keeps_the_highest(tmp_path):
    summary, run_dir = train(
        tmp_path, "trainer.max_epochs=5", "trainer.early_stopping.monitor=val_accuracy"
    )
    accuracies = [r["val_accuracy"] for r in read_metrics(run_dir)]
    assert summary["monitor"]["mode"] == "max" and summary["monitor"]["best"] == max(accuracies)
    assert summary["best_epoch"] == accuracies.index(max(accuracies)) + 1


@pytest.mark.parametrize(
    "sched, expect",
    [
        ("step", lambda lrs: lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])),
        (
            "cosine",
            lambda lrs: lrs[0] == 1e-3 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 3e-4,
        ),
        ("onecycle", lambda lrs: lrs[0] < lrs[1]),
        ("none", lambda lrs: lrs == [1e-3] * 4),
    ],
)
def test_schedulers_move_the_learning_rate(tmp_path, sched, expect):
    extra = ["sched.step_size=1", "sched.gamma=0.5"] if sched == "step" else []
    _, run_dir = train(tmp_path, f"sched={sched}", "trainer.max_epochs=4", *extra)
    assert expect([r["lr"] for r in read_metrics(run_dir)])


def test_plateau_cuts_the_rate_when_the_monitor_stalls(tmp_path):
    _, run_dir = train(
        tmp_path,
        "sched=plateau",
        "sched.patience=0",
        "sched.factor=0.5",
        "optim.lr=0.05",
        "trainer.max_epochs=12",
        "trainer.early_stopping.patience=null",
    )
    lrs = [r["lr"] for r in read_metrics(run_dir)]
    assert lrs[0] == 0.05 and min(lrs) < 0.05


def test_bf16_autocast_on_cpu_learns(tmp_path):
    summary, _ = train(tmp_path, "trainer.precision=bf16", "trainer.max_epochs=5")
    assert summary["test"]["accuracy"] >= 0.85


def test_data_splits_are_stratified_disjoint_and_normalized_on_train_only():
    from omegaconf import OmegaConf

    from conftest import make_cfg
    from dlrun.data import build_data

    data = build_data(OmegaConf.to_object(make_cfg()).data)
    assert data.sizes() == {"train": 1293, "val": 144, "test": 360}
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_test.mean())) > 1e-4
    for split in ("val", "test"):
        counts = [(getattr(data, f"y_{split}") == k).mean() for k in range(10)]
        assert max(counts) - min(counts) < 0.02  # each class ~10% of every split
    rows = {x.tobytes() for x in data.x_train}
    assert not rows & {x.tobytes() for x in data.x_test}


def test_a_diverging_run_stops_with_a_clear_message(tmp_path):
    with pytest.raises(
        TrainingError,
        match=r"the training loss became (nan|inf) in epoch 1, step \d+ of 41\. Likely causes",
    ):
        train(tmp_path, "optim=sgd", "optim.lr=1e12", "trainer.max_epochs=3")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_validation_reports_every_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(
            tmp_path, "trainer.clip.max_norm=-1", "optim.betas=[0.9]", "sched=step", "sched.gamma=2"
        )
    assert err.value.problems == [
        "optim.betas must list 2 numbers in [0, 1). Got [0.9].",
        "sched.gamma must be a float in the range (0, 1]. Got 2.0.",
        "trainer.clip.max_norm must be a float in the range (0, inf) or None. Got -1.0.",
    ]
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_model_that_cannot_read_the_data_says_so(tmp_path):
    with pytest.raises(
        ConfigError,
        match="model.padding: lenet5 with 'valid' convolutions needs images of at least 16x16",
    ):
        train(tmp_path, "model=lenet5", "model.input_size=null", "model.padding=valid")


def test_plots_are_pngs_drawn_from_the_run(tmp_path):
    from PIL import Image
    from sklearn.metrics import confusion_matrix

    from dlrun.plots import plot_confusion, plot_curves

    summary, run_dir = train(tmp_path, "trainer.max_epochs=4")
    for name, size in (("curves.png", (1000, 400)), ("confusion_matrix.png", (800, 800))):
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.size == size
            assert len(set(image.convert("L").getdata())) > 10  # something was drawn
    records = read_metrics(run_dir)
    figure = plot_curves(records, "val_loss")
    lines = {line.get_label(): list(line.get_ydata()) for line in figure.axes[0].lines}
    assert lines == {k: [r[k] for r in records] for k in ("train_loss", "val_loss")}
    assert list(figure.axes[1].lines[0].get_xdata()) == [1, 2, 3, 4]
    # the right panel shows accuracy, not val_loss again; the kept epoch is marked on both
    figure = plot_curves(records, "val_loss", "mlp on digits, train/x", best=summary["best_epoch"])
    right = {line.get_label(): list(line.get_ydata()) for line in figure.axes[1].lines}
    assert right["val_accuracy"] == [r["val_accuracy"] for r in records]
    assert right["train_accuracy"] == [r["train_accuracy"] for r in records]  # beside it
    kept = f"best epoch {summary['best_epoch']} (by val_loss)"
    assert right[kept] == [0, 1]  # a vertical line
    assert kept in [line.get_label() for line in figure.axes[0].lines]
    assert figure.axes[1].get_title() == "accuracy (higher is better)"
    assert figure.texts[0].get_text() == "mlp on digits, train/x"

    y_true, y_pred = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    figure = plot_confusion(y_true, y_pred, ["a", "b", "c"])
    assert (figure.axes[0].images[0].get_array() == confusion_matrix(y_true, y_pred)).all()

    # each class's precision, recall and F1 on the test split, drawn and in summary.json
    from sklearn.metrics import classification_report

    with Image.open(run_dir / "per_class.png") as image:
        assert image.format == "PNG" and len(set(image.convert("L").getdata())) > 10
    saved = json.loads((run_dir / "summary.json").read_text())["test_per_class"]
    assert saved == summary["test_per_class"] and list(saved) == [str(k) for k in range(10)]
    assert sum(c["support"] for c in saved.values()) == 360  # digits' test split
    y_test, predicted = predictions_of(run_dir)
    report = classification_report(y_test, predicted, output_dict=True, zero_division=0)
    for name, scores in saved.items():
        assert scores["recall"] == pytest.approx(report[name]["recall"])
        assert scores["f1"] == pytest.approx(report[name]["f1-score"])


def test_a_regression_run_draws_its_predictions_against_the_truth(tmp_path):
    from PIL import Image

    from dlrun.plots import plot_regression

    summary, run_dir = train(tmp_path, "data=diabetes", "trainer.max_epochs=3")
    with Image.open(run_dir / "predictions.png") as image:
        assert image.format == "PNG" and image.size == (1000, 400)
    assert not (run_dir / "confusion_matrix.png").exists() and "test_per_class" not in summary
    true, predicted = np.array([1.0, 2.0, 4.0]), np.array([1.5, 2.0, 3.0])
    figure = plot_regression(true, predicted, "t")
    points = figure.axes[0].collections[0].get_offsets()
    assert points.tolist() == [[1.0, 1.5], [2.0, 2.0], [4.0, 3.0]]
    residuals = figure.axes[1].collections[0].get_offsets()[:, 1]
    assert residuals.tolist() == [0.5, 0.0, -1.0]
    assert figure.axes[1].get_title() == f"residuals (rmse {np.sqrt(1.25 / 3):.4g})"


def predictions_of(run_dir):
    """The test labels and the best model's predicted classes, through dlrun's own predict."""
    from dlrun.use import Trained

    trained = Trained(run_dir, with_data=True)
    x_test, y_test = trained.prep.splits["test"]
    return y_test, trained.outputs(x_test).argmax(axis=1)


def test_tensorboard_logger_writes_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = train(tmp_path, "trainer.max_epochs=3", "logger=tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("val/loss")]
    assert losses == pytest.approx([r["val_loss"] for r in read_metrics(run_dir)], rel=1e-6)


def test_augmentation_changes_training_and_is_reproducible(tmp_path):
    base = ("trainer.max_epochs=2", "trainer.diagnostics=false")
    plain, plain_dir = train(tmp_path, *base, name="plain")
    aug = ("data.augment.crop_padding=1", "data.augment.hflip=true")
    first, first_dir = train(tmp_path, *base, *aug, name="aug1")
    again, again_dir = train(tmp_path, *base, *aug, name="aug2")
    losses = [[r["train_loss"] for r in read_metrics(d)] for d in (plain_dir, first_dir, again_dir)]
    assert losses[1] != losses[0]  # the training batches were changed
    assert losses[1] == losses[2]  # the same seed draws the same changes
    assert first["test"] == again["test"]


def test_the_epoch_line_fits_80_columns_and_numbers_read_well():
    from dlrun.report import epoch_legend, epoch_line, number

    assert [number(v) for v in (0.398, 107.214, 13888.32, 34692616192.0, 0.00012, 0.0, 2.0)] == [
        "0.3980",
        "107.2",
        "13888",
        "3.469e+10",
        "1.200e-04",
        "0",
        "2.000",
    ]
    record = {
        "epoch": 12,
        "train_loss": 34692616192.0,
        "val_loss": 11494.8484,
        "val_rmse": 107.214,
        "val_mae": 80.1,
        "val_r2": -0.25,
        "lr": 0.000123456,
        "grad_norm": 123456.7,
        "grad_norm_max": 1e6,
        "epoch_time_s": 123.456,
    }
    line = epoch_line(record, 300, "val_r2") + "  *"
    # the monitored metric (r2) instead of the task's (rmse); the widest numbers there are
    assert (
        line
        == "epoch  12/300  loss 3.469e+10/11495  r2 -0.2500  lr 0.000123  grad 1.23e+05  123s  *"
    )
    assert len(line) <= 85
    classes = {"epoch": 3, "train_loss": 0.21534, "val_loss": 0.22881, "val_accuracy": 0.93056}
    classes.update(lr=0.001, grad_norm=1.1234, epoch_time_s=0.41)
    line = epoch_line(classes, 30, "val_loss") + "  *"
    assert line == "epoch  3/30  loss 0.2153/0.2288  accuracy 0.9306  lr 0.001  grad 1.12  0.41s  *"
    gan = {"epoch": 1, "train_loss/disc": 0.5, "train_loss/gen": 1.25, "val_fid": 12.5}
    gan.update(lr=0.0002, epoch_time_s=1.0)
    assert (
        epoch_line(gan, 5, "val_fid")
        == "epoch 1/5  loss disc 0.5000 gen 1.250  fid 12.50  lr 0.0002  1.00s"
    )
    legend = epoch_legend(list(classes), "val_loss")
    assert (
        legend == "loss train/val, other metrics on validation; * = a new best val_loss (best.pt)"
    )
    assert len(legend) <= 80


def test_the_bar_of_steps_is_told_at_a_low_rate_with_the_running_loss():
    """Steps.run_epoch tells the progress how far the epoch is between steps: at most every
    `every` seconds, with the samples done and their mean loss read only when asked."""
    import torch

    from dlrun.step import Progress

    class Batches:
        sizes, steps = [4, 4, 2], 3

    class Steps:
        batches, device = Batches(), torch.device("cpu")
        losses = torch.tensor([[1.0, 2.0, 4.0]])

    told = []

    def on_step(done, total, samples, elapsed, loss):
        told.append((done, total, samples, loss()))

    on_step.every = 0.0  # every step
    tell = Progress(on_step, Steps())
    for done in (1, 2, 3):
        tell(done)
    assert told == [(1, 3, 4, 1.0), (2, 3, 8, 1.5), (3, 3, 10, (4 + 8 + 8) / 10)]
    on_step.every = 3600.0  # an hour: nothing is told within this test
    told.clear()
    tell = Progress(on_step, Steps())
    for done in (1, 2, 3):
        tell(done)
    assert told == []
    Progress(None, Steps())(1)  # no bar (a sweep job's, a bench's): nothing to do


def test_xgboost_writes_each_round_to_metrics_jsonl_as_it_ends(tmp_path, monkeypatch):
    from dlrun.models import xgb

    seen, real = [], xgb.round_records

    def spying(run_dir, update, reporter=None):
        recorder = real(run_dir, update, reporter)
        after = recorder.after_iteration

        def after_iteration(model, epoch, evals_log):
            stop = after(model, epoch, evals_log)
            seen.append(len((run_dir / "metrics.jsonl").read_text().splitlines()))
            return stop

        recorder.after_iteration = after_iteration
        return recorder

    monkeypatch.setattr(xgb, "round_records", spying)
    summary, run_dir = train(tmp_path, "model=xgboost", "model.n_estimators=12", "data=iris")
    assert seen == list(range(1, 13))  # round k is in the file when round k ends
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == list(range(1, 13))
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert summary["epochs_run"] == 12


def test_a_missing_extra_names_the_command_that_installs_it_here(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(UserError) as refused:
        train(tmp_path, "trainer.max_epochs=1", "logger=tensorboard")
    assert str(refused.value) == (
        "logger: 'tensorboard' needs the tensorboard package (dlrun's tensorboard extra). "
        f"Install it with: {sys.executable} -m pip install 'tensorboard>=2.14'"
    )


def test_tree_models_draw_their_feature_importances_by_name(tmp_path):
    import csv

    from PIL import Image
    from sklearn.datasets import load_wine

    from dlrun.use import Trained

    _, run_dir = train(tmp_path, "model=random_forest", "data=wine", name="wine")
    with (run_dir / "feature_importance.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["feature"] for r in rows} == set(load_wine().feature_names)
    values = [float(r["importance"]) for r in rows]
    assert values == sorted(values, reverse=True) and sum(values) == pytest.approx(1, abs=1e-4)
    fitted = Trained(run_dir).model.model.feature_importances_
    names = load_wine().feature_names
    assert rows[0]["feature"] == names[int(np.argmax(fitted))]
    with Image.open(run_dir / "feature_importance.png") as image:
        assert image.size == (700, 490)  # 13 bars
    # pixels: a map over the image, not 64 bars
    _, digits_dir = train(tmp_path, "model=random_forest", name="digits")
    with Image.open(digits_dir / "feature_importance.png") as image:
        assert image.size == (600, 500)
    with (digits_dir / "feature_importance.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 64


def test_a_slow_moment_without_items_is_named_with_its_time(monkeypatch, caplog):
    import logging

    from dlrun import report

    with caplog.at_level(logging.INFO, logger="dlrun"):
        with report.busy("reading houses.csv"):
            pass
    assert "reading houses.csv" not in caplog.text  # instant: no line
    monkeypatch.setattr(report, "BUSY_LOG_AFTER_S", 0.0)
    with caplog.at_level(logging.INFO, logger="dlrun"):
        with report.busy("reading houses.csv"):
            pass
    assert re.search(r"reading houses.csv: \d+\.\d s", caplog.text)


def test_permutation_importance_finds_the_feature_a_network_uses(tmp_path):
    import csv

    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    table = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
    table["label"] = np.where(table["signal"] > 0, "up", "down")
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    args = ("data=csv", f"data.path={path}", "data.target=label", "trainer.max_epochs=15")
    summary, run_dir = train(tmp_path, *args, "trainer.permutation_importance=true")
    assert summary["val"]["accuracy"] > 0.9
    with (run_dir / "feature_importance.csv").open() as f:
        found = {r["feature"]: float(r["importance"]) for r in csv.DictReader(f)}
    assert found["signal"] > 0.3  # shuffled, the label is a coin toss: accuracy falls by ~0.45
    assert abs(found["noise"]) < 0.05
    # refused before training where shuffling features means nothing
    with pytest.raises(ConfigError) as refused:
        train(tmp_path, "model=lenet5", "trainer.permutation_importance=true", name="image")
    assert "digits is image data, not a table of features" in str(refused.value)
    assert not (tmp_path / "image").exists()


def test_train_accuracy_counts_the_training_batches_as_they_trained(tmp_path):
    """With the whole training split in one batch (no dropout), epoch 2's train_accuracy is the
    accuracy on the training rows of the model epoch 1 ended with."""
    from dlrun.use import Trained

    args = ("data=iris", "trainer.batch_size=1000", "trainer.early_stopping.monitor=val_accuracy")
    _, one = train(tmp_path, *args, "trainer.max_epochs=1", name="one")
    _, two = train(tmp_path, *args, "trainer.max_epochs=2", name="two")
    trained = Trained(one, with_data=True)
    x, y = trained.prep.splits["train"]
    accuracy = float((trained.outputs(x).argmax(axis=1) == y).mean())
    assert read_metrics(two)[1]["train_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert 0 < read_metrics(two)[0]["train_accuracy"] < 1
    # regression and the GAN's phases record none
    _, regression = train(tmp_path, "data=diabetes", "trainer.max_epochs=1", name="regression")
    assert "train_accuracy" not in read_metrics(regression)[0]


def test_the_last_steps_gradients_are_gone_before_the_next_forward(tmp_path, monkeypatch):
    """A step frees the previous step's gradients before its forward, not after it: the peak of
    a step (the end of the forward) then holds activations alone, not a model's worth of stale
    gradients too (45 MB for ResNet-18)."""
    from dlrun.objectives.supervised import Classification

    stale = []
    real = Classification.mean_loss

    def mean_loss(self, model, batch, phase="main"):
        stale.append(any(p.grad is not None for p in model.parameters()))
        return real(self, model, batch, phase)

    monkeypatch.setattr(Classification, "mean_loss", mean_loss)
    train(tmp_path, "data=iris", "trainer.max_epochs=2", "trainer.batch_size=32")
    assert len(stale) >= 8  # 4 steps an epoch (and the health probe)
    assert not any(stale)
