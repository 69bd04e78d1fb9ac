"""Every kind of bad input: one clear message, a non-zero exit, no traceback, nothing lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli, make_cfg, train
from dlrun.errors import UserError, describe_hydra_error


def dlrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return cli(*args, cwd=tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lr=0"], "optim.lr must be a float in the range (0, inf). Got 0.0."),
        (["optim.lr=-0.1"], "optim.lr must be a float in the range (0, inf). Got -0.1."),
        (["data.test_split=0"], "data.test_split must be a float in the range (0, 1). Got 0.0."),
        (["data.test_split=1"], "data.test_split must be a float in the range (0, 1). Got 1.0."),
        (
            ["trainer.max_epochs=-3"],
            "trainer.max_epochs must be an int in the range [1, inf). Got -3.",
        ),
        (
            ["data=moons", "data.n_samples=12", "data.val_split=0.05"],
            "data: cannot split 9 samples for data.val_split=0.05: The test_size = 1 should be greater or equal to the number of classes = 2",
        ),
        (
            ["model=lenet5", "data=wine"],
            "model=lenet5 takes image input and cannot read data=wine (tabular data, shape 13). Models "
            "that read it: autoencoder, gan, linear, mlp, random_forest, vae, xgboost.",
        ),
        (
            ["trainer.device=cuda:3"],
            "trainer.device: 'cuda:3' was asked for but this machine has no CUDA device. Use trainer.device=cpu or auto.",
        ),
    ],
)
def test_bad_values_in_process(tmp_path, overrides, message):
    with pytest.raises(UserError) as err:
        train(tmp_path, *overrides)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cli_exit_codes_and_no_half_written_folder(tmp_path):
    result = dlrun(tmp_path, "trainer.device=cuda")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "dlrun: trainer.device: 'cuda' was asked for but this machine has no CUDA device"
    )
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.json"))
    (tmp_path / "file").write_text("not a folder")
    result = dlrun(tmp_path, f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    assert result.returncode == 2
    assert (
        result.stderr
        == f"dlrun: hydra.run.dir: cannot create the run folder {tmp_path / 'file' / 'run'}: Not a "
        "directory. Choose a writable hydra.run.dir.\n"
    )


def test_a_run_folder_is_never_reused(tmp_path):
    summary, run_dir = train(tmp_path, "trainer.max_epochs=1")
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"already holds a run; a new run never overwrites one"):
        train(tmp_path, "trainer.max_epochs=2")
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_nan_inputs_are_named_before_training(tmp_path):
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(40.0), "b": np.ones(40), "y": [0, 1] * 20})
    frame.loc[7, "b"] = np.inf
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match=r"the feature columns b of .* hold infinite values"):
        train(tmp_path, "data=csv", f"data.path={tmp_path / 't.csv'}", "data.target=y")

    from dlrun.data import DataSpec, _check_finite

    x = np.zeros((5, 3), dtype=np.float32)
    x[2, 1] = np.nan
    spec = DataSpec("d", "regression", "tabular", (3,))
    with pytest.raises(
        UserError, match=r"1 NaN input value\(s\); the first is sample 12, feature 1 \('b'\)"
    ):
        _check_finite(x, np.array([10, 11, 12, 13, 14]), spec, ("a", "b", "c"))


# Every mix of one model and one extra is a valid experiment (gru reads digits' image rows as a
# sequence; it could not read a table such as iris, so no table is in this pool).
VALID = {
    "model": ["model=mlp", "model=gru", "model=random_forest"],
    "epochs": ["trainer.max_epochs=1"],
    "extra": [
        [],
        ["optim=sgd"],
        ["sched=cosine"],
        ["trainer.clip.max_norm=1.0"],
        ["data.val_split=0.2"],
        ["trainer.batch_size=128"],
    ],
}
INVALID = [
    "optim.lr=-1",
    "trainer.batch_size=0",
    "data.val_split=2",
    "model=resnet",
    "optim=adma",
    "trainer.precision=8",
    "trainer.devices=2",
    "optim.lr=fast",
    "data=nowhere",
    "trainer.clip.value=0",
    "model.dropout=1.0",
    "sched.gamma=0",
    "trainer.early_stopping.monitor=val_auc",
    "data.task=ranking",
]


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    model=st.sampled_from(VALID["model"]),
    extra=st.sampled_from(VALID["extra"]),
    bad=st.lists(st.sampled_from(INVALID), max_size=2, unique=True),
)
def test_random_overrides_train_or_fail_cleanly(tmp_path_factory, model, extra, bad):
    """Whatever the mix of settings: a tiny run that trains, or one clean error; never a crash."""
    from dlrun.runner import run

    overrides = [model, "trainer.max_epochs=1", *extra, *bad]
    run_dir = tmp_path_factory.mktemp("run")
    try:
        cfg = make_cfg(*overrides)
    except Exception as ex:  # Hydra refused to compose: dlrun must turn it into one message
        assert bad, f"valid overrides failed to compose: {overrides}: {ex}"
        assert describe_hydra_error(ex, Path(__file__).parents[1] / "configs") is not None, repr(ex)
        return
    try:
        summary = run(cfg, run_dir)
    except UserError as ex:
        message = str(ex)
        assert bad, f"a valid config was refused: {overrides}: {message}"
        assert message and "Traceback" not in message
        return
    assert summary["status"] == "completed"


def test_unreadable_and_one_class_tables(tmp_path):
    (tmp_path / "broken.csv").write_text('a,b,y\n1,2,0\n3,"4,1\n')
    with pytest.raises(UserError, match=r"data.path: cannot read .*broken.csv as a CSV file"):
        train(tmp_path, "data=csv", f"data.path={tmp_path / 'broken.csv'}", "data.target=y")
    (tmp_path / "one.csv").write_text("a,y\n" + "".join(f"{i},same\n" for i in range(30)))
    with pytest.raises(
        UserError,
        match=r"data.target: column 'y' of .*one.csv has a single value \('same'\); classification needs at least two classes",
    ):
        train(tmp_path, "data=csv", f"data.path={tmp_path / 'one.csv'}", "data.target=y")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"data.root"):
        train(tmp_path, "data=image_folder", f"data.root={tmp_path / 'empty'}")
