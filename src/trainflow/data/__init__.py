"""LightningDataModules; none of them imports MLflow."""
