"""The system programs the suite drives, installed by the test command itself where they are missing.

`uv run pytest` on a fresh machine of ours (Debian, uv on it) must pass, so
the session installs what the real servers and the browser test need before
any test starts: Debian's chromium (tests/test_ui.py), PostgreSQL's server
binaries (the scale-out tests) and SLURM's daemons with munge (the SLURM
tests). `apt-get` runs as root, else through `sudo -n` (never a password
prompt pytest would swallow); where neither works the session stops with one
line that says what to install. Nothing is downloaded when all are present.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

# Debian puts the daemons in sbin, which a user's PATH often lacks.
_SBIN = "/usr/sbin:/sbin:/usr/local/sbin"


@dataclass(frozen=True)
class SystemPackages:
    """Debian packages for one thing the tests start, and the programs whose absence means they are missing."""

    why: str
    packages: tuple[str, ...]
    programs: tuple[str, ...]
    recommends: bool = True  # SLURM's recommends pull in MPI stacks and mail servers that no test uses

    def missing(self) -> bool:
        return not all(_found(program) for program in self.programs)


NEEDED = (
    SystemPackages("tests/test_ui.py drives Debian's chromium", ("chromium",), ("/usr/bin/chromium",)),
    SystemPackages("the PostgreSQL-backed tests start their own cluster", ("postgresql",), ("initdb", "pg_ctl")),
    SystemPackages("the SLURM tests start a one-node cluster", ("slurmctld", "slurmd", "slurm-client", "munge"),
                   ("slurmctld", "slurmd", "sbatch", "munged", "mungekey"), recommends=False),
)


def _found(program: str) -> bool:
    if program.startswith("/"):
        return os.access(program, os.X_OK)
    if shutil.which(program) or shutil.which(program, path=_SBIN):
        return True
    # PostgreSQL's server binaries live in a versioned folder off PATH
    return bool(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))


class InstallError(RuntimeError):
    """One line: what is missing and the command that would install it."""


def ensure_installed(needed: tuple[SystemPackages, ...] = NEEDED, say: Callable[[str], None] = print) -> list[str]:
    """Install the missing groups with apt-get; the packages installed (none when nothing was missing)."""
    missing = [group for group in needed if group.missing()]
    if not missing:
        return []
    names = [name for group in missing for name in group.packages]
    apt = _apt_command()
    if apt is None:
        raise InstallError(f"missing system packages {' '.join(names)} and no root or passwordless sudo to "
                           f"install them: run `sudo apt-get install -y {' '.join(names)}`")
    say("installing system packages the tests need: "
        + "; ".join(f"{' '.join(g.packages)} ({g.why})" for g in missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _apt(apt, ["update", "-qq"], env, names)
    for recommends in (True, False):
        batch = [name for group in missing if group.recommends is recommends for name in group.packages]
        if batch:
            flags = [] if recommends else ["--no-install-recommends"]
            _apt(apt, ["install", "-y", "-qq", *flags, *batch], env, names)
    still = [name for group in missing if group.missing() for name in group.packages]
    if still:
        raise InstallError(f"apt-get installed {' '.join(names)} but {' '.join(still)} still lack their programs")
    return names


def _apt_command() -> list[str] | None:
    if shutil.which("apt-get") is None:
        return None
    # another apt-get (a second test session, an engineer) holds dpkg's lock for a while: wait, don't fail
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    if os.geteuid() == 0:
        return apt
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", *apt]
    return None


def _apt(apt: list[str], args: list[str], env: dict[str, str], names: list[str]) -> None:
    done = subprocess.run([*apt, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise InstallError(f"`{' '.join([*apt, *args])}` failed ({done.returncode}) installing "
                           f"{' '.join(names)}: {last[0]}")
