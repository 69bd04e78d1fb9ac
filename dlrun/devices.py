"""Where a run trains: seeding, the device (auto, a sweep job's own GPU, a DDP rank's GPU),
mixed precision, channels-last memory, and whether training data streams from host memory."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np

log = logging.getLogger("dlrun")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str):
    """'auto' picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    import torch

    from dlrun import distributed
    from dlrun.errors import ConfigError

    if distributed.world_size() > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())  # one GPU per rank
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        log.info("trainer.device=auto: no GPU found, training on the CPU")
        return torch.device("cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(
                f"trainer.device: '{name}' was asked for but this machine has {have}. "
                "Use trainer.device=cpu or auto."
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.device: 'mps' was asked for but is not available. Use cpu or auto."
        )
    return torch.device(name)


def use_stream(placement: str, device, nbytes: int) -> bool:
    """Whether training batches stream from host memory (trainer.data_placement): `auto`
    streams only when the training split would take over half of the GPU's free memory (on a
    CPU the data already is in the memory it trains from)."""
    if placement != "auto":
        return placement == "stream"
    if device.type != "cuda":
        return False
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return nbytes > free / 2


def sweep_job_device(name: str, job_num: int | None, gpus: int) -> str:
    """In a sweep on a machine with several GPUs, job k trains on GPU k mod GPUs, so jobs that a
    parallel launcher runs at once each have their own device."""
    if job_num is None or gpus < 2 or name not in ("auto", "cuda"):
        return name
    return f"cuda:{job_num % gpus}"


def hydra_job_num() -> int | None:
    """The job's number within a Hydra multirun, None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get().job.num


def job_device(name: str):
    """The device of this run: `resolve_device`, with a sweep's jobs spread over the GPUs."""
    import torch

    from dlrun import distributed

    if distributed.world_size() == 1 and torch.cuda.is_available():
        name = sweep_job_device(name, hydra_job_num(), torch.cuda.device_count())
    return resolve_device(name)


def autocast(device, precision: str, cache: bool = True):
    """Mixed precision for bf16 / 16. `cache=False` inside a CUDA graph capture (autocast's
    cache of cast weights would outlive the capture)."""
    import torch

    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def uses_channels_last(tcfg, device, net) -> bool:
    """Channels-last memory for convolutional networks on CUDA: auto turns it on with bf16 or
    16-bit precision, where tensor-core convolutions want it."""
    import torch

    if device.type != "cuda" or tcfg.channels_last == "off":
        return False
    if not any(isinstance(m, torch.nn.Conv2d) for m in net.modules()):
        return False
    return tcfg.channels_last == "on" or tcfg.precision in ("bf16", "16")
