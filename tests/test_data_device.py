"""Images on the training device: stored compactly (uint8 for 8-bit pixels), normalized, resized
and augmented per batch by `DeviceInputs.take`. The images are tiny MNIST files of random pixels
written in the real idx format, loaded through the real code."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_cfg
from dlrun.data import adapt, build_data
from dlrun.data.device import device_inputs, stored_splits
from dlrun.errors import ConfigError, UserError
from dlrun.validate import validate


def write_random_mnist(root: Path, n_train: int = 100, n_test: int = 20, seed: int = 0) -> None:
    """MNIST idx files (magic 0x0803 / 0x0801, big-endian sizes, then bytes) of random pixels,
    so that no flip or shift leaves an image unchanged."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels-idx1", (np.arange(n) % 10).astype(np.uint8)),
        ):
            header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(
                f">{array.ndim}I", *array.shape
            )
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())


@pytest.fixture
def mnist(tmp_path) -> Path:
    root = tmp_path / "mnist"
    write_random_mnist(root)
    return root


def module(*overrides: str):
    return build_data(OmegaConf.to_object(make_cfg(*overrides)).data)


def every(inputs) -> torch.Tensor:
    return torch.arange(len(inputs))


def test_8bit_pixels_are_stored_as_uint8_in_a_quarter_of_float32s_memory(mnist):
    data = module("data=mnist", f"data.root={mnist}")
    assert data.pixel_max == 255 and data.x_train.dtype == np.float32
    assert {s: a.dtype for s, a in data.stored.items()} == dict.fromkeys(data.stored, np.uint8)
    compact = device_inputs(data, "train", "cpu")
    assert compact.x.dtype == torch.uint8 and compact.x.shape == (90, 1, 28, 28)
    assert compact.nbytes * 4 == data.x_train.nbytes

    wide = device_inputs(
        module("data=mnist", f"data.root={mnist}", "data.storage=float32"), "train", "cpu"
    )
    assert wide.x.dtype == torch.float32 and wide.nbytes == data.x_train.nbytes
    half = module("data=mnist", f"data.root={mnist}", "data.storage=float16")
    assert half.stored["train"].dtype == np.float16

    digits = module()  # the default data: pixels 0..16 are whole numbers too
    assert digits.pixel_max == 16 and digits.stored["train"].dtype == np.uint8
    resized = module("data.image_size=16")  # resizing makes float pixels: float32 unless asked
    assert resized.pixel_max is None and resized.stored["train"].dtype == np.float32
    assert module("data.image_size=16", "data.storage=float16").stored["val"].dtype == np.float16


@pytest.mark.parametrize(
    "overrides, size, takes",
    [
        ((), None, "image"),
        (("data.normalize=false",), None, "image"),
        ((), 32, "image"),  # LeNet-5's resize, on the device
        ((), None, "flat"),
        ((), 32, "sequence"),
        (("data.storage=float16",), None, "image"),
        (("data.storage=float32",), 32, "flat"),
    ],
)
def test_take_without_augmentation_gives_the_numpy_float32_arrays(mnist, overrides, size, takes):
    data = module("data=mnist", f"data.root={mnist}", "data.augment.hflip=true", *overrides)
    if size is not None:
        data = data.resized(size)
    for split in ("train", "val", "test"):
        inputs = device_inputs(data, split, "cpu", takes=takes)
        got = inputs.take(every(inputs), train=False)
        expected = adapt(data.split(split)[0], data.spec, takes)
        assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
        if data.stored[split].dtype == np.uint8:  # new samples as the loader's uint8 pixels
            again = adapt(data.transform(data.stored[split]), data.spec, takes)
            np.testing.assert_allclose(again, expected, rtol=0, atol=1e-5)


def test_table_data_goes_to_the_device_as_its_normalized_rows():
    data = module("data=iris")
    assert data.stored is None
    inputs = device_inputs(data, "val", "cpu")
    assert torch.equal(inputs.take(every(inputs), train=True), torch.from_numpy(data.x_val))


def test_augmentation_changes_training_batches_only(mnist):
    data = module(
        "data=mnist", f"data.root={mnist}", "data.augment.hflip=true", "data.augment.crop_padding=4"
    )
    train, val = device_inputs(data, "train", "cpu"), device_inputs(data, "val", "cpu")
    idx = every(train)
    plain = train.take(idx, train=False)
    augmented = train.take(idx, train=True)
    assert augmented.shape == plain.shape and augmented.dtype == torch.float32
    changed = (augmented != plain).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.9  # all but the samples drawn unflipped and unshifted
    for _ in range(3):  # val batches: the same every time, whatever the random state
        torch.rand(5)
        assert torch.equal(val.take(every(val), train=False), torch.from_numpy(data.x_val))


def test_hflip_mirrors_about_half_of_the_samples(mnist):
    data = module("data=mnist", f"data.root={mnist}", "data.augment.hflip=true")
    inputs = device_inputs(data, "train", "cpu")
    idx = every(inputs)
    plain = inputs.take(idx, train=False)
    torch.manual_seed(0)
    flipped = inputs.take(idx, train=True)
    mirrored = (flipped == torch.flip(plain, dims=[-1])).flatten(1).all(dim=1)
    kept = (flipped == plain).flatten(1).all(dim=1)
    assert (mirrored ^ kept).all()  # each sample exactly one of the two
    assert 10 < int(mirrored.sum()) < len(idx) - 10  # p = 0.5 over 90 samples


def test_crop_padding_shifts_each_image_and_fills_with_black(mnist):
    p = 2
    data = module("data=mnist", f"data.root={mnist}", f"data.augment.crop_padding={p}")
    inputs = device_inputs(data, "train", "cpu")
    torch.manual_seed(1)
    cropped = inputs.take(every(inputs), train=True).numpy()
    padded = np.pad(data.stored["train"], ((0, 0), (0, 0), (p, p), (p, p)))  # zeros: black
    shifts = []
    for i, sample in enumerate(cropped):
        found = [
            (dy - p, dx - p)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(
                data.transform(padded[i : i + 1, :, dy : dy + 28, dx : dx + 28])[0], sample
            )
        ]
        assert len(found) == 1, f"sample {i} is no single shift of its image"
        shifts.append(found[0])
    assert len(set(shifts)) > 10 and sum(s != (0, 0) for s in shifts) > len(shifts) // 2


def test_the_same_seed_gives_the_same_augmented_batch(mnist):
    data = module(
        "data=mnist", f"data.root={mnist}", "data.augment.hflip=true", "data.augment.crop_padding=3"
    )
    inputs = device_inputs(data, "train", "cpu", takes="flat")
    idx = torch.tensor([5, 0, 17, 17, 40])
    batches = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        batches.append(inputs.take(idx, train=True))
    assert batches[0].shape == (5, 784)
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])


def test_bad_storage_and_augment_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("data.storage=int8"))
    assert str(info.value) == (
        "data.storage must be one of: auto, uint8, float16, float32. Got 'int8'. "
        "Did you mean 'uint8'?"
    )
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("data.augment.crop_padding=-1"))
    assert str(info.value) == (
        "data.augment.crop_padding must be an int in the range [0, inf). Got -1."
    )
    message = (
        "data.storage: uint8 keeps 8-bit pixels, and digits loads float pixels. Use auto, "
        "float16 or float32."
    )
    with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
        module("data.image_size=16", "data.storage=uint8")


def test_float16_is_refused_for_pixels_it_would_change():
    x = np.linspace(1000, 1001, 4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)
    rows = (np.arange(2), np.arange(2, 3), np.arange(3, 4))
    with pytest.raises(
        UserError, match=r"^data.storage: float16 would change wide's pixels by up to"
    ):
        stored_splits(x, rows, "float16", None, None, "wide")
    kept = stored_splits(x / 1000 - 1, rows, "float16", None, None, "narrow")  # [0, 1]: fine
    assert [len(k) for k in kept] == [2, 1, 1] and kept[0].dtype == np.float16


@pytest.mark.gpu
def test_take_on_cuda_matches_the_cpu_and_runs_in_a_cuda_graph(mnist):
    data = module(
        "data=mnist", f"data.root={mnist}", "data.augment.hflip=true", "data.augment.crop_padding=4"
    ).resized(32)
    cpu = device_inputs(data, "train", "cpu")
    gpu = device_inputs(data, "train", "cuda")
    assert gpu.x.dtype == torch.uint8 and gpu.x.is_cuda
    idx = torch.arange(16, device="cuda")
    np.testing.assert_allclose(
        gpu.take(idx, train=False).cpu().numpy(), data.x_train[:16], rtol=0, atol=1e-5
    )
    assert torch.equal(cpu.take(idx.cpu(), False), torch.from_numpy(data.x_train[:16]))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph, as capture requires
        for _ in range(2):
            gpu.take(idx, train=True)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gpu.take(idx, train=True)
    batches = []
    for _ in range(2):
        graph.replay()
        batches.append(out.clone())
    torch.cuda.synchronize()
    assert out.shape == (16, 1, 32, 32)
    assert not torch.equal(batches[0], batches[1])  # fresh random draws on each replay
