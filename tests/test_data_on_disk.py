"""Data read from disk a batch at a time (dlrun.data.lazy): an image folder streamed by
DataLoader workers trains, validates and tests exactly as the same folder decoded into memory;
unreadable files are named; a dead worker ends the run with one message; resume is exact."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, make_cfg, read_metrics, train
from dlrun.errors import ConfigError, Interrupted, UserError

BASE = ("model=lenet5", "trainer.device=cpu", "trainer.batch_size=16", "trainer.max_epochs=2")


def write_photos(root: Path, per_class: int = 24) -> Path:
    """3 classes of noisy JPEGs of different sizes; each class has its own bright stripe."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = 24 + i % 5, 30 - i % 4
            pixels = (rng.integers(0, 120, (h, w, 3)) + 40 * c).astype(np.uint8)
            pixels[:, 6 * c : 6 * c + 6] = 230
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in read_metrics(run_dir)]


def folder_args(root: Path, *more: str) -> tuple[str, ...]:
    return (*BASE, "data=image_folder", f"data.root={root}", "data.image_size=20", *more)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos") / "photos")


def split_paths(root: Path, *more: str) -> dict[str, list[str]]:
    """Which files each split holds, as a streamed run splits them."""
    from omegaconf import OmegaConf

    from dlrun.data import build_data

    conf = OmegaConf.to_object(make_cfg(*folder_args(root, "data.load=stream", *more))).data
    data = build_data(conf)
    return {s: list(data.stored[s].source.paths[data.stored[s].rows]) for s in data.stored}


def test_a_streamed_folder_trains_exactly_as_the_folder_in_memory(tmp_path, photos, caplog):
    augment = ("data.augment.hflip=true", "data.augment.crop_padding=2")
    memory, memory_dir = train(
        tmp_path, *folder_args(photos, "data.load=memory", *augment), name="memory"
    )
    with caplog.at_level(logging.INFO, logger="dlrun"):
        streamed, stream_dir = train(
            tmp_path, *folder_args(photos, "data.load=stream", *augment), name="stream"
        )
    assert "72 images (0.00 GB decoded) are read from disk a batch at a time" in caplog.text
    assert "streams from disk: 2 DataLoader workers" in caplog.text
    assert metrics(stream_dir) == metrics(memory_dir)  # every loss, metric and norm, bit for bit
    assert streamed["val"] == memory["val"] and streamed["test"] == memory["test"]
    assert streamed["test"]["accuracy"] > 0.6  # the stripes are learnt: 3 classes, chance 0.33
    # dlrun-eval reads the folder again, streamed as it trained, and finds the same metrics
    from dlrun.use import evaluate

    again = evaluate(stream_dir, [], tmp_path / "eval")
    assert again["test"] == streamed["test"] and again["val"] == streamed["val"]
    # auto streams above data.memory_gb (72 images of 3x20x20 bytes: 86,400 bytes)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dlrun"):
        train(tmp_path, *folder_args(photos, "data.memory_gb=0.00008"), name="auto")
    assert "data.load=auto: 72 images" in caplog.text


@contextlib.contextmanager
def sigint_at_batch(monkeypatch, k: int):
    """Ctrl-C while the k-th batch read by DataLoader workers is taken (counting every pass);
    the block must stop with Interrupted."""
    from dlrun.streaming import BatchLoader

    real, seen = BatchLoader.epoch, {"batches": 0}

    def epoch(self, batches):
        for batch in real(self, batches):
            seen["batches"] += 1
            if seen["batches"] == k:
                signal.raise_signal(signal.SIGINT)
            yield batch

    monkeypatch.setattr(BatchLoader, "epoch", epoch)
    with pytest.raises(Interrupted):
        yield
    monkeypatch.setattr(BatchLoader, "epoch", real)


def test_a_streamed_run_stopped_inside_an_epoch_resumes_exactly(tmp_path, photos, monkeypatch):
    args = folder_args(photos, "data.load=stream", "trainer.max_epochs=3")
    _, whole = train(tmp_path, *args, name="whole")

    with sigint_at_batch(monkeypatch, 6):  # the 2nd of epoch 2's 4 training batches
        train(tmp_path, *args, name="cut")
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [1]
    train(tmp_path, *args, f"trainer.resume={tmp_path / 'cut'}", name="resumed")
    assert metrics(tmp_path / "cut") == metrics(whole)


def break_file(path: str) -> None:
    Path(path).write_bytes(b"\xff\xd8 not really a JPEG")


def test_unreadable_streamed_images_are_named_then_skipped_or_refused(tmp_path, caplog):
    root = write_photos(tmp_path / "photos")
    paths = split_paths(root)
    broken_train = paths["train"][3]
    break_file(broken_train)
    # with normalization, the training images are read for their statistics before training
    with pytest.raises(UserError) as refused:
        train(tmp_path, *folder_args(root, "data.load=stream"), name="refused")
    assert str(refused.value).startswith(
        "data.root: 1 of the 51 images read for the statistics cannot be read:\n"
        f"  {broken_train}: cannot identify image file"
    )
    # without it, the workers find it while training: named in the log once, left out
    unnormalized = folder_args(root, "data.load=stream", "data.normalize=false")
    with pytest.raises(UserError, match="1 of the 16 images of a training batch cannot be read"):
        train(tmp_path, *unnormalized, name="stopped")
    with caplog.at_level(logging.INFO, logger="dlrun"):
        summary, run_dir = train(tmp_path, *unnormalized, "data.on_bad_file=skip", name="skip")
    assert summary["status"] == "completed"
    log = (run_dir / "train.log").read_text()
    assert log.count(broken_train) == 1 and "1 unreadable training image(s) left out" in log

    # validation and test are measured on every sample: a bad file there stops the run, cleanly
    broken_val = paths["val"][0]
    break_file(broken_val)
    done = cli(*unnormalized, "data.on_bad_file=skip", "hydra.run.dir=val_broken", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "1 of the 6 images of a validation or test batch cannot be read" in done.stderr
    assert broken_val in done.stderr and "then resume" in done.stderr


def test_a_reader_process_that_dies_ends_the_run_with_a_message_and_it_resumes(
    tmp_path, photos, monkeypatch
):
    import torch.utils.data

    from dlrun.data.lazy import ImageFiles

    args = folder_args(photos, "data.load=stream", "trainer.max_epochs=3")
    _, whole = train(tmp_path, *args, name="whole")
    real, calls = ImageFiles.read, {"n": 0}

    def read(self, rows, threads=1):
        if torch.utils.data.get_worker_info() is not None:  # in a DataLoader worker
            calls["n"] += 1  # this process's own count
            if calls["n"] == 3:  # a training worker's first batch of epoch 2: killed
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, rows, threads)

    monkeypatch.setattr(ImageFiles, "read", read)
    with pytest.raises(UserError) as stopped:
        train(tmp_path, *args, name="killed")
    message = str(stopped.value)
    assert message.startswith("trainer.workers: a process that reads the data stopped (DataLoader")
    assert "pid" in message and "trainer.resume" in message
    assert [r["epoch"] for r in read_metrics(tmp_path / "killed")] == [1]
    monkeypatch.setattr(ImageFiles, "read", real)
    train(tmp_path, *args, f"trainer.resume={tmp_path / 'killed'}", name="resumed")
    assert metrics(tmp_path / "killed") == metrics(whole)


def test_models_that_need_the_data_in_memory_say_so(tmp_path, photos):
    with pytest.raises(ConfigError, match=r"^data\.load: random_forest needs every sample in"):
        train(tmp_path, *folder_args(photos, "data.load=stream"), "model=random_forest")
    with pytest.raises(ConfigError, match=r"^trainer\.data_placement: 'device' needs the data"):
        train(tmp_path, *folder_args(photos, "data.load=stream", "trainer.data_placement=device"))


def test_the_statistics_of_a_large_streamed_folder_come_from_a_seeded_sample(
    photos, monkeypatch, caplog
):
    from omegaconf import OmegaConf

    import dlrun.data.lazy
    from dlrun.data import build_data

    conf = OmegaConf.to_object(make_cfg(*folder_args(photos, "data.load=stream"))).data
    full = build_data(conf).norm
    monkeypatch.setattr(dlrun.data.lazy, "STATS_SAMPLE", 20)
    with caplog.at_level(logging.DEBUG, logger="dlrun"):  # (quick reads are logged at DEBUG)
        sampled = build_data(conf).norm
    assert "reading 20 of the 51 training images for their statistics" in caplog.text
    assert build_data(conf).norm[0].tolist() == sampled[0].tolist()  # the same draw each time
    assert sampled[0].tolist() != full[0].tolist()
    # the folder decoded into memory is normalized by the same sample: both paths train alike
    memory = OmegaConf.to_object(make_cfg(*folder_args(photos, "data.load=memory"))).data
    assert [a.tolist() for a in build_data(memory).norm] == [a.tolist() for a in sampled]
    np.testing.assert_allclose(sampled[0], full[0], atol=0.05)  # pixels in [0, 1]
    np.testing.assert_allclose(sampled[1], full[1], atol=0.05)


# ---------------------------------------------------------------------------------------------
# npz: 'x' memory-mapped


def npz_args(path: Path, *more: str) -> tuple[str, ...]:
    return ("trainer.device=cpu", "trainer.max_epochs=2", "data=npz", f"data.path={path}", *more)


@pytest.mark.parametrize("kind", ["images", "table", "regression"])
def test_a_memory_mapped_npz_trains_exactly_as_the_file_in_memory(tmp_path, kind):
    from sklearn.datasets import load_diabetes, load_digits

    digits = load_digits()
    if kind == "images":
        x, y, model = (digits.images[:, None] * 15).astype(np.uint8), digits.target, "lenet5"
    elif kind == "table":
        x, y, model = digits.data, digits.target, "mlp"  # float64, read as float32
    else:
        diabetes = load_diabetes()
        x, y, model = diabetes.data.astype(np.float32), diabetes.target, "mlp"
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    memory, memory_dir = train(tmp_path, *npz_args(path, "data.load=memory", f"model={model}"))
    streamed, stream_dir = train(
        tmp_path, *npz_args(path, "data.load=stream", f"model={model}"), name="stream"
    )
    assert metrics(stream_dir) == metrics(memory_dir)
    assert streamed["test"] == memory["test"]
    if kind != "regression":
        assert streamed["test"]["accuracy"] > 0.85


def test_a_memory_mapped_npz_is_read_a_batch_at_a_time(tmp_path, monkeypatch):
    """Its rows are read when batches take them, never the whole file at once; workers get
    the file's place, not its values."""
    import pickle

    from dlrun.data.lazy import MappedArray

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 40)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    path = tmp_path / "big.npz"
    np.savez(path, x=x, y=y)
    raw = np.load(path)  # noqa: F841 (the file is a plain np.savez archive)
    reads = []
    real = MappedArray.read

    def read(self, rows, threads=1):
        reads.append(len(rows))
        return real(self, rows, threads)

    monkeypatch.setattr(MappedArray, "read", read)
    args = npz_args(
        path, "data.memory_gb=0.0001", "trainer.workers=0", "trainer.batch_size=100", "model=mlp"
    )
    summary, _ = train(tmp_path, *args)  # 480,000 bytes > 100,000: auto streams
    sizes = {"train": 2160, "val": 240, "test": 600}  # the default split of 3000 rows
    # the statistics (the training rows, in one block here), the health probe (the first 256
    # validation rows), then batches: 2 epochs of training and validation, then val and test
    # once (the confusion matrix takes the outputs the test scores came from)
    assert reads[:2] == [sizes["train"], sizes["val"]]
    assert max(reads[2:]) == 100 and sum(reads[2:]) == 2 * (2160 + 240) + 240 + 600
    assert summary["test"]["accuracy"] > 0.75  # chance: 0.5
    from omegaconf import OmegaConf

    from dlrun.data import build_data

    data = build_data(OmegaConf.to_object(make_cfg(*args)).data)
    mapped = data.stored["train"].source
    assert isinstance(mapped.array, np.memmap) and Path(mapped.array.filename) == path
    assert len(pickle.dumps(mapped)) < 1000  # its place in the file, not 480,000 bytes
    again = pickle.loads(pickle.dumps(mapped))
    assert np.array_equal(again[[5, 2999]], x[[5, 2999]])


def test_npz_files_that_cannot_be_mapped_are_read_whole_and_say_why(tmp_path, caplog):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    y = np.arange(60) % 2
    np.savez_compressed(tmp_path / "small.npz", x=x, y=y)
    np.savez(tmp_path / "padded.npz", x=x, y=y, lengths=np.full(60, 5))
    from dlrun.data.lazy import is_lazy

    for name, why in (
        ("small", "it is compressed (np.savez_compressed; save it with np.savez to stream it)"),
        ("padded", "it holds padded sequences ('lengths')"),
    ):
        from omegaconf import OmegaConf

        from dlrun.registry import get_data

        conf = OmegaConf.to_object(
            make_cfg(*npz_args(tmp_path / f"{name}.npz", "data.load=stream"))
        ).data
        with caplog.at_level(logging.WARNING, logger="dlrun"):
            raw = get_data("npz").load(conf)
        assert not is_lazy(raw.x)
        assert f"data.load=stream: {tmp_path / name}.npz is read whole: {why}" in caplog.text


def test_a_nan_in_a_memory_mapped_npz_is_named_as_in_memory(tmp_path):
    x = np.random.default_rng(0).standard_normal((200, 6)).astype(np.float32)
    x[17, 4] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=x, y=np.arange(200) % 2)
    messages = []
    for load in ("memory", "stream"):
        with pytest.raises(UserError) as refused:
            train(tmp_path, *npz_args(path, f"data.load={load}", "model=mlp"), name=load)
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert messages[1].startswith(
        "data: npz has 1 NaN input value(s); the first is sample 17, feature 4"
    )
    # in a test row, the streamed run finds it when the test split is read, with the same words
    from omegaconf import OmegaConf

    from dlrun.data import build_data

    x[17, 4] = 0.0
    np.savez(path, x=x, y=np.arange(200) % 2)
    conf = OmegaConf.to_object(make_cfg(*npz_args(path, "data.load=stream"))).data
    test_row = int(build_data(conf).stored["test"].rows[3])
    x[test_row, 2] = np.inf
    np.savez(path, x=x, y=np.arange(200) % 2)
    with pytest.raises(UserError) as refused:
        train(tmp_path, *npz_args(path, "data.load=stream", "model=mlp"), name="test_row")
    assert str(refused.value).startswith(
        "data: npz has 1 infinite input value(s) (or beyond float32's range, ±3.4e+38); the "
        f"first is sample {test_row}, feature 2."
    )


# ---------------------------------------------------------------------------------------------
# Parquet: read a row group at a time, encoded into a memory-mapped file of the run folder


def write_table(path: Path, n: int = 1200) -> Path:
    """A table with what encoding must get right: numbers with gaps, text with gaps and one
    value seen only in the test rows, booleans with a gap (pandas reads them as text), whole
    numbers, a split column; written in row groups of 150 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    size = rng.normal(size=n)
    size[rng.random(n) < 0.05] = np.nan
    city = rng.choice(["lima", "oslo", "paris", "rome"], n).astype(object)
    city[rng.random(n) < 0.05] = None
    split = rng.choice(["train"] * 7 + ["val", "test", "test"], n)
    city[np.flatnonzero(split == "test")[:3]] = "quito"  # never seen in training
    flag = [None if i == 7 else bool(v) for i, v in enumerate(rng.random(n) > 0.5)]
    rooms = rng.integers(1, 6, n)
    label = np.where(np.nan_to_num(size) + (city == "rome") + 0.3 * rooms > 1.2, "big", "small")
    table = pa.table(
        {
            "size": size,
            "city": pa.array(city, type=pa.string()),
            "flag": pa.array(flag, type=pa.bool_()),
            "rooms": rooms,
            "part": split,
            "label": label,
        }
    )
    pq.write_table(table, path, row_group_size=150)
    return path


def table_args(path: Path, *more: str) -> tuple[str, ...]:
    return (
        "trainer.device=cpu",
        "trainer.max_epochs=2",
        "model=mlp",
        "data=parquet",
        f"data.path={path}",
        "data.target=label",
        "data.split_column=part",
        "data.missing=impute",
        *more,
    )


def test_a_parquet_table_read_in_parts_trains_exactly_as_read_whole(tmp_path, caplog, monkeypatch):
    import pandas as pd

    from dlrun.data import files, table_stream

    path = write_table(tmp_path / "houses.parquet")
    memory, memory_dir = train(tmp_path, *table_args(path, "data.load=memory"), name="memory")
    parts, real = [], files.feature_frame

    def feature_frame(df, numeric, categorical):
        parts.append(len(df))
        return real(df, numeric, categorical)

    def read_whole(*args, **kwargs):
        raise AssertionError("the file was read whole")

    monkeypatch.setattr(files, "feature_frame", feature_frame)
    monkeypatch.setattr(pd, "read_parquet", read_whole)
    monkeypatch.setattr(table_stream, "PART_ROWS", 100)
    with caplog.at_level(logging.INFO, logger="dlrun"):
        streamed, stream_dir = train(tmp_path, *table_args(path, "data.load=stream"), name="stream")
    assert "is read 100 rows at a time" in caplog.text
    # the first row (for the column types), then three passes (checks, the training rows'
    # categories, encoding) of 100 rows at most
    assert parts[0] == 1 and max(parts) == 100 and sum(parts[1:]) == 3 * 1200
    assert metrics(stream_dir) == metrics(memory_dir)  # every loss and metric, bit for bit
    # the test loss is summed over batches of trainer.batch_size in parts, in one batch in memory
    assert streamed["test"] == pytest.approx(memory["test"], rel=1e-9, abs=0)
    assert streamed["test"]["accuracy"] == memory["test"]["accuracy"] > 0.8
    saved = "preprocessing/preprocessing.json"
    assert (stream_dir / saved).read_text() == (memory_dir / saved).read_text()
    assert not (stream_dir / "scratch").exists()  # the encoded rows live as long as the run
    # dlrun-eval encodes the file again with the saved encoder, and finds the same metrics
    from dlrun.use import evaluate

    again = evaluate(stream_dir, [], tmp_path / "eval")
    assert again["test"] == streamed["test"] and again["val"] == streamed["val"]
    # auto reads in parts above data.memory_gb; a text column is read whole, and says why
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dlrun"):
        train(tmp_path, *table_args(path, "data.memory_gb=0.00001"), name="auto")
    assert f"data.load=auto: {path} (0.00 GB of values) is read 100 rows" in caplog.text
    monkeypatch.undo()
    from omegaconf import OmegaConf

    from dlrun.data.lazy import is_lazy
    from dlrun.registry import get_data

    text = ("data.text=city", "data.split_column=null", "data.load=stream")
    conf = OmegaConf.to_object(make_cfg(*table_args(path, *text))).data
    with caplog.at_level(logging.WARNING, logger="dlrun"):
        assert not is_lazy(get_data("parquet").load(conf).x)
    assert f"data.load=stream: {path} is read whole: it reads a text column" in caplog.text


@pytest.mark.parametrize(
    "case", ["missing", "infinite", "huge", "no_column", "target_gap", "not_parquet", "tree"]
)
def test_a_bad_parquet_table_read_in_parts_gets_the_message_of_one_read_whole(tmp_path, case):
    import pandas as pd
    from omegaconf import OmegaConf

    from dlrun.registry import get_data

    path = tmp_path / "t.parquet"
    n = 300
    df = pd.DataFrame({"a": np.linspace(0, 1, n), "b": np.arange(n) % 7, "y": np.arange(n) % 2})
    extra = ["data.missing=error"]
    if case == "missing":
        df.loc[[40, 41, 250], "a"] = np.nan
    elif case == "infinite":
        df["b"] = df["b"].astype(float)
        df.loc[260, "b"] = np.inf
    elif case == "huge":
        df["b"] = df["b"].astype(float)
        df.loc[[30, 200], "b"] = [-1e39, 5e39]
    elif case == "no_column":
        extra.append("data.features=[a,c]")
    elif case == "target_gap":
        df["y"] = df["y"].astype(float)
        df.loc[5, "y"] = np.nan
    df.to_parquet(path, row_group_size=50)
    if case == "not_parquet":
        path.write_bytes(b"PAR1 but not really a Parquet file")
    if case == "tree":
        extra.append("model=random_forest")
    args = (
        "trainer.device=cpu",
        "data=parquet",
        f"data.path={path}",
        "data.target=y",
        *extra,
    )
    messages = []
    for load in ("memory", "stream"):
        try:
            if case == "tree":
                train(tmp_path, *args, f"data.load={load}", name=load)
            else:
                conf = OmegaConf.to_object(make_cfg(*args, f"data.load={load}")).data
                get_data("parquet").load(conf)
            messages.append(None)
        except (UserError, ConfigError) as ex:
            messages.append(str(ex))
    if case == "tree":  # in memory it trains; in parts it says what to do
        assert messages[0] is None
        assert "random_forest needs every sample in memory" in messages[1]
        assert "Set data.load=memory, or train a network." in messages[1]
        return
    assert messages[0] is not None and messages[0] == messages[1]
    expected = {
        "missing": "data.missing is 'error', which allows no missing values, but",
        "infinite": "data.path: the feature columns b of",
        "huge": "data.path: column 'b' of",
        "no_column": "data.features: 'c' is not a column of",
        "target_gap": "data.target: column 'y' of",
        "not_parquet": "data.path: cannot read",
    }[case]
    assert messages[1].startswith(expected)
    if case == "huge":
        assert "holds values up to 5e+39" in messages[1]


def test_a_parquet_run_stopped_inside_an_epoch_resumes_exactly(tmp_path, monkeypatch):
    path = write_table(tmp_path / "houses.parquet")
    args = table_args(path, "data.load=stream", "trainer.max_epochs=3", "trainer.batch_size=128")
    _, whole = train(tmp_path, *args, name="whole")
    with sigint_at_batch(monkeypatch, 9):  # epoch 2's first (an epoch: 7 training, 1 val)
        train(tmp_path, *args, name="cut")
    cut = tmp_path / "cut"
    assert [r["epoch"] for r in read_metrics(cut)] == [1]
    assert not (cut / "scratch").exists()  # removed when the run stopped
    # a killed run's encoded file (its process is gone) is removed when the run resumes
    (cut / "scratch").mkdir()
    stale = cut / "scratch" / "table-999999999-0.npy"
    stale.write_bytes(b"left by a killed run")
    train(tmp_path, *args, f"trainer.resume={cut}", name="resumed")
    assert metrics(cut) == metrics(whole)
    assert not (cut / "scratch").exists()
