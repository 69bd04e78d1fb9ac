"""Every plain mistake gets one clear line and exit code 2, never a traceback (issue 11, "Trust").

Each test runs the real command, as a user would, and checks the start of the message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, ROOT, cli, make_cfg, train


def fails_with(result: subprocess.CompletedProcess, start: str, code: int = 2) -> None:
    """One `dlrun: ...` message that starts with `start`, the exit code, and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(f"dlrun: {start}"), result.stderr


def fails_with_problems(result: subprocess.CompletedProcess, *problems: str) -> None:
    """The "N problems in the config:" form, one indented line per problem."""
    fails_with(result, f"{len(problems)} problems in the config:\n")
    assert result.stderr.splitlines()[1:] == [f"  {p}" for p in problems]


@pytest.fixture(scope="module")
def forest(tmp_path_factory) -> Path:
    """A small random forest's run folder on the digits (image data, 1x8x8 samples)."""
    _, run_dir = train(
        tmp_path_factory.mktemp("forest"), "model=random_forest", "model.n_estimators=3"
    )
    return run_dir


def damaged_copy(run_dir: Path, where: Path, name: str, keep: int | None) -> Path:
    """A copy of a run folder whose checkpoints/`name` is cut to `keep` bytes (None: garbage)."""
    copy = where / f"{run_dir.name}-{keep}"
    shutil.copytree(run_dir, copy)
    model = copy / "checkpoints" / name
    model.write_bytes(b"garbage\n" if keep is None else model.read_bytes()[:keep])
    return model


# ---------------------------------------------------------------------------------------------
# 1. seeds


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["seed=-1"], "seed must be an int in the range [0, 4294967295]. Got -1.\n"),
        (
            ["trainer.seed=4294967296", "data.split_seed=-2"],
            "2 problems in the config:\n"
            "  data.split_seed must be an int in the range [0, 4294967295]. Got -2.\n"
            "  trainer.seed must be an int in the range [0, 4294967295]. Got 4294967296.\n",
        ),
    ],
)
def test_a_seed_out_of_range_is_a_config_problem(tmp_path, overrides, message):
    result = cli(*overrides, cwd=tmp_path)
    fails_with(result, message)
    assert result.stderr == f"dlrun: {message}"  # seed=-1: once, not again for its ${seed} copies


def test_the_largest_seed_is_valid():
    from dlrun.validate import validate

    conf = validate(make_cfg("seed=4294967295"))
    assert conf.trainer.seed == conf.data.split_seed == 2**32 - 1


# ---------------------------------------------------------------------------------------------
# 2, 3. a user's config folder: bad YAML, a folder that is not there


def test_invalid_yaml_names_the_file_line_and_column(tmp_path):
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "broken.yaml").write_text("name: mlp\na: [1, 2\n")
    result = cli("-cd", "configs", "model=broken", cwd=tmp_path)
    fails_with(
        result,
        f"{tmp_path / 'configs' / 'model' / 'broken.yaml'}: invalid YAML at line 3, column 1: "
        "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence that starts "
        "at line 2, column 4).\n",
    )
    assert len(result.stderr.splitlines()) == 1

    (tmp_path / "mine.yaml").write_text("defaults:\n  - train\nseed: {a: 1\n")
    result = cli("-cd", ".", "-cn", "mine", cwd=tmp_path)
    fails_with(result, f"{tmp_path / 'mine.yaml'}: invalid YAML at line 4, column 1: ")


def test_a_missing_config_dir_says_where_it_was_looked_up(tmp_path):
    fails_with(
        cli("-cd", "nosuch", cwd=tmp_path),
        f"--config-dir: the folder 'nosuch' does not exist (looked up relative to the current "
        f"directory, {tmp_path}).\n",
    )
    # dlrun's own recipes/, named from another folder than the repository's
    fails_with(
        cli("--config-dir=recipes", "-cn", "lenet5_digits", cwd=tmp_path),
        f"--config-dir: the folder 'recipes' does not exist (looked up relative to the current "
        f"directory, {tmp_path}). Did you mean {ROOT / 'recipes'}?\n",
    )


# ---------------------------------------------------------------------------------------------
# 4. hydra/launcher=slurm without SLURM


def hydra_node(*overrides: str):
    from hydra import compose, initialize_config_dir

    from dlrun.cli import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


def test_a_slurm_launcher_needs_sbatch(tmp_path, monkeypatch):
    from dlrun.errors import UserError
    from dlrun.launchers import check_launcher

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    for name in ("slurm", "submitit_slurm"):
        with pytest.raises(UserError) as err:
            check_launcher(hydra_node(f"hydra/launcher={name}"))
        assert str(err.value) == (
            f"hydra/launcher={name} needs SLURM (sbatch was not found on PATH); use "
            "hydra/launcher=joblib or submitit_local."
        )
    for name in ("basic", "joblib", "submitit_local"):
        check_launcher(hydra_node(f"hydra/launcher={name}"))

    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    check_launcher(hydra_node("hydra/launcher=slurm"))  # a cluster: nothing to say


# ---------------------------------------------------------------------------------------------
# 5. a damaged estimator file


@pytest.mark.parametrize("keep", [100, None])
def test_a_damaged_forest_file_is_named(tmp_path, forest, keep):
    model = damaged_copy(forest, tmp_path, "model.skops", keep)
    run_dir = model.parents[1]
    start = f"checkpoint {model} cannot be read (truncated or corrupted?): "
    fails_with(cli(f"run_dir={run_dir}", cwd=tmp_path, tool="dlrun-eval"), start)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    result = cli(
        f"run_dir={run_dir}", f"input={tmp_path / 'x.npy'}", cwd=tmp_path, tool="dlrun-predict"
    )
    fails_with(result, start)


def test_a_damaged_xgboost_file_is_named(tmp_path):
    _, run_dir = train(tmp_path, "model=xgboost", "model.n_estimators=3", "data=iris")
    for keep in (40, None):
        model = damaged_copy(run_dir, tmp_path, "model.ubj", keep)
        result = cli(f"run_dir={model.parents[1]}", cwd=tmp_path, tool="dlrun-eval")
        fails_with(result, f"checkpoint {model} cannot be read (truncated or corrupted?): ")
        assert len(result.stderr.splitlines()) == 1 and "[bt]" not in result.stderr


# ---------------------------------------------------------------------------------------------
# 6. dlrun-predict's input: a header without rows, an array of Python objects


def test_predict_refuses_empty_tables_and_object_arrays(tmp_path):
    _, run_dir = train(tmp_path, "model=random_forest", "model.n_estimators=3", "data=iris")

    def predict(name: str) -> subprocess.CompletedProcess:
        return cli(f"run_dir={run_dir}", f"input={name}", cwd=tmp_path, tool="dlrun-predict")

    (tmp_path / "header.csv").write_text("a,b,c,d\n")
    fails_with(
        predict("header.csv"),
        f"input: {tmp_path / 'header.csv'} has no rows (columns a, b, c, d). ",
    )
    objects = np.empty((2, 4), dtype=object)
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    fails_with(
        predict("objects.npy"),
        "input: objects.npy holds Python objects (an object array saved with allow_pickle=True), "
        "which dlrun does not load.",
    )
    (tmp_path / "text.npy").write_text("not numpy\n")
    fails_with(
        predict("text.npy"),
        "input: cannot read text.npy as a .npy array: it does not start with NumPy's .npy header.\n",
    )
    np.save(tmp_path / "none.npy", np.zeros((0, 4), dtype=np.float32))
    fails_with(predict("none.npy"), "input: none.npy holds no samples; ")


# ---------------------------------------------------------------------------------------------
# 7. the benchmark without a GPU


def test_bench_on_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(
        [sys.executable, "-m", "dlrun.bench", "--device", "cuda", "--scale", "0.01"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    fails_with(
        result,
        "--device: 'cuda' was asked for but this machine has no CUDA device. Use --device=cpu or auto.\n",
    )


# ---------------------------------------------------------------------------------------------
# 8. `+key=value` does not bypass the schema


def test_added_keys_are_checked_against_the_schema(tmp_path):
    fails_with_problems(
        cli("+trainer.clip.maxnorm=1", "+model.widht=3", "optim.lr=0", cwd=tmp_path),
        "model.widht is not a setting of model. Known keys: activation, batch_norm, dropout, "
        "hidden_sizes, init, init_from, init_part, name.",
        "trainer.clip.maxnorm is not a setting of trainer.clip. Known keys: max_norm, value. "
        "Did you mean 'max_norm'?",
        "optim.lr must be a float in the range (0, inf). Got 0.0.",
    )


def test_force_adding_a_known_key_still_works():
    from dlrun.validate import validate

    assert validate(make_cfg("++trainer.clip.max_norm=0.5")).trainer.clip.max_norm == 0.5


# ---------------------------------------------------------------------------------------------
# 9. every misspelled option at once


# every model the config folder offers, as the messages list them
MODEL_NAMES = ", ".join(sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")))


def models_with(extra: str) -> str:
    return ", ".join(sorted([*MODEL_NAMES.split(", "), extra]))


def test_every_unknown_option_is_reported_at_once(tmp_path):
    fails_with_problems(
        cli("model=mlpp", "optim=adamm", "logger=tensorbord", cwd=tmp_path),
        f"model: 'mlpp' is not a model. Choose one of: {MODEL_NAMES}. Did you mean 'mlp'?",
        "optim: 'adamm' is not an optimizer. Choose one of: adagrad, adam, adamw, momentum, "
        "nesterov, rmsprop, sgd. Did you mean 'adam'?",
        "logger: 'tensorbord' is not a logger. Choose one of: csv, mlflow, none, tensorboard. "
        "Did you mean 'tensorboard'?",
    )
    # a user's config folder adds options; a sweep's list is checked item by item
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "tiny.yaml").write_text("defaults:\n  - mlp\n")
    fails_with_problems(
        cli("-m", "-cd", "mine", "model=tiny,tinyy", "hydra/launcher=joblibb", cwd=tmp_path),
        f"model: 'tinyy' is not a model. Choose one of: {models_with('tiny')}. "
        "Did you mean 'tiny'?",
        "hydra/launcher: 'joblibb' is not a launcher. Choose one of: basic, joblib, slurm, "
        "submitit_local, submitit_slurm. Did you mean 'joblib'?",
    )


# ---------------------------------------------------------------------------------------------
# 10. output into a closed pipe (`dlrun --help | head -1`)


def test_help_into_a_closed_pipe_exits_quietly(tmp_path):
    reader_gone = subprocess.Popen(
        [str(BIN / "dlrun"), "--help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    reader_gone.stdout.close()  # before the command writes: its first write fails
    assert reader_gone.stderr.read() == b""
    assert reader_gone.wait(timeout=60) == 141  # 128 + SIGPIPE, as `ls | head -1` does
    reader_gone.stderr.close()


# ---------------------------------------------------------------------------------------------
# 11. a FIFO where a file is expected


def test_a_fifo_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    fails_with(
        cli("data=csv", "data.path=pipe.csv", "data.target=y", cwd=tmp_path, timeout=60),
        f"data.path: {tmp_path / 'pipe.csv'} is not a regular file (a FIFO). Give the path of "
        "a CSV file.\n",
    )
    fails_with(
        cli(f"trainer.resume={tmp_path / 'pipe.csv'}", cwd=tmp_path, timeout=60),
        f"trainer.resume: {tmp_path / 'pipe.csv'} is not a regular file (a FIFO). ",
    )


def test_a_fifo_is_not_read_as_input_or_image(tmp_path, forest):
    from PIL import Image

    os.mkfifo(tmp_path / "pipe.npy")
    result = cli(
        f"run_dir={forest}", "input=pipe.npy", cwd=tmp_path, tool="dlrun-predict", timeout=60
    )
    fails_with(result, f"input: {tmp_path / 'pipe.npy'} is not a regular file (a FIFO). ")

    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "images" / name / f"{i}.png")
    os.mkfifo(tmp_path / "images" / "b" / "3.png")
    result = cli("data=image_folder", "data.root=images", "model=lenet5", cwd=tmp_path, timeout=60)
    fails_with(
        result,
        f"data.root: 1 of the 7 images in {tmp_path / 'images'} cannot be read:\n"
        f"  {tmp_path / 'images' / 'b' / '3.png'}: is not a regular file (a FIFO)\n",
    )


# ---------------------------------------------------------------------------------------------
# 12. other plain mistakes met on the way


@pytest.mark.parametrize(
    "args, message",
    [
        (["seed=null"], "seed cannot be null.\n"),
        (["trainer.seed=${nope}"], "trainer.seed: Interpolation key 'nope' not found\n"),
        (
            ["-cd", "mine", "model=listed"],
            "In 'model/listed': Invalid type assigned: list is not a subclass of ModelConfig. ",
        ),
    ],
)
def test_other_mistakes_in_the_config(tmp_path, args, message):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "listed.yaml").write_text("- mlp\n- lstm\n")
    result = cli(*args, cwd=tmp_path)
    fails_with(result, message)
    assert len(result.stderr.splitlines()) == 1  # not Hydra's "Error executing job" as well


def test_the_bench_refuses_an_unwritable_out_before_measuring(tmp_path):
    """`make bench` runs for minutes: a --out it cannot write is refused first, in one line."""
    blocker = tmp_path / "a_file"
    blocker.write_text("kept\n")
    done = subprocess.run(
        [sys.executable, "-m", "dlrun.bench", "--out", str(blocker / "bench.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: --out: cannot write {blocker / 'bench.json'}: " in done.stderr
    assert done.stdout == "" and blocker.read_text() == "kept\n"
    # a file that is already there is kept until the bench writes its result
    kept = tmp_path / "old.json"
    kept.write_text("{}")
    from dlrun.bench import writable

    assert writable(kept, None) == kept and kept.read_text() == "{}"
    assert writable(tmp_path / "new" / "b.json", None) == tmp_path / "new" / "b.json"
    assert not (tmp_path / "new" / "b.json").exists()
