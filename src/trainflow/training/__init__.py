"""What the train and evaluate steps do inside their run."""
