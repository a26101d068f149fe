"""What reading `_target_` signatures from source saves: a typo'd override refused, both ways.

    uv run python bench/precheck.py [--rounds 3]

Each round runs two fresh interpreters one after the other (interleaved, so
both see the same machine state), each calling `trainflow.cli.precheck_overrides`
on `train experiment=example +model.optimizer.lrr=1`, the override check every
step runs before `@hydra.main`:

- **source**: as shipped, `check_targets(cfg, imported=False)`: signatures are
  read from the targets' source files (trainflow.config.static_targets);
- **import**: the same check with `imported=True`: every data, model and
  callback target is imported to read its signature (torch, Lightning, ...).

Both must print the same `error:` line. Times are process start to exit,
medians over the rounds. The last line is `precheck_saved_s <median import - median source>`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = """
import sys
import trainflow.config.validate as validate
check = validate.check_targets
validate.check_targets = lambda cfg, imported=False: check(cfg, imported={imported})
from trainflow.cli import precheck_overrides
try:
    precheck_overrides("train", ["experiment=example", "+model.optimizer.lrr=1"])
except SystemExit as exc:
    print("exit", exc.code, "torch imported:", "torch" in sys.modules)
"""
MODES = {"source": False, "import": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    errors: dict[str, set[str]] = {mode: set() for mode in MODES}
    for _ in range(args.rounds):
        for mode, imported in MODES.items():
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CODE.format(imported=imported)], cwd=ROOT,
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            times[mode].append(time.perf_counter() - start)
            errors[mode].add(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
            print(f"{mode:7s} {times[mode][-1]:6.2f} s  {done.stdout.strip()}", flush=True)
    if errors["source"] != errors["import"] or len(errors["source"]) != 1:
        raise SystemExit(f"the two checks disagree: {errors}")
    print(f"error line: {errors['source'].pop()}")
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    for mode, values in times.items():
        print(f"{mode:7s} median {medians[mode]:.2f} s  of {[round(v, 2) for v in values]}")
    print(f"precheck_saved_s {medians['import'] - medians['source']:.2f}")


if __name__ == "__main__":
    main()
