"""Which parameters train, and how fast: freezing and per-layer learning rates.

- `trainer.freeze`: parameter names to freeze (shell-style patterns on the names of
  `net.named_parameters()`, e.g. `0.*` or `features.*`), or `body`: every parameter but the
  head's (dlrun.transfer.head_names). A frozen parameter has `requires_grad=False` and stays out
  of its optimizer, so no gradient is computed or applied for it.
- `trainer.freeze_bn`: `eval` keeps batch-norm layers whose parameters are all frozen in eval
  mode while the rest trains (their running statistics do not move); `train` lets them move.
- `trainer.unfreeze_at_epoch`: from that epoch on the frozen parameters train too. Their
  parameter groups are in the optimizer from the start, empty, so the scheduler shapes their
  rate from the first step as for every other group; at the epoch they are filled in, and the
  optimizer's state for the others is kept as it was.
- `optim.head_lr_mult` and `optim.layer_decay`: the head learns at lr * head_lr_mult, the
  layer k below it at lr * layer_decay**k.

A layer (`layers`): walking the parameters in the network's own order, each module that owns a
weight matrix or kernel (a parameter named `weight`, `weight_*` or `*_weight` with two or more
dimensions: Linear, Conv, Embedding, a recurrent layer, attention's input projection) starts a
new one. One-dimensional parameters (biases, norm scales and shifts) belong to the layer before
them; other free tensors (a class token, a learned position table) to the layer after them.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

from dlrun.errors import ConfigError

log = logging.getLogger("dlrun")

BODY = "body"  # in trainer.freeze: every parameter but the head's
SHOWN = 8  # parameter names an error message shows


def patterns_of(freeze) -> list[str]:
    """trainer.freeze as a list (a single word or pattern may be given alone)."""
    if freeze is None:
        return []
    return [freeze] if isinstance(freeze, str) else [str(p) for p in freeze]


def user_name(net, name: str) -> str:
    """A parameter's name as the user's model has it: a regression network is wrapped in
    dlrun.nn.TargetScaled, which adds `net.` in front of every name."""
    from dlrun.nn import TargetScaled

    return name.removeprefix("net.") if isinstance(net, TargetScaled) else name


def head_params(module) -> set[str]:
    """Names of the head's parameters (buffers left out)."""
    from dlrun.transfer import head_names

    params = {name for name, _ in module.named_parameters()}
    return {name for name in head_names(module) if name in params}


def phase_modules(net, objective) -> dict[str, tuple[str, object]]:
    """phase name -> (the prefix of its parameters' names, the module it trains)."""
    modules = {}
    for phase in objective.phases if objective is not None else ():
        if phase.module is None:
            modules[phase.name] = ("", net)
        else:
            modules[phase.name] = (f"{phase.module}.", getattr(net, phase.module))
    return modules or {"main": ("", net)}


@dataclass
class Frozen:
    """The parameters `trainer.freeze` names, and the batch norms kept in eval mode while they
    are frozen."""

    params: list = field(default_factory=list)  # in the network's order
    norms: list = field(default_factory=list)  # batch-norm modules held in eval mode
    unfreeze_at: int | None = None  # the epoch they start training (trainer.unfreeze_at_epoch)

    def train_mode(self, model) -> None:
        """`model.train()`, but frozen batch norms stay in eval mode."""
        model.train()
        for norm in self.norms:
            norm.eval()

    def release(self) -> None:
        """Every frozen parameter trains from now on (and its batch norms with it)."""
        for p in self.params:
            p.requires_grad_(True)
        self.norms = []


def freeze(net, tcfg, objective=None) -> Frozen:
    """Apply trainer.freeze (and freeze_bn) to `net`; the same result when called again. A
    pattern that matches nothing, or a phase left with nothing to train, is a ConfigError."""
    from torch import nn

    patterns = patterns_of(tcfg.freeze)
    if not patterns:
        return Frozen()
    named = list(net.named_parameters())
    modules = phase_modules(net, objective)
    head = set()
    for prefix, module in modules.values():
        head |= {prefix + name for name in head_params(module)}
    problems, names = [], set()
    for pattern in patterns:
        if pattern == BODY:
            found = {name for name, _ in named if name not in head}
        else:
            found = {
                name
                for name, _ in named
                if fnmatch.fnmatchcase(name, pattern)
                or fnmatch.fnmatchcase(user_name(net, name), pattern)
            }
        if not found:
            problems.append(no_match(net, pattern, named))
        names |= found
    for phase, (prefix, module) in modules.items():
        if all(prefix + name in names for name, _ in module.named_parameters()):
            what = "the network" if not prefix else f"{prefix[:-1]} (what phase {phase} trains)"
            hint = "" if BODY in patterns else f" ({BODY} keeps the head training)"
            problems.append(
                f"trainer.freeze: {patterns} freezes every parameter of {what}; nothing would "
                f"train. Freeze fewer{hint}."
            )
    if problems:
        raise ConfigError(problems)
    params = [p for name, p in named if name in names]
    for p in params:
        p.requires_grad_(False)
    norms = []
    if tcfg.freeze_bn == "eval":
        norms = [
            m
            for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters())
            and not any(p.requires_grad for p in m.parameters())
        ]
    return Frozen(params, norms, tcfg.unfreeze_at_epoch)


def no_match(net, pattern: str, named) -> str:
    if pattern == BODY:
        return (
            f"trainer.freeze: {BODY} matches no parameter: the network has no layer besides its "
            "head. Name the parameters to freeze instead."
        )
    shown = [user_name(net, name) for name, _ in named]
    more = f", ... ({len(shown)} in all)" if len(shown) > SHOWN else ""
    return (
        f"trainer.freeze: '{pattern}' matches no parameter of the network. Its parameters are "
        f"named like: {', '.join(shown[:SHOWN])}{more}. Give shell-style patterns such as "
        f"'{shown[0].split('.')[0]}.*', or {BODY} for all but the head."
    )


def layers(module) -> list[list[tuple[str, object]]]:
    """The module's parameters as layers, input first (see the module's docstring)."""
    starts = {
        name
        for name, m in module.named_modules()
        if any(is_weight(n, p) for n, p in m.named_parameters(recurse=False))
    }
    found, pending, owner = [], [], None
    for name, p in module.named_parameters():
        here = name.rpartition(".")[0]
        if here in starts and here != owner:  # a new layer, with the free tensors before it
            found.append([*pending, (name, p)])
            pending, owner = [], here
        elif here == owner or (p.ndim < 2 and found):  # its own, or a bias or norm after it
            found[-1].append((name, p))
        else:  # a free tensor: joins the next layer
            pending.append((name, p))
    if pending and found:  # free tensors after the last layer join it
        found[-1].extend(pending)
    elif pending:
        found.append(pending)
    return found


def is_weight(name: str, p) -> bool:
    return p.ndim >= 2 and (
        name == "weight" or name.startswith("weight_") or name.endswith("_weight")
    )


def lr_scales(module, optim) -> list[tuple[str, object, float]]:
    """(name, parameter, its learning rate relative to optim.lr), in the module's order: the head
    at head_lr_mult, the k-th layer below it at layer_decay**k."""
    head = head_params(module)
    body = [[(n, p) for n, p in layer if n not in head] for layer in layers(module)]
    body = [layer for layer in body if layer]
    scale = {n: float(optim.head_lr_mult) for n in head}
    decay = optim.layer_decay
    for k, layer in enumerate(reversed(body), start=1):
        for n, _ in layer:
            scale[n] = 1.0 if decay is None else float(decay) ** k
    return [(n, p, scale[n]) for n, p in module.named_parameters()]


def param_groups(module, optim, later: set) -> tuple[list[dict], dict[int, list]]:
    """The optimizer's parameter groups for `module`: one per learning-rate scale, the trainable
    parameters first, then (empty) one per scale of the parameters in `later` (ids of frozen
    parameters that unfreeze at trainer.unfreeze_at_epoch). Returns (groups, the parameters
    each empty group gets when they unfreeze, by group index)."""
    now: dict[float, list] = {}
    waiting: dict[float, list] = {}
    for _, p, scale in lr_scales(module, optim):
        if p.requires_grad:
            now.setdefault(scale, []).append(p)
        elif id(p) in later:
            waiting.setdefault(scale, []).append(p)
    groups = [{"params": ps, "lr": optim.lr * s, "lr_scale": s} for s, ps in now.items()]
    filled = {}
    for scale, ps in waiting.items():
        filled[len(groups)] = ps
        groups.append({"params": [], "lr": optim.lr * scale, "lr_scale": scale})
    return groups, filled
