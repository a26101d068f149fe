"""LightningModules and their networks; none of them imports MLflow (checked by `lint-imports`)."""
