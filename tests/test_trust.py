"""No result is ever lost, overwritten or silently wrong: run and sweep folders, the epoch's
commit point, stopping mid-write, full disks, file modes, and what other commands may touch."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, cli, read_metrics, sigint_after_epoch, train
from dlrun.checkpoints import load_checkpoint
from dlrun.errors import Interrupted, UserError


def hashes(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones too) and the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def without_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]


# ---------------------------------------------------------------------------------------------
# Run and sweep folders


def test_a_refused_run_changes_no_byte_of_the_folder_it_was_refused(tmp_path):
    result = cli("trainer.max_epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert {".hydra", ".dlrun-run", "config.yaml", "summary.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    before = hashes(run_dir)
    again = cli("trainer.max_epochs=2", "optim.lr=0.01", "hydra.run.dir=run", cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.startswith(f"dlrun: the run folder {run_dir} already holds a run;")
    assert hashes(run_dir) == before  # .hydra/config.yaml and overrides.yaml included

    # a folder that holds anything else is not a run's to write either
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.yaml").write_text("mine\n")
    other = cli("trainer.max_epochs=1", "hydra.run.dir=notes", cwd=tmp_path)
    assert other.returncode == 2
    assert (
        "hydra.run.dir: " in other.stderr and "is not empty (it holds config.yaml)" in other.stderr
    )
    assert (tmp_path / "notes" / "config.yaml").read_text() == "mine\n"


def test_concurrent_starts_into_one_folder_train_exactly_one_run(tmp_path):
    runs = [
        subprocess.Popen(
            [str(BIN / "dlrun"), "trainer.max_epochs=3", f"seed={seed}", "hydra.run.dir=run"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2, 3)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2], results
    for code, err in results:
        if code == 2:
            assert err.startswith("dlrun: the run folder") and "already holds a run" in err
            assert "Traceback" not in err
    records = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3]  # one experiment, not two mixed
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text().count("seed=") == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("epoch 1/3") == 1


def test_a_sweep_into_an_earlier_sweep_folder_is_refused_whole(tmp_path):
    args = ("-m", "model=mlp,random_forest", "model.n_estimators=5", "trainer.max_epochs=1")
    first = cli(*args[:2], *args[3:], "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep_dir = tmp_path / "sweep"
    before = hashes(sweep_dir)
    assert "leaderboard.csv" in before and "0/summary.json" in before
    again = cli(*args[:2], "trainer.max_epochs=2", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.startswith(
        f"dlrun: hydra.sweep.dir: {sweep_dir} already holds an earlier sweep"
    )
    assert hashes(sweep_dir) == before  # jobs, leaderboard, multirun.yaml, overrides untouched


def test_refused_configs_leave_no_folder_behind(tmp_path):
    result = cli("optim.lr=-1", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    result = cli("optim.lr=-1", "hydra.run.dir=empty", cwd=tmp_path)
    assert result.returncode == 2 and list((tmp_path / "empty").iterdir()) == []  # kept, empty
    sweep = cli("-m", "model=mlp,nothing", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert sweep.returncode == 2 and "model: 'nothing' is not a model" in sweep.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden"])
def test_task_name_cannot_leave_outputs(tmp_path, name):
    (tmp_path / "work").mkdir()
    result = cli("trainer.max_epochs=1", f"task_name={name}", cwd=tmp_path / "work")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("dlrun: task_name must be a folder name:")
    assert f"Got '{name}'." in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert not (tmp_path / "work" / "outputs").exists()


def test_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        train(tmp_path, "trainer.max_epochs=1")
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"summary.json", "best.pt", "last.pt", "curves.png", "metrics.jsonl"} <= {
        p.name for p in files
    }
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o644, path


# ---------------------------------------------------------------------------------------------
# The epoch's commit point, resume, stops and failed writes


ARGS = ("trainer.max_epochs=4", "sched=cosine", "model.dropout=0.2")


def cut_after(tmp_path, monkeypatch, k: int, name: str = "cut") -> Path:
    with sigint_after_epoch(monkeypatch, k):
        with pytest.raises(Interrupted):
            train(tmp_path, *ARGS, name=name)
    return tmp_path / name


def test_resume_repairs_a_kill_between_the_checkpoints_and_the_metrics_line(tmp_path, monkeypatch):
    """A kill after last.pt but before best.pt (an older order of writes) or before the
    metrics line: resume restores both from last.pt and ends where the full run ends."""
    full, full_dir = train(tmp_path, *ARGS, name="full")
    cut = cut_after(tmp_path, monkeypatch, 2)
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["early_stopping"]["best_epoch"] == 2
    (cut / "checkpoints" / "best.pt").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text(lines[0] + "\n")  # epoch 2's line lost
    leftover = cut / "checkpoints" / ".last.pt.k2j3h4g5.tmp"
    leftover.write_bytes(b"half a checkpoint")

    resumed, _ = train(tmp_path, *ARGS, f"trainer.resume={cut}", name="again")
    assert not leftover.exists()
    assert without_times(read_metrics(cut)) == without_times(read_metrics(full_dir))
    for key in ("val", "test", "best_epoch", "epochs_run"):
        assert resumed[key] == full[key]


def test_resume_refuses_a_folder_whose_checkpoints_disagree(tmp_path, monkeypatch):
    import torch

    cut = cut_after(tmp_path, monkeypatch, 2)
    last = cut / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["early_stopping"]["best_epoch"] = 1  # best.pt should hold epoch 1, but it is gone
    torch.save(state, last)
    (cut / "checkpoints" / "best.pt").unlink()
    before = hashes(cut)
    with pytest.raises(
        UserError, match=r"best.pt is missing, but .*last.pt names epoch 1 as the best"
    ):
        train(tmp_path, *ARGS, f"trainer.resume={cut}", name="again")
    assert hashes(cut) == before


def test_a_second_ctrl_c_during_a_checkpoint_write_waits_for_it(tmp_path, monkeypatch):
    import dlrun.training

    real = dlrun.training.save_checkpoint

    def save(path, state):
        if path.name == "last.pt" and state["epoch"] == 2:
            signal.raise_signal(signal.SIGINT)  # stop after this epoch ...
            signal.raise_signal(signal.SIGINT)  # ... no: quit at once, mid-write
        real(path, state)

    monkeypatch.setattr(dlrun.training, "save_checkpoint", save)
    with pytest.raises(Interrupted) as stopped:
        train(tmp_path, *ARGS)
    assert stopped.value.exit_code == 130
    assert str(stopped.value).startswith(
        "interrupted by a second Ctrl-C; checkpoints/last.pt keeps epoch 2"
    )
    run_dir = tmp_path / "run"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_run"] == 2
    assert not list(run_dir.rglob("*.tmp"))


def test_a_full_disk_on_resume_ends_cleanly_with_the_checkpoints_intact(tmp_path, monkeypatch):
    import dlrun.checkpoints

    cut = cut_after(tmp_path, monkeypatch, 2)
    (cut / "summary.json").write_text(json.dumps({"status": "completed"}))  # as after a run
    before = {k: v for k, v in hashes(cut).items() if k.startswith("checkpoints/")}
    real = os.fsync

    def full(fd):
        if "/checkpoints/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(dlrun.checkpoints.os, "fsync", full)
    with pytest.raises(UserError) as failed:
        train(tmp_path, *ARGS, f"trainer.resume={cut}", name="again")
    message = str(failed.value)
    assert failed.value.exit_code == 2
    assert message.startswith(f"cannot write {cut / 'checkpoints'}/")
    assert message.endswith("(its previous version is intact): No space left on device.")
    assert {k: v for k, v in hashes(cut).items() if k.startswith("checkpoints/")} == before
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == message
    assert not list(cut.rglob("*.tmp"))


def test_a_file_size_limit_on_resume_through_the_cli(tmp_path):
    """The same through the command and a real operating-system limit: the kernel refuses the
    checkpoint's bytes (EFBIG), dlrun says so in one line and exits 2."""
    import resource

    first = cli("trainer.max_epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "run"
    before = {k: v for k, v in hashes(run_dir).items() if k.startswith("checkpoints/")}
    size = (run_dir / "checkpoints" / "last.pt").stat().st_size

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = subprocess.run(
        [str(BIN / "dlrun"), "trainer.max_epochs=2", f"trainer.resume={run_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith(f"dlrun: cannot write {run_dir / 'checkpoints'}/")
    assert "File too large" in result.stderr
    assert {k: v for k, v in hashes(run_dir).items() if k.startswith("checkpoints/")} == before
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_a_run_in_use_is_not_resumed_by_another_process(tmp_path):
    from dlrun import folders

    _, run_dir = train(tmp_path, "trainer.max_epochs=1")
    folders.hold_run(run_dir)  # as a process that is resuming it now
    try:
        result = cli("trainer.max_epochs=2", f"trainer.resume={run_dir}", cwd=tmp_path)
    finally:
        folders.release(run_dir)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"dlrun: trainer.resume: {run_dir} is in use by another dlrun process (pid {os.getpid()}"
    )


def test_a_divergence_in_the_first_epoch_says_no_checkpoint_was_written(tmp_path):
    from dlrun.errors import Diverged

    with pytest.raises(Diverged, match="no epoch finished, so no checkpoint was written"):
        train(tmp_path, "optim=sgd", "optim.lr=1e12", "trainer.max_epochs=2")
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_the_overfitting_finding_names_the_checkpoint_the_run_kept():
    from conftest import make_cfg
    from dlrun.health import findings
    from dlrun.validate import validate

    conf = validate(make_cfg("trainer.early_stopping.monitor=val_accuracy"))
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.5 + abs(e - 6) * 0.05, "val_accuracy": e}
        for e in range(1, 21)
    ]
    (found,) = [f for f in findings(history, conf, best_epoch=19) if f.kind == "overfitting"]
    assert "validation loss has risen since epoch 6" in found.message
    assert found.message.endswith("the best checkpoint keeps epoch 19 (by val_accuracy)")


# ---------------------------------------------------------------------------------------------
# What a sweep report says about jobs that were killed or never ran


def test_report_of_a_killed_sweep_names_interrupted_and_missing_jobs(tmp_path):
    args = ["-m", "model=lstm", "model.hidden_size=256", "seed=1,2,3", "trainer.max_epochs=3"]
    process = subprocess.Popen(
        [str(BIN / "dlrun"), *args, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sweep_dir = tmp_path / "sweep"
    deadline = time.time() + 240
    metrics = sweep_dir / "1" / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    process.kill()  # SIGKILL: job 1 dies mid-run, job 2 never starts
    process.wait()
    assert (sweep_dir / "0" / "summary.json").exists()
    report = cli(str(sweep_dir), cwd=tmp_path, tool="dlrun-report")
    assert report.returncode == 0, report.stderr
    rows = {r["job"]: r for r in _csv(sweep_dir / "leaderboard.csv")}
    assert rows["0"]["status"] == "ok"
    assert rows["1"]["status"] == "interrupted"
    assert rows["1"]["error"].startswith("killed before it finished; continue with trainer.resume=")
    note = (
        "2 of its 3 planned jobs ran; the other 1 never started, so the best is the best of 2 only"
    )
    assert note in " ".join(report.stdout.split())
    assert note in (sweep_dir / "leaderboard.md").read_text()


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Other commands never change what a run wrote


def test_predict_never_overwrites_without_asking_and_never_its_input(tmp_path):
    import numpy as np

    _, run_dir = train(tmp_path, "model=random_forest", "model.n_estimators=5")
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), dtype=np.float32))

    def predict(*args):
        return cli(f"run_dir={run_dir}", *args, cwd=tmp_path, tool="dlrun-predict")

    assert predict("input=x.npy").returncode == 0
    made = run_dir / "predictions" / "x.csv"
    before = made.read_bytes()
    again = predict("input=x.npy")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.startswith(
        f"dlrun: output: {made.absolute()} already exists; it is never replaced"
    )
    assert made.read_bytes() == before
    assert predict("input=x.npy", "overwrite=true").returncode == 0

    own = predict("input=x.npy", "output=x.npy", "overwrite=true")
    assert (
        own.returncode == 2 and "is the input file; dlrun never writes over its input" in own.stderr
    )
    record = predict("input=x.npy", f"output={run_dir / 'summary.json'}", "overwrite=true")
    assert record.returncode == 2 and "whose records are never overwritten" in record.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_a_saved_config_is_never_resolved(tmp_path, monkeypatch):
    _, run_dir = train(tmp_path, "trainer.max_epochs=1")
    path = run_dir / "config.yaml"
    path.write_text(
        path.read_text().replace("task_name: train", "task_name: ${oc.env:DLRUN_SECRET}")
    )
    monkeypatch.setenv("DLRUN_SECRET", "hunter2")
    result = subprocess.run(
        [str(BIN / "dlrun-eval"), f"run_dir={run_dir}", "out_dir=eval"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"dlrun: {path}: task_name holds '${{oc.env:DLRUN_SECRET}}', an interpolation."
    )
    assert "hunter2" not in result.stdout + result.stderr
    assert not (tmp_path / "eval").exists()
    assert not any(b"hunter2" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_eval_never_writes_into_an_earlier_evaluation(tmp_path):
    from dlrun import use

    _, run_dir = train(tmp_path, "trainer.max_epochs=1")
    use.evaluate(run_dir, [], tmp_path / "eval")
    before = hashes(tmp_path / "eval")
    with pytest.raises(
        UserError, match=r"out_dir: .* already holds results; they are never overwritten"
    ):
        use.evaluate(run_dir, [], tmp_path / "eval")
    assert hashes(tmp_path / "eval") == before


def test_a_run_piped_into_head_trains_to_its_end(tmp_path):
    """The reader of the terminal output going away (`dlrun | head -1`) does not stop a run."""
    command = f"'{BIN / 'dlrun'}' trainer.max_epochs=2 hydra.run.dir=run | head -1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path):
    """The dated default folder of a run taken by another run started in the same second: the
    second takes <folder>-2 (no refusal, nothing shared); a folder the user named is refused."""
    from omegaconf import OmegaConf

    from dlrun import folders

    taken = tmp_path / "outputs" / "train" / "2026-11-30" / "10-07-44"
    taken.mkdir(parents=True)
    (taken / "summary.json").write_text("{}")  # another run's
    before = hashes(taken)

    def config(*hydra_overrides: str):
        return OmegaConf.create(
            {
                "task_name": "train",
                "hydra": {
                    "run": {"dir": str(taken)},
                    "overrides": {"hydra": list(hydra_overrides)},
                },
            }
        )

    chosen = config()
    folders.RunFolders().on_run_start(chosen)
    try:
        assert chosen.hydra.run.dir == str(taken.with_name("10-07-44-2"))
        assert (taken.with_name("10-07-44-2") / folders.RUN_MARKER).is_file()
        assert hashes(taken) == before
    finally:
        folders.release(taken.with_name("10-07-44-2"))
    with pytest.raises(folders.Refused, match="already holds a run"):
        folders.RunFolders().on_run_start(config(f"hydra.run.dir={taken}"))
    assert hashes(taken) == before
