"""Using a trained run: evaluate, predict, export."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import cli, make_cfg, train
from dlrun import use
from dlrun.errors import UserError


def raw_test_samples(*overrides: str) -> tuple[np.ndarray, np.ndarray]:
    """The test split's samples as the dataset loads them (before normalization)."""
    from omegaconf import OmegaConf

    from dlrun.data import split_indices
    from dlrun.registry import get_data

    conf = OmegaConf.to_object(make_cfg(*overrides))
    raw = get_data(conf.data.name).load(conf.data)
    _, _, test = split_indices(raw, conf.data)
    return raw.x[test], raw.y[test]


@pytest.mark.parametrize(
    "overrides",
    [
        ("model=mlp", "trainer.max_epochs=3"),
        ("model=lenet5", "trainer.max_epochs=1"),
        ("model=random_forest", "model.n_estimators=20"),
        ("model=xgboost", "model.n_estimators=20"),
        ("model=mlp", "data=diabetes", "trainer.max_epochs=5"),
    ],
    ids=["mlp", "lenet5", "random_forest", "xgboost", "mlp_regression"],
)
def test_evaluate_reproduces_the_run_exactly_and_predict_agrees(tmp_path, overrides):
    summary, run_dir = train(tmp_path, *overrides)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = use.evaluate(run_dir, [], tmp_path / "eval")
    assert result["test"] == summary["test"] and result["val"] == summary["val"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"] == summary["test"]

    x, y = raw_test_samples(*overrides)
    np.save(tmp_path / "test.npy", x)
    out = use.predict_file(run_dir, tmp_path / "test.npy", tmp_path / "pred.csv")
    frame = pd.read_csv(out)
    assert len(frame) == len(y)
    if summary["task"] == "classification":
        assert (frame["prediction"].to_numpy() == y).mean() == summary["test"]["accuracy"]
        probabilities = frame.filter(like="proba_").to_numpy()
        assert probabilities.shape[1] == 10 and np.allclose(probabilities.sum(axis=1), 1)
    else:
        rmse = float(np.sqrt(np.mean((frame["prediction"].to_numpy() - y) ** 2)))
        assert rmse == pytest.approx(summary["test"]["rmse"], rel=1e-5)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p in before} == before


def test_evaluate_refuses_a_changed_split(tmp_path):
    """A changed split would score rows the model trained on (val accuracy 1.0): refused, with
    every refused key named, and nothing written."""
    _, run_dir = train(tmp_path, "trainer.max_epochs=1")
    with pytest.raises(UserError) as refused:
        use.evaluate(run_dir, ["data.test_split=0.3", "data=iris"], tmp_path / "eval")
    message = str(refused.value)
    assert message.startswith("2 problems in the config:")
    assert "data.test_split: dlrun-eval scores the run's own validation and test rows" in message
    assert "data: dlrun-eval scores" in message and "It may set: data.path, data.root" in message
    assert not (tmp_path / "eval").exists()
    result = cli(f"run_dir={run_dir}", "seed=3", cwd=tmp_path, tool="dlrun-eval")
    assert result.returncode == 2 and result.stderr.startswith("dlrun: seed: dlrun-eval scores")
    assert "Traceback" not in result.stderr
    # where the data and the model are read and run may change
    moved = use.evaluate(run_dir, ["trainer.device=cpu"], tmp_path / "eval")
    assert moved["test"] == json.loads((run_dir / "summary.json").read_text())["test"]


def test_predict_a_csv_table_with_categories(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "size": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], size=n),
        }
    )
    frame["label"] = np.where((frame["size"] > 0) ^ (frame["colour"] == "red"), "big", "small")
    frame.loc[3, "size"] = np.nan
    frame["split"] = ["test" if i % 5 == 0 else "train" for i in range(n)]
    frame.to_csv(tmp_path / "table.csv", index=False)
    summary, run_dir = train(
        tmp_path,
        "data=csv",
        f"data.path={tmp_path / 'table.csv'}",
        "data.target=label",
        "data.split_column=split",
        "data.missing=impute",
        "model=random_forest",
        "model.n_estimators=50",
    )
    test_rows = frame[frame["split"] == "test"].drop(columns=["label", "split"])
    test_rows.to_csv(tmp_path / "new.csv", index=False)
    predicted = pd.read_csv(use.predict_file(run_dir, tmp_path / "new.csv", tmp_path / "out.csv"))
    truth = frame.loc[frame["split"] == "test", "label"].to_numpy()
    assert set(predicted.columns) == {"prediction", "proba_big", "proba_small"}
    assert (predicted["prediction"].to_numpy() == truth).mean() == summary["test"]["accuracy"]

    test_rows.drop(columns="colour").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="lacks the feature column"):
        use.predict_file(run_dir, tmp_path / "bad.csv", tmp_path / "out2.csv")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", ["mlp", "lstm", "lenet5"])
def test_export_takes_raw_samples_and_matches_predict(tmp_path, fmt, model):
    """The exported model holds the normalization (and LeNet-5's resize, the image-rows reshape):
    fed samples as the dataset loads them, it gives dlrun-predict's probabilities. It is one
    file, and its contract is written beside it."""
    _, run_dir = train(tmp_path, f"model={model}", "trainer.max_epochs=1")
    path = use.export(run_dir, fmt, None)
    assert path.parent == run_dir / "export" and path.stat().st_size > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, f"{path.name}.json"])
    x, _ = raw_test_samples(f"model={model}")  # uint8 pixels, 1x8x8
    x = (x[:32] / np.float32(16)).astype(np.float32)  # digits' pixels are 0..16: scaled to [0, 1]
    np.save(tmp_path / "x.npy", x)
    predicted = pd.read_csv(use.predict_file(run_dir, tmp_path / "x.npy", tmp_path / "p.csv"))
    expected = predicted.filter(like="proba_").to_numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x})[0]
    else:
        got = torch.jit.load(str(path))(torch.as_tensor(x)).detach().numpy()
    assert got.shape == (32, 10) and np.allclose(got, expected, rtol=1e-4, atol=1e-5)
    contract = json.loads((run_dir / "export" / f"{path.name}.json").read_text())
    assert contract["input"]["shape"] == ["batch", 1, 8, 8]
    assert "pixels scaled to [0, 1]" in contract["input"]["what"]
    assert contract["classes"] == [str(k) for k in range(10)]
    # a second export never replaces the first unless asked
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"already exists; it is never replaced unless you ask"):
        use.export(run_dir, fmt, None)
    assert path.read_bytes() == before
    use.export(run_dir, fmt, None, overwrite=True)


def test_export_of_a_table_lists_its_features_in_order(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.normal(size=90) * 100, "colour": rng.choice(["b", "a"], 90)})
    frame["y"] = (frame["size"] > 0).astype(int)
    frame.to_csv(tmp_path / "t.csv", index=False)
    _, run_dir = train(
        tmp_path,
        "data=csv",
        f"data.path={tmp_path / 't.csv'}",
        "data.target=y",
        "trainer.max_epochs=2",
    )
    path = use.export(run_dir, "onnx", None)
    contract = json.loads(path.with_name("model.onnx.json").read_text())
    assert contract["input"]["features"] == ["size", "colour=a", "colour=b"]
    assert contract["input"]["shape"] == ["batch", 3] and contract["classes"] == ["0", "1"]


def test_cli_tools_give_clear_errors(tmp_path):
    def tool(name: str, *args: str) -> subprocess.CompletedProcess:
        return cli(*args, cwd=tmp_path, tool=name)

    result = tool("dlrun-eval", f"run_dir={tmp_path}")
    assert result.returncode == 2
    assert (
        result.stderr
        == f"dlrun: run_dir: {tmp_path} is not a dlrun run folder (it has no config.yaml).\n"
    )
    assert tool("dlrun-eval").stderr.startswith("dlrun: run_dir is required.")

    _, run_dir = train(tmp_path, "model=random_forest", "model.n_estimators=5")
    result = tool("dlrun-export", f"run_dir={run_dir}")
    assert result.returncode == 2 and "only torch networks are exported" in result.stderr
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 3), dtype=np.float32))
    result = tool("dlrun-predict", f"run_dir={run_dir}", f"input={tmp_path / 'wrong.npy'}")
    assert result.returncode == 2
    assert result.stderr.endswith("holds samples of shape 3x3; this run needs 1x8x8.\n")
    assert "Traceback" not in result.stderr
