"""Atomic, safe files: write to a temporary file in the same folder, flush, then rename.

A process killed mid-write leaves the previous version in place, and the next resume removes
the temporary file it left. A write that fails (a full disk, a file-size limit) is one clear
error that names the file, with the previous version intact. Files follow the umask, like the
rest of the folder. Torch checkpoints are loaded with `weights_only=True`, so loading never runs
code stored in the file.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlrun.errors import UserError

TMP_NAME = re.compile(
    r"\..+\.[A-Za-z0-9_]{6,}\.tmp"
)  # what atomic_write's temporary files are named


class CannotWrite(UserError):
    """A file could not be written (no space left, a size limit, no permission)."""

    status = "failed"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as ex:
        raise cannot_write(path, ex) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the folder's files follow the umask
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as ex:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(ex, OSError):
            raise cannot_write(path, ex) from None
        raise


def cannot_write(path: Path, ex: OSError) -> CannotWrite:
    reason = ex.strerror or str(ex)
    kept = " (its previous version is intact)" if Path(path).exists() else ""
    return CannotWrite(f"cannot write {path}{kept}: {reason}.")


def remove_leftovers(folder: Path) -> list[Path]:
    """Temporary files of writes that a killed process left behind (in `folder` and its
    checkpoints/); returns what was removed."""
    removed = []
    for place in (Path(folder), Path(folder) / "checkpoints"):
        if not place.is_dir():
            continue
        for path in place.iterdir():
            if path.is_file() and TMP_NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON: a NaN or infinite number (an undefined metric) is written as null."""
    text = json.dumps(finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def save_checkpoint(path: Path, state: dict) -> None:
    """The state serialised in memory first, so that the file itself is written by plain file
    writes (a full disk is an OSError, not an error deep inside torch's zip writer)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as ex:
        # torch's message suggests weights_only=False, the unsafe path; name only what was found
        found = re.search(r"GLOBAL ([\w.]+)", str(ex))
        what = f" ({found[1]}, which a weights-only file may not name)" if found else ""
        raise UserError(
            f"checkpoint {path} holds objects that would need code to load; it was refused and "
            f"nothing in it was run{what}."
        ) from None
    except (RuntimeError, EOFError, OSError) as ex:
        raise UserError(
            f"checkpoint {path} cannot be read (truncated or corrupted?): {ex}"
        ) from None
