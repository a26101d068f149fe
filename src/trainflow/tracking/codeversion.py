"""The code a run executed: commit, dirty flag and a hash of uncommitted changes.

Which files count: every file git tracks (its changes against HEAD, staged
or not, deletions included), plus untracked files that git does not ignore
and that are source: under `src/`, `steps/` or `configs/`, or anywhere with
a suffix in `SOURCE_SUFFIXES` (a new module or config beside the project's).
Other untracked files (the `server.db` of a tracking server started in the
project root, logs, CSV exports, caches) are data the code does not run:
they neither make a run dirty nor change its code version, so a database
growing beside the checkout does not make `reproduce` see drift.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Untracked files with these suffixes count as code wherever they are.
SOURCE_SUFFIXES = frozenset({".py", ".pyi", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".lock"})
# Untracked files anywhere under these top-level folders count, whatever their suffix.
SOURCE_FOLDERS = frozenset({"src", "steps", "configs"})

@dataclass(frozen=True)
class CodeVersion:
    commit: str | None
    dirty: bool
    # sha256 over `git diff HEAD` and untracked source files: equal only if
    # the code in the working trees is equal, which a commit id alone cannot say.
    changes_digest: str

    @property
    def id(self) -> str:
        return f"{self.commit or 'nogit'}+{self.changes_digest[:16] if self.dirty else 'clean'}"


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, check=True, timeout=30
    ).stdout


def code_version(root: Path) -> CodeVersion:
    try:
        commit = _git(root, "rev-parse", "HEAD").decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return CodeVersion(commit=None, dirty=True, changes_digest=_tree_digest(root))
    digest = hashlib.sha256()
    changes = _git(root, "diff", "HEAD", "--binary")
    digest.update(changes)
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
    counted = sorted(n for n in untracked if n and is_source(n.decode()))
    for name in counted:
        digest.update(name)
        path = root / name.decode()
        if path.is_file():
            digest.update(path.read_bytes())
    dirty = bool(changes) or bool(counted)
    return CodeVersion(commit=commit, dirty=dirty, changes_digest=digest.hexdigest())


def is_source(relative: str) -> bool:
    """Whether an untracked file (path relative to the checkout, `/`-separated) is part of the code version."""
    path = PurePosixPath(relative)
    return path.parts[0] in SOURCE_FOLDERS or path.suffix.lower() in SOURCE_SUFFIXES


def _tree_digest(root: Path) -> str:
    """Without git, a digest of the package and configs stands in for a commit."""
    digest = hashlib.sha256()
    for sub in ("src", "configs", "steps"):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()
