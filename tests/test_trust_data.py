"""Numbers that must never be silently wrong on the way from a table to the metrics (issue 11):
the target's units, the task, huge features, duplicate or dirty columns, constant targets and
advice that can be followed where it is given. Every test writes a small table into tmp_path."""

from __future__ import annotations

import json
import logging
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import make_cfg, train
from dlrun.errors import UserError


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def data_conf(*overrides: str):
    return OmegaConf.to_object(make_cfg(*overrides)).data


def load(*overrides: str):
    from dlrun.registry import get_data

    conf = data_conf(*overrides)
    return get_data(conf.name).load(conf)


def diabetes_csv(tmp_path):
    """scikit-learn's diabetes table (real, offline) with its target as whole numbers 25..346:
    214 distinct values, the shape of a price or a count."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["target"] = frame["target"].astype(int)
    path = tmp_path / "diabetes.csv"
    frame.to_csv(path, index=False)
    return path, frame


# ---------------------------------------------------------------------------------------------
# 1. regression fits the target's values, not the rank of each value


def test_an_integer_target_is_fitted_in_its_own_units_like_scikit_learn(tmp_path):
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import mean_squared_error

    from dlrun import use
    from dlrun.data import DataSpec, RawData, split_indices

    path, frame = diabetes_csv(tmp_path)
    common = ["data=csv", f"data.path={path}", "data.target=target", "data.normalize=false"]
    forest = ["model=random_forest", "model.n_estimators=50", "model.n_jobs=1"]
    summary, run_dir = train(tmp_path, *common, *forest)
    assert summary["task"] == "regression"

    # The same rows, split by dlrun's own split, fitted by scikit-learn directly.
    conf = data_conf(*common)
    x = frame.drop(columns="target").to_numpy()
    y = frame["target"].to_numpy(dtype=float)
    raw = RawData(x, y, DataSpec("csv", "regression", "tabular", (x.shape[1],)))
    train_rows, _, test_rows = split_indices(raw, conf)
    reference = RandomForestRegressor(
        n_estimators=50, max_features=1.0, random_state=make_cfg().seed, n_jobs=1
    ).fit(x[train_rows], y[train_rows])
    expected = mean_squared_error(y[test_rows], reference.predict(x[test_rows])) ** 0.5
    assert summary["test"]["rmse"] == pytest.approx(expected, rel=1e-5)
    assert 45 < summary["test"]["rmse"] < 70  # the target's units (its std is 77)
    json.dumps(summary, allow_nan=False)  # valid JSON: no NaN anywhere

    # Predictions for new rows are in the target's units too.
    rows = frame.iloc[test_rows[:20]]
    rows.drop(columns="target").to_csv(tmp_path / "new.csv", index=False)
    out = use.predict_file(run_dir, tmp_path / "new.csv", tmp_path / "predictions.csv")
    predicted = pd.read_csv(out)["prediction"].to_numpy()
    np.testing.assert_allclose(predicted, reference.predict(x[test_rows[:20]]), rtol=1e-5)
    assert 25 <= predicted.min() and predicted.max() <= 346


def test_data_task_regression_reads_the_numbers_the_classes_stand_for(tmp_path):
    from dlrun.data import DataSpec, RawData, _with_task

    path = tmp_path / "grades.csv"
    grade = np.tile([10, 20, 50], 20)
    pd.DataFrame({"x": np.arange(60.0), "grade": grade}).to_csv(path, index=False)
    common = ["data=csv", f"data.path={path}", "data.target=grade"]
    assert load(*common).spec.class_names == ("10", "20", "50")  # 3 whole numbers: classes
    raw = load(*common, "data.task=regression")
    assert raw.spec.task == "regression"
    np.testing.assert_array_equal(raw.y, grade.astype(np.float32))

    # Any dataset: the class names give the values, not the codes 0..K-1.
    spec = DataSpec("d", "classification", "tabular", (1,), 3, class_names=("10", "20", "50"))
    classes = RawData(np.zeros((4, 1), np.float32), np.array([0, 2, 1, 2]), spec)
    np.testing.assert_array_equal(_with_task(classes, "regression").y, [10, 50, 20, 50])
    spec = DataSpec("pets", "classification", "image", (3, 4, 4), 2, class_names=("cat", "dog"))
    with pytest.raises(
        UserError,
        match=exactly(
            "data.task: 'regression' needs a target of numbers, but the classes of 'pets' are "
            "names ('cat', 'dog'). Leave data.task unset to classify them."
        ),
    ):
        _with_task(RawData(np.zeros((2, 3, 4, 4)), np.array([0, 1]), spec), "regression")

    text = tmp_path / "text.csv"
    pd.DataFrame({"x": np.arange(6.0), "kind": ["a", "b"] * 3}).to_csv(text, index=False)
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.task: 'regression' needs a target of numbers; column 'kind' of {text} holds "
            "text ('a', 'b')."
        ),
    ):
        load("data=csv", f"data.path={text}", "data.target=kind", "data.task=regression")


# ---------------------------------------------------------------------------------------------
# 2. the task follows a stated rule, and confusion matrices stay readable


def test_the_task_rule_is_applied_and_logged(tmp_path, caplog):
    n = 84
    path = tmp_path / "rule.csv"
    pd.DataFrame(
        {
            "x": np.arange(n, dtype=float),
            "few": np.arange(n) % 20,  # 20 distinct whole numbers
            "many": np.arange(n) % 21 * 1000,  # 21
            "whole_floats": (np.arange(n) % 3).astype(float),
            "fractions": np.arange(n) / 7,
            "flag": np.arange(n) % 2 == 0,
        }
    ).to_csv(path, index=False)

    def task(target: str, *extra: str) -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dlrun"):
            raw = load("data=csv", f"data.path={path}", f"data.target={target}", *extra)
        return raw.spec.task

    assert task("few") == "classification"
    assert (
        "target 'few' holds 20 distinct whole numbers: classification (at most 20 distinct "
        "values); data.task=regression predicts them as numbers" in caplog.text
    )
    assert task("many") == "regression"
    assert (
        "target 'many' holds 21 distinct whole numbers: regression (more than 20 distinct "
        "values); data.task=classification reads them as classes" in caplog.text
    )
    assert task("many", "data.task=classification") == "classification"
    assert "target 'many' read for classification, as data.task says" in caplog.text
    assert task("whole_floats") == "regression"
    assert "holds floats (3 distinct values, all whole): regression" in caplog.text
    assert task("fractions") == "regression"
    assert task("flag") == "classification"
    assert "target 'flag' holds booleans: classification (2 classes)" in caplog.text
    with pytest.raises(UserError, match=r"^data.task: 'classification' needs one target of whole"):
        load("data=csv", f"data.path={path}", "data.target=fractions", "data.task=classification")


def test_a_confusion_matrix_of_too_many_classes_is_not_drawn(tmp_path, caplog):
    path = tmp_path / "many.csv"
    labels = np.repeat([f"c{k:02d}" for k in range(31)], 20)
    pd.DataFrame({"x": np.arange(len(labels), dtype=float), "label": labels}).to_csv(
        path, index=False
    )
    forest = ["model=random_forest", "model.n_estimators=5", "model.n_jobs=1"]
    with caplog.at_level(logging.INFO, logger="dlrun"):
        summary, run_dir = train(
            tmp_path,
            "data=csv",
            f"data.path={path}",
            "data.target=label",
            "data.val_split=0.2",  # a stratified split needs a sample of each class
            *forest,
        )
    assert summary["task"] == "classification" and (run_dir / "curves.png").is_file()
    assert not (run_dir / "confusion_matrix.png").exists()
    assert "confusion_matrix.png not drawn: 31 classes are too many to read (at most 30)" in (
        caplog.text
    )


def test_regression_curves_keep_one_unit_per_axis():
    from dlrun.plots import plot_curves

    epochs = [
        {"epoch": e, "train_loss": 3e3 / e, "val_loss": 3.5e3 / e, "val_rmse": 59.0} for e in (1, 2)
    ]
    figure = plot_curves(epochs, "val_loss")
    lines = {line.get_label() for line in figure.axes[0].lines}
    assert lines == {"train_loss", "val_loss"}  # val_rmse (in the target's units) is not an MSE
    assert [line.get_label() for line in figure.axes[1].lines] == ["val_rmse"]  # on its own
    assert figure.axes[1].get_title() == "rmse (lower is better)"
    rounds = [{"round": r, "train_rmse": 60.0 / r, "val_rmse": 65.0 / r} for r in (1, 2)]
    figure = plot_curves(rounds, "val_rmse")
    assert {line.get_label() for line in figure.axes[0].lines} == {"train_rmse", "val_rmse"}
    assert figure.axes[0].get_ylabel() == "rmse"
    assert len(figure.axes) == 1  # a second panel would repeat val_rmse


# ---------------------------------------------------------------------------------------------
# 3. features of huge magnitude


def test_features_near_1e30_train_without_overflow(tmp_path):
    rng = np.random.default_rng(0)
    label = np.arange(200) % 2
    x = 1e30 * (1 + label + 0.3 * rng.standard_normal(200))  # informative, float32-sized
    path = tmp_path / "huge.csv"
    pd.DataFrame({"x": x, "label": label}).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warnings
        summary, _ = train(
            tmp_path,
            "data=csv",
            f"data.path={path}",
            "data.target=label",
            "model=mlp",
            "trainer.max_epochs=10",
        )
    assert summary["test"]["accuracy"] >= 0.9


def test_features_beyond_float32_name_their_column(tmp_path):
    path = tmp_path / "beyond.csv"
    frame = pd.DataFrame({"a": np.arange(10.0), "big": 1e100, "label": [0, 1] * 5})
    frame.loc[3, "big"] = -2e100
    frame.to_csv(path, index=False)
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.path: column 'big' of {path} holds values up to -2e+100, beyond float32's "
            "range (±3.4e+38); rescale it."
        ),
    ):
        load("data=csv", f"data.path={path}", "data.target=label")

    from dlrun.data import DataSpec, _check_finite

    x = np.zeros((3, 2, 2), dtype=np.float32)
    x[1, 1, 0] = np.inf
    with pytest.raises(
        UserError,
        match=exactly(
            "data: s has 1 infinite input value(s) (or beyond float32's range, ±3.4e+38); the "
            "first is sample 7, time step 1, feature 0. Clean the data."
        ),
    ):
        _check_finite(x, np.array([6, 7, 8]), DataSpec("s", "regression", "sequence", (2, 2)))


# ---------------------------------------------------------------------------------------------
# 4. duplicate column names


def test_duplicate_column_names_are_refused(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("a,b,a,y\n1,2,3,0\n4,5,6,1\n")
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.path: {path} has more than one column named 'a'; column names must be "
            "unique. Rename or drop the copies."
        ),
    ):
        load("data=csv", f"data.path={path}", "data.target=y")

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "twice.parquet"
    pq.write_table(pa.table([[1, 2], [3, 4], [0, 1]], names=["b", "b", "y"]), parquet)
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.path: {parquet} has more than one column named 'b'; column names must be "
            "unique. Rename or drop the copies."
        ),
    ):
        load("data=parquet", f"data.path={parquet}", "data.target=y")


# ---------------------------------------------------------------------------------------------
# 5. a numeric column with a few stray strings


def test_a_numeric_column_with_stray_text_is_named(tmp_path, caplog):
    size = [str(v) for v in np.arange(60) * 1.5]
    size[5], size[17], size[40] = "?", "unknown", "?"
    path = tmp_path / "stray.csv"
    pd.DataFrame({"size": size, "label": [0, 1] * 30}).to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="dlrun"):
        raw = load("data=csv", f"data.path={path}", "data.target=label")
    assert raw.spec.shape == (59,)  # 57 numbers and 2 words, each its own one-hot feature
    assert (
        "column 'size' holds numbers, but 3 of its 60 values are not numbers: '?', 'unknown': "
        "it is read as text and one-hot encoded into 59 features. Make those values numbers, or "
        "leave those cells empty to mark them missing (data.missing=impute fills them)."
    ) in caplog.text


# ---------------------------------------------------------------------------------------------
# 6. a constant regression target


def test_a_constant_regression_target_is_refused(tmp_path):
    path = tmp_path / "flat.csv"
    pd.DataFrame({"x": np.arange(20.0), "y": 2.5}).to_csv(path, index=False)
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.target: column 'y' of {path} holds a single value (2.5) in all 20 rows; a "
            "regression target must vary (there is nothing to learn, and r2 is undefined)."
        ),
    ):
        load("data=csv", f"data.path={path}", "data.target=y")

    # constant in the test rows only: r2 there would be a perfect 1.0 for predicting 4.0
    split = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    y = np.r_[np.arange(16.0), np.full(4, 4.0)]
    pd.DataFrame({"x": np.arange(20.0), "y": y, "fold": split}).to_csv(path, index=False)
    with pytest.raises(
        UserError,
        match=exactly(
            "data: the regression target of csv takes a single value (4) in all 4 test "
            "samples; r2 is undefined there. Use a larger data.test_split, or another split."
        ),
    ):
        train(tmp_path, "data=csv", f"data.path={path}", "data.target=y", "data.split_column=fold")

    from dlrun.metrics import compute_metrics

    scores = compute_metrics("regression", np.full(5, 4.0), np.full(5, 4.0))
    assert math.isnan(scores["r2"]) and scores["rmse"] == 0.0  # never a perfect 1.0


# ---------------------------------------------------------------------------------------------
# 7. advice for new rows that dlrun-predict can follow


def test_prediction_rows_with_missing_values_get_advice_they_can_follow(tmp_path):
    from dlrun import use

    path = tmp_path / "train.csv"
    pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0) % 7, "y": [0, 1] * 20}).to_csv(
        path, index=False
    )
    forest = ["model=random_forest", "model.n_estimators=5", "model.n_jobs=1"]
    _, run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=y", *forest)
    new = tmp_path / "new.csv"
    pd.DataFrame({"a": [1.0, np.nan], "b": [2.0, 3.0]}).to_csv(new, index=False)
    with pytest.raises(
        UserError,
        match=exactly(
            f"input: {new} has missing values in 1 feature column: a (1). This run was trained "
            "with data.missing=error, so it has no imputation values to fill them with: fill "
            "them in the file, or train again with data.missing=impute."
        ),
    ):
        use.predict_file(run_dir, new, tmp_path / "out.csv")


def test_prediction_arrays_with_nan_are_refused_not_predicted(tmp_path):
    from dlrun import use

    forest = ["model=random_forest", "model.n_estimators=5", "model.n_jobs=1"]
    _, run_dir = train(tmp_path, *forest)  # digits: 1x8x8 images
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    x[2, 0, 4, 5] = np.nan
    np.save(tmp_path / "new.npy", x)
    with pytest.raises(
        UserError,
        match=exactly(
            f"input: {tmp_path / 'new.npy'} has 1 NaN input value(s); the first is sample 2, "
            "channel 0, row 4, column 5. Clean the data."
        ),
    ):
        use.predict_file(run_dir, tmp_path / "new.npy", tmp_path / "out.csv")
