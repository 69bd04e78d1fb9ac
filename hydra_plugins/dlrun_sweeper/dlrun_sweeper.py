"""hydra/sweeper=dlrun_optuna: Hydra finds this module in its hydra_plugins namespace package on
every start, so it imports nothing heavy; the search itself is dlrun.search (Optuna is imported
when a search runs)."""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


@dataclass
class DlrunOptunaSweeperConf:
    _target_: str = "hydra_plugins.dlrun_sweeper.dlrun_sweeper.DlrunOptunaSweeper"
    n_trials: int = 20  # trials of the study in all: a rerun runs only the ones it lacks
    sampler: str = "tpe"  # tpe, random, grid (choices and ranges only), cmaes
    seed: Optional[int] = None  # the sampler's seed; null: unseeded
    # minimize, maximize or auto (the monitored metric's own: max for accuracy, min for a
    # loss); with `metrics`, one per metric
    direction: Any = "auto"
    # multi-objective: e.g. [val_accuracy, params]; null: trainer.early_stopping.monitor
    metrics: Optional[list[str]] = None
    pruner: str = "none"  # none, median or hyperband: trials report their monitor each epoch
    pruner_startup_trials: int = 3  # median: trials that finish before any is pruned
    pruner_warmup_epochs: int = 2  # epochs (boosting rounds) before a trial can be pruned
    study_name: Optional[str] = None  # null: task_name
    storage: Optional[str] = None  # an Optuna storage URL; null: <sweep dir>/optuna.db (SQLite)
    n_jobs: Optional[int] = None  # trials at once; null: the launcher's n_jobs (basic: 1)
    params: dict[str, Any] = field(default_factory=dict)  # setting: Hydra sweep (interval, ...)


ConfigStore.instance().store(
    group="hydra/sweeper", name="dlrun_optuna", node=DlrunOptunaSweeperConf, provider="dlrun"
)


class DlrunOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from dlrun.search import Search

        return Search(self, arguments).run()
