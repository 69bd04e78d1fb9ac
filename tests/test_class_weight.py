"""trainer.class_weight: weighted losses for networks, sample weights for estimators."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import train


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> str:
    """Two overlapping classes, 1,900 rows against 100: unweighted, the minority is mostly
    predicted as the majority."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (1900, 2)), rng.normal(1.0, 1, (100, 2))])
    y = np.array([0] * 1900 + [1] * 100)
    path = tmp_path_factory.mktemp("imbalanced") / "imbalanced.npz"
    np.savez(path, x=x.astype(np.float32), y=y)
    return str(path)


def minority_recall(summary: dict) -> float:
    return summary["test_per_class"]["1"]["recall"]


@pytest.mark.parametrize(
    "model", [["model=mlp", "trainer.max_epochs=15"], ["model=xgboost"], ["model=linear"]]
)
def test_balanced_weights_raise_the_minority_s_recall(tmp_path, imbalanced, model):
    args = ("data=npz", f"data.path={imbalanced}", *model)
    plain, _ = train(tmp_path, *args, name="plain")
    balanced, _ = train(tmp_path, *args, "trainer.class_weight=balanced", name="balanced")
    assert minority_recall(plain) <= 0.3
    assert minority_recall(balanced) >= minority_recall(plain) + 0.4


def test_the_weighted_loss_is_each_sample_s_loss_times_its_class_s_weight():
    import torch
    import torch.nn.functional as F

    from dlrun.data import DataSpec
    from dlrun.objectives.supervised import Classification
    from dlrun.weights import class_weights

    spec = DataSpec("d", "classification", "tabular", (3,), num_classes=3)
    y_train = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    balanced = class_weights("balanced", spec, y_train)
    assert balanced.tolist() == pytest.approx([9 / 18, 9 / 6, 9 / 3])  # n / (K x count)
    from sklearn.utils.class_weight import compute_class_weight

    assert balanced == pytest.approx(
        compute_class_weight("balanced", classes=np.arange(3), y=y_train)
    )
    assert class_weights({2: 5.0}, spec, y_train).tolist() == [1.0, 1.0, 5.0]
    net = torch.nn.Linear(3, 3)
    batch = {"x": torch.randn(8, 3), "y": torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])}
    objective = Classification(weights=balanced)
    plain = F.cross_entropy(net(batch["x"]), batch["y"], reduction="none")
    expected = plain * torch.as_tensor(balanced, dtype=torch.float32)[batch["y"]]
    assert torch.allclose(objective.loss(net, batch), expected)
    assert torch.allclose(objective.mean_loss(net, batch), expected.mean())


def test_class_weights_by_name_and_bad_ones(tmp_path):
    from dlrun.errors import ConfigError, UserError

    with pytest.raises(ConfigError, match="trainer.class_weight must be balanced, null, or"):
        train(tmp_path, "data=iris", "trainer.class_weight=heavy")
    with pytest.raises(ConfigError, match="trainer.class_weight must be balanced"):
        train(tmp_path, "data=iris", "+trainer.class_weight={setosa: -1}")
    with pytest.raises(UserError, match="'tulip' is not a class of iris. Its classes: setosa,"):
        train(tmp_path, "data=iris", "trainer.class_weight={tulip: 2}")
    with pytest.raises(UserError, match="diabetes is a regression dataset; it has no classes"):
        train(tmp_path, "data=diabetes", "trainer.class_weight=balanced")
    with pytest.raises(UserError, match="trainer.class_weight and model.class_weight are both"):
        train(
            tmp_path,
            "data=iris",
            "model=random_forest",
            "model.class_weight=balanced",
            "trainer.class_weight=balanced",
        )
    assert not (tmp_path / "run").exists()
    summary, _ = train(
        tmp_path, "data=iris", "trainer.class_weight={virginica: 3}", "trainer.max_epochs=2"
    )
    assert summary["status"] == "completed"


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> str:
    """A table whose training split holds 720 rows with flipped labels and weight 0 beside 360
    clean rows of weight 1; validation and test rows are clean (a split column)."""
    import pandas as pd

    rng = np.random.default_rng(1)

    def rows(n, flip, weight, split):
        x = rng.normal(0, 1, (n, 2))
        label = (x[:, 0] + x[:, 1] > 0).astype(int)
        return pd.DataFrame(
            {
                "a": x[:, 0],
                "b": x[:, 1],
                "label": 1 - label if flip else label,
                "w": weight,
                "part": split,
            }
        )

    frame = pd.concat(
        [
            rows(360, False, 1.0, "train"),
            rows(720, True, 0.0, "train"),
            rows(120, False, 1.0, "val"),
            rows(120, False, 1.0, "test"),
        ]
    )
    path = tmp_path_factory.mktemp("poisoned") / "poisoned.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    "model", [["model=mlp", "trainer.max_epochs=10"], ["model=xgboost"], ["model=linear"]]
)
def test_rows_of_weight_zero_do_not_train(tmp_path, poisoned, model):
    table = ("data=csv", f"data.path={poisoned}", "data.target=label", "data.split_column=part")
    plain, _ = train(tmp_path, *table, *model, "data.features=[a,b]", name="plain")
    weighted, run_dir = train(tmp_path, *table, *model, "data.sample_weight=w", name="weighted")
    assert plain["test"]["accuracy"] <= 0.4  # the flipped rows outnumber the clean ones 2 to 1
    assert weighted["test"]["accuracy"] >= 0.9
    assert weighted["rows"] == {"train": 1080, "val": 120, "test": 120}  # trained beside them
    assert "w" not in json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())[
        "spec"
    ].get("feature_names", [])


def test_weighted_losses_and_bad_weight_columns(tmp_path, poisoned):
    import pandas as pd
    import torch

    from dlrun.errors import UserError
    from dlrun.objectives.supervised import Regression

    objective = Regression("mse", "32", np.array([0.0, 1.0, 2.0]))
    net = torch.nn.Linear(2, 1)
    batch = {"x": torch.randn(4, 2), "y": torch.randn(4), "w": torch.tensor([0.0, 1.0, 2.0, 0.5])}
    plain = ((net(batch["x"]).squeeze(1) - batch["y"]) ** 2).detach()
    assert torch.allclose(objective.loss(net, batch).detach(), plain * batch["w"])
    assert torch.allclose(objective.mean_loss(net, batch).detach(), (plain * batch["w"]).mean())

    frame = pd.read_csv(poisoned)
    frame.loc[3, "w"] = -1.0
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    table = ("data=csv", f"data.path={bad}", "data.target=label", "data.split_column=part")
    with pytest.raises(UserError, match=r"data.sample_weight: column 'w' must hold numbers >= 0"):
        train(tmp_path, *table, "data.sample_weight=w")
    with pytest.raises(UserError, match="data.sample_weight: 'weight' is not a column"):
        train(tmp_path, *table, "data.sample_weight=weight")
    assert not (tmp_path / "run").exists()


def test_row_weights_stream_from_a_parquet_file_as_in_memory(tmp_path, poisoned):
    """A Parquet table read in parts and streamed by DataLoader workers trains with its row
    weights exactly as the same table in memory."""
    import pandas as pd

    path = tmp_path / "poisoned.parquet"
    pd.read_csv(poisoned).to_parquet(path, row_group_size=200)
    table = ("data=parquet", f"data.path={path}", "data.target=label", "data.split_column=part")
    args = (*table, "data.sample_weight=w", "trainer.max_epochs=3", "trainer.workers=1")
    memory, _ = train(tmp_path, *args, "data.load=memory", name="memory")
    streamed, _ = train(tmp_path, *args, "data.load=stream", name="streamed")
    assert streamed["test"]["accuracy"] == memory["test"]["accuracy"] >= 0.9
    assert streamed["val"]["loss"] == pytest.approx(memory["val"]["loss"], rel=1e-6)
