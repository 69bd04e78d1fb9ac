"""Data: a dataset loads arrays and declares what they are; `build_data` splits and normalizes.

A dataset module registers a loader with `@register_data(name, schema=...)`. The loader returns
the whole dataset as numpy arrays plus a `DataSpec`; this module makes the same fixed, seeded
(and for classification stratified) test split and validation split for every model family,
and normalizes with statistics of the training split only. Images also keep their pixels in a
compact dtype (uint8 for 8-bit pixels) for the training device, which normalizes and augments
each batch there (`dlrun.data.device`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlrun.config import ALL_ROWS
from dlrun.errors import ConfigError, UserError

DATA_KINDS = ("image", "sequence", "tabular")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class DataSpec:
    """What the data is: the model builders take their sizes from here."""

    name: str  # the dataset
    task: str  # classification or regression
    kind: str  # image (C, H, W), sequence (T, D) or tabular (F,)
    shape: tuple[int, ...]  # one sample's shape, as the model will receive it
    num_classes: int | None = None  # classification
    num_targets: int = 1  # regression
    class_names: tuple[str, ...] | None = None
    # Text: samples are token ids (T,) in 1..vocab_size-1 (0 pads); sequence models embed them
    vocab_size: int | None = None

    @property
    def class_labels(self) -> tuple[str, ...]:
        """The class names, or '0', '1', ... for classes the data does not name."""
        return tuple(self.class_names or map(str, range(self.num_classes)))

    @property
    def out_features(self) -> int:
        return self.num_classes if self.task == "classification" else self.num_targets

    def view(self, takes: str) -> DataSpec:
        """The spec as a model that takes `takes` sees it (see `adapt`)."""
        return dataclasses.replace(self, shape=adapted_shape(self, takes))


def adapted_shape(spec: DataSpec, takes: str) -> tuple[int, ...]:
    """The per-sample shape after the plain reshape that bridges data kind and model input."""
    if spec.vocab_size is not None and takes == "flat":  # text: a bag of tokens
        return (spec.vocab_size,)
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
    """Reshape a batch of samples (N, *spec.shape) for a model that takes `takes`. Text (token
    ids, (N, T)) goes to sequence models as it is, and to flat ones as a bag of tokens."""
    if spec.vocab_size is not None:
        from dlrun.data.text import bag_of_tokens

        return bag_of_tokens(x, spec.vocab_size) if takes == "flat" else np.ascontiguousarray(x)
    shape = adapted_shape(spec, takes)
    if takes == "sequence" and spec.kind == "image":
        x = np.transpose(x, (0, 2, 1, 3))  # (N, C, H, W) -> (N, H, C, W)
    return np.ascontiguousarray(x.reshape((x.shape[0], *shape)))


SPLITS = ("train", "val", "test")


@dataclass
class DataModule:
    """Train / val / test splits as numpy arrays (features float32, normalized and resized;
    classes int64 or targets float32), and the spec they share. Images also keep `stored`, the
    samples as they go to the training device (see `dlrun.data.device.device_inputs`).

    Data read from disk a batch at a time (dlrun.data.lazy) has `dlrun.data.lazy.Rows` views in
    x_train, x_val, x_test and `stored` alike: samples as loaded (uint8 pixels, or the file's
    values), prepared for the model on the device (`DeviceInputs.prepare`)."""

    spec: DataSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    encoder: Any = None  # the fitted RawData.encode (tables), for new rows
    norm: tuple[np.ndarray, np.ndarray] | None = None  # training mean and std
    resize_to: int | None = None  # images resized after normalization (for the model)
    native_shape: tuple[int, ...] | None = None  # one image as loaded, before that resize
    # Images only: split -> its samples in the storage dtype (data.storage), as loaded (before
    # scaling, normalization and resize). The device keeps these instead of the float32 arrays.
    stored: dict[str, np.ndarray] | None = None
    pixel_max: int | None = None  # whole-number pixels 0..pixel_max (255 for 8-bit), else None
    augment: Any = None  # data.augment (dlrun.data.device.AugmentConfig): training batches only

    sources: dict = dataclasses.field(default_factory=dict)  # data fingerprints (preprocess)
    # Padded sequences: split -> each sample's valid steps (N,), the first ones; None: all valid
    lengths: dict[str, np.ndarray] | None = None
    on_bad_file: str = "error"  # data.on_bad_file, for samples read from disk while training
    # A table's name for each feature (its columns; one-hot features as column=value), None
    # where features are pixels or steps: what a tree model's importances are shown by
    feature_names: tuple[str, ...] | None = None
    # data.sample_weight: split -> each row's weight in the training loss (or an estimator's
    # sample weights); None: every row 1
    weights: dict[str, np.ndarray] | None = None

    @property
    def preprocessing(self):
        """What was fitted on the training split to prepare samples (dlrun.data.preprocess),
        the one thing that prepares new samples, here and from a saved run."""
        from dlrun.data.preprocess import Preprocessing

        native = self.native_shape or tuple(self.x_train.shape[1:])
        return Preprocessing(
            self.spec, native, self.norm, self.pixel_max, self.resize_to, self.encoder, self.sources
        )

    def transform(self, x: Any, shown: str = "the input", lengths=None) -> np.ndarray:
        """New samples, as loaded, prepared exactly as the training samples were (the values
        `DeviceInputs.take(idx, train=False)` gives)."""
        return self.preprocessing.transform(x, shown, lengths)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, f"y_{s}")) for s in ("train", "val", "test")}

    def resized(self, size: int) -> DataModule:
        """The same splits with every image resized to size x size (for a model built for it).
        `stored` keeps the loaded size: the device resizes each batch."""
        c = self.spec.shape[0]
        spec = dataclasses.replace(self.spec, shape=(c, size, size))
        native = self.native_shape or tuple(self.x_train.shape[1:])
        if getattr(self.x_train, "lazy", False):  # read from disk: resized batch by batch
            return dataclasses.replace(self, spec=spec, resize_to=size, native_shape=native)
        xs = {
            f"x_{s}": resize_images(getattr(self, f"x_{s}"), size) for s in ("train", "val", "test")
        }
        return dataclasses.replace(self, spec=spec, resize_to=size, native_shape=native, **xs)


@dataclass
class RawData:
    """What a dataset loader returns: every sample, before splitting."""

    # (N, *spec.shape) float32 array (uint8 with pixel_max); or a table `encode` turns into one
    x: Any
    y: np.ndarray  # (N,) class indices (int64) or targets (float32); (N, T) for T targets
    spec: DataSpec
    # Per-sample 'train' / 'val' / 'test' for data that comes with its own split (MNIST's test
    # set, a CSV's split column). With no 'val' rows, validation is carved from 'train'.
    fixed_split: np.ndarray | None = None
    # encode(x, train_rows) -> float32 array for every row, fitted on the training rows only
    # (category vocabularies, imputation statistics).
    encode: Callable[[Any, np.ndarray], np.ndarray] | None = None
    # Images whose pixels are whole numbers 0..pixel_max (255 for 8-bit files) keep them as uint8
    # in x; their values are x / pixel_max. They are stored that compactly on the device.
    pixel_max: int | None = None
    # One name per feature of a flat sample, as errors show them (a table's columns; one-hot
    # features as column=value). None: features are told by their index.
    feature_names: tuple[str, ...] | None = None
    # Sequences padded to spec.shape[0] steps: each sample's valid steps (N,), the first ones
    lengths: np.ndarray | None = None
    # Normalization statistics from a seeded sample of the training rows when there are many
    # (dlrun.data.lazy.STATS_SAMPLE): image files, which are slow to decode
    sampled_statistics: bool = False
    # data.cv.group: each row's group (codes 0..G-1), a group's rows kept together by the splits
    groups: np.ndarray | None = None
    # data.sample_weight: each row's weight (float, >= 0)
    weights: np.ndarray | None = None


def build_data(cfg, fitted=None) -> DataModule:
    """Load the dataset named by `cfg.name`, split it, and normalize it.

    The split depends only on the data, `split_seed`, `test_split` and `val_split`, never on the
    model, so every model family is scored on the same rows. Images also keep their samples in
    the dtype `cfg.storage` picks (auto: uint8 for 8-bit pixels), for the training device.
    With `fitted` (a run's saved dlrun.data.preprocess.Preprocessing) nothing is fitted again:
    its encoder (a tokenizer's ids are not the same from one training to the next) and its
    normalization prepare the rows, exactly as they did in training.
    """
    from dlrun.data.device import storage_dtype, stored_splits
    from dlrun.data.preprocess import fingerprints
    from dlrun.registry import get_data

    raw = get_data(cfg.name).load(cfg)
    if cfg.task is not None and cfg.task != raw.spec.task:
        raw = _with_task(raw, cfg.task)
    train, val, test = split_indices(raw, cfg)
    cv = getattr(cfg, "cv", None)
    if cv is not None and cv.folds is not None and cv.fold is not None:
        train, val = cv_rows(raw, cfg, np.concatenate([train, val]), cv.fold)
        if cv.fold != ALL_ROWS:  # a fold is scored on its validation rows; the test split is
            test = test[:0]  # scored once, by the refit
    raw, (train, val, test) = select_rows(raw, (train, val, test), cfg)
    if getattr(raw.x, "lazy", False):  # read from disk a batch at a time (dlrun.data.lazy)
        return lazy_data(raw, cfg, (train, val, test), fitted)
    if fitted is not None and fitted.encoder is not None and raw.encode is not None:
        raw = dataclasses.replace(raw, encode=fitted.encoder.refitted(raw.encode))
        x = raw.encode.apply(raw.x)
    else:
        x = raw.x
        if raw.encode is not None:
            from dlrun.report import busy

            with busy(f"encoding {len(raw.y):,} rows, fitted on the {len(train):,} training rows"):
                x = raw.encode(raw.x, train)
    pixel_max = raw.pixel_max if raw.encode is None else None
    if getattr(raw.encode, "kind", None) == "text":  # token ids, their lengths, the vocabulary
        raw = text_tokens(raw, x, train)
        x = raw.x
    if raw.spec.vocab_size is not None:
        xs = [x[rows] for rows in (train, val, test)]  # token ids stay whole numbers
    else:
        xs = [pixels_to_float(x[rows], pixel_max) for rows in (train, val, test)]
    for rows, part in zip((train, val, test), xs, strict=True):
        _check_finite(part, rows, raw.spec, raw.feature_names)
    if raw.spec.task == "regression":
        _check_target_varies(raw.y, (train, val, test), raw.spec.name)
    spec = raw.spec
    if raw.encode is not None and spec.vocab_size is None:  # encoding decides the feature count
        spec = dataclasses.replace(spec, shape=tuple(xs[0].shape[1:]))
    if getattr(cfg, "as_sequence", False):  # only when asked: F features as F steps of one
        spec, xs = as_sequence(spec, xs)
    lengths = None if raw.lengths is None else [raw.lengths[rows] for rows in (train, val, test)]
    norm = None
    if cfg.normalize and spec.vocab_size is None:  # token ids are not normalized
        if fitted is not None and fitted.norm is not None:
            norm = fitted.norm
        elif raw.sampled_statistics:  # image files: from the rows a streamed run reads
            from dlrun.data.lazy import statistics_rows

            rows = statistics_rows(train, cfg.split_seed)
            sample = xs[0] if rows is train else pixels_to_float(raw.x[rows], pixel_max)
            norm = _statistics(spec, sample)
        else:
            norm = _statistics(spec, xs[0], None if lengths is None else lengths[0])
        xs = [((x - norm[0]) / norm[1]).astype(np.float32) for x in xs]
        if lengths is not None:  # padding stays zero
            xs = [pad_zero(x, n) for x, n in zip(xs, lengths, strict=True)]
    stored = None
    if spec.kind == "image" and raw.encode is None:
        dtype = storage_dtype(getattr(cfg, "storage", "auto"), pixel_max, spec.name)
        std = None if norm is None else norm[1]
        parts = stored_splits(raw.x, (train, val, test), dtype, pixel_max, std, spec.name)
        stored = dict(zip(SPLITS, parts, strict=True))
    y = raw.y
    return DataModule(
        spec,
        xs[0],
        y[train],
        xs[1],
        y[val],
        xs[2],
        y[test],
        raw.encode,
        norm,
        stored=stored,
        pixel_max=pixel_max,
        augment=getattr(cfg, "augment", None),
        sources=fingerprints(cfg),
        lengths=None if lengths is None else dict(zip(SPLITS, lengths, strict=True)),
        feature_names=raw.feature_names if spec.kind == "tabular" else None,
        weights=split_weights(raw, (train, val, test)),
    )


def lazy_data(raw: RawData, cfg, parts: tuple, fitted=None) -> DataModule:
    """The splits of samples read from disk (dlrun.data.lazy): each a view of the files, with
    the normalization statistics of the training split (of a seeded sample of it when it is
    large: dlrun.data.lazy.STATS_SAMPLE)."""
    from dlrun.data.lazy import Rows, log_skipped, read_all, statistics_rows, unreadable
    from dlrun.data.preprocess import fingerprints

    train, val, test = parts
    if getattr(cfg, "as_sequence", False):
        raise ConfigError(
            "data.as_sequence: a table read from disk a batch at a time is not read as a "
            "sequence. Set data.load=memory."
        )
    if raw.encode is not None:  # a table read in parts: encoded once, into a mapped file
        from dlrun.data.table_stream import encode_table

        raw = encode_table(raw, train, fitted)
    if raw.spec.task == "regression":
        _check_target_varies(raw.y, parts, raw.spec.name)
    norm = None if fitted is None else fitted.norm
    if cfg.normalize and norm is None and not raw.sampled_statistics:  # arrays: every row
        norm = array_statistics(raw.spec, Rows(raw.x, train), raw.pixel_max)
    if cfg.normalize and norm is None:  # image files: a seeded sample of them
        rows = statistics_rows(train, cfg.split_seed)
        what = f"reading {len(rows):,} of the {len(train):,} training images for their statistics"
        x, bad = read_all(Rows(raw.x, rows), what)
        if bad:
            if cfg.on_bad_file != "skip":
                raise UserError(unreadable(bad, len(rows), " read for the statistics"))
            gone = rows[[i for i, _, _ in bad]]
            log_skipped(bad)
            train = train[~np.isin(train, gone)]
            x = np.delete(x, [i for i, _, _ in bad], axis=0)
        norm = _statistics(raw.spec, pixels_to_float(x, raw.pixel_max))
    stored = {
        name: Rows(raw.x, rows) for name, rows in zip(SPLITS, (train, val, test), strict=True)
    }
    y = raw.y
    return DataModule(
        raw.spec,
        stored["train"],
        y[train],
        stored["val"],
        y[val],
        stored["test"],
        y[test],
        raw.encode,
        norm=norm if cfg.normalize else None,
        stored=stored,
        pixel_max=raw.pixel_max,
        augment=getattr(cfg, "augment", None),
        sources=fingerprints(cfg),
        on_bad_file=getattr(cfg, "on_bad_file", "error"),
        feature_names=raw.feature_names if raw.spec.kind == "tabular" else None,
        weights=split_weights(raw, (train, val, test)),
    )


def split_weights(raw: RawData, parts: tuple) -> dict[str, np.ndarray] | None:
    """data.sample_weight: each split's rows' weights (float32), or None."""
    if raw.weights is None:
        return None
    return {
        name: np.asarray(raw.weights[rows], dtype=np.float32)
        for name, rows in zip(SPLITS, parts, strict=True)
    }


def array_statistics(spec: DataSpec, train, pixel_max: int | None, block_bytes: int = 2**27):
    """`_statistics` of the training rows of a memory-mapped array, read a block at a time
    (all at once when they take at most `block_bytes`, which gives exactly the in-memory
    values): per channel for images, per feature otherwise, in float64. A NaN or infinite
    value met on the way is refused as in memory (the first block that holds one is counted)."""
    from dlrun.report import item_progress

    n = len(train)
    if train.nbytes <= block_bytes:
        x = pixels_to_float(train.read(np.arange(n))[0], pixel_max)
        _check_finite(x, train.rows, spec)  # NaN or infinite inputs named, as in memory
        return _statistics(spec, x)
    axes = (0, 2, 3) if spec.kind == "image" else tuple(range(len(train.shape) - 1))
    step = max(1, block_bytes // max(1, train.nbytes // n))
    blocks = [np.arange(s, min(s + step, n)) for s in range(0, n, step)]
    total = squares = None
    count = 0
    with item_progress("the training rows' statistics", 2 * n) as advance:
        for rows in blocks:  # the mean, then the squared deviations from it
            x = pixels_to_float(train.read(rows)[0], pixel_max)
            _check_finite(x, train.rows[rows], spec)
            x = x.astype(np.float64)
            part = x.sum(axis=axes, keepdims=True)
            total = part if total is None else total + part
            count += x.size // part.size
            advance(len(rows))
        mean = total / count
        for rows in blocks:
            x = pixels_to_float(train.read(rows)[0], pixel_max).astype(np.float64)
            part = np.square(x - mean).sum(axis=axes, keepdims=True)
            squares = part if squares is None else squares + part
            advance(len(rows))
    std = np.sqrt(squares / count).astype(np.float32)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std


def pixels_to_float(x: np.ndarray, pixel_max: int | None) -> np.ndarray:
    """float32 samples: whole-number pixels divided by pixel_max (a float32 division, the one
    the device makes too), anything else as it is."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.float32(pixel_max) if pixel_max is not None else x


def _check_finite(
    x: np.ndarray,
    rows: np.ndarray,
    spec: DataSpec,
    feature_names: tuple[str, ...] | None = None,
    where: str | None = None,
) -> None:
    """A NaN or infinite input is reported before training (or prediction, `where` names the
    input): how many, and where the first is."""
    if np.isfinite(x).all():
        return
    for what, bad in (("NaN", np.isnan(x)), ("infinite", np.isinf(x))):
        if not bad.any():
            continue
        sample, *feature = (int(i) for i in np.argwhere(bad)[0])
        beyond = (
            f" (or beyond float32's range, ±{float(np.finfo(np.float32).max):.2g})"
            if what == "infinite"
            else ""
        )
        where = where or f"data: {spec.name}"
        first = f"sample {int(rows[sample])}, {_feature(spec, feature, feature_names)}"
        raise UserError(
            f"{where} has {int(bad.sum())} {what} input value(s){beyond}; the first is {first}. "
            "Clean the data."
        )


def _feature(spec: DataSpec, index: list[int], names: tuple[str, ...] | None) -> str:
    """Where one value sits in a sample, in the data's own terms."""
    if spec.kind == "image" and len(index) == 3:
        return "channel {}, row {}, column {}".format(*index)
    if spec.kind == "sequence" and len(index) == 2:
        return "time step {}, feature {}".format(*index)
    if len(index) != len(spec.shape):  # resized or reshaped by its loader
        return f"feature {tuple(index)}"
    flat = int(np.ravel_multi_index(index, spec.shape))
    if names is not None and len(names) > flat:
        return f"feature {flat} ('{names[flat]}')"
    return f"feature {flat}"


def _check_target_varies(y: np.ndarray, parts, name: str) -> None:
    """A regression target that takes a single value leaves nothing to learn (in all the data or
    the training split) or makes r2 undefined (in val or test, where scikit-learn would report a
    perfect 1.0)."""
    y = y.reshape(len(y), -1)  # (N, T)
    why = {
        "all": "there is nothing to learn, and r2 is undefined",
        "train": "a model learns nothing from it. Choose another split (data.split_seed, or "
        "the rows of data.split_column)",
        "val": "r2 is undefined there. Use a larger data.val_split, or another split",
        "test": "r2 is undefined there. Use a larger data.test_split, or another split",
    }
    for split, rows in (("all", slice(None)), *zip(SPLITS, parts, strict=True)):
        part = y[rows]
        constant = np.ptp(part, axis=0) == 0 if len(part) else np.zeros(1, dtype=bool)
        if constant.any():
            value = f"{float(part[0, constant.argmax()]):g}"
            where = f"all {len(part)}" if split == "all" else f"all {len(part)} {split}"
            raise UserError(
                f"data: the regression target of {name} takes a single value ({value}) in "
                f"{where} samples; {why[split]}."
            )


def split_indices(raw: RawData, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train, val and test: stratified for classification, seeded. With
    data.cv.group a group's rows stay in one part (the shares are shares of the groups); with
    data.cv.time the test and validation parts are the last rows, later than those before."""
    from sklearn.model_selection import train_test_split

    cv = getattr(cfg, "cv", None)
    ordered = cv is not None and cv.time
    groups = raw.groups
    if cv is not None and cv.group is not None and groups is None:
        raise UserError(
            f"data.cv.group: {raw.spec.name} is not a table; data.cv.group names a column of a "
            "table (data=csv or data=parquet)."
        )

    def cut(rows: np.ndarray, share: float, what: str):
        if ordered:  # in time order: the last rows are held out
            held = math.ceil(share * len(rows))
            if not 0 < held < len(rows):
                raise UserError(f"data: cannot split {len(rows)} samples for {what}={share}.")
            return rows[:-held], rows[-held:]
        if groups is not None:
            return group_cut(rows, groups[rows], share, what, cfg.split_seed)
        stratify = raw.y[rows] if raw.spec.task == "classification" else None
        if stratify is not None:
            _, counts = np.unique(stratify, return_counts=True)
            if (counts < 2).any():
                raise UserError(
                    f"data: cannot make a stratified split for {what}: {int((counts < 2).sum())} of "
                    f"{len(counts)} classes have fewer than 2 samples among {len(rows)}."
                    + _regression_hint(raw.spec)
                )
        try:
            return train_test_split(
                rows, test_size=share, random_state=cfg.split_seed, stratify=stratify
            )
        except ValueError as ex:
            raise UserError(
                f"data: cannot split {len(rows)} samples for {what}={share}: {ex}"
            ) from None

    rows = np.arange(len(raw.y))
    if raw.fixed_split is None:
        rest, test = cut(rows, cfg.test_split, "data.test_split")
        train, val = cut(rest, cfg.val_split, "data.val_split")
        return train, val, test
    split = np.asarray(raw.fixed_split)
    test, val, train = (rows[split == name] for name in ("test", "val", "train"))
    if len(val) == 0:
        train, val = cut(train, cfg.val_split, "data.val_split")
    for name, part in (("train", train), ("val", val), ("test", test)):
        if len(part) == 0:
            raise UserError(f"data: the fixed split has no '{name}' rows.")
    return train, val, test


def group_cut(rows: np.ndarray, groups: np.ndarray, share: float, what: str, seed: int):
    """(kept rows, held-out rows): `share` of the groups held out whole, seeded."""
    from sklearn.model_selection import GroupShuffleSplit

    if len(np.unique(groups)) < 2:
        raise UserError(
            f"data.cv.group: the {len(rows)} rows to split for {what} hold one group only; "
            "a split by groups needs at least 2."
        )
    splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    kept, held = next(splitter.split(rows, groups=groups))
    return rows[np.sort(kept)], rows[np.sort(held)]


def cv_rows(raw: RawData, cfg, rest: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of data.cv.fold `fold`; the refit's (ALL_ROWS): every
    non-test row trains, in their order, and no row validates."""
    if fold == ALL_ROWS:
        return np.sort(rest), rest[:0]
    return cv_folds(raw, cfg, rest)[fold]


def cv_folds(raw: RawData, cfg, rest: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """data.cv: the (training rows, validation rows) of every fold of the non-test rows `rest`,
    repeat by repeat: scikit-learn's RepeatedStratifiedKFold for classes (RepeatedKFold for
    targets), seeded with data.split_seed; StratifiedGroupKFold / GroupKFold (shuffled with the
    seed + the repeat) with data.cv.group; TimeSeriesSplit with data.cv.time (each fold trains
    on the rows before its validation block). They depend only on the data and the split
    settings, never on the model, so every model of a sweep is scored on the same folds."""
    from sklearn.model_selection import (
        GroupKFold,
        RepeatedKFold,
        RepeatedStratifiedKFold,
        StratifiedGroupKFold,
        TimeSeriesSplit,
    )

    cv = cfg.cv
    rest = np.sort(rest)
    classes = raw.spec.task == "classification"
    y = np.asarray(raw.y)[rest]
    if cv.time:
        if len(rest) <= cv.folds:
            raise UserError(
                f"data.cv.folds={cv.folds}: {len(rest)} rows outside the test split are too few."
            )
        return [(rest[tr], rest[va]) for tr, va in TimeSeriesSplit(cv.folds).split(rest)]
    if raw.groups is not None:
        groups = raw.groups[rest]
        found = len(np.unique(groups))
        if found < cv.folds:
            raise UserError(
                f"data.cv.folds={cv.folds}: the rows outside the test split hold {found} groups "
                f"of data.cv.group; each fold needs one. Use at most data.cv.folds={found}."
            )
        kind = StratifiedGroupKFold if classes else GroupKFold
        folds = []
        for repeat in range(cv.repeats):
            seed = (cfg.split_seed + repeat) % 2**32
            splitter = kind(n_splits=cv.folds, shuffle=True, random_state=seed)
            folds += [(rest[tr], rest[va]) for tr, va in splitter.split(rest, y, groups)]
        return folds
    kind = RepeatedStratifiedKFold if classes else RepeatedKFold
    splitter = kind(n_splits=cv.folds, n_repeats=cv.repeats, random_state=cfg.split_seed)
    if classes:
        _, counts = np.unique(y, return_counts=True)
        if counts.min() < cv.folds:
            raise UserError(
                f"data.cv.folds={cv.folds}: the smallest class has {counts.min()} of the "
                f"{len(rest)} rows outside the test split, fewer than the folds; each fold "
                f"needs one of every class. Use at most data.cv.folds={max(counts.min(), 2)}."
            )
    elif len(rest) < 2 * cv.folds:
        raise UserError(
            f"data.cv.folds={cv.folds}: {len(rest)} rows outside the test split are too few."
        )
    return [(rest[tr], rest[va]) for tr, va in splitter.split(rest, y if classes else None)]


def select_rows(raw: RawData, parts: tuple, cfg) -> tuple[RawData, tuple]:
    """`data.keep_classes`: only those classes' rows, renumbered in the order given (the split is
    the full data's, so a row is in the same part whichever classes are kept).
    `data.train_per_class`: only that many training rows per class, drawn with the split's
    seed; validation and test keep all theirs."""
    keep = getattr(cfg, "keep_classes", None)
    per_class = getattr(cfg, "train_per_class", None)
    if (keep or per_class) and raw.spec.task != "classification":
        key = "data.keep_classes" if keep else "data.train_per_class"
        raise UserError(f"{key}: '{raw.spec.name}' is a regression dataset; it has no classes.")
    if keep:
        names = raw.spec.class_labels
        codes = []
        for given in keep:
            text = str(given)
            if text in names:
                codes.append(names.index(text))
            elif (
                isinstance(given, int) and 0 <= given < len(names) and raw.spec.class_names is None
            ):
                codes.append(given)
            else:
                raise UserError(
                    f"data.keep_classes: '{given}' is not a class of '{raw.spec.name}'. Its classes: "
                    f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}."
                )
        if len(set(codes)) != len(codes) or len(codes) < 2:
            raise UserError(
                f"data.keep_classes must list at least 2 different classes. Got {list(keep)}."
            )
        recode = np.full(len(names), -1, dtype=np.int64)
        recode[codes] = np.arange(len(codes))
        y = recode[np.asarray(raw.y)]
        parts = tuple(rows[y[rows] >= 0] for rows in parts)
        spec = dataclasses.replace(
            raw.spec, num_classes=len(codes), class_names=tuple(names[c] for c in codes)
        )
        raw = dataclasses.replace(raw, y=y, spec=spec)
    if per_class:
        train, *rest = parts
        rng = np.random.default_rng(cfg.split_seed)
        shuffled = rng.permutation(train)
        labels = np.asarray(raw.y)[shuffled]
        chosen = np.concatenate([shuffled[labels == c][:per_class] for c in np.unique(labels)])
        parts = (np.sort(chosen), *rest)
    return raw, parts


def _with_task(raw: RawData, task: str) -> RawData:
    """Read the target as `task` instead of the task the dataset declares (data.task).

    Classes become regression targets by their values, which their names must give (digits
    '0'..'9'); the class codes 0..K-1 are an order, not values to fit."""
    y = np.asarray(raw.y)
    if task == "regression":
        values = _class_values(raw.spec)
        spec = dataclasses.replace(
            raw.spec,
            task="regression",
            num_classes=None,
            class_names=None,
            num_targets=1 if y.ndim == 1 else y.shape[1],
        )
        return dataclasses.replace(raw, y=values[y].astype(np.float32), spec=spec)
    values, codes = np.unique(y, return_inverse=True)
    if y.ndim != 1 or not np.all(np.mod(values, 1) == 0) or len(values) > 1000:
        raise UserError(
            f"data.task: 'classification' needs one target of whole-number classes; "
            f"{raw.spec.task} data '{raw.spec.name}' has {len(values)} distinct values."
        )
    spec = dataclasses.replace(
        raw.spec,
        task="classification",
        num_classes=len(values),
        class_names=tuple(str(int(v)) for v in values),
    )
    return dataclasses.replace(raw, y=codes.astype(np.int64), spec=spec)


def _regression_hint(spec: DataSpec) -> str:
    """For classes that are numbers (a table's whole-number target): how to predict them as one."""
    try:
        _class_values(spec)
    except UserError:
        return ""
    return " The classes are numbers: data.task=regression predicts them as a number."


def _class_values(spec: DataSpec) -> np.ndarray:
    """The number each class stands for, from its name; a dataset without class names is
    labelled by the numbers it gives."""
    if spec.class_names is None:
        return np.arange(spec.num_classes, dtype=np.float64)
    try:
        values = np.array([float(name) for name in spec.class_names])
    except ValueError:
        shown = ", ".join(repr(n) for n in spec.class_names[:4])
        more = ", ..." if len(spec.class_names) > 4 else ""
        raise UserError(
            f"data.task: 'regression' needs a target of numbers, but the classes of "
            f"'{spec.name}' are names ({shown}{more}). Leave data.task unset to classify them."
        ) from None
    if not np.isfinite(values).all():
        raise UserError(
            f"data.task: 'regression' needs finite numbers; the classes of '{spec.name}' include "
            f"{', '.join(n for n, v in zip(spec.class_names, values, strict=True) if not np.isfinite(v))}."
        )
    return values


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) images to (N, C, size, size)."""
    import torch
    import torch.nn.functional as F

    out = F.interpolate(
        torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
    )
    return out.numpy()


def text_tokens(raw: RawData, x: np.ndarray, train: np.ndarray) -> RawData:
    """Tokenized texts: cut to the longest text's tokens, with their lengths and the trained
    tokenizer's vocabulary in the spec; refused when the training texts hold one token."""
    from dlrun.data.text import check_tokens

    encoder = raw.encode
    lengths = encoder.lengths_
    steps = int(lengths.max())
    encoder.max_len = steps  # new texts are cut to the same length
    x = x[:, :steps]
    check_tokens(x[train], lengths[train], encoder.column, raw.spec.name)
    spec = dataclasses.replace(raw.spec, shape=(steps, 1), vocab_size=encoder.vocabulary)
    return dataclasses.replace(raw, x=x, spec=spec, lengths=lengths)


def as_sequence(spec: DataSpec, xs: list) -> tuple[DataSpec, list]:
    """A table's F features read as a sequence of F steps of one value (data.as_sequence)."""
    if spec.kind != "tabular":
        raise ConfigError(
            f"data.as_sequence: only a table is read as a sequence; {spec.name} is {spec.kind} data."
        )
    (width,) = spec.shape
    spec = dataclasses.replace(spec, kind="sequence", shape=(width, 1))
    return spec, [x.reshape(len(x), width, 1) for x in xs]


def pad_zero(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Steps beyond each sequence's length set to zero (N, T, D)."""
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0
    return x


def _statistics(
    spec: DataSpec, train: np.ndarray, lengths: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training split: per channel for images, per feature otherwise (for
    padded sequences over their valid steps only). Shaped (1, ...) to broadcast over a batch of
    samples; float32 like the samples.

    Computed in float64, a block of samples at a time: float32 squares overflow beyond 1.8e19
    (features of magnitude 1e30 gave an infinite std), and a float64 copy of a whole image set
    would take twice its memory."""
    if lengths is not None:  # (N, T, D): the valid steps only, then shaped (1, 1, D)
        valid = train[np.arange(train.shape[1])[None, :] < lengths[:, None]]  # (steps, D)
        mean, std = _statistics(dataclasses.replace(spec, kind="tabular"), valid)
        return mean[None], std[None]
    axes = (0, 2, 3) if spec.kind == "image" else tuple(range(train.ndim - 1))
    mean = train.mean(axis=axes, keepdims=True, dtype=np.float64)
    squares = np.zeros_like(mean)
    block = max(1, 2**22 // max(1, math.prod(train.shape[1:])))  # samples per float64 block
    for start in range(0, len(train), block):
        deviation = train[start : start + block].astype(np.float64) - mean
        squares += np.square(deviation).sum(axis=axes, keepdims=True)
    std = np.sqrt(squares / max(1, train.size // mean.size)).astype(np.float32)
    std[std == 0] = 1.0  # constant pixels or features stay at zero instead of dividing by 0
    return mean.astype(np.float32), std
