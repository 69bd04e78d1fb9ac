"""Long-format time series from a table: `data=csv data.sequence.id=COL data.sequence.order=COL`.

Each id is one sample; its rows, ordered by the order column (a time or a number), are its
steps, and the feature columns (every column but the target, the id, the order and the split
column, or `data.features`) are each step's features, encoded as a table's are (numbers as they
are, categories one-hot or ordinal, missing values refused or imputed from the training rows).
The target (and a split column) must be the same on every row of an id. Sequences of different
lengths are padded with zeros to the longest (or `data.sequence.max_len`, keeping the most
recent steps by default) and carry their lengths.
"""

from __future__ import annotations

import numpy as np

from dlrun.errors import UserError


class SequenceEncoder:
    """`RawData.encode` for long-format rows: the table's encoder, fitted on the training ids'
    rows only, then each id's rows placed as the steps of one padded sample (N, T, D)."""

    kind = "sequence"

    def __init__(self, rows, id_column: str, order: str, steps: int, keep: str):
        self.rows = rows  # a TableEncoder for the feature columns
        self.id_column, self.order, self.steps, self.keep = id_column, order, steps, keep
        self.sample_ = self.position_ = self.lengths_ = self.ids_ = None

    @property
    def feature_names(self):
        return self.rows.feature_names

    @property
    def transformer_(self):  # what dlrun.data.preprocess saves (the rows' fitted encoder)
        return self.rows.transformer_

    def index(self, frame, shown) -> None:
        """Each row's sample and step, from the id and order columns (sorted by id, then in
        order; the most recent steps kept when a sequence is longer than `steps`)."""
        sample, position, lengths, ids = steps_of(
            frame, self.id_column, self.order, self.steps, self.keep, shown
        )
        self.sample_, self.position_, self.lengths_, self.ids_ = sample, position, lengths, ids

    def refitted(self, fresh: SequenceEncoder) -> SequenceEncoder:
        """This fitted encoder with `fresh`'s index of the rows (the same file read again)."""
        self.sample_, self.position_ = fresh.sample_, fresh.position_
        self.lengths_, self.ids_ = fresh.lengths_, fresh.ids_
        return self

    def apply(self, table) -> np.ndarray:
        return self.place(self.rows.apply(table))

    def __call__(self, table, train_samples: np.ndarray) -> np.ndarray:
        kept = self.position_ >= 0
        train_rows = np.flatnonzero(kept & np.isin(self.sample_, train_samples))
        return self.place(self.rows(table, train_rows))

    def place(self, encoded: np.ndarray) -> np.ndarray:
        """Encoded rows (rows, D) as padded samples (N, T, D)."""
        x = np.zeros((len(self.lengths_), self.steps, encoded.shape[1]), dtype=np.float32)
        kept = self.position_ >= 0
        x[self.sample_[kept], self.position_[kept]] = encoded[kept]
        return x

    def transform(self, frame, shown: str):
        """New long-format rows: (padded samples, their lengths, their ids)."""
        for column in (self.id_column, self.order):
            if column not in frame.columns:
                raise UserError(f"input: {shown} lacks the column '{column}' (data.sequence).")
        self.index(frame, shown)
        return self.place(self.rows.transform(frame, shown)), self.lengths_, self.ids_

    def describe(self) -> dict:
        return {
            "kind": "sequence",
            "id": self.id_column,
            "order": self.order,
            "steps": self.steps,
            "keep": self.keep,
            "rows": self.rows.describe(),
        }

    @classmethod
    def restore(cls, described: dict, transformer) -> SequenceEncoder:
        from dlrun.data.files import TableEncoder

        rows = TableEncoder.restore(described["rows"], transformer)
        return cls(rows, described["id"], described["order"], described["steps"], described["keep"])


def steps_of(frame, id_column: str, order: str, steps: int | None, keep: str, shown):
    """(sample of each row, its step or -1 when cut, each sample's length, the sample ids)."""
    import pandas as pd

    when = frame[order]
    if not pd.api.types.is_numeric_dtype(when) and not pd.api.types.is_datetime64_any_dtype(when):
        try:
            when = pd.to_datetime(when)
        except (ValueError, TypeError):
            raise UserError(
                f"data.sequence.order: column '{order}' of {shown} must hold numbers or times "
                f"(it orders each id's rows); it holds {when.dtype} values such as {when.iloc[0]!r}."
            ) from None
    if when.isna().any():
        raise UserError(f"data.sequence.order: column '{order}' of {shown} has missing values.")
    if frame[id_column].isna().any():
        raise UserError(f"data.sequence.id: column '{id_column}' of {shown} has missing values.")
    ids, sample = np.unique(frame[id_column].astype(str).to_numpy(), return_inverse=True)
    rank = pd.DataFrame({"s": sample, "t": np.asarray(when)}).groupby("s")["t"].rank(method="first")
    position = rank.to_numpy().astype(np.int64) - 1  # 0.. within each sample, in time order
    counts = np.bincount(sample, minlength=len(ids))
    limit = int(counts.max()) if steps is None else steps
    if keep == "last":  # the most recent steps: shift so that the last one is at length-1
        position = position - np.maximum(counts[sample] - limit, 0)
    position[position >= limit] = -1  # cut (keep == first)
    return sample, position, np.minimum(counts, limit), ids


def per_sample(column, sample: np.ndarray, ids, name: str, shown):
    """One value per sample from a column that must be the same on every row of a sample."""
    import pandas as pd

    frame = pd.DataFrame({"s": sample, "v": column.to_numpy(dtype=object)})
    varying = frame.groupby("s")["v"].nunique(dropna=False)
    bad = varying[varying > 1].index.to_numpy()
    if len(bad):
        shown_ids = ", ".join(repr(str(ids[i])) for i in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UserError(
            f"{name}: column '{column.name}' of {shown} must be the same on every row of a "
            f"sequence (data.sequence.id), but it varies within {len(bad)} ids: {shown_ids}{more}."
        )
    first = frame.groupby("s")["v"].first()
    return pd.Series(first.to_numpy(), name=column.name).astype(column.dtype)
