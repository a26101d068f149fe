"""Config schema, compose-time validation and the `extras` behaviours."""
