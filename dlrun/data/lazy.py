"""Samples read from disk when a batch needs them, for data larger than memory.

An image folder whose decoded pixels would take more than `data.memory_gb` (or any size with
`data.load=stream`) is only indexed when it loads: `ImageFiles` holds the paths and decodes
rows on demand, and `Rows` is one split's view of it. Training batches are decoded in DataLoader
worker processes (dlrun.streaming), validation and test batches too (`LazyInputs`), and the
device turns each batch into the model's input exactly as it does for images kept in memory
(dlrun.data.device.DeviceInputs.prepare), so both paths give the same values.

A file that cannot be read is found when its batch is read: `read` returns it beside the
pixels, and the process that trains decides (data.on_bad_file): an error naming it, or the
sample left out of that batch and named once in the log.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dlrun.errors import UserError

READ_THREADS = 8  # threads that decode images in one process (at most one per core)
READ_CHUNK = 64  # images per thread task
# Decoded image sets up to this many GB are read into memory once (data.load=auto)
MEMORY_GB = 0.5
# Training images whose pixels give the normalization statistics of a streamed image set: all of
# them up to this count, else this many drawn with the split's seed
STATS_SAMPLE = 512
LOADS = ("auto", "memory", "stream")


class ImageFiles:
    """Image files decoded on demand to uint8 (N, C, size, size): RGB or grayscale, resized
    bilinearly as the in-memory loader does. Picklable, for DataLoader workers."""

    lazy = True
    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths, size: int, grayscale: bool):
        self.paths = np.asarray(paths, dtype=str)
        self.size, self.grayscale = size, grayscale

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), 1 if self.grayscale else 3, self.size, self.size)

    @property
    def nbytes(self) -> int:
        """What the decoded images would take in memory."""
        return int(np.prod(self.shape))

    def read(self, rows, threads: int = 1) -> tuple[np.ndarray, list]:
        """(pixels of `rows`, [(position in rows, path, why)] for each file that cannot be read,
        its pixels left at 0). `threads` decode in parallel (Pillow lets other threads run)."""
        from PIL import Image, UnidentifiedImageError

        from dlrun.errors import regular_file

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        x = np.zeros((len(rows), *self.shape[1:]), dtype=np.uint8)
        mode, size = ("L" if self.grayscale else "RGB"), self.size
        bad = []

        def read(part: range) -> int:
            for i in part:
                path = str(self.paths[rows[i]])
                try:
                    regular_file(path, "data.root", "an image file")  # a FIFO would block
                    with Image.open(path) as image:
                        pixels = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                except UserError as ex:  # not there any more, or a FIFO, socket or device
                    why = str(ex).split(f"{path} ", 1)[-1].split(". Give the path")[0]
                    bad.append((i, path, why))
                    continue
                except (UnidentifiedImageError, OSError, ValueError) as ex:
                    why = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
                    bad.append((i, path, why.replace(f" {path!r}", "")))  # named once
                    continue
                array = np.asarray(pixels, dtype=np.uint8)  # 8-bit: L or RGB
                x[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            return len(part)

        parts = [range(i, min(i + READ_CHUNK, len(rows))) for i in range(0, len(rows), READ_CHUNK)]
        if threads > 1 and len(parts) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(read, parts))
        else:
            for part in parts:
                read(part)
        bad.sort()
        return x, bad

    def __getitem__(self, rows) -> np.ndarray:
        x, bad = self.read(np.arange(len(self))[rows], threads=read_threads())
        if bad:
            raise UserError(unreadable(bad, len(x)))
        return x


class Rows:
    """Some rows of a lazy source (one split), itself a lazy source."""

    lazy = True

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.dtype, self.ndim = source.dtype, source.ndim

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.source.shape[1:])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self, rows, threads: int = 1) -> tuple[np.ndarray, list]:
        return self.source.read(self.rows[np.asarray(rows, dtype=np.int64)], threads)

    def __getitem__(self, rows) -> np.ndarray:
        return self.source[self.rows[rows]]


class MappedArray:
    """An array of a file, memory-mapped (np.memmap): rows are read from disk when a batch
    takes them. Pickled as its file and place in it, never as its values (DataLoader workers
    map the file again)."""

    lazy = True

    def __init__(self, array: np.memmap):
        self.array = array
        self.dtype, self.ndim, self.shape = array.dtype, array.ndim, array.shape

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self, rows, threads: int = 1) -> tuple[np.ndarray, list]:
        return np.ascontiguousarray(self.array[np.asarray(rows, dtype=np.int64)]), []

    def __getitem__(self, rows) -> np.ndarray:
        return np.ascontiguousarray(self.array[rows])

    def __getstate__(self) -> dict:
        a = self.array
        order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
        return {
            "file": a.filename,
            "offset": a.offset,
            "dtype": a.dtype.str,
            "shape": a.shape,
            "order": order,
        }

    def __setstate__(self, state: dict) -> None:
        mapped = np.memmap(
            state["file"],
            dtype=np.dtype(state["dtype"]),
            mode="r",
            offset=state["offset"],
            shape=state["shape"],
            order=state["order"],
        )
        self.__init__(mapped)


def is_lazy(x: Any) -> bool:
    return bool(getattr(x, "lazy", False))


def read_threads() -> int:
    return min(READ_THREADS, os.cpu_count() or 1)


def listed(bad: list, limit: int | None = 10) -> str:
    """Files that cannot be read, [(row, path, why)], a line each (the first `limit`)."""
    shown = "\n".join(f"  {path}: {why}" for _, path, why in bad[:limit])
    return shown + (f"\n  and {len(bad) - limit} more" if limit and len(bad) > limit else "")


def unreadable(bad: list, total: int, where: str = "", advice: str = "") -> str:
    """The message for files that cannot be read: every one (up to 10) with its path and why."""
    return (
        f"data.root: {len(bad)} of the {total} images{where} cannot be read:\n{listed(bad)}\n"
        + (advice or "Fix or remove them, or set data.on_bad_file=skip to train without them.")
    )


def log_skipped(bad: list, what: str = "training image(s)", limit: int | None = None) -> None:
    """data.on_bad_file=skip: the files left out, named in the log."""
    import logging

    logging.getLogger("dlrun").warning(
        "data.on_bad_file=skip: %d unreadable %s left out:\n%s", len(bad), what, listed(bad, limit)
    )


def statistics_rows(train: np.ndarray, seed: int) -> np.ndarray:
    """The training rows an image folder's statistics come from: all of them, or STATS_SAMPLE
    drawn with the split's seed (in memory and streamed alike, so both normalize the same)."""
    if len(train) <= STATS_SAMPLE:
        return train
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train, STATS_SAMPLE, replace=False))


def decide_load(asked: str, nbytes: int, limit_gb: float) -> bool:
    """Whether the data streams from disk (data.load): auto streams above data.memory_gb."""
    if asked != "auto":
        return asked == "stream"
    return nbytes > limit_gb * 1e9


class LazyInputs:
    """One split's model inputs on `device`, read from disk a batch at a time: `len(x)`,
    `x[a:b]` (read here), and `batches(size)` (read ahead by DataLoader workers) give the values
    the in-memory path gives (dlrun.data.device.DeviceInputs.prepare)."""

    def __init__(self, stored: Rows, prepare, device, workers: int, batch=1024, persistent=True):
        self.stored, self.prepare, self.device = stored, prepare, device
        self.workers, self.batch, self.persistent = workers, batch, persistent
        self.shape = (len(stored), *prepare.shape)
        self.ndim = len(self.shape)
        self.loader = None  # its workers start on the first pass and stay

    def __len__(self) -> int:
        return len(self.stored)

    def _ready(self, x):
        """A batch of stored samples (numpy or a CPU tensor) as the model's inputs."""
        import torch

        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        return self.prepare.prepare(x, train=False)

    def __getitem__(self, part: slice):
        rows = np.arange(len(self))[part]
        x, bad = self.stored.read(rows, threads=read_threads())
        self.refuse(bad, len(rows))
        self.check_finite(x, rows)
        return self._ready(x)

    def check_finite(self, x, rows) -> None:
        """A NaN or infinite value of a file's float samples is named as in memory (where
        every split is checked when it loads)."""
        from dlrun.data import _check_finite

        if np.dtype(x.dtype).kind == "f":
            x = np.asarray(x)
            _check_finite(x, self.stored.rows[rows], self.prepare.spec)

    def refuse(self, bad: list, total: int) -> None:
        """Validation and test are measured on every sample: an unreadable file there stops the
        run, whatever data.on_bad_file says (a skipped one would change what is measured)."""
        if bad:
            advice = (
                "Fix or remove them, then resume: validation and test are measured on every "
                "sample, so data.on_bad_file=skip leaves out training images only."
            )
            raise UserError(unreadable(bad, total, " of a validation or test batch", advice))

    def batches(self, size: int):
        """(slice, inputs) for consecutive batches of at most `size` samples (and of the
        training batch size, which fits in memory), in order."""
        from dlrun.streaming import BatchLoader

        n, size = len(self), min(size, self.batch)
        parts = [np.arange(s, min(s + size, n)) for s in range(0, n, size)]
        if self.loader is None:
            pin = self.device.type == "cuda"
            zeros = np.zeros(n, dtype=np.int64)
            self.loader = BatchLoader(
                self.stored, zeros, self.workers, pin=pin, persistent=self.persistent
            )
        for rows, got in zip(parts, self.loader.epoch(parts), strict=True):
            self.refuse(got.get("bad", []), len(rows))
            self.check_finite(got["x"].numpy(), rows)
            yield slice(int(rows[0]), int(rows[-1]) + 1), self._ready(got["x"])


def in_batches(x, size: int):
    """(slice, batch) over the samples of `x`, a device tensor or LazyInputs, in order."""
    if isinstance(x, LazyInputs):
        yield from x.batches(size)
        return
    for start in range(0, len(x), size):
        part = slice(start, start + size)
        yield part, x[part]


def on_device(
    x, data, split: str, device, takes: str | None, workers=0, batch=1024, persistent=True
):
    """A split's inputs `x` (as Prepared.splits holds them) on `device`: a tensor, or
    LazyInputs for samples read from disk, `batch` at a time (by workers that stay between
    passes when `persistent`: a split read every epoch)."""
    import torch

    if not is_lazy(x):
        return torch.as_tensor(x, device=device)
    from dlrun.data.device import device_inputs

    prepare = device_inputs(data, split, device, takes, copy=False)
    return LazyInputs(x, prepare, device, workers, batch, persistent)


def read_all(source, what: str) -> tuple[np.ndarray, list]:
    """Every sample of a lazy source decoded into memory, with a progress bar."""
    from dlrun.report import item_progress

    total = len(source)
    x = np.empty(source.shape, dtype=source.dtype)
    bad = []
    step = READ_CHUNK * read_threads()
    with item_progress(what, total) as advance:
        for start in range(0, total, step):
            rows = np.arange(start, min(start + step, total))
            x[rows], found = source.read(rows, threads=read_threads())
            bad += [(int(rows[i]), path, why) for i, path, why in found]
            advance(len(rows))
    return x, bad
