"""Data: a dataset loads arrays and declares what they are; `build_data` splits and normalizes.

A dataset module registers a loader with `@register_data(name, schema=...)`. The loader returns
the whole dataset as numpy arrays plus a `DataSpec`; this module makes the same fixed, seeded
(and for classification stratified) test split and validation split for every model family,
and normalizes with statistics of the training split only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from dlrun.errors import ConfigError

DATA_KINDS = ("image", "sequence", "tabular")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class DataSpec:
    """What the data is: the model builders take their sizes from here."""

    task: str  # classification or regression
    kind: str  # image (C, H, W), sequence (T, D) or tabular (F,)
    shape: tuple[int, ...]  # one sample's shape, as the model will receive it
    num_classes: int | None = None  # classification
    num_targets: int = 1  # regression
    class_names: tuple[str, ...] | None = None

    @property
    def out_features(self) -> int:
        return self.num_classes if self.task == "classification" else self.num_targets

    def view(self, takes: str) -> DataSpec:
        """The spec as a model that takes `takes` sees it (see `adapt`)."""
        return dataclasses.replace(self, shape=adapted_shape(self, takes))


def adapted_shape(spec: DataSpec, takes: str) -> tuple[int, ...]:
    """The per-sample shape after the plain reshape that bridges data kind and model input."""
    if takes == "flat":
        return (math.prod(spec.shape),)
    if takes == spec.kind:
        return spec.shape
    if takes == "sequence" and spec.kind == "image":
        c, h, w = spec.shape  # each image row is a time step: (H, C*W)
        return (h, c * w)
    raise ConfigError(
        f"a model that takes {takes} input cannot read {spec.kind} data "
        f"(shape {'x'.join(map(str, spec.shape))}). Choose a model that takes flat input "
        f"(mlp) or data of kind {takes}."
    )


def adapt(x: np.ndarray, spec: DataSpec, takes: str) -> np.ndarray:
    """Reshape a batch of samples (N, *spec.shape) for a model that takes `takes`."""
    shape = adapted_shape(spec, takes)
    if takes == "sequence" and spec.kind == "image":
        x = np.transpose(x, (0, 2, 1, 3))  # (N, C, H, W) -> (N, H, C, W)
    return np.ascontiguousarray(x.reshape((x.shape[0], *shape)))


@dataclass
class DataModule:
    """Train / val / test splits as numpy arrays, and the spec they share."""

    spec: DataSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, f"y_{s}")) for s in ("train", "val", "test")}

    def resized(self, size: int) -> DataModule:
        """The same splits with every image resized to size x size (for a model built for it)."""
        c = self.spec.shape[0]
        spec = dataclasses.replace(self.spec, shape=(c, size, size))
        xs = {
            f"x_{s}": resize_images(getattr(self, f"x_{s}"), size) for s in ("train", "val", "test")
        }
        return dataclasses.replace(self, spec=spec, **xs)


def build_data(cfg) -> DataModule:
    """Load the dataset named by `cfg.name`, split it, and normalize it."""
    from sklearn.model_selection import train_test_split

    from dlrun.registry import get_data

    x, y, spec = get_data(cfg.name).load(cfg)
    stratify = y if spec.task == "classification" else None
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=cfg.test_split, random_state=cfg.split_seed, stratify=stratify
    )
    stratify = y_rest if spec.task == "classification" else None
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=cfg.val_split, random_state=cfg.split_seed, stratify=stratify
    )
    if cfg.normalize:
        x_train, x_val, x_test = _normalize(spec, x_train, x_val, x_test)
    return DataModule(spec, x_train, y_train, x_val, y_val, x_test, y_test)


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) images to (N, C, size, size)."""
    import torch
    import torch.nn.functional as F

    out = F.interpolate(
        torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
    )
    return out.numpy()


def _normalize(spec: DataSpec, *splits: np.ndarray) -> list[np.ndarray]:
    """Standardize with the training split's statistics: per channel for images, per feature
    otherwise."""
    train = splits[0]
    axes = (0, 2, 3) if spec.kind == "image" else tuple(range(train.ndim - 1))
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0  # constant pixels or features stay at zero instead of dividing by 0
    return [((s - mean) / std).astype(np.float32) for s in splits]
