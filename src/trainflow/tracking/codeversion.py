"""The code a run executed: commit, dirty flag and a hash of uncommitted changes."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CodeVersion:
    commit: str | None
    dirty: bool
    # sha256 over `git diff HEAD` and untracked files: equal only if the
    # working trees are equal, which a commit id alone cannot say.
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
    digest.update(_git(root, "diff", "HEAD", "--binary"))
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
    for name in sorted(n for n in untracked if n):
        digest.update(name)
        path = root / name.decode()
        if path.is_file():
            digest.update(path.read_bytes())
    dirty = bool(_git(root, "status", "--porcelain"))
    return CodeVersion(commit=commit, dirty=dirty, changes_digest=digest.hexdigest())


def _tree_digest(root: Path) -> str:
    """Without git, a digest of the package and configs stands in for a commit."""
    digest = hashlib.sha256()
    for sub in ("src", "configs", "steps"):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()
