"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), as 1x8x8 images.

Their pixels are whole numbers 0..16: kept as uint8 with pixel_max=16 (the device stores them in
a quarter of float32's memory), unless data.image_size resizes them into floats in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from dlrun.config import setting
from dlrun.data import DataSpec, RawData, resize_images
from dlrun.data.device import ImageDataConfig
from dlrun.registry import register_data


@dataclass
class DigitsConfig(ImageDataConfig):
    name: str = "digits"
    image_size: Optional[int] = setting(None, lo=8)  # null keeps 8x8; 32 is LeNet-5's size


@register_data("digits", schema=DigitsConfig)
def load_digits(cfg: DigitsConfig):
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8), pixels 0..16
    pixel_max = 16
    if cfg.image_size is not None and cfg.image_size != 8:
        x = resize_images((x / 16.0).astype(np.float32), cfg.image_size)  # floats in [0, 1]
        pixel_max = None
    y = bunch.target.astype(np.int64)
    spec = DataSpec(
        name="digits",
        task="classification",
        kind="image",
        shape=tuple(x.shape[1:]),
        num_classes=10,
        class_names=tuple(str(c) for c in bunch.target_names),
    )
    return RawData(x, y, spec, pixel_max=pixel_max)
