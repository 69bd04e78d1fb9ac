"""Every recipe runs in its shrunken form, and its header is well formed."""

from __future__ import annotations

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


# The model zoo (eight models, ~2 minutes even shrunken) runs in full in the slow suite
# (tests/test_slow.py::test_model_zoo_on_digits), so here it is slow too; DCGAN on MNIST runs the
# same code as DCGAN on digits, on MNIST files the slow suite writes.
SLOW = {"model_zoo_digits", "dcgan_mnist"}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in RECIPES],
    ids=lambda p: p.stem,
)
def test_recipe_runs_shrunken(tmp_path, path):
    recipe = recipes.parse(path)
    assert recipe.expects and recipe.shrink
    extra = ()
    if recipe.needs:  # data the recipe reads from disk: tiny files in the same format
        from test_data_files import write_mnist

        write_mnist(tmp_path / "mnist", n_train=100, n_test=20)
        extra = (f"data.root={tmp_path / 'mnist'}",)
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
