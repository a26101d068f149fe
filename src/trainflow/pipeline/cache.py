"""The step cache: reuse a FINISHED run whose inputs are the same as ours.

A step's cache key covers its entry point, its resolved config (canonical
JSON: 3 and "3" differ, key order does not), the content of every source file
it can run (derived from imports, `pipeline.sources`) and the digests of its
inputs. Runs are looked up with a server-side filter on
the key, so the search is not limited to the first page of runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainflow.data.roots import is_store_uri, store_listing
from trainflow.data.task import LOADER_KEYS
from trainflow.pipeline.sources import declared_strings, step_sources
from trainflow.tracking import tags as tag

_VOLATILE = frozenset({"paths", "hydra", "extras", "tracking", "tags", "task_name"})


def dataset_independent_keys(data: dict[str, Any]) -> frozenset[str]:
    """Data keys that change no dataset: loader settings, and what the data module declares as preprocessing.

    Transforms applied when batches are loaded (an image size, augmentation)
    leave the packed dataset as it is, so changing them reuses prepare_data.
    """
    target = data.get("_target_")
    declared = (*declared_strings(target, "preprocessing_keys"),
                *declared_strings(target, "training_only_keys")) if isinstance(target, str) else ()
    return frozenset((*LOADER_KEYS, *declared))


def scoped_config(step: str, resolved: dict[str, Any]) -> dict[str, Any]:
    """Config that decides a step's result; prepare_data reads only the data source and the split seed."""
    if step == "prepare_data":
        source = resolved.get("data") or {}
        ignored = dataset_independent_keys(source)
        data = {k: v for k, v in source.items() if k not in ignored}
        return {"data": data, "seed": resolved.get("seed")}
    scoped = {k: v for k, v in resolved.items() if k not in _VOLATILE}
    if isinstance(scoped.get("data"), dict):
        # the dataset enters through its digest (an input), not its URI
        scoped["data"] = {k: v for k, v in scoped["data"].items() if k != "uri"}
    scoped.pop("model_uri", None)
    return scoped


def code_digest(root: Path, files: Iterable[Path]) -> str:
    """sha256 over the files' paths (relative to `root`) and contents as they are on disk now."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def step_code_digest(root: Path, step: str, resolved: dict[str, Any]) -> str:
    """The code version a cached run must share: every file the step can run with this config.

    Derived from the import graph (pipeline.sources), so a moved or edited
    module changes the digest of exactly the steps that can reach it.
    """
    return code_digest(root, step_sources(root, step, scoped_config(step, resolved)))


def cache_key(step: str, resolved: dict[str, Any], code: str, inputs: dict[str, str]) -> str:
    payload = {"entry_point": step, "config": scoped_config(step, resolved), "code": code, "inputs": inputs}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def find_finished_run(client: Any, experiment_ids: list[str], key: str) -> Any | None:
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.`{tag.CACHE_KEY}` = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def source_inputs(resolved: dict[str, Any]) -> dict[str, str]:
    """prepare_data's input: names, sizes and mtimes of the files its data config points at.

    The config names a folder (an image folder's `root`, treebank files), not
    what is in it: without this, images added to `data.root` would reuse the
    old dataset. Local files are stat()ed and a store URI (`s3://bucket/prefix`,
    `file://`) is listed through pyarrow.fs (`trainflow.data.roots`), never
    read, so 100k images cost little. Empty when the config names no existing
    path (digits), which keeps such keys as they were.
    """
    digest = hashlib.sha256()
    found = False
    data = resolved.get("data") or {}
    ignored = dataset_independent_keys(data)
    for key, value in sorted(data.items()):
        if key in ignored or not isinstance(value, str) or "/" not in value:
            continue
        files = store_listing(value, f"data.{key}") if is_store_uri(value) else local_listing(Path(value))
        found = found or files is not None
        for name, size, mtime_ns in files or ():
            digest.update(f"{key}\0{name}\0{size}\0{mtime_ns}\n".encode())
    return {"source": digest.hexdigest()} if found else {}


def local_listing(path: Path) -> list[tuple[str, int, int]] | None:
    """(name, bytes, mtime in ns) of the file, or of every file below the folder; None if nothing is there."""
    path = path.expanduser()
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = []
    for file in files:
        stat = file.stat()
        name = file.name if file == path else file.relative_to(path).as_posix()  # not where the checkout is
        listing.append((name, stat.st_size, stat.st_mtime_ns))
    return listing
