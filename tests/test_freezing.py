"""Freezing (trainer.freeze, freeze_bn, unfreeze_at_epoch) and per-layer learning rates
(optim.head_lr_mult, optim.layer_decay): what trains, at what rate, and exact resume across
the unfreezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import cli, make_cfg, read_metrics, resumes_exactly, train
from dlrun.checkpoints import load_checkpoint
from dlrun.errors import ConfigError
from dlrun.params import layers, lr_scales
from dlrun.validate import validate

# An MLP with batch norm: Linear 0, BatchNorm 1, ReLU 2, Linear 3, BatchNorm 4, ReLU 5, Linear 6
BN_MLP = (
    "model.hidden_sizes=[32,16]",
    "model.batch_norm=true",
    "trainer.max_epochs=2",
    "optim.lr=0.01",
)
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture
def initial(monkeypatch):
    """The network's weights as built, before any training step: {name: tensor}."""
    import dlrun.runner

    build, kept = dlrun.runner.build_network, {}

    def keep(prep, conf, **options):
        net = build(prep, conf, **options)
        kept.update({k: v.clone() for k, v in net.state_dict().items()})
        return net

    monkeypatch.setattr(dlrun.runner, "build_network", keep)
    return kept


def trained(run_dir, name: str = "last.pt") -> dict:
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_frozen_weights_and_batch_norm_statistics_stay_bit_identical(tmp_path, initial):
    summary, run_dir = train(tmp_path, *BN_MLP, "trainer.freeze=[0.*,1.*]")
    after = trained(run_dir)
    assert same(after, initial, "0.") and same(after, initial, "1.")  # BN 1: weight .. counts
    assert not same(after, initial, "3.weight") and not same(after, initial, "6.weight")
    assert not same(after, initial, "4.running_mean")  # an unfrozen batch norm keeps learning
    frozen = sum(initial[k].numel() for k in ("0.weight", "0.bias", "1.weight", "1.bias"))
    total = sum(v.numel() for k, v in initial.items() if not k.endswith(BN_STATS))
    assert summary["params"] == total - frozen  # trainable ones
    assert summary["test"]["accuracy"] > 0.5


def test_freeze_bn_train_lets_frozen_statistics_move(tmp_path, initial):
    _, run_dir = train(tmp_path, *BN_MLP, "trainer.freeze=[0.*,1.*]", "trainer.freeze_bn=train")
    after = trained(run_dir)
    assert same(after, initial, "0.") and same(after, initial, "1.weight")
    assert not same(after, initial, "1.running_mean") and not same(after, initial, "1.running_var")


def test_body_freezes_all_but_the_head_of_a_cnn1d_with_masked_batch_norm(tmp_path, initial):
    _, run_dir = train(
        tmp_path,
        "model=cnn1d",
        "data=sines",
        "model.channels=[8,8]",
        "trainer.max_epochs=1",
        "trainer.freeze=body",
    )
    after = trained(run_dir)
    assert same(after, initial, "blocks.")  # convolutions and batch-norm statistics
    assert not same(after, initial, "head.weight")


def test_a_regression_network_is_frozen_by_its_own_names(tmp_path, initial):
    """Regression wraps the network (dlrun.nn.TargetScaled: names gain `net.`); patterns match
    the model's own names and the wrapped ones alike."""
    for i, pattern in enumerate(("0.*", "net.0.*")):
        _, run_dir = train(
            tmp_path,
            "data=diabetes",
            "trainer.max_epochs=1",
            f"trainer.freeze=[{pattern}]",
            name=f"run{i}",
        )
        after = trained(run_dir)
        assert same(after, initial, "net.0.") and not same(after, initial, "net.4.weight")


def test_unfreezing_adds_the_parameters_and_keeps_the_optimizer_state(tmp_path, monkeypatch):
    """At unfreeze_at_epoch=2 (epoch numbers as in metrics.jsonl) the frozen parameters join
    the optimizer; Adam's moments of the others are the same tensors with the same values."""
    from dlrun.state import TrainState

    real, seen = TrainState.start_epoch, []

    def start_epoch(self, epoch):
        (optimizer,) = self.optimizers.values()
        before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        real(self, epoch)
        counts = [len(g["params"]) for g in optimizer.param_groups]
        kept = all(
            all(torch.equal(optimizer.state[p][k], v) for k, v in before[id(p)].items())
            for g in optimizer.param_groups
            for p in g["params"]
            if id(p) in before
        )
        trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        seen.append((epoch, counts, trainable, len(before), kept))

    monkeypatch.setattr(TrainState, "start_epoch", start_epoch)
    args = ("model.hidden_sizes=[32,16]", "trainer.max_epochs=3", "trainer.freeze=[0.*]")
    _, run_dir = train(tmp_path, *args, "trainer.unfreeze_at_epoch=2")
    # one group trains from the start; the frozen layer's group waits, empty, until epoch 2
    assert [s[:2] for s in seen] == [(1, [4, 0]), (2, [4, 2]), (3, [4, 2])]
    assert seen[1][2] - seen[0][2] == 64 * 32 + 32  # layer 0 joined
    assert seen[1][3] == 4 and seen[1][4]  # the 4 trained tensors' state, unchanged
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]
    groups = load_checkpoint(run_dir / "checkpoints" / "last.pt")["optimizers"]["main"]
    assert len(groups["state"]) == 6  # every parameter has Adam state now


FULL = (
    "model.hidden_sizes=[32,16]",
    "model.batch_norm=true",
    "trainer.max_epochs=4",
    "sched=cosine",
    "optim.layer_decay=0.5",
    "trainer.freeze=body",
    "trainer.unfreeze_at_epoch=3",
)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("full"), *FULL)


@pytest.mark.parametrize("cut", [2, 3])  # stopped before the unfreezing epoch, and after it
def test_resume_across_the_unfreezing_ends_like_the_uninterrupted_run(
    tmp_path, monkeypatch, full_run, cut
):
    full, full_dir = full_run
    resumes_exactly(tmp_path, monkeypatch, FULL, full, full_dir, cut)
    a, b = trained(tmp_path / "cut"), trained(full_dir)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_per_layer_rates_reach_the_optimizer_groups(tmp_path):
    """3 linear layers, lr 0.01, head_lr_mult 10, layer_decay 0.5: the head at 0.1, the layer
    below at 0.005, the input layer at 0.0025; the records keep optim.lr (the base rate)."""
    args = ("model.hidden_sizes=[32,16]", "trainer.max_epochs=1", "optim.lr=0.01")
    args += ("optim.head_lr_mult=10", "optim.layer_decay=0.5")
    _, run_dir = train(tmp_path, *args)
    groups = load_checkpoint(run_dir / "checkpoints" / "last.pt")["optimizers"]["main"]
    got = [(g["lr"], g["params"]) for g in groups["param_groups"]]
    assert got == [(0.0025, [0, 1]), (0.005, [2, 3]), (pytest.approx(0.1, rel=1e-15), [4, 5])]
    assert all(g["weight_decay"] == 0.0 for g in groups["param_groups"])
    assert read_metrics(run_dir)[0]["lr"] == 0.01


@pytest.mark.parametrize("sched", ["onecycle", "cosine", "step", "plateau"])
def test_schedules_keep_each_group_at_its_scale(tmp_path, sched):
    """Two groups (body at lr 0.05, head at 4x): after two epochs of the schedule the rates
    have moved and are still 4x apart (plateau: its min_lr floor is scaled per group too)."""
    args = ("model.hidden_sizes=[16]", "trainer.max_epochs=2", "optim=momentum", f"sched={sched}")
    own = {
        "cosine": ["sched.t_max=4"],
        "step": ["sched.step_size=1"],
        # loss falls, which mode=max counts as no improvement: one reduction, to the floor
        "plateau": ["sched.patience=0", "sched.min_lr=0.01", "trainer.early_stopping.mode=max"],
    }
    _, run_dir = train(tmp_path, *args, "optim.head_lr_mult=4", *own.get(sched, []))
    groups = load_checkpoint(run_dir / "checkpoints" / "last.pt")["optimizers"]["main"]
    body, head = (g["lr"] for g in groups["param_groups"])
    assert 0 < body != 0.05 and head == pytest.approx(4 * body, rel=1e-12)
    if sched == "plateau":
        assert (body, head) == (0.01, 0.04)
    if sched != "onecycle":  # onecycle starts below its peak
        assert read_metrics(run_dir)[0]["lr"] == 0.05  # the records: the base rate


def test_the_layers_of_a_network():
    """Each module with a weight matrix or kernel starts a layer; biases and norms join the
    layer before them, free tensors (a class token) the layer after them."""

    class Positions(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(1, 5, 4))  # a free table: the next layer's

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Parameter(torch.zeros(1, 1, 4))  # a module's own tensors come first
            self.embed = nn.Linear(3, 4)
            self.norm = nn.LayerNorm(4)
            self.positions = Positions()
            self.rnn = nn.LSTM(4, 4, num_layers=2)  # one module: one layer
            self.head = nn.Linear(4, 2)

    net = Net()
    names = [[n for n, _ in layer] for layer in layers(net)]
    assert names == [
        ["cls", "embed.weight", "embed.bias", "norm.weight", "norm.bias"],
        ["positions.table", *[n for n, _ in net.rnn.named_parameters(prefix="rnn")]],
        ["head.weight", "head.bias"],
    ]

    class Optim:
        lr, head_lr_mult, layer_decay = 1.0, 3.0, 0.5

    scales = {n: s for n, _, s in lr_scales(net, Optim)}
    assert scales["head.bias"] == 3.0 and scales["positions.table"] == 0.5
    assert scales["cls"] == scales["norm.bias"] == 0.25


def test_a_gan_gets_per_layer_rates_on_each_of_its_networks(tmp_path):
    args = ("model=gan", "model.hidden_sizes=[16]", "trainer.max_epochs=1")
    _, run_dir = train(tmp_path, *args, "optim.layer_decay=0.5", "trainer.freeze=body")
    optimizers = load_checkpoint(run_dir / "checkpoints" / "last.pt")["optimizers"]
    for name in ("disc", "gen"):  # each network's head trains, at its own lr (2e-4)
        (group,) = optimizers[name]["param_groups"]
        assert group["lr"] == 2e-4 and len(group["params"]) == 2


def test_estimators_ignore_the_network_settings(tmp_path):
    """As with the other torch-only settings (optim, clip, ...), a forest ignores them."""
    summary, _ = train(
        tmp_path,
        "model=random_forest",
        "model.n_estimators=10",
        "trainer.freeze=body",
        "optim.layer_decay=0.5",
    )
    assert summary["status"] == "completed"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.head_lr_mult=0"], "optim.head_lr_mult must be a float in the range (0, inf)"),
        (
            ["optim.layer_decay=1.5"],
            "optim.layer_decay must be a float in the range (0, 1] or None",
        ),
        (["optim.layer_decay=0"], "optim.layer_decay must be a float in the range (0, 1]"),
        (
            ["trainer.unfreeze_at_epoch=1", "trainer.freeze=body"],
            "trainer.unfreeze_at_epoch must be an int in the range [2, inf) or None. Got 1.",
        ),
        (
            ["trainer.unfreeze_at_epoch=3"],
            "trainer.unfreeze_at_epoch=3 needs trainer.freeze: nothing is frozen.",
        ),
        (
            ["trainer.unfreeze_at_epoch=40", "trainer.freeze=body"],
            "trainer.unfreeze_at_epoch must be at most trainer.max_epochs (30). Got 40.",
        ),
        (
            ["trainer.unfreeze_at_epoch=3", "trainer.freeze=body", "trainer.devices=2"],
            "trainer.unfreeze_at_epoch cannot be used with trainer.devices > 1",
        ),
        (["trainer.freeze_bn=frozen"], "trainer.freeze_bn must be one of: eval, train."),
        (["trainer.freeze=3"], "trainer.freeze must be a list of parameter-name patterns"),
    ],
)
def test_bad_values_are_clear_config_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(make_cfg(*overrides))
    assert message in str(error.value)
    assert error.value.exit_code == 2


def test_patterns_that_match_nothing_or_everything_are_refused(tmp_path):
    with pytest.raises(ConfigError) as error:
        train(tmp_path, "trainer.freeze=[feature.*,0.*,head*]", name="none")
    assert error.value.problems == [
        f"trainer.freeze: '{p}' matches no parameter of the network. Its parameters are named "
        "like: 0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias. Give shell-style patterns "
        "such as '0.*', or body for all but the head."
        for p in ("feature.*", "head*")
    ]
    with pytest.raises(ConfigError, match=r"freezes every parameter of the network; nothing"):
        train(tmp_path, "trainer.freeze=[*]", name="all")


def test_a_phase_left_with_nothing_to_train_is_refused():
    """A GAN's generator phase trains only `generator`: freezing all of it is refused."""
    from types import SimpleNamespace

    from dlrun.objectives import Phase
    from dlrun.params import freeze

    net = nn.Module()
    net.generator = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 3))
    net.discriminator = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    gan = SimpleNamespace(phases=(Phase("disc", "discriminator"), Phase("gen", "generator")))
    tcfg = SimpleNamespace(freeze=["generator.*"], freeze_bn="eval", unfreeze_at_epoch=None)
    with pytest.raises(ConfigError, match=r"every parameter of generator \(what phase gen"):
        freeze(net, tcfg, gan)
    tcfg.freeze = "body"  # each network's own head keeps training
    freeze(net, tcfg, gan)
    trains = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trains == ["generator.1.weight", "generator.1.bias"] + [
        "discriminator.1.weight",
        "discriminator.1.bias",
    ]
    with pytest.raises(ConfigError, match=r"^trainer.freeze: body matches no parameter: "):
        freeze(nn.Sequential(nn.Linear(2, 1)), tcfg)  # one layer, its head: no body


def test_a_bad_pattern_exits_2_without_a_traceback(tmp_path):
    done = cli("trainer.max_epochs=1", "trainer.freeze=[features.*]", cwd=tmp_path)
    assert done.returncode == 2
    assert "dlrun: trainer.freeze: 'features.*' matches no parameter" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not list(tmp_path.glob("outputs/train/*/*"))  # refused before its folder held anything


def test_unfreezing_turns_cuda_graphs_off_with_a_reason():
    from dlrun.graphs import graph_plan

    conf = validate(make_cfg("trainer.freeze=body", "trainer.unfreeze_at_epoch=2"))
    enabled, why = graph_plan(conf, torch.device("cuda"), 1, nn.Linear(2, 2))
    assert not enabled and "trainer.unfreeze_at_epoch" in why


def test_frozen_layers_in_the_graphed_step_body(tmp_path, monkeypatch, initial):
    """The step a CUDA graph records (gradients kept in place, not set to None), run eagerly on
    the CPU: frozen weights and batch-norm statistics stay identical, the others train."""
    import dlrun.graphs

    class Eager:  # GraphedSteps without the capture
        def __init__(self, body, device):
            self.body, self.graphs, self.failed = body, {}, None

        def __call__(self, size):
            self.body(size)

    monkeypatch.setattr(dlrun.graphs, "graph_plan", lambda *a: (True, None))
    monkeypatch.setattr(dlrun.graphs, "optimizer_options", lambda *a: {})
    monkeypatch.setattr(dlrun.graphs, "GraphedSteps", Eager)
    _, run_dir = train(tmp_path, *BN_MLP, "trainer.device=cpu", "trainer.freeze=[0.*,1.*]")
    after = trained(run_dir)
    assert same(after, initial, "0.") and same(after, initial, "1.")
    assert not same(after, initial, "3.weight")


def cuda(test):
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.gpu(skip(test))


@cuda
def test_frozen_layers_in_real_cuda_graphs(tmp_path, initial):
    summary, run_dir = train(
        tmp_path, *BN_MLP, "trainer.device=cuda", "trainer.freeze=[0.*,1.*]", "trainer.max_epochs=3"
    )
    assert summary["cuda_graphs"] is True
    after = {k: v.cpu() for k, v in trained(run_dir).items()}
    assert same(after, initial, "0.") and same(after, initial, "1.")
    assert not same(after, initial, "3.weight")


@pytest.mark.slow
def test_frozen_layers_under_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    """DistributedDataParallel registers only what trains: frozen weights stay identical and
    the run matches one process (as tests/test_distributed.py, with trainer.freeze)."""
    # no batch norm: DDP's ranks would each normalize their half of a batch
    args = ["trainer.device=cpu", "trainer.max_epochs=2", "trainer.freeze=[0.*]"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = {}
    for where, extra in (("ddp", ["trainer.devices=2"]), ("single", [])):
        (tmp_path / where).mkdir()
        done = cli(*args, *extra, cwd=tmp_path / where)
        assert done.returncode == 0, done.stderr[-3000:]
        (runs[where],) = (tmp_path / where / "outputs" / "train").glob("*/*")
    for a, b in zip(read_metrics(runs["ddp"]), read_metrics(runs["single"]), strict=True):
        for key in ("train_loss", "val_loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    ddp, single = (trained(runs[w]) for w in ("ddp", "single"))
    assert all(torch.equal(ddp[k], single[k]) for k in ("0.weight", "0.bias"))
