"""Hydra's launchers (hydra/launcher=...), checked before a sweep starts: a launcher that cannot
run on this machine is one clear line, not a traceback from inside the plugin."""

from __future__ import annotations

import shutil

from omegaconf import DictConfig, OmegaConf

from dlrun.errors import UserError

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def check_launcher(hydra_cfg: DictConfig) -> None:
    """A UserError when the chosen launcher cannot run here (SLURM's without `sbatch`).

    `hydra_cfg` is the composed `hydra` node (`config.hydra` in a Hydra callback)."""
    target = OmegaConf.select(hydra_cfg, "launcher._target_")
    if target == SLURM_LAUNCHER and shutil.which("sbatch") is None:
        choices = OmegaConf.select(hydra_cfg, "runtime.choices") or {}
        name = choices.get("hydra/launcher") or "submitit_slurm"
        raise UserError(
            f"hydra/launcher={name} needs SLURM (sbatch was not found on PATH); use "
            "hydra/launcher=joblib or submitit_local."
        )
