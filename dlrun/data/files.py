"""Tables read from the user's files: `csv` and `parquet` (the same code, two readers).

One column is the target; the features are the other columns (or those `data.features` names).
Numeric feature columns stay numbers; any other column is categorical and is one-hot or ordinal
encoded. Missing feature values are an error unless `data.missing=impute`, which fills them with
statistics of the training rows (median for numbers, most frequent value for text). The
encoders and imputers are fitted on the training rows only, inside `RawData.encode`.

The task follows the target column (`data.task` overrides it), and a log line says which and why:
text and booleans are classification; numbers with fractions are regression; whole numbers
(an integer column) are classification when they take at most 20 distinct values (labels, counts
of rooms) and regression when they take more (prices, ages). A float column is regression even
when its values are whole. Regression keeps the target's values, in its own units;
classification codes the sorted distinct values as classes 0..K-1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING

from dlrun.config import DataConfig, setting
from dlrun.data import DataSpec, RawData
from dlrun.data.lazy import LOADS, MEMORY_GB
from dlrun.errors import ConfigError, UserError, did_you_mean
from dlrun.registry import register_data

log = logging.getLogger("dlrun")

SPLITS = ("train", "val", "test")
FORMATS = {"csv": "a CSV file", "parquet": "a Parquet file"}
MAX_WHOLE_NUMBER_CLASSES = 20  # an integer target with more distinct values is regression
FLOAT32_MAX = float(np.finfo(np.float32).max)  # features and targets are float32 in training


@dataclass
class SequenceColumns:
    """Long-format time series: one sample per id, its rows ordered in time (dlrun.data.sequences)."""

    id: Optional[str] = None  # the column naming each row's sequence (null: rows are samples)
    order: Optional[str] = None  # the column ordering a sequence's rows (a time or a number)
    max_len: Optional[int] = setting(None, lo=1)  # longer sequences are cut to this many steps
    keep: str = setting("last", choices=("last", "first"))  # which steps a cut keeps


@dataclass
class TableConfig(DataConfig):
    path: str = MISSING  # the file; a relative path starts from the current directory
    target: str = MISSING  # the column to predict
    features: Optional[list[str]] = None  # null: every other column
    categorical: str = setting("onehot", choices=("onehot", "ordinal"))  # text columns
    missing: str = setting("error", choices=("error", "impute"))  # missing feature values
    split_column: Optional[str] = None  # a column of train / val / test that fixes the split
    # a column of weights (>= 0): each row's loss (networks) or sample weight (estimators) in
    # training is multiplied by it; validation and test scores stay unweighted
    sample_weight: Optional[str] = None
    sequence: SequenceColumns = field(default_factory=SequenceColumns)
    # Text (dlrun.data.text): a column tokenized into a sequence of token ids
    text: Optional[str] = None  # the text column (the samples' only input)
    tokenizer: str = setting("word", choices=("word", "char", "wordpiece"))
    vocab_size: int = setting(2000, lo=10)  # word, wordpiece: the vocabulary at most
    text_max_len: int = setting(128, lo=1)  # longer texts keep their first tokens

    def problems(self) -> list[str]:
        """What is wrong with the settings themselves, before the file is read."""
        found = []
        if self.text is not None and (self.features is not None or self.sequence.id is not None):
            found.append(
                "data.text reads one text column as the samples' input; data.features and "
                "data.sequence.id must be null with it."
            )
        if (self.sequence.id is None) != (self.sequence.order is None):
            found.append(
                "data.sequence.id and data.sequence.order go together: the id names each row's "
                "sequence, the order column orders its rows. Give both, or neither."
            )
        if self.split_column is not None and self.split_column == self.target:
            found.append(
                f"data.split_column: '{self.split_column}' is also data.target; the split "
                "column must be another column."
            )
        if self.features is not None:
            if not self.features:
                found.append(
                    "data.features: an empty list selects no columns. Give column names, or "
                    "null for every column but the target."
                )
            twice = sorted({f for f in self.features if self.features.count(f) > 1})
            if twice:
                found.append(f"data.features names {', '.join(map(repr, twice))} more than once.")
            for key, column in (
                ("data.target", self.target),
                ("data.split_column", self.split_column),
            ):
                if column is not None and column in self.features:
                    found.append(
                        f"data.features: '{column}' is {key}, so it cannot also be a feature."
                    )
        return found


@dataclass
class CsvConfig(TableConfig):
    name: str = "csv"


@dataclass
class ParquetConfig(TableConfig):
    name: str = "parquet"
    # memory: read the file whole; stream: read it a row group at a time, and train from its
    # encoded rows memory-mapped (dlrun.data.table_stream); auto: stream when its values take
    # more than memory_gb uncompressed
    load: str = setting("auto", choices=LOADS)
    memory_gb: float = setting(MEMORY_GB, lo=0, lo_open=True)


@register_data("csv", schema=CsvConfig)
def load_csv(cfg: CsvConfig) -> RawData:
    return load_table(cfg, "csv")


@register_data("parquet", schema=ParquetConfig)
def load_parquet(cfg: ParquetConfig) -> RawData:
    return load_table(cfg, "parquet")


def load_table(cfg: TableConfig, fmt: str) -> RawData:
    """Read the file, check it against the settings, and return it with its encoder."""
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems)
    if fmt == "parquet":  # larger than data.memory_gb: read a row group at a time
        from dlrun.data.table_stream import streamed_table

        streamed = streamed_table(cfg)
        if streamed is not None:
            return streamed
    df, shown = read_table(cfg.path, fmt)
    columns = list(df.columns)

    long = cfg.sequence.id is not None  # long-format time series: one sample per id
    check_named(cfg, columns, shown)
    if cfg.text is not None:
        return load_text(cfg, df, shown)
    features = feature_columns(cfg, columns, shown)
    target, split = df[cfg.target], None if cfg.split_column is None else df[cfg.split_column]
    group = None if cfg.cv.group is None else df[cfg.cv.group]
    weight = None if cfg.sample_weight is None else df[cfg.sample_weight]
    if long:
        from dlrun.data.sequences import per_sample, steps_of

        index = steps_of(
            df, cfg.sequence.id, cfg.sequence.order, cfg.sequence.max_len, cfg.sequence.keep, shown
        )
        target = per_sample(target, index[0], index[3], "data.target", shown)
        if split is not None:
            split = per_sample(split, index[0], index[3], "data.split_column", shown)
        if group is not None:
            group = per_sample(group, index[0], index[3], "data.cv.group", shown)
        if weight is not None:
            weight = per_sample(weight, index[0], index[3], "data.sample_weight", shown)
    y, task, classes = read_target(target, cfg.target, shown, cfg.task)
    fixed_split = None if split is None else read_split(split, cfg.split_column)
    groups = None if group is None else read_groups(group, cfg.cv.group)
    weights = None if weight is None else read_weights(weight, cfg.sample_weight)
    table, numeric, categorical = feature_table(df, features)
    check_missing(table, cfg.missing, shown)
    check_finite(table, numeric, shown, cfg.missing == "impute")

    vocab = {c: sorted(set(table[c].dropna())) for c in categorical}
    warn_categorical(cfg, vocab, {c: _stray_text(table[c]) for c in categorical})
    spec = table_spec(cfg, task, classes, numeric, vocab)
    encode = TableEncoder(numeric, categorical, vocab, cfg.categorical, cfg.missing == "impute")
    lengths = None
    if long:
        from dlrun.data.sequences import SequenceEncoder

        encode = SequenceEncoder(
            encode, cfg.sequence.id, cfg.sequence.order, None, cfg.sequence.keep
        )
        encode.sample_, encode.position_, encode.lengths_, encode.ids_ = index
        encode.steps = int(index[2].max())  # the padded length: the longest kept sequence
        lengths = encode.lengths_
        spec = dataclasses.replace(spec, kind="sequence", shape=(encode.steps, spec.shape[0]))
    return RawData(
        table,
        y,
        spec,
        fixed_split=fixed_split,
        encode=encode,
        feature_names=encode.feature_names,
        lengths=lengths,
        groups=groups,
        weights=weights,
    )


def check_named(cfg: TableConfig, columns: list[str], shown) -> None:
    """The columns the settings name (target, split, sequence id and order) must be columns."""
    named = (
        ("data.target", cfg.target),
        ("data.split_column", cfg.split_column),
        ("data.sequence.id", cfg.sequence.id),
        ("data.sequence.order", cfg.sequence.order),
        ("data.cv.group", cfg.cv.group),
        ("data.sample_weight", cfg.sample_weight),
    )
    for key, column in named:
        if column is not None and column not in columns:
            raise UserError(_not_a_column(key, [column], shown, columns))


def feature_columns(cfg: TableConfig, columns: list[str], shown) -> list[str]:
    """The feature columns: data.features, or every column the settings do not name."""
    if cfg.features is None:
        special = (
            cfg.target,
            cfg.split_column,
            cfg.sequence.id,
            cfg.sequence.order,
            cfg.cv.group,
            cfg.sample_weight,
        )
        features = [c for c in columns if c not in special]
    else:
        unknown = [f for f in cfg.features if f not in columns]
        if unknown:
            raise UserError(_not_a_column("data.features", unknown, shown, columns))
        features = list(cfg.features)
    if not features:
        raise UserError(
            f"data.path: {shown} has no feature columns besides the target '{cfg.target}'. "
            f"Columns: {_listed(columns)}."
        )
    return features


def warn_categorical(cfg: TableConfig, vocab: dict, stray: dict[str, str]) -> None:
    """Log what a user would want to know about the text columns: one that mostly holds
    numbers (`stray` says which values are not), or one-hot encoding of many distinct values."""
    for column, values in vocab.items():
        if stray[column]:
            encoded = (
                f"one-hot encoded into {len(values)} features"
                if cfg.categorical == "onehot"
                else "ordinal encoded (its numbers ordered as text)"
            )
            log.warning(
                "column '%s' holds numbers, but %s: it is read as text and %s. Make those values "
                "numbers, or leave those cells empty to mark them missing (data.missing=impute "
                "fills them).",
                column,
                stray[column],
                encoded,
            )
        elif cfg.categorical == "onehot" and len(values) > 100:
            log.warning(
                "column '%s' has %d distinct values: one-hot encoding makes a feature of each. "
                "Leave it out with data.features, or use data.categorical=ordinal.",
                column,
                len(values),
            )


def table_spec(cfg: TableConfig, task: str, classes, numeric: list[str], vocab: dict) -> DataSpec:
    """The spec of an encoded table: its width is known before the split (TableEncoder)."""
    categorical = len(vocab)
    width = len(numeric) + (
        sum(len(v) for v in vocab.values()) if cfg.categorical == "onehot" else categorical
    )
    return DataSpec(
        name=cfg.name,
        task=task,
        kind="tabular",
        shape=(width,),
        num_classes=len(classes) if classes is not None else None,
        class_names=classes,
    )


def load_text(cfg: TableConfig, df, shown) -> RawData:
    """A text column as the samples (dlrun.data.text), the target as for any table."""
    from dlrun.data.text import TextEncoder, texts_of

    if cfg.text not in df.columns:
        raise UserError(_not_a_column("data.text", [cfg.text], shown, list(df.columns)))
    texts = texts_of(df[cfg.text], cfg.text, shown)
    y, task, classes = read_target(df[cfg.target], cfg.target, shown, cfg.task)
    split = None if cfg.split_column is None else read_split(df[cfg.split_column], cfg.split_column)
    spec = DataSpec(
        name=cfg.name,
        task=task,
        kind="sequence",
        shape=(cfg.text_max_len, 1),
        num_classes=len(classes) if classes is not None else None,
        class_names=classes,
        vocab_size=cfg.vocab_size,  # the trained tokenizer's own, once fitted (build_data)
    )
    encode = TextEncoder(cfg.text, cfg.tokenizer, cfg.vocab_size, cfg.text_max_len)
    for key, column in (("data.cv.group", cfg.cv.group), ("data.sample_weight", cfg.sample_weight)):
        if column is not None and column not in df.columns:
            raise UserError(_not_a_column(key, [column], shown, list(df.columns)))
    groups = None if cfg.cv.group is None else read_groups(df[cfg.cv.group], cfg.cv.group)
    weights = None
    if cfg.sample_weight is not None:
        weights = read_weights(df[cfg.sample_weight], cfg.sample_weight)
    return RawData(texts, y, spec, fixed_split=split, encode=encode, groups=groups, weights=weights)


def read_table(path_text: str, fmt: str, key: str = "data.path"):
    """The file as a DataFrame with string column names, and its absolute path to show. `key`
    names the setting in messages (dlrun-predict reads its `input` here too)."""
    import pandas as pd

    from dlrun.report import busy

    path, shown = checked_file(path_text, fmt, key)
    with reading(shown, fmt, key), busy(f"reading {shown}"):
        df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    df.columns = [str(c) for c in df.columns]
    check_size(df.columns, len(df), shown, fmt, key)
    return df, shown


def checked_file(path_text: str, fmt: str, key: str = "data.path") -> tuple[Path, Path]:
    """(path, absolute path to show) of a table file that exists, is not empty, and names each
    column once."""
    from dlrun.errors import regular_file

    path = Path(path_text).expanduser()
    shown = path.absolute()
    what = FORMATS[fmt]
    if not (path.is_dir() and fmt == "parquet"):  # a Parquet dataset may be a folder
        regular_file(path, key, what)
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(
            f"{key}: {shown} is empty (0 bytes). Give {what} with a header row and rows of data."
        )
    with reading(shown, fmt, key):
        twice = sorted(name for name, n in Counter(header(path, fmt)).items() if name and n > 1)
    if twice:
        raise UserError(
            f"data.path: {shown} has more than one column named "
            f"{', '.join(map(repr, twice))}; column names must be unique. Rename or drop "
            "the copies."
        )
    return path, shown


@contextlib.contextmanager
def reading(shown, fmt: str, key: str = "data.path"):
    """A file the reader cannot read as `fmt` is one UserError with the reader's reason."""
    import pandas as pd

    what = FORMATS[fmt]
    try:
        yield
    except pd.errors.EmptyDataError:
        raise UserError(
            f"{key}: {shown} has no columns. Give {what} with a header row and rows of data."
        ) from None
    except (ValueError, OSError, pd.errors.ParserError) as ex:  # ArrowInvalid is a ValueError
        reason = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
        raise UserError(f"{key}: cannot read {shown} as {what}: {reason}") from None


def check_size(columns, rows: int, shown, fmt: str, key: str = "data.path") -> None:
    """A table needs columns and rows."""
    what = FORMATS[fmt]
    if len(columns) == 0:
        raise UserError(
            f"{key}: {shown} has no columns. Give {what} with a header row and rows of data."
        )
    if rows == 0:
        raise UserError(
            f"{key}: {shown} has no rows (columns {_listed(columns)}). A dataset needs "
            "at least one row of data."
        )


def header(path: Path, fmt: str) -> list[str]:
    """The column names as the file spells them, duplicates kept (pandas renames a second 'a' to
    'a.1' in a CSV). The CSV header is read by pandas too, so compression and quoting agree."""
    import pandas as pd

    if fmt == "csv":
        first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        return [str(name) for name in first.iloc[0]]
    import pyarrow.dataset
    import pyarrow.parquet

    if path.is_dir():  # a folder of Parquet files, as pandas reads it
        return list(pyarrow.dataset.dataset(path, format="parquet").schema.names)
    return list(pyarrow.parquet.read_schema(path).names)


def read_target(
    column, name: str, shown, task: str | None = None
) -> tuple[np.ndarray, str, tuple[str, ...] | None]:
    """(y, task, class names). Regression keeps the column's values (float32); classification
    codes the sorted distinct values 0..K-1. The task is `task` (data.task) when given, else the
    rule in this module's docstring; a log line says which and why."""
    import pandas as pd
    from pandas.api import types

    missing = column.isna().to_numpy()
    if missing.any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(missing)[:5])
        more = ", ..." if missing.sum() > 5 else ""
        raise UserError(
            f"data.target: column '{name}' of {shown} has {int(missing.sum())} missing values "
            f"(data rows {rows}{more}, counting from 1); every row needs a target. Fill them in "
            "or drop those rows (data.missing=impute fills features only)."
        )
    dtype = column.dtype
    if (
        types.is_complex_dtype(dtype)
        or types.is_datetime64_any_dtype(dtype)
        or types.is_timedelta64_dtype(dtype)
        or isinstance(dtype, (pd.PeriodDtype, pd.IntervalDtype))
    ):
        raise UserError(
            f"data.target: column '{name}' of {shown} holds {dtype} values. A target must hold "
            "numbers (regression), or integers, booleans or text (classification)."
        )
    if types.is_numeric_dtype(dtype) and not types.is_bool_dtype(dtype):
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise UserError(
                f"data.target: column '{name}' of {shown} has {int((~np.isfinite(values)).sum())} "
                "infinite values; a target must be finite."
            )
        beyond = _beyond_float32({name: values}, shown)
        if beyond:
            raise UserError(f"data.target: {beyond}; rescale it.")
        distinct = np.unique(values)
        whole = bool(np.all(np.mod(distinct, 1) == 0))
        chosen, why = _target_task(name, types.is_integer_dtype(dtype), whole, len(distinct))
    else:
        values = column.to_numpy(dtype=object)
        distinct = None
        chosen = "classification"
        kind = "booleans" if types.is_bool_dtype(dtype) else "text"
        why = f"target '{name}' holds {kind}: classification ({len(pd.unique(values))} classes)"
        stray = _stray_text(column)
        if stray:
            log.warning(
                "target '%s' holds numbers, but %s: it is read as text, each distinct value a "
                "class. Make those values numbers to predict the target as a number.",
                name,
                stray,
            )
    if task is None:
        task = chosen
        log.info("%s", why)
    elif task != chosen:
        log.info("target '%s' read for %s, as data.task says", name, task)

    if task == "regression":
        if distinct is None:
            raise UserError(
                f"data.task: 'regression' needs a target of numbers; column '{name}' of {shown} "
                f"holds {kind} ({_examples(pd.unique(values))})."
            )
        if len(distinct) < 2:
            raise UserError(
                f"data.target: column '{name}' of {shown} holds a single value ({_number(distinct[0])}) "
                f"in all {len(values)} rows; a regression target must vary (there is nothing "
                "to learn, and r2 is undefined)."
            )
        return values.astype(np.float32), "regression", None

    if distinct is not None:  # numbers as classes: their sorted values
        if not whole:
            raise UserError(
                f"data.task: 'classification' needs one target of whole-number classes; column "
                f"'{name}' of {shown} holds {len(distinct)} distinct numbers, not all whole."
            )
        classes = [_number(v) for v in distinct]
        y = np.searchsorted(distinct, values).astype(np.int64)
    else:
        unique = list(pd.unique(values))
        try:
            ordered = sorted(unique)
        except TypeError:  # text mixed with numbers
            ordered = sorted(unique, key=str)
        index = {value: i for i, value in enumerate(ordered)}
        y = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
        classes = [str(c) for c in ordered]
    if len(classes) < 2:
        raise UserError(
            f"data.target: column '{name}' of {shown} has a single value ({classes[0]!r}); "
            "classification needs at least two classes."
        )
    return y, "classification", tuple(classes)


def _target_task(name: str, integers: bool, whole: bool, count: int) -> tuple[str, str]:
    """The task a numeric target gets by the rule, and the log line that says why."""
    if integers:
        many = count > MAX_WHOLE_NUMBER_CLASSES
        task, other = ("regression", "classification") if many else ("classification", "regression")
        reads = "reads them as classes" if many else "predicts them as numbers"
        limit = "more than" if many else "at most"
        return task, (
            f"target '{name}' holds {count} distinct whole numbers: {task} ({limit} "
            f"{MAX_WHOLE_NUMBER_CLASSES} distinct values); data.task={other} {reads}"
        )
    if whole:
        return "regression", (
            f"target '{name}' holds floats ({count} distinct values, all whole): regression; "
            "data.task=classification reads them as classes"
        )
    return "regression", f"target '{name}' holds numbers with fractions: regression"


def read_groups(column, name: str) -> np.ndarray:
    """data.cv.group: each row's group as a code 0..G-1; every row needs one."""
    import pandas as pd

    missing = int(column.isna().sum())
    if missing:
        raise UserError(
            f"data.cv.group: column '{name}' has {missing} missing values; every row needs its "
            "group."
        )
    return pd.factorize(column)[0].astype(np.int64)


def read_weights(column, name: str) -> np.ndarray:
    """data.sample_weight: each row's weight, a number >= 0; not all of them 0."""
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        shown = ", ".join(repr(v) for v in column[bad].unique()[:5].tolist())
        raise UserError(
            f"data.sample_weight: column '{name}' must hold numbers >= 0 in every row; "
            f"{int(bad.sum())} rows hold others: {shown}."
        )
    if not values.any():
        raise UserError(f"data.sample_weight: column '{name}' is 0 in every row.")
    return values


def read_split(column, name: str) -> np.ndarray:
    """The per-row split from the split column, which may hold only train, val and test."""
    import pandas as pd

    bad = ~column.isin(SPLITS).to_numpy()
    if bad.any():
        shown = []
        for value in column[bad].unique()[:5]:
            shown.append("a missing value" if pd.isna(value) else repr(str(value)))
        raise UserError(
            f"data.split_column: column '{name}' may hold only 'train', 'val' and 'test'; "
            f"{int(bad.sum())} rows hold other values: {', '.join(shown)}."
        )
    split = column.to_numpy(dtype=object).astype(str)
    for needed in ("train", "test"):
        if not (split == needed).any():
            raise UserError(
                f"data.split_column: column '{name}' has no '{needed}' rows; it needs 'train' "
                "and 'test' rows ('val' rows are optional: without them validation is taken "
                "from 'train' by data.val_split)."
            )
    return split


def feature_table(df, features: list[str]):
    """The feature columns as numbers (float64, NaN for missing) and text (object, NaN for
    missing); returns (table, numeric columns, categorical columns)."""
    from pandas.api import types

    numeric, categorical = [], []
    for name in features:
        dtype = df[name].dtype
        numbers = types.is_numeric_dtype(dtype) and not types.is_complex_dtype(dtype)
        (numeric if numbers else categorical).append(name)
    return feature_frame(df, numeric, categorical), numeric, categorical


def feature_frame(df, numeric: list[str], categorical: list[str]):
    """The numeric columns as float64 (NaN for missing), then the categorical ones as text
    (object, NaN for missing)."""
    import pandas as pd

    data = {}
    for name in numeric:
        data[name] = df[name].to_numpy(dtype=np.float64, na_value=np.nan)
    for name in categorical:
        column = df[name]
        missing = column.isna().to_numpy()
        text = np.array([str(v) for v in column.to_numpy(dtype=object)], dtype=object)
        text[missing] = np.nan
        data[name] = text
    return pd.DataFrame(data, index=df.index)


def check_missing(table, missing: str, shown, new_rows: bool = False, counts=None) -> None:
    """Missing feature values are an error under data.missing=error. `new_rows`: rows given to a
    trained run (dlrun-predict), which can no longer change how it was trained. `counts`: the
    missing values per column when the table is read in parts (then `table` is None)."""
    if counts is None:
        counts = table.isna().sum().items()
    counts = {name: int(n) for name, n in dict(counts).items() if n}
    if not counts or missing != "error":
        return
    listed = ", ".join(f"{name} ({n})" for name, n in counts.items())
    columns = f"{len(counts)} feature column{'s' if len(counts) > 1 else ''}: {listed}"
    if new_rows:
        raise UserError(
            f"input: {shown} has missing values in {columns}. This run was trained with "
            "data.missing=error, so it has no imputation values to fill them with: fill them in "
            "the file, or train again with data.missing=impute."
        )
    raise UserError(
        f"data.missing is 'error', which allows no missing values, but {shown} has missing "
        f"values in {columns}. Add data.missing=impute to fill them from the training rows "
        "(median for numbers, most frequent value for text), or fill them in the file."
    )


def check_finite(table, numeric: list[str], shown, impute: bool, new_rows: bool = False) -> None:
    """Numeric features must be finite and fit float32, the dtype they are trained in."""
    key = "input" if new_rows else "data.path"
    infinite = [name for name in numeric if np.isinf(table[name].to_numpy()).any()]
    if infinite:
        empty = ""
        if impute:
            empty = " (or empty: this run fills missing values)" if new_rows else " (or missing)"
        raise UserError(
            f"{key}: the feature columns {', '.join(infinite)} of {shown} hold infinite "
            f"values; features must be finite numbers{empty}."
        )
    beyond = _beyond_float32({name: table[name].to_numpy() for name in numeric}, shown)
    if beyond:
        advice = "this run was trained on float32 features" if new_rows else "rescale it"
        raise UserError(f"{key}: {beyond}; {advice}.")


def _beyond_float32(columns: dict[str, np.ndarray], shown) -> str:
    """What says which columns hold finite values too large for float32, or ''."""
    found = []
    for name, values in columns.items():
        finite = values[np.isfinite(values)]
        if finite.size and np.abs(finite).max() > FLOAT32_MAX:
            found.append((name, finite[np.argmax(np.abs(finite))]))
    if not found:
        return ""
    limit = f"beyond float32's range (±{FLOAT32_MAX:.2g})"
    if len(found) == 1:
        name, extreme = found[0]
        return f"column '{name}' of {shown} holds values up to {extreme:.3g}, {limit}"
    listed = ", ".join(f"'{name}' (up to {extreme:.3g})" for name, extreme in found)
    return f"columns {listed} of {shown} hold values {limit}"


def _stray_text(column) -> str:
    """For a text column that mostly holds numbers, what says how many values are not numbers
    ("3 of its 200 values are not numbers: '?', 'unknown'"); else ''."""
    import pandas as pd

    present, others = not_numbers(column)
    return stray_message(present, len(others), pd.unique(others.to_numpy()))


def not_numbers(column):
    """(how many values the column holds, those of them that are not numbers)."""
    import pandas as pd

    present = column.dropna()
    numbers = pd.to_numeric(present.astype(str), errors="coerce")
    return len(present), present[numbers.isna().to_numpy()]


def stray_message(present: int, others: int, distinct) -> str:
    """`_stray_text` from counts: `others` of `present` values are not numbers, `distinct` of
    them in the order met."""
    if others == 0 or others * 2 > present:
        return ""
    return f"{others} of its {present} values are not numbers: {_examples(distinct)}"


def _examples(values, limit: int = 3) -> str:
    shown = ", ".join(repr(str(v)) for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct)" if len(values) > limit else "")


def _number(value: float) -> str:
    """A class name or value as a person writes it: 3, not 3.0."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.10g}"


class TableEncoder:
    """`RawData.encode` for a table: imputers and encoders fitted on the training rows only.

    The output has a fixed layout, known before the split (DataSpec.shape): the numeric columns,
    then for one-hot one feature per distinct value of each categorical column in the file, in
    sorted order. The one-hot encoder knows only the values of the training rows; any other
    value (like a value it has never seen) is all zeros.
    """

    def __init__(self, numeric, categorical, vocab, how: str, impute: bool):
        self.numeric, self.categorical, self.vocab = numeric, categorical, vocab
        self.how, self.impute = how, impute

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The name of each encoded feature: the column, or for one-hot `column=value`."""
        names = list(self.numeric)
        for column in self.categorical:
            if self.how == "onehot":
                names += [f"{column}={value}" for value in self.vocab[column]]
            else:
                names.append(column)
        return tuple(names)

    def describe(self) -> dict:
        """The fitted encoding as plain data, for the run's preprocessing.json (to read; the
        fitted encoder itself is saved with skops)."""
        described = {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "vocab": {c: list(v) for c, v in self.vocab.items()},
            "how": self.how,
            "impute": self.impute,
            "feature_names": list(self.feature_names),
        }
        fitted = self.transformer_.named_transformers_
        if self.impute and self.numeric:
            statistics = fitted["num"][-1].statistics_
            described["numeric_fill"] = dict(zip(self.numeric, map(float, statistics), strict=True))
        if self.categorical:
            steps = fitted["cat"]
            known = steps[-1].categories_
            described["categories"] = {
                c: [str(v) for v in values]
                for c, values in zip(self.categorical, known, strict=True)
            }
            if self.impute:
                fills = map(str, steps[0].statistics_)
                described["categorical_fill"] = dict(zip(self.categorical, fills, strict=True))
        return described

    @classmethod
    def restore(cls, described: dict, transformer) -> TableEncoder:
        """The encoder a run fitted, from its description and its saved scikit-learn encoder."""
        encoder = cls(
            described["numeric"],
            described["categorical"],
            described["vocab"],
            described["how"],
            described["impute"],
        )
        encoder.transformer_ = transformer
        return encoder

    def refitted(self, fresh) -> TableEncoder:
        """This fitted encoder, for the rows `fresh` (the same file read again) indexes."""
        return self

    def apply(self, table) -> np.ndarray:
        """Every row encoded with what was fitted already."""
        return self._encode(table)

    def __call__(self, table, train_rows: np.ndarray) -> np.ndarray:
        train = table.iloc[train_rows]
        if self.impute:
            self._check_imputable([c for c in self.categorical if train[c].isna().all()])
        self.transformer_ = self._transformer().fit(train)
        return self._encode(table)

    def fit_parts(self, source, train_rows: np.ndarray) -> TableEncoder:
        """Fit on the training rows of a table read in parts (dlrun.data.table_stream), with
        what fitting on those rows whole would learn: the categories of the training rows, and
        for imputation each numeric column's median (one column read at a time) and each text
        column's most frequent value (ties: the smallest, as scikit-learn). The encoder is
        then fitted on a few rows that hold exactly those values, so it is the same fitted
        scikit-learn encoder, saved and used as any other."""
        import pandas as pd
        from sklearn.impute import SimpleImputer

        train = np.zeros(len(source), dtype=bool)
        train[train_rows] = True
        counts = {c: pd.Series(dtype=np.int64) for c in self.categorical}
        parts = source.parts(self.categorical, "the training rows' categories")
        for start, part in parts if self.categorical else []:  # numbers alone need no pass
            part = part[train[start : start + len(part)]]
            for c in self.categorical:
                found = part[c].value_counts(dropna=True)
                counts[c] = counts[c].add(found, fill_value=0).astype(np.int64)
        if self.impute:
            self._check_imputable([c for c in self.categorical if counts[c].sum() == 0])
        rows = max([len(counts[c]) + 1 for c in self.categorical], default=1)
        frame = {}
        for c in self.numeric:
            value = 0.0
            if self.impute:  # the median scikit-learn takes of this column's training rows
                column = source.column(c)[train_rows][:, None]
                imputer = SimpleImputer(strategy="median", keep_empty_features=True)
                value = float(imputer.fit(column).statistics_[0])
            frame[c] = np.full(rows, value, dtype=np.float64)
        for c in self.categorical:
            found = counts[c]
            mode = min(found.index[found == found.max()])
            values = sorted(found.index) + [mode] * (rows - len(found))  # the mode once more
            frame[c] = np.array(values, dtype=object)
        self.transformer_ = self._transformer().fit(
            pd.DataFrame(frame)[self.numeric + self.categorical]
        )
        return self

    @staticmethod
    def _check_imputable(empty: list[str]) -> None:
        if empty:
            raise UserError(
                f"data.missing: the columns {', '.join(empty)} have no values in the training "
                "rows, so there is nothing to impute them from. Leave them out with "
                "data.features, or fill them in."
            )

    def _encode(self, table) -> np.ndarray:
        with warnings.catch_warnings():
            # one-hot: values the training rows lack are encoded as zeros, as intended
            warnings.filterwarnings("ignore", message="Found unknown categories")
            out = np.asarray(self.transformer_.transform(table), dtype=np.float32)
        if self.how == "onehot" and self.categorical:
            out = self._full_layout(self.transformer_, out)
        return out

    def transform(self, df, shown: str) -> np.ndarray:
        """Encode new rows (a table with the feature columns, by name) as the training rows were."""
        import pandas as pd

        columns = self.numeric + self.categorical
        absent = [c for c in columns if c not in df.columns]
        if absent:
            raise UserError(f"input: {shown} lacks the feature column(s) {', '.join(absent)}.")
        data = {}
        for name in self.numeric:
            try:
                data[name] = pd.to_numeric(df[name]).to_numpy(dtype=np.float64, na_value=np.nan)
            except (ValueError, TypeError):
                raise UserError(f"input: column {name} of {shown} must hold numbers.") from None
        for name in self.categorical:
            column = df[name]
            text = np.array([str(v) for v in column.to_numpy(dtype=object)], dtype=object)
            text[column.isna().to_numpy()] = np.nan
            data[name] = text
        table = pd.DataFrame(data, index=df.index)[columns]
        check_missing(table, "impute" if self.impute else "error", shown, new_rows=True)
        check_finite(table, self.numeric, shown, self.impute, new_rows=True)
        return self._encode(table)

    def _transformer(self):
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

        parts: list[tuple[str, Any, list[str]]] = []
        if self.numeric:
            steps = (
                [SimpleImputer(strategy="median", keep_empty_features=True)] if self.impute else []
            )
            parts.append(("num", make_pipeline(*steps) if steps else "passthrough", self.numeric))
        if self.categorical:
            if self.how == "onehot":
                encoder = OneHotEncoder(
                    handle_unknown="ignore", sparse_output=False, dtype=np.float32
                )
            else:
                encoder = OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float32
                )
            steps = [SimpleImputer(strategy="most_frequent")] if self.impute else []
            parts.append(("cat", make_pipeline(*steps, encoder), self.categorical))
        return ColumnTransformer(parts, sparse_threshold=0.0)

    def _full_layout(self, transformer, out: np.ndarray) -> np.ndarray:
        """Place the fitted one-hot columns at their values' places in the fixed layout."""
        encoder = transformer.named_transformers_["cat"][-1]
        n_numeric = len(self.numeric)
        width = n_numeric + sum(len(self.vocab[c]) for c in self.categorical)
        full = np.zeros((out.shape[0], width), dtype=np.float32)
        full[:, :n_numeric] = out[:, :n_numeric]
        source, target = n_numeric, n_numeric
        for column, fitted in zip(self.categorical, encoder.categories_, strict=True):
            place = {value: i for i, value in enumerate(self.vocab[column])}
            for value in fitted:
                full[:, target + place[value]] = out[:, source]
                source += 1
            target += len(self.vocab[column])
        return full


def _not_a_column(key: str, names: list[str], shown, columns: list[str]) -> str:
    quoted = ", ".join(f"'{n}'" for n in names)
    verb = "is not a column" if len(names) == 1 else "are not columns"
    return f"{key}: {quoted} {verb} of {shown}. Columns: {_listed(columns)}." + did_you_mean(
        names[0], columns
    )


def _listed(columns, limit: int = 30) -> str:
    columns = [str(c) for c in columns]
    text = ", ".join(columns[:limit])
    return text + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")
