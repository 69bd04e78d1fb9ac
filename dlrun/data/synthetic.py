"""Data generated from the seed: `moons` (2-D classification) and `adding` (the adding problem of
Hochreiter & Schmidhuber 1997, a long-range sequence regression)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrun.config import DataConfig, setting
from dlrun.data import DataSpec, RawData
from dlrun.registry import register_data


@dataclass
class MoonsConfig(DataConfig):
    name: str = "moons"
    n_samples: int = setting(1000, lo=10)
    noise: float = setting(0.2, lo=0)


@register_data("moons", schema=MoonsConfig)
def load_moons(cfg: MoonsConfig) -> RawData:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=cfg.n_samples, noise=cfg.noise, random_state=cfg.split_seed)
    spec = DataSpec(
        "moons", "classification", "tabular", (2,), num_classes=2, class_names=("0", "1")
    )
    return RawData(x.astype(np.float32), y.astype(np.int64), spec)


@dataclass
class AddingConfig(DataConfig):
    name: str = "adding"
    seq_len: int = setting(100, lo=2)
    n_samples: int = setting(10000, lo=10)
    normalize: bool = False  # the inputs are already in [0, 1]


def adding_problem(n: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of (value, marker) pairs: values uniform in [0, 1], two markers set to 1, one in
    each half; the target is the sum of the two marked values (variance 1/6, so always
    predicting the mean, 1.0, scores an MSE of about 0.167)."""
    rng = np.random.default_rng(seed)
    values = rng.random((n, seq_len), dtype=np.float32)
    half = seq_len // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, seq_len, size=n)
    markers = np.zeros((n, seq_len), dtype=np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)  # (N, T, 2)
    y = values[rows, first] + values[rows, second]  # (N,)
    return x, y.astype(np.float32)


@register_data("adding", schema=AddingConfig)
def load_adding(cfg: AddingConfig) -> RawData:
    x, y = adding_problem(cfg.n_samples, cfg.seq_len, cfg.split_seed)
    return RawData(x, y, DataSpec("adding", "regression", "sequence", (cfg.seq_len, 2)))
