"""trainflow: Hydra-configured Lightning training run as MLflow Projects steps.

Importing the package has no side effects: no MLflow client, no git, no heavy
optional libraries. Each step imports what its config asks for.
"""

__version__ = "0.1.0"
