"""The sandbox's private mounts in real sandboxes, as root and as an unprivileged user: a sized /tmp and
/dev/shm.  Each case does the same thing outside fence, where it works."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.sandbox

MIB = 1 << 20


def config(fence, policy: dict) -> str:
    work = fence.workdir()
    (work / "fence.json").write_text(json.dumps(policy))
    fence.own(work)
    return str(work / "fence.json")


def sh(fence, policy: dict, script: str, *args: str, env: dict | None = None):
    return fence.run("-s", config(fence, policy), "--", "sh", "-c", script, "sh", *args, env=env)


def outside(fence, script: str, *args: str):
    return subprocess.run(["sh", "-c", script, "sh", *args], user=fence.user, env=fence.env(), cwd=fence.home,
                          capture_output=True, text=True, timeout=30)


# --- /tmp and /dev/shm ---------------------------------------------------------------------------

FILL = 'head -c {size} /dev/zero > "$1/fill" && echo wrote || echo refused; rm -f "$1/fill"'


def test_tmp_and_shm_hold_no_more_than_their_size(fence):
    """5 MiB fit in a host directory; inside, /tmp and /dev/shm sized 4M refuse them (ENOSPC) and take 3 MiB."""
    host_dir = fence.workdir()
    assert outside(fence, FILL.format(size=5 * MIB), str(host_dir)).stdout == "wrote\n"
    policy = {"filesystem": {"tmpSize": "4M", "shmSize": 4 * MIB}}
    script = "; ".join([FILL.format(size=5 * MIB).replace("$1", d) for d in ("/tmp", "/dev/shm")]
                       + [FILL.format(size=3 * MIB).replace("$1", d) for d in ("/tmp", "/dev/shm")])
    r = sh(fence, policy, script)
    assert r.stdout == "refused\nrefused\nwrote\nwrote\n", r.stderr
    assert "No space left on device" in r.stderr


def test_default_size_is_a_quarter_of_ram(fence):
    page = os.sysconf("SC_PAGE_SIZE")
    quarter = os.sysconf("SC_PHYS_PAGES") * page // 4
    expected = -(-quarter // page) * page  # tmpfs counts whole pages
    r = sh(fence, {}, 'for d in /tmp /dev/shm; do stat -f -c "%b %S" "$d"; done')
    assert r.returncode == 0, r.stderr
    sizes = [int(blocks) * int(block_size) for blocks, block_size in (line.split() for line in r.stdout.split("\n")
                                                                      if line)]
    assert sizes == [expected, expected]


def test_host_devices_keep_the_hosts_shm(fence):
    """devices.mode "host": /dev/shm is the host's (what the mode is for); /tmp is still sized."""
    r = sh(fence, {"devices": {"mode": "host"}, "filesystem": {"tmpSize": "4M"}},
           'stat -f -c %b /tmp; stat -c %d /dev/shm')
    assert r.returncode == 0, r.stderr
    blocks, device = r.stdout.split()
    assert int(blocks) * os.sysconf("SC_PAGE_SIZE") == 4 * MIB
    assert int(device) == os.stat("/dev/shm").st_dev
