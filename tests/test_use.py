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


def test_evaluate_on_other_data_settings(tmp_path):
    summary, run_dir = train(tmp_path, "trainer.max_epochs=3")
    other = use.evaluate(run_dir, ["data.test_split=0.3"], tmp_path / "eval")
    assert other["test"] != summary["test"]
    assert "test_split: 0.3" in (tmp_path / "eval" / "config.yaml").read_text()


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
@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_export_matches_the_original(tmp_path, fmt, model):
    _, run_dir = train(tmp_path, f"model={model}", "trainer.max_epochs=1")
    path = use.export(run_dir, fmt, None)
    assert path.parent == run_dir / "export" and path.stat().st_size > 1000
    trained = use.Trained(run_dir)
    x = torch.as_tensor(trained.prep.splits["test"][0][:32])  # (B, *shape), more than export saw
    with torch.no_grad():
        expected = trained.model(x).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
    else:
        got = torch.jit.load(str(path))(x).detach().numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)


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
