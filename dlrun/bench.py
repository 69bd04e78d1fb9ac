"""`make bench`: dlrun's training loop against a minimal hand-written PyTorch loop.

Both train the same model (same initial weights) on the same synthetic data with the same batch
size, Adam and gradient clipping by norm; runs alternate (dlrun, hand-written, dlrun, ...) in one
process so that both see the same machine. On CUDA there are two hand-written references: the
eager loop and the same loop with its whole step captured as one CUDA graph. Reported per case:
the median seconds per epoch of training steps of each, the ratio dlrun / best hand-written loop,
peak memory, and what the training-health diagnostics cost (their measured time as a share of the
epoch); plus the time of `dlrun --help` and, for a whole default `dlrun` run, the time from the
process's start to its first training step. Then the image-folder cases (dlrun.bench_folder):
a generated folder of JPEGs streamed from disk, against torchvision's ImageFolder + DataLoader.
Printed as tables and written to outputs/bench/bench-<date>-<time>.json so runs can be compared.

    python -m dlrun.bench [--scale 1.0] [--epochs 3] [--repeats 2] [--batch 128 512] [--device cpu]
                          [--cases mlp lenet5 lstm folder_lenet5 folder_resnet18] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dlrun.bench_folder import FOLDER_CASES, dlrun_command, folder_cases

# (case, model, one sample's shape, data kind, samples at --scale 1): the cases
CASES = [
    ("mlp", "mlp", (1, 32, 32), "image", 60_000),
    ("lenet5", "lenet5", (1, 32, 32), "image", 60_000),
    ("lstm", "lstm", (100, 8), "sequence", 20_000),
]


def make_conf(model: str, batch: int, epochs: int, device: str, *extra: str):
    from hydra import compose, initialize_config_dir

    from dlrun.catalog import load_catalog
    from dlrun.cli import CONFIG_DIR
    from dlrun.validate import validate

    load_catalog()
    overrides = [
        f"model={model}",
        "optim=adam",
        f"trainer.batch_size={batch}",
        f"trainer.max_epochs={epochs}",
        "trainer.clip.max_norm=1.0",
        "trainer.early_stopping.patience=null",
        f"trainer.device={device}",
        *extra,
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return validate(compose(config_name="train", overrides=overrides))


def dlrun_epochs(conf, spec, x, y, device) -> list[dict]:
    """dlrun's loop (dlrun.training.fit_torch): each epoch's record (train_time_s: the training
    steps; epoch_time_s: with validation, diagnostics and checkpoints; health/probe_time_s)."""
    import torch

    from dlrun.registry import get_model
    from dlrun.report import epoch_progress
    from dlrun.runner import check_task_settings
    from dlrun.training import fit_torch

    check_task_settings(conf, spec)
    torch.manual_seed(0)
    model = get_model(conf.model.name).build(conf.model, spec)
    splits = {"train": (x, y), "val": (x[:512], y[:512])}
    # with the progress a run shows (the epoch bar, and the bar of steps inside an epoch that
    # takes more than a second), so its cost is in the measured speed
    monitor = conf.trainer.early_stopping.monitor
    with (
        tempfile.TemporaryDirectory() as run_dir,
        epoch_progress(conf.trainer.max_epochs, monitor) as bar,
    ):
        result = fit_torch(model, splits, spec, conf, Path(run_dir), device, progress=bar)
    return result.history


def hand_epochs(conf, spec, x, y, device, graph: bool = False) -> list[float]:
    """The same training, written out by hand: data on the device, shuffled index slices. With
    `graph`, full batches replay one CUDA graph of the whole step (the last partial batch runs
    eagerly), the fastest way known to run this loop."""
    import torch

    from dlrun.registry import get_model

    torch.manual_seed(0)
    model = get_model(conf.model.name).build(conf.model, spec).to(device)
    cuda = device.type == "cuda"
    opt = torch.optim.Adam(
        model.parameters(), lr=conf.optim.lr, fused=cuda or None, capturable=graph
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    n, batch = len(yt), conf.trainer.batch_size
    total = torch.zeros((), device=device)

    def step(idx):
        loss = loss_fn(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=not graph)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        total.add_(loss.detach())

    replay = None
    if graph:
        static_idx = torch.arange(batch, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up steps, as PyTorch's CUDA graph notes do
                step(static_idx)
        torch.cuda.current_stream().wait_stream(side)
        replay = torch.cuda.CUDAGraph()
        with torch.cuda.graph(replay):
            step(static_idx)
    times = []
    for _ in range(conf.trainer.max_epochs):
        start = time.perf_counter()
        perm = torch.randperm(n).to(device)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            if replay is not None and len(idx) == batch:
                static_idx.copy_(idx)
                replay.replay()
            else:
                step(idx)
        total.item()  # wait for the device
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process so far


# The floor under any PyTorch run's start on this machine, timed inside a bare Python process as
# dlrun times its own (from the first import): `import torch`, and `import torch` to the end of
# a first Adam step (torch.optim's step imports torch._dynamo, whatever trains).
BARE_TORCH = {
    "import_torch_s": "import time; t = time.perf_counter(); import torch; "
    "print(time.perf_counter() - t)",
    "bare_torch_first_step_s": "import time; t = time.perf_counter(); import torch; "
    "net = torch.nn.Linear(64, 10); opt = torch.optim.Adam(net.parameters()); "
    "net(torch.randn(32, 64)).sum().backward(); opt.step(); print(time.perf_counter() - t)",
}


def cli_times() -> dict[str, float]:
    """`dlrun --help`, and a whole default run of one epoch: start to exit, and start to its
    first training step, in seconds."""
    command = dlrun_command()
    helps = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([*command, "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as where:
        start = time.perf_counter()
        subprocess.run(
            [*command, "trainer.max_epochs=1", f"hydra.run.dir={where}/run"],
            capture_output=True,
            check=True,
        )
        whole = time.perf_counter() - start
        summary = json.loads(Path(where, "run", "summary.json").read_text())
    bare = {}
    for name, code in BARE_TORCH.items():
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        bare[name] = float(done.stdout.split()[-1])
    return {
        "help_s": statistics.median(helps),
        "one_epoch_run_s": whole,
        "start_to_first_step_s": summary["startup_s"],
        **bare,
    }


def run(
    scale: float,
    epochs: int,
    repeats: int,
    batches: list[int],
    device_name: str,
    cases: list[str] | None = None,
) -> dict:
    import torch

    from dlrun.data import DataSpec
    from dlrun.training import resolve_device

    device = resolve_device(device_name)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as dlrun runs do; for both loops alike
    rows = []
    for case, model, shape, kind, samples in CASES:
        if cases is not None and case not in cases:
            continue
        n = max(int(samples * scale), 1024)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, *shape), dtype=np.float32)
        y = rng.integers(0, 10, size=n).astype(np.int64)
        spec = DataSpec("synthetic", "classification", kind, shape, num_classes=10)
        if kind == "image" and model == "mlp":
            x, spec = (
                x.reshape(n, -1),
                DataSpec(
                    "synthetic", "classification", "tabular", (int(np.prod(shape)),), num_classes=10
                ),
            )
        if model == "lenet5":
            spec = DataSpec("synthetic", "classification", "image", shape, num_classes=10)
        for batch in batches:
            conf = make_conf(model, batch, epochs, device_name)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ours, theirs, graphed, epoch_s, health_s = [], [], [], [], []
            for _ in range(repeats):  # interleaved; the first epoch of each run warms up
                records = dlrun_epochs(conf, spec, x, y, device)[1:]
                ours += [r["train_time_s"] for r in records]
                epoch_s += [r["epoch_time_s"] for r in records]
                health_s += [r["health/probe_time_s"] for r in records]
                theirs += hand_epochs(conf, spec, x, y, device)[1:]
                if device.type == "cuda":
                    graphed += hand_epochs(conf, spec, x, y, device, graph=True)[1:]
            row = {
                "case": case,
                "batch": batch,
                "samples": n,
                "device": str(device),
                "dlrun_s_per_epoch": statistics.median(ours),
                "hand_s_per_epoch": statistics.median(theirs),
                "hand_graph_s_per_epoch": statistics.median(graphed) if graphed else None,
                "peak_memory_mb": peak_memory_mb(device),
                # the training-health probe's measured time, as a share of the whole epoch
                "diagnostics_cost": statistics.median(health_s) / statistics.median(epoch_s),
            }
            best = min(t for t in (row["hand_s_per_epoch"], row["hand_graph_s_per_epoch"]) if t)
            row["ratio"] = row["dlrun_s_per_epoch"] / best
            rows.append(row)
            graph_note = (
                f", as one CUDA graph {row['hand_graph_s_per_epoch']:.3f}" if graphed else ""
            )
            print(
                f"{case:7s} batch {batch:4d}: dlrun {row['dlrun_s_per_epoch']:.3f} s/epoch, hand-written "
                f"{row['hand_s_per_epoch']:.3f}{graph_note}; ratio {row['ratio']:.3f}; diagnostics "
                f"{row['diagnostics_cost']:.1%} of an epoch",
                flush=True,
            )
    return {
        "cases": rows,
        "cli": cli_times(),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(device),
        },
        "settings": {"scale": scale, "epochs": epochs, "repeats": repeats},
    }


def main(argv: list[str] | None = None) -> None:
    from dlrun.errors import UserError, stdout_closed

    try:
        bench(argv)
        sys.stdout.flush()
    except UserError as ex:  # --device cuda without a GPU, say: the flag is --device here
        print(f"dlrun: {str(ex).replace('trainer.device', '--device')}", file=sys.stderr)
        sys.exit(ex.exit_code)
    except BrokenPipeError:  # python -m dlrun.bench | head
        stdout_closed()


def device_flag(text: str) -> str:
    from dlrun.validate import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"must be one of: auto, cpu, cuda, cuda:N, mps. Got '{text}'."
        )
    return text


def folder_table(rows: list[dict]):
    """The image-folder cases: images/s of each loop (higher is better), dlrun's start to its
    first step, and each one's peak resident memory."""
    from rich.table import Table

    table = Table(title="an image folder streamed from disk: dlrun vs ImageFolder + DataLoader")
    for column in (
        "case",
        "images",
        "dlrun img/s",
        "hand img/s",
        "ratio",
        "first step s",
        "dlrun peak MB",
        "hand peak MB",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["case"],
            f"{r['images']:,}",
            f"{r['dlrun']['images_per_s']:.1f}",
            f"{r['hand']['images_per_s']:.1f}",
            f"{r['ratio']:.3f}",
            f"{r['dlrun']['first_step_s']:.1f}",
            f"{r['dlrun']['peak_mb']:.0f}",
            f"{r['hand']['peak_mb']:.0f}",
        )
    return table


def bench(argv: list[str] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(
        prog="python -m dlrun.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the issue's sample counts"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run (the first is warm-up)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each loop")
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    parser.add_argument(
        "--device", default="cpu", type=device_flag, help="cpu, cuda, cuda:N or auto"
    )
    names = [c[0] for c in CASES] + [c[0] for c in FOLDER_CASES]
    parser.add_argument("--cases", nargs="+", default=names, choices=names)
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the image-folder cases"
    )
    parser.add_argument(
        "--out", default=None, help="JSON file (default: outputs/bench/bench-<time>.json)"
    )
    args = parser.parse_args(argv)
    out = writable(
        Path(args.out)
        if args.out
        else Path("outputs") / "bench" / time.strftime("bench-%Y-%m-%d-%H-%M-%S.json"),
        parser,
    )
    result = run(args.scale, max(args.epochs, 2), args.repeats, args.batch, args.device, args.cases)
    result["folder_cases"] = folder_cases(args.scale, args.workers, args.cases, args.device)

    table = Table(title=f"dlrun vs a hand-written loop ({result['machine']['device']})")
    columns = (
        "case",
        "batch",
        "samples",
        "dlrun s/epoch",
        "hand s/epoch",
        "hand graph s/epoch",
        "ratio",
        "diagnostics",
        "peak MB",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in result["cases"]:
        table.add_row(
            r["case"],
            str(r["batch"]),
            f"{r['samples']:,}",
            f"{r['dlrun_s_per_epoch']:.3f}",
            f"{r['hand_s_per_epoch']:.3f}",
            f"{r['hand_graph_s_per_epoch']:.3f}" if r["hand_graph_s_per_epoch"] else "-",
            f"{r['ratio']:.3f}",
            f"{r['diagnostics_cost']:.1%}",
            f"{r['peak_memory_mb']:.0f}",
        )
    if result["cases"]:
        Console().print(table)
    if result["folder_cases"]:
        Console().print(folder_table(result["folder_cases"]))
    cli = result["cli"]
    print(
        f"dlrun --help {cli['help_s']:.2f} s; a 1-epoch default run {cli['one_epoch_run_s']:.1f} s "
        f"(from the start of the process to its first training step {cli['start_to_first_step_s']:.1f} s)"
    )
    print(
        f"beside it, in a bare process: import torch {cli['import_torch_s']:.1f} s; import torch "
        f"to the end of a first Adam step {cli['bare_torch_first_step_s']:.1f} s"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


def writable(out: Path, parser) -> Path:
    """`out`, checked before the minutes of measuring: its folder is made and the file can be
    written (a file already there is left as it is until the end), or one line and exit 2."""
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a"):
            pass
    except OSError as ex:
        parser.error(f"--out: cannot write {out}: {ex.strerror or ex}")
    if not existed:
        out.unlink()
    return out


if __name__ == "__main__":
    main()
