"""What a run fitted on its training split to prepare samples, saved with the run.

One object (`Preprocessing`) owns it: training builds it from the DataModule and prepares every
sample through it, and dlrun-predict and dlrun-export load it from the run folder, so the two
can never drift and a trained run needs no training data to predict. It is written to
`preprocessing/` in the run folder in formats that run no code when read:

    preprocessing.json   the data's kind, sample shape, task and class names, the feature
                         columns in order with their categories and imputation values, pixel
                         scale and resize, and fingerprints of the files the data came from
    arrays.npz           the training split's normalization (mean, std), read without pickle
    encoder.skops        a table's fitted scikit-learn encoder (skops, an explicit type list)
    tokenizer.json       a text column's trained tokenizer (its library's own JSON)

The fingerprints let dlrun-eval refuse data that changed since training: a file's content hash
(data.path) or a folder's listing of names and sizes (data.root).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.errors import UserError

FOLDER = "preprocessing"
VERSION = 1
# What a table encoder's skops file may hold besides scikit-learn's own types.
TRUSTED_TYPES = ["numpy.dtype"]


@dataclass
class Preprocessing:
    spec: Any  # dlrun.data.DataSpec: kind, shape (after a resize), task, classes
    native_shape: tuple[int, ...]  # one sample as the dataset loads it (before a resize)
    norm: tuple[np.ndarray, np.ndarray] | None = None  # training mean and std, (1, ...) each
    pixel_max: int | None = None  # whole-number pixels 0..pixel_max (uint8 input is scaled)
    resize_to: int | None = None  # images resized to this after normalization
    encoder: Any = None  # a fitted dlrun.data.files.TableEncoder, for tables
    sources: dict[str, str] = field(default_factory=dict)  # config key -> data fingerprint
    stored = None  # no samples here (the DataModule's own attribute)

    def transform(self, x: Any, shown: str = "the input", lengths=None) -> np.ndarray:
        """New samples, as loaded, prepared exactly as the training samples were. Images may
        come as the loader's uint8 pixels or as floats in [0, 1]; a table as its columns;
        padded sequences with their `lengths` (padding stays zero)."""
        return self.prepare(x, shown, lengths)[0]

    def prepare(self, x: Any, shown: str = "the input", lengths=None):
        """(prepared samples, their lengths, their ids): what `transform` gives, with the lengths
        and ids that long-format rows (grouped into sequences here) bring; else as given."""
        from dlrun.data import _check_finite, pad_zero, pixels_to_float, resize_images

        ids = None
        if self.encoder is not None:
            x = self.encoder.transform(x, shown)
            if isinstance(x, tuple):  # long-format rows, grouped by id into padded sequences
                x, lengths, ids = x
        x = np.asarray(x)
        if self.spec.vocab_size is not None:  # token ids: no scale, no normalization
            return x, lengths, ids
        if self.pixel_max is not None and x.dtype == np.uint8:
            x = pixels_to_float(x, self.pixel_max)
        x = np.asarray(x, dtype=np.float32)
        names = getattr(self.encoder, "feature_names", None)
        _check_finite(x, np.arange(len(x)), self.spec, names, where=f"input: {shown}")
        if self.norm is not None:
            x = ((x - self.norm[0]) / self.norm[1]).astype(np.float32)
            if lengths is not None:
                x = pad_zero(x, np.asarray(lengths))
        if self.resize_to is not None:
            x = resize_images(x, self.resize_to)
        return x, lengths, ids

    def save(self, folder: Path) -> None:
        from dlrun.checkpoints import atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "version": VERSION,
            "spec": {k: _plain(v) for k, v in dataclasses.asdict(self.spec).items()},
            "native_shape": list(self.native_shape),
            "pixel_max": self.pixel_max,
            "resize_to": self.resize_to,
            "normalize": self.norm is not None,
            "sources": self.sources,
            "table": None if self.encoder is None else self.encoder.describe(),
        }
        atomic_write(
            folder / "preprocessing.json",
            lambda f: f.write(json.dumps(record, indent=2) + "\n"),
            mode="w",
        )
        if self.norm is not None:
            arrays = {"mean": self.norm[0], "std": self.norm[1]}
            atomic_write(folder / "arrays.npz", lambda f: np.savez(f, **arrays))
        if hasattr(self.encoder, "save_files"):  # a text column's tokenizer: its own JSON
            self.encoder.save_files(folder)
        elif self.encoder is not None:
            import skops.io

            blob = skops.io.dumps(self.encoder.transformer_)
            atomic_write(folder / "encoder.skops", lambda f: f.write(blob))

    @classmethod
    def load(cls, folder: Path) -> Preprocessing:
        """The saved preprocessing; refused with a clear message when a file is missing, damaged
        or holds anything but plain data (no pickle is ever read)."""
        from dlrun.data import DataSpec

        folder = Path(folder)
        path = folder / "preprocessing.json"
        if not path.is_file():
            raise UserError(
                f"{path} does not exist: this run was trained by a dlrun that did not save its "
                "preprocessing; predicting needs the training data there (dlrun-eval reads it)."
            )
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            spec = record["spec"]
            spec = DataSpec(
                **{
                    **spec,
                    "shape": tuple(spec["shape"]),
                    "class_names": _tuple(spec["class_names"]),
                }
            )
            native = tuple(record["native_shape"])
        except (ValueError, KeyError, TypeError) as ex:
            raise UserError(f"{path} cannot be read as dlrun's preprocessing: {ex}") from None
        norm = _arrays(folder / "arrays.npz") if record.get("normalize") else None
        encoder = None
        if record.get("table") is not None:
            from dlrun.data.files import TableEncoder
            from dlrun.data.sequences import SequenceEncoder

            table = record["table"]
            if table.get("kind") == "text":
                from dlrun.data.text import TextEncoder

                encoder = TextEncoder.restore(table, folder)
            else:
                kind = SequenceEncoder if table.get("kind") == "sequence" else TableEncoder
                encoder = kind.restore(table, _skops(folder / "encoder.skops"))
        return cls(
            spec,
            native,
            norm,
            record.get("pixel_max"),
            record.get("resize_to"),
            encoder,
            record.get("sources", {}),
        )


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _tuple(value):
    return None if value is None else tuple(value)


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["mean"], arrays["std"]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; the run's normalization is missing.") from None
    except (ValueError, OSError, KeyError) as ex:  # a pickle in disguise fails here, unread
        raise UserError(
            f"{path} cannot be read as plain arrays ({str(ex).splitlines()[0]}); it was refused "
            "and nothing in it was run."
        ) from None


def _skops(path: Path):
    import skops.io

    if not path.is_file():
        raise UserError(f"{path} does not exist; the run's table encoder is missing.")
    try:
        return skops.io.load(path, trusted=TRUSTED_TYPES)
    except skops.io.exceptions.UntrustedTypesFoundException as ex:
        raise UserError(
            f"{path} holds types dlrun does not trust; it was not loaded ({ex})."
        ) from None
    except Exception as ex:  # a damaged or foreign file fails in one of skops' readers
        raise UserError(f"{path} cannot be read (truncated or corrupted?): {ex}") from None


WHOLE_HASH_BYTES = 2**30  # files up to 1 GB are hashed whole; larger ones by sampled blocks


def fingerprints(cfg) -> dict[str, str]:
    """What the data came from, to tell later whether it changed: the content hash of the file
    `data.path` names, or the listing (relative names and sizes) of the folder `data.root`
    names. Bundled and generated data have none."""
    found = {}
    path = getattr(cfg, "path", None)
    if path:
        path = Path(path).expanduser()
        if path.stat().st_size <= WHOLE_HASH_BYTES:
            found["data.path"] = "sha256:" + file_hash(path)
        else:  # reading a file larger than memory whole would delay the first step by minutes
            found["data.path"] = "sampled-sha256:" + sampled_hash(path)
    root = getattr(cfg, "root", None)
    if root and Path(root).expanduser().is_dir():
        found["data.root"] = "listing-sha256:" + listing_hash(Path(root).expanduser())
    return found


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sampled_hash(path: Path, blocks: int = 256, block: int = 1 << 16) -> str:
    """The hash of a large file's size and of `blocks` blocks spread evenly through it: a
    change of length or of any sampled block is seen without reading the whole file."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\n".encode())
    with path.open("rb") as f:
        for k in range(blocks):
            f.seek(k * max(0, size - block) // max(1, blocks - 1))
            digest.update(f.read(block))
    return digest.hexdigest()


def listing_hash(root: Path) -> str:
    """The hash of every file's path (relative to root) and size, in sorted order."""
    found = []

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_dir():
                    walk(entry.path, name + os.sep)
                elif entry.is_file():
                    found.append((name, entry.stat().st_size))

    walk(str(root), "")
    digest = hashlib.sha256()
    for name, size in sorted(found, key=lambda f: f[0].split(os.sep)):  # as pathlib sorts
        digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()
