"""Datasets read from files: csv / parquet tables, MNIST / Fashion-MNIST / CIFAR-10 through
torchvision, and image_folder. Every test writes small files in the real formats into tmp_path
and loads them through the real code; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import cli, make_cfg, train
from dlrun.data import build_data
from dlrun.errors import ConfigError, UserError
from dlrun.registry import get_data

CIFAR_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def data_conf(*overrides: str):
    """The typed data config `dlrun <overrides>` would use."""
    return OmegaConf.to_object(make_cfg(*overrides)).data


def load(*overrides: str):
    """The dataset's RawData (before splitting)."""
    conf = data_conf(*overrides)
    return get_data(conf.name).load(conf)


def module(*overrides: str):
    """The split, encoded (and unless data.normalize=false, normalized) DataModule."""
    return build_data(data_conf(*overrides))


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def dlrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return cli(*args, cwd=cwd)


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: uncompressed idx files, as torchvision reads them from <root>/<Class>/raw


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: two zero bytes, the type (0x08: unsigned byte), the number of dimensions,
    each dimension as a big-endian uint32, then the data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 100, n_test: int = 20):
    """Images whose pixels encode their label (label * 25); test images carry a 255 at (0, 0)
    and every image its index at (27, 27). Returns (train labels, test labels)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    labels = {}
    for prefix, n, marker in (("train", n_train, 0), ("t10k", n_test, 255)):
        y = (np.arange(n) * 7) % 10
        x = np.repeat((y * 25).astype(np.uint8)[:, None, None], 28, axis=1).repeat(28, axis=2)
        x[:, 0, 0] = marker
        x[:, 27, 27] = np.arange(n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        labels[prefix] = y
    return labels["train"], labels["t10k"]


def test_mnist_reads_torchvision_idx_files_and_keeps_its_test_set(tmp_path):
    root = tmp_path / "mnist"
    y_train, y_test = write_mnist(root)
    raw = load("data=mnist", f"data.root={root}")
    assert raw.x.shape == (120, 1, 28, 28) and raw.x.dtype == np.uint8 and raw.pixel_max == 255
    assert raw.y.dtype == np.int64 and list(raw.y) == list(y_train) + list(y_test)
    np.testing.assert_array_equal(raw.x[:, 0, 10, 10], raw.y * 25)  # the file's bytes, as they are
    np.testing.assert_array_equal(raw.x[:, 0, 27, 27], list(range(100)) + list(range(20)))
    assert list(raw.fixed_split) == ["train"] * 100 + ["test"] * 20
    assert raw.spec.shape == (1, 28, 28) and raw.spec.num_classes == 10
    assert raw.spec.class_names[0] == "0 - zero"  # torchvision's class names

    data = module("data=mnist", f"data.root={root}", "data.normalize=false")
    assert data.sizes() == {"train": 90, "val": 10, "test": 20}  # val from the training set
    assert (data.x_test[:, 0, 0, 0] == 1.0).all() and (data.x_train[:, 0, 0, 0] == 0.0).all()
    assert sorted(np.rint(data.x_test[:, 0, 27, 27] * 255).astype(int)) == list(range(20))
    np.testing.assert_allclose(data.x_test[:, 0, 10, 10] * 255, data.y_test * 25, atol=1e-4)

    limited = load("data=mnist", f"data.root={root}", "data.limit=8")
    assert list(limited.fixed_split) == ["train"] * 8 + ["test"] * 8
    assert list(limited.y) == list(y_train[:8]) + list(y_test[:8])


def test_a_tiny_mnist_run_scores_the_20_test_images(tmp_path):
    root = tmp_path / "mnist"
    write_mnist(root)
    summary, run_dir = train(
        tmp_path, "data=mnist", f"data.root={root}", "trainer.max_epochs=1", "model=mlp"
    )
    assert summary["status"] == "completed" and summary["task"] == "classification"
    correct = summary["test"]["accuracy"] * 20
    assert abs(correct - round(correct)) < 1e-6  # a share of 20 images
    assert "train 90, val 10, test 20" in (run_dir / "train.log").read_text()


def test_fashion_mnist_reads_its_own_folder_from_the_default_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    y_train, y_test = write_mnist(tmp_path / "data" / "fashion_mnist", "FashionMNIST", 30, 10)
    raw = load("data=fashion_mnist")  # root: data/fashion_mnist, from the current directory
    assert raw.x.shape == (40, 1, 28, 28) and list(raw.y) == list(y_train) + list(y_test)
    assert list(raw.fixed_split) == ["train"] * 30 + ["test"] * 10
    assert (
        raw.spec.class_names[:2] == ("T-shirt/top", "Trouser") and raw.spec.name == "fashion_mnist"
    )


def test_missing_mnist_files_name_the_folder_and_the_download_flag(tmp_path):
    root = tmp_path / "nowhere"
    raw_dir = root / "MNIST" / "raw"
    message = (
        f"data.root: no MNIST files in {root} (looked for the raw or processed files torchvision "
        f"reads: {raw_dir}/{{train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}} or {root}/MNIST/processed/training.pt). "
        "Put them there or add data.download=true."
    )
    with pytest.raises(UserError, match=exactly(message)):
        load("data=mnist", f"data.root={root}")

    result = dlrun("data=mnist", "data.root=nowhere", cwd=tmp_path)  # relative to the cwd
    assert result.returncode == 2
    assert result.stderr == f"dlrun: {message}\n"
    assert "Traceback" not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# CIFAR-10: the pickled batches of cifar-10-python.tar.gz in <root>/cifar-10-batches-py


def write_cifar(root: Path, per_batch: int = 4, n_test: int = 6) -> tuple[list[int], list[int]]:
    """Batches as in the official archive: dicts with 'data' (n, 3072) uint8, rows of R, G and B
    planes of 32x32 row-major, and 'labels'. The official pickles come from Python 2, whose str
    keys load as str under torchvision's encoding='latin1', so the keys here are str too.
    Pixels: R = label * 20, G = the pixel's row, B = 255 in the test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(labels: list[int], name: str, test: bool) -> dict:
        planes = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        planes[:, 0] = (np.array(labels) * 20)[:, None, None]
        planes[:, 1] = np.arange(32, dtype=np.uint8)[:, None]
        planes[:, 2] = 255 if test else 0
        return {
            "batch_label": name,
            "labels": labels,
            "data": planes.reshape(len(labels), 3072),
            "filenames": [f"{name}_{i}.png" for i in range(len(labels))],
        }

    train_labels = [(i * 3) % 10 for i in range(5 * per_batch)]
    for b in range(5):
        labels = train_labels[b * per_batch : (b + 1) * per_batch]
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(batch(labels, f"training batch {b + 1} of 5", False), f, protocol=2)
    test_labels = [i % 10 for i in range(n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test_labels, "testing batch 1 of 1", True), f, protocol=2)
    meta = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return train_labels, test_labels


def test_cifar10_batches_load_as_chw_with_the_official_test_split(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    root = tmp_path / "cifar"
    train_labels, test_labels = write_cifar(root)
    # torchvision checks each file against the MD5 of the official archive, which files written
    # here cannot match: in production that check stays. Here the checksums are set to None,
    # which torchvision's check_integrity reads as "the file exists".
    monkeypatch.setattr(CIFAR10, "train_list", [[name, None] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, None] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})

    raw = load("data=cifar10", f"data.root={root}")
    assert raw.x.shape == (26, 3, 32, 32) and raw.x.dtype == np.uint8 and raw.pixel_max == 255
    assert list(raw.y) == train_labels + test_labels
    assert list(raw.fixed_split) == ["train"] * 20 + ["test"] * 6
    np.testing.assert_array_equal(raw.x[:, 0, 5, 7], raw.y * 20)  # R: the label
    np.testing.assert_array_equal(raw.x[0, 1, :, 3], np.arange(32))  # G: the row
    assert (raw.x[:20, 2] == 0).all() and (raw.x[20:, 2] == 255).all()  # B: the test batch
    assert raw.spec.shape == (3, 32, 32) and raw.spec.class_names == tuple(CIFAR_NAMES)

    limited = load("data=cifar10", f"data.root={root}", "data.limit=3")
    assert list(limited.y) == train_labels[:3] + test_labels[:3]


def test_cifar10_files_that_fail_the_official_checksums_are_refused(tmp_path):
    root = tmp_path / "cifar"
    write_cifar(root)
    message = (
        f"data.root: the CIFAR-10 files in {root / 'cifar-10-batches-py'} do not match the "
        "official checksums torchvision verifies; they are damaged or not the official ones. "
        "Replace them with those of the official archive, or delete them and add "
        "data.download=true."
    )
    with pytest.raises(UserError, match=exactly(message)):
        load("data=cifar10", f"data.root={root}")


# ---------------------------------------------------------------------------------------------
# image_folder


def write_image_folder(root: Path) -> None:
    """3 classes of solid-colour PNGs in different sizes and modes, plus things to skip."""
    from PIL import Image

    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fox": (0, 0, 255)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i, size in enumerate([(10, 6), (8, 8), (40, 20)]):
            Image.new("RGB", size, rgb).save(root / name / f"{i}.png")
        Image.new("RGBA", (5, 5), (*rgb, 255)).save(root / name / "rgba.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class


def test_image_folder_loads_resizes_and_names_the_classes(tmp_path, caplog):
    root = tmp_path / "pets"
    write_image_folder(root)
    with caplog.at_level("DEBUG", logger="dlrun"):  # (a read under a second logs at DEBUG)
        raw = load("data=image_folder", f"data.root={root}", "data.image_size=16")
    assert f"reading images from {root}: 12 in" in caplog.text  # and a bar while it reads
    assert raw.x.shape == (12, 3, 16, 16) and raw.x.dtype == np.uint8 and raw.pixel_max == 255
    assert raw.spec.class_names == ("cat", "dog", "fox") and raw.spec.shape == (3, 16, 16)
    assert list(raw.y) == [0] * 4 + [1] * 4 + [2] * 4
    for label in range(3):  # the class's colour is its channel
        assert (raw.x[raw.y == label][:, label] == 255).all()
        others = [c for c in range(3) if c != label]
        assert (raw.x[raw.y == label][:, others] == 0).all()

    gray = load(
        "data=image_folder", f"data.root={root}", "data.grayscale=true", "data.image_size=8"
    )
    assert gray.x.shape == (12, 1, 8, 8) and gray.spec.shape == (1, 8, 8)
    # PIL's luma: L = R * 299/1000 + G * 587/1000 + B * 114/1000
    np.testing.assert_allclose(gray.x[gray.y == 0].astype(int), 76, atol=1)
    np.testing.assert_allclose(gray.x[gray.y == 1].astype(int), 150, atol=1)

    data = module(
        "data=image_folder", f"data.root={root}", "data.test_split=0.25", "data.val_split=0.33"
    )
    assert data.sizes() == {"train": 6, "val": 3, "test": 3}


def test_image_folder_errors(tmp_path):
    layout = "one sub-folder per class, holding its images (root/<class>/<image>)"
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.root: {tmp_path / 'none'} does not exist. Give a folder with {layout}."
        ),
    ):
        load("data=image_folder", f"data.root={tmp_path / 'none'}")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.root: {tmp_path / 'flat'} has no class folders. Give a folder with {layout}."
        ),
    ):
        load("data=image_folder", f"data.root={tmp_path / 'flat'}")
    root = tmp_path / "pets"
    write_image_folder(root)
    (root / "emu").mkdir()
    with pytest.raises(
        UserError,
        match=rf"^data\.root: the class folders emu in {re.escape(str(root))} hold no images\. Images may end in \.jpg, ",
    ):
        load("data=image_folder", f"data.root={root}")
    with pytest.raises(ConfigError, match=exactly("data.root is required and has no value.")):
        train(tmp_path, "data=image_folder")


# ---------------------------------------------------------------------------------------------
# csv and parquet


def animals(n: int = 90) -> pd.DataFrame:
    """A numeric column and a text column, both with missing values, and a text target."""
    rng = np.random.default_rng(0)
    weight = rng.uniform(1, 30, n).round(1)
    label = np.where(weight < 10, "cat", np.where(weight < 20, "dog", "wolf"))
    colour = rng.choice(["black", "grey", "white"], n).astype(object)
    weight = weight.astype(float)
    weight[::9] = np.nan
    colour[4::11] = None
    return pd.DataFrame({"weight": weight, "colour": colour, "label": label})


@pytest.fixture
def animals_csv(tmp_path) -> Path:
    path = tmp_path / "animals.csv"
    animals().to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "model", ["model=mlp", "model=random_forest", "model=xgboost"], ids=lambda m: m.split("=")[1]
)
def test_a_csv_with_missing_values_trains_every_flat_model(tmp_path, animals_csv, model):
    extra = [] if model == "model=mlp" else ["model.n_estimators=20"]
    summary, _ = train(
        tmp_path,
        "data=csv",
        f"data.path={animals_csv}",
        "data.target=label",
        "data.missing=impute",
        model,
        *extra,
        "trainer.max_epochs=2",
    )
    assert summary["task"] == "classification" and summary["status"] == "completed"
    for split in ("val", "test"):
        assert summary[split] and all(math.isfinite(v) for v in summary[split].values())


def test_csv_reads_classes_and_parquet_gives_the_same_data(tmp_path, animals_csv):
    parquet = tmp_path / "animals.parquet"
    animals().to_parquet(parquet)
    common = ["data.target=label", "data.missing=impute"]
    raw = load("data=csv", f"data.path={animals_csv}", *common)
    assert raw.spec.task == "classification" and raw.spec.class_names == ("cat", "dog", "wolf")
    assert raw.spec.shape == (4,)  # weight + one-hot of black, grey, white
    labels = pd.read_csv(animals_csv)["label"]
    assert list(raw.y) == [("cat", "dog", "wolf").index(v) for v in labels]

    from_csv = module("data=csv", f"data.path={animals_csv}", *common)
    from_parquet = module("data=parquet", f"data.path={parquet}", *common)
    assert from_parquet.spec == dataclasses.replace(from_csv.spec, name="parquet")
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(from_csv.split(name)[0], from_parquet.split(name)[0])
        np.testing.assert_array_equal(from_csv.split(name)[1], from_parquet.split(name)[1])


def test_ordinal_and_onehot_give_different_feature_counts(animals_csv):
    common = ["data=csv", f"data.path={animals_csv}", "data.target=label", "data.missing=impute"]
    onehot = module(*common)
    ordinal = module(*common, "data.categorical=ordinal", "data.normalize=false")
    assert onehot.x_train.shape[1] == onehot.spec.shape[0] == 4
    assert ordinal.x_train.shape[1] == ordinal.spec.shape[0] == 2
    assert set(np.unique(ordinal.x_train[:, 1])) == {0.0, 1.0, 2.0}  # black, grey, white
    only = module(*common, "data.features=[colour]")
    assert only.spec.shape == (3,)


def split_table() -> pd.DataFrame:
    """A table with a fixed split: the test rows differ from the training rows on purpose."""
    rows = [
        # id, size, colour, split, target
        (0, 1.0, "red", "train", "no"),
        (1, 2.0, "red", "train", "yes"),
        (2, 3.0, "red", "train", "no"),
        (3, 4.0, "blue", "train", "yes"),
        (4, 100.0, "blue", "train", "no"),
        (5, 5.0, "green", "val", "yes"),
        (6, 6.0, "blue", "val", "no"),
        (7, 1000.0, "green", "test", "yes"),
        (8, 2000.0, "green", "test", "no"),
        (9, 3000.0, "green", "test", "yes"),
        (10, 4000.0, "green", "test", "no"),
        (11, None, None, "test", "yes"),
    ]
    return pd.DataFrame(rows, columns=["id", "size", "colour", "fold", "target"])


def test_imputation_and_encoders_learn_from_the_training_rows_only(tmp_path):
    path = tmp_path / "split.csv"
    split_table().to_csv(path, index=False)
    data = module(
        "data=csv",
        f"data.path={path}",
        "data.target=target",
        "data.split_column=fold",
        "data.missing=impute",
        "data.normalize=false",
        "data.features=[size,colour]",
    )
    # layout: size, then one-hot of blue, green, red (every value in the file, sorted)
    assert data.spec.shape == (4,) and data.x_test.shape == (5, 4)
    missing_row = data.x_test[data.x_test[:, 0] < 1000]  # the row with neither size nor colour
    # size: the median of the training sizes (1, 2, 3, 4, 100) is 3; of all rows it would be 6.
    # colour: the training rows' most frequent is red (3 of 5); over all rows it is green (5).
    np.testing.assert_array_equal(missing_row, [[3.0, 0.0, 0.0, 1.0]])
    # green never occurs in the training rows: unknown to the encoder, so all zeros
    greens = data.x_test[data.x_test[:, 0] >= 1000]
    np.testing.assert_array_equal(greens[:, 1:], np.zeros((4, 3)))
    assert (data.x_train[:, 2] == 0).all()


def test_a_split_column_fixes_the_split_exactly(tmp_path):
    path = tmp_path / "split.parquet"
    split_table().to_parquet(path)
    common = ["data=parquet", f"data.path={path}", "data.target=target", "data.split_column=fold"]
    data = module(
        *common, "data.missing=impute", "data.normalize=false", "data.categorical=ordinal"
    )
    assert data.spec.shape == (3,)  # id, size, colour: the split column is not a feature
    assert sorted(data.x_test[:, 0]) == [7, 8, 9, 10, 11]
    assert sorted(data.x_val[:, 0]) == [5, 6] and sorted(data.x_train[:, 0]) == [0, 1, 2, 3, 4]
    by_id = dict(zip(data.x_test[:, 0], data.y_test, strict=True))
    assert by_id == {7: 1, 8: 0, 9: 1, 10: 0, 11: 1}  # classes: no, yes

    table = split_table().query("fold != 'val'")  # without val rows, val comes from train
    table.to_parquet(path)
    data = module(*common, "data.missing=impute", "data.val_split=0.4")
    assert data.sizes() == {"train": 3, "val": 2, "test": 5}


def test_the_target_dtype_sets_the_task(tmp_path):
    path = tmp_path / "numbers.csv"
    pd.DataFrame(
        {"a": np.arange(20.0), "price": np.arange(20) * 1.5, "rooms": np.arange(20) % 3 * 5}
    ).to_csv(path, index=False)
    raw = load("data=csv", f"data.path={path}", "data.target=price")
    assert raw.spec.task == "regression" and raw.y.dtype == np.float32
    assert raw.spec.num_classes is None and raw.spec.shape == (2,)
    np.testing.assert_allclose(raw.y, np.arange(20) * 1.5)
    ints = load("data=csv", f"data.path={path}", "data.target=rooms")
    assert ints.spec.task == "classification" and ints.spec.class_names == ("0", "5", "10")
    summary, _ = train(
        tmp_path, "data=csv", f"data.path={path}", "data.target=price", "trainer.max_epochs=2"
    )
    assert summary["task"] == "regression" and all(
        math.isfinite(v) for v in summary["test"].values()
    )


# ---------------------------------------------------------------------------------------------
# csv / parquet errors: one clear message each


def test_a_missing_or_empty_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.path: {tmp_path / 'nope.csv'} does not exist. Give the path of a CSV file "
            f"(a relative path starts from {tmp_path})."
        ),
    ):
        load("data=csv", "data.path=nope.csv", "data.target=y")

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.path: {tmp_path / 'empty.csv'} is empty (0 bytes). Give a CSV file with a header "
            "row and rows of data."
        ),
    ):
        load("data=csv", "data.path=empty.csv", "data.target=y")

    (tmp_path / "blank.csv").write_text("\n\n")
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.path: {tmp_path / 'blank.csv'} has no columns. Give a CSV file with a header row "
            "and rows of data."
        ),
    ):
        load("data=csv", "data.path=blank.csv", "data.target=y")

    (tmp_path / "header.csv").write_text("x,y\n")
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.path: {tmp_path / 'header.csv'} has no rows (columns x, y). A dataset needs at "
            "least one row of data."
        ),
    ):
        load("data=csv", "data.path=header.csv", "data.target=y")

    (tmp_path / "text.parquet").write_text("x,y\n1,2\n")
    with pytest.raises(
        UserError,
        match=rf"^data\.path: cannot read {re.escape(str(tmp_path))}/text\.parquet as a Parquet file: ",
    ):
        load("data=parquet", "data.path=text.parquet", "data.target=y")

    with pytest.raises(ConfigError, match=exactly("data.path is required and has no value.")):
        train(tmp_path, "data=csv", "data.target=y")


def test_unknown_columns_are_listed_with_a_suggestion(tmp_path, animals_csv):
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.target: 'lable' is not a column of {animals_csv}. Columns: weight, colour, label. "
            "Did you mean 'label'?"
        ),
    ):
        load("data=csv", f"data.path={animals_csv}", "data.target=lable")
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.features: 'color' is not a column of {animals_csv}. Columns: weight, colour, "
            "label. Did you mean 'colour'?"
        ),
    ):
        load(
            "data=csv",
            f"data.path={animals_csv}",
            "data.target=label",
            "data.features=[weight,color]",
        )
    with pytest.raises(
        ConfigError,
        match=exactly("data.features: 'label' is data.target, so it cannot also be a feature."),
    ):
        train(
            tmp_path,
            "data=csv",
            f"data.path={animals_csv}",
            "data.target=label",
            "data.features=[label]",
        )

    result = dlrun("data=csv", f"data.path={animals_csv}", "data.target=nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"dlrun: data.target: 'nope' is not a column of {animals_csv}. Columns: weight, colour, "
        "label.\n"
    )
    assert result.stderr.startswith("dlrun: ") and "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.rglob("summary.json"))


def test_missing_values_are_an_error_unless_imputed(animals_csv, tmp_path):
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.missing is 'error', which allows no missing values, but {animals_csv} has missing "
            "values in 2 feature columns: weight (10), colour (8). Add data.missing=impute to fill "
            "them from the training rows (median for numbers, most frequent value for text), or "
            "fill them in the file."
        ),
    ):
        load("data=csv", f"data.path={animals_csv}", "data.target=label")

    path = tmp_path / "no_target.csv"
    pd.DataFrame({"x": [1, 2, 3, 4], "y": ["a", None, "b", None]}).to_csv(path, index=False)
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.target: column 'y' of {path} has 2 missing values (data rows 2, 4, counting from "
            "1); every row needs a target. Fill them in or drop those rows (data.missing=impute "
            "fills features only)."
        ),
    ):
        load("data=csv", f"data.path={path}", "data.target=y", "data.missing=impute")


def test_a_bad_split_column_is_refused(tmp_path):
    path = tmp_path / "split.csv"
    table = split_table()
    table.loc[[2, 3], "fold"] = ["Train", "holdout"]
    table.to_csv(path, index=False)
    common = ["data=csv", f"data.path={path}", "data.target=target", "data.missing=impute"]
    with pytest.raises(
        UserError,
        match=exactly(
            "data.split_column: column 'fold' may hold only 'train', 'val' and 'test'; 2 rows hold "
            "other values: 'Train', 'holdout'."
        ),
    ):
        load(*common, "data.split_column=fold")
    with pytest.raises(
        UserError,
        match=exactly(
            f"data.split_column: 'folds' is not a column of {path}. Columns: id, size, colour, fold, "
            "target. Did you mean 'fold'?"
        ),
    ):
        load(*common, "data.split_column=folds")
    split_table().query("fold != 'test'").to_csv(path, index=False)
    with pytest.raises(UserError, match=r"^data\.split_column: column 'fold' has no 'test' rows;"):
        load(*common, "data.split_column=fold")


def test_unreadable_images_are_all_named_then_refused_or_skipped(tmp_path, caplog):
    root = tmp_path / "pets"
    write_image_folder(root)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "fox" / "empty.png").write_bytes(b"")
    with pytest.raises(UserError) as refused:
        load("data=image_folder", f"data.root={root}")
    message = str(refused.value)
    assert message.startswith(f"data.root: 2 of the 14 images in {root} cannot be read:")
    assert (
        str(root / "dog" / "broken.jpg") in message and str(root / "fox" / "empty.png") in message
    )
    assert message.endswith("or set data.on_bad_file=skip to train without them.")
    with caplog.at_level("WARNING", logger="dlrun"):
        raw = load("data=image_folder", f"data.root={root}", "data.on_bad_file=skip")
    assert raw.x.shape[0] == 12 and list(raw.y) == [0] * 4 + [1] * 4 + [2] * 4
    assert "2 unreadable images left out" in caplog.text and "broken.jpg" in caplog.text
    for name in ("cat", "dog", "fox"):  # a class with nothing readable left
        for image in (root / name).glob("*.png"):
            image.write_bytes(b"")
    with pytest.raises(UserError, match="the class folders cat, dog, fox in .* hold no readable"):
        load("data=image_folder", f"data.root={root}", "data.on_bad_file=skip")
