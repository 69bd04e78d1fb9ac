"""Arrays saved with numpy: `data=npz data.path=FILE.npz`.

The file holds `x` and `y`, and optionally `split` and `lengths`:

    x        (N, F) a table (read as N sequences of F steps with `lengths`, or with
             data.as_sequence=true); (N, T, D) sequences of T steps of D features; (N, C, H, W)
             images (uint8 pixels are read as 8-bit, floats as they are)
    y        (N,) targets (classes or values, decided as for a table's target column), or
             (N, K) for K regression targets
    split    (N,) strings 'train' / 'val' / 'test': a fixed split (as data.split_column)
    lengths  (N,) for sequences padded to T steps: each sample's valid steps, the first ones

It is read without pickle (`allow_pickle=False`): object arrays are refused, with a message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from dlrun.config import DataConfig, setting
from dlrun.data import DataSpec, RawData
from dlrun.data.lazy import LOADS, MEMORY_GB, MappedArray, decide_load
from dlrun.errors import UserError, regular_file
from dlrun.registry import register_data

log = logging.getLogger("dlrun")

KEYS = ("x", "y", "split", "lengths")


@dataclass
class NpzConfig(DataConfig):
    name: str = "npz"
    path: str = MISSING  # the .npz file; a relative path starts from the current directory
    # memory: read 'x' whole; stream: memory-map it and read each batch's rows from disk (a
    # file saved with np.savez; np.savez_compressed files are read whole); auto: stream when
    # 'x' takes more than memory_gb
    load: str = setting("auto", choices=LOADS)
    memory_gb: float = setting(MEMORY_GB, lo=0, lo_open=True)


@register_data("npz", schema=NpzConfig)
def load_npz(cfg: NpzConfig) -> RawData:
    path = Path(cfg.path).expanduser().absolute()
    regular_file(path, "data.path", "a .npz file of arrays (np.savez)")
    mapped = mapped_x(path, cfg)
    arrays = read_npz(path, skip=("x",) if mapped is not None else ())
    if mapped is not None:
        arrays["x"] = mapped
    x, y = arrays["x"], arrays["y"]
    n = len(x)
    for key, array in arrays.items():
        if len(array) != n:
            raise UserError(
                f"data.path: {path} has {n} samples in 'x' but {len(array)} in '{key}'; every "
                "array needs one row per sample."
            )
    kind, shape, pixel_max = read_kind(x, path, "lengths" in arrays)
    if kind == "sequence" and x.ndim == 2:
        x = x[:, :, None]  # (N, T) -> (N, T, 1)
    lengths = read_lengths(arrays.get("lengths"), kind, shape, path)
    if lengths is not None:
        _check_padding(x, lengths, path)
    fixed = None if "split" not in arrays else read_split_array(arrays["split"], path)
    y, task, classes, targets = read_targets(y, path, cfg.task)
    spec = DataSpec(
        name=cfg.name,
        task=task,
        kind=kind,
        shape=shape,
        num_classes=len(classes) if classes is not None else None,
        num_targets=targets,
        class_names=classes,
    )
    if mapped is not None:  # never padded: a file with lengths is read whole
        log.info(
            "data.load=%s: 'x' of %s (%.2f GB) is memory-mapped; batches read their rows from disk",
            cfg.load,
            path,
            x.nbytes / 1e9,
        )
        return RawData(MappedArray(x), y, spec, fixed_split=fixed, pixel_max=pixel_max)
    if pixel_max is None:
        x = x.astype(np.float32)
    return RawData(x, y, spec, fixed_split=fixed, pixel_max=pixel_max, lengths=lengths)


def mapped_x(path: Path, cfg: NpzConfig) -> np.memmap | None:
    """'x' of the file memory-mapped, when data.load asks for it (auto: when it takes more
    than data.memory_gb); None when it is read whole. Padded sequences (with 'lengths') and
    compressed files are read whole (said in the log when streaming was asked for)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            member = archive.getinfo("x.npy") if "x.npy" in names else None
            if member is None or not decide_load(cfg.load, member.file_size, cfg.memory_gb):
                return None
            why = None
            if "lengths.npy" in names:
                why = "it holds padded sequences ('lengths')"
            elif member.compress_type != zipfile.ZIP_STORED:
                why = "it is compressed (np.savez_compressed; save it with np.savez to stream it)"
            if why is not None:
                log.warning("data.load=%s: %s is read whole: %s", cfg.load, path, why)
                return None
            return map_member(path, member)
    except (zipfile.BadZipFile, OSError, ValueError):
        return None  # read_npz says what is wrong with it


def map_member(path: Path, member) -> np.memmap | None:
    """An uncompressed .npy member of a zip file, memory-mapped where its values lie."""
    import struct

    with open(path, "rb") as f:
        f.seek(member.header_offset)
        local = f.read(30)  # the zip local file header: its name and extra field follow
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(member.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if dtype.hasobject or not shape:
        return None  # read_npz refuses objects, with its message
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def read_npz(
    path: Path, needed: tuple[str, ...] = ("x", "y"), key: str = "data.path", skip: tuple = ()
) -> dict:
    """The arrays of a .npz file that dlrun reads (x, y, split, lengths), without pickle;
    those named in `skip` are not read (a memory-mapped 'x')."""
    try:
        with np.load(path, allow_pickle=False) as found:
            names = list(found.files)
            missing = [k for k in needed if k not in names]
            if missing:
                raise UserError(
                    f"{key}: {path} has no array '{missing[0]}'; it needs 'x' (the samples)"
                    + (" and 'y' (their targets)" if "y" in needed else "")
                    + f", and may have 'lengths'. It holds: {', '.join(names) or 'nothing'}."
                )
            return {k: found[k] for k in KEYS if k in names and k not in skip}
    except UserError:
        raise
    except ValueError as ex:
        if "allow_pickle" in str(ex):
            raise UserError(
                f"{key}: {path} holds Python objects (an object array: ragged sequences or "
                "mixed types, saved with pickle), which dlrun does not load. Pad sequences to one "
                "length and give 'lengths'; save numbers (x.astype(np.float32)) and split names "
                "as strings (np.array(split, dtype=str))."
            ) from None
        raise UserError(f"{key}: cannot read {path} as a .npz file: {ex}") from None
    except (OSError, EOFError) as ex:
        raise UserError(f"{key}: cannot read {path} as a .npz file: {ex}") from None


def read_kind(x: np.ndarray, path: Path, padded: bool):
    """(kind, one sample's shape, pixel_max) from x's shape and dtype; (N, T) with lengths is
    sequences of one feature."""
    if x.dtype.kind not in "biuf":
        raise UserError(f"data.path: 'x' of {path} holds {x.dtype} values; it must hold numbers.")
    if x.ndim == 2 and padded:
        return "sequence", (x.shape[1], 1), None
    if x.ndim == 2:
        return "tabular", (x.shape[1],), None
    if x.ndim == 3:
        return "sequence", (x.shape[1], x.shape[2]), None
    if x.ndim == 4:
        return "image", tuple(x.shape[1:]), 255 if x.dtype == np.uint8 else None
    raise UserError(
        f"data.path: 'x' of {path} has shape {x.shape}; it must be (N, F) for a table, (N, T) "
        "or (N, T, D) for sequences, or (N, C, H, W) for images."
    )


def read_lengths(lengths, kind: str, shape: tuple, path: Path):
    if lengths is None:
        return None
    steps = shape[0]
    if kind != "sequence":
        raise UserError(
            f"data.path: {path} has 'lengths', which only sequences have ('x' of shape (N, T) or "
            f"(N, T, D)); its 'x' is {kind} data."
        )
    if lengths.dtype.kind not in "iu" or lengths.ndim != 1:
        raise UserError(f"data.path: 'lengths' of {path} must be whole numbers, one per sample.")
    bad = (lengths < 1) | (lengths > steps)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"data.path: 'lengths' of {path} must be in [1, {steps}] (the padded length); sample "
            f"{first} has {int(lengths[first])}."
        )
    return lengths.astype(np.int64)


def _check_padding(x: np.ndarray, lengths: np.ndarray, path: Path) -> None:
    """Padded steps beyond a sample's length are ignored: say so once when they hold values."""
    steps = np.arange(x.shape[1])[None, :]  # (1, T)
    beyond = steps >= lengths[:, None]  # (N, T)
    if np.abs(x[beyond]).sum() > 0:
        log.info(
            "data.path: %s has values beyond some samples' lengths; they are padding and are "
            "ignored (set to zero)",
            path,
        )
        x[beyond] = 0


def read_split_array(split: np.ndarray, path: Path) -> np.ndarray:
    import pandas as pd

    from dlrun.data.files import read_split

    if split.dtype.kind not in "US":
        raise UserError(
            f"data.path: 'split' of {path} must hold the strings 'train', 'val' and 'test'; it "
            f"holds {split.dtype} values."
        )
    return read_split(pd.Series(split.astype(str)), "split")


def read_targets(y: np.ndarray, path: Path, task: str | None):
    """(y, task, class names, number of targets): one target decided as a table's target
    column is (dlrun.data.files.read_target), several (N, K) are regression."""
    import pandas as pd

    from dlrun.data.files import read_target

    if y.dtype.kind not in "biufUS":
        raise UserError(
            f"data.path: 'y' of {path} holds {y.dtype} values; it must hold numbers or names."
        )
    if y.ndim == 2:
        if task == "classification":
            raise UserError(
                f"data.task: 'classification' needs one target per sample; 'y' of {path} has "
                f"{y.shape[1]} per sample (read as regression)."
            )
        if y.dtype.kind not in "biuf":
            raise UserError(f"data.path: 'y' of {path} with several targets must hold numbers.")
        return y.astype(np.float32), "regression", None, y.shape[1]
    if y.ndim != 1:
        raise UserError(f"data.path: 'y' of {path} has shape {y.shape}; it must be (N,) or (N, K).")
    values, task, classes = read_target(pd.Series(y), "y", path, task)
    return values, task, classes, 1
