"""Training batches for the torch loop, whatever the objective: dicts of device tensors (`x`,
and `y` when the data has targets), in a seeded shuffled order.

Data that fits stays on the training device for the whole run (images in their compact stored
form, prepared per batch there); each step takes its rows by slicing the epoch's shuffled index,
with no per-sample Python and nothing read back to the host, so the gather can also happen
inside a captured CUDA graph (`fetch`). Larger data streams from host memory through DataLoader
workers (dlrun.streaming) in exactly the same batches.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger("dlrun")


class TrainBatches:
    def __init__(self, splits, data, takes, device, tcfg, world: int, rank: int):
        import torch

        from dlrun.data.lazy import is_lazy
        from dlrun.devices import use_stream

        compact = data is not None and getattr(data, "stored", None) is not None
        # the training inputs as kept in host memory: compact images, or the prepared arrays;
        # or read from disk batch by batch (dlrun.data.lazy), which always streams
        self.host_x = data.stored["train"] if compact else splits["train"][0]
        self.host_y = np.asarray(splits["train"][1])
        self.on_bad_file = getattr(data, "on_bad_file", "error")
        self.skipped: set[str] = set()  # files already named in the log
        on_disk = is_lazy(self.host_x)
        if on_disk and tcfg.data_placement == "device":
            from dlrun.errors import ConfigError

            raise ConfigError(
                "trainer.data_placement: 'device' needs the data in memory, and it is read from "
                f"disk ({self.host_x.nbytes / 1e9:.2f} GB decoded). Use auto or stream, or "
                "data.load=memory."
            )
        self.streaming = on_disk or use_stream(tcfg.data_placement, device, self.host_x.nbytes)
        self.device, self.world, self.rank = device, world, rank
        self.stored = self.x = None  # compact images prepared per batch, or the inputs
        if compact:
            from dlrun.data.device import device_inputs

            self.stored = device_inputs(data, "train", device, takes, copy=not self.streaming)
        elif not self.streaming:
            self.x = torch.as_tensor(self.host_x, device=device)
        self.y = torch.as_tensor(self.host_y, device=device)
        # padded sequences: each sample's valid steps, which a sequence model reads beside x (a
        # model that flattens them reads the zero padding as it is)
        lengths = None if data is None or takes != "sequence" else getattr(data, "lengths", None)
        self.host_lengths = None if lengths is None else np.asarray(lengths["train"])
        self.lengths = (
            None if lengths is None else torch.as_tensor(self.host_lengths, device=device)
        )
        # data.sample_weight: each training row's weight, beside y (the objective multiplies
        # each sample's loss by it)
        weights = None if data is None else getattr(data, "weights", None)
        self.host_w = None if weights is None else np.asarray(weights["train"])
        self.w = None if weights is None else torch.as_tensor(self.host_w, device=device)

        self.n = n = len(self.host_y)
        self.batch = batch = min(tcfg.batch_size, n)
        steps = math.ceil(n / batch)
        if world > 1 and 0 < n % batch < world:
            steps -= 1  # a last batch smaller than the ranks would leave a rank with nothing
        self.steps = steps
        self.seen = min(steps * batch, n)  # samples per epoch
        # samples in each global batch (all full but perhaps the last), known before training
        self.sizes = [batch] * (steps - 1) + [self.seen - batch * (steps - 1)]
        self.loader = None
        if self.streaming:
            from dlrun.streaming import BatchLoader

            pin = device.type == "cuda"
            self.loader = BatchLoader(
                self.host_x,
                self.host_y,
                tcfg.workers,
                pin=pin,
                lengths=self.host_lengths,
                weights=self.host_w,
            )
            log.info(
                "training data (%.2f GB) streams from %s: %d DataLoader workers%s",
                self.host_x.nbytes / 1e9,
                "disk" if on_disk else "host memory",
                tcfg.workers,
                ", pinned memory" if pin else "",
            )

    def order(self, shuffle):
        """The epoch's shuffled sample order (on the device unless streaming)."""
        import torch

        perm = torch.randperm(self.n, generator=shuffle)
        return perm if self.streaming else perm.to(self.device)

    def fetch(self, idx) -> dict:
        """This rank's samples of the global batch `idx` (device indices), from device memory."""
        if self.world > 1:
            idx = idx[self.rank :: self.world]  # this rank's share of the global batch
        x = self.stored.take(idx, train=True) if self.stored is not None else self.x[idx]
        batch = {"x": x, "y": self.y[idx]}  # (B, *shape), (B,) or (B, T)
        if self.lengths is not None:
            batch["lengths"] = self.lengths[idx]  # (B,)
        if self.w is not None:
            batch["w"] = self.w[idx]  # (B,)
        return batch

    def epoch(self, perm):
        """(batch, global batch size) for each step of the epoch, in the order `perm`."""
        if self.loader is None:
            for step, size in enumerate(self.sizes):
                yield self.fetch(perm[step * self.batch : step * self.batch + size]), size
            return
        rows = [
            perm[s * self.batch : (s + 1) * self.batch][self.rank :: self.world]
            for s in range(self.steps)
        ]
        for parts, size in zip(self.loader.epoch(rows), self.sizes, strict=True):
            if "bad" in parts:
                parts = self.without_bad(parts)
            x, y = parts["x"].to(self.device, non_blocking=True), parts["y"]
            if self.stored is not None:
                x = self.stored.prepare(x, train=True)
            batch = {"x": x, "y": y.to(self.device, non_blocking=True)}
            for key in ("lengths", "w"):
                if key in parts:
                    batch[key] = parts[key].to(self.device, non_blocking=True)
            yield batch, size

    def without_bad(self, parts: dict) -> dict:
        """A streamed batch without the files that could not be read (data.on_bad_file=skip,
        each named once in the log), or the run stops naming them (error)."""
        import torch

        from dlrun.data.lazy import log_skipped, unreadable
        from dlrun.errors import UserError

        bad = parts.pop("bad")
        if self.on_bad_file != "skip":
            raise UserError(unreadable(bad, len(parts["y"]), " of a training batch"))
        new = [item for item in bad if item[1] not in self.skipped]
        if new:
            self.skipped.update(path for _, path, _ in new)
            log_skipped(new)
        keep = np.ones(len(parts["y"]), dtype=bool)
        keep[[i for i, _, _ in bad]] = False
        keep = torch.from_numpy(keep)
        return {k: v[keep] for k, v in parts.items()}
