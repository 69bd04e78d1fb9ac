"""Image data kept on the training device as compactly as its pixels allow, prepared per batch.

Copying a whole dataset to the device once and slicing batches from it is the fast path for
data that fits (DESIGN.md, Scale). Kept as normalized float32 that costs 4 bytes a pixel; 8-bit
pixels need 1. So images stay on the device in their stored dtype (`data.storage`: uint8 for
8-bit pixels by default) and `DeviceInputs.take` turns one batch into the model's float32 input
there: random flips and crops for training batches (`data.augment`), the scale to [0, 1], the
training split's per-channel normalization, the resize a model is built for (LeNet-5's 32x32)
and the reshape to what the model takes. `take` does no host synchronisation and keeps every
shape static, so it can run inside a captured CUDA graph.

The numpy float32 arrays of `DataModule` (x_train, x_val, x_test) stay as they were, for tree
models, evaluation and new samples (`DataModule.transform`); `take(idx, train=False)` gives the
same values (bit for bit on the CPU, where the same float32 operations run in the same order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dlrun.config import DataConfig, setting
from dlrun.errors import UserError

if TYPE_CHECKING:
    import torch

    from dlrun.data import DataModule, DataSpec

STORAGES = ("auto", "uint8", "float16", "float32")
# float16 is accepted for float pixels only when it moves none by more than this, in training
# standard deviations (the units the model sees after normalization)
FLOAT16_TOLERANCE = 1e-3


@dataclass
class AugmentConfig:
    """Random changes to each training image, drawn anew every batch on the device (val and
    test images are never changed)."""

    hflip: bool = False  # mirror left-right with probability 0.5
    crop_padding: int = setting(0, lo=0)  # shift by up to N pixels: a crop of the zero-padded image


@dataclass
class ImageDataConfig(DataConfig):
    """The settings every image dataset shares: how its pixels are stored on the device and how
    training images are augmented."""

    # auto: uint8 where the pixels are 8-bit, else float32; float16 halves float pixels when
    # they survive the round trip (FLOAT16_TOLERANCE)
    storage: str = setting("auto", choices=STORAGES)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def storage_dtype(asked: str, pixel_max: int | None, name: str) -> str:
    """The dtype images are stored in on the device, for `data.storage=asked`."""
    if asked == "auto":
        return "uint8" if pixel_max is not None else "float32"
    if asked == "uint8" and pixel_max is None:
        raise UserError(
            f"data.storage: uint8 keeps 8-bit pixels, and {name} loads float pixels. Use auto, "
            "float16 or float32."
        )
    return asked


def stored_splits(
    x: np.ndarray,
    rows: tuple[np.ndarray, ...],
    dtype: str,
    pixel_max: int | None,
    std: np.ndarray | None,
    name: str,
) -> list[np.ndarray]:
    """Each split's images in `dtype`, before any scaling or normalization: whole-number pixels
    (pixel_max) stay whole numbers; float pixels are stored as they are."""
    parts = [np.ascontiguousarray(x[r], dtype=dtype) for r in rows]
    if dtype == "float16" and pixel_max is None:  # whole numbers up to 2048 are exact in float16
        scale = 1.0 if std is None else std
        worst = 0.0
        for part, r in zip(parts, rows, strict=True):
            moved = np.abs(part.astype(np.float32) - x[r]) / scale  # inf where float16 overflows
            worst = max(worst, float(moved.max(initial=0.0)))
        if not worst <= FLOAT16_TOLERANCE:
            units = " training standard deviations" if std is not None else ""
            raise UserError(
                f"data.storage: float16 would change {name}'s pixels by up to {worst:.2g}{units} "
                f"(at most {FLOAT16_TOLERANCE:g} is accepted). Use float32 or auto."
            )
    return parts


class DeviceInputs:
    """One split's samples on the device in their stored dtype, and the steps that turn a batch
    of them into the model's float32 input.

    Build it with `device_inputs(data, split, device)`; take batches with `take(idx, train)`.
    """

    def __init__(
        self,
        x: torch.Tensor,
        spec: DataSpec,
        takes: str,
        *,
        divisor: float = 1.0,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        resize_to: int | None = None,
        hflip: bool = False,
        crop_padding: int = 0,
    ):
        self.x = x  # (N, *stored sample shape): uint8, float16 or float32
        self.spec = spec  # the data's spec after any resize (its shape is what `take` makes)
        self.takes = takes  # the model's input kind: image, sequence or flat
        self.divisor = divisor  # stored value / divisor = pixel in [0, 1] (255 for 8-bit)
        self.mean = mean  # (1, C, 1, 1) float32 on x's device: the training split's statistics
        self.std = std
        self.resize_to = resize_to
        self.hflip = hflip
        self.crop_padding = crop_padding

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def nbytes(self) -> int:
        """Device memory the stored samples take."""
        return self.x.numel() * self.x.element_size()

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape as `take` returns it (as the model takes it)."""
        from dlrun.data import adapted_shape

        return adapted_shape(self.spec, self.takes)

    def take(self, idx: torch.Tensor, train: bool) -> torch.Tensor:
        """The samples at `idx` (a long tensor on the device) as the model's float32 input,
        (B, *self.shape); augmented when `train` and augmentation is on.

        No step reads a value back to the host or depends on one, and every shape follows from
        len(idx) alone, so the whole of it can be captured in a CUDA graph.
        """
        return self.prepare(self.x.index_select(0, idx), train)

    def prepare(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """A batch of stored samples (B, *stored shape), already on the device, as the model's
        input: what `take` does after its gather (streamed batches come this way)."""
        import torch.nn.functional as F

        if self.spec.kind != "image":  # tables and sequences in memory are stored normalized;
            if self.mean is not None:  # those read from disk are normalized here
                x = (x.float() - self.mean) / self.std
            return x.reshape((x.shape[0], *self.shape))
        if train and (self.hflip or self.crop_padding):
            x = self._augment(x)  # on the stored pixels, so padding is black (0), as stored
        x = x.float()
        if self.divisor != 1:
            x = x / self.divisor  # a division, as the loaders' x / 255: the same float32 values
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.resize_to is not None:  # the settings of dlrun.data.resize_images
            size = (self.resize_to, self.resize_to)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.takes == "sequence":  # each image row is a time step, as dlrun.data.adapt
            x = x.transpose(1, 2)  # (B, C, H, W) -> (B, H, C, W)
        return x.reshape((x.shape[0], *self.shape))

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """A random horizontal flip and a random shift per sample, as one gather along each axis.

        Output pixel (i, j) reads source pixel (i + dy, j' + dx), where j' mirrors j for flipped
        samples and dy, dx are uniform in [-p, p] (a crop at offset dy + p, dx + p of the image
        zero-padded by p per side); pixels read from outside the image are 0. The offsets come
        from torch.rand on the device, never through Python numbers.
        """
        import torch

        b, c, h, w = x.shape
        p = self.crop_padding
        u = torch.rand(b, 3, device=x.device)  # (B, 3): flip, dy, dx draws in [0, 1)
        rows = torch.arange(h, device=x.device).expand(b, h)  # (B, H)
        cols = torch.arange(w, device=x.device).expand(b, w)  # (B, W)
        if self.hflip:
            cols = torch.where(u[:, :1] < 0.5, (w - 1) - cols, cols)
        if not p:  # a flip alone moves columns only
            return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))
        # floor(u * (2p + 1)) is uniform in [0, 2p]; the clamp guards u * (2p + 1) rounding up
        offset = (u[:, 1:] * (2 * p + 1)).long().clamp_(max=2 * p) - p  # (B, 2) in [-p, p]
        rows = rows + offset[:, :1]
        cols = cols + offset[:, 1:]
        rows_in, cols_in = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)  # (B, H), (B, W)
        inside = rows_in[:, None, :, None] & cols_in[:, None, None, :]  # (B, 1, H, W)
        rows = rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w)
        cols = cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w)
        x = x.gather(2, rows).gather(3, cols)  # (B, C, H, W)
        return x.masked_fill(~inside, 0)  # the padding: black, in every channel


def device_inputs(
    data: DataModule, split: str, device: Any, takes: str | None = None, copy: bool = True
) -> DeviceInputs:
    """The split `split` ('train', 'val' or 'test') of `data` on `device`, as a DeviceInputs.

    `takes` is the model's input kind (registry entry's `takes`); None leaves the data's own
    kind. Images are copied in their stored dtype (`data.stored`); other data as the normalized
    float32 arrays the DataModule holds. `copy=False` copies no sample (for batches streamed
    from host memory, which go through `prepare`).
    """
    import torch

    takes = takes or data.spec.kind
    if data.stored is None:
        x = torch.as_tensor(data.split(split)[0], device=device)
        return DeviceInputs(x, data.spec, takes)
    stored = data.stored[split]
    x = torch.as_tensor(stored if copy else stored[:0], device=device)
    mean = std = None
    if data.norm is not None:
        mean, std = (torch.as_tensor(a, dtype=torch.float32, device=device) for a in data.norm)
    augment = data.augment
    return DeviceInputs(
        x,
        data.spec,
        takes,
        divisor=float(data.pixel_max or 1),
        mean=mean,
        std=std,
        resize_to=data.resize_to,
        hflip=bool(augment and augment.hflip),
        crop_padding=int(augment.crop_padding) if augment else 0,
    )
