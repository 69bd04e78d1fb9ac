"""Sequence models on variable-length batches: a sequence padded into a batch gives what it gives
alone, for features (B, T, D) and token ids (B, T); `cnn1d` trains; its config errors are clear."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_cfg, read_metrics, train
from dlrun.data import DataSpec
from dlrun.errors import ConfigError
from dlrun.registry import get_model
from dlrun.validate import validate

STEPS, FEATURES, CLASSES, VOCAB = 11, 3, 4, 50
LENGTHS = (11, 7, 3, 1, 8, 2)  # every pooling stage of cnn1d meets a partial window
SMALL = {  # small sizes; two layers, so that stacked (and bidirectional) layers are covered
    "rnn": {"hidden_size": 8, "num_layers": 2, "embed_size": 6},
    "gru": {"hidden_size": 8, "num_layers": 2, "embed_size": 6},
    "lstm": {"hidden_size": 8, "num_layers": 2, "embed_size": 6},
    "attention": {"d_model": 16, "heads": 4, "ff_size": 32, "embed_size": 6},
    "cnn1d": {"channels": [8, 8, 16], "embed_size": 6},
}
CASES = [
    *[
        (kind, {"pooling": pooling, "bidirectional": bidirectional})
        for kind in ("rnn", "gru", "lstm")
        for pooling in ("last", "mean", "max")
        for bidirectional in (False, True)
    ],
    ("attention", {"pooling": "cls"}),
    ("attention", {"pooling": "mean", "positions": "sinusoidal"}),
    ("cnn1d", {"global_pooling": "mean"}),
    ("cnn1d", {"global_pooling": "max", "pooling": "avg", "dilation": [1, 2, 3]}),
    ("cnn1d", {"global_pooling": "mean", "pooling": "none", "kernel_size": 4, "dilation": 2}),
]
EVERY_CASE = pytest.mark.parametrize(
    ("kind", "settings"),
    CASES,
    ids=[f"{kind}-" + "-".join(map(str, settings.values())) for kind, settings in CASES],
)
FEATURES_AND_TOKENS = pytest.mark.parametrize("tokens", [False, True], ids=["features", "tokens"])


def build(kind: str, settings: dict, tokens: bool):
    """The model as the registry builds it from its config's defaults and `settings`."""
    entry = get_model(kind)
    cfg = entry.schema(**SMALL[kind], **settings)
    if tokens:
        spec = DataSpec("text", "classification", "sequence", (STEPS,), CLASSES, vocab_size=VOCAB)
    else:
        spec = DataSpec("seq", "classification", "sequence", (STEPS, FEATURES), CLASSES)
    torch.manual_seed(0)
    return entry.build(cfg, spec)


def padded_batch(tokens: bool, padding: float = 0.0):
    """(x, lengths): sequences of LENGTHS steps after which `padding` (token id 0 for text)."""
    torch.manual_seed(1)
    lengths = torch.tensor(LENGTHS)
    if tokens:
        x = torch.randint(1, VOCAB, (len(LENGTHS), STEPS))  # (B, T)
    else:
        x = torch.randn(len(LENGTHS), STEPS, FEATURES)  # (B, T, D)
    valid = torch.arange(STEPS) < lengths.unsqueeze(1)  # (B, T)
    if not tokens:
        valid = valid.unsqueeze(2)
    return torch.where(valid, x, 0 if tokens else padding), lengths


@FEATURES_AND_TOKENS
@EVERY_CASE
def test_padding_never_changes_a_sequences_output(kind, settings, tokens):
    net = build(kind, settings, tokens).eval()
    x, lengths = padded_batch(tokens)
    with torch.no_grad():
        batched = net(x, lengths)  # (B, classes)
        alone = torch.cat([net(x[i : i + 1, :n]) for i, n in enumerate(LENGTHS)])
        assert batched.shape == (len(LENGTHS), CLASSES)
        assert torch.allclose(batched, alone, atol=1e-5), (batched - alone).abs().max()
        if not tokens:  # whatever the padding holds, it is never read
            assert torch.allclose(net(padded_batch(tokens, padding=7.0)[0], lengths), batched)


@FEATURES_AND_TOKENS
@EVERY_CASE
def test_no_lengths_means_every_step_is_valid(kind, settings, tokens):
    net = build(kind, settings, tokens).eval()
    x, _ = padded_batch(tokens)
    with torch.no_grad():
        full = net(x, torch.full((len(x),), STEPS))
        assert torch.allclose(net(x), full, atol=1e-5)


@EVERY_CASE
def test_training_step_on_a_padded_batch_ignores_the_padding(kind, settings):
    """In training mode too (dropout aside; batch-norm statistics from the valid steps only):
    the padded steps get no gradient, and nothing turns NaN (fully padded pooling windows)."""
    net = build(kind, settings, tokens=False).train()
    x, lengths = padded_batch(tokens=False)
    x.requires_grad_(True)
    net(x, lengths).square().sum().backward()
    padded = torch.arange(STEPS) >= lengths.unsqueeze(1)  # (B, T)
    assert x.grad[padded].abs().max() == 0 and x.grad[~padded].abs().max() > 0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@EVERY_CASE
def test_a_padded_training_step_runs_under_bf16_autocast(kind, settings):
    """trainer.precision=bf16: masked statistics and pooling keep their dtypes straight."""
    net = build(kind, settings, tokens=False).train()
    x, lengths = padded_batch(tokens=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, lengths)
    out.float().square().sum().backward()
    assert out.shape == (len(LENGTHS), CLASSES) and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_masked_batch_norm_takes_its_statistics_from_the_valid_steps():
    from dlrun.nn import MaskedBatchNorm1d

    torch.manual_seed(0)
    h = torch.randn(3, 5, 6)  # (B, C, T)
    keep = (torch.arange(6) < torch.tensor([6, 2, 4]).unsqueeze(1)).unsqueeze(1)  # (B, 1, T)
    masked, plain = MaskedBatchNorm1d(5), torch.nn.BatchNorm1d(5)
    valid = h.transpose(1, 2)[keep.squeeze(1)].T.unsqueeze(0)  # (1, C, valid steps)
    out = masked(h, keep)
    expected = plain(valid)
    assert torch.allclose(out.transpose(1, 2)[keep.squeeze(1)].T.unsqueeze(0), expected, atol=1e-5)
    assert torch.allclose(masked.running_mean, plain.running_mean, atol=1e-6)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-6)
    assert masked.state_dict().keys() == plain.state_dict().keys()


def test_tokens_are_embedded_with_embed_size_and_padding_id_zero():
    for kind in ("gru", "attention", "cnn1d"):
        net = build(kind, {}, tokens=True)
        assert net.tokens.num_embeddings == VOCAB and net.tokens.embedding_dim == 6
        assert net.tokens.padding_idx == 0 and net.tokens.weight[0].abs().max() == 0
        assert build(kind, {}, tokens=False).tokens is None


HOST_READS = {  # what makes the host wait for the device (and cannot be in a CUDA graph)
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.masked_select,
    torch.unique,
}


def host_reads(step) -> list[str]:
    """The host reads of tensor values that running `step()` makes from Python."""
    from torch.overrides import TorchFunctionMode

    seen = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in HOST_READS:
                seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with Watch():
        step()
    return seen


@EVERY_CASE
def test_a_padded_training_step_reads_nothing_back_from_the_host(kind, settings):
    """So the nets keep static_graph (dlrun.graphs) and whole steps stay capturable."""
    net = build(kind, settings, tokens=False).train()
    x, lengths = padded_batch(tokens=False)
    assert host_reads(lambda: net(x, lengths).sum().backward()) == []
    assert getattr(net, "static_graph", True)


def test_packing_would_read_the_lengths_from_the_host():
    """What the test above would catch: pack_padded_sequence reads the lengths on the host."""
    from torch.nn.utils.rnn import pack_padded_sequence

    rnn = torch.nn.GRU(FEATURES, 4, batch_first=True)
    x, lengths = padded_batch(tokens=False)
    packed = lambda: rnn(pack_padded_sequence(x, lengths, True, enforce_sorted=False))  # noqa: E731
    assert host_reads(packed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("kind", "settings"),
    [("gru", {"bidirectional": True}), ("lstm", {}), ("attention", {}), ("cnn1d", {})],
)
def test_a_training_step_on_padded_batches_is_captured_as_a_cuda_graph(kind, settings):
    """Captured once with some lengths, replayed on other sequences and lengths: the replay's
    loss is the eager one of the new batch (the lengths are read on the device)."""
    import copy

    device = torch.device("cuda")
    net = build(kind, settings, tokens=False).to(device).train()
    for module in net.modules():  # dropout would make eager and replay differ
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    x, lengths = (t.to(device) for t in padded_batch(tokens=False))
    y = torch.arange(len(x), device=device) % CLASSES
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(net(x, lengths), y)
        loss.backward()
        optimizer.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
    before = copy.deepcopy(net)
    x.copy_(torch.randn_like(x))
    lengths.copy_(torch.tensor([2, 11, 5, 9, 1, 6], device=device))
    x.masked_fill_((torch.arange(STEPS, device=device) >= lengths[:, None])[..., None], 0)
    graph.replay()
    expected = torch.nn.functional.cross_entropy(before(x, lengths), y)
    assert torch.allclose(loss, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.dilation=[1,2]",
            r"^model.dilation must list one value per block \(3, as model.channels\) or be one "
            r"int. Got \[1, 2\] \(2 values\).$",
        ),
        (
            "model.dilation=0",
            r"^model.dilation must be an int >= 1 or a list of them, one per block. Got 0.$",
        ),
        (
            "model.channels=[]",
            r"^model.channels must list at least one block's channels. Got \[\].$",
        ),
        (
            "model.pool_size=1",
            r"^model.pool_size must be an int in the range \[2, inf\). Got 1.$",
        ),
        (
            "model.global_pooling=sum",
            r"^model.global_pooling must be one of: mean, max. Got 'sum'.$",
        ),
    ],
)
def test_bad_cnn1d_settings_are_one_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg("model=cnn1d", override))


def test_cnn1d_dilation_is_one_value_or_one_per_block():
    conf = validate(make_cfg("model=cnn1d", "model.dilation=[1,2,4]")).model
    assert conf.dilations() == [1, 2, 4]
    net = get_model("cnn1d").build(
        dataclasses.replace(conf, dilation=3),
        DataSpec("seq", "classification", "sequence", (STEPS, FEATURES), CLASSES),
    )
    assert [block.conv.dilation for block in net.blocks] == [(3,), (3,), (3,)]


def test_cnn1d_learns_the_adding_problem(tmp_path):
    summary, run_dir = train(tmp_path, "model=cnn1d", "data=adding", "trainer.max_epochs=3")
    losses = [r["train_loss"] for r in read_metrics(run_dir)]
    assert losses == sorted(losses, reverse=True)
    # predicting the mean scores 0.167; measured: 0.0024 (r2 0.985) after 3 epochs
    assert summary["test"]["loss"] < 0.02 and summary["test"]["r2"] > 0.9


def test_cnn1d_reads_digits_rows_as_a_sequence(tmp_path):
    summary, run_dir = train(tmp_path, "model=cnn1d", "trainer.max_epochs=3")
    losses = [r["train_loss"] for r in read_metrics(run_dir)]
    assert losses == sorted(losses, reverse=True)
    assert summary["test"]["accuracy"] > 0.95  # measured: 0.99 after 3 epochs


def sine_waves(n: int, seed: int, longest: int = 100):
    """Noisy sine waves of 3 frequencies (the classes), random phases, lengths 20..longest,
    zero-padded: (x (N, T, 1), lengths (N,), y (N,))."""
    import math

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    lengths = torch.randint(20, longest + 1, (n,), generator=g)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    steps = torch.arange(longest).float()
    cycles = torch.tensor([0.04, 0.08, 0.12])[y].unsqueeze(1)  # per step
    x = torch.sin(2 * math.pi * cycles * steps + phase) + 0.3 * torch.randn(n, longest, generator=g)
    return (x * (steps < lengths.unsqueeze(1))).unsqueeze(2), lengths, y


@pytest.mark.parametrize(
    ("kind", "settings", "epochs"),
    [
        ("cnn1d", {"channels": [32, 32, 64]}, 3),
        ("gru", {"hidden_size": 32}, 8),
        ("gru", {"hidden_size": 32, "bidirectional": True, "pooling": "mean"}, 6),
    ],
)
def test_variable_length_sine_waves_are_told_apart(kind, settings, epochs):
    """The models called as the training loop calls them, model(x, lengths), on padded batches
    of sequences 20 to 100 steps long (measured test accuracy: cnn1d 1.0 from the first epoch;
    gru 0.99 after 6 epochs, bidirectional 0.996 after 4)."""
    x, lengths, y = sine_waves(1500, seed=1)
    x_test, lengths_test, y_test = sine_waves(500, seed=2)
    spec = DataSpec("sine", "classification", "sequence", (100, 1), num_classes=3)
    entry = get_model(kind)
    torch.manual_seed(0)
    net = entry.build(entry.schema(**settings), spec)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[idx], lengths[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test, lengths_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.95
