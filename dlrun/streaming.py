"""Training batches streamed from host memory, for data larger than the device holds.

A torch DataLoader whose every item is a whole batch: the training loop hands it the epoch's
batches of row indices (the same shuffled batches the on-device path would take, so both train
alike), worker processes gather those rows from the host arrays, and pinned memory lets each
batch's copy to the GPU overlap the previous step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class _Rows:
    """A map-style dataset whose item is a batch: rows (a 1-D index tensor) -> (x, y), or
    (x, y, lengths) for padded sequences."""

    def __init__(self, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None):
        self.x, self.y, self.lengths = x, y, lengths

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, rows):
        import torch

        rows = np.asarray(rows)
        parts = (torch.from_numpy(self.x[rows]), torch.from_numpy(self.y[rows]))
        if self.lengths is not None:
            parts += (torch.from_numpy(self.lengths[rows]),)
        return parts


class _EpochBatches:
    """The sampler: yields the current epoch's batches; `batches` is replaced every epoch."""

    def __init__(self):
        self.batches: list = []

    def __iter__(self) -> Iterator:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchLoader:
    """`epoch(batches)` yields (x, y) CPU tensors (pinned on CUDA) for each batch of rows."""

    def __init__(self, x: np.ndarray, y: np.ndarray, workers: int, pin: bool, lengths=None):
        from torch.utils.data import DataLoader

        self.sampler = _EpochBatches()
        self.loader = DataLoader(
            _Rows(x, y, lengths),
            sampler=self.sampler,
            batch_size=None,  # each item already is a batch
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,  # workers start once, not every epoch
            prefetch_factor=4 if workers > 0 else None,
        )

    def epoch(self, batches: list) -> Iterator:
        self.sampler.batches = batches
        return iter(self.loader)
