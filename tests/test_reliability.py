"""Resume exactly, stop cleanly, write atomically, load safely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, sigint_after_epoch, train
from dlrun.checkpoints import load_checkpoint
from dlrun.errors import ConfigError, Diverged, Interrupted, UserError

BIN = Path(sys.executable).parent


def without_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]


@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_interrupted_then_resumed_ends_identical(tmp_path, monkeypatch, model):
    args = (f"model={model}", "trainer.max_epochs=6", "sched=cosine", "model.dropout=0.2")
    full, full_dir = train(tmp_path, *args, name="full")
    with sigint_after_epoch(monkeypatch, 3), pytest.raises(Interrupted) as stopped:
        train(tmp_path, *args, name="cut")
    assert stopped.value.exit_code == 130
    cut = tmp_path / "cut"
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_run"] == 3
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 3

    resumed, _ = train(tmp_path, *args, f"trainer.resume={cut}", name="elsewhere")
    assert resumed["run_dir"] == str(cut) and not (tmp_path / "elsewhere").exists()  # same folder
    assert without_times(read_metrics(cut)) == without_times(read_metrics(full_dir))
    for key in ("val", "test", "best_epoch", "epochs_run"):
        assert resumed[key] == full[key]


def test_sigterm_mid_epoch_stops_cleanly_and_resume_auto_continues(tmp_path):
    env = {**os.environ}
    args = ["model=lstm", "model.hidden_size=256", "trainer.max_epochs=4", "task_name=t"]
    process = subprocess.Popen(
        [str(BIN / "dlrun"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120

    def epochs_done() -> int:
        found = list(tmp_path.glob("outputs/t/*/*/metrics.jsonl"))
        return len(found[0].read_text().splitlines()) if found else 0

    while epochs_done() < 1 and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # into epoch 2
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "dlrun: interrupted by SIGTERM after epoch" in err and "Traceback" not in err
    (run_dir,) = tmp_path.glob("outputs/t/*/*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (
        len(read_metrics(run_dir))
        == summary["epochs_run"]
        == load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    )

    done = subprocess.run(
        [str(BIN / "dlrun"), *args, "trainer.resume=auto"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len(list(tmp_path.glob("outputs/t/*/*"))) == 1  # no second run folder


def test_resume_refuses_another_experiment(tmp_path):
    _, run_dir = train(tmp_path, "trainer.max_epochs=1")
    with pytest.raises(
        ConfigError,
        match=r"was saved by a different experiment: model.hidden_sizes was \[128, 64\], now \[32\]",
    ):
        train(
            tmp_path, "trainer.max_epochs=2", "model.hidden_sizes=[32]", f"trainer.resume={run_dir}"
        )
    with pytest.raises(
        UserError, match="is neither a run folder with checkpoints/last.pt nor a checkpoint file"
    ):
        train(tmp_path, f"trainer.resume={tmp_path / 'nowhere'}")


def test_a_diverging_run_is_recorded_and_best_is_kept(tmp_path, monkeypatch):
    with pytest.raises(
        Diverged, match=r"the training loss became (nan|inf) in epoch 1, step \d+ of 41"
    ):
        train(tmp_path, "optim=sgd", "optim.lr=1e12", "trainer.max_epochs=3", name="bad")
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "optim.lr=1000000000000.0" in summary["error"]

    # a loss that turns NaN in epoch 3 (step 5): best.pt keeps the best epoch before it
    from dlrun.objectives.supervised import Classification

    real, calls = Classification.mean_loss, []

    def poisoned(self, model, batch, phase="main"):
        calls.append(1)
        loss = real(self, model, batch, phase)
        return loss * float("nan") if len(calls) == 2 * 41 + 5 else loss

    monkeypatch.setattr(Classification, "mean_loss", poisoned)
    with pytest.raises(Diverged) as stopped:
        train(tmp_path, "trainer.max_epochs=5", name="late")
    assert "in epoch 3, step 5 of 41" in str(stopped.value)
    assert "checkpoints/best.pt keeps epoch 2, the best before it (val_loss" in str(stopped.value)
    best = load_checkpoint(tmp_path / "late" / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["early_stopping"]["best_epoch"] == 2
    assert all(torch.isfinite(w).all() for w in best["model"].values())
    assert [r["epoch"] for r in read_metrics(tmp_path / "late")] == [1, 2]


KILL_LOOP = """
import sys, torch
from dlrun.checkpoints import save_checkpoint
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], {"i": i, "w": torch.full((3_000_000,), float(i))})
"""


def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.3, 0.55, 0.8):
        process = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(path)])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        process.kill()  # SIGKILL, most likely in the middle of a write
        process.wait()
        state = load_checkpoint(path)
        assert state["i"] >= 1 and bool((state["w"] == float(state["i"])).all())


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/dlrun_exploit_marker")


def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "best.pt"
    torch.save({"model": Exploit()}, path)
    with pytest.raises(
        UserError,
        match=rf"checkpoint {path} holds objects that would need code to load; it was refused",
    ):
        load_checkpoint(path)
    assert not MARKER.exists()
    # the message never steers to the unsafe path (torch's own advice: weights_only=False)
    with pytest.raises(UserError) as refused:
        load_checkpoint(path)
    assert "weights_only" not in str(refused.value) and "posix.system" in str(refused.value)


def test_a_truncated_checkpoint_is_named(tmp_path):
    _, run_dir = train(tmp_path, "trainer.max_epochs=1")
    path = run_dir / "checkpoints" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        UserError, match=rf"checkpoint {path} cannot be read \(truncated or corrupted\?\)"
    ):
        load_checkpoint(path)


def test_a_checkpoint_older_than_a_setting_resumes_when_the_setting_has_its_default(tmp_path):
    """A run saved before `data.augment` existed trained as its default (no augmentation): it
    may be resumed with the default, not with another value. Speed-only settings may change."""
    from conftest import make_cfg
    from dlrun.runner import check_same_experiment
    from dlrun.training import conf_dict
    from dlrun.validate import validate

    conf = validate(make_cfg())
    saved = conf_dict(conf)
    del saved["data"]["augment"]  # as an older dlrun wrote it
    check_same_experiment(saved, conf, tmp_path / "last.pt")  # accepted
    fast = validate(make_cfg("trainer.cuda_graphs=off", "trainer.data_placement=stream"))
    check_same_experiment(saved, fast, tmp_path / "last.pt")  # accepted: how fast, not what
    other = validate(make_cfg("data.augment.hflip=true"))
    with pytest.raises(ConfigError, match=r"data.augment.hflip was None, now True"):
        check_same_experiment(saved, other, tmp_path / "last.pt")


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_a_signal_while_xgboost_fits_is_recorded_truthfully(tmp_path, signum):
    """An estimator has no epochs to keep: Ctrl-C used to be reported as "a second Ctrl-C" with
    a last.pt to resume from that does not exist, and SIGTERM killed it with summary.json left
    "running". Both now stop the fit at once and say what is true."""
    from conftest import BIN, signal_once_recorded

    run_dir = tmp_path / "run"
    args = ["model=xgboost", "data=digits", "model.n_estimators=5000", "model.learning_rate=0.01"]
    args += ["trainer.early_stopping.patience=null", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(
        [str(BIN / "dlrun"), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    signal_once_recorded(process, run_dir / "metrics.jsonl", 5, signum)
    _, err = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    message = f"interrupted by {name} while xgboost was fitting; it has no epochs to resume"
    assert process.returncode == 128 + signum and "Traceback" not in err.decode()
    assert err.decode().startswith(f"dlrun: {message}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"].startswith(message)
    assert 5 <= summary["epochs_run"] < 5000  # the rounds written before it stopped
