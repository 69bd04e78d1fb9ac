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


@dataclass
class SinesConfig(DataConfig):
    name: str = "sines"
    n_samples: int = setting(1200, lo=30)
    min_len: int = setting(20, lo=2)
    max_len: int = setting(100, lo=2)
    noise: float = setting(0.3, lo=0)
    classes: int = setting(3, lo=2, hi=10)

    def problems(self) -> list[str]:
        if self.min_len > self.max_len:
            return [
                f"data.min_len must be at most data.max_len. Got {self.min_len} and {self.max_len}."
            ]
        return []


@register_data("sines", schema=SinesConfig)
def load_sines(cfg: SinesConfig) -> RawData:
    """Noisy sine waves of `classes` frequencies, random phases and random lengths between
    min_len and max_len steps, padded with zeros and carrying their lengths: the class is the
    frequency. A variable-length time-series task (as a .npz with `lengths` gives one)."""
    rng = np.random.default_rng(cfg.split_seed)
    n, steps = cfg.n_samples, cfg.max_len
    lengths = rng.integers(cfg.min_len, steps + 1, size=n)
    label = rng.integers(0, cfg.classes, size=n)
    t = np.arange(steps)
    wave = np.sin(2 * np.pi * (label[:, None] + 1) * t / 25 + rng.uniform(0, 2 * np.pi, (n, 1)))
    x = (wave + cfg.noise * rng.standard_normal((n, steps))).astype(np.float32)
    x[t[None, :] >= lengths[:, None]] = 0
    names = tuple(f"f{k + 1}" for k in range(cfg.classes))
    spec = DataSpec(
        "sines",
        "classification",
        "sequence",
        (steps, 1),
        num_classes=cfg.classes,
        class_names=names,
    )
    return RawData(x[:, :, None], label.astype(np.int64), spec, lengths=lengths.astype(np.int64))


@dataclass
class WordOrderConfig(DataConfig):
    name: str = "word_order"
    n_samples: int = setting(2000, lo=30)
    tokenizer: str = setting("word", choices=("word", "char", "wordpiece"))
    vocab_size: int = setting(2000, lo=10)
    text_max_len: int = setting(128, lo=1)


FILLER = "the a some very old new big small red blue quick slow dog cat bird house tree car".split()


@register_data("word_order", schema=WordOrderConfig)
def load_word_order(cfg: WordOrderConfig) -> RawData:
    """Sentences of filler words holding 'alpha' and 'omega': the label is which comes first.
    Both labels have the same bag of words, so only a model that reads the order can tell them
    apart. Generated as a text column and read through the text door (dlrun.data.text)."""
    import pandas as pd

    from dlrun.data.files import load_text

    rng = np.random.default_rng(cfg.split_seed)
    texts, labels = [], []
    for _ in range(cfg.n_samples):
        words = list(rng.choice(FILLER, size=rng.integers(4, 12)))
        first = int(rng.integers(0, 2))
        a, b = sorted(rng.choice(len(words) + 1, size=2, replace=False))
        words.insert(a, ("alpha", "omega")[first])
        words.insert(b + 1, ("omega", "alpha")[first])
        texts.append(" ".join(words))
        labels.append(("alpha_first", "omega_first")[first])
    frame = pd.DataFrame({"text": texts, "label": labels})
    settings = dict(
        text="text", target="label", split_column=None, task=cfg.task, cv=cfg.cv, sample_weight=None
    )
    return load_text(_TextSettings(cfg, **settings), frame, "word_order")


class _TextSettings:
    """A text dataset's settings, as load_text reads a table's."""

    def __init__(self, cfg, **columns):
        self.__dict__.update(
            name=cfg.name,
            tokenizer=cfg.tokenizer,
            vocab_size=cfg.vocab_size,
            text_max_len=cfg.text_max_len,
            **columns,
        )
