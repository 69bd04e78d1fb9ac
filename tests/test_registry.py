"""The registries and the config groups agree, and every registered model trains on digits."""

from __future__ import annotations

import dataclasses
import math

import pytest

from conftest import ROOT, read_metrics, train
from dlrun.catalog import load_catalog
from dlrun.errors import ConfigError
from dlrun.optim import OPTIMIZERS, SCHEDULERS
from dlrun.registry import DATASETS, MODELS, get_model

load_catalog()


def yaml_names(group: str) -> set[str]:
    return {p.stem for p in (ROOT / "configs" / group).glob("*.yaml")}


def test_registry_matches_config_groups():
    assert set(MODELS) == yaml_names("model")
    assert (
        set(OPTIMIZERS)
        == yaml_names("optim")
        == {
            "sgd",
            "momentum",
            "nesterov",
            "adagrad",
            "rmsprop",
            "adam",
            "adamw",
        }
    )
    assert (
        set(SCHEDULERS) == yaml_names("sched") == {"none", "step", "cosine", "onecycle", "plateau"}
    )
    assert set(DATASETS) == yaml_names("data")


def test_unknown_model_lists_registered_ones():
    with pytest.raises(ConfigError) as err:
        get_model("transformer")
    assert (
        str(err.value)
        == "model.name: 'transformer' is not a registered model. Choose one of: "
        + ", ".join(sorted(MODELS))
        + "."
    )


def starts_from_imagenet(name: str) -> bool:
    from dlrun.models.pretrained import PretrainedConfig

    return issubclass(MODELS[name].schema, PretrainedConfig)


# torchvision's pretrained models need ImageNet weights that tests cannot download (and 224x224
# inputs): tests/test_pretrained.py builds and steps every one of them from weights it writes
@pytest.mark.parametrize("name", sorted(n for n in MODELS if not starts_from_imagenet(n)))
def test_every_model_trains_on_digits(tmp_path, name):
    """Every registered model, on the default data, through the same runner (no extra code per
    model): networks for two epochs, estimators with their own fit."""
    trees = "n_estimators" in {f.name for f in dataclasses.fields(MODELS[name].schema)}
    summary, run_dir = train(
        tmp_path,
        f"model={name}",
        "trainer.max_epochs=2",
        "model.n_estimators=20" if trees else "trainer.max_epochs=2",
    )
    records = read_metrics(run_dir)
    assert records and all(math.isfinite(v) for r in records for v in r.values())
    if MODELS[name].family == "torch":
        assert [r["epoch"] for r in records] == [1, 2]
        if MODELS[name].objective == "gan":  # two players: their losses need not both fall
            assert {"train_loss/disc", "train_loss/gen"} <= set(records[1])
        else:
            assert records[1]["train_loss"] < records[0]["train_loss"]
    assert summary["params"] > 0
    if MODELS[name].objective == "supervised":
        assert summary["test"]["accuracy"] > 0.3  # 10 classes: chance is 0.1
        assert set(summary["test"]) == {"accuracy", "f1_macro", "loss"}
    elif MODELS[name].objective == "gan":  # judged by a Frechet distance, lower than untrained
        assert 0 < summary["test"]["fid"] < summary["untrained"]["val"]["fid"]
    else:  # autoencoders: no labels in training; their reconstruction error in pixels [0, 1]
        assert 0 < summary["test"]["recon_mse"] < 0.1 and "loss" in summary["test"]
