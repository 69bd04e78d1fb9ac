"""Validate a composed config: every problem in one `ConfigError`, before any work starts.

Hydra and the structured configs already reject unknown keys and wrong types, except keys added
with Hydra's `+key=value`, which bypass the schema: those are found here. This adds the ranges
and choices declared on the schemas with `setting(...)`, the names of registered options, and
the checks that involve more than one field.
"""

from __future__ import annotations

import dataclasses
import re
import typing

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from dlrun.config import Rule, TrainConfig
from dlrun.errors import ConfigError, did_you_mean, first_line, not_a_setting, not_one_of

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate(cfg: DictConfig) -> TrainConfig:
    """The typed config (dataclass instances) if it is valid; else a ConfigError listing all
    problems."""
    from dlrun.optim import OPTIMIZERS, SCHEDULERS
    from dlrun.registry import DATASETS, MODELS

    problems = unknown_keys(cfg)
    try:
        conf = OmegaConf.to_object(cfg)  # drops the unknown keys
    except MissingMandatoryValue as ex:
        raise ConfigError([*problems, f"{ex.full_key} is required and has no value."]) from None
    except OmegaConfBaseException as ex:  # an interpolation that does not resolve, say
        raise ConfigError([*problems, f"{ex.full_key}: {first_line(ex)}"]) from None

    for key, name, registry, what in (
        ("model", conf.model.name, MODELS, "a model"),
        ("optim", conf.optim.name, OPTIMIZERS, "an optimizer"),
        ("sched", conf.sched.name, SCHEDULERS, "a scheduler"),
        ("data", conf.data.name, DATASETS, "a dataset"),
    ):
        if name not in registry:
            problems.append(not_one_of(f"{key}.name", what, name, registry))
    problems += field_problems(conf, skip=aliases(cfg))

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


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Every key of the composed config that its node's schema does not have (`+key=value`
    adds keys that way; a misspelled one would otherwise be ignored)."""
    problems = []
    for full, node, key in _entries(cfg):
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema) and key not in {
            f.name for f in dataclasses.fields(schema)
        }:
            problems.append(not_a_setting(full, schema))
    return problems


def aliases(cfg: DictConfig) -> set[str]:
    """Keys whose value is only another key's (`trainer.seed: ${seed}`): that key's own rule
    reports a bad value, once, where it was set."""
    return {
        full
        for full, node, key in _entries(cfg)
        if OmegaConf.is_interpolation(node, key)
        and re.fullmatch(r"\$\{[\w.]+\}", str(node._get_node(key)._value()))
    }


def _entries(node: DictConfig, prefix: str = ""):
    """(dotted key, its node, key) for every key of a config, depth first; interpolations and
    missing values are not followed."""
    for key in node:
        yield f"{prefix}{key}", node, key
        if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue
        if isinstance(node[key], DictConfig):
            yield from _entries(node[key], f"{prefix}{key}.")


def field_problems(obj, prefix: str = "", skip: set[str] = frozenset()) -> list[str]:
    """Check every field of a (nested) schema instance against its declared `Rule` (the keys in
    `skip` excepted)."""
    problems = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            problems += field_problems(value, f"{key}.", skip)
            continue
        rule = f.metadata.get("rule")
        if rule is None or key in skip or (value is None and _is_optional(hints[f.name])):
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
