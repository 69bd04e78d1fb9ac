"""Atomic, safe files: write to a temporary file in the same folder, flush, then rename.

A process killed mid-write leaves the previous version in place. Torch checkpoints are loaded
with `weights_only=True`, so loading never runs code stored in the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlrun.errors import UserError


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as ex:
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise UserError(
            f"checkpoint {path} holds objects that would need code to load; it was refused and "
            f"nothing in it was run ({first})."
        ) from None
    except (RuntimeError, EOFError, OSError) as ex:
        raise UserError(
            f"checkpoint {path} cannot be read (truncated or corrupted?): {ex}"
        ) from None
