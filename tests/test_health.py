"""Training health: each classic pathology, planted on tiny data, is found with the right advice."""

from __future__ import annotations

import json

import pytest

from conftest import read_metrics, train
from dlrun.errors import Diverged


def kinds(summary: dict) -> dict[str, dict]:
    return {f["kind"]: f for f in summary["health"]}


def test_a_learning_rate_far_too_high_kills_relu_units(tmp_path):
    summary, run_dir = train(tmp_path, "optim=sgd", "optim.lr=2.0", "trainer.max_epochs=3")
    dead = kinds(summary)["dead_relu"]
    assert dead["advice"] == "try optim.lr=0.2 or model.activation=leaky_relu"
    assert (
        "of the units of layer" in dead["message"] and "(optim.lr=2 with relu)" in dead["message"]
    )
    assert read_metrics(run_dir)[-1]["health/dead_relu_frac"] >= 0.3


def test_a_plain_rnn_on_a_long_adding_problem_has_vanishing_gradients(tmp_path):
    summary, run_dir = train(
        tmp_path,
        "model=rnn",
        "data=adding",
        "data.seq_len=100",
        "data.n_samples=1000",
        "trainer.max_epochs=3",
    )
    finding = kinds(summary)["vanishing_gradients"]
    assert finding["advice"] == "try model=lstm or model=gru"
    assert read_metrics(run_dir)[-1]["health/grad_first_last_ratio"] < 1e-3


def test_no_clipping_and_a_huge_learning_rate_explode(tmp_path):
    with pytest.raises(Diverged):
        train(
            tmp_path,
            "model=rnn",
            "data=adding",
            "data.seq_len=30",
            "data.n_samples=1000",
            "optim=sgd",
            "optim.lr=3",
            "trainer.max_epochs=3",
        )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (finding,) = summary["health"]
    assert (
        finding["kind"] == "exploding_gradients"
        and finding["advice"] == "try trainer.clip.max_norm=1.0"
    )
    assert "with clipping off" in finding["message"]


def test_a_wide_mlp_on_a_tiny_training_split_overfits(tmp_path):
    summary, _ = train(
        tmp_path,
        "data=moons",
        "data.noise=0.5",
        "data.n_samples=200",
        "data.test_split=0.5",
        "model.hidden_sizes=[512,512]",
        "optim.lr=0.01",
        "trainer.max_epochs=60",
        "trainer.early_stopping.patience=null",
    )
    finding = kinds(summary)["overfitting"]
    assert finding["advice"] == "try model.dropout=0.2 or more data"
    assert "the model is overfitting" in finding["message"]


def test_a_healthy_run_has_no_findings_and_diagnostics_can_be_turned_off(tmp_path):
    summary, run_dir = train(tmp_path, name="healthy")
    assert summary["health"] == []
    assert "health/dead_relu_frac" in read_metrics(run_dir)[0]
    off, off_dir = train(tmp_path, "trainer.diagnostics=false", "trainer.max_epochs=2", name="off")
    assert off["health"] == [] and not any(
        k.startswith("health/") for k in read_metrics(off_dir)[0]
    )


def test_a_learning_rate_far_too_low_plateaus(tmp_path):
    summary, _ = train(tmp_path, "optim=sgd", "optim.lr=1e-6", "trainer.max_epochs=6")
    finding = kinds(summary)["plateau"]
    assert finding["advice"] == "try optim.lr=1e-05"
    assert (
        "the model is not learning; each epoch changes the weights by under" in finding["message"]
    )


def test_dead_units_advice_names_only_settings_the_model_has():
    from types import SimpleNamespace

    from dlrun.health import dead_relu

    history = [{"epoch": 1, "health/dead_relu_frac": 0.5, "health/dead_relu_frac/layer1": 0.5}]
    optim = SimpleNamespace(lr=0.01)
    mlp = SimpleNamespace(optim=optim, model=SimpleNamespace(activation="relu"))
    resnet = SimpleNamespace(optim=optim, model=SimpleNamespace(weights="DEFAULT"))
    assert dead_relu(history, mlp).advice == "try optim.lr=0.001 or model.activation=leaky_relu"
    assert dead_relu(history, resnet).advice == "try optim.lr=0.001"
