"""DistributedDataParallel on CPU (gloo, 2 processes) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_metrics

DLRUN = str(Path(sys.executable).with_name("dlrun"))


@pytest.mark.parametrize(
    "setup",
    [
        ["model.dropout=0.0"],
        # padded sequences of random lengths: each process's batches carry their lengths
        pytest.param(
            ["data=sines", "data.n_samples=300", "model=gru", "model.hidden_size=16"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["mlp", "padded-gru"],
)
def test_two_gloo_processes_match_one_process_and_write_one_folder(tmp_path, setup):
    args = ["trainer.device=cpu", "trainer.max_epochs=3", *setup]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for where, extra in (("ddp", ["trainer.devices=2"]), ("single", [])):
        (tmp_path / where).mkdir()
        done = subprocess.run(
            [DLRUN, *args, *extra],
            cwd=tmp_path / where,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    (ddp,) = (tmp_path / "ddp" / "outputs" / "train").glob("*/*")  # one run folder, by rank 0
    (single,) = (tmp_path / "single" / "outputs" / "train").glob("*/*")
    for a, b in zip(read_metrics(ddp), read_metrics(single), strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    one, two = (json.loads((d / "summary.json").read_text()) for d in (ddp, single))
    assert one["test"] == pytest.approx(two["test"], rel=1e-4)
    assert "devices: 2" in (ddp / "config.yaml").read_text()
