"""Hyperparameter search: dlrun's own Hydra sweeper (hydra/sweeper=dlrun_optuna) on current
Optuna, driving the study with ask and tell.

The search space is Hydra's sweep syntax (`hydra.sweeper.params` and sweep overrides on the
command line: `interval(a, b)`, `tag(log, interval(a, b))`, `range(a, b)`, `choice(...)` or
`a,b,c`). The study lives in a SQLite file in the sweep folder (or `hydra.sweeper.storage`), so
running the same command again continues it: trial numbers go on, finished trials are kept,
and a trial left running by a killed search is recorded as failed. Trials run through the
launcher one job at a time, `n_jobs` at once (a free worker takes a new trial as soon as one
ends). With a pruner each job finds its own trial in the storage (by the study and its job
number, the trial's number) and reports its monitored validation metric every epoch or
boosting round (`Reporter`); a pruned trial stops there, its folder keeps its epochs and
`status: pruned`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlrun.errors import TrainingError, UserError, not_one_of

log = logging.getLogger("dlrun")

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("auto", "minimize", "maximize")
STUDY_FILE = "optuna.db"
SWEEPER = "DlrunOptunaSweeper"
# summary.json numbers besides the validation metrics that a multi-objective search may use
SUMMARY_NUMBERS = ("params", "wall_time_s", "epochs_run", "samples_per_s")
# The trials that failed in this process's search (None: no search ran): dlrun's exit code
# counts these, not the trials an earlier, killed run of the same search left behind
FAILED_NOW: list[int] | None = None


class Pruned(TrainingError):
    """The search's pruner stopped this trial: its folder keeps the epochs it trained."""

    status = "pruned"


def is_search(sweeper_cfg) -> bool:
    return str(OmegaConf.select(sweeper_cfg, "_target_") or "").endswith(SWEEPER)


def storage_url(sweeper_cfg, sweep_dir: Path) -> str:
    """hydra.sweeper.storage, or the SQLite file in the sweep folder."""
    return sweeper_cfg.storage or f"sqlite:///{Path(sweep_dir).absolute() / STUDY_FILE}"


def study_name(sweeper_cfg, task_name: str) -> str:
    return sweeper_cfg.study_name or task_name


def open_storage(url: str):
    """Optuna's RDB storage; SQLite waits for a writer instead of failing ('database is locked')
    when several jobs report at once."""
    import optuna

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_pruner(sweeper_cfg, max_epochs: int | None = None):
    import optuna

    name = sweeper_cfg.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=sweeper_cfg.pruner_startup_trials,
            n_warmup_steps=sweeper_cfg.pruner_warmup_epochs,
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, sweeper_cfg.pruner_warmup_epochs),
            max_resource=max_epochs or "auto",
        )
    return optuna.pruners.NopPruner()


# ----------------------------------------------------------------------------- search space


def search_space(params, arguments: list[str]) -> tuple[list[str], dict]:
    """(the fixed overrides every trial gets, {key: Optuna distribution}) from
    hydra.sweeper.params and the command line's sweep overrides (which win)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    declared = [f"{k}={v}" for k, v in (params or {}).items()]
    space, fixed = {}, []
    for source, lines in (("hydra.sweeper.params", declared), ("the command line", arguments)):
        try:
            parsed = parser.parse_overrides(lines)
        except Exception as ex:  # Hydra's own message names the override
            raise UserError(f"{source}: {str(ex).strip().splitlines()[0]}") from None
        for override in parsed:
            key = override.get_key_element()
            if override.is_sweep_override():
                space[key] = distribution(override, key)
                continue
            fixed.append(override.input_line)
            space.pop(key, None)  # a fixed value on the command line replaces a searched one
    if not space:
        raise UserError(
            "hydra.sweeper.params: nothing to search. Give each searched setting a range, "
            "e.g. optim.lr: tag(log, interval(1e-4, 1e-1)), model.dropout: interval(0, 0.5), "
            "trainer.batch_size: choice(32, 64, 128)."
        )
    return fixed, space


def distribution(override, key: str):
    """The Optuna distribution of one Hydra sweep: interval -> float (int when both ends are
    whole numbers), log with tag(log, ...); range -> int (or its float values as choices);
    choice / a,b,c -> categorical."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweep = override.value()
    log_scale = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if isinstance(low, int) and isinstance(high, int):
            return d.IntDistribution(low, high, log=log_scale)
        return d.FloatDistribution(float(low), float(high), log=log_scale)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values) and values:
            step = sweep.step if len(values) > 1 else 1
            return d.IntDistribution(values[0], values[-1], log=log_scale, step=int(step))
        return d.CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        values = [encode(v) for v in override.sweep_iterator()]
        return d.CategoricalDistribution(values)
    raise UserError(f"hydra.sweeper.params: {key} is a sweep dlrun's search cannot draw from.")


def encode(value: Any) -> Any:
    """A choice Optuna can store (None, bool, int, float, str): lists and dicts as Hydra text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    from hydra.core.override_parser.types import Override

    return Override._get_value_element_as_str(value)


def as_override(key: str, value: Any) -> str:
    """key=value as a Hydra override (strings quoted when Hydra would read them otherwise)."""
    if isinstance(value, str):
        plain = value.replace("_", "").replace("-", "").replace(".", "").replace("/", "")
        if not plain.isalnum() and not value.startswith(("[", "{")):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return f"{key}={value}"
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={'null' if value is None else value}"


def grid_space(space: dict) -> dict:
    """GridSampler's search space: every value of every searched setting (intervals have none)."""
    import optuna.distributions as d

    grid = {}
    for key, dist in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, d.IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise UserError(
                f"hydra.sweeper.sampler=grid: {key} is an interval, which has no grid of values. "
                f"Give it choice(...) or range(...), or use sampler=tpe or random."
            )
    return grid


# ----------------------------------------------------------------------------- the study


def objectives(sweeper_cfg, config) -> tuple[list[str] | None, list[str]]:
    """(the metrics optimized, None for the monitored one; their directions)."""
    from dlrun.metrics import best_mode

    metrics = list(sweeper_cfg.metrics) if sweeper_cfg.metrics else None
    given = sweeper_cfg.direction
    given = list(given) if OmegaConf.is_list(given) or isinstance(given, list) else [given]
    stopping = config.trainer.early_stopping
    names = metrics or [stopping.monitor]
    for name in names:
        if not (name.startswith("val_") or name in SUMMARY_NUMBERS):
            allowed = ("val_<metric>", *SUMMARY_NUMBERS)
            raise UserError(not_one_of("hydra.sweeper.metrics", "a metric", name, allowed))
    if len(given) == 1:
        given = given * len(names)
    if len(given) != len(names):
        raise UserError(
            f"hydra.sweeper.direction: {len(given)} directions for {len(names)} metrics "
            f"({', '.join(names)}); give one for each."
        )
    directions = []
    for name, way in zip(names, given, strict=True):
        if way not in DIRECTIONS:
            raise UserError(not_one_of("hydra.sweeper.direction", "a direction", way, DIRECTIONS))
        if way == "auto":
            mode = stopping.mode if name == stopping.monitor and stopping.mode != "auto" else None
            mode = mode or ("min" if name in SUMMARY_NUMBERS else best_mode(name))
            way = "maximize" if mode == "max" else "minimize"
        directions.append(way)
    return metrics, directions


def make_sampler(sweeper_cfg, space: dict):
    import optuna

    name, seed = sweeper_cfg.sampler, sweeper_cfg.seed
    if name not in SAMPLERS:
        raise UserError(not_one_of("hydra.sweeper.sampler", "a sampler", name, SAMPLERS))
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(space), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        import optuna.distributions as d

        drawn = [k for k, v in space.items() if isinstance(v, d.CategoricalDistribution)]
        if drawn:  # (once here, not a warning from Optuna for every trial)
            log.info(
                "cmaes: %s are choices, which CMA-ES does not model: drawn at random",
                ", ".join(drawn),
            )
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def check_settings(sweeper_cfg, metrics, given: list[str]) -> None:
    """Settings that cannot work together refused; a search config's pruner left on for a
    multi-objective search (`given`: the command line's hydra overrides) turned off."""
    if sweeper_cfg.pruner not in PRUNERS:
        raise UserError(not_one_of("hydra.sweeper.pruner", "a pruner", sweeper_cfg.pruner, PRUNERS))
    if sweeper_cfg.pruner != "none" and multi_objective(sweeper_cfg):
        if any(o.lstrip("+").startswith("hydra.sweeper.pruner=") for o in given):
            raise UserError(
                f"hydra.sweeper.pruner={sweeper_cfg.pruner}: Optuna prunes single-objective "
                f"searches only; this one optimizes {len(metrics)} metrics. Use "
                "hydra.sweeper.pruner=none."
            )
        log.info(
            "search: no pruning (Optuna prunes single-objective searches only; this one "
            "optimizes %s)",
            ", ".join(metrics),
        )  # the trials' jobs see the same (job_reporter)
    if sweeper_cfg.n_trials < 1:
        raise UserError(f"hydra.sweeper.n_trials must be at least 1. Got {sweeper_cfg.n_trials}.")


def multi_objective(sweeper_cfg) -> bool:
    return bool(sweeper_cfg.metrics) and len(sweeper_cfg.metrics) > 1


class Search:
    """One invocation of a search: continue (or start) the study, run the trials it lacks."""

    def __init__(self, sweeper, arguments: list[str]):
        self.launcher, self.config = sweeper.launcher, sweeper.config
        self.settings = OmegaConf.create(dict(sweeper.settings))
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.fixed, self.space = search_space(self.settings.params, arguments)
        self.metrics, self.directions = objectives(self.settings, self.config)
        given = list(OmegaConf.select(self.config, "hydra.overrides.hydra") or [])
        check_settings(self.settings, self.metrics, given)
        if multi_objective(self.settings):
            self.settings.pruner = "none"
        self.lock = threading.Lock()

    def open_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = storage_url(self.settings, self.sweep_dir)
        name = study_name(self.settings, self.config.task_name)
        try:
            storage = open_storage(url)
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                sampler=make_sampler(self.settings, self.space),
                directions=self.directions,
                load_if_exists=True,
            )
        except UserError:
            raise
        except Exception as ex:
            raise UserError(f"hydra.sweeper.storage: cannot open {url}: {ex}") from None
        if [d.name.lower() for d in study.directions] != self.directions:
            raise UserError(
                f"hydra.sweeper.direction: the study '{name}' in {url} was created to "
                f"{', '.join(d.name.lower() for d in study.directions)}; this search asks to "
                f"{', '.join(self.directions)}. Use another study_name or the same direction."
            )
        return study, url, name

    def run(self) -> list:
        from optuna.trial import TrialState

        global FAILED_NOW
        study, url, name = self.open_study()
        self.check_same_settings(study, name)
        FAILED_NOW = []
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning(
                "trial %d was still running when its search stopped: recorded as failed",
                trial.number,
            )
        trials = study.get_trials()
        if trials and self.settings.seed is not None:
            # a seeded sampler begun again would draw the first run's trials again
            reseeded = OmegaConf.merge(self.settings, {"seed": self.settings.seed + len(trials)})
            study.sampler = make_sampler(reseeded, self.space)
        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        todo = max(0, self.settings.n_trials - len(counted))
        workers = self.workers()
        if trials:
            log.info(
                "search: study '%s' in %s continues: %s; %d more trial(s) of %d",
                name,
                url,
                tally(trials),
                todo,
                self.settings.n_trials,
            )
        else:
            log.info(
                "search: study '%s' in %s, %d trials%s, %s sampler, pruner %s",
                name,
                url,
                todo,
                f" ({workers} at once)" if workers > 1 else "",
                self.settings.sampler,
                self.settings.pruner,
            )
        returns = []
        if workers == 1:
            for _ in range(todo):
                returns.append(self.trial(study))
                if self.stopped():
                    break
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                running = {pool.submit(self.trial, study) for _ in range(min(workers, todo))}
                started = len(running)
                while running:  # a worker that ends takes the next trial: no fixed batches
                    done, running = concurrent.futures.wait(
                        running, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in done:
                        returns.append(future.result())
                        if started < todo and not self.stopped():
                            running.add(pool.submit(self.trial, study))
                            started += 1
        finished = study.get_trials()
        log.info("search: %s", tally(finished))
        if self.stopped():
            log.warning(
                "search: stopped by a signal (Ctrl-C or SIGTERM); run the same command to "
                "continue the study where it stopped"
            )
        write_results(self.sweep_dir, study, name, self.metrics)
        if len(self.directions) > 1 and any(t.state == TrialState.COMPLETE for t in finished):
            front = sorted(t.number for t in study.best_trials)
            log.info("search: the Pareto front: trial(s) %s", ", ".join(map(str, front)))
        return returns

    def check_same_settings(self, study, name: str) -> None:
        """A study continues with the settings it began with (the fixed overrides of its
        trials): trials trained otherwise would be ranked together, wrongly."""
        given = sorted(self.fixed)
        recorded = study.user_attrs.get("dlrun_overrides")
        if recorded is None:
            study.set_user_attr("dlrun_overrides", given)
            return
        if recorded != given:
            changed = sorted(set(given) ^ set(recorded))
            raise UserError(
                f"the search '{name}' in {self.sweep_dir} was run with other settings "
                f"({' '.join(recorded) or 'none'}); this run differs in {' '.join(changed)}, "
                "and its trials would be ranked with trials trained otherwise. Run it with the "
                "same overrides, or start a new search (hydra.sweeper.study_name or "
                "hydra.sweep.dir)."
            )

    def stopped(self) -> bool:
        """Whether a signal stopped the search (Ctrl-C or SIGTERM, to a trial or to this
        process: dlrun.folders.stop_sweep): no new trial starts."""
        from dlrun.folders import sweep_stopped

        return sweep_stopped(self.sweep_dir) is not None

    def workers(self) -> int:
        """hydra.sweeper.n_jobs, or the launcher's own (joblib's n_jobs); the in-process
        launcher runs one trial at a time."""
        import os

        target = str(OmegaConf.select(self.config, "hydra.launcher._target_") or "")
        if "BasicLauncher" in target:
            return 1
        n = self.settings.n_jobs or OmegaConf.select(self.config, "hydra.launcher.n_jobs") or 1
        return max(1, os.cpu_count() or 1) if n < 0 else int(n)

    def trial(self, study):
        """Ask, run the trial's job through the launcher, tell what it became."""
        from optuna.trial import TrialState

        with self.lock:
            trial = study.ask(self.space)
        overrides = self.fixed + [as_override(k, v) for k, v in trial.params.items()]
        try:
            with quiet_launcher():  # "Launching 1 jobs locally" for every trial: the job says it
                (ret,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
        except BaseException:
            with self.lock:
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        state, values = self.outcome(ret, trial.number)
        if state == TrialState.FAIL and FAILED_NOW is not None:
            FAILED_NOW.append(trial.number)
        with self.lock:
            study.tell(trial, values, state=state, skip_if_finished=True)
        return ret

    def outcome(self, ret, number: int):
        """(the trial's state, its values) from the job's summary.json."""
        from optuna.trial import TrialState

        job_dir = self.sweep_dir / str(number)
        hydra_cfg = getattr(ret, "hydra_cfg", None)
        output_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir") if hydra_cfg else None
        if output_dir:
            job_dir = Path(str(output_dir))
        try:
            summary = json.loads((job_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        status = summary.get("status")
        if status == "pruned":
            return TrialState.PRUNED, None
        if status != "completed":
            return TrialState.FAIL, None
        values = [summary_value(summary, name) for name in self.metrics or [None]]
        if any(v is None or not math.isfinite(v) for v in values):
            return TrialState.FAIL, None
        monitor = summary.get("monitor", {})
        if self.metrics is None and monitor.get("mode"):
            way = "maximize" if monitor["mode"] == "max" else "minimize"
            if way != self.directions[0]:
                raise UserError(
                    f"hydra.sweeper.direction: the trials monitor {monitor['metric']}, which is "
                    f"best at its {monitor['mode']}, but the study is set to "
                    f"{self.directions[0]}. Set hydra.sweeper.direction={way}."
                )
        return TrialState.COMPLETE, values


def write_results(sweep_dir: Path, study, name: str, metrics) -> None:
    """optimization_results.yaml: the best trial's parameters and value (each trial of the
    Pareto front, for several metrics), as Hydra's Optuna sweeper wrote it."""
    import yaml
    from optuna.trial import TrialState

    from dlrun.checkpoints import atomic_write

    if not study.get_trials(states=(TrialState.COMPLETE,)):
        return
    if len(study.directions) == 1:
        best = study.best_trial
        result = {"name": name, "best_trial": best.number, "best_params": best.params}
        result["best_value"] = best.value
    else:
        result = {"name": name, "metrics": list(metrics)}
        result["solutions"] = [
            {"trial": t.number, "params": t.params, "values": list(t.values)}
            for t in study.best_trials
        ]
    text = yaml.safe_dump(result, sort_keys=False)
    atomic_write(sweep_dir / "optimization_results.yaml", lambda f: f.write(text), mode="w")


@contextlib.contextmanager
def quiet_launcher():
    """The launchers' INFO lines off while a trial is launched (each trial is one launch)."""
    names = (
        "hydra._internal.core_plugins.basic_launcher",
        "hydra_plugins.hydra_joblib_launcher._core",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    )
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def summary_value(summary: dict, name: str | None) -> float | None:
    """A metric a trial is judged by: the monitored one (None), val_<metric> (the folds' mean
    for a cross-validated run), or a number of summary.json (params, wall_time_s, ...)."""
    if name is None:
        value = summary.get("monitor", {}).get("best")
    elif name.startswith("val_"):
        value = summary.get("val", {}).get(name.removeprefix("val_"))
    else:
        value = summary.get(name)
    return None if value is None else float(value)


def tally(trials) -> str:
    """'12 trials: 9 complete, 2 pruned, 1 failed'."""
    from collections import Counter

    counts = Counter(t.state.name.lower() for t in trials)
    named = {"complete": "complete", "pruned": "pruned", "fail": "failed", "running": "running"}
    parts = [f"{counts[k]} {v}" for k, v in named.items() if counts.get(k)]
    return f"{len(trials)} trials" + (f": {', '.join(parts)}" if parts else "")


# ----------------------------------------------------------------------------- inside a job


class Reporter:
    """A trial's job reports its monitored validation metric each epoch (or boosting round);
    Pruned once Optuna's pruner says the trial is worse than the others at that step."""

    def __init__(self, trial, monitor: str, pruner: str):
        self.trial, self.monitor, self.pruner = trial, monitor, pruner

    def log(self, record: dict) -> None:
        value = record.get(self.monitor)
        step = record.get("epoch", record.get("round"))
        if value is None or step is None or not math.isfinite(value):
            return
        self.trial.report(float(value), int(step))
        if self.trial.should_prune():
            unit = "epoch" if "epoch" in record else "round"
            raise Pruned(
                f"stopped by the search's {self.pruner} pruner after {unit} {step}: "
                f"{self.monitor} {value:.4g} trails the other trials at that {unit}"
            )


def job_reporter(conf) -> Reporter | None:
    """The Reporter of this job when it is a trial of a search that prunes; else None (no
    search, no pruner, or a cross-validated trial, whose folds each have their own epochs)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
    except Exception:
        return None
    sweeper = hydra_cfg.sweeper
    if not is_search(sweeper) or sweeper.pruner == "none" or conf.data.cv.folds is not None:
        return None
    if multi_objective(sweeper):  # (the search turned its pruner off)
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    study = optuna.load_study(
        study_name=study_name(sweeper, conf.task_name),
        storage=open_storage(storage_url(sweeper, sweep_dir)),
        pruner=make_pruner(sweeper, getattr(conf.model, "n_estimators", conf.trainer.max_epochs)),
    )
    number = int(hydra_cfg.job.num)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return Reporter(
        optuna.trial.Trial(study, trial_id), conf.trainer.early_stopping.monitor, sweeper.pruner
    )
