"""Tables read from the user's files: `csv` and `parquet` (the same code, two readers).

One column is the target; the features are the other columns (or those `data.features` names).
Numeric feature columns stay numbers; any other column is categorical and is one-hot or ordinal
encoded. Missing feature values are an error unless `data.missing=impute`, which fills them with
statistics of the training rows (median for numbers, most frequent value for text). The
encoders and imputers are fitted on the training rows only, inside `RawData.encode`.

The task follows the target column: floats are regression; integers, booleans and text are
classification (the classes are the sorted distinct values).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING

from dlrun.config import DataConfig, setting
from dlrun.data import DataSpec, RawData
from dlrun.errors import ConfigError, UserError, did_you_mean
from dlrun.registry import register_data

log = logging.getLogger("dlrun")

SPLITS = ("train", "val", "test")
FORMATS = {"csv": "a CSV file", "parquet": "a Parquet file"}


@dataclass
class TableConfig(DataConfig):
    path: str = MISSING  # the file; a relative path starts from the current directory
    target: str = MISSING  # the column to predict
    features: Optional[list[str]] = None  # null: every other column
    categorical: str = setting("onehot", choices=("onehot", "ordinal"))  # text columns
    missing: str = setting("error", choices=("error", "impute"))  # missing feature values
    split_column: Optional[str] = None  # a column of train / val / test that fixes the split

    def problems(self) -> list[str]:
        """What is wrong with the settings themselves, before the file is read."""
        found = []
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
    df, shown = read_table(cfg.path, fmt)
    columns = list(df.columns)

    for key, column in (("data.target", cfg.target), ("data.split_column", cfg.split_column)):
        if column is not None and column not in columns:
            raise UserError(_not_a_column(key, [column], shown, columns))
    if cfg.features is None:
        features = [c for c in columns if c not in (cfg.target, cfg.split_column)]
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

    y, task, classes = read_target(df[cfg.target], cfg.target, shown)
    fixed_split = (
        None if cfg.split_column is None else read_split(df[cfg.split_column], cfg.split_column)
    )
    table, numeric, categorical = feature_table(df, features)
    check_missing(table, cfg.missing, shown)
    check_finite(table, numeric, shown)

    vocab = {c: sorted(set(table[c].dropna())) for c in categorical}
    for column, values in vocab.items():
        if cfg.categorical == "onehot" and len(values) > 100:
            log.warning(
                "column '%s' has %d distinct values: one-hot encoding makes a feature of each. "
                "Leave it out with data.features, or use data.categorical=ordinal.",
                column,
                len(values),
            )
    width = len(numeric) + (
        sum(len(v) for v in vocab.values()) if cfg.categorical == "onehot" else len(categorical)
    )
    spec = DataSpec(
        name=cfg.name,
        task=task,
        kind="tabular",
        shape=(width,),
        num_classes=len(classes) if classes is not None else None,
        class_names=classes,
    )
    encode = TableEncoder(numeric, categorical, vocab, cfg.categorical, cfg.missing == "impute")
    return RawData(table, y, spec, fixed_split=fixed_split, encode=encode)


def read_table(path_text: str, fmt: str, key: str = "data.path"):
    """The file as a DataFrame with string column names, and its absolute path to show. `key`
    names the setting in messages (dlrun-predict reads its `input` here too)."""
    import pandas as pd

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
    try:
        df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise UserError(
            f"{key}: {shown} has no columns. Give {what} with a header row and rows of data."
        ) from None
    except (ValueError, OSError, pd.errors.ParserError) as ex:  # ArrowInvalid is a ValueError
        reason = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
        raise UserError(f"{key}: cannot read {shown} as {what}: {reason}") from None
    df.columns = [str(c) for c in df.columns]
    if len(df.columns) == 0:
        raise UserError(
            f"{key}: {shown} has no columns. Give {what} with a header row and rows of data."
        )
    if len(df) == 0:
        raise UserError(
            f"{key}: {shown} has no rows (columns {_listed(df.columns)}). A dataset needs "
            "at least one row of data."
        )
    return df, shown


def read_target(column, name: str, shown) -> tuple[np.ndarray, str, tuple[str, ...] | None]:
    """(y, task, class names): floats are regression; integers, booleans and text are classes."""
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
    if types.is_float_dtype(dtype):
        y = column.to_numpy(dtype=np.float32)
        if not np.isfinite(y).all():
            raise UserError(
                f"data.target: column '{name}' of {shown} has {int((~np.isfinite(y)).sum())} "
                "infinite values; a regression target must be finite."
            )
        return y, "regression", None
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
    values = column.to_numpy(dtype=object)
    distinct = list(pd.unique(values))
    try:
        classes = sorted(distinct)
    except TypeError:  # text mixed with numbers
        classes = sorted(distinct, key=str)
    if len(classes) < 2:
        raise UserError(
            f"data.target: column '{name}' of {shown} has a single value ({classes[0]!r}); "
            "classification needs at least two classes."
        )
    if types.is_integer_dtype(dtype) and len(classes) > 100:
        log.warning(
            "target '%s' holds integers and is read as %d classes; add data.task=regression "
            "to predict it as a number.",
            name,
            len(classes),
        )
    index = {value: i for i, value in enumerate(classes)}
    y = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    return y, "classification", tuple(str(c) for c in classes)


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
    import pandas as pd
    from pandas.api import types

    numeric, categorical, data = [], [], {}
    for name in features:
        column = df[name]
        if types.is_numeric_dtype(column.dtype) and not types.is_complex_dtype(column.dtype):
            numeric.append(name)
            data[name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            categorical.append(name)
            missing = column.isna().to_numpy()
            text = np.array([str(v) for v in column.to_numpy(dtype=object)], dtype=object)
            text[missing] = np.nan
            data[name] = text
    table = pd.DataFrame({name: data[name] for name in numeric + categorical}, index=df.index)
    return table, numeric, categorical


def check_missing(table, missing: str, shown) -> None:
    counts = {name: int(n) for name, n in table.isna().sum().items() if n}
    if counts and missing == "error":
        listed = ", ".join(f"{name} ({n})" for name, n in counts.items())
        raise UserError(
            f"data.missing is 'error', which allows no missing values, but {shown} has missing "
            f"values in {len(counts)} feature column{'s' if len(counts) > 1 else ''}: {listed}. "
            "Add data.missing=impute to fill them from the training rows (median for numbers, "
            "most frequent value for text), or fill them in the file."
        )


def check_finite(table, numeric: list[str], shown) -> None:
    infinite = [name for name in numeric if np.isinf(table[name].to_numpy()).any()]
    if infinite:
        raise UserError(
            f"data.path: the feature columns {', '.join(infinite)} of {shown} hold infinite "
            "values; features must be finite numbers (or missing, with data.missing=impute)."
        )


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

    def __call__(self, table, train_rows: np.ndarray) -> np.ndarray:
        train = table.iloc[train_rows]
        if self.impute:
            empty = [c for c in self.categorical if train[c].isna().all()]
            if empty:
                raise UserError(
                    f"data.missing: the columns {', '.join(empty)} have no values in the training "
                    "rows, so there is nothing to impute them from. Leave them out with "
                    "data.features, or fill them in."
                )
        self.transformer_ = self._transformer().fit(train)
        return self._encode(table)

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
        check_missing(table, "impute" if self.impute else "error", shown)
        check_finite(table, self.numeric, shown)
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
