"""The `dlrun` command as a user runs it: clear errors, the default run, the installed wheel."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, cli


def dlrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return cli(*args, cwd=cwd)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model=nosuch",
            "dlrun: model: 'nosuch' is not a model. Choose one of: "
            + ", ".join(sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")))
            + ".\n",
        ),
        ("optim.lr=abc", "dlrun: optim.lr must be a float. Got 'abc'.\n"),
        (
            "trainer.max_epochs=-1",
            "dlrun: trainer.max_epochs must be an int in the range [1, inf). Got -1.\n",
        ),
        (
            "data.val_split=1.5",
            "dlrun: data.val_split must be a float in the range (0, 1). Got 1.5.\n",
        ),
        (
            "trainer.batch_size=0",
            "dlrun: trainer.batch_size must be an int in the range [1, inf). Got 0.\n",
        ),
        (
            "optim=adma",
            "dlrun: optim: 'adma' is not an optimizer. Choose one of: adagrad, adam, adamw, momentum, "
            "nesterov, rmsprop, sgd. Did you mean 'adam'?\n",
        ),
        (
            "optim.lrr=0.1",
            "dlrun: optim.lrr is not a setting of optim. Known keys: amsgrad, betas, eps, "
            "head_lr_mult, layer_decay, lr, name, weight_decay. Did you mean 'lr'?\n",
        ),
        (
            "trainer.device=gpu",
            "dlrun: trainer.device must be one of: auto, cpu, cuda, cuda:N, mps. Got 'gpu'.\n",
        ),
    ],
)
def test_bad_input_gives_one_clear_message(tmp_path, override, message):
    result = dlrun(override, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == message
    assert "Traceback" not in result.stdout + result.stderr


def test_every_problem_is_reported_at_once(tmp_path):
    result = dlrun(
        "model.dropout=1.5", "trainer.max_epochs=0", "model.activation=relu6", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "dlrun: 3 problems in the config:",
        "  model.activation must be one of: gelu, leaky_relu, relu, sigmoid, tanh. Got 'relu6'. Did you mean 'relu'?",
        "  model.dropout must be a float in the range [0, 1). Got 1.5.",
        "  trainer.max_epochs must be an int in the range [1, inf). Got 0.",
    ]


def test_default_run_from_another_directory_and_bad_input_loses_nothing(tmp_path):
    result = dlrun("trainer.max_epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "train").glob("*/*")  # outputs/<task>/<date>/<time>
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().strip() == "- trainer.max_epochs=3"
    assert "accuracy" in result.stdout  # the final table
    before = {p: p.read_bytes() for p in (tmp_path / "outputs").rglob("*") if p.is_file()}

    bad = dlrun("trainer.batch_size=0", cwd=tmp_path)
    assert bad.returncode == 2
    # the earlier run is untouched, and the failed one left no folder behind
    assert {p: p.read_bytes() for p in (tmp_path / "outputs").rglob("*") if p.is_file()} == before
    assert list((tmp_path / "outputs" / "train").glob("*/*")) == [run_dir]


def test_help_lists_the_config_groups(tmp_path):
    result = dlrun("--help", cwd=tmp_path)
    assert result.returncode == 0
    # each group's options, wrapped onto indented lines at 100 columns
    listed = re.findall(r"^([a-z_]+) \(default ([\w-]+)\): (.*(?:\n    .*)*)$", result.stdout, re.M)
    groups = {group: " ".join(options.split()) for group, _, options in listed}
    defaults = {group: default for group, default, _ in listed}
    for group in ("model", "optim", "sched", "data"):
        assert groups[group].split(", ") == sorted(
            p.stem for p in (ROOT / "configs" / group).glob("*.yaml")
        )
    assert defaults == {
        "data": "digits",
        "hparams_search": "none",
        "logger": "none",
        "model": "mlp",
        "optim": "adam",
        "sched": "none",
        "trainer": "default",
    }
    # the settings with their defaults, read from the YAML files (what Hydra would compose)
    from conftest import make_cfg

    cfg = make_cfg()
    shown = dict(re.findall(r"^  ([a-z_.]+)=(\S+)", result.stdout, re.M))
    assert shown["seed"] == str(cfg.seed) and shown["task_name"] == cfg.task_name
    for key in ("max_epochs", "batch_size", "early_stopping.patience", "workers"):
        value = eval(f"cfg.trainer.{key}")  # noqa: S307 (a dotted name of our own config)
        assert shown[f"trainer.{key}"] == str(value), key
    assert shown["trainer.clip.max_norm"] == "null" and shown["trainer.precision"] == "32"
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


def test_installed_wheel_finds_its_configs(tmp_path):
    """`pip install .` (not editable) ships configs/ inside the package."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            wheel_dir,
            ROOT,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("dlrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "dlrun/configs/train.yaml",
        "dlrun/configs/model/lenet5.yaml",
        "dlrun/configs/optim/adam.yaml",
        "dlrun/recipe_configs/optimizers.yaml",
    } <= names
    # every package of the source (dlrun.objectives was once left out of the wheel)
    packages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dlrun").rglob("__init__.py")}
    assert packages <= names, sorted(packages - names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )

    def installed(code: str, *args: str) -> subprocess.CompletedProcess:
        """Python code run where only the installed copy of dlrun is importable (the source
        checkout is not on the path)."""
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"},
        )

    code = "import sys; from dlrun.cli import main; sys.argv = ['dlrun', *sys.argv[1:]]; main()"
    result = installed(code, "trainer.max_epochs=1", "model=lenet5")
    assert result.returncode == 0, result.stderr
    (summary,) = (tmp_path / "outputs").rglob("summary.json")
    assert json.loads(summary.read_text())["model"] == "lenet5"
    # the recipes ship too: dlrun-recipe lists them from the installed copy, anywhere
    code = "from dlrun.recipes import main_recipe, recipe_dir; print(recipe_dir()); main_recipe()"
    listed = installed(code, "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == str(target / "dlrun" / "recipe_configs")
    assert "  optimizers " in listed.stdout and "Optimizers compared" in listed.stdout
    assert (
        str(target)
        in subprocess.run(
            [sys.executable, "-c", "import dlrun; print(dlrun.__file__)"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"},
            cwd=tmp_path,
        ).stdout
    )


def test_tab_completion_offers_choices_not_schemas_and_answers_at_once(tmp_path):
    """What Hydra's bash completion runs at each TAB (`dlrun -sc query=bash` with COMP_LINE):
    group options and top-level words are answered without Hydra; deeper keys by Hydra, with
    the schemas left out either way."""
    from conftest import BIN

    def complete(line: str) -> list[str]:
        env = {**os.environ, "COMP_LINE": line}
        done = subprocess.run(
            [str(BIN / "dlrun"), "-sc", "query=bash"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    options = complete("dlrun data=")
    assert "data=parquet" in options and "data=digits" in options
    assert not [o for o in options if "schema" in o]
    assert complete("dlrun model=lenet5 data=pa") == ["data=parquet"]
    assert complete("dlrun -m optim=ad") == ["optim=adagrad", "optim=adam", "optim=adamw"]
    first = complete("dlrun ")
    assert {"model=", "model.", "data=", "trainer.", "seed=", "task_name=", "hydra."} <= set(first)
    assert complete("dlrun trai") == ["trainer.", "trainer="]
    assert complete("dlrun trainer.max_ep") == ["trainer.max_epochs="]  # Hydra's own answer


def test_a_recipe_runs_by_name_from_any_directory(tmp_path):
    result = cli("lenet5_digits", "trainer.max_epochs=1", cwd=tmp_path, tool="dlrun-recipe")
    assert result.returncode == 0, result.stderr[-2000:]
    (summary,) = (tmp_path / "outputs" / "lenet5_digits").rglob("summary.json")
    done = json.loads(summary.read_text())
    assert done["model"] == "lenet5" and done["epochs_run"] == 1
    wrong = cli("lenet5_digit", cwd=tmp_path, tool="dlrun-recipe")
    assert wrong.returncode == 2 and "Did you mean 'lenet5_digits'?" in wrong.stderr
    listed = cli(cwd=tmp_path, tool="dlrun-recipe")
    assert listed.returncode == 2 and "  related_task_digits " in listed.stdout
    from conftest import BIN

    piped = subprocess.run(  # the reader goes away early: no traceback
        ["sh", "-c", f"'{BIN / 'dlrun-recipe'}' --list | head -1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.stdout.startswith("usage: dlrun-recipe") and "Traceback" not in piped.stderr
