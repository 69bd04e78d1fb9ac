"""`make bench`'s image-folder cases: a folder of JPEGs larger than memory should hold, trained
for one epoch by dlrun (streamed from disk) and by a hand-written torchvision `ImageFolder` +
`DataLoader` loop with the same workers, batch size, transforms (resize to the input size, scale
to [0, 1], normalize) and model.

The bench writes the folder itself (256x256 JPEGs of 3 classes, smooth random colour fields)
into a temporary folder. Each loop runs as its own process, so each one's peak resident memory
(the largest of its processes, DataLoader workers included) is its own. Reported per case:
training images per second of each and their ratio, dlrun's time from its start to its first
training step, and the peak memory of each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SIZE = 256  # the generated images
CLASSES = 3
# (case, model, images at --scale 1, batch size): the cases. ResNet-18 trains ~15 images
# a second on two CPU cores, so its folder is smaller: the rate is what is compared.
FOLDER_CASES = [
    ("folder_lenet5", "lenet5", 20_000, 64),
    ("folder_resnet18", "resnet18", 1_500, 32),
]
MODEL_ARGS = {
    "lenet5": ["model=lenet5", "model.input_size=null"],
    "resnet18": ["model=resnet18", "model.weights=null"],
}


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """n JPEGs (SIZE x SIZE, quality 90) in CLASSES class folders: smooth random colour fields,
    each class tinted its own way, about the size of photos of that resolution."""
    from PIL import Image

    def write(i: int) -> None:
        rng = np.random.default_rng([seed, i])
        label = i % CLASSES
        field = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        field[..., label] = field[..., label] // 2 + 128
        image = Image.fromarray(field).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        noise = rng.integers(0, 24, (SIZE, SIZE, 3), dtype=np.uint8)
        pixels = np.asarray(image, dtype=np.uint8) // 8 * 7 + noise
        Image.fromarray(pixels).save(root / f"class_{label}" / f"{i:06d}.jpg", quality=90)

    for label in range(CLASSES):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(write, range(n)))
    os.sync()  # written back to disk now, not while the loops run
    return root


def measured(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(the finished process, its wall seconds, its peak resident memory in MB: the largest of
    the process and the children it waited for, its DataLoader workers)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done, time.perf_counter() - start, usage.ru_maxrss / 1024


def dlrun_command() -> list[str]:
    script = Path(sys.executable).with_name("dlrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dlrun"]


def dlrun_case(root: Path, model: str, batch: int, workers: int, where: Path, device: str) -> dict:
    """One epoch of `dlrun` on the folder, as a user runs it, streamed from disk."""
    run_dir = where / f"dlrun-{model}"
    command = [
        *dlrun_command(),
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=224",
        "data.load=stream",  # as data.load=auto does above data.memory_gb, at any --scale
        *MODEL_ARGS[model],
        "trainer.max_epochs=1",
        f"trainer.batch_size={batch}",
        f"trainer.workers={workers}",
        f"trainer.device={device}",
        f"hydra.run.dir={run_dir}",
    ]
    _, wall, peak = measured(command)
    summary = json.loads((run_dir / "summary.json").read_text())
    log = (run_dir / "train.log").read_text()
    return {
        "images_per_s": summary["samples_per_s"],  # training images / training steps' time
        "train_images": int(re.search(r"\btrain (\d+), val", log).group(1)),
        "first_step_s": summary["startup_s"],
        "wall_s": wall,
        "peak_mb": peak,
        "streamed": "streams from disk" in log,
    }


def hand_case(root: Path, model: str, batch: int, workers: int, images: int, device: str) -> dict:
    """The hand-written loop, in its own process."""
    command = [
        sys.executable,
        "-m",
        "dlrun.bench_folder",
        "--root",
        str(root),
        "--model",
        model,
        "--batch",
        str(batch),
        "--workers",
        str(workers),
        "--images",
        str(images),
        "--device",
        device,
    ]
    done, wall, peak = measured(command)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": wall, "peak_mb": peak}


def hand_loop(root: str, model: str, batch: int, workers: int, images: int, device: str) -> dict:
    """torchvision's ImageFolder and a DataLoader, the way PyTorch's tutorials train: `images`
    random images of the folder for one epoch, Adam, cross-entropy. Returns images/s."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from dlrun.data import DataSpec
    from dlrun.registry import get_model

    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as dlrun runs do
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as dlrun runs do
    transform = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ]
    )
    folder = datasets.ImageFolder(root, transform=transform)
    rows = np.random.default_rng(0).permutation(len(folder))[:images]
    loader = DataLoader(
        Subset(folder, rows.tolist()),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
    spec = DataSpec("bench", "classification", "image", (3, 224, 224), num_classes=CLASSES)
    from dlrun.bench import make_conf  # the in-memory cases' config, with this model's settings

    conf = make_conf(model, batch, 1, str(device), *MODEL_ARGS[model][1:])
    net = get_model(model).build(conf.model, spec).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    start = time.perf_counter()
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"images_per_s": seen / (time.perf_counter() - start), "train_images": seen}


def folder_cases(scale: float, workers: int, cases: list[str], device: str = "cpu") -> list[dict]:
    """The image-folder cases chosen, each folder written once into a temporary folder."""
    rows = []
    for case, model, images, batch in FOLDER_CASES:
        if case not in cases:
            continue
        n = max(int(images * scale), 150)
        with tempfile.TemporaryDirectory() as where:
            started = time.perf_counter()
            root = make_folder(Path(where) / "images", n)
            made = time.perf_counter() - started
            ours = dlrun_case(root, model, batch, workers, Path(where), device)
            theirs = hand_case(root, model, batch, workers, ours["train_images"], device)
        row = {
            "case": case,
            "images": n,
            "batch": batch,
            "workers": workers,
            "folder_written_s": made,
            "dlrun": ours,
            "hand": theirs,
            "ratio": ours["images_per_s"] / theirs["images_per_s"],
        }
        rows.append(row)
        print(
            f"{case}: {n:,} JPEGs, dlrun {ours['images_per_s']:.0f} images/s, hand-written "
            f"{theirs['images_per_s']:.0f}; ratio {row['ratio']:.3f} (higher is better); first "
            f"step after {ours['first_step_s']:.1f} s; peak memory {ours['peak_mb']:.0f} MB "
            f"(hand-written {theirs['peak_mb']:.0f} MB)",
            flush=True,
        )
    return rows


def main() -> None:
    """The hand-written loop, run as its own process by `hand_case`; prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m dlrun.bench_folder")
    parser.add_argument("--root", required=True)
    parser.add_argument("--model", required=True, choices=sorted(MODEL_ARGS))
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    found = hand_loop(args.root, args.model, args.batch, args.workers, args.images, args.device)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
