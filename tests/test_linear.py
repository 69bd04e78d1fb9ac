"""model=linear: scikit-learn's logistic and linear regression on dlrun's split, scored, saved and
used again like the other estimators."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import cli, make_cfg, read_metrics, train
from dlrun import use


def prepared(*overrides: str):
    """(seed, {split: (flat inputs, targets)}) as the run sees them: the same split and
    normalization, built by dlrun's own data code."""
    from omegaconf import OmegaConf

    from dlrun.data import build_data

    conf = OmegaConf.to_object(make_cfg(*overrides))
    data = build_data(conf.data)
    splits = {}
    for name in ("train", "val", "test"):
        x, y = data.split(name)
        splits[name] = (x.reshape(len(x), -1), y)
    return conf.seed, splits


def raw_test_samples() -> tuple[np.ndarray, np.ndarray]:
    """The default data's test samples as the dataset loads them (before normalization), as a
    user would give them to dlrun-predict."""
    from omegaconf import OmegaConf

    from dlrun.data import split_indices
    from dlrun.registry import get_data

    conf = OmegaConf.to_object(make_cfg())
    raw = get_data(conf.data.name).load(conf.data)
    _, _, test = split_indices(raw, conf.data)
    return raw.x[test], raw.y[test]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A linear run on the default data (digits), and what its terminal showed."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("linear")
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        summary, run_dir = train(tmp, "model=linear")
    return summary, run_dir, shown.getvalue()


def test_digits_accuracy_is_scikit_learns_logistic_regression(digits_run):
    from sklearn.linear_model import LogisticRegression

    summary, run_dir, shown = digits_run
    seed, splits = prepared()
    (x, y), (xt, yt) = splits["train"], splits["test"]
    direct = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y)
    accuracy = float((direct.predict(xt) == yt).mean())
    assert summary["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert summary["test"]["accuracy"] > 0.9
    assert direct.n_iter_.max() < 1000  # converged on the standardized pixels
    assert summary["family"] == "estimator" and summary["epochs_run"] == 1
    assert summary["params"] == 64 * 10 + 10  # one weight per pixel and class, one intercept each
    assert "650 coefficients" in " ".join(shown.split()) and "tree nodes" not in shown
    (record,) = read_metrics(run_dir)
    assert record["val_accuracy"] == summary["val"]["accuracy"]
    assert not (run_dir / "feature_importance.png").exists()  # no importances: none drawn
    assert (run_dir / "confusion_matrix.png").is_file()


def test_saved_model_loads_back_and_predicts_the_same_probabilities(digits_run, tmp_path):
    import skops.io
    from sklearn.linear_model import LogisticRegression

    from dlrun.models.linear import TRUSTED_TYPES

    summary, run_dir, _ = digits_run
    path = run_dir / "checkpoints" / "model.skops"
    assert skops.io.get_untrusted_types(file=path) == TRUSTED_TYPES == []
    model = skops.io.load(path, trusted=TRUSTED_TYPES)
    seed, splits = prepared()
    (x, y), (xt, _) = splits["train"], splits["test"]
    direct = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y)
    assert isinstance(model, LogisticRegression)
    np.testing.assert_array_equal(model.predict_proba(xt), direct.predict_proba(xt))

    # dlrun-eval and dlrun-predict read it back: the run's metrics, the same predictions
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = use.evaluate(run_dir, [], tmp_path / "eval")
    assert result["test"] == summary["test"] and result["val"] == summary["val"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"] == summary["test"]
    raw, truth = raw_test_samples()
    np.save(tmp_path / "test.npy", raw)
    frame = pd.read_csv(use.predict_file(run_dir, tmp_path / "test.npy", tmp_path / "pred.csv"))
    assert (frame["prediction"].to_numpy() == truth).mean() == summary["test"]["accuracy"]
    probabilities = frame.filter(like="proba_").to_numpy()
    np.testing.assert_allclose(probabilities, direct.predict_proba(xt), atol=1e-6)  # CSV digits
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p in before} == before


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_diabetes_rmse_is_least_squares_or_ridge(tmp_path, alpha):
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.metrics import root_mean_squared_error

    summary, _ = train(tmp_path, "data=diabetes", "model=linear", f"model.alpha={alpha}")
    seed, splits = prepared("data=diabetes")
    (x, y), (xt, yt) = splits["train"], splits["test"]
    direct = LinearRegression() if alpha == 0 else Ridge(alpha=alpha, random_state=seed)
    rmse = root_mean_squared_error(yt, direct.fit(x, y).predict(xt).astype(np.float64))
    assert summary["task"] == "regression"
    assert summary["test"]["rmse"] == pytest.approx(rmse, rel=1e-12)
    assert summary["params"] == 10 + 1  # ten features and the intercept
    other = LinearRegression() if alpha else Ridge(alpha=1.0)  # the other model scores otherwise
    assert abs(root_mean_squared_error(yt, other.fit(x, y).predict(xt)) - rmse) > 1e-3
    assert 35 < summary["test"]["rmse"] < 75  # in the target's units (std ~77)


def test_a_fit_that_stops_short_says_so_in_one_line(tmp_path, caplog):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, "dlrun"):
        warnings.simplefilter("always")
        train(tmp_path, "model=linear", "model.max_iter=3")
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    said = [r.getMessage() for r in caplog.records if "converge" in r.getMessage()]
    assert said == [
        "linear: lbfgs did not converge in model.max_iter=3 iterations; the model is kept as it "
        "stopped. Raise model.max_iter."
    ]


def test_a_bad_setting_is_one_clear_message(tmp_path):
    result = cli("model=linear", "model.C=0", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == "dlrun: model.C must be a float in the range (0, inf). Got 0.0.\n"
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.json"))
