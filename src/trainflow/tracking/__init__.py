"""The only package that talks to MLflow: runs, params, artifacts, logger."""
