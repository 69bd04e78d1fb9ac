"""Validate a composed config: every problem in one `ConfigError`, before any work starts.

Hydra and the structured configs already reject unknown keys and wrong types. This adds the
ranges and choices declared on the schemas with `setting(...)`, the names of registered options,
and the checks that involve more than one field.
"""

from __future__ import annotations

import dataclasses
import re
import typing

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from dlrun.config import Rule, TrainConfig
from dlrun.errors import ConfigError, did_you_mean, not_one_of

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate(cfg: DictConfig) -> TrainConfig:
    """The typed config (dataclass instances) if it is valid; else a ConfigError listing all
    problems."""
    from dlrun.optim import OPTIMIZERS, SCHEDULERS
    from dlrun.registry import DATASETS, MODELS

    try:
        conf = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as ex:
        raise ConfigError(f"{ex.full_key} is required and has no value.") from None

    problems = []
    for key, name, registry, what in (
        ("model", conf.model.name, MODELS, "a model"),
        ("optim", conf.optim.name, OPTIMIZERS, "an optimizer"),
        ("sched", conf.sched.name, SCHEDULERS, "a scheduler"),
        ("data", conf.data.name, DATASETS, "a dataset"),
    ):
        if name not in registry:
            problems.append(not_one_of(f"{key}.name", what, name, registry))
    problems += field_problems(conf)

    trainer = conf.trainer
    if not DEVICE_PATTERN.match(trainer.device):
        problems.append(
            f"trainer.device must be one of: auto, cpu, cuda, cuda:N, mps. Got '{trainer.device}'."
        )
    elif trainer.precision == "16" and not trainer.device.startswith(("cuda", "auto")):
        problems.append(
            f"trainer.precision=16 needs a CUDA device; trainer.device is '{trainer.device}'. "
            "Use trainer.precision=bf16 or 32."
        )
    if problems:
        raise ConfigError(problems)
    return conf


def field_problems(obj, prefix: str = "") -> list[str]:
    """Check every field of a (nested) schema instance against its declared `Rule`."""
    problems = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            problems += field_problems(value, f"{key}.")
            continue
        rule = f.metadata.get("rule")
        if rule is None or (value is None and _is_optional(hints[f.name])):
            continue
        values = value if isinstance(value, list) else [value]
        if not all(rule.allows(v) for v in values):
            problems.append(_message(key, hints[f.name], rule, value))
    check = getattr(obj, "problems", None)
    if callable(check):
        problems += check()
    return problems


def _is_optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _message(key: str, tp, rule: Rule, value) -> str:
    got = f"'{value}'" if isinstance(value, str) else repr(value)
    if rule.choices is not None:
        hint = did_you_mean(value, rule.choices) if isinstance(value, str) else ""
        return f"{key} must be one of: {', '.join(rule.choices)}. Got {got}.{hint}"
    optional = _is_optional(tp)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        what = f"a list of {item.__name__}s each in the range {rule.interval()}"
    else:
        article = "an" if base.__name__[0] in "aeiou" else "a"
        what = f"{article} {base.__name__} in the range {rule.interval()}"
    return f"{key} must be {what}{' or None' if optional else ''}. Got {got}."
