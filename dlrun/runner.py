"""One run, top to bottom: validate -> data -> model -> fit -> evaluate -> artifacts."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dlrun.catalog import load_catalog
from dlrun.checkpoints import write_json
from dlrun.errors import ConfigError, not_one_of
from dlrun.validate import validate

log = logging.getLogger("dlrun")


def run(cfg: DictConfig, run_dir: Path | str) -> dict:
    """Train and evaluate the experiment `cfg` describes; write its run folder; return the
    summary (what `summary.json` holds)."""
    load_catalog()
    conf = validate(cfg)  # every problem at once, before any work
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    from dlrun.report import epoch_progress, print_summary, run_log

    with run_log(run_dir):
        started = time.perf_counter()
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")

        import torch

        from dlrun.data import adapt, build_data
        from dlrun.metrics import best_mode, compute_metrics, metric_names
        from dlrun.registry import get_model
        from dlrun.training import fit_torch, predict, resolve_device, seed_everything

        seed_everything(conf.seed)
        data = build_data(conf.data)
        entry = get_model(conf.model.name)
        spec = data.spec.view(entry.takes)  # a pairing that makes no sense stops here
        size = getattr(conf.model, "input_size", None)  # a model built for one image size
        if entry.takes == "image" and size and spec.shape[1:] != (size, size):
            data = data.resized(size)
            spec = data.spec.view(entry.takes)
        stopping = conf.trainer.early_stopping
        allowed = [f"val_{m}" for m in metric_names(spec.task)]
        if stopping.monitor not in allowed:
            raise ConfigError(
                not_one_of(
                    "trainer.early_stopping.monitor",
                    "a validation metric",
                    stopping.monitor,
                    allowed,
                )
            )
        if stopping.mode == "auto":
            stopping.mode = best_mode(stopping.monitor)
        device = resolve_device(conf.trainer.device)
        if conf.trainer.precision == "16" and device.type != "cuda":
            raise ConfigError(
                f"trainer.precision=16 needs a CUDA device; this run is on {device}. Use bf16 or 32."
            )
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        model = entry.build(conf.model, spec)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            "%s (%s parameters) on %s, %s",
            conf.model.name,
            f"{params:,}",
            conf.data.name,
            ", ".join(f"{k} {v}" for k, v in data.sizes().items()),
        )
        splits = {
            name: (adapt(x, data.spec, entry.takes), y)
            for name in ("train", "val", "test")
            for x, y in [data.split(name)]
        }

        with epoch_progress(conf.trainer.max_epochs, stopping.monitor) as on_epoch:
            result = fit_torch(model, splits, spec, conf, run_dir, device, progress=on_epoch)

        # evaluate: the best checkpoint, the same metric code for every family
        scores = {}
        for name in ("val", "test"):
            x, y = splits[name]
            outputs = predict(model, torch.as_tensor(x, device=device), spec.task, conf.trainer.precision)
            scores[name] = compute_metrics(spec.task, y, outputs)

        summary = {
            "status": "completed",
            "model": conf.model.name,
            "data": conf.data.name,
            "task": spec.task,
            "monitor": {
                "metric": stopping.monitor,
                "mode": stopping.mode,
                "best": result.best_value,
            },
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "val": scores["val"],
            "test": scores["test"],
            "params": params,
            "wall_time_s": time.perf_counter() - started,
            "samples_per_s": result.samples_seen / result.train_time_s
            if result.train_time_s
            else 0.0,
            "device": str(device),
            "versions": versions(),
            "run_dir": str(run_dir),
        }
        write_json(run_dir / "summary.json", summary)
        log.info("test %s", "  ".join(f"{k} {v:.4f}" for k, v in scores["test"].items()))
        print_summary(summary)
        return summary


def versions() -> dict[str, str]:
    import numpy
    import sklearn
    import torch

    import dlrun

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dlrun": dlrun.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }
