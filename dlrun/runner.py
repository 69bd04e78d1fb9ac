"""One run, top to bottom: validate -> data -> model -> fit -> evaluate -> artifacts.

Torch networks and tree estimators share every step but `fit`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dlrun.catalog import load_catalog
from dlrun.checkpoints import atomic_write, write_json
from dlrun.errors import ConfigError, Interrupted, UserError, not_one_of, regular_file
from dlrun.validate import validate

log = logging.getLogger("dlrun")


def run(
    cfg: DictConfig, run_dir: Path | str, part: str | None = None, folds: dict | None = None
) -> dict:
    """Train and evaluate the experiment `cfg` describes; write its run folder; return the
    summary (what `summary.json` holds). With data.cv.folds, the run cross-validates
    (dlrun.crossval), which runs each fold and the refit through here as `part`; the refit
    gets the `folds`' scores (`cv`, `cv_setup`) for its summary and loggers."""
    started = time.perf_counter()
    load_catalog()
    conf = validate(cfg)  # every problem at once, before any work
    if part is None and conf.data.cv.folds is not None and conf.data.cv.fold is None:
        from dlrun.crossval import cross_validate

        return cross_validate(cfg, conf, Path(run_dir))
    from dlrun import distributed, folders

    distributed.setup(distributed_device_type(conf))
    main = distributed.is_main()  # under torchrun, only rank 0 writes the run folder
    given = run_dir = Path(distributed.broadcast(str(run_dir)))
    scratch = contextlib.ExitStack()  # the run's scratch files (dlrun.data.table_stream)
    try:
        resume = None
        if conf.trainer.resume is not None:  # continue that run, in its own folder
            path = find_checkpoint(conf.trainer.resume, conf.task_name)
            run_dir = path.parent.parent
            if main:
                folders.hold_run(run_dir)  # one process writes a folder at a time
            resume = open_resume(path, main)
        elif main:
            folders.claim_run(run_dir)  # exactly one process gets a folder; the others stop here
        from dlrun.data.table_stream import scratch as scratch_folder

        scratch.enter_context(scratch_folder(run_dir))
        check_weights = getattr(conf.model, "check_weights", None)
        if resume is None and main and check_weights is not None:
            check_weights()  # the pretrained weights a new run starts from (or fetched)
        distributed.barrier()
        # data, model pairing, device: problems here stop the run before its folder is written;
        # a resumed run's data is prepared by what it saved (a tokenizer is not trained twice
        # alike), and must be the data it trained on
        fitted = saved_preprocessing(run_dir) if resume is not None else None
        prep = prepare(conf, fitted)  # resolves the `auto` settings
        if resume is None:  # model.init_from: a start from trained weights (not on resume)
            prep = start_from(conf, prep)
        check_freeze(conf, prep)
        if resume is not None:
            check_same_experiment(resume.get("config", {}), conf, path)
            check_unchanged(run_dir, prep, conf)
        return train_and_record(cfg, conf, prep, run_dir, resume, main, started, part, folds)
    except BaseException:
        scratch.close()  # first: a folder holding only scratch/ is still unused
        folders.discard_if_unused(given)  # a folder that holds nothing of the run's own
        raise
    finally:
        scratch.close()
        folders.release(run_dir)


def train_and_record(
    cfg, conf, prep, run_dir: Path, resume, main: bool, started: float, part=None, folds=None
) -> dict:
    """Fit, evaluate and write the run folder; a run that stops early records why. A fold of a
    cross-validated run (`part` fold) prints no table of its own."""
    from dlrun import distributed, folders
    from dlrun.report import print_summary, run_log

    with run_log(run_dir) if main else contextlib.nullcontext():
        if main:
            if resume is None:
                from dlrun.data.preprocess import FOLDER
                from dlrun.training import conf_dict

                # the config as it ran (`auto` settings resolved): the checkpoints hold the same
                text = OmegaConf.to_yaml(OmegaConf.create(conf_dict(conf)))
                atomic_write(run_dir / "config.yaml", lambda f: f.write(text), mode="w")
                prep.data.preprocessing.save(run_dir / FOLDER)  # predicting needs only the run
            else:
                folders.stamp(run_dir)
            write_json(run_dir / "summary.json", running_summary(conf, run_dir))
        entry, spec = prep.entry, prep.spec
        log.info(
            "%s on %s (%s, %s), %s",
            conf.model.name,
            conf.data.name,
            spec.task
            if entry.objective == "supervised"
            else f"{entry.objective}, {spec.task} data",
            "x".join(map(str, spec.shape)),
            ", ".join(f"{k} {v}" for k, v in prep.data.sizes().items()),
        )

        from dlrun.loggers import open_logger

        logger = open_logger(conf.logger if main else None, run_dir, conf.task_name)
        try:
            if entry.family == "torch":
                fitted = fit_network(prep, conf, run_dir, logger, resume)
            elif resume is not None:
                raise ConfigError(
                    f"trainer.resume: {entry.name} has no epochs to resume; train it again."
                )
            else:
                fitted = fit_estimator(prep, conf, run_dir, logger)
        except BaseException as ex:
            if not main:
                raise
            stopped = record_stop(run_dir, conf, ex, started)
            logger.stop(getattr(stopped, "status", "failed"))
            if stopped is not ex:
                raise stopped from None
            raise
        summary = make_summary(conf, prep, fitted, run_dir, started)
        if folds is not None:  # a cross-validated run's refit: no validation rows of its own
            from dlrun.crossval import with_fold_scores

            summary = with_fold_scores(summary, folds, conf)
        if main:
            from dlrun import plots

            history, monitor = fitted.result.history, conf.trainer.early_stopping.monitor
            title = f"{summary['model']} on {summary['data']}, {run_name(run_dir)}"
            curves = plots.plot_curves(history, monitor, title, summary["best_epoch"])
            plots.save(curves, run_dir / "curves.png")
            summary.update(fitted.pictures(run_dir) or {})  # the model's own: predictions, ...
            write_json(run_dir / "summary.json", summary)  # last: a completed run is whole
            logger.close(OmegaConf.to_container(cfg, resolve=True), summary, run_dir)
            if summary["test"]:  # (a fold of a cross-validated run is scored on its val rows)
                log.info("test %s", "  ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
            if part is None:  # a fold prints a line; the refit's table comes with the folds'
                print_summary(summary, prep.entry.family)
        distributed.barrier()
        return summary


def run_name(run_dir: Path) -> str:
    """How a picture names its run: the folder below outputs/ (task, date, time), or its name."""
    parts = Path(run_dir).absolute().parts
    return "/".join(parts[parts.index("outputs") + 1 :]) if "outputs" in parts else parts[-1]


def make_summary(conf, prep, fitted, run_dir: Path, started: float) -> dict:
    """What summary.json holds for a completed run."""
    result, scores, stopping = fitted.result, fitted.scores, conf.trainer.early_stopping
    best_value = result.best_value
    if best_value is None:  # estimators: the monitored metric of the fitted model
        best_value = scores["val"].get(stopping.monitor.removeprefix("val_"))
    health = []
    if prep.entry.family == "torch" and conf.trainer.diagnostics:
        from dlrun.health import findings

        health = [f.as_dict() for f in findings(result.history, conf, result.best_epoch)]
    return {
        "status": "completed",
        "model": conf.model.name,
        "data": conf.data.name,
        "task": prep.spec.task,
        "objective": prep.entry.objective,
        "family": prep.entry.family,  # torch (a network) or estimator (trees)
        "monitor": {"metric": stopping.monitor, "mode": stopping.mode, "best": best_value},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "val": scores["val"],
        "test": scores["test"],
        "params": fitted.params,
        "rows": prep.data.sizes(),  # train, val and test samples
        "wall_time_s": time.perf_counter() - started,
        "samples_per_s": result.samples_seen / result.train_time_s if result.train_time_s else 0.0,
        "device": str(prep.device),
        "cuda_graphs": result.cuda_graphs,
        "startup_s": result.startup_s,
        "versions": versions(),
        "run_dir": str(run_dir),
        "health": health,
        **({"untrained": fitted.untrained} if fitted.untrained else {}),
    }


def running_summary(conf, run_dir: Path) -> dict:
    """summary.json while the run trains: if the process is killed it stays so, and
    `dlrun-report` tells a killed run from a live one by the folder's lock."""
    return {
        "status": "running",
        "model": conf.model.name,
        "data": conf.data.name,
        "run_dir": str(run_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "pid": os.getpid(),
    }


def record_stop(run_dir: Path, conf, ex: BaseException, started: float) -> BaseException:
    """summary.json of a run that stopped before its end, telling the truth about why; returns
    the error to report (a second Ctrl-C becomes a clean `Interrupted`)."""
    import signal

    from dlrun.training import read_records

    epochs = len(read_records(run_dir))  # the epochs whose checkpoints were written
    if isinstance(ex, KeyboardInterrupt):
        where = (
            f"checkpoints/last.pt keeps epoch {epochs}; continue with trainer.resume={run_dir}"
            if epochs
            else "no epoch had ended; nothing to resume"
        )
        ex = Interrupted(f"interrupted by a second Ctrl-C; {where}.", signal.SIGINT)
    status = getattr(ex, "status", "failed")
    first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
    error = first if isinstance(ex, UserError) else f"{type(ex).__name__}: {first}"
    summary = {
        "status": status,
        "error": error,
        "model": conf.model.name,
        "data": conf.data.name,
        "epochs_run": epochs,
        "run_dir": str(run_dir),
        "wall_time_s": time.perf_counter() - started,
        "health": getattr(ex, "health", []),
    }
    try:
        write_json(run_dir / "summary.json", summary)
    except UserError as failed:  # a full disk may refuse even this; the error above says why
        log.warning("summary.json not updated: %s", failed)
    return ex


def open_resume(path: Path, main: bool) -> dict:
    """The checkpoint to continue from, with the folder made consistent first: leftover
    temporary files of a killed write are removed, and best.pt must hold the best epoch that
    last.pt names (restored from last.pt when the kill came between the two writes)."""
    from dlrun.checkpoints import load_checkpoint, remove_leftovers, save_checkpoint

    run_dir = path.parent.parent
    if main:
        for leftover in remove_leftovers(run_dir):
            log.info("removed %s, left by an interrupted write", leftover)
    state = load_checkpoint(path)
    best_epoch = state.get("early_stopping", {}).get("best_epoch", 0)
    best_path = path.parent / "best.pt"
    if not best_epoch:
        return state
    best = load_checkpoint(best_path)["epoch"] if best_path.is_file() else None
    # best.pt may also be ahead of last.pt: written for an epoch that never reached last.pt,
    # which the resumed run computes again, identically
    if best == best_epoch or (best is not None and best > state["epoch"]):
        return state
    if best_epoch == state["epoch"] and main:
        save_checkpoint(best_path, state)
        log.warning(
            "repaired %s: it now holds epoch %d, the best, from last.pt", best_path, best_epoch
        )
        return state
    held = "is missing" if best is None else f"holds epoch {best}"
    raise UserError(
        f"trainer.resume: {best_path} {held}, but {path} names epoch {best_epoch} as the best; "
        "the folder was changed since it was written, so it cannot be resumed exactly."
    )


def find_checkpoint(resume: str, task_name: str) -> Path:
    """trainer.resume: a run folder, a checkpoint file, or auto (the task's latest last.pt)."""
    if resume == "auto":
        from dlrun.folders import is_active

        found = sorted(
            (
                p
                for p in (Path("outputs") / task_name).glob("**/checkpoints/last.pt")
                if not is_active(p.parent.parent)  # not a run another process is training
            ),
            key=lambda p: p.stat().st_mtime,
        )
        if not found:
            raise UserError(
                f"trainer.resume=auto: no run of task '{task_name}' with checkpoints/last.pt under "
                f"{Path('outputs') / task_name}."
            )
        return found[-1]
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not (path.exists() and regular_file(path, "trainer.resume", "a checkpoint file")):
        raise UserError(
            f"trainer.resume: {resume} is neither a run folder with checkpoints/last.pt nor a checkpoint file."
        )
    if path.parent.name != "checkpoints":
        raise UserError(f"trainer.resume: {path} is not inside a run folder's checkpoints/.")
    return path


# What may change when a run is resumed: where it runs, how long, and the resume itself.
RESUME_MAY_CHANGE = {
    "trainer.resume",
    "trainer.max_epochs",
    "trainer.device",
    "trainer.early_stopping.patience",
    # how fast, not what: the same steps on the same batches
    "trainer.cuda_graphs",
    "trainer.compile",
    "trainer.channels_last",
    "trainer.data_placement",
    "trainer.workers",
    "data.storage",
}


def check_same_experiment(saved: dict, conf, path: Path) -> None:
    """A checkpoint continues only the experiment that wrote it."""
    from dlrun.training import conf_dict

    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    now, before = flat(conf_dict(conf)), flat(saved)
    differ = sorted(
        k
        for k in set(now) | set(before)
        if now.get(k) != before.get(k)
        and k not in RESUME_MAY_CHANGE
        # a setting newer than the checkpoint: the run behaved as its default
        and not (k not in before and now[k] == schema_default(conf, k))
    )
    if differ:
        shown = "; ".join(f"{k} was {before.get(k)!r}, now {now.get(k)!r}" for k in differ[:5])
        raise ConfigError(f"trainer.resume: {path} was saved by a different experiment: {shown}.")


def schema_default(conf, key: str):
    """The default of the setting `key` ('data.augment.hflip') in its schema, or a value equal
    to nothing where there is none."""
    import dataclasses

    *path, name = key.split(".")
    node = conf
    for part in path:
        node = getattr(node, part, None)
    if not dataclasses.is_dataclass(node):
        return object()
    for f in dataclasses.fields(node):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return object()


@dataclass
class Prepared:
    """Everything a model family needs before fit (or before loading a trained model)."""

    data: object  # dlrun.data.DataModule
    entry: object  # dlrun.registry.ModelEntry
    spec: object  # the data's spec as the model sees it
    splits: dict  # split name -> (inputs shaped for the model, targets)
    device: object  # torch.device
    takes: str = "flat"  # the input kind the model reads the data as (dlrun.data.adapt)
    init: object = None  # dlrun.transfer.Source: the weights training starts from, if any

    def inputs(self, split: str, tcfg):
        """The split's model inputs on the device: a tensor, or LazyInputs for samples read
        from disk (trainer.workers read them ahead, trainer.batch_size at a time, for one pass:
        the workers end with it)."""
        from dlrun.data.lazy import on_device

        x, size = self.splits[split][0], tcfg.batch_size
        return on_device(x, self.data, split, self.device, self.takes, tcfg.workers, size, False)

    @property
    def lengths(self) -> dict | None:
        """Padded sequences read by a sequence model: split -> each sample's valid steps; None
        for other data, and for models that flatten the sequences (zero padding and all)."""
        return getattr(self.data, "lengths", None) if self.takes == "sequence" else None


def prepare(conf, fitted=None) -> Prepared:
    """Seed, build the data, bridge it to the model's input, and pick the device. With `fitted`
    (a run's saved preprocessing) the data is prepared by it, as in that run's training."""
    from dlrun.data import SPLITS, adapt, build_data
    from dlrun.data.lazy import is_lazy
    from dlrun.registry import get_model, pairing_refused
    from dlrun.training import job_device, seed_everything

    seed_everything(conf.seed)
    entry = get_model(conf.model.name)
    settle = getattr(conf.model, "settle", None)
    if settle is not None:  # settings that follow the model's weights (input size, normalization)
        settle(conf)
    data = build_data(conf.data, fitted)
    takes = entry.input_for(data.spec)
    try:
        spec = data.spec.view(takes)
    except ConfigError:  # a pairing that makes no sense stops here, naming both sides
        raise pairing_refused(entry.name, data.spec) from None
    size = getattr(conf.model, "input_size", None)  # a model built for one image size
    if takes == "image" and size and spec.shape[1:] != (size, size):
        data = data.resized(size)
        spec = data.spec.view(takes)
    check_task_settings(conf, spec, entry.objective)
    device = job_device(conf.trainer.device)  # a sweep's jobs each on their own GPU
    if conf.trainer.precision == "16" and device.type != "cuda":
        raise ConfigError(
            f"trainer.precision=16 needs a CUDA device; this run is on {device}. Use bf16 or 32."
        )
    lazy = is_lazy(data.x_train)  # read from disk a batch at a time: prepared on the device
    if lazy and (entry.family != "torch" or entry.objective == "gan"):
        raise ConfigError(
            f"data.load: {entry.name} needs every sample in memory, and {conf.data.name} is read "
            "from disk a batch at a time (its samples would take "
            f"{sum(data.split(s)[0].nbytes for s in SPLITS) / 1e9:.2f} GB in memory). Set "
            "data.load=memory, or train a network."
        )
    check_permutation(conf, data, entry, lazy)
    splits = {
        name: (x if lazy else adapt(x, data.spec, takes), y)
        for name in SPLITS
        for x, y in [data.split(name)]
    }
    return Prepared(data, entry, spec, splits, device, takes)


def check_permutation(conf, data, entry, lazy: bool) -> None:
    """trainer.permutation_importance is for a supervised network on a table in memory; said
    before training, not after it."""
    if not conf.trainer.permutation_importance:
        return
    why = None
    if entry.family != "torch":
        why = f"{entry.name} draws its own feature importances (feature_importance.png)"
    elif entry.objective != "supervised":
        why = f"{entry.name} learns without labels, so it has no score to lose"
    elif data.spec.kind != "tabular":
        why = f"{data.spec.name} is {data.spec.kind} data, not a table of features"
    elif lazy:
        why = f"{data.spec.name} is read from disk a batch at a time (data.load=stream)"
    if why:
        raise ConfigError(
            "trainer.permutation_importance: shuffling features measures a network trained on "
            f"a table in memory; {why}. Set it to false."
        )


def start_from(conf, prep: Prepared) -> Prepared:
    """With `model.init_from`: the weights read and checked against this data, and the data
    prepared as the run they come from prepared its own (its normalization, a table's
    encoder, a text's tokenizer), so the weights see inputs like those they learned from."""
    import dataclasses

    from dlrun.transfer import check_data, open_source

    source = open_source(conf, prep.entry)
    if source is None:
        return prep
    check_data(source, prep.data.spec, conf)
    before = source.preprocessing
    if before is not None and (before.encoder is not None or before.norm is not None):
        prep = prepare(conf, before)
    return dataclasses.replace(prep, init=source)


def check_freeze(conf, prep: Prepared) -> None:
    """trainer.freeze's patterns checked on the network as built, before the run folder holds
    anything (a pattern that matches nothing is a ConfigError, and the folder is discarded)."""
    from dlrun.params import freeze, patterns_of

    if prep.entry.family == "torch" and patterns_of(conf.trainer.freeze):
        freeze(build_network(prep, conf, start=False), conf.trainer)


def saved_preprocessing(run_dir: Path):
    """The run's saved preprocessing, or None for a run from before dlrun saved it."""
    from dlrun.data.preprocess import FOLDER, Preprocessing

    folder = Path(run_dir) / FOLDER
    return Preprocessing.load(folder) if (folder / "preprocessing.json").is_file() else None


def prepare_saved(conf, run_dir: Path) -> Prepared:
    """What `prepare` gives, from a trained run's folder alone: its saved preprocessing instead
    of the data (no samples: `splits` is empty). A run saved before dlrun kept its
    preprocessing is prepared from its data, as before."""
    from dlrun.data.preprocess import FOLDER, Preprocessing
    from dlrun.registry import get_model
    from dlrun.training import job_device

    if not (Path(run_dir) / FOLDER / "preprocessing.json").is_file():
        log.info("%s keeps no preprocessing (an older run): reading its data again", run_dir)
        return prepare(conf)
    saved = Preprocessing.load(Path(run_dir) / FOLDER)
    entry = get_model(conf.model.name)
    takes = entry.input_for(saved.spec)
    spec = saved.spec.view(takes)
    check_task_settings(conf, spec, entry.objective)
    return Prepared(saved, entry, spec, {}, job_device(conf.trainer.device), takes)


def check_unchanged(run_dir: Path, prep: Prepared, conf) -> None:
    """dlrun-eval reads the run's data again: refused when its files changed since training
    (their fingerprints), or when what it fits again differs from what the run saved."""
    import numpy as np

    from dlrun.data.preprocess import FOLDER, Preprocessing

    folder = Path(run_dir) / FOLDER
    if not (folder / "preprocessing.json").is_file():
        return  # an older run: nothing saved to compare with
    saved, now = Preprocessing.load(folder), prep.data.preprocessing
    for key, fingerprint in saved.sources.items():
        if now.sources.get(key) != fingerprint:
            what = "file" if key == "data.path" else "folder"
            named = getattr(conf.data, key.split(".", 1)[1])
            raise UserError(
                f"{key}: the {what} {named} changed since the run trained (its "
                f"{'content hash' if what == 'file' else 'listing of files'} differs), so its "
                "validation and test rows are not the ones the run was scored on. Evaluate on "
                "the original data, or train again."
            )
    same = saved.spec == now.spec and (saved.norm is None) == (now.norm is None)
    if same and saved.norm is not None:
        same = all(np.array_equal(a, b) for a, b in zip(saved.norm, now.norm, strict=True))
    if not same:
        raise UserError(
            f"{folder}: what the data gives now (its normalization or classes) differs from what "
            "the run saved, so this is not the data it was trained on. Evaluate on the original "
            "data, or train again."
        )


def distributed_device_type(conf) -> str:
    """The process group's device kind under torchrun (NCCL for GPUs, gloo for CPUs)."""
    from dlrun import distributed

    if distributed.world_size() <= 1:
        return "cpu"
    import torch

    wants_gpu = conf.trainer.device.startswith("cuda") or conf.trainer.device == "auto"
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def check_task_settings(conf, spec, objective: str = "supervised") -> None:
    """The monitor and the loss must fit the objective (and for supervised models the data's
    task); `auto` settings are resolved here."""
    from dlrun.metrics import best_mode
    from dlrun.objectives import DEFAULT_MONITOR, LOSSES, objective_metrics

    trainer = conf.trainer
    stopping = trainer.early_stopping
    if stopping.monitor == "val_loss" and objective in DEFAULT_MONITOR:  # left at its default
        stopping.monitor = DEFAULT_MONITOR[objective]
    what = f"a {spec.task} metric" if objective == "supervised" else f"a metric of the {objective}"
    allowed = [f"val_{m}" for m in objective_metrics(objective, spec.task, conf.model)]
    if stopping.monitor not in allowed:
        raise ConfigError(
            not_one_of("trainer.early_stopping.monitor", what, stopping.monitor, allowed)
        )
    if stopping.mode == "auto":
        stopping.mode = best_mode(stopping.monitor)
    losses = LOSSES[spec.task if objective == "supervised" else objective]
    if trainer.loss == "auto":
        trainer.loss = losses[0]
    elif trainer.loss not in losses:
        what = f"a {spec.task} loss" if objective == "supervised" else f"a loss of the {objective}"
        raise ConfigError(not_one_of("trainer.loss", what, trainer.loss, ("auto", *losses)))
    from dlrun.weights import check

    check(conf, spec, objective)  # trainer.class_weight


@dataclass
class Fitted:
    """A trained model's record: its fit, its val and test scores (with the best checkpoint),
    its size, and `pictures(run_dir)`, which draws its own plots besides the curves."""

    result: object  # dlrun.training.FitResult
    scores: dict  # split -> metrics
    params: int
    pictures: object  # pictures(run_dir) -> None
    untrained: dict | None = None  # the metrics before training, where an objective asks


def confusion_pictures(spec, y_test, outputs):
    """pictures() of a model that predicts: its test predictions (dlrun.plots.save_predictions)."""
    from dlrun import plots

    return lambda run_dir: plots.save_predictions(run_dir, spec, y_test, outputs)


def build_network(prep, conf, start: bool = False):
    """The network of a torch model, sized from the data; a regression network predicts in the
    target's own units (dlrun.nn.TargetScaled), a GAN generates pixels normalized like the
    data's (dlrun.nn.GANNet.set_scale). With `start` (a new run), a pretrained network loads
    the weights it starts from; elsewhere a checkpoint's weights replace them."""
    import numpy as np

    model = prep.entry.build(conf.model, prep.spec)
    if start and hasattr(model, "load_pretrained"):
        model.load_pretrained()
    if prep.entry.objective == "gan":  # its generator's pixels, normalized like the data's
        model.set_scale(prep.data.norm)
    if prep.entry.objective == "supervised" and prep.spec.task == "regression":
        from dlrun.nn import TargetScaled

        if "train" in prep.splits:
            y = prep.splits["train"][1]
            y = y.reshape(len(y), -1).astype(np.float64)  # (N, T)
            mean, std = y.mean(axis=0), np.maximum(y.std(axis=0), 1e-8)
        else:  # a saved run: its checkpoint holds the target's mean and std
            mean, std = np.zeros(prep.spec.num_targets), np.ones(prep.spec.num_targets)
        model = TargetScaled(model, mean, std)
    return model


def fit_network(prep, conf, run_dir: Path, logger, resume=None) -> Fitted:
    """The torch loop for the model's objective, then its scores and pictures."""
    import torch

    from dlrun.objectives import objective_for
    from dlrun.params import freeze
    from dlrun.report import epoch_progress
    from dlrun.training import fit_torch

    device = prep.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        # Denormal floats (a saturated tanh RNN makes many) slow x86 CPUs several times over;
        # flushing them to zero changes no result that matters.
        torch.set_flush_denormal(True)
    model = build_network(prep, conf, start=resume is None)
    if prep.init is not None and resume is None:
        from dlrun.transfer import load_into

        log.info("%s", load_into(model, prep.init, prep.spec))
    objective = objective_for(conf, prep, device, run_dir)
    frozen = freeze(model, conf.trainer, objective)  # trainer.freeze (the loop applies it too)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s trainable parameters on %s", f"{params:,}", device)
    if frozen.params:
        log.info(
            "%s parameters frozen (trainer.freeze=%s)%s",
            f"{sum(p.numel() for p in frozen.params):,}",
            conf.trainer.freeze,
            f" until epoch {frozen.unfreeze_at}" if frozen.unfreeze_at else "",
        )
    untrained = None
    validating = len(prep.splits["val"][1]) > 0  # not in a cross-validated run's refit
    if getattr(objective, "measure_untrained", False) and validating:  # where training starts
        x_val = prep.inputs("val", conf.trainer)
        untrained = {"val": objective.evaluate(model.to(device), x_val, prep.splits["val"][1])}
        # (the objectives that measure an untrained model read no lengths)
        log.info(
            "untrained: %s", "  ".join(f"val_{k} {v:.4g}" for k, v in untrained["val"].items())
        )
    from dlrun.training import last_epoch

    with epoch_progress(last_epoch(conf), conf.trainer.early_stopping.monitor) as on_epoch:
        reporter = trial_reporter(conf)  # a trial of a search that prunes (dlrun.search)

        def on_record(record: dict, improved: bool) -> None:
            on_epoch(record, improved)
            logger.log(record)
            if reporter is not None:
                reporter.log(record)  # Pruned when the search's pruner stops the trial

        on_record.step = getattr(on_epoch, "step", None)  # the bar of an epoch's steps

        result = fit_torch(
            model,
            prep.splits,
            prep.spec,
            conf,
            run_dir,
            device,
            progress=on_record,
            resume=resume,
            data=prep.data,
            takes=prep.takes,
            objective=objective,
        )
    # the best checkpoint is loaded: score it with the objective's own evaluation
    scores, inputs = score(prep, model, objective, conf)
    pictures = no_pictures  # a fold of a cross-validated run has no test rows to draw
    if "test" in inputs:
        pictures = objective.pictures(model, inputs["test"], prep)
    if conf.trainer.permutation_importance and not validating:
        log.info("permutation importance: the refit has no validation rows; see each fold's")
    elif conf.trainer.permutation_importance:
        importance = permutation_importance(prep, model, conf)
        pictures = with_importance(pictures, importance, prep.data, "permutation")
    return Fitted(result, scores, params, pictures, untrained)


def no_pictures(run_dir: Path) -> None:
    """What a run without test rows draws besides its curves: nothing."""


def trial_reporter(conf):
    """dlrun.search.Reporter when this run is a trial of a search that prunes (one process
    only: not under torchrun); else None."""
    from dlrun import distributed

    if distributed.active():
        return None
    from dlrun.search import job_reporter

    return job_reporter(conf)


def with_importance(pictures, importance, data, how: str = "the model's own"):
    """`pictures` that also draw the feature importances (dlrun.plots.save_importance)."""

    def drawn(run_dir: Path):
        from dlrun import plots

        plots.save_importance(run_dir, importance, data.spec, data.feature_names, how)
        return pictures(run_dir)

    return drawn


PERMUTATION_REPEATS = 5  # shuffles of each feature (scikit-learn's n_repeats)


def permutation_importance(prep, model, conf):
    """Each feature's importance to a trained network on a table: how much its validation
    accuracy (or rmse) worsens when that feature's values are shuffled among the samples,
    averaged over PERMUTATION_REPEATS seeded shuffles (scikit-learn's permutation_importance)."""
    import numpy as np
    import torch
    from sklearn.inspection import permutation_importance as permuted

    from dlrun.metrics import compute_metrics
    from dlrun.training import predict

    task = prep.spec.task
    x, y = prep.splits["val"]

    class Network:  # what scikit-learn calls: fit (never used) and a scorer over numpy rows
        def fit(self, *_):
            return self

    def scorer(_, rows, targets) -> float:
        rows = torch.as_tensor(np.ascontiguousarray(rows, dtype=np.float32), device=prep.device)
        outputs = predict(model, rows, task, conf.trainer.precision)
        metrics = compute_metrics(task, targets, outputs)
        return metrics["accuracy"] if task == "classification" else -metrics["rmse"]

    log.info(
        "permutation importance: %d features x %d shuffles on %d validation samples",
        x.shape[1],
        PERMUTATION_REPEATS,
        len(x),
    )
    found = permuted(
        Network(), x, y, scoring=scorer, n_repeats=PERMUTATION_REPEATS, random_state=conf.seed
    )
    return found.importances_mean


def score(prep, model, objective, conf) -> tuple[dict, dict]:
    """Validation and test metrics of a trained model, the one way training and dlrun-eval
    measure them: a network by its objective's evaluation (returns the splits' inputs on the
    device too), an estimator by the shared metric code (returns its outputs too)."""
    # (a cross-validated run's refit has no validation rows, its folds no test rows)
    splits = {n: prep.splits[n] for n in ("val", "test") if len(prep.splits[n][1])}
    if objective is not None:
        import torch

        inputs = {name: prep.inputs(name, conf.trainer) for name in splits}
        lengths = {
            name: None
            if prep.lengths is None
            else torch.as_tensor(prep.lengths[name], device=prep.device)
            for name in inputs
        }
        scores = {
            name: objective.evaluate(model, inputs[name], splits[name][1], lengths=lengths[name])
            for name in inputs
        }
        return {"val": {}, "test": {}, **scores}, inputs
    from dlrun.metrics import compute_metrics

    outputs = {name: model.predict(x) for name, (x, _) in splits.items()}
    task, loss = prep.spec.task, conf.trainer.loss
    scores = {name: compute_metrics(task, splits[name][1], outputs[name], loss) for name in outputs}
    return {"val": {}, "test": {}, **scores}, outputs


def fit_estimator(prep, conf, run_dir: Path, logger) -> Fitted:
    """The estimator's own fit (no epoch loop); saved in a format that runs no code on load."""
    from dlrun.training import stop_on_signals

    entry, spec, splits = prep.entry, prep.spec, prep.splits
    estimator = entry.build(
        conf.model,
        spec,
        seed=conf.seed,
        device=prep.device,
        patience=conf.trainer.early_stopping.patience,
    )
    weights = getattr(prep.data, "weights", None)  # data.sample_weight
    estimator.row_weights = None if weights is None else weights["train"]
    estimator.reporter = trial_reporter(conf)  # XGBoost's rounds feed a search's pruner
    with stop_on_signals(entry.name):
        result = estimator.fit(splits, conf, run_dir)
    for record in result.history:
        logger.log(record)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    path = estimator.save(ckpt_dir)
    rounds = f" ({result.epochs_run} rounds)" if result.epochs_run > 1 else ""
    log.info("%s fitted in %.2f s%s; saved %s", entry.name, result.train_time_s, rounds, path.name)
    scores, outputs = score(prep, estimator, None, conf)
    pictures = no_pictures
    if "test" in outputs:  # (a fold of a cross-validated run has no test rows)
        pictures = confusion_pictures(spec, splits["test"][1], outputs["test"])
    importance = getattr(estimator.model, "feature_importances_", None)
    if importance is not None:
        pictures = with_importance(pictures, importance, prep.data)
    return Fitted(result, scores, estimator.size(), pictures)


def versions() -> dict[str, str]:
    import sys

    import numpy
    import sklearn
    import torch

    import dlrun

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dlrun": dlrun.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }
    if "xgboost" in sys.modules:
        found["xgboost"] = sys.modules["xgboost"].__version__
    return found
