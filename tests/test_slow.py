"""Full-size runs through the command line (`make test-slow`): minutes, not seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
DLRUN = str(Path(sys.executable).with_name("dlrun"))


def sweep(tmp_path: Path, *args: str) -> dict[str, dict]:
    """Run `dlrun -m ...` in tmp_path; return each job's summary by model name."""
    result = subprocess.run(
        [DLRUN, "-m", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=3000,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))
    ]
    return {s["model"]: s for s in summaries}


def test_model_zoo_on_digits(tmp_path):
    floors = {
        "mlp": 0.95,
        "lenet5": 0.97,
        "rnn": 0.0,
        "gru": 0.93,
        "lstm": 0.93,
        "attention": 0.90,
        "random_forest": 0.93,
        "xgboost": 0.93,
    }
    found = sweep(tmp_path, "model=" + ",".join(floors))
    assert set(found) == set(floors)
    for model, floor in floors.items():
        summary = found[model]
        assert summary["status"] == "completed" and set(summary["test"]) == {
            "accuracy",
            "f1_macro",
            "loss",
        }
        assert summary["test"]["accuracy"] >= floor, (model, summary["test"])


def test_lstm_learns_the_adding_problem_and_rnn_does_not(tmp_path):
    found = sweep(tmp_path, "-cd", str(ROOT / "recipes"), "-cn", "adding_lstm_vs_rnn")
    assert found["lstm"]["monitor"]["best"] < 0.01
    assert found["rnn"]["monitor"]["best"] > 0.1  # near the 0.167 of predicting the mean


def test_every_sequence_model_beats_the_majority_on_variable_length_series(tmp_path):
    """All sequence models on one variable-length dataset (data=sines: lengths 20 to 100, three
    balanced classes, so the majority class scores about 1/3): each clearly beats it."""
    models = ("rnn", "gru", "lstm", "attention", "cnn1d")
    found = sweep(tmp_path, "data=sines", "trainer.max_epochs=15", "model=" + ",".join(models))
    assert set(found) == set(models)
    for model in models:
        assert found[model]["test"]["accuracy"] >= 0.6, (model, found[model]["test"])
