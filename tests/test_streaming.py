"""Training batches streamed from host memory through a DataLoader train exactly like the
on-device path: the same shuffled batches, the same steps."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import make_cfg, read_metrics, train
from dlrun.graphs import graph_plan
from dlrun.training import use_stream
from dlrun.validate import validate

BASE = ("trainer.max_epochs=2", "trainer.device=cpu", "trainer.batch_size=100")


def metrics(run_dir):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in read_metrics(run_dir)]


@pytest.mark.parametrize(
    ("data", "workers"),
    [("digits", 2), ("wine", 0)],  # compact uint8 images prepared per batch; a plain table
)
def test_streamed_batches_train_exactly_like_device_batches(tmp_path, caplog, data, workers):
    overrides = (*BASE, f"data={data}")
    on_device, device_dir = train(tmp_path, *overrides, name="device")
    with caplog.at_level(logging.INFO, logger="dlrun"):
        streamed, stream_dir = train(
            tmp_path,
            *overrides,
            "trainer.data_placement=stream",
            f"trainer.workers={workers}",
            name="stream",
        )
    assert "streams from host memory" in caplog.text
    assert metrics(stream_dir) == metrics(device_dir)
    assert streamed["test"] == on_device["test"]


def test_augmented_streamed_batches_are_reproducible(tmp_path):
    aug = (*BASE, "trainer.data_placement=stream", "data.augment.crop_padding=1")
    _, first = train(tmp_path, *aug, name="one")
    _, again = train(tmp_path, *aug, name="two")
    _, plain = train(tmp_path, *BASE, "trainer.data_placement=stream", name="plain")
    assert metrics(first) == metrics(again) != metrics(plain)


def test_placement_choice():
    cpu = torch.device("cpu")
    assert use_stream("auto", cpu, 10**12) is False  # on a CPU the data is where it trains from
    assert use_stream("stream", cpu, 10) is True
    assert use_stream("device", torch.device("cuda"), 10**15) is False
    conf = validate(make_cfg())
    enabled, why = graph_plan(conf, torch.device("cuda"), 1, torch.nn.Linear(2, 2), True)
    assert not enabled and "streams from host memory" in why
