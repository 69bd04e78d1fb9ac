"""Tests compose the real primary config (configs/train.yaml) with overrides that shrink it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dlrun.catalog import load_catalog
from dlrun.cli import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # dlrun's commands in this environment


def cli(
    *args: str, cwd: Path, tool: str = "dlrun", timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run one of dlrun's commands in `cwd`, as a user would."""
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def make_cfg(*overrides: str):
    """The config `dlrun <overrides>` would run (without Hydra's own `hydra` node)."""
    load_catalog()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(overrides))


def train(tmp_path: Path, *overrides: str, name: str = "run") -> tuple[dict, Path]:
    """Run in-process into tmp_path/name; return (summary, run_dir)."""
    from dlrun.runner import run

    run_dir = tmp_path / name
    summary = run(make_cfg(*overrides), run_dir)
    return summary, run_dir


@contextlib.contextmanager
def sigint_after_epoch(monkeypatch, k: int):
    """Send SIGINT to this process once epoch k is recorded (as Ctrl-C would)."""
    import signal

    import dlrun.report

    real = dlrun.report.epoch_progress

    @contextlib.contextmanager
    def progress(max_epochs, monitor):
        with real(max_epochs, monitor) as on_epoch:

            def hook(record, improved):
                on_epoch(record, improved)
                if record["epoch"] == k:
                    signal.raise_signal(signal.SIGINT)

            yield hook

    monkeypatch.setattr(dlrun.report, "epoch_progress", progress)
    yield
    monkeypatch.setattr(dlrun.report, "epoch_progress", real)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def resumes_exactly(tmp_path, monkeypatch, args, full: dict, full_dir, cut: int = 2) -> None:
    """Stopped after epoch `cut` (into tmp_path/cut) and resumed, the run ends with the
    uninterrupted run's records and test metrics."""
    from dlrun.errors import Interrupted

    with sigint_after_epoch(monkeypatch, cut), pytest.raises(Interrupted):
        train(tmp_path, *args, name="cut")
    resumed, _ = train(tmp_path, *args, f"trainer.resume={tmp_path / 'cut'}", name="again")
    times = ("train_time_s", "epoch_time_s", "health/probe_time_s")
    strip = [{k: v for k, v in r.items() if k not in times} for r in read_metrics(tmp_path / "cut")]
    assert strip == [{k: v for k, v in r.items() if k not in times} for r in read_metrics(full_dir)]
    assert resumed["test"] == full["test"]


@pytest.fixture(autouse=True)
def _quiet_threads():
    """Two cores here: keep torch from oversubscribing them (one thread per xdist worker)."""
    import os

    import torch

    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    yield


def pytest_collection_modifyitems(config, items):
    """Every test marked `gpu` is skipped where there is no CUDA device (`make test-gpu` passes
    on a laptop), whether or not it says so itself."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu:
            item.add_marker(skip)


def signal_once_recorded(process, records: Path, lines: int, signum: int) -> None:
    """Send `signum` to `process` once `records` (a job's metrics.jsonl) holds `lines` epochs."""
    import time

    deadline = time.time() + 300
    while time.time() < deadline and not (
        records.exists() and len(records.read_text().splitlines()) >= lines
    ):
        assert process.poll() is None, "the process ended before it could be signalled"
        time.sleep(0.05)
    process.send_signal(signum)
