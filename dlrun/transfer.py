"""Transfer learning: what a network's head is, so that starting from other weights
(`model.init_from`, pretrained torchvision weights), freezing (`trainer.freeze: [body]`) and
per-layer learning rates (`optim.head_lr_mult`, `optim.layer_decay`) all mean the same layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrun.errors import UserError


def head_names(net) -> list[str]:
    """Names (as in `net.state_dict()`) of the head's parameters and buffers: the layer that
    makes the network's outputs. A network names it `head` (dlrun's sequence models do);
    otherwise it is the last layer with parameters in the network's own order (an MLP's or
    LeNet-5's last Linear, torchvision's `fc` or `classifier`'s last Linear)."""
    for prefix, module in net.named_modules():
        head = getattr(module, "head", None)
        if (
            head is not None
            and hasattr(head, "parameters")
            and any(True for _ in head.parameters())
        ):
            base = f"{prefix}.head" if prefix else "head"
            return [f"{base}.{name}" for name in head.state_dict()]
    last = None
    for prefix, module in net.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = prefix
    if last is None:
        return []
    module = net.get_submodule(last)
    return [f"{last}.{name}" if last else name for name in module.state_dict()]


# ------------------------------------------------------------------ model.init_from: a start


@dataclass
class Source:
    """Trained weights a new run starts from (`model.init_from`, `model.init_part`)."""

    given: str  # as the user wrote it
    checkpoint: Path
    run_dir: Path | None  # the run folder it belongs to (its preprocessing), if any
    state: dict  # tensor name -> tensor, the part taken, a regression wrapper's prefix gone
    part: str | None  # e.g. "encoder"
    model: str  # the model that trained it
    preprocessing: Any = None  # dlrun.data.preprocess.Preprocessing of its run, if saved

    @property
    def classes(self) -> tuple[str, ...] | None:
        spec = getattr(self.preprocessing, "spec", None)
        return None if spec is None or spec.task != "classification" else spec.class_labels


def open_source(conf, entry) -> Source | None:
    """The weights `model.init_from` names, read safely (weights only), with the run's saved
    preprocessing; None when it names nothing. Every problem is one clear message."""
    given = getattr(conf.model, "init_from", None)
    if not given:
        return None
    if entry.family != "torch":
        raise UserError(
            f"model.init_from: '{conf.model.name}' is not a network; only networks start from "
            "trained weights. Remove model.init_from."
        )
    from dlrun.checkpoints import load_checkpoint
    from dlrun.runner import saved_preprocessing

    path = Path(given).expanduser()
    if path.is_dir():
        checkpoint = path / "checkpoints" / "best.pt"
        if not checkpoint.is_file():
            checkpoint = path / "best.pt"
    else:
        checkpoint = path
    if not checkpoint.is_file():
        raise UserError(
            f"model.init_from: '{given}' is neither a run folder (with checkpoints/best.pt) nor "
            "a checkpoint file."
        )
    saved = load_checkpoint(checkpoint)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise UserError(f"model.init_from: {checkpoint} is not a dlrun checkpoint (no 'model').")
    state = dict(saved["model"])
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run_dir is None and (checkpoint.parent / "preprocessing").is_dir():
        run_dir = checkpoint.parent
    model = str(saved.get("config", {}).get("model", {}).get("name", "unknown"))
    if state and all(k.startswith("net.") or k in ("mean", "std") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}  # regression
    part = getattr(conf.model, "init_part", None)
    if part is None and {k.split(".")[0] for k in state} == {"encoder", "decoder"}:
        part = "encoder"  # an autoencoder's: what a classifier can start from
    if part is not None:
        prefix = f"{part}."
        taken = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not taken:
            parts = sorted({k.split(".")[0] for k in state})
            raise UserError(
                f"model.init_part: {checkpoint} ({model}) has no part '{part}'. Its parts: "
                f"{', '.join(parts)}."
            )
        state = taken
    pre = saved_preprocessing(run_dir) if run_dir is not None else None
    return Source(given, checkpoint, run_dir, state, part, model, pre)


def check_data(source: Source, spec, conf) -> None:
    """The new data must look like the data the weights learned from: the same kind, image
    channels and size, features per sample or per step. Says what to set when it does not."""
    if source.preprocessing is None:
        return  # a bare checkpoint: the weights' shapes are checked when they are loaded
    before = source.preprocessing.spec
    normalized = source.preprocessing.norm is not None
    if before.vocab_size is None and normalized != bool(getattr(conf.data, "normalize", False)):
        raise UserError(
            f"data.normalize: {source.given} learned from inputs "
            f"{'normalized by its training split' if normalized else 'as they are'}; set "
            f"data.normalize={str(normalized).lower()} so the weights see inputs like those."
        )
    if before.kind != spec.kind:
        raise UserError(
            f"model.init_from: {source.given} learned from {before.kind} data "
            f"({_shape(before.shape)}); this data is {spec.kind} ({_shape(spec.shape)})."
        )
    if spec.kind == "image":
        (c0, h0, w0), (c1, h1, w1) = before.shape, spec.shape
        if c0 != c1:
            named = {1: "grayscale", 3: "RGB"}
            raise UserError(
                f"model.init_from: {source.given} learned from {c0}-channel images "
                f"({named.get(c0, 'other')}); this data has {c1} channels "
                f"({named.get(c1, 'other')}). "
                + (
                    "Set data.grayscale=true."
                    if c0 == 1 and hasattr(conf.data, "grayscale")
                    else "Give it images with as many channels."
                )
            )
        if (h0, w0) != (h1, w1):
            key = "model.input_size" if hasattr(conf.model, "input_size") else "data.image_size"
            raise UserError(
                f"model.init_from: {source.given} learned from {h0}x{w0} images; this data "
                f"gives {h1}x{w1}. Set {key}={h0}."
            )
    elif spec.kind == "tabular" and before.shape != spec.shape:
        raise UserError(
            f"model.init_from: {source.given} learned from {before.shape[0]} features per "
            f"sample; this data has {spec.shape[0]}. Use a table with the same columns."
        )
    elif spec.kind == "sequence" and before.shape[1:] != spec.shape[1:]:
        raise UserError(
            f"model.init_from: {source.given} learned from {before.shape[1]} features per step; "
            f"this data has {spec.shape[1]}."
        )


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def load_into(net, source: Source, spec) -> str:
    """Copy `source`'s weights into `net`: by name where the names agree, else in order (layer
    by layer, e.g. an autoencoder's encoder into an MLP) where the shapes agree. The head's
    rows are kept for the classes both runs have (by name); the rest of the head starts at
    zero (re-initialised). Anything else that does not fit is an error naming it. Returns
    the one line that says what happened."""
    import torch

    from dlrun.nn import TargetScaled

    inner = net.net if isinstance(net, TargetScaled) else net
    target = inner.state_dict()
    head = set(head_names(inner))
    by_name = all(k in source.state for k in target if k not in head)
    if by_name:
        pairs = {k: k for k in target if k in source.state}
    else:
        pairs = dict(zip(target, source.state, strict=False))  # in order, as far as both go
    wrong = [
        f"{k} {_shape(target[k].shape)} (from {s} {_shape(source.state[s].shape)})"
        for k, s in pairs.items()
        if k not in head and tuple(target[k].shape) != tuple(source.state[s].shape)
    ]
    missing = [k for k in target if k not in head and k not in pairs]
    if wrong or missing:
        listed = wrong + [f"{k} (nothing to load it from)" for k in missing]
        raise UserError(
            f"model.init_from: {source.given} ({source.model}"
            f"{', ' + source.part if source.part else ''}) does not fit this "
            f"{type(inner).__name__}: {'; '.join(listed[:4])}"
            f"{f' and {len(listed) - 4} more' if len(listed) > 4 else ''}. Build the model "
            "with the same layers as the run it starts from (its config.yaml lists them)."
        )
    new = dict(target)
    kept_rows, reinit = None, []
    classes = spec.class_labels if spec.task == "classification" else None
    for key, src in pairs.items():
        value = source.state[src]
        if key in head and classes and source.classes and source.classes != classes:
            value, kept_rows = _shared_rows(value, target[key], source.classes, classes)
            if value is None:
                reinit.append(key)
                continue
        elif tuple(value.shape) != tuple(target[key].shape):
            reinit.append(key)
            continue
        new[key] = value.to(target[key].dtype)
    reinit += [k for k in head if k not in pairs]
    for key in reinit:  # a new head starts at zero: see _shared_rows
        new[key] = torch.zeros_like(target[key])
    with torch.no_grad():
        inner.load_state_dict(new)
    loaded = sum(k not in reinit for k in pairs)
    line = (
        f"started from {source.checkpoint} ({source.model}"
        f"{', its ' + source.part if source.part else ''}): {loaded} of {len(target)} tensors"
        f"{'' if by_name else ', matched layer by layer'}"
    )
    if reinit:
        line += f"; re-initialised: {', '.join(sorted(reinit))}"
        shapes = [
            (source.state[pairs[k]].shape[0], target[k].shape[0]) for k in reinit if k in pairs
        ]
        if classes and source.classes and source.classes != classes:
            line += f" ({len(source.classes)} classes -> {len(classes)}, none in common)"
        elif shapes and shapes[0][0] != shapes[0][1]:
            line += f" ({shapes[0][0]} -> {shapes[0][1]} outputs)"
    if kept_rows:
        line += f"; the head's rows kept for the classes both have ({kept_rows})"
    return line


def _shared_rows(value, built, before: tuple, now: tuple):
    """The head's weight or bias with the rows of classes `before` and `now` share copied
    from `value` into `built`; (None, None) when no class is shared or the inputs differ."""
    import torch

    shared = [(before.index(c), i) for i, c in enumerate(now) if c in before]
    if not shared or tuple(value.shape[1:]) != tuple(built.shape[1:]):
        return None, None
    # The rows of new classes start at zero (as MAE's fine-tuning starts its head near zero):
    # a random head on trained features gives large logits whose first gradients would
    # scramble the very features the run starts from; from zero, the head learns first.
    out = torch.zeros_like(built)
    for old, i in shared:
        out[i] = value[old]
    return out, ", ".join(now[i] for _, i in shared)
