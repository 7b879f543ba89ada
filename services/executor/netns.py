"""Can bwrap give a sandbox its own network namespace here?  Probed once per boot, then read from a cache.

Some containers forbid new network namespaces (seccomp profiles, nested user
namespaces, ``user.max_net_namespaces=0``).  bwrap then fails with
``Creating new namespace failed``, and the Go tool Fence quietly runs without
``--unshare-net``.  fence runs proxy-only too when the policy allows some
network (with a warning every time: direct connections are not blocked),
and refuses a run whose policy allows no network unless
``FENCE_ALLOW_SHARED_NETWORK=1`` says the user accepts that (see
``docs/network.md``).

Knowing must not cost a process per run, so the answer is cached, like the
seccomp program, in fence's runtime dir (``cache/netns-<boot>-<userns>.json``;
every sandbox sees that dir as an empty tmpfs, so no sandbox can tell a later
run "no network namespace here").  The first run of a boot (for this bwrap,
user and user namespace) pays for the probe: one ``bwrap --unshare-net``
of ``true`` (a few ms), and only if that fails a second one without
``--unshare-net``, to tell "no netns" from "bwrap does not work at all"; in
the latter case nothing is weakened and the run fails as it would have.
The cache is keyed by the user namespace too, so a container sharing the
host's runtime dir never inherits the host's answer (or the reverse).  A
"no netns" answer (the one that weakens runs) is trusted for
``NEGATIVE_TTL`` only, so a fixed environment stops running proxy-only
within minutes rather than at the next boot.
"""

from __future__ import annotations

import os
import time

import msgspec

from fence.executor.host import which
from fence.runtime import cache_dir as default_cache_dir
from fence.runtime import read_cache, write_cache

ALLOW_SHARED_ENV = "FENCE_ALLOW_SHARED_NETWORK"
"""Set to 1 to run a no-network policy on the host's network when no netns can be made."""
NEGATIVE_TTL = 600.0
"""Seconds a cached "no network namespace" answer is used before probing again."""


class NetnsState(msgspec.Struct, kw_only=True):
    """What probing found, and for which bwrap, user and user namespace."""

    bwrap: str
    bwrap_id: tuple[int, int]
    euid: int
    userns: int
    available: bool
    """``bwrap --unshare-net`` works."""
    shared_ok: bool = False
    """When it does not: bwrap works without ``--unshare-net`` (so the netns is the only thing missing)."""
    detail: str = ""
    """bwrap's last error line when the netns could not be made."""
    at: float = 0.0
    """When it was probed (Unix time)."""

    @property
    def proxy_only(self) -> bool:
        """No netns, but sandboxes can run on the host's network (filtered by the proxies only)."""
        return not self.available and self.shared_ok


def state(bwrap: str, cache_dir: str | None = None) -> NetnsState:
    """The netns answer for ``bwrap``: from this boot's cache, else probed now and cached.

    ``cache_dir``: default ``cache/`` in the runtime dir; "" keeps nothing.
    """
    want = key(bwrap)
    path = cache_path(cache_dir, want["userns"])
    cached = read_cache(path, NetnsState)  # only our own, private answer is trusted
    if (
        cached is not None
        and all(getattr(cached, k) == v for k, v in want.items())
        and (cached.available or 0 <= time.time() - cached.at < NEGATIVE_TTL)
    ):
        return cached
    found = probe(want)
    if path:
        write(path, found)
    return found


def probe(fields: dict) -> NetnsState:
    """Run bwrap with ``--unshare-net`` (and, if that fails, without) on ``true``; ``fields``: ``key(bwrap)``."""
    # lazy: import cycle with fence.executor.features (and only a probe, once per boot, needs it)
    from fence.executor.features import run_quiet

    bwrap = fields["bwrap"]
    base = [bwrap] + (["--unshare-user"] if os.geteuid() == 0 else [])  # as plan.py runs it
    tail = ["--ro-bind", "/", "/", "--", which("true") or "/bin/true"]
    at = time.time()
    code, out = run_quiet(base + ["--unshare-net"] + tail)
    if code == 0:
        return NetnsState(available=True, at=at, **fields)
    lines = out.strip().splitlines()
    detail = lines[-1] if lines else f"bwrap exited {code}"
    shared_code, _ = run_quiet(base + tail)
    return NetnsState(available=False, shared_ok=shared_code == 0, detail=detail, at=at, **fields)


def write(path: str, found: NetnsState) -> None:
    """Store a probe result (0600, atomically); failures only cost a probe next time."""
    write_cache(path, found)


def key(bwrap: str) -> dict:
    """The fields a cached answer must match to be used (tests build fake answers with it)."""
    try:
        st = os.stat(bwrap)
        ident = (st.st_mtime_ns, st.st_size)
    except OSError:
        ident = (0, 0)
    return {"bwrap": bwrap, "bwrap_id": ident, "euid": os.geteuid(), "userns": _userns()}


def _userns() -> int:
    try:
        return os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return 0


def boot_id() -> str:
    """This boot's random id ("" when unknown): per-boot caches are named by it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def cache_path(cache_dir: str | None = None, userns: int | None = None) -> str:
    """Where the answer for this boot and user namespace is cached ("" when nowhere)."""
    if cache_dir is None:
        cache_dir = default_cache_dir()
    bid = boot_id()
    if userns is None:
        userns = _userns()
    return os.path.join(cache_dir, f"netns-{bid}-{userns}.json") if cache_dir and bid else ""
