"""Your own data: arrays (.npz), long-format time series and text, for every model that reads
them; bad files get one clear message."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import cli, train
from dlrun import use
from dlrun.errors import UserError


def sines(n: int = 240, steps: int = 60, seed: int = 0):
    """Noisy sine waves of three frequencies and random lengths, padded with zeros: the class
    is the frequency."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, steps + 1, size=n)
    label = rng.integers(0, 3, size=n)
    t = np.arange(steps)
    x = np.sin(2 * np.pi * (label[:, None] + 1) * t / 20 + rng.uniform(0, 6, size=(n, 1)))
    x = x + 0.3 * rng.standard_normal((n, steps))
    x[t[None, :] >= lengths[:, None]] = 0
    return x.astype(np.float32), label, lengths


def npz(tmp_path, name: str = "data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_sequences_with_lengths_train_predict_and_evaluate(tmp_path):
    x, y, lengths = sines()
    path = npz(tmp_path, x=x, y=y, lengths=lengths)
    summary, run_dir = train(
        tmp_path, "data=npz", f"data.path={path}", "model=attention", "trainer.max_epochs=3"
    )
    assert summary["task"] == "classification" and summary["test"]["accuracy"] > 0  # it ran
    saved = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())
    assert saved["spec"]["kind"] == "sequence" and saved["spec"]["shape"] == [60, 1]
    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    new = npz(tmp_path, "new.npz", x=x[:12], lengths=lengths[:12])
    frame = pd.read_csv(use.predict_file(run_dir, new, tmp_path / "p.csv"))
    assert len(frame) == 12 and set(frame.columns) == {
        "prediction",
        "proba_0",
        "proba_1",
        "proba_2",
    }


def test_npz_normalizes_over_valid_steps_only_and_keeps_padding_zero(tmp_path):
    from omegaconf import OmegaConf

    from conftest import make_cfg
    from dlrun.data import build_data

    x, y, lengths = sines()
    x[x != 0] += 5.0  # valid steps around 5: padding would pull the mean towards 0
    path = npz(tmp_path, x=x, y=y, lengths=lengths)
    data = build_data(OmegaConf.to_object(make_cfg("data=npz", f"data.path={path}")).data)
    mean = data.norm[0].reshape(-1)[0]
    assert abs(mean - 5.0) < 0.1
    train_x, train_lengths = data.x_train, data.lengths["train"]
    padded = np.arange(60)[None, :] >= train_lengths[:, None]
    assert np.all(train_x[padded] == 0) and abs(train_x[~padded].mean()) < 1e-3


@pytest.mark.parametrize("model", ["mlp", "random_forest"])
def test_npz_tables_and_images(tmp_path, model):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 15).astype(np.uint8)[:, None]  # (N, 1, 8, 8) 8-bit pixels
    path = npz(tmp_path, "images.npz", x=images, y=digits.target)
    summary, _ = train(
        tmp_path,
        "data=npz",
        f"data.path={path}",
        f"model={model}",
        "trainer.max_epochs=5",
        "model.n_estimators=50" if model == "random_forest" else "trainer.max_epochs=5",
    )
    assert summary["test"]["accuracy"] > 0.9
    split = np.where(np.arange(len(digits.target)) % 5 == 0, "test", "train")
    table = npz(tmp_path, "table.npz", x=digits.data, y=digits.target, split=split)
    summary, _ = train(
        tmp_path,
        "data=npz",
        f"data.path={table}",
        f"model={model}",
        "trainer.max_epochs=5",
        "model.n_estimators=50" if model == "random_forest" else "trainer.max_epochs=5",
        name="table",
    )
    assert summary["test"]["accuracy"] > 0.9


def test_multi_output_regression_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    y = np.stack([x[:, 0] * 3 + 1, x[:, 1] - x[:, 2]], axis=1)
    summary, _ = train(
        tmp_path, "data=npz", f"data.path={npz(tmp_path, x=x, y=y)}", "trainer.max_epochs=20"
    )
    assert summary["task"] == "regression" and summary["test"]["r2"] > 0.8


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"x": np.array([np.zeros(3), np.zeros(5)], dtype=object), "y": np.array([0, 1])},
            "holds Python objects (an object array: ragged sequences or mixed types",
        ),
        ({"x": np.zeros((10, 4))}, "has no array 'y'; it needs 'x' (the samples) and 'y'"),
        (
            {"x": np.zeros((10, 4)), "y": np.zeros(9)},
            "has 10 samples in 'x' but 9 in 'y'; every array needs one row per sample.",
        ),
        (
            {"x": np.zeros((10, 6)), "y": np.arange(10) % 2, "lengths": np.full(10, 7)},
            "'lengths' of",
        ),
        (
            {"x": np.zeros((10, 2, 2, 2, 2)), "y": np.arange(10) % 2},
            "has shape (10, 2, 2, 2, 2); it must be",
        ),
    ],
    ids=["object", "missing_y", "rows", "lengths", "shape"],
)
def test_bad_npz_files_get_one_clear_message(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = cli("data=npz", f"data.path={path}", "trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("dlrun: data.path: ") and message in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_nan_in_a_sequence_is_named_by_sample_and_step(tmp_path):
    x, y, lengths = sines(n=60)
    x[7, 3] = np.nan
    with pytest.raises(
        UserError, match=r"NaN input value\(s\); the first is sample 7, (step|feature)"
    ):
        train(tmp_path, "data=npz", f"data.path={npz(tmp_path, x=x, y=y, lengths=lengths)}")
