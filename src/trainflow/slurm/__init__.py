"""Running trainflow's steps on a SLURM cluster: the `mlflow run --backend slurm` project backend."""
