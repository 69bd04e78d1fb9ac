"""Run and sweep folders: each is claimed once, by one process, before anything is written in it.

A run folder is claimed by creating its marker file `.dlrun-run` with O_EXCL: of several
processes started into one folder exactly one wins, and the others stop with a clear message
having written nothing. The claiming process also holds an advisory lock (flock) on the marker
for as long as it runs, so a resume or `dlrun-report` can tell a run that is still going from one
whose process was killed (the kernel drops the lock when a process dies). A sweep folder is
claimed the same way (`.dlrun-sweep`, which also records how many jobs were planned), and only
when it is new or empty: a sweep never writes into an earlier one.

Hydra writes into a run folder before dlrun's task starts (`.hydra/`), so the claim is made in a
Hydra callback (`RunFolders.on_run_start` / `on_multirun_start`) and dlrun writes `.hydra/`
itself after claiming (`hydra.output_subdir` is null in configs/train.yaml).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from dlrun.errors import UserError

RUN_MARKER = ".dlrun-run"
SWEEP_MARKER = ".dlrun-sweep"
# In a sweep folder: a signal stopped the sweep (its name). Jobs that would start after it, in
# any process of the sweep (joblib's workers, submitit's jobs), see it and do not run.
STOP_FLAG = ".dlrun-stopped"
HYDRA_DIR = ".hydra"
# What a claimed folder holds before its run has written anything of its own.
STUBS = {RUN_MARKER, HYDRA_DIR}
TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass
class Claim:
    """A folder this process holds: the open, locked marker file, and whether we made the folder
    (and from which ancestor on: `outputs/train/<date>/` may be new too)."""

    path: Path
    fd: int
    created: bool
    top: Path | None = None  # the highest folder the claim created


# folder (resolved) -> its claim, for every folder this process holds
_HELD: dict[Path, Claim] = {}
# The signal (Ctrl-C, SIGTERM) that stopped this process's last sweep: the jobs after it were
# not started, and the sweep is not recorded as finished (its report says how many never ran)
SWEEP_SIGNAL: int | None = None


def stop_sweep(sweep_dir: Path, signum: int) -> None:
    """Say in the sweep folder that `signum` stopped the sweep: its jobs not started yet, in
    whatever process they would run, do not start."""
    import signal

    with contextlib.suppress(OSError):
        (Path(sweep_dir) / STOP_FLAG).write_text(signal.Signals(signum).name + "\n")


def sweep_stopped(sweep_dir: Path) -> int | None:
    """The signal that stopped the sweep in `sweep_dir`, or None while it goes on."""
    import signal

    try:
        name = (Path(sweep_dir) / STOP_FLAG).read_text().strip()
    except OSError:
        return None
    return int(getattr(signal.Signals, name, signal.SIGTERM))


def _stop_jobs_elsewhere(sweep_dir: Path) -> dict:
    """SIGINT / SIGTERM handlers for the process that launched a sweep into other processes
    (joblib's workers, submitit's local jobs), which would die at once (SIGTERM) or kill its
    workers (Ctrl-C) and leave jobs training on or half written. Instead the sweep is marked
    stopped (no job starts after this), the jobs running on this machine get SIGTERM (each
    stops after its current step, resumable, as a single run does; SIGTERM, not a second
    SIGINT, which would make a job quit at once), and this process waits for them and writes
    the sweep's report. A second Ctrl-C quits at once. Returns the handlers replaced."""
    import signal

    def handler(signum, frame) -> None:
        global SWEEP_SIGNAL
        if SWEEP_SIGNAL is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        SWEEP_SIGNAL = signum
        stop_sweep(sweep_dir, signum)
        for marker in Path(sweep_dir).glob(f"*/{RUN_MARKER}"):
            pid = _running_pid(marker)
            if pid is not None and pid != os.getpid():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _running_pid(marker: Path) -> int | None:
    """The pid of the process that holds a run folder on this machine, while it runs."""
    info = _holder(marker)
    if info is None or info.get("host") != socket.gethostname():
        return None
    return info["pid"] if isinstance(info["pid"], int) else None


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _lock(fd: int) -> bool:
    """An exclusive, non-blocking flock; False when another process holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks (some network mounts): the O_EXCL claim stands
        return True
    return True


def _holder(marker: Path) -> dict | None:
    """What a marker file says of the process that holds its folder (pid, host, started), while
    that process runs; else None."""
    if not is_active(marker.parent, marker.name):
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "pid" in info else None


def _owner(marker: Path, lead: str = "") -> str:
    """' (pid N on HOST, started T)' from a marker file, or ''; only while that process runs."""
    info = _holder(marker)
    if info is None:
        return ""
    return (
        f" ({lead}pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')})"
    )


def _stamp(extra: dict | None = None) -> bytes:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    return (json.dumps(info) + "\n").encode()


def holds_run(path: Path) -> bool:
    """Whether the folder already holds a run (of this dlrun, or written by an older one)."""
    return any((path / name).exists() for name in (RUN_MARKER, "metrics.jsonl", "summary.json"))


def claim_run(run_dir: Path, key: str = "hydra.run.dir") -> Claim:
    """Make `run_dir` this process's run folder, or refuse (UserError) having written nothing.

    Refused: a folder that holds a run, or anything else (a run writes only into a folder of its
    own). A folder this process already holds is returned as it is.
    """
    run_dir = _key(run_dir)
    if run_dir in _HELD:
        return _HELD[run_dir]
    marker = run_dir / RUN_MARKER
    if key == "out_dir":
        taken = f"out_dir: {run_dir} already holds results; they are never overwritten. Choose another out_dir."
    else:
        taken = (
            f"the run folder {run_dir} already holds a run{_owner(marker, 'being written by ')}; "
            f"a new run never overwrites one. Choose another {key}, or continue that run with "
            f"trainer.resume={run_dir}."
        )
    if run_dir.is_dir():
        if holds_run(run_dir):
            raise UserError(taken)
        others = sorted(p.name for p in run_dir.iterdir())
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise UserError(
                f"{key}: {run_dir} is not empty (it holds {shown}); a run writes only into a "
                "new or empty folder of its own. Choose another one."
            )
    elif run_dir.exists():
        raise UserError(f"{key}: {run_dir} is a file, not a folder. Choose another {key}.")
    created = not run_dir.exists()
    top = _first_missing(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:  # another process claimed it between our look and our create
        raise UserError(taken) from None
    except OSError as ex:
        raise UserError(
            f"{key}: cannot create the run folder {run_dir}: {ex.strerror or ex}. "
            f"Choose a writable {key}."
        ) from None
    _lock(fd)
    os.write(fd, _stamp())
    claim = _HELD[run_dir] = Claim(run_dir, fd, created, top)
    return claim


def claim_free_run(run_dir: Path, tries: int = 100) -> Path:
    """Claim the run folder `run_dir`, or when another run holds it (two runs started in the
    same second get the same dated folder) the first free of `run_dir`-2, -3, ..."""
    run_dir = _key(run_dir)
    for n in range(1, tries + 1):
        candidate = run_dir if n == 1 else run_dir.with_name(f"{run_dir.name}-{n}")
        if candidate.is_dir() and holds_run(candidate):
            continue
        try:
            claim_run(candidate)
        except UserError:
            if candidate.is_dir() and holds_run(candidate):  # claimed just now by another run
                continue
            raise
        return candidate
    return _key(claim_run(run_dir).path)  # (refused, saying why)


def _first_missing(path: Path) -> Path | None:
    """The highest ancestor of `path` (or itself) that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_empty_up_to(folder: Path, top: Path | None) -> None:
    """Empty folders a claim created above its run folder (outputs/<task>/<date>/), up to `top`."""
    if top is None:
        return
    for parent in folder.parents:
        if not parent.is_relative_to(top) or any(parent.iterdir()):
            break
        parent.rmdir()
        if parent == top:
            break


def hold_run(run_dir: Path) -> Claim:
    """Lock an existing run folder for this process (to resume it); refuse one in use. Nothing
    in it changes until the resume starts writing (`stamp`)."""
    run_dir = _key(run_dir)
    if run_dir in _HELD:
        return _HELD[run_dir]
    marker = run_dir / RUN_MARKER
    try:
        fd = os.open(marker, os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as ex:
        raise UserError(
            f"trainer.resume: cannot open {marker}: {ex.strerror or ex}. Is {run_dir} writable?"
        ) from None
    if not _lock(fd):
        os.close(fd)
        raise UserError(
            f"trainer.resume: {run_dir} is in use by another dlrun process{_owner(marker)}; "
            "a run folder is written by one process at a time. Wait for it to end."
        )
    claim = _HELD[run_dir] = Claim(run_dir, fd, created=False)
    return claim


def stamp(run_dir: Path) -> None:
    """Name this process in the marker of a folder it holds (once a resume starts writing)."""
    claim = _HELD.get(_key(run_dir))
    if claim is not None:
        os.ftruncate(claim.fd, 0)
        os.pwrite(claim.fd, _stamp(), 0)


def is_active(folder: Path, marker_name: str = RUN_MARKER) -> bool:
    """Whether a live process holds the folder's lock (a run or sweep that is still going)."""
    import fcntl

    marker = Path(folder) / marker_name
    if _key(folder) in _HELD:
        return True
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return False


def release(run_dir: Path) -> None:
    """Drop this process's lock on a folder (the marker stays: the folder holds a run)."""
    import fcntl

    claim = _HELD.pop(_key(run_dir), None)
    if claim is not None:
        # unlocked first: processes forked while it was held (DataLoader workers still alive)
        # share the lock, and closing this descriptor alone would leave it to them
        fcntl.flock(claim.fd, fcntl.LOCK_UN)
        os.close(claim.fd)


def discard_if_unused(run_dir: Path) -> None:
    """A claimed folder in which the run wrote nothing of its own (it stopped on a config or data
    problem) is removed again: what we wrote (the marker, `.hydra/`), and the folder itself when
    we made it. A folder that holds anything else is kept as it is."""
    run_dir = _key(run_dir)
    claim = _HELD.get(run_dir)
    if claim is None or not run_dir.is_dir():
        return
    if not {p.name for p in run_dir.iterdir()} <= STUBS:
        return
    release(run_dir)
    if claim.created:
        shutil.rmtree(run_dir, ignore_errors=True)
        _remove_empty_up_to(run_dir, claim.top)
    else:
        shutil.rmtree(run_dir / HYDRA_DIR, ignore_errors=True)
        (run_dir / RUN_MARKER).unlink(missing_ok=True)


def write_hydra_files(run_dir: Path, task_cfg) -> None:
    """`.hydra/config.yaml` (the composed task config, unresolved), `hydra.yaml` and
    `overrides.yaml`, as Hydra would have written them: it is told not to, so that nothing is
    written into a folder before it is claimed."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from dlrun.checkpoints import atomic_write

    hydra_cfg = HydraConfig.instance().cfg  # {hydra: ...}
    folder = Path(run_dir) / HYDRA_DIR
    folder.mkdir(exist_ok=True)
    files = {
        "config.yaml": OmegaConf.to_yaml(task_cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }
    for name, text in files.items():
        atomic_write(folder / name, lambda f, text=text: f.write(text), mode="w")


def check_task_name(name: Any) -> None:
    """task_name names a folder under outputs/: no path separators, no '..'."""
    text = str(name)
    if not TASK_NAME.fullmatch(text) or ".." in text:
        raise UserError(
            "task_name must be a folder name: letters, digits, '.', '-' and '_', without '/' "
            f"or '..' (runs go to outputs/<task_name>/). Got '{text}'."
        )


# ---------------------------------------------------------------------------------------------
# Sweeps


def claim_sweep(sweep_dir: Path, planned: int | None, search: str | None = None) -> Claim:
    """Make `sweep_dir` this process's sweep folder: new or empty, never an earlier sweep's;
    except that a search (`search`: its study's name) continues in the folder of an earlier
    search of the same study."""
    sweep_dir = _key(sweep_dir)
    if sweep_dir in _HELD:
        return _HELD[sweep_dir]
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"hydra.sweep.dir: {sweep_dir} is a file, not a folder.")
    earlier = sweep_info(sweep_dir) if (sweep_dir / SWEEP_MARKER).exists() else {}
    if search is not None and earlier.get("search") == search:
        return continue_search(sweep_dir, planned, search, earlier)
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        what = "an earlier sweep" if (sweep_dir / SWEEP_MARKER).exists() else "files"
        raise UserError(
            f"hydra.sweep.dir: {sweep_dir} already holds {what}; a sweep never writes into an "
            "earlier one (its jobs, leaderboard and configs stay as they are). Choose a new "
            "hydra.sweep.dir."
        )
    created = not sweep_dir.exists()
    top = _first_missing(sweep_dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(sweep_dir / SWEEP_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise UserError(
            f"hydra.sweep.dir: {sweep_dir} was just claimed by another dlrun sweep{_owner(sweep_dir / SWEEP_MARKER)}. "
            "Choose a new hydra.sweep.dir."
        ) from None
    except OSError as ex:
        raise UserError(
            f"hydra.sweep.dir: cannot create {sweep_dir}: {ex.strerror or ex}. Choose a writable one."
        ) from None
    _lock(fd)
    os.write(fd, _stamp({"planned": planned, **({"search": search} if search else {})}))
    claim = _HELD[sweep_dir] = Claim(sweep_dir, fd, created, top)
    return claim


def continue_search(sweep_dir: Path, planned: int | None, search: str, earlier: dict) -> Claim:
    """Hold the folder of an earlier search of the same study (dlrun.search continues its
    study there); refused while another process runs it."""
    marker = sweep_dir / SWEEP_MARKER
    fd = os.open(marker, os.O_RDWR)
    if not _lock(fd):
        os.close(fd)
        raise UserError(
            f"hydra.sweep.dir: the search '{search}' in {sweep_dir} is running in another "
            f"process{_owner(marker)}; one process runs a search at a time. Wait for it to end."
        )
    kept = {k: v for k, v in earlier.items() if k not in ("pid", "host", "started", "finished")}
    os.ftruncate(fd, 0)
    os.pwrite(
        fd,
        _stamp(
            {
                **kept,
                "planned": planned,
                "first_started": kept.get("first_started") or earlier.get("started"),
            }
        ),
        0,
    )
    claim = _HELD[sweep_dir] = Claim(sweep_dir, fd, False, None)
    return claim


def sweep_info(sweep_dir: Path) -> dict:
    """What `.dlrun-sweep` recorded: planned jobs, start, end (empty for older sweeps)."""
    try:
        info = json.loads((Path(sweep_dir) / SWEEP_MARKER).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def finish_sweep(sweep_dir: Path) -> None:
    """Record that every planned job was launched (the sweep ran to its end)."""
    from dlrun.checkpoints import atomic_write

    info = {**sweep_info(sweep_dir), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(
        Path(sweep_dir) / SWEEP_MARKER, lambda f: f.write(json.dumps(info) + "\n"), mode="w"
    )


def discard_unused_sweeps() -> None:
    """A sweep of this process that stopped before any job ran leaves no folder behind."""
    for path, claim in list(_HELD.items()):
        if not (path / SWEEP_MARKER).exists() or not path.is_dir():
            continue
        if any(p.is_dir() and (p / RUN_MARKER).exists() for p in path.iterdir()):
            continue
        release(path)
        if claim.created:
            shutil.rmtree(path, ignore_errors=True)
            _remove_empty_up_to(path, claim.top)


def search_key(config) -> str | None:
    """A search's study name (dlrun.search), which may continue in its sweep folder."""
    from dlrun.search import is_search, study_name

    sweeper = config.hydra.sweeper
    return study_name(sweeper, config.task_name) if is_search(sweeper) else None


def planned_jobs(config) -> int | None:
    """How many jobs a sweep will launch: the product of the sweep overrides' lengths for
    Hydra's basic sweeper, n_trials for a search; None when it cannot be told."""
    from omegaconf import OmegaConf

    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    if not target.endswith("BasicSweeper"):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = list(config.hydra.overrides.task)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    overrides += [f"{k}={v}" for k, v in params.items()]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports a bad override itself, later
        return None
    total = 1
    for override in parsed:
        if override.is_sweep_override():
            total *= len(list(override.sweep_string_iterator()))
    return total


class Refused(BaseException):
    """A UserError from a Hydra callback. Hydra turns a callback's Exception into a warning and
    goes on, so a refusal travels as a BaseException to dlrun's CLI, which prints `error`."""

    def __init__(self, error: UserError):
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _refusing():
    try:
        yield
    except UserError as ex:
        raise Refused(ex) from None


_WATCHES: dict = {}  # sweep folder -> its dlrun.sweep.Watch, while submitit runs the jobs
_PREVIOUS_HANDLERS: dict = {}  # sweep folder -> the signal handlers before its sweep started


class RunFolders(Callback):
    """Hydra callback: claim the run or sweep folder before Hydra writes anything in it, and
    write a sweep's leaderboard when it ends (dlrun.sweep.report)."""

    def on_run_start(self, config, **kwargs: Any) -> None:
        with _refusing():
            check_task_name(config.task_name)
            if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks write no run folder
                return
            run_dir = Path(str(config.hydra.run.dir))
            given = any(
                o.lstrip("+").startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra
            )
            if given:  # the user's own folder: theirs, or refused
                claim_run(run_dir)
                return
            claimed = claim_free_run(run_dir)  # the dated default: two runs in one second
            if claimed != _key(run_dir):
                from omegaconf import read_write

                with read_write(config.hydra.run):  # Hydra makes the run folder from it next
                    config.hydra.run.dir = str(claimed)

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        global SWEEP_SIGNAL
        from dlrun.launchers import check_launcher

        SWEEP_SIGNAL = None

        with _refusing():
            check_task_name(config.task_name)
            check_launcher(config.hydra)
            planned = planned_jobs(config)
            claim_sweep(Path(str(config.hydra.sweep.dir)), planned, search_key(config))
        from dlrun.loggers import start_sweep

        sweep_dir = _key(Path(str(config.hydra.sweep.dir)))
        with contextlib.suppress(OSError):  # a search continued after a stop goes on
            (sweep_dir / STOP_FLAG).unlink()
        start_sweep(config, sweep_dir)  # logger=mlflow: its run
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if "BasicLauncher" not in launcher:  # jobs in other processes: signals reach them
            _PREVIOUS_HANDLERS[sweep_dir] = _stop_jobs_elsewhere(sweep_dir)
        if "submitit" in launcher:
            from dlrun.sweep import Watch  # its jobs' lines go to files: say how far they are

            # kept outside the callback, which submitit pickles
            _WATCHES[sweep_dir] = Watch(sweep_dir, planned).start()

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        global SWEEP_SIGNAL
        from dlrun import sweep

        sweep_dir = _key(Path(str(config.hydra.sweep.dir)))
        watch = _WATCHES.pop(sweep_dir, None)
        if watch is not None:
            watch.stop()
        if sweep_dir in _PREVIOUS_HANDLERS:
            import signal

            for sig, handler in _PREVIOUS_HANDLERS.pop(sweep_dir).items():
                signal.signal(sig, handler)
        if sweep_dir not in _HELD:  # not ours: never touch another sweep's folder
            return
        stopped = sweep_stopped(sweep_dir)  # by a signal, in this process or in a job's
        if stopped is not None:
            SWEEP_SIGNAL = SWEEP_SIGNAL or stopped
        else:
            finish_sweep(sweep_dir)
        release(sweep_dir)
        sweep.report(sweep_dir)
        from dlrun.loggers import end_sweep

        end_sweep(config, sweep_dir)
