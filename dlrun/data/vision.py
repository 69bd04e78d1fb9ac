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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import MISSING

from dlrun.config import setting
from dlrun.data import DataSpec, RawData
from dlrun.data.device import ImageDataConfig
from dlrun.data.lazy import (
    LOADS,
    MEMORY_GB,
    ImageFiles,
    decide_load,
    log_skipped,
    read_all,
    unreadable,
)
from dlrun.errors import UserError
from dlrun.registry import register_data

log = logging.getLogger("dlrun")

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
    from dlrun.report import busy

    with busy(f"reading the {source.title} files in {root}"):
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
    # memory: decode every image once, into memory; stream: read each batch from disk (decoded
    # by the DataLoader workers, trainer.workers); auto: stream when the decoded images would
    # take more than memory_gb
    load: str = setting("auto", choices=LOADS)
    memory_gb: float = setting(MEMORY_GB, lo=0, lo_open=True)


def without_bad_files(x, y, bad: list, how: str, root: Path, classes: list):
    """The images that could be read, when data.on_bad_file=skip (each unreadable one named in
    the log); with error, one message naming them all."""
    if how == "error":
        raise UserError(unreadable(bad, len(y), f" in {root}"))
    log_skipped(bad, "images", limit=10)
    keep = np.ones(len(y), dtype=bool)
    keep[[row for row, _, _ in bad]] = False
    x, y = x[keep], y[keep]
    empty = [name for c, name in enumerate(classes) if not (y == c).any()]
    if empty:
        raise UserError(
            f"data.root: the class folders {', '.join(empty)} in {root} hold no readable images."
        )
    return x, y


def index_folder(root: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, paths, labels) of root/<class>/.../<image>, in torchvision ImageFolder's
    order (sorted classes, then sorted walks), without opening a file."""
    from dlrun.report import item_progress

    layout = "one sub-folder per class, holding its images (root/<class>/<image>)"
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"data.root: {root} has no class folders. Give a folder with {layout}.")
    paths, labels = [], []
    with item_progress(f"indexing the class folders of {root}", len(classes)) as advance:
        for label, name in enumerate(classes):
            for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
                for file in sorted(files):
                    if file.lower().endswith(IMG_EXTENSIONS):
                        paths.append(os.path.join(folder, file))
                        labels.append(label)
            advance()
    y = np.array(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    empty = [name for name, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise UserError(
            f"data.root: the class folders {', '.join(empty)} in {root} hold no images. "
            f"Images may end in {', '.join(IMG_EXTENSIONS)}."
        )
    if len(classes) < 2:
        raise UserError(
            f"data.root: {root} has one class folder ({classes[0]}); classification "
            "needs at least two."
        )
    return classes, paths, y


# the file names torchvision's ImageFolder reads (without importing torchvision: 2 s)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@register_data("image_folder", schema=ImageFolderConfig)
def load_image_folder(cfg: ImageFolderConfig) -> RawData:
    """The images indexed, then decoded into memory as uint8 once (resized), or left on disk
    to be read a batch at a time (data.load); the classes are the sorted class folder names."""
    root = Path(cfg.root).expanduser().absolute()
    layout = "one sub-folder per class, holding its images (root/<class>/<image>)"
    if not root.is_dir():
        state = "is a file" if root.exists() else "does not exist"
        raise UserError(f"data.root: {root} {state}. Give a folder with {layout}.")
    classes, paths, y = index_folder(root)
    files = ImageFiles(paths, cfg.image_size, cfg.grayscale)
    spec = DataSpec(
        name="image_folder",
        task="classification",
        kind="image",
        shape=tuple(files.shape[1:]),
        num_classes=len(classes),
        class_names=tuple(classes),
    )
    if decide_load(cfg.load, files.nbytes, cfg.memory_gb):
        log.info(
            "data.load=%s: %s images (%.2f GB decoded) are read from disk a batch at a time",
            cfg.load,
            f"{len(files):,}",
            files.nbytes / 1e9,
        )
        return RawData(files, y, spec, pixel_max=255, sampled_statistics=True)
    x, bad = read_all(files, f"reading images from {root}")
    if bad:
        x, y = without_bad_files(x, y, bad, cfg.on_bad_file, root, classes)
    return RawData(x, y, spec, pixel_max=255, sampled_statistics=True)
