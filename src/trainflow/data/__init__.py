"""Tasks' data: LightningDataModules, the dataset artifact, and the task contract (`task.TaskDataModule`).

None of them imports MLflow (checked by `lint-imports`); a task's served model
lives beside its data module and is wrapped for MLflow by `registry.pyfunc`.
"""
