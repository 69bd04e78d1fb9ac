"""Registries of models and datasets: a decorator puts each builder beside its config schema.

Registering also stores the schema in Hydra's ConfigStore as `<group>/<name>_schema`, so the
option's YAML (`configs/model/<name>.yaml`) can name it in its defaults list. Nothing here
imports torch: builders import what they need when they are called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dlrun.config import store_schema
from dlrun.errors import ConfigError, not_one_of

# native: images as images, any other data flattened (a model that adapts to the data's kind)
INPUT_KINDS = ("flat", "image", "sequence", "native")
OBJECTIVES = (
    "supervised",
    "autoencoder",
    "vae",
    "gan",
)  # what a training step means (dlrun.objectives)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    schema: type
    takes: str  # the input it takes: flat (F), image (C, H, W), sequence (T, D) or native
    build: Callable[..., Any]  # build(cfg, spec) -> nn.Module (or an estimator)
    family: str = "torch"
    objective: str = "supervised"
    size_unit: str = "parameters"  # what `params` in summary.json counts for this model

    def input_for(self, spec) -> str:
        """The input kind this model reads `spec`'s data as."""
        if self.takes != "native":
            return self.takes
        return "image" if spec.kind == "image" else "flat"


@dataclass(frozen=True)
class DataEntry:
    name: str
    schema: type
    load: Callable[..., Any]  # load(cfg) -> dlrun.data.RawData, every sample before splitting


MODELS: dict[str, ModelEntry] = {}
DATASETS: dict[str, DataEntry] = {}


def register_model(
    name: str,
    *,
    schema: type,
    takes: str,
    family: str = "torch",
    objective: str = "supervised",
    size_unit: str | None = None,
):
    """`size_unit`: what the model's size counts (None: parameters for a network, tree nodes
    for an estimator)."""
    if takes not in INPUT_KINDS:
        raise ValueError(f"takes must be one of {INPUT_KINDS}, got {takes!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")

    def decorator(build):
        unit = size_unit or ("parameters" if family == "torch" else "tree nodes")
        MODELS[name] = ModelEntry(name, schema, takes, build, family, objective, unit)
        store_schema("model", name, schema)
        return build

    return decorator


def register_data(name: str, *, schema: type):
    def decorator(load):
        DATASETS[name] = DataEntry(name, schema, load)
        store_schema("data", name, schema)
        return load

    return decorator


def get_model(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(not_one_of("model.name", "a registered model", name, MODELS))
    return MODELS[name]


def models_for(spec) -> list[str]:
    """The registered models that can read `spec`'s data (dlrun.data.adapted_shape)."""
    from dlrun.data import adapted_shape

    names = []
    for name, entry in sorted(MODELS.items()):
        try:
            adapted_shape(spec, entry.input_for(spec))
        except ConfigError:
            continue
        names.append(name)
    return names


def pairing_refused(model: str, spec) -> ConfigError:
    """model=`model` cannot read the data: the error names both and the models that can."""
    entry = get_model(model)
    shape = "x".join(map(str, spec.shape))
    return ConfigError(
        f"model={model} takes {entry.takes} input and cannot read data={spec.name} "
        f"({spec.kind} data, shape {shape}). Models that read it: {', '.join(models_for(spec))}."
    )


def get_data(name: str) -> DataEntry:
    if name not in DATASETS:
        raise ConfigError(not_one_of("data.name", "a registered dataset", name, DATASETS))
    return DATASETS[name]
