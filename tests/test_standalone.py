"""A trained run stands on its own: its fitted preprocessing is saved with it, so predicting and
exporting need only the run folder, and dlrun-eval refuses data that changed."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import cli, train
from dlrun import use
from dlrun.errors import UserError


def write_table(path, n: int = 160, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "size": rng.normal(50, 20, size=n),
            "colour": rng.choice(["red", "green", "blue"], size=n),
            "weight": rng.normal(3, 1, size=n),
        }
    )
    frame["label"] = np.where((frame["size"] > 50) ^ (frame["colour"] == "red"), "big", "small")
    frame.loc[[3, 17], "size"] = np.nan
    frame.loc[5, "colour"] = np.nan
    frame.to_csv(path, index=False)
    return frame


def table_run(tmp_path, *extra):
    write_table(tmp_path / "train.csv")
    return train(
        tmp_path,
        "data=csv",
        f"data.path={tmp_path / 'train.csv'}",
        "data.target=label",
        "data.missing=impute",
        "trainer.max_epochs=3",
        *extra,
    )


def test_predict_and_export_need_only_the_run_folder(tmp_path):
    _, run_dir = table_run(tmp_path)
    saved = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())
    table = saved["table"]
    assert table["numeric"] == ["size", "weight"] and table["categorical"] == ["colour"]
    assert table["categories"]["colour"] == ["blue", "green", "red"]
    assert (
        set(table["numeric_fill"]) == {"size", "weight"}
        and saved["spec"]["task"] == "classification"
    )
    assert saved["sources"]["data.path"].startswith("sha256:")

    new = write_table(tmp_path / "new.csv", n=40, seed=1).drop(columns="label")
    new.loc[2, "weight"] = np.nan  # imputed from the training rows, as in training
    new.to_csv(tmp_path / "new.csv", index=False)
    before = use.predict_file(run_dir, tmp_path / "new.csv", tmp_path / "before.csv").read_bytes()
    exported = use.export(run_dir, "onnx", tmp_path / "before.onnx")
    contract = exported.with_name("before.onnx.json").read_bytes()

    os.remove(tmp_path / "train.csv")  # the training data is gone
    after = use.predict_file(run_dir, tmp_path / "new.csv", tmp_path / "after.csv").read_bytes()
    assert after == before  # to the last digit
    again = use.export(run_dir, "onnx", tmp_path / "after.onnx")
    assert again.with_name("after.onnx.json").read_bytes() == contract
    import onnxruntime

    features = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
    outputs = [
        onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
            None, {"input": features}
        )[0]
        for p in (exported, again)
    ]
    assert np.array_equal(*outputs)

    result = cli(
        f"run_dir={run_dir}",
        f"input={tmp_path / 'new.csv'}",
        "output=cli.csv",
        cwd=tmp_path,
        tool="dlrun-predict",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli.csv").read_bytes() == before


def test_images_predict_without_their_dataset(tmp_path, monkeypatch):
    """digits ships with scikit-learn, so 'deleting' it means no dataset can be read at all."""
    summary, run_dir = train(tmp_path, "model=lenet5", "trainer.max_epochs=1")
    from sklearn.datasets import load_digits

    images = load_digits().images[:20, None].astype(np.float32) / 16
    np.save(tmp_path / "x.npy", images)
    before = use.predict_file(run_dir, tmp_path / "x.npy", tmp_path / "a.csv").read_bytes()

    import dlrun.registry

    def no_data(name):
        raise AssertionError(f"predict read the dataset {name}")

    monkeypatch.setattr(dlrun.registry, "get_data", no_data)
    assert use.predict_file(run_dir, tmp_path / "x.npy", tmp_path / "b.csv").read_bytes() == before
    path = use.export(run_dir, "torchscript", None)
    with torch.no_grad():
        got = torch.jit.load(str(path))(torch.as_tensor(images)).numpy()
    expected = pd.read_csv(tmp_path / "a.csv").filter(like="proba_").to_numpy()
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_eval_refuses_a_training_file_that_changed(tmp_path):
    summary, run_dir = table_run(tmp_path)
    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    frame = pd.read_csv(tmp_path / "train.csv")
    frame.loc[0, "weight"] += 1.0  # one value edited after training
    frame.to_csv(tmp_path / "train.csv", index=False)
    result = cli(f"run_dir={run_dir}", "out_dir=eval2", cwd=tmp_path, tool="dlrun-eval")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"dlrun: data.path: the file {tmp_path / 'train.csv'} changed since the run trained "
        "(its content hash differs)"
    )
    assert not (tmp_path / "eval2").exists()


MARKER = "/tmp/dlrun_planted_pickle_marker"


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_saved_preprocessing_loads_without_pickle(tmp_path):
    import pickle

    _, run_dir = train(tmp_path, "trainer.max_epochs=1")
    arrays = run_dir / "preprocessing" / "arrays.npz"
    os.remove(MARKER) if os.path.exists(MARKER) else None
    arrays.write_bytes(pickle.dumps({"mean": Exploit()}))  # a pickle in its place
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(
        UserError, match=r"arrays.npz cannot be read as plain arrays .* it was refused"
    ):
        use.predict_file(run_dir, tmp_path / "x.npy", tmp_path / "p.csv")
    assert not os.path.exists(MARKER)
    # an object array saved inside a real .npz is refused the same way
    np.savez(arrays, mean=np.array([Exploit()], dtype=object), std=np.ones(1))
    with pytest.raises(UserError, match=r"cannot be read as plain arrays"):
        use.predict_file(run_dir, tmp_path / "x.npy", tmp_path / "p.csv")
    assert not os.path.exists(MARKER)


def test_config_yaml_and_the_checkpoints_hold_the_same_resolved_config(tmp_path):
    from omegaconf import OmegaConf

    _, run_dir = train(tmp_path, "trainer.max_epochs=1", "data=diabetes")
    written = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    for name in ("best.pt", "last.pt"):
        assert torch.load(run_dir / "checkpoints" / name, weights_only=True)["config"] == written
    assert (
        written["trainer"]["loss"] == "mse"
        and written["trainer"]["early_stopping"]["mode"] == "min"
    )
