"""Training batches streamed from host memory or disk, for data larger than the device holds.

A torch DataLoader whose every item is a whole batch: the training loop hands it the epoch's
batches of row indices (the same shuffled batches the on-device path would take, so both train
alike), worker processes gather those rows from the host arrays or decode them from their files
(dlrun.data.lazy), and pinned memory lets each batch's copy to the GPU overlap the previous step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class _Rows:
    """A map-style dataset whose item is a batch: rows (a 1-D index tensor) -> {x, y} (and
    `lengths` for padded sequences). Samples read from disk (dlrun.data.lazy) are decoded here,
    in the worker, and the files that could not be read come back as `bad`."""

    def __init__(self, x, y: np.ndarray, lengths=None, weights=None):
        self.x, self.y, self.lengths, self.weights = x, y, lengths, weights

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, rows) -> dict:
        import torch

        rows = np.asarray(rows)
        batch = {"y": torch.from_numpy(self.y[rows])}
        if hasattr(self.x, "read"):
            x, bad = self.x.read(rows)
            if bad:
                batch["bad"] = bad  # (position in rows, path, why)
        else:
            x = self.x[rows]
        batch["x"] = torch.from_numpy(x)
        if self.lengths is not None:
            batch["lengths"] = torch.from_numpy(self.lengths[rows])
        if self.weights is not None:
            batch["w"] = torch.from_numpy(self.weights[rows])
        return batch


class _EpochBatches:
    """The sampler: yields the current epoch's batches; `batches` is replaced every epoch."""

    def __init__(self):
        self.batches: list = []

    def __iter__(self) -> Iterator:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchLoader:
    """`epoch(batches)` yields a dict of CPU tensors (pinned on CUDA) for each batch of rows:
    x, y, lengths for padded sequences, and `bad` for files that could not be read."""

    def __init__(
        self, x, y: np.ndarray, workers: int, pin: bool, lengths=None, persistent=True, weights=None
    ):
        import torch
        from torch.utils.data import DataLoader

        self.sampler = _EpochBatches()
        self.loader = DataLoader(
            _Rows(x, y, lengths, weights),
            sampler=self.sampler,
            batch_size=None,  # each item already is a batch
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=persistent and workers > 0,  # started once, not every epoch
            prefetch_factor=4 if workers > 0 else None,
            # the workers' seeds come from here, not from torch's global generator: streaming
            # leaves the draws of augmentation and dropout as they are on the device
            generator=torch.Generator().manual_seed(0),
        )

    def epoch(self, batches: list) -> Iterator:
        """The batches of rows `batches`, read ahead by the workers. A worker that dies (killed
        for memory, a crash in a decoder) ends the run with one message, not a traceback."""
        from dlrun.errors import UserError

        self.sampler.batches = batches
        try:
            yield from self.loader
        except RuntimeError as ex:
            if "DataLoader worker" not in str(ex):
                raise
            first = str(ex).strip().splitlines()[0]
            raise UserError(
                f"trainer.workers: a process that reads the data stopped ({first}). If memory "
                "ran out, lower trainer.workers or trainer.batch_size; the run resumes from its "
                "last checkpoint with trainer.resume."
            ) from None
