"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), as 1x8x8 images.

Their pixels are whole numbers 0..16: kept as uint8 with pixel_max=16 (the device stores them in
a quarter of float32's memory), unless data.image_size resizes them into floats in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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


def write_image_folder(root: Path) -> None:
    """The 1,797 digits as PNG files in data=image_folder's layout (root/<digit>/<index>.png,
    8x8 8-bit grayscale, pixels 0..16 scaled to 0..255): an image folder that needs no
    download. `python -m dlrun.data.digits FOLDER` writes it."""
    from PIL import Image
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8)
    for i, (image, label) in enumerate(zip(pixels, bunch.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")  # 2-D uint8: mode L


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m dlrun.data.digits FOLDER  (writes the digits as PNG files)")
    write_image_folder(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}/<digit>/<index>.png (1,797 images of 10 digits)")
