"""Your own data: arrays (.npz), long-format time series and text, for every model that reads
them; bad files get one clear message."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import cli, train
from dlrun import use
from dlrun.errors import UserError


def sines(n: int = 240, steps: int = 60, seed: int = 0):
    """Noisy sine waves of three frequencies and random lengths, padded with zeros: the class
    is the frequency."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, steps + 1, size=n)
    label = rng.integers(0, 3, size=n)
    t = np.arange(steps)
    x = np.sin(2 * np.pi * (label[:, None] + 1) * t / 20 + rng.uniform(0, 6, size=(n, 1)))
    x = x + 0.3 * rng.standard_normal((n, steps))
    x[t[None, :] >= lengths[:, None]] = 0
    return x.astype(np.float32), label, lengths


def npz(tmp_path, name: str = "data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_sequences_with_lengths_train_predict_and_evaluate(tmp_path):
    x, y, lengths = sines()
    path = npz(tmp_path, x=x, y=y, lengths=lengths)
    summary, run_dir = train(
        tmp_path, "data=npz", f"data.path={path}", "model=attention", "trainer.max_epochs=3"
    )
    assert summary["task"] == "classification" and summary["test"]["accuracy"] > 0  # it ran
    saved = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())
    assert saved["spec"]["kind"] == "sequence" and saved["spec"]["shape"] == [60, 1]
    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    new = npz(tmp_path, "new.npz", x=x[:12], lengths=lengths[:12])
    frame = pd.read_csv(use.predict_file(run_dir, new, tmp_path / "p.csv"))
    assert len(frame) == 12 and set(frame.columns) == {
        "prediction",
        "proba_0",
        "proba_1",
        "proba_2",
    }


def test_npz_normalizes_over_valid_steps_only_and_keeps_padding_zero(tmp_path):
    from omegaconf import OmegaConf

    from conftest import make_cfg
    from dlrun.data import build_data

    x, y, lengths = sines()
    x[x != 0] += 5.0  # valid steps around 5: padding would pull the mean towards 0
    path = npz(tmp_path, x=x, y=y, lengths=lengths)
    data = build_data(OmegaConf.to_object(make_cfg("data=npz", f"data.path={path}")).data)
    mean = data.norm[0].reshape(-1)[0]
    assert abs(mean - 5.0) < 0.1
    train_x, train_lengths = data.x_train, data.lengths["train"]
    padded = np.arange(60)[None, :] >= train_lengths[:, None]
    assert np.all(train_x[padded] == 0) and abs(train_x[~padded].mean()) < 1e-3


@pytest.mark.parametrize("model", ["mlp", "random_forest"])
def test_npz_tables_and_images(tmp_path, model):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 15).astype(np.uint8)[:, None]  # (N, 1, 8, 8) 8-bit pixels
    path = npz(tmp_path, "images.npz", x=images, y=digits.target)
    summary, _ = train(
        tmp_path,
        "data=npz",
        f"data.path={path}",
        f"model={model}",
        "trainer.max_epochs=5",
        "model.n_estimators=50" if model == "random_forest" else "trainer.max_epochs=5",
    )
    assert summary["test"]["accuracy"] > 0.9
    split = np.where(np.arange(len(digits.target)) % 5 == 0, "test", "train")
    table = npz(tmp_path, "table.npz", x=digits.data, y=digits.target, split=split)
    summary, _ = train(
        tmp_path,
        "data=npz",
        f"data.path={table}",
        f"model={model}",
        "trainer.max_epochs=5",
        "model.n_estimators=50" if model == "random_forest" else "trainer.max_epochs=5",
        name="table",
    )
    assert summary["test"]["accuracy"] > 0.9


def test_multi_output_regression_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    y = np.stack([x[:, 0] * 3 + 1, x[:, 1] - x[:, 2]], axis=1)
    summary, _ = train(
        tmp_path, "data=npz", f"data.path={npz(tmp_path, x=x, y=y)}", "trainer.max_epochs=20"
    )
    assert summary["task"] == "regression" and summary["test"]["r2"] > 0.8


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"x": np.array([np.zeros(3), np.zeros(5)], dtype=object), "y": np.array([0, 1])},
            "holds Python objects (an object array: ragged sequences or mixed types",
        ),
        ({"x": np.zeros((10, 4))}, "has no array 'y'; it needs 'x' (the samples) and 'y'"),
        (
            {"x": np.zeros((10, 4)), "y": np.zeros(9)},
            "has 10 samples in 'x' but 9 in 'y'; every array needs one row per sample.",
        ),
        (
            {"x": np.zeros((10, 6)), "y": np.arange(10) % 2, "lengths": np.full(10, 7)},
            "'lengths' of",
        ),
        (
            {"x": np.zeros((10, 2, 2, 2, 2)), "y": np.arange(10) % 2},
            "has shape (10, 2, 2, 2, 2); it must be",
        ),
    ],
    ids=["object", "missing_y", "rows", "lengths", "shape"],
)
def test_bad_npz_files_get_one_clear_message(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = cli("data=npz", f"data.path={path}", "trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("dlrun: data.path: ") and message in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_nan_in_a_sequence_is_named_by_sample_and_step(tmp_path):
    x, y, lengths = sines(n=60)
    x[7, 3] = np.nan
    with pytest.raises(
        UserError, match=r"NaN input value\(s\); the first is sample 7, time step 3, feature 0"
    ):
        train(tmp_path, "data=npz", f"data.path={npz(tmp_path, x=x, y=y, lengths=lengths)}")


def long_rows(n_ids: int = 120, seed: int = 0) -> pd.DataFrame:
    """Long-format sensor readings, shuffled: one sine (its frequency is the label) per id,
    of random length, ordered by a timestamp column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ids):
        label, steps, phase = rng.integers(0, 3), rng.integers(15, 40), rng.uniform(0, 6)
        wave = np.sin(2 * np.pi * (label + 1) * np.arange(steps) / 20 + phase)
        for k in range(steps):
            rows.append(
                {
                    "sensor": f"s{i:03d}",
                    "time": f"2024-01-01 00:{k:02d}:00",
                    "value": wave[k] + 0.2 * rng.standard_normal(),
                    "kind": rng.choice(["a", "b"]),
                    "label": ["low", "mid", "high"][label],
                }
            )
    return pd.DataFrame(rows).sample(frac=1, random_state=0)


LONG = ("data=csv", "data.target=label", "data.sequence.id=sensor", "data.sequence.order=time")


def test_long_format_time_series_train_predict_and_evaluate(tmp_path):
    frame = long_rows()
    frame.to_csv(tmp_path / "long.csv", index=False)
    summary, run_dir = train(
        tmp_path,
        *LONG,
        f"data.path={tmp_path / 'long.csv'}",
        "model=cnn1d",
        "trainer.max_epochs=10",
    )
    assert summary["test"]["accuracy"] > 0.8  # 24 test sequences
    saved = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())
    assert saved["spec"]["kind"] == "sequence" and saved["table"]["kind"] == "sequence"
    assert saved["spec"]["shape"] == [39, 3]  # the longest sequence; value, kind=a, kind=b
    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    new = frame[frame["sensor"].isin(["s005", "s001", "s002"])].drop(columns="label")
    new.to_csv(tmp_path / "new.csv", index=False)
    predicted = pd.read_csv(use.predict_file(run_dir, tmp_path / "new.csv", tmp_path / "p.csv"))
    assert list(predicted["id"]) == ["s001", "s002", "s005"]  # one row per sequence, by id
    truth = frame.drop_duplicates("sensor").set_index("sensor")["label"]
    assert (predicted["prediction"].to_numpy() == truth[predicted["id"]].to_numpy()).mean() >= 2 / 3


def test_long_format_cuts_to_the_most_recent_steps(tmp_path):
    from omegaconf import OmegaConf

    from conftest import make_cfg
    from dlrun.data import build_data

    frame = long_rows(n_ids=60)
    frame.to_csv(tmp_path / "long.csv", index=False)
    conf = OmegaConf.to_object(
        make_cfg(
            *LONG,
            f"data.path={tmp_path / 'long.csv'}",
            "data.sequence.max_len=10",
            "data.normalize=false",
        )
    )
    data = build_data(conf.data)
    assert data.spec.shape == (10, 3) and data.lengths["train"].max() == 10
    # sensor s000's last reading is the last step of its sample
    rows = frame[frame["sensor"] == "s000"].sort_values("time")
    encoder = data.encoder
    sample = list(encoder.ids_).index("s000")
    x = encoder.place(encoder.rows.transform(frame, "t"))[sample]  # (10, 3)
    assert x[-1, 0] == pytest.approx(rows["value"].iloc[-1], rel=1e-6)
    assert x[0, 0] == pytest.approx(rows["value"].iloc[-10], rel=1e-6)


def test_long_format_mistakes_are_named(tmp_path):
    frame = long_rows(n_ids=30)
    frame.loc[frame["sensor"] == "s004", "label"] = ["low", "high"] * (
        len(frame[frame["sensor"] == "s004"]) // 2
    ) + ["low"] * (len(frame[frame["sensor"] == "s004"]) % 2)
    frame.to_csv(tmp_path / "varying.csv", index=False)
    result = cli(*LONG, f"data.path={tmp_path / 'varying.csv'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "must be the same on every row of a sequence (data.sequence.id), but it varies within 1 ids: 's004'"
        in result.stderr
    )
    frame = long_rows(n_ids=30)
    frame["time"] = "soon"
    frame.to_csv(tmp_path / "when.csv", index=False)
    result = cli(*LONG, f"data.path={tmp_path / 'when.csv'}", cwd=tmp_path)
    assert result.returncode == 2 and "data.sequence.order: column 'time'" in result.stderr
    result = cli(
        "data=csv",
        "data.target=label",
        "data.sequence.id=sensor",
        f"data.path={tmp_path / 'when.csv'}",
        cwd=tmp_path,
    )
    assert (
        result.returncode == 2
        and "data.sequence.id and data.sequence.order go together" in result.stderr
    )


def word_order(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Sentences holding 'alpha' and 'omega' among filler words: the label is which comes first,
    so every bag of tokens is the same for both labels and only the order tells them apart."""
    rng = np.random.default_rng(seed)
    fill = (
        "the a some very old new big small red blue quick slow dog cat bird house tree car".split()
    )
    rows = []
    for _ in range(n):
        words = list(rng.choice(fill, size=rng.integers(4, 10)))
        first = rng.integers(0, 2)
        a, b = sorted(rng.choice(len(words) + 1, size=2, replace=False))
        words.insert(a, "alpha" if first == 0 else "omega")
        words.insert(b + 1, "omega" if first == 0 else "alpha")
        rows.append(
            {"text": " ".join(words), "label": "alpha_first" if first == 0 else "omega_first"}
        )
    return pd.DataFrame(rows)


TEXT = ("data=csv", "data.target=label", "data.text=text")


def test_text_trains_and_predicts_new_text_from_the_run_folder_alone(tmp_path):
    import os

    word_order().to_csv(tmp_path / "text.csv", index=False)
    summary, run_dir = train(
        tmp_path, *TEXT, f"data.path={tmp_path / 'text.csv'}", "trainer.max_epochs=3"
    )
    assert 0.35 < summary["test"]["accuracy"] < 0.65  # a bag of tokens cannot tell the order
    saved = json.loads((run_dir / "preprocessing" / "preprocessing.json").read_text())
    assert saved["table"]["kind"] == "text" and saved["spec"]["vocab_size"] > 18
    assert (run_dir / "preprocessing" / "tokenizer.json").is_file()
    pd.DataFrame({"text": ["alpha the dog omega", "never seen words here", ""]}).to_csv(
        tmp_path / "new.csv", index=False
    )
    before = use.predict_file(run_dir, tmp_path / "new.csv", tmp_path / "a.csv").read_bytes()
    os.remove(tmp_path / "text.csv")
    assert (
        use.predict_file(run_dir, tmp_path / "new.csv", tmp_path / "b.csv").read_bytes() == before
    )
    assert len(pd.read_csv(tmp_path / "b.csv")) == 3


def test_character_tokens_and_text_mistakes(tmp_path):
    from omegaconf import OmegaConf

    from conftest import make_cfg
    from dlrun.data import build_data

    word_order(n=200).to_csv(tmp_path / "text.csv", index=False)
    conf = OmegaConf.to_object(
        make_cfg(*TEXT, f"data.path={tmp_path / 'text.csv'}", "data.tokenizer=char")
    )
    data = build_data(conf.data)
    assert data.spec.vocab_size < 40 and data.x_train.dtype == np.int64  # letters, space, pad, unk
    assert data.lengths["train"].max() == data.spec.shape[0] > 30  # one token per character
    pd.DataFrame({"text": [None] * 20, "label": [0, 1] * 10}).to_csv(
        tmp_path / "empty.csv", index=False
    )
    result = cli(*TEXT, f"data.path={tmp_path / 'empty.csv'}", cwd=tmp_path)
    assert (
        result.returncode == 2
        and "the text column 'text' of" in result.stderr
        and "is empty" in result.stderr
    )
    pd.DataFrame({"text": ["same"] * 20, "label": [0, 1] * 10}).to_csv(
        tmp_path / "one.csv", index=False
    )
    result = cli(*TEXT, f"data.path={tmp_path / 'one.csv'}", cwd=tmp_path)
    assert result.returncode == 2 and "has a single distinct token" in result.stderr


def test_a_table_is_a_sequence_only_when_asked(tmp_path):
    from conftest import make_cfg
    from dlrun.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"model=attention takes sequence input and cannot read data=iris \("
    ):
        train(tmp_path, "data=iris", "model=attention")
    summary, _ = train(
        tmp_path, "data=iris", "data.as_sequence=true", "model=attention", "trainer.max_epochs=20"
    )
    assert summary["test"]["accuracy"] > 0.6
    with pytest.raises(ConfigError, match="data.as_sequence: only a table is read as a sequence"):
        train(tmp_path, "data.as_sequence=true", name="digits")
    del make_cfg


SEQUENCE_MODELS = ["rnn", "gru", "lstm", "attention", "cnn1d"]


@pytest.fixture(scope="module")
def doors(tmp_path_factory):
    """One small file per door: padded sequences (.npz), long-format rows (.csv), text (.csv)."""
    folder = tmp_path_factory.mktemp("doors")
    x, y, lengths = sines(n=150)
    np.savez(folder / "seq.npz", x=x, y=y, lengths=lengths)
    np.savez(folder / "new.npz", x=x[:5], lengths=lengths[:5])
    frame = long_rows(n_ids=90)
    frame.to_csv(folder / "long.csv", index=False)
    frame[frame["sensor"] < "s003"].drop(columns="label").to_csv(
        folder / "long_new.csv", index=False
    )
    word_order(n=240).to_csv(folder / "text.csv", index=False)
    pd.DataFrame({"text": ["alpha the cat omega", "omega red alpha"]}).to_csv(
        folder / "text_new.csv", index=False
    )
    return {
        "npz": (("data=npz", f"data.path={folder / 'seq.npz'}"), folder / "new.npz", 5),
        "long": ((*LONG, f"data.path={folder / 'long.csv'}"), folder / "long_new.csv", 3),
        "text": ((*TEXT, f"data.path={folder / 'text.csv'}"), folder / "text_new.csv", 2),
    }


@pytest.mark.parametrize("door", ["npz", "long", "text"])
@pytest.mark.parametrize("model", SEQUENCE_MODELS)
def test_every_sequence_model_reads_every_door(tmp_path, doors, door, model):
    """Each sequence model on each door: it trains, dlrun-eval reproduces its test metrics
    exactly, and dlrun-predict reads new samples of that door."""
    overrides, new, rows = doors[door]
    small = ("model.hidden_size=16",) if model in ("rnn", "gru", "lstm") else ()
    summary, run_dir = train(tmp_path, *overrides, f"model={model}", "trainer.max_epochs=2", *small)
    assert summary["status"] == "completed" and 0 <= summary["test"]["accuracy"] <= 1
    assert use.evaluate(run_dir, [], tmp_path / "eval")["test"] == summary["test"]
    predicted = pd.read_csv(use.predict_file(run_dir, new, tmp_path / "p.csv"))
    assert (
        len(predicted) == rows and predicted.filter(like="proba_").sum(axis=1).round(6).eq(1).all()
    )


def test_a_text_run_resumes_exactly_with_its_saved_tokenizer(tmp_path, monkeypatch):
    from conftest import resumes_exactly

    word_order(n=300).to_csv(tmp_path / "text.csv", index=False)
    args = (
        *TEXT,
        f"data.path={tmp_path / 'text.csv'}",
        "model=gru",
        "model.hidden_size=16",
        "trainer.max_epochs=4",
    )
    full, full_dir = train(tmp_path, *args, name="full")
    resumes_exactly(tmp_path, monkeypatch, args, full, full_dir)
    frame = pd.read_csv(tmp_path / "text.csv")
    frame.loc[0, "text"] = "changed after training"
    frame.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(
        UserError, match=r"data.path: the file .*text.csv changed since the run trained"
    ):
        train(
            tmp_path,
            *args,
            "trainer.max_epochs=5",
            f"trainer.resume={tmp_path / 'cut'}",
            name="late",
        )


@pytest.mark.parametrize(("door", "model"), [("npz", "gru"), ("long", "cnn1d"), ("text", "lstm")])
def test_an_exported_sequence_model_takes_lengths_and_text_token_ids(tmp_path, doors, door, model):
    """The ONNX export of a sequence run takes padded samples and their lengths (text: token
    ids of the tokenizer copied beside it) and gives dlrun-predict's probabilities on new data;
    what the padding holds never changes them."""
    import onnxruntime

    overrides, new, rows = doors[door]
    _, run_dir = train(tmp_path, *overrides, f"model={model}", "trainer.max_epochs=1")
    path = use.export(run_dir, "onnx", None)
    contract = json.loads(path.with_name(path.name + ".json").read_text())
    assert contract["lengths"]["name"] == "lengths" and contract["lengths"]["dtype"] == "int64"
    expected = pd.read_csv(use.predict_file(run_dir, new, tmp_path / "p.csv"))
    expected = expected.filter(like="proba_").to_numpy()
    if door == "text":  # as a user would: the tokenizer beside the model, the contract's steps
        from tokenizers import Tokenizer

        assert contract["input"]["dtype"] == "int64"
        tokenizer = Tokenizer.from_file(str(path.with_name(contract["input"]["tokenizer"])))
        steps = contract["input"]["shape"][1]
        texts = pd.read_csv(new)["text"]
        ids = [tokenizer.encode(t).ids[:steps] for t in texts]
        x = np.zeros((len(ids), steps), dtype=np.int64)
        for row, tokens in enumerate(ids):
            x[row, : len(tokens)] = tokens
        lengths = np.array([len(t) for t in ids], dtype=np.int64)
    elif door == "npz":
        arrays = np.load(new)
        x, lengths = arrays["x"][..., None].astype(np.float32), arrays["lengths"].astype(np.int64)
    else:  # long-format rows, grouped by id as the run's encoder groups them
        trained = use.Trained(run_dir)
        x, lengths, _ = trained.data.encoder.transform(pd.read_csv(new), "new rows")
        x, lengths = x.astype(np.float32), lengths.astype(np.int64)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x, "lengths": lengths})[0]
    assert len(got) == rows and np.allclose(got, expected, atol=1e-5)
    padded = np.arange(x.shape[1])[None, :] >= lengths[:, None]
    assert padded.any()
    x[padded] = 7 if door != "text" else 3  # garbage in the padding
    assert np.allclose(session.run(None, {"input": x, "lengths": lengths})[0], got, atol=1e-6)


def test_an_exported_bag_of_tokens_model_counts_the_token_ids(tmp_path, doors):
    overrides, new, _ = doors["text"]
    _, run_dir = train(tmp_path, *overrides, "model=mlp", "trainer.max_epochs=1")
    path = use.export(run_dir, "torchscript", None)
    contract = json.loads(path.with_name(path.name + ".json").read_text())
    assert "lengths" not in contract and contract["input"]["dtype"] == "int64"
    assert path.with_name(contract["input"]["tokenizer"]).is_file()


def test_padded_sequences_stream_exactly_as_they_train_from_the_device(tmp_path):
    """Batches sliced on the device and batches streamed by a DataLoader carry the same lengths:
    the same losses and metrics, epoch by epoch."""
    from conftest import read_metrics

    runs = [
        train(
            tmp_path / where,
            "data=sines",
            "data.n_samples=240",
            "model=cnn1d",
            "trainer.max_epochs=2",
            f"trainer.data_placement={where}",
        )
        for where in ("device", "stream")
    ]
    (one, a), (two, b) = runs
    assert read_metrics(a)[-1]["train_loss"] == read_metrics(b)[-1]["train_loss"]
    assert one["test"] == two["test"]


def test_text_through_the_commands_a_user_types(tmp_path, doors):
    """`dlrun` trains on a text CSV, `dlrun-predict` reads new texts, `dlrun-eval` gives the
    run's test metrics again: the three commands, as a user types them."""
    overrides, new, _ = doors["text"]
    run_dir = tmp_path / "run"
    result = cli(
        *overrides, "model=gru", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    out = tmp_path / "predicted.csv"
    result = cli(
        f"run_dir={run_dir}", f"input={new}", f"output={out}", cwd=tmp_path, tool="dlrun-predict"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(pd.read_csv(out)["prediction"].map(type).unique()) == [str]  # class names
    result = cli(
        f"run_dir={run_dir}", f"out_dir={tmp_path / 'eval'}", cwd=tmp_path, tool="dlrun-eval"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"] == summary["test"]
    assert "evaluated again" in result.stdout  # the table a run ends with, not raw JSON
    assert (
        f"│ accuracy │ {summary['val']['accuracy']:.4f} │ {summary['test']['accuracy']:.4f} │"
        in (result.stdout)
    )
