"""A Parquet table larger than memory, read a row group at a time (`data=parquet data.load`).

The file is never read whole. Reading it in parts (`ParquetTable.parts`, at most `PART_ROWS`
rows at a time), dlrun:

1. checks it as a table read whole is checked (dlrun.data.files: the target and split columns,
   missing and infinite values, text columns that mostly hold numbers) and collects each text
   column's values, which fix the encoded layout;
2. after the seeded split, fits the encoder on the training rows (`TableEncoder.fit_parts`:
   the same fitted encoder as from the rows read whole);
3. encodes every row into a float32 array in a file of the run folder (`scratch`), a part at
   a time, and memory-maps it: from there it trains as a large `data=npz` array does
   (dlrun.data.lazy.MappedArray), its statistics read a block at a time.

The encoded file is the run's scratch space: it is removed when the run ends, and made again
(the same values, from the saved encoder) when the run is resumed or evaluated.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dlrun.data import RawData
from dlrun.data.lazy import MappedArray, decide_load

log = logging.getLogger("dlrun")

PART_ROWS = 65_536  # rows read at a time: a row group, or this much of one
SCRATCH_NAME = "scratch"  # the run folder's folder for files that live as long as the run
_scratch: list[Path] = []  # where this process writes them now (innermost last)
_serial = itertools.count()


class ParquetTable:
    """The feature columns of a Parquet file (or folder of files), read in parts. `lazy`: the
    data path reads it this way, then encodes it into a memory-mapped array (`encode_table`)."""

    lazy = True

    def __init__(self, path: Path, shown: Path, numeric: list[str], categorical: list[str], n):
        self.path, self.shown, self.n = path, shown, n
        self.numeric, self.categorical = numeric, categorical

    def __len__(self) -> int:
        return self.n

    def dataset(self):
        return parquet_dataset(self.path)

    def parts(self, columns: list[str] | None = None, what: str = ""):
        """(first row, the rows' feature columns as dlrun.data.files.feature_frame gives them)
        for consecutive parts of the file, in order; `columns`: only those (default: all)."""
        from dlrun.data.files import feature_frame, reading
        from dlrun.report import item_progress

        wanted = set(self.numeric + self.categorical if columns is None else columns)
        numeric = [c for c in self.numeric if c in wanted]
        categorical = [c for c in self.categorical if c in wanted]
        start = 0
        with item_progress(what or "reading the table", self.n) as advance:
            with reading(self.shown, "parquet"):
                for batch in record_batches(self.dataset(), numeric + categorical):
                    frame = feature_frame(batch.to_pandas(), numeric, categorical)
                    yield start, frame
                    start += batch.num_rows
                    advance(batch.num_rows)
        give_back_memory()

    def column(self, name: str) -> np.ndarray:
        """One numeric column whole (float64, NaN for missing): N values fit in memory."""
        from dlrun.data.files import reading

        with reading(self.shown, "parquet"):
            values = self.dataset().to_table(columns=[name]).column(name)
        return values.to_pandas().to_numpy(dtype=np.float64, na_value=np.nan)


def streamed_table(cfg) -> RawData | None:
    """The table of `cfg` (data=parquet) to read in parts, when data.load says so (auto: when
    its values take more than data.memory_gb uncompressed); None to read it whole."""
    from dlrun.data.files import checked_file, reading

    path, shown = checked_file(cfg.path, "parquet")
    with reading(shown, "parquet"):
        dataset = parquet_dataset(path)
        nbytes = uncompressed_bytes(dataset)
    if not decide_load(cfg.load, nbytes, cfg.memory_gb):
        return None
    why = None
    if cfg.text is not None:
        why = "it reads a text column (data.text)"
    elif cfg.sequence.id is not None:
        why = "its rows are steps of sequences (data.sequence.id)"
    if why is not None:
        log.warning("data.load=%s: %s is read whole: %s", cfg.load, shown, why)
        return None
    return checked_parts(cfg, path, shown, dataset, nbytes)


def checked_parts(cfg, path: Path, shown: Path, dataset, nbytes: int) -> RawData:
    """The table's checks, target and layout, from its parts (module docstring, step 1)."""
    import pandas as pd

    from dlrun.data.files import (
        TableEncoder,
        check_finite,
        check_missing,
        check_named,
        check_size,
        feature_columns,
        not_numbers,
        read_groups,
        read_split,
        read_target,
        read_weights,
        reading,
        stray_message,
        table_spec,
        warn_categorical,
    )

    with reading(shown, "parquet"):
        columns = table_columns(dataset.schema)
        n = dataset.count_rows()
        check_size(columns, n, shown, "parquet")
        check_named(cfg, columns, shown)
        features = feature_columns(cfg, columns, shown)
        named = [cfg.target, cfg.split_column, cfg.cv.group, cfg.sample_weight]
        named = [c for c in named if c is not None]
        frame = dataset.to_table(columns=named).to_pandas()
        numeric, categorical = column_kinds(dataset, features)
    log.info(
        "data.load=%s: %s (%.2f GB of values) is read %s rows at a time, and its encoded rows "
        "kept in a memory-mapped file of the run folder while it runs",
        cfg.load,
        shown,
        nbytes / 1e9,
        f"{PART_ROWS:,}",
    )
    y, task, classes = read_target(frame[cfg.target], cfg.target, shown, cfg.task)
    fixed = (
        None if cfg.split_column is None else read_split(frame[cfg.split_column], cfg.split_column)
    )
    groups = None if cfg.cv.group is None else read_groups(frame[cfg.cv.group], cfg.cv.group)
    weights = None
    if cfg.sample_weight is not None:
        weights = read_weights(frame[cfg.sample_weight], cfg.sample_weight)
    del frame

    source = ParquetTable(path, shown, numeric, categorical, n)
    missing = pd.Series(0, index=numeric + categorical, dtype=np.int64)
    infinite = dict.fromkeys(numeric, False)
    extreme = dict.fromkeys(numeric, np.nan)  # the finite value of largest magnitude, first met
    values = {c: set() for c in categorical}
    present = dict.fromkeys(categorical, 0)  # values, and those that are not numbers
    others = dict.fromkeys(categorical, 0)
    distinct: dict[str, dict] = {c: {} for c in categorical}  # those, in the order met
    for _, part in source.parts(what=f"checking {n:,} rows"):
        missing += part.isna().sum()
        for c in numeric:
            x = part[c].to_numpy()
            infinite[c] |= bool(np.isinf(x).any())
            finite = x[np.isfinite(x)]
            if finite.size:
                top = finite[np.argmax(np.abs(finite))]
                if np.isnan(extreme[c]) or abs(top) > abs(extreme[c]):
                    extreme[c] = top
        for c in categorical:
            values[c].update(part[c].dropna())
            count, stray = not_numbers(part[c])
            present[c] += count
            others[c] += len(stray)
            distinct[c].update(dict.fromkeys(pd.unique(stray.to_numpy())))
    check_missing(None, cfg.missing, shown, counts=missing.items())
    summary = pd.DataFrame(  # each numeric column's extreme and, if it has one, an infinity
        {c: [extreme[c], np.inf if infinite[c] else np.nan] for c in numeric}, dtype=np.float64
    )
    check_finite(summary, numeric, shown, cfg.missing == "impute")
    vocab = {c: sorted(values[c]) for c in categorical}
    stray = {c: stray_message(present[c], others[c], list(distinct[c])) for c in categorical}
    warn_categorical(cfg, vocab, stray)
    spec = table_spec(cfg, task, classes, numeric, vocab)
    encode = TableEncoder(numeric, categorical, vocab, cfg.categorical, cfg.missing == "impute")
    return RawData(
        source,
        y,
        spec,
        fixed_split=fixed,
        encode=encode,
        feature_names=encode.feature_names,
        groups=groups,
        weights=weights,
    )


def parquet_dataset(path: Path):
    """A Parquet file, or a folder of them, as pyarrow opens it (its metadata only)."""
    import pyarrow.dataset

    return pyarrow.dataset.dataset(path, format="parquet")


def record_batches(dataset, columns: list[str]):
    """The columns' record batches, file by file in the dataset's order, a row group (or
    PART_ROWS rows of one) at a time. Nothing is read ahead (pyarrow's pre_buffer kept the
    whole file's columns: 1 GB for a 9M-row file), and the memory each batch took is given
    back (pyarrow's pool keeps it otherwise)."""
    import pyarrow
    import pyarrow.parquet

    pool = pyarrow.default_memory_pool()
    for file in dataset.files:
        reader = pyarrow.parquet.ParquetFile(file, pre_buffer=False)
        try:
            for batch in reader.iter_batches(PART_ROWS, columns=columns, use_threads=False):
                if batch.num_rows:
                    yield batch
                del batch
                pool.release_unused()
        finally:
            reader.close()


def table_columns(schema) -> list[str]:
    """The columns of a Parquet schema, as pandas reads them (not a saved pandas index)."""
    index = (schema.pandas_metadata or {}).get("index_columns", [])
    kept = {name for name in index if isinstance(name, str)}
    return [str(name) for name in schema.names if name not in kept]


def column_kinds(dataset, features: list[str]) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns, as the whole file read by pandas has them: by
    the dtypes of its first rows, except that booleans with a missing value anywhere are text
    (pandas reads such a column as objects)."""
    import pyarrow

    from dlrun.data.files import feature_table

    batches = record_batches(dataset, features)  # (dataset.head() reads far ahead: 0.8 GB)
    head = next(batches).slice(0, 1).to_pandas()
    batches.close()
    _, numeric, categorical = feature_table(head, features)
    for name in list(numeric):
        field = dataset.schema.field(name)
        if pyarrow.types.is_boolean(field.type) and head[name].dtype == np.dtype(bool):
            if dataset.to_table(columns=[name]).column(name).null_count:
                numeric.remove(name)
                categorical.append(name)
    order = {name: i for i, name in enumerate(features)}
    categorical.sort(key=order.__getitem__)
    return numeric, categorical


def give_back_memory() -> None:
    """Memory freed after a pass over the file returned to the system: pyarrow's pool and the C
    allocator keep freed pages otherwise, and the process would look (and, to other programs,
    be) as large as the largest pass made it."""
    import ctypes

    import pyarrow

    pyarrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc's malloc_trim, where there is one
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def uncompressed_bytes(dataset) -> int:
    """What the values of a Parquet file (or folder) take uncompressed, from its metadata."""
    total = 0
    for fragment in dataset.get_fragments():
        meta = fragment.metadata
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


def encode_table(raw: RawData, train: np.ndarray, fitted=None) -> RawData:
    """`raw` with its table (a ParquetTable) encoded into a memory-mapped float32 array in the
    scratch folder, by the encoder fitted on the training rows (or the saved one, `fitted`)."""
    source = raw.x
    encoder = raw.encode
    if fitted is not None and fitted.encoder is not None:
        encoder = fitted.encoder.refitted(encoder)
    else:
        encoder = encoder.fit_parts(source, train)
    width = raw.spec.shape[0]
    path = scratch_file(f"table-{os.getpid()}-{next(_serial)}.npy")
    with path.open("wb") as out:  # written, not mapped: its pages are not this process's memory
        header = {"descr": "<f4", "fortran_order": False, "shape": (len(source), width)}
        np.lib.format.write_array_header_1_0(out, header)
        for _, part in source.parts(what=f"encoding {len(source):,} rows"):
            out.write(np.ascontiguousarray(encoder.apply(part), dtype="<f4").tobytes())
    mapped = np.load(path, mmap_mode="r")
    return RawData(
        MappedArray(mapped),
        raw.y,
        raw.spec,
        fixed_split=raw.fixed_split,
        encode=encoder,
        feature_names=raw.feature_names,
        groups=raw.groups,
        weights=raw.weights,
    )


@contextlib.contextmanager
def scratch(folder: Path):
    """Files made while the block runs (an encoded table) go in `folder`/scratch, removed at
    its end; files there that an earlier, killed process left are removed first."""
    place = Path(folder) / SCRATCH_NAME
    remove_stale(place)
    _scratch.append(place)
    try:
        yield place
    finally:
        _scratch.remove(place)
        if place.is_dir():
            for path in place.glob(f"table-{os.getpid()}-*.npy"):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                place.rmdir()  # unless another process's files are still there


def scratch_file(name: str) -> Path:
    """A path for a scratch file: in the run's scratch folder (`scratch`), or outside a run
    (a script calling build_data) in a temporary folder removed when the process ends."""
    if not _scratch:
        import atexit

        place = Path(tempfile.mkdtemp(prefix="dlrun-scratch-"))
        atexit.register(shutil.rmtree, place, ignore_errors=True)
        _scratch.insert(0, place)
    place = _scratch[-1]
    place.mkdir(parents=True, exist_ok=True)
    return place / name


def remove_stale(place: Path) -> None:
    """Scratch files of processes that are no longer running (killed before they could)."""
    if not place.is_dir():
        return
    for path in place.glob("table-*-*.npy"):
        pid = path.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # another user's process
            pass
