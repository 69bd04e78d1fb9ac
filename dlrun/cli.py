"""The `dlrun` command: Hydra composes the config from configs/ and the command line, then
`dlrun.runner.run` does the work in the run folder Hydra made.

User mistakes (an unknown option, a wrong type, a value out of range) print one `dlrun: ...`
message and exit with code 2, without a traceback. HYDRA_FULL_ERROR=1 shows the full one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dlrun import sweep
from dlrun.catalog import load_catalog
from dlrun.command import find_config_dir

CONFIG_DIR = find_config_dir()
load_catalog()  # the schemas must be in Hydra's ConfigStore before it composes


# A user mistake found inside the task is kept here and reported after Hydra returns, so that
# Hydra does not print its own "Error executing job" banner around our one-line message.
_user_errors: list = []


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dlrun import folders
    from dlrun.errors import Interrupted, UserError
    from dlrun.runner import run
    from dlrun.search import Pruned
    from dlrun.training import PENDING, holding_signals

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    main_rank = os.environ.get("RANK", "0") == "0"
    sweep_dir = Path(hydra_cfg.sweep.dir)
    if sweeping and folders.sweep_stopped(sweep_dir) is not None:
        # a signal stopped the sweep (an earlier job, or the process that launched this one):
        # the jobs after it do not start (Hydra made the folder; it is empty)
        with contextlib.suppress(OSError):
            run_dir.rmdir()
        return float("nan")
    try:
        if main_rank:  # a single run's folder is claimed already (RunFolders.on_run_start)
            folders.claim_run(run_dir, "hydra.sweep.dir" if sweeping else "hydra.run.dir")
            folders.write_hydra_files(run_dir, cfg)
    except UserError as ex:
        if not sweeping:
            _user_errors.append(ex)
            return None
        # Never write into a folder this job was refused: the other jobs go on.
        logging.getLogger("dlrun").error("job refused: %s", ex)
        return float("nan")
    if sweeping and main_rank:
        announce_job(hydra_cfg)
    try:
        with holding_signals() if sweeping else contextlib.nullcontext():
            summary = run(cfg, run_dir)
    except Pruned as ex:  # a search's pruner stopped the trial: its folder says so
        logging.getLogger("dlrun").info("%s", ex)
        return float("nan")
    except Exception as ex:
        if os.environ.get("DLRUN_TRACEBACK") == "1":
            raise
        if sweeping and not isinstance(ex, Interrupted):
            # One failing job must not stop a sweep: record it and go on with the others.
            record_failure(run_dir, cfg, ex)
            return float("nan")
        if not isinstance(ex, UserError):
            raise
        if sweeping and isinstance(ex, Interrupted):  # Ctrl-C, SIGTERM: the whole sweep stops
            folders.stop_sweep(sweep_dir, ex.exit_code - 128)
        _user_errors.append(ex)
        # A run stopped by a config problem leaves no folder of its own behind; a folder that
        # holds anything else is kept as it is.
        folders.discard_if_unused(run_dir)
        return None
    if Path(summary["run_dir"]) != run_dir:  # resumed into its own folder: keep no empty one
        fold_into(run_dir, Path(summary["run_dir"]))
    if sweeping and PENDING:  # a signal came after training (or to a job without a loop)
        folders.stop_sweep(sweep_dir, PENDING[0])
    return summary["monitor"]["best"]  # what a Hydra sweeper optimizes


def announce_job(hydra_cfg) -> None:
    """A sweep job's first line: "job k of N" (trial, for a search) with its overrides and the
    best of the jobs finished so far; under a parallel launcher every dlrun line of the job is
    prefixed "[job k]", so interleaved logs can be told apart."""
    from dlrun import folders
    from dlrun.sweep import best_so_far, shorten

    log = logging.getLogger("dlrun")
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    number = int(hydra_cfg.job.num) + 1
    planned = folders.sweep_info(sweep_dir).get("planned")
    search = "n_trials" in hydra_cfg.sweeper
    what = "trial" if search else "job"
    overrides = " ".join(o for o in hydra_cfg.overrides.task if not o.startswith("hydra"))
    best = best_so_far(sweep_dir)
    for earlier in _prefixes:  # a worker process that ran an earlier job of the sweep
        log.removeFilter(earlier)
    _prefixes.clear()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if "BasicLauncher" not in launcher:  # jobs run side by side: their lines interleave
        prefix = f"[{what} {number}] "

        def prefixed(record: logging.LogRecord) -> bool:
            if not str(record.msg).startswith(prefix):
                record.msg = prefix + str(record.msg)
            return True

        log.addFilter(prefixed)
        _prefixes.append(prefixed)
    # (a continued search numbers on past its n_trials when trials failed: no "5 of 4")
    of = f" of {planned}" if planned and number <= planned else ""
    line = f"{what} {number}{of}: {shorten(overrides)}"
    log.info("%s%s", line, f"  (best so far: {best})" if best else "")


_prefixes: list = []  # the log filter that prefixes this process's lines with its job


def fold_into(new_dir: Path, run_dir: Path) -> None:
    """A resumed run continues in its first folder: the overrides of this invocation go there
    (.hydra/resume-N-overrides.yaml) and the folder Hydra made for it is removed."""
    from dlrun import folders

    source = new_dir / ".hydra" / "overrides.yaml"
    if source.exists() and (run_dir / ".hydra").is_dir():
        n = len(list((run_dir / ".hydra").glob("resume-*-overrides.yaml"))) + 1
        shutil.copy(source, run_dir / ".hydra" / f"resume-{n}-overrides.yaml")
    folders.discard_if_unused(new_dir)


def record_failure(run_dir: Path, cfg: DictConfig, ex: Exception) -> None:
    """summary.json of a job that failed: its status and the error's first line."""
    import json
    import traceback

    from dlrun.checkpoints import write_json
    from dlrun.errors import UserError

    first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
    error = first if isinstance(ex, UserError) else f"{type(ex).__name__}: {first}"
    logging.getLogger("dlrun").error("job failed: %s", error)
    if not isinstance(ex, UserError):  # a bug: keep the whole story in the job's folder
        (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
    previous = {}
    if (run_dir / "summary.json").exists():
        previous = json.loads((run_dir / "summary.json").read_text())
    kept = previous.get("status") in ("interrupted", "diverged", "failed")
    write_json(
        run_dir / "summary.json",
        {
            **previous,
            "status": previous["status"] if kept else "failed",
            "error": previous.get("error", error) if kept else error,
            "model": cfg.model.name,
            "data": cfg.data.name,
        },
    )


def main() -> None:
    from dlrun import folders
    from dlrun.errors import UserError, describe_hydra_error

    launch_distributed_if_asked()
    keep_going_when_stdout_closes()
    if os.environ.get("RANK", "0") != "0":
        # Under torchrun every rank composes the config; only rank 0 keeps a run folder (the
        # others learn its path from rank 0 and write nothing), and only rank 0 logs.
        import tempfile

        scratch = tempfile.mkdtemp(prefix=f"dlrun-rank{os.environ['RANK']}-")
        sys.argv += [
            f"hydra.run.dir={scratch}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
        ]
    show_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if show_traceback:
        os.environ["DLRUN_TRACEBACK"] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's own report
    try:
        _train()
        sys.stdout.flush()  # a reader that has gone shows here, not as noise at exit
        if _user_errors:
            raise _user_errors[0]
        if folders.SWEEP_SIGNAL is not None:  # a sweep whose jobs ran in other processes
            import signal

            name = signal.Signals(folders.SWEEP_SIGNAL).name
            fail(
                f"interrupted by {name}: the sweep stopped (see its leaderboard); its stopped "
                "jobs continue with trainer.resume=<their folder>.",
                128 + folders.SWEEP_SIGNAL,
            )
        from dlrun import search

        failed = sweep.LAST_FAILED
        if search.FAILED_NOW is not None:  # a search: its trials of this run, not a killed run's
            failed = [str(n) for n in search.FAILED_NOW]
        if failed:
            fail(
                f"{len(failed)} job(s) of the sweep failed: {', '.join(failed)} "
                "(see the leaderboard).",
                1,
            )
    except UserError as ex:
        if show_traceback:
            raise
        fail(str(ex), ex.exit_code)
    except KeyboardInterrupt:
        fail("interrupted.", 130)
    except folders.Refused as ex:  # a run or sweep folder that is not this run's to write
        fail(str(ex.error), ex.error.exit_code)
    except BrokenPipeError:  # `dlrun ... | head -1`: the reader has gone
        from dlrun.errors import stdout_closed

        stdout_closed()
    except OSError as ex:  # Hydra could not find a config, or make or write the run folder
        if show_traceback:
            raise
        message = describe_hydra_error(ex, CONFIG_DIR, sys.argv[1:])
        if message is None:
            where = f" {ex.filename}" if ex.filename else ""
            message = f"cannot write{where}: {ex.strerror or ex}. Choose a writable hydra.run.dir."
        fail(message, 2)
    except Exception as ex:
        message = None if show_traceback else describe_hydra_error(ex, CONFIG_DIR, sys.argv[1:])
        if message is None:
            raise
        fail(message, 2)


def keep_going_when_stdout_closes() -> None:
    """`dlrun ... | head`: when the reader goes away, rich's console would end the process
    (SystemExit) in the middle of training. A run does not depend on its reader: the terminal
    output goes quiet and the run goes on; train.log and the run folder have everything."""
    from rich.console import Console

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())

    Console.on_broken_pipe = on_broken_pipe


def launch_distributed_if_asked() -> None:
    """`trainer.devices=N` (N > 1) restarts the command under torchrun with N processes."""
    import re

    if "RANK" in os.environ:  # already one of torchrun's processes
        return
    for arg in sys.argv[1:]:
        match = re.fullmatch(r"\+{0,2}trainer\.devices=(\d+)", arg)
        if match and int(match[1]) > 1:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={match[1]}",
                "-m",
                "dlrun",
                *sys.argv[1:],
            ]
            sys.stdout.flush()
            os.execv(sys.executable, command)


def fail(message: str, code: int) -> None:
    if "dlrun.folders" in sys.modules:  # a sweep stopped before any job ran leaves no folder
        sys.modules["dlrun.folders"].discard_unused_sweeps()
    print(f"dlrun: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
