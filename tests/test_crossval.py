"""Cross-validation (data.cv): the folds, one run per fold, the refit, resume."""

from __future__ import annotations

import contextlib
import json
import signal

import numpy as np
import pytest

from conftest import make_cfg, read_metrics, train


def rows_outside_test(*overrides: str) -> tuple[np.ndarray, object]:
    """The rows a cross-validation cuts into folds, and the data they come from."""
    from dlrun.catalog import load_catalog
    from dlrun.data import split_indices
    from dlrun.registry import get_data
    from dlrun.validate import validate

    load_catalog()
    conf = validate(make_cfg(*overrides))
    raw = get_data(conf.data.name).load(conf.data)
    train_rows, val_rows, _ = split_indices(raw, conf.data)
    return np.sort(np.concatenate([train_rows, val_rows])), raw


def test_folds_are_stratified_seeded_and_the_same_for_every_model():
    from dlrun.catalog import load_catalog
    from dlrun.data import cv_folds
    from dlrun.validate import validate

    load_catalog()
    args = ("data=wine", "data.cv.folds=5", "data.cv.repeats=2")
    rest, raw = rows_outside_test(*args)
    conf = validate(make_cfg(*args))
    folds = cv_folds(raw, conf.data, rest)
    assert len(folds) == 10
    y = np.asarray(raw.y)
    for repeat in (0, 1):
        held = [val for _, val in folds[repeat * 5 : repeat * 5 + 5]]
        # each repeat's validation parts cover the rows outside the test split once
        assert sorted(np.concatenate(held).tolist()) == rest.tolist()
        for train_rows, val in folds[repeat * 5 : repeat * 5 + 5]:
            assert not set(train_rows) & set(val)
            assert len(train_rows) + len(val) == len(rest)
            # stratified: each class's share of a fold is its share of the rows, to one row
            for c in np.unique(y):
                assert abs((y[val] == c).sum() - (y[rest] == c).sum() / 5) < 1
    assert not np.array_equal(folds[0][1], folds[5][1])  # a repeat draws new folds
    # the folds depend on the data and the seed only: another model, the same folds
    other = validate(make_cfg(*args, "model=random_forest"))
    again = cv_folds(raw, other.data, rest)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    reseeded = validate(make_cfg(*args, "seed=7"))
    assert not np.array_equal(cv_folds(raw, reseeded.data, rest)[0][1], folds[0][1])


def test_random_forest_folds_score_as_scikit_learns_cross_validate(tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_validate

    args = (
        "data=wine",
        "data.normalize=false",
        "model=random_forest",
        "model.n_estimators=25",
        "data.cv.folds=4",
        "data.cv.repeats=2",
    )
    summary, run_dir = train(tmp_path, *args)
    rest, raw = rows_outside_test(*args)
    x = np.asarray(raw.x, dtype=np.float32)[rest]
    y = np.asarray(raw.y)[rest]
    forest = RandomForestClassifier(n_estimators=25, max_features="sqrt", random_state=42)
    theirs = cross_validate(
        forest, x, y, cv=RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=42)
    )
    assert summary["cv"]["accuracy"]["folds"] == theirs["test_score"].tolist()
    assert summary["cv"]["accuracy"]["mean"] == pytest.approx(theirs["test_score"].mean())
    assert summary["cv"]["accuracy"]["std"] == pytest.approx(theirs["test_score"].std(ddof=1))
    assert summary["cv_setup"] == {
        "folds": 4,
        "repeats": 2,
        "split_seed": 42,
        "train_rows": len(rest) - len(rest) // 4 - (len(rest) % 4 > 0),
        "val_rows": len(rest) // 4 + (len(rest) % 4 > 0),
    }
    # every fold is a run of its own, scored on its validation rows alone; the refit is the
    # run folder's model, and the one run scored on the test split
    for n in range(1, 9):
        fold = json.loads((run_dir / "folds" / str(n) / "summary.json").read_text())
        assert fold["status"] == "completed" and fold["rows"]["test"] == 0 and fold["test"] == {}
        assert not (run_dir / "folds" / str(n) / "confusion_matrix.png").exists()
    assert (run_dir / "checkpoints" / "model.skops").is_file()
    assert summary["status"] == "completed" and 0.85 < summary["test"]["accuracy"] <= 1
    # the refit: the same forest fitted on every row outside the test split, scored once
    test_rows = np.setdiff1d(np.arange(len(raw.y)), rest)
    assert summary["rows"] == {"train": len(rest), "val": 0, "test": len(test_rows)}
    forest.fit(x, y)
    test_x = np.asarray(raw.x, dtype=np.float32)[test_rows]
    ours = forest.score(test_x, np.asarray(raw.y)[test_rows])
    assert summary["test"]["accuracy"] == ours
    assert summary["val"]["accuracy"] == summary["cv"]["accuracy"]["mean"]  # the folds' mean


def test_a_networks_refit_trains_every_non_test_row_for_the_folds_median_best_epoch(tmp_path):
    """No validation rows are left for the refit: it trains the folds' median best epoch on
    the cosine schedule the folds followed (over max_epochs), keeps its last epoch, and
    dlrun-eval scores it on the test split."""
    from dlrun.use import evaluate

    args = (
        "data=iris",
        "data.cv.folds=3",
        "trainer.max_epochs=12",
        "optim.lr=0.01",
        "sched=cosine",
        "trainer.early_stopping.monitor=val_accuracy",
    )
    summary, run_dir = train(tmp_path, *args)
    folds = [
        json.loads((run_dir / "folds" / str(n) / "summary.json").read_text()) for n in (1, 2, 3)
    ]
    best = sorted(f["best_epoch"] for f in folds)[1]
    assert summary["epochs_run"] == summary["best_epoch"] == best
    assert summary["rows"] == {"train": 120, "val": 0, "test": 30}
    refit = read_metrics(run_dir)
    assert [r["epoch"] for r in refit] == list(range(1, best + 1))
    assert not [k for r in refit for k in r if k.startswith("val_")]
    # the learning rate of each epoch is the folds' (a cosine over max_epochs, not over `best`)
    assert [r["lr"] for r in refit] == [r["lr"] for r in read_metrics(run_dir / "folds" / "1")][
        :best
    ]
    assert summary["val"] == {k: m["mean"] for k, m in summary["cv"].items()}
    assert summary["monitor"]["best"] == summary["cv"]["accuracy"]["mean"]
    assert summary["test"]["accuracy"] > 0.8
    config = (run_dir / "config.yaml").read_text()
    assert "fold: -1" in config and f"epochs: {best}" in config
    again = evaluate(run_dir, [], tmp_path / "eval")
    assert again["val"] == {} and again["test"] == summary["test"]
    fold = evaluate(run_dir / "folds" / "1", [], tmp_path / "eval-fold")  # never the test rows
    assert fold["test"] == {} and fold["val"] == folds[0]["val"]


def test_xgboosts_refit_boosts_the_folds_median_best_round(tmp_path):
    args = ("data=wine", "model=xgboost", "model.n_estimators=60", "data.cv.folds=3")
    args += ("trainer.early_stopping.patience=5", "model.learning_rate=0.3")
    summary, run_dir = train(tmp_path, *args)
    rounds = [
        json.loads((run_dir / "folds" / str(n) / "summary.json").read_text())["best_epoch"]
        for n in (1, 2, 3)
    ]
    assert summary["epochs_run"] == sorted(rounds)[1] < 60
    assert summary["rows"]["val"] == 0 and summary["test"]["accuracy"] > 0.85
    refit = read_metrics(run_dir)
    assert len(refit) == sorted(rounds)[1] and "val_loss" not in refit[0]


def test_without_refit_the_run_is_its_folds(tmp_path):
    summary, run_dir = train(
        tmp_path, "data=iris", "data.cv.folds=3", "data.cv.refit=false", "trainer.max_epochs=3"
    )
    assert summary["test"] == {} and not (run_dir / "checkpoints").exists()
    assert summary["monitor"]["best"] == summary["cv"]["loss"]["mean"]
    assert summary["val"]["accuracy"] == summary["cv"]["accuracy"]["mean"]
    assert len(summary["cv"]["accuracy"]["folds"]) == 3


@contextlib.contextmanager
def sigint_at_epoch_record(monkeypatch, n: int):
    """SIGINT once the n-th epoch of the process (over every run) is recorded."""
    import dlrun.report

    real, seen = dlrun.report.epoch_progress, [0]

    @contextlib.contextmanager
    def progress(max_epochs, monitor):
        with real(max_epochs, monitor) as on_epoch:

            def hook(record, improved):
                on_epoch(record, improved)
                seen[0] += 1
                if seen[0] == n:
                    signal.raise_signal(signal.SIGINT)

            yield hook

    monkeypatch.setattr(dlrun.report, "epoch_progress", progress)
    yield
    monkeypatch.setattr(dlrun.report, "epoch_progress", real)


def test_a_run_stopped_inside_a_fold_resumes_exactly(tmp_path, monkeypatch):
    from dlrun.errors import Interrupted

    args = ("data=iris", "data.cv.folds=3", "trainer.max_epochs=4")
    full, full_dir = train(tmp_path, *args, name="full")
    # stopped in the second fold's run, after its 2nd epoch (the 6th of the process)
    with sigint_at_epoch_record(monkeypatch, 6), pytest.raises(Interrupted) as stopped:
        train(tmp_path, *args, name="cut")
    cut = tmp_path / "cut"
    assert str(stopped.value) == (
        "interrupted by SIGINT after epoch 2 in fold run 2 of 3; the finished folds are kept: "
        f"continue with trainer.resume={cut}"
    )
    assert not (cut / "folds" / "3").exists()
    kept = (cut / "folds" / "1" / "metrics.jsonl").read_bytes()
    resumed, _ = train(tmp_path, *args, f"trainer.resume={cut}", name="again")
    assert (cut / "folds" / "1" / "metrics.jsonl").read_bytes() == kept  # not trained again
    times = ("train_time_s", "epoch_time_s", "health/probe_time_s")
    for part in ("folds/1", "folds/2", "folds/3", "."):
        ours, theirs = read_metrics(cut / part), read_metrics(full_dir / part)
        assert [{k: v for k, v in r.items() if k not in times} for r in ours] == [
            {k: v for k, v in r.items() if k not in times} for r in theirs
        ], part
    assert resumed["cv"] == full["cv"] and resumed["test"] == full["test"]
    with pytest.raises(Interrupted.__mro__[1], match="finished its cross-validation"):
        train(tmp_path, *args, f"trainer.resume={cut}", name="once-more")


def test_bad_cv_settings_are_one_clear_message(tmp_path):
    from dlrun.errors import ConfigError, UserError

    with pytest.raises(ConfigError, match=r"data.cv.folds must be an int in the range \[2, inf\)"):
        train(tmp_path, "data.cv.folds=1")
    with pytest.raises(ConfigError, match="data.cv.repeats needs data.cv.folds"):
        train(tmp_path, "data.cv.repeats=3")
    with pytest.raises(ConfigError, match=r"data.cv.fold must be below .* \(6\). Got 6."):
        train(tmp_path, "data.cv.folds=3", "data.cv.repeats=2", "data.cv.fold=6")
    with pytest.raises(UserError, match="data.cv.folds=60: the smallest class has"):
        train(tmp_path, "data=iris", "data.cv.folds=60")
    assert not (tmp_path / "run").exists()


def test_the_corrected_t_test_is_the_paired_one_with_a_wider_variance():
    from scipy import stats

    from dlrun.sweep import corrected_t_test

    a = [0.90, 0.92, 0.91, 0.95, 0.93, 0.94, 0.90, 0.92, 0.96, 0.91]
    b = [0.88, 0.90, 0.90, 0.91, 0.92, 0.95, 0.87, 0.91, 0.93, 0.90]
    plain = stats.ttest_rel(a, b).pvalue
    # with (almost) no overlap between training sets the correction vanishes
    assert corrected_t_test(a, b, 10**12, 1) == pytest.approx(plain, rel=1e-9)
    # 5-fold: the variance of the mean grows by val/train = 1/4: a larger p-value
    corrected = corrected_t_test(a, b, 80, 20)
    t = np.mean(np.subtract(a, b)) / np.sqrt((1 / 10 + 20 / 80) * np.var(np.subtract(a, b), ddof=1))
    assert corrected == pytest.approx(2 * stats.t.sf(abs(t), 9), rel=1e-12)
    assert plain < 0.05 < corrected
    assert corrected_t_test(a, a, 80, 20) == 1.0


def test_a_leaderboard_of_cross_validated_jobs_says_which_differences_are_noise(tmp_path):
    """A 3-job sweep of cross-validated runs: mean ± std, ranked by the mean, p_vs_best."""
    import csv

    from rich.console import Console

    import dlrun.sweep as sweep

    def job(name, model, folds):
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        overrides = ["data=wine", "data.cv.folds=5", f"model={model}"]
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (folder / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  runtime:\n    choices:\n      model: " + model + "\n"
        )
        (folder / "config.yaml").write_text(f"model:\n  name: {model}\n")
        mean = float(np.mean(folds))
        summary = {
            "status": "completed",
            "model": model,
            "data": "wine",
            "family": "torch",
            "monitor": {"metric": "val_accuracy", "mode": "max", "best": 0.5},
            "val": {"accuracy": 0.5},
            "test": {"accuracy": 0.9},
            "epochs_run": 5,
            "wall_time_s": 1.0,
            "params": 100,
            "cv": {"accuracy": {"mean": mean, "std": float(np.std(folds, ddof=1)), "folds": folds}},
            "cv_setup": {
                "folds": 5,
                "repeats": 1,
                "split_seed": 42,
                "train_rows": 113,
                "val_rows": 29,
            },
        }
        (folder / "summary.json").write_text(json.dumps(summary))

    job("0", "mlp", [0.93, 0.97, 0.90, 0.96, 0.93])
    job("1", "gru", [0.97, 1.0, 0.97, 1.0, 0.97])
    job("2", "lstm", [0.93, 0.97, 0.93, 0.97, 0.93])
    console = Console(width=100, record=True)
    real = sweep._print
    sweep._print = lambda *a: real(*a, console=console)
    import dlrun.plots

    drawn, plot = {}, dlrun.plots.plot_leaderboard
    dlrun.plots.plot_leaderboard = lambda *a: drawn.update(args=a) or plot(*a)
    try:
        rows = sweep.report(tmp_path)
    finally:
        sweep._print = real
        dlrun.plots.plot_leaderboard = plot
    # the picture draws each mean with its spread over the folds
    stds = [np.std(f, ddof=1) for f in ([0.97, 1, 0.97, 1, 0.97], [0.93, 0.97, 0.93, 0.97, 0.93])]
    assert drawn["args"][5][0][:2] == pytest.approx(stds) and drawn["args"][5][1] == "5"
    assert [r["job"] for r in rows] == ["1", "2", "0"]  # by the folds' mean, not val.accuracy
    said = console.export_text()
    assert all(len(line) <= 100 for line in said.splitlines())
    assert "0.982 ± 0.016" in said
    assert "job 1 vs job 2 on the same 5 folds: val_accuracy 0.982 vs 0.946, " in " ".join(
        said.split()
    )
    table = list(csv.DictReader((tmp_path / "leaderboard.csv").open()))
    p_values = {r["job"]: r["p_vs_best"] for r in table}
    assert p_values["1"] == "" and 0 < float(p_values["2"]) < 1 and 0 < float(p_values["0"]) < 1
    assert float(table[0]["val_accuracy_std"]) == pytest.approx(
        np.std([0.97, 1, 0.97, 1, 0.97], ddof=1)
    )


def test_linear_folds_score_as_scikit_learns_cross_validate(tmp_path):
    """The same folds, the same standardization (from each fold's training rows), the same
    logistic regression: the same scores, to the solver's tolerance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    args = ("data=wine", "model=linear", "data.cv.folds=5", "data.cv.refit=false")
    summary, _ = train(tmp_path, *args)
    rest, raw = rows_outside_test(*args)
    x = np.asarray(raw.x, dtype=np.float32)[rest]
    y = np.asarray(raw.y)[rest]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    from sklearn.metrics import log_loss

    theirs = cross_validate(
        model,
        x,
        y,
        cv=RepeatedStratifiedKFold(n_splits=5, n_repeats=1, random_state=42),
        scoring={
            "accuracy": "accuracy",
            "loss": make_scorer(log_loss, response_method="predict_proba", labels=[0, 1, 2]),
        },
    )
    assert summary["cv"]["accuracy"]["folds"] == theirs["test_accuracy"].tolist()
    assert summary["cv"]["loss"]["folds"] == pytest.approx(theirs["test_loss"].tolist(), rel=1e-4)


@pytest.fixture
def visits(tmp_path) -> str:
    """A table of 40 patients with 6 visits each, in time order: a patient's visits look alike
    (their own offset), so a split that puts one patient on both sides leaks."""
    import pandas as pd

    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 6)
    offset = rng.normal(0, 3, 40)[patients]
    frame = pd.DataFrame(
        {
            "patient": [f"p{p:02d}" for p in patients],
            "a": offset + rng.normal(0, 1, len(patients)),
            "b": rng.normal(0, 1, len(patients)),
            "sick": (offset > 0).astype(int),
        }
    )
    path = tmp_path / "visits.csv"
    frame.to_csv(path, index=False)
    return str(path)


def folds_of(*overrides):
    from dlrun.catalog import load_catalog
    from dlrun.data import cv_folds, split_indices
    from dlrun.registry import get_data
    from dlrun.validate import validate

    load_catalog()
    conf = validate(make_cfg(*overrides))
    raw = get_data(conf.data.name).load(conf.data)
    train_rows, val_rows, test_rows = split_indices(raw, conf.data)
    rest = np.concatenate([train_rows, val_rows])
    return raw, test_rows, rest, cv_folds(raw, conf.data, rest)


def test_grouped_folds_keep_each_group_in_one_part(visits):
    args = ("data=csv", f"data.path={visits}", "data.target=sick", "data.cv.group=patient")
    raw, test_rows, rest, folds = folds_of(*args, "data.cv.folds=4", "data.cv.repeats=2")
    groups = raw.groups
    assert raw.spec.shape == (2,)  # the group column is not a feature
    assert not set(groups[test_rows]) & set(groups[rest])  # no patient in test and training
    assert len(set(groups[test_rows])) == 8  # test_split 0.2 of the 40 patients
    for repeat in (0, 1):
        held = [val for _, val in folds[repeat * 4 : repeat * 4 + 4]]
        assert sorted(np.concatenate(held).tolist()) == sorted(rest.tolist())
        for train_rows, val in folds[repeat * 4 : repeat * 4 + 4]:
            assert not set(groups[train_rows]) & set(groups[val])
    assert not np.array_equal(folds[0][1], folds[4][1])  # a repeat draws new folds


def test_time_ordered_folds_train_on_the_past(visits, tmp_path):
    args = ("data=csv", f"data.path={visits}", "data.target=sick", "data.cv.time=true")
    _, test_rows, rest, folds = folds_of(*args, "data.cv.folds=3")
    assert test_rows.tolist() == list(range(192, 240))  # the last 20% of the rows
    assert rest.max() < test_rows.min()
    for train_rows, val in folds:
        assert train_rows.max() < val.min()  # every fold is validated on later rows
    summary, run_dir = train(tmp_path, *args, "data.cv.folds=3", "trainer.max_epochs=2")
    assert summary["cv_setup"]["folds"] == 3 and len(summary["cv"]["accuracy"]["folds"]) == 3


def test_bad_group_and_time_settings(tmp_path, visits):
    from dlrun.errors import ConfigError, UserError

    table = ("data=csv", f"data.path={visits}", "data.target=sick")
    with pytest.raises(ConfigError, match="data.cv.group needs data.cv.folds"):
        train(tmp_path, *table, "data.cv.group=patient")
    with pytest.raises(ConfigError, match="data.cv.time and data.cv.group cannot be used"):
        train(tmp_path, *table, "data.cv.folds=3", "data.cv.group=patient", "data.cv.time=true")
    with pytest.raises(ConfigError, match="data.cv.repeats=2: time-ordered folds are the same"):
        train(tmp_path, *table, "data.cv.folds=3", "data.cv.repeats=2", "data.cv.time=true")
    with pytest.raises(UserError, match="data.cv.group: 'ward' is not a column"):
        train(tmp_path, *table, "data.cv.folds=3", "data.cv.group=ward")
    with pytest.raises(UserError, match="data.cv.group: iris is not a table"):
        train(tmp_path, "data=iris", "data.cv.folds=3", "data.cv.group=patient")
    with pytest.raises(UserError, match="hold 32 groups of data.cv.group; each fold needs one"):
        train(tmp_path, *table, "data.cv.folds=40", "data.cv.group=patient")
    assert not (tmp_path / "run").exists()
