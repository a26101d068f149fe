"""prepare_data and the `main` pipeline: steps chained by URI, with a step cache."""
