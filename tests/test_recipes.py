"""Every recipe runs in its shrunken form, and its header is well formed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from dlrun import recipes

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_the_issue_s_recipes_are_all_here():
    assert {p.stem for p in RECIPES} >= {
        "lenet5_digits",
        "model_zoo_digits",
        "optimizers",
        "activations",
        "adding_lstm_vs_rnn",
        "breast_cancer_mlp_rf_xgb",
        "lenet5_mnist",
    }


def files_for(recipe, folder: Path, monkeypatch) -> tuple[str, ...]:
    """What the recipe reads from disk, written into `folder` (small, in the same formats);
    returns the overrides that point the recipe at them."""
    if recipe.name == "resnet18_finetune":  # digits as PNGs; weights where torchvision keeps them
        from test_pretrained import save_weights

        from dlrun.data.digits import write_image_folder

        monkeypatch.setenv("TORCH_HOME", str(folder / "torch_home"))
        save_weights("resnet18")  # random values: the recipe's run, not its result, is tested
        write_image_folder(folder / "data" / "digits_png")
        monkeypatch.chdir(folder)
        assert recipe.missing() is None  # the header names the files the recipe reads
        return ()
    from test_data_files import write_mnist

    write_mnist(folder / "mnist", n_train=100, n_test=20)
    return (f"data.root={folder / 'mnist'}",)


def test_a_recipe_without_its_files_is_skipped_naming_them(tmp_path, monkeypatch):
    from dlrun.data.digits import write_image_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    recipe = recipes.parse(ROOT / "recipes" / "resnet18_finetune.yaml")
    assert recipe.missing() == "data/digits_png"
    write_image_folder(tmp_path / "data" / "digits_png")
    weights = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert recipe.missing() == str(weights)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert recipe.missing() is None
    mnist = recipes.parse(ROOT / "recipes" / "lenet5_mnist.yaml")
    assert mnist.missing() == "data/mnist/MNIST/raw"  # the path, not its line's explanation


# The model zoo (eight models, ~2 minutes even shrunken) runs in full in the slow suite
# (tests/test_slow.py::test_model_zoo_on_digits), so here it is slow too; DCGAN on MNIST runs the
# same code as DCGAN on digits, on MNIST files the slow suite writes.
# The transfer recipes run a source run and then a sweep of 6 or 12 jobs: slow, and their
# machinery (before runs, mean: and & selectors) is checked below on its own.
# cv_small_table (~50 s: four models' folds and refits) runs the code tests/test_crossval.py
# checks value by value.
SLOW = {
    "model_zoo_digits",
    "dcgan_mnist",
    "few_labels_autoencoder",
    "related_task_digits",
    "cv_small_table",
}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in RECIPES],
    ids=lambda p: p.stem,
)
def test_recipe_runs_shrunken(tmp_path, path, monkeypatch):
    recipe = recipes.parse(path)
    assert recipe.expects and recipe.shrink
    extra = files_for(recipe, tmp_path, monkeypatch) if recipe.needs else ()
    results = recipes.run(recipe, tmp_path / "out", shrink=True, extra=extra, cwd=tmp_path)
    assert results and all(summary["status"] == "completed" for _, summary in results)
    checked = recipes.check(recipe, results)
    assert all(found is not None for _, found, _ in checked), "every expectation names one job"


def test_expectations_are_checked():
    recipe = recipes.Recipe(
        "r",
        ROOT / "recipes" / "r.yaml",
        ["-m"],
        expects=[
            recipes.Expect("model=lstm", "monitor.best", "<", 0.01),
            recipes.Expect("model=rnn", "test.accuracy", ">=", 0.5),
        ],
    )
    results = [
        (["model=lstm"], {"monitor": {"best": 0.02}}),
        (["model=rnn"], {"test": {"accuracy": 0.6}}),
    ]
    assert [ok for _, _, ok in recipes.check(recipe, results)] == [False, True]


def test_earlier_runs_are_named_in_the_run_and_expect_lines():
    recipe = recipes.parse(ROOT / "recipes" / "related_task_digits.yaml")
    ((name, args),) = recipe.before
    assert name == "source" and args[0] == "data.keep_classes=[0,1,2,3,4]"
    assert "model.init_from={source},null" in recipe.args
    assert recipe.expects[0].job == "mean:model.init_from={source}&trainer.freeze=[]"


def test_mean_and_several_override_selectors():
    recipe = recipes.Recipe(
        "r",
        ROOT / "recipes" / "r.yaml",
        ["-m"],
        expects=[
            recipes.Expect("mean:a=1&b=x", "test.accuracy", ">=", 0.7),
            recipes.Expect("mean:a=1", "test.accuracy", ">=", 0.7),
            recipes.Expect("a=1", "test.accuracy", ">=", 0.0),  # two jobs: which one?
        ],
    )
    results = [
        (["a=1", "b=x", "seed=0"], {"test": {"accuracy": 0.6}}),
        (["a=1", "b=x", "seed=1"], {"test": {"accuracy": 0.9}}),
        (["a=1", "b=y", "seed=0"], {"test": {"accuracy": 0.1}}),
    ]
    checked = recipes.check(recipe, results)
    assert [round(found, 6) if found is not None else None for _, found, _ in checked] == [
        0.75,
        round(1.6 / 3, 6),
        None,
    ]
    assert [ok for _, _, ok in checked] == [True, False, False]


def test_a_before_run_is_made_first_and_named_by_its_folder(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(
        "# a run that starts from an earlier one\n"
        "# before: first dlrun data=iris trainer.max_epochs=1\n"
        "# run: dlrun -cd recipes -cn chain model.init_from={first}\n"
        "# shrink: trainer.max_epochs=1\n"
        "# expect: test.accuracy >= 0\n"
        "defaults:\n  - train\n  - override data: iris\n  - _self_\n"
    )
    recipe = recipes.parse(path)
    results = recipes.run(recipe, tmp_path / "out", shrink=True, cwd=tmp_path)
    first = tmp_path / "out-first"
    assert (first / "checkpoints" / "best.pt").is_file()
    ((overrides, summary),) = results
    assert summary["status"] == "completed" and "model.init_from={first}" in overrides
    assert f"started from {first.resolve()}" in (tmp_path / "out" / "train.log").read_text()
