"""Loaded at start-up by every Python process with this folder on PYTHONPATH (tests only).

At exit it appends the process's argv and which of torch and Lightning it
imported to the file `TRAINFLOW_IMPORT_PROBE` names: how a test sees what a
step process imported without timing it. Steps leave through
`cli.run_and_exit`, which runs exit handlers before `os._exit`.
"""

import atexit
import json
import os
import sys

HEAVY = ("torch", "lightning", "pytorch_lightning")


def _report() -> None:
    path = os.environ.get("TRAINFLOW_IMPORT_PROBE")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"argv": sys.argv, "heavy": [m for m in HEAVY if m in sys.modules]}) + "\n")


atexit.register(_report)
