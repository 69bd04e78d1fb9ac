"""dlrun's Hydra sweeper on current Optuna (hydra/sweeper=dlrun_optuna): see dlrun.search."""
