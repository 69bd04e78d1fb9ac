"""Model families beyond the core: sequence networks, attention, trees; regression; pairings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_cfg, read_metrics, train
from dlrun.errors import ConfigError, UserError


def test_images_become_row_sequences_for_recurrent_models():
    from dlrun.data import DataSpec, adapt

    spec = DataSpec("d", "classification", "image", (2, 3, 4), num_classes=2)
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)  # (N, C, H, W)
    seq = adapt(x, spec, "sequence")
    assert spec.view("sequence").shape == (3, 8) and seq.shape == (2, 3, 8)  # (N, H, C*W)
    assert seq[0, 1].tolist() == x[0, 0, 1].tolist() + x[0, 1, 1].tolist()  # row 1 of each channel
    assert adapt(x, spec, "flat").shape == (2, 24)


def test_a_pairing_that_makes_no_sense_names_both_sides(tmp_path):
    with pytest.raises(ConfigError) as refused:
        train(tmp_path, "model=lenet5", "data=iris")
    assert str(refused.value) == (
        "model=lenet5 takes image input and cannot read data=iris (tabular data, shape 4). "
        "Models that read it: autoencoder, gan, linear, mlp, random_forest, vae, xgboost."
    )


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize(
    "pooling, bidirectional", [("last", False), ("last", True), ("mean", True), ("max", False)]
)
def test_recurrent_models_use_one_fused_module_and_every_pooling(kind, pooling, bidirectional):
    from omegaconf import OmegaConf

    from dlrun.data import DataSpec
    from dlrun.registry import MODELS

    conf = OmegaConf.to_object(
        make_cfg(
            f"model={kind}",
            f"model.pooling={pooling}",
            f"model.bidirectional={bidirectional}",
            "model.num_layers=2",
            "model.hidden_size=8",
        )
    )
    spec = DataSpec("d", "classification", "sequence", (5, 3), num_classes=4)
    net = MODELS[kind].build(conf.model, spec)
    fused = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
    assert isinstance(net.rnn, fused) and net.rnn.bidirectional == bidirectional
    assert net(torch.randn(6, 5, 3)).shape == (6, 4)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_attention_ignores_padded_steps(pooling, positions):
    from dlrun.nn import TransformerNet

    torch.manual_seed(0)
    net = TransformerNet(
        3,
        6,
        2,
        d_model=16,
        heads=4,
        layers=2,
        ff_size=32,
        dropout=0.0,
        positions=positions,
        pooling=pooling,
    ).eval()
    x = torch.randn(2, 6, 3)
    lengths = torch.tensor([4, 6])
    other = x.clone()
    other[0, 4:] = 100.0  # different padding after the real 4 steps of sample 0
    with torch.no_grad():
        a, b = net(x, lengths), net(other, lengths)
        assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(net(x)[0], net(other)[0])  # without lengths the padding counts


def test_xgboost_writes_one_line_per_round_and_stops_early(tmp_path):
    summary, run_dir = train(tmp_path, "model=xgboost", "trainer.early_stopping.patience=5")
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == list(range(1, len(records) + 1))
    assert set(records[0]) == {"round", "train_loss", "val_loss"}
    assert summary["stopped_early"] and summary["epochs_run"] == len(records) < 500
    assert summary["best_epoch"] == summary["epochs_run"] - 5
    best = min(records, key=lambda r: r["val_loss"])
    assert best["round"] == summary["best_epoch"]
    assert summary["test"]["accuracy"] >= 0.9


def test_estimators_are_saved_in_formats_that_run_no_code(tmp_path):
    import skops.io
    import xgboost
    from omegaconf import OmegaConf

    from dlrun.data import build_data

    forest, rf_dir = train(tmp_path, "model=random_forest", "model.n_estimators=30", name="rf")
    boosted, xgb_dir = train(tmp_path, "model=xgboost", "model.n_estimators=30", name="xgb")
    data = build_data(OmegaConf.to_object(make_cfg()).data)
    x = data.x_test.reshape(len(data.x_test), -1)

    path = rf_dir / "checkpoints" / "model.skops"
    untrusted = skops.io.get_untrusted_types(file=path)
    model = skops.io.load(path, trusted=untrusted)
    assert (model.predict(x) == data.y_test).mean() == pytest.approx(forest["test"]["accuracy"])

    booster = xgboost.XGBClassifier()
    booster.load_model(xgb_dir / "checkpoints" / "model.ubj")
    assert (booster.predict(x) == data.y_test).mean() == pytest.approx(boosted["test"]["accuracy"])
    assert forest["params"] > 30 and boosted["params"] > 30  # tree nodes


@pytest.mark.parametrize("model", ["mlp", "random_forest", "xgboost"])
def test_diabetes_regression_reports_rmse_mae_r2(tmp_path, model):
    summary, run_dir = train(tmp_path, "data=diabetes", f"model={model}", "trainer.max_epochs=60")
    assert summary["task"] == "regression"
    test = summary["test"]
    assert set(test) == {"rmse", "mae", "r2", "loss"}
    assert test["loss"] == pytest.approx(test["rmse"] ** 2)
    assert 0.2 < test["r2"] < 0.8 and 35 < test["rmse"] < 75  # in the target's units (std ~77)
    if model == "mlp":
        records = read_metrics(run_dir)
        assert records[0]["train_loss"] > 1000  # the loss is reported in the target's units too


def test_l1_loss_for_regression_and_its_monitor(tmp_path):
    summary, _ = train(
        tmp_path,
        "data=diabetes",
        "trainer.loss=l1",
        "trainer.max_epochs=20",
        "trainer.early_stopping.monitor=val_mae",
    )
    assert summary["test"]["loss"] == summary["test"]["mae"]
    assert summary["monitor"] == {"metric": "val_mae", "mode": "min", "best": summary["val"]["mae"]}


def test_task_settings_must_fit_the_data(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"trainer.loss: 'mse' is not a classification loss. Choose one of: auto, cross_entropy",
    ):
        train(tmp_path, "trainer.loss=mse")
    with pytest.raises(
        ConfigError,
        match=r"trainer.early_stopping.monitor: 'val_accuracy' is not a regression metric",
    ):
        train(tmp_path, "data=diabetes", "trainer.early_stopping.monitor=val_accuracy")


def test_the_task_can_be_overridden(tmp_path):
    summary, _ = train(
        tmp_path,
        "data=digits",  # classes named '0'..'9': regression fits those numbers
        "data.task=regression",
        "model=random_forest",
        "model.n_estimators=20",
    )
    assert summary["task"] == "regression" and summary["test"]["r2"] > 0.75
    with pytest.raises(UserError, match=r"the classes of 'iris' are names \('setosa', "):
        train(tmp_path, "data=iris", "data.task=regression", name="names")
    with pytest.raises(
        UserError, match=r"data.task: 'classification' needs one target of whole-number classes"
    ):
        train(tmp_path, "data=adding", "data.task=classification", name="again")
    with pytest.raises(
        UserError,
        match=r"data: cannot make a stratified split for data.test_split: 84 of 214 classes have fewer than 2 samples among 442",
    ):
        train(tmp_path, "data=diabetes", "data.task=classification", name="again")


@pytest.mark.parametrize(
    "data, model, floor",
    [
        ("iris", "mlp", 0.85),
        ("wine", "random_forest", 0.9),
        ("breast_cancer", "xgboost", 0.9),
        ("moons", "mlp", 0.9),
    ],
)
def test_bundled_tabular_data(tmp_path, data, model, floor):
    summary, _ = train(tmp_path, f"data={data}", f"model={model}")
    assert summary["task"] == "classification" and summary["test"]["accuracy"] >= floor


def test_same_split_whatever_the_model():
    from omegaconf import OmegaConf

    from dlrun.data import build_data

    a = build_data(OmegaConf.to_object(make_cfg("model=mlp", "data=wine")).data)
    b = build_data(OmegaConf.to_object(make_cfg("model=xgboost", "data=wine")).data)
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, f"x_{split}"), getattr(b, f"x_{split}"))


def test_adding_problem_data():
    from dlrun.data.synthetic import adding_problem

    x, y = adding_problem(2000, 50, seed=0)
    assert x.shape == (2000, 50, 2) and y.shape == (2000,)
    assert (x[:, :, 1].sum(axis=1) == 2).all()
    assert (x[:, :25, 1].sum(axis=1) == 1).all()  # one marker in each half
    marked = (x[:, :, 0] * x[:, :, 1]).sum(axis=1)
    assert np.allclose(marked, y)
    assert abs(y.var() - 1 / 6) < 0.02


def test_sequence_regression_runs(tmp_path):
    summary, run_dir = train(
        tmp_path,
        "data=adding",
        "data.seq_len=10",
        "data.n_samples=500",
        "model=gru",
        "trainer.max_epochs=3",
    )
    assert (
        summary["task"] == "regression"
        and json.loads((run_dir / "summary.json").read_text())["test"]["rmse"] > 0
    )


@pytest.mark.parametrize("model", ["random_forest", "xgboost"])
def test_estimators_give_what_the_library_gives_when_called_directly(tmp_path, model):
    """Same parameters, seed and fixed split (data.split_column): the same test metrics."""
    from sklearn import metrics
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    split = np.random.default_rng(0).choice(
        ["train", "val", "test"], size=len(frame), p=[0.6, 0.2, 0.2]
    )
    frame.assign(split=split).to_csv(tmp_path / "wine.csv", index=False)
    summary, _ = train(
        tmp_path,
        "data=csv",
        f"data.path={tmp_path / 'wine.csv'}",
        "data.target=target",
        "data.split_column=split",
        "data.normalize=false",
        f"model={model}",
        "seed=3",
    )

    x = frame.drop(columns="target").to_numpy(np.float32)
    y = frame["target"].to_numpy()
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        (x[split == s], y[split == s]) for s in ("train", "val", "test")
    )
    if model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        direct = RandomForestClassifier(
            n_estimators=300, max_features="sqrt", n_jobs=-1, random_state=3
        )
        direct.fit(x_train, y_train)
    else:
        import xgboost

        direct = xgboost.XGBClassifier(
            n_estimators=500,
            max_depth=6,
            learning_rate=0.1,
            tree_method="hist",
            random_state=3,
            early_stopping_rounds=10,
            eval_metric="mlogloss",
            device="cpu",
        )
        direct.fit(x_train, y_train, eval_set=[(x_train, y_train), (x_val, y_val)], verbose=False)
    proba = direct.predict_proba(x_test)
    assert summary["test"]["accuracy"] == metrics.accuracy_score(y_test, proba.argmax(1))
    assert summary["test"]["f1_macro"] == metrics.f1_score(y_test, proba.argmax(1), average="macro")
    assert summary["test"]["loss"] == pytest.approx(metrics.log_loss(y_test, proba), rel=1e-6)
