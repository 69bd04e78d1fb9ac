"""Transfer learning: a run starts from another run's weights (model.init_from), matched by name
or layer by layer, its head kept for the classes both have; data.keep_classes and
data.train_per_class for related tasks and few labels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import cli, make_cfg, read_metrics, train
from dlrun.errors import UserError

SMALL = ("model.hidden_sizes=[32,16]", "trainer.max_epochs=2")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An MLP trained on all ten digits."""
    folder = tmp_path_factory.mktemp("source")
    _, run_dir = train(folder, *SMALL)
    return run_dir


def started(*overrides: str):
    """The network a run with `overrides` starts training from, and its prepared data."""
    from dlrun.runner import build_network, prepare, start_from
    from dlrun.transfer import load_into
    from dlrun.validate import validate

    conf = validate(make_cfg(*overrides))
    prep = start_from(conf, prepare(conf))
    net = build_network(prep, conf)
    line = load_into(net, prep.init, prep.spec)
    return net.eval(), prep, line


def logits(net, x) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(x)).numpy()


def test_the_head_keeps_the_rows_of_shared_classes_and_the_body_is_copied(source):
    from dlrun.use import Trained

    before = Trained(source)
    net, prep, line = started(*SMALL, f"model.init_from={source}", "data.keep_classes=[3,5,7]")
    x = prep.splits["test"][0]  # normalized by the source run's statistics: its own inputs
    assert prep.spec.class_names == ("3", "5", "7")
    old = logits(before.model.cpu().eval(), x)
    # the shared classes' logits (to float rounding: a 3-row matmul sums in another order)
    assert np.allclose(logits(net, x), old[:, [3, 5, 7]], rtol=1e-6, atol=1e-6)
    assert "(3, 5, 7)" in line and "re-initialised" not in line


def test_a_head_with_no_class_in_common_is_reinitialised_and_nothing_else(tmp_path):
    from dlrun.checkpoints import load_checkpoint

    _, source = train(tmp_path, *SMALL, "data.keep_classes=[0,1,2,3,4]")
    net, _, line = started(*SMALL, f"model.init_from={source}", "data.keep_classes=[5,6,7,8,9]")
    saved = load_checkpoint(source / "checkpoints" / "best.pt")["model"]
    now = net.state_dict()
    assert "re-initialised: 4.bias, 4.weight (5 classes -> 5, none in common)" in line
    for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(now[key], saved[key]), key
    assert now["4.weight"].shape == (5, 16)
    assert not torch.equal(now["4.weight"], saved["4.weight"])


def test_an_autoencoders_encoder_starts_a_classifier_layer_by_layer(tmp_path):
    from dlrun.checkpoints import load_checkpoint

    _, ae = train(
        tmp_path,
        "model=autoencoder",
        "model.architecture=mlp",
        "model.hidden_sizes=[32,16]",
        "model.latent_size=8",
        "trainer.max_epochs=1",
    )
    net, _, line = started("model.hidden_sizes=[32,16,8]", f"model.init_from={ae}")
    encoder = load_checkpoint(ae / "checkpoints" / "best.pt")["model"]
    now = net.state_dict()
    for mine, theirs in (("0", "1"), ("2", "3"), ("4", "5")):  # Flatten first in the encoder
        assert torch.equal(now[f"{mine}.weight"], encoder[f"encoder.{theirs}.weight"])
    assert "its encoder): 6 of 8 tensors, matched layer by layer" in line
    assert "re-initialised: 6.bias, 6.weight" in line


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.hidden_sizes=[64,16]",), r"does not fit this Sequential: 0.weight 64x64"),
        (
            ("model=lenet5", "model.input_size=null"),
            r"does not fit this Sequential: 0.weight 6x1x5x5",
        ),
        (("model.hidden_sizes=[32,16]", "data.normalize=false"), r"set data.normalize=true"),
        (("model.hidden_sizes=[32,16]", "model.init_part=decoder"), r"Its parts: 0, 2, 4"),
        (("model=random_forest",), r"'random_forest' is not a network"),
    ],
)
def test_weights_that_do_not_fit_are_named(source, overrides, message):
    with pytest.raises(UserError, match=message):
        started(*overrides, f"model.init_from={source}")


def test_another_image_size_says_what_to_set(tmp_path):
    _, lenet = train(tmp_path, "model=lenet5", "trainer.max_epochs=1")
    with pytest.raises(UserError, match=r"learned from 32x32 images; .* Set model.input_size=32"):
        started("model=lenet5", "model.input_size=16", f"model.init_from={lenet}")


def test_a_missing_start_is_one_clear_message(tmp_path):
    result = cli("model.init_from=nowhere", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.init_from: 'nowhere' is neither a run folder" in result.stderr


def test_a_started_run_resumes_without_its_start(tmp_path, source, monkeypatch):
    """The weights it started from are in its checkpoints: resuming needs no init_from source."""
    from conftest import sigint_after_epoch
    from dlrun.errors import Interrupted

    start = tmp_path / "start"
    shutil.copytree(source, start)
    args = ("model.hidden_sizes=[32,16]", "trainer.max_epochs=3", f"model.init_from={start}")
    full, full_dir = train(tmp_path, *args, name="full")
    with sigint_after_epoch(monkeypatch, 1), pytest.raises(Interrupted):
        train(tmp_path, *args, name="cut")
    shutil.rmtree(start)
    again, _ = train(tmp_path, *args, f"trainer.resume={tmp_path / 'cut'}", name="again")
    times = ("train_time_s", "epoch_time_s", "health/probe_time_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in times} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(full_dir))
    assert again["test"] == full["test"]


def test_classes_and_labels_per_class_keep_the_full_splits_rows():
    from dlrun.data import build_data
    from dlrun.validate import validate

    def data(*overrides):
        return build_data(validate(make_cfg(*overrides)).data)

    full = data()
    few = data("data.keep_classes=[5,6,7,8,9]", "data.train_per_class=10")
    assert few.spec.class_names == ("5", "6", "7", "8", "9") and few.spec.num_classes == 5
    assert np.bincount(few.y_train).tolist() == [10] * 5
    # validation and test keep every row of the kept classes, the rows the full split has
    kept = np.isin(full.y_test, [5, 6, 7, 8, 9])
    assert np.array_equal(few.y_test, full.y_test[kept] - 5)
    assert len(few.y_val) == np.isin(full.y_val, [5, 6, 7, 8, 9]).sum()
    with pytest.raises(UserError, match=r"data.keep_classes: 'eleven' is not a class of 'digits'"):
        data("data.keep_classes=[1,eleven]")
    with pytest.raises(UserError, match=r"data.train_per_class: 'diabetes' is a regression"):
        data("data=diabetes", "data.train_per_class=3")


def test_a_text_run_starts_another_with_its_own_tokenizer(tmp_path):
    """A sequence model on text: the new run reads its texts with the tokenizer the weights
    learned from (token ids mean the same words), and starts from the same outputs."""
    from test_own_data import TEXT, word_order

    from dlrun.use import Trained

    word_order(n=240).to_csv(tmp_path / "text.csv", index=False)
    args = (*TEXT, f"data.path={tmp_path / 'text.csv'}", "model=gru", "model.hidden_size=16")
    _, source = train(tmp_path, *args, "trainer.max_epochs=1")
    word_order(n=200, seed=1).to_csv(tmp_path / "more.csv", index=False)  # other texts
    more = (*TEXT, f"data.path={tmp_path / 'more.csv'}", "model=gru", "model.hidden_size=16")
    net, prep, line = started(*more, f"model.init_from={source}")
    assert "re-initialised" not in line
    before = Trained(source)
    assert prep.data.encoder.tokenizer_.to_str() == before.data.encoder.tokenizer_.to_str()
    x = torch.as_tensor(prep.splits["test"][0])
    lengths = torch.as_tensor(prep.data.lengths["test"])
    with torch.no_grad():
        assert torch.allclose(net(x, lengths), before.model.cpu().eval()(x, lengths), atol=1e-6)
