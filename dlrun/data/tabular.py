"""scikit-learn's bundled tabular datasets: iris, wine, breast_cancer (classification) and
diabetes (regression). They ship with scikit-learn: nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrun.config import DataConfig
from dlrun.data import DataSpec, RawData
from dlrun.registry import register_data


def _bundled(name: str, loader: str, task: str):
    def load(cfg) -> RawData:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        x = bunch.data.astype(np.float32)  # (N, F)
        if task == "classification":
            y = bunch.target.astype(np.int64)
            names = tuple(str(c) for c in bunch.target_names)
            spec = DataSpec(
                name, task, "tabular", (x.shape[1],), num_classes=len(names), class_names=names
            )
        else:
            y = bunch.target.astype(np.float32)
            spec = DataSpec(name, task, "tabular", (x.shape[1],))
        return RawData(x, y, spec, feature_names=tuple(map(str, bunch.feature_names)))

    return load


@dataclass
class IrisConfig(DataConfig):
    name: str = "iris"


@dataclass
class WineConfig(DataConfig):
    name: str = "wine"


@dataclass
class BreastCancerConfig(DataConfig):
    name: str = "breast_cancer"


@dataclass
class DiabetesConfig(DataConfig):
    name: str = "diabetes"


register_data("iris", schema=IrisConfig)(_bundled("iris", "load_iris", "classification"))
register_data("wine", schema=WineConfig)(_bundled("wine", "load_wine", "classification"))
register_data("breast_cancer", schema=BreastCancerConfig)(
    _bundled("breast_cancer", "load_breast_cancer", "classification")
)
register_data("diabetes", schema=DiabetesConfig)(
    _bundled("diabetes", "load_diabetes", "regression")
)
