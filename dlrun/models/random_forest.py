"""Random forest (Breiman 2001): scikit-learn's RandomForestClassifier / RandomForestRegressor.
Saved with skops, which loads only the types it is told to trust."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dlrun.config import ModelConfig, setting
from dlrun.estimators import SkopsEstimator
from dlrun.registry import register_model


@dataclass
class RandomForestConfig(ModelConfig):
    name: str = "random_forest"
    n_estimators: int = setting(300, lo=1)
    max_depth: Optional[int] = setting(None, lo=1)  # null: grow until leaves are pure
    max_features: str = setting(
        "auto", choices=("auto", "sqrt", "log2", "all")
    )  # auto: sqrt, all for regression
    min_samples_leaf: int = setting(1, lo=1)
    bootstrap: bool = True
    class_weight: Optional[str] = setting(None, choices=("balanced", "balanced_subsample"))
    n_jobs: int = -1  # -1: every core


# The one type in a forest's file beyond what skops trusts by default. Anything else in a file is
# refused by skops.io.load, so loading never builds an object the file chose.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class Forest(SkopsEstimator):
    trusted = TRUSTED_TYPES
    what = "random forest"

    def size(self) -> int:
        return int(sum(tree.tree_.node_count for tree in self.model.estimators_))


@register_model("random_forest", schema=RandomForestConfig, takes="flat", family="estimator")
def build_random_forest(
    cfg: RandomForestConfig, spec, *, seed: int, device, patience=None
) -> Forest:
    """`device` and `patience` are unused: scikit-learn's forests run on CPU cores, all at once."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    classify = spec.task == "classification"
    max_features = {"auto": "sqrt" if classify else 1.0, "all": 1.0}.get(
        cfg.max_features, cfg.max_features
    )
    common = dict(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth,
        max_features=max_features,
        min_samples_leaf=cfg.min_samples_leaf,
        bootstrap=cfg.bootstrap,
        n_jobs=cfg.n_jobs,
        random_state=seed,
    )
    if classify:
        return Forest(RandomForestClassifier(class_weight=cfg.class_weight, **common), spec)
    return Forest(RandomForestRegressor(**common), spec)
