"""trainer.class_weight: a weight per class, for the training loss of networks
(dlrun.objectives.supervised.Classification) and the sample weights of estimators."""

from __future__ import annotations

import numpy as np

from dlrun.errors import UserError


def class_weights(setting, spec, y_train) -> np.ndarray | None:
    """The (K,) weights `setting` asks for on this data, or None for every class 1.

    balanced: n / (K x count of the class) over the training rows, scikit-learn's "balanced"
    (a class absent from them gets 0: no row carries it); {class: weight}: by the class's name
    or index, the classes not named 1."""
    if setting is None:
        return None
    if spec.task != "classification":
        raise UserError(
            f"trainer.class_weight: {spec.name} is a regression dataset; it has no classes. "
            "Use trainer.class_weight=null."
        )
    k = spec.num_classes
    if setting == "balanced":
        counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=k)
        weights = np.zeros(k)
        present = counts > 0
        weights[present] = len(y_train) / (k * counts[present])
        return weights
    labels = spec.class_labels
    weights = np.ones(k)
    for given, weight in dict(setting).items():
        text = str(given)
        if text in labels:
            weights[labels.index(text)] = float(weight)
        elif isinstance(given, int) and 0 <= given < k and spec.class_names is None:
            weights[given] = float(weight)
        else:
            shown = ", ".join(labels[:20]) + (" ..." if k > 20 else "")
            raise UserError(
                f"trainer.class_weight: '{given}' is not a class of {spec.name}. Its classes: "
                f"{shown}."
            )
    return weights


def check(conf, spec, objective: str) -> None:
    """Before the run folder is written: trainer.class_weight fits the data and the model."""
    setting = conf.trainer.class_weight
    if setting is None:
        return
    if objective != "supervised":
        raise UserError(
            f"trainer.class_weight: {conf.model.name} ({objective}) trains without labels; "
            "there are no classes to weight. Use trainer.class_weight=null."
        )
    own = getattr(conf.model, "class_weight", None)
    if own is not None:
        raise UserError(
            f"trainer.class_weight and model.class_weight are both set ({own}): "
            f"{conf.model.name} takes one. Set one of them to null."
        )
    class_weights(setting, spec, np.zeros(0, dtype=np.int64))  # the task and the class names


def sample_weights(conf, spec, y_train, rows=None) -> np.ndarray | None:
    """Each training row's weight for an estimator's fit: its class's (trainer.class_weight)
    times its own (`rows`: data.sample_weight), or None when neither is set."""
    weights = class_weights(conf.trainer.class_weight, spec, y_train)
    if weights is not None:
        weights = weights[np.asarray(y_train, dtype=np.int64)]
    if rows is not None:
        weights = np.asarray(rows, dtype=np.float64) * (1.0 if weights is None else weights)
    return weights
