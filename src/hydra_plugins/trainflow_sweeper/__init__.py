"""trainflow's Hydra sweeper: `-m hparams_search=<name>` runs trainflow's Optuna study."""
