"""The benchmark runs and writes its JSON (timings are not asserted: they come from `make bench`)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_bench_writes_every_case(tmp_path):
    from dlrun import bench

    out = tmp_path / "bench.json"
    bench.main(
        ["--scale", "0.01", "--epochs", "2", "--repeats", "1", "--batch", "64", "--out", str(out)]
    )
    result = json.loads(out.read_text())
    assert [c["case"] for c in result["cases"]] == ["mlp", "lenet5", "lstm"]
    folders = result["folder_cases"]
    assert [c["case"] for c in folders] == ["folder_lenet5", "folder_resnet18"]
    for case in folders:
        assert case["dlrun"]["streamed"] and case["ratio"] > 0 and case["dlrun"]["peak_mb"] > 0
    for case in result["cases"]:
        assert case["dlrun_s_per_epoch"] > 0 and case["hand_s_per_epoch"] > 0 and case["ratio"] > 0
        assert "diagnostics_cost" in case
    cli = result["cli"]
    assert cli["help_s"] > 0
    # the floor is measured beside dlrun's start: a bare first step includes the bare import
    assert 0 < cli["import_torch_s"] < cli["bare_torch_first_step_s"]
    assert cli["start_to_first_step_s"] > 0
