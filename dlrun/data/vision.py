"""Image datasets read by torchvision: `mnist`, `fashion_mnist` and `cifar10` from the files
torchvision reads (downloaded only with `data.download=true`), and `image_folder`, a folder of
class folders of images (root/<class>/<image>).

Pixels stay uint8 (N, C, H, W), marked with pixel_max=255: `build_data` gives the float32 arrays
(pixels / 255, normalized by data.normalize) and keeps the uint8 ones for the training device
(data.storage, data.augment: dlrun/data/device.py). The official test set of MNIST,
Fashion-MNIST and CIFAR-10 is the test split; validation is taken from their training set by
data.val_split.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import MISSING

from dlrun.config import setting
from dlrun.data import DataSpec, RawData
from dlrun.data.device import ImageDataConfig
from dlrun.errors import UserError, regular_file
from dlrun.registry import register_data

log = logging.getLogger("dlrun")

READ_THREADS = 8  # threads that decode an image folder (at most one per core)
READ_CHUNK = 64  # images per task

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@dataclass
class TorchvisionConfig(ImageDataConfig):
    root: str = MISSING  # the folder torchvision reads; a relative path starts from the cwd
    download: bool = False  # fetch the files into root when they are not there
    limit: Optional[int] = setting(None, lo=1)  # keep the first N training and N test images


@dataclass
class MNISTConfig(TorchvisionConfig):
    name: str = "mnist"
    root: str = "data/mnist"


@dataclass
class FashionMNISTConfig(TorchvisionConfig):
    name: str = "fashion_mnist"
    root: str = "data/fashion_mnist"


@dataclass
class CIFAR10Config(TorchvisionConfig):
    name: str = "cifar10"
    root: str = "data/cifar10"


@dataclass(frozen=True)
class Source:
    """A torchvision dataset class and where its files lie under data.root."""

    cls: str  # the torchvision.datasets class
    title: str  # the dataset's own name, for messages

    def expected(self, root: Path) -> list[Path]:
        if self.cls == "CIFAR10":
            return [root / "cifar-10-batches-py" / f for f in CIFAR_FILES]
        return [root / self.cls / "raw" / f for f in MNIST_FILES]

    def processed(self, root: Path) -> list[Path]:
        """The legacy files older torchvision versions wrote, which it still reads."""
        if self.cls == "CIFAR10":
            return []
        return [root / self.cls / "processed" / f for f in ("training.pt", "test.pt")]


SOURCES = {
    "mnist": Source("MNIST", "MNIST"),
    "fashion_mnist": Source("FashionMNIST", "Fashion-MNIST"),
    "cifar10": Source("CIFAR10", "CIFAR-10"),
}


def load_torchvision(cfg: TorchvisionConfig) -> RawData:
    """The training set (split into train and val later) and the official test set."""
    source = SOURCES[cfg.name]
    root = Path(cfg.root).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise UserError(
            f"data.root: {root} is a file; give the folder that holds the {source.title} files."
        )
    train = _open(source, root, cfg.download, train=True)
    test = _open(source, root, cfg.download, train=False)

    images, labels = [], []
    for ds in (train, test):
        # uint8: (N, H, W) for MNIST, (N, H, W, C) for CIFAR
        images.append(np.asarray(ds.data)[: cfg.limit])
        labels.append(np.asarray(ds.targets, dtype=np.int64)[: cfg.limit])
    counts = [len(y) for y in labels]
    pixels = np.concatenate(images)
    x = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
    x = np.ascontiguousarray(x, dtype=np.uint8)
    y = np.concatenate(labels)
    fixed_split = np.array(["train"] * counts[0] + ["test"] * counts[1])
    classes = tuple(str(c) for c in train.classes)
    spec = DataSpec(
        name=cfg.name,
        task="classification",
        kind="image",
        shape=tuple(x.shape[1:]),
        num_classes=len(classes),
        class_names=classes,
    )
    return RawData(x, y, spec, fixed_split=fixed_split, pixel_max=255)


def _open(source: Source, root: Path, download: bool, train: bool):
    """torchvision's dataset, with its failures told as dlrun messages."""
    import pickle

    import torchvision.datasets

    cls = getattr(torchvision.datasets, source.cls)
    try:
        return cls(str(root), train=train, download=download)
    except RuntimeError as ex:
        raise UserError(_not_found(source, root, download, ex)) from None
    except OSError as ex:  # a failed download (URLError) or an unreadable file
        if download:
            raise UserError(_not_found(source, root, download, ex)) from None
        raise UserError(
            f"data.root: cannot read the {source.title} files in {root}: {ex}"
        ) from None
    except (
        AssertionError,
        ValueError,
        TypeError,
        KeyError,
        EOFError,
        pickle.UnpicklingError,
    ) as ex:
        raise UserError(
            f"data.root: the {source.title} files in {root} are not in the format torchvision "
            f"reads ({type(ex).__name__}: {str(ex) or 'bad header'}). Replace them with the "
            "official files, or delete them and add data.download=true."
        ) from None


def _not_found(source: Source, root: Path, download: bool, ex: Exception) -> str:
    expected = source.expected(root)
    missing = [p for p in expected if not p.is_file()]
    folder = expected[0].parent
    if download:
        reason = " ".join(str(ex).split()) or type(ex).__name__
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        return (
            f"data.download: could not download {source.title} into {root} ({reason}). Put the "
            f"files in {folder} yourself: {', '.join(p.name for p in expected)}."
        )
    if not missing and source.cls != "CIFAR10":  # the files are there but do not parse
        reason = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
        return (
            f"data.root: the {source.title} files in {folder} are not in the format torchvision "
            f"reads ({reason}). Replace them with the official files, or delete them and add "
            "data.download=true."
        )
    if not missing:  # every file is there: torchvision rejected them (CIFAR-10's checksums)
        return (
            f"data.root: the {source.title} files in {folder} do not match the official "
            "checksums torchvision verifies; they are damaged or not the official ones. "
            "Replace them with those of the official archive, or delete them and add "
            "data.download=true."
        )
    looked = f"{folder}{os.sep}{{{', '.join(p.name for p in expected)}}}" + "".join(
        f" or {p}" for p in source.processed(root)[:1]
    )
    found = (
        f" Missing: {', '.join(p.name for p in missing)}." if len(missing) < len(expected) else ""
    )
    kind = "raw or processed " if source.processed(root) else ""
    packed = [p.name for p in folder.glob("*.gz")] + [p.name for p in root.glob("*.tar.gz")]
    hint = f" Found {', '.join(sorted(packed))}: unpack them there." if packed else ""
    return (
        f"data.root: no {source.title} files in {root} (looked for the {kind}files torchvision "
        f"reads: {looked}).{found}{hint} Put them there or add data.download=true."
    )


for _name, _schema in (
    ("mnist", MNISTConfig),
    ("fashion_mnist", FashionMNISTConfig),
    ("cifar10", CIFAR10Config),
):
    register_data(_name, schema=_schema)(load_torchvision)


# ---------------------------------------------------------------------------------------------
# image_folder


@dataclass
class ImageFolderConfig(ImageDataConfig):
    name: str = "image_folder"
    root: str = MISSING  # root/<class>/<image>: one folder per class
    image_size: int = setting(32, lo=1)  # every image is resized to image_size x image_size
    grayscale: bool = False  # 1 channel instead of 3 (RGB)
    # an image that cannot be read: error (the default: every such file listed, nothing runs)
    # or skip (left out, every such file listed once in the log)
    on_bad_file: str = setting("error", choices=("error", "skip"))


def without_bad_files(x, y, bad: list, how: str, root: Path, classes: list):
    """The images that could be read, when data.on_bad_file=skip (each unreadable one named in
    the log); with error, one message naming them all."""
    shown = "\n".join(f"  {path}: {why}" for _, path, why in bad[:10])
    more = f"\n  and {len(bad) - 10} more" if len(bad) > 10 else ""
    if how == "error":
        raise UserError(
            f"data.root: {len(bad)} of the {len(y)} images in {root} cannot be read:\n"
            f"{shown}{more}\nFix or remove them, or set data.on_bad_file=skip to train without them."
        )
    log.warning(
        "data.on_bad_file=skip: %d unreadable images left out:\n%s%s", len(bad), shown, more
    )
    keep = np.ones(len(y), dtype=bool)
    keep[[row for row, _, _ in bad]] = False
    x, y = x[keep], y[keep]
    empty = [name for c, name in enumerate(classes) if not (y == c).any()]
    if empty:
        raise UserError(
            f"data.root: the class folders {', '.join(empty)} in {root} hold no readable images."
        )
    return x, y


@register_data("image_folder", schema=ImageFolderConfig)
def load_image_folder(cfg: ImageFolderConfig) -> RawData:
    """Every image, resized and in memory as uint8; the classes are the sorted class folder
    names."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(cfg.root).expanduser().absolute()
    layout = "one sub-folder per class, holding its images (root/<class>/<image>)"
    if not root.is_dir():
        state = "is a file" if root.exists() else "does not exist"
        raise UserError(f"data.root: {root} {state}. Give a folder with {layout}.")

    class Folders(ImageFolder):
        def find_classes(self, directory):
            classes = sorted(
                e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
            )
            if not classes:
                raise UserError(
                    f"data.root: {directory} has no class folders. Give a folder with {layout}."
                )
            return classes, {name: i for i, name in enumerate(classes)}

    folders = Folders(str(root), allow_empty=True)
    counts = np.bincount([t for _, t in folders.samples], minlength=len(folders.classes))
    empty = [name for name, n in zip(folders.classes, counts, strict=True) if n == 0]
    if empty:
        raise UserError(
            f"data.root: the class folders {', '.join(empty)} in {root} hold no images. "
            f"Images may end in {', '.join(IMG_EXTENSIONS)}."
        )
    if len(folders.classes) < 2:
        raise UserError(
            f"data.root: {root} has one class folder ({folders.classes[0]}); classification "
            "needs at least two."
        )

    from dlrun.report import item_progress

    size, mode = cfg.image_size, ("L" if cfg.grayscale else "RGB")
    x = np.empty((len(folders.samples), 1 if cfg.grayscale else 3, size, size), dtype=np.uint8)
    bad = []  # (row, path, why): every unreadable file, found in one pass

    def read(rows: range) -> int:
        """Decode and resize the images of `rows` into x (Pillow lets other threads run while
        it decodes and resizes, so a few threads read in parallel)."""
        for i in rows:
            path = folders.samples[i][0]
            regular_file(path, "data.root", "an image file")  # a FIFO would block Image.open
            try:
                with Image.open(path) as image:
                    pixels = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            except (UnidentifiedImageError, OSError, ValueError) as ex:
                bad.append((i, path, str(ex).splitlines()[0] if str(ex) else type(ex).__name__))
                continue
            array = np.asarray(pixels, dtype=np.uint8)  # 8-bit: L or RGB
            x[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return len(rows)

    total = len(folders.samples)
    chunks = [range(i, min(i + READ_CHUNK, total)) for i in range(0, total, READ_CHUNK)]
    with (
        item_progress(f"reading images from {root}", total) as advance,
        ThreadPoolExecutor(max_workers=min(READ_THREADS, os.cpu_count() or 1)) as pool,
    ):
        for done in pool.map(read, chunks):  # in order: the first error is the first file's
            advance(done)
    bad.sort()
    y = np.array([t for _, t in folders.samples], dtype=np.int64)
    if bad:
        x, y = without_bad_files(x, y, bad, cfg.on_bad_file, root, folders.classes)
    classes = tuple(folders.classes)
    spec = DataSpec(
        name="image_folder",
        task="classification",
        kind="image",
        shape=tuple(x.shape[1:]),
        num_classes=len(classes),
        class_names=classes,
    )
    return RawData(x, y, spec, pixel_max=255)
