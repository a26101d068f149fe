"""Plain torch networks that LightningModules wrap."""
