"""Upload what a step saved to disk while its tracking server was away.

    uv run python -m trainflow.tracking.sync logs/train/runs/<time>/unsynced
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from trainflow.errors import first_line
from trainflow.tracking import tags as tag


def sync(folder: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Send the saved metrics and checkpoints to their run; returns (metrics, artifacts)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    manifest = json.loads((folder / "sync.json").read_text())
    client = MlflowClient(tracking_uri or manifest["tracking_uri"])
    run_id = manifest["run_id"]
    lines = (folder / manifest["metrics"]).read_text().splitlines()
    metrics = [Metric(**json.loads(line)) for line in lines if line.strip()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for local, artifact_path in manifest["artifacts"].items():
        client.log_artifacts(run_id, str(folder / local), artifact_path)
    client.set_tag(run_id, tag.SYNCED_FROM, str(folder))
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "FAILED")  # the step could not finish its own bookkeeping
    return len(metrics), len(manifest["artifacts"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tracking-uri", default=None, help="defaults to the URI the step used")
    parser.add_argument("--keep", action="store_true", help="keep the folder after uploading")
    args = parser.parse_args(argv)
    if not (args.folder / "sync.json").is_file():
        print(f"error: {args.folder}: no sync.json; not an unsynced trainflow folder", file=sys.stderr)
        return 1
    try:
        metrics, artifacts = sync(args.folder, args.tracking_uri)
    except Exception as exc:
        print(f"error: sync {args.folder}: {first_line(exc)}", file=sys.stderr)
        return 1
    print(f"synced {metrics} metrics and {artifacts} checkpoint folders from {args.folder}")
    if not args.keep:
        shutil.rmtree(args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
