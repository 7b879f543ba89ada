"""The sandbox's private mounts in real sandboxes, as root and as an unprivileged user: a sized /tmp and
/dev/shm, and the user's /run/user/<uid> hidden unless a grant names it.  Each case does the same thing
outside fence, where it works."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
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
    return subprocess.run(
        ["sh", "-c", script, "sh", *args],
        user=fence.user,
        env=fence.env(),
        cwd=fence.home,
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- /tmp and /dev/shm ---------------------------------------------------------------------------

FILL = 'head -c {size} /dev/zero > "$1/fill" && echo wrote || echo refused; rm -f "$1/fill"'


def test_tmp_and_shm_hold_no_more_than_their_size(fence):
    """5 MiB fit in a host directory; inside, /tmp and /dev/shm sized 4M refuse them (ENOSPC) and take 3 MiB."""
    host_dir = fence.workdir()
    assert outside(fence, FILL.format(size=5 * MIB), str(host_dir)).stdout == "wrote\n"
    policy = {"filesystem": {"tmpSize": "4M", "shmSize": 4 * MIB}}
    script = "; ".join(
        [FILL.format(size=5 * MIB).replace("$1", d) for d in ("/tmp", "/dev/shm")]
        + [FILL.format(size=3 * MIB).replace("$1", d) for d in ("/tmp", "/dev/shm")]
    )
    r = sh(fence, policy, script)
    assert r.stdout == "refused\nrefused\nwrote\nwrote\n", r.stderr
    assert "No space left on device" in r.stderr


def test_default_size_is_a_quarter_of_ram(fence):
    page = os.sysconf("SC_PAGE_SIZE")
    quarter = os.sysconf("SC_PHYS_PAGES") * page // 4
    expected = -(-quarter // page) * page  # tmpfs counts whole pages
    r = sh(fence, {}, 'for d in /tmp /dev/shm; do stat -f -c "%b %S" "$d"; done')
    assert r.returncode == 0, r.stderr
    sizes = [
        int(blocks) * int(block_size) for blocks, block_size in (line.split() for line in r.stdout.split("\n") if line)
    ]
    assert sizes == [expected, expected]


def test_host_devices_keep_the_hosts_shm(fence):
    """devices.mode "host": /dev/shm is the host's (what the mode is for); /tmp is still sized."""
    r = sh(
        fence, {"devices": {"mode": "host"}, "filesystem": {"tmpSize": "4M"}}, "stat -f -c %b /tmp; stat -c %d /dev/shm"
    )
    assert r.returncode == 0, r.stderr
    blocks, device = r.stdout.split()
    assert int(blocks) * os.sysconf("SC_PAGE_SIZE") == 4 * MIB
    assert int(device) == os.stat("/dev/shm").st_dev


# --- /run/user/<uid> ------------------------------------------------------------------------------


@pytest.fixture
def runtime_dir(fence):
    """The runner's /run/user/<uid> with a secret, a file to grant, a socket and a directory in it; made for
    the test when the machine has none (then removed), else only the files are added (and removed)."""
    uid = pwd.getpwnam(fence.user).pw_uid if fence.user else os.getuid()
    gid = pwd.getpwnam(fence.user).pw_gid if fence.user else os.getgid()
    base = "/run/user"
    path = f"{base}/{uid}"
    made_base = not os.path.isdir(base)
    made = not os.path.isdir(path)
    if made_base:
        os.makedirs(base, mode=0o755)
    if made:
        os.mkdir(path, 0o700)
        os.chown(path, uid, gid)
    names = ["secret.txt", "granted.txt", "agent.sock", "work"]
    for name in names[:2]:
        with open(f"{path}/{name}", "w") as f:
            f.write(f"{name} content\n")
    agent = socket.socket(socket.AF_UNIX)
    agent.bind(f"{path}/agent.sock")
    agent.close()
    os.mkdir(f"{path}/work")
    for name in names:
        os.lchown(f"{path}/{name}", uid, gid)
    try:
        yield path, made
    finally:
        if made:
            shutil.rmtree(path, ignore_errors=True)
        else:
            for name in names:
                full = f"{path}/{name}"
                shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.unlink(full)
        if made_base:
            shutil.rmtree(base, ignore_errors=True)


LOOK = (
    'ls -A "$1"; cat "$1/secret.txt" 2>/dev/null || echo no-secret; '
    'cat "$1/granted.txt" 2>/dev/null || echo no-granted; '
    'test -S "$1/agent.sock" && echo socket || echo no-socket; '
    'touch "$1/work/new" 2>/dev/null && echo wrote || echo read-only'
)
EVERYTHING = "agent.sock\ngranted.txt\nsecret.txt\nwork\nsecret.txt content\ngranted.txt content\nsocket\n"


def test_user_runtime_dir_is_hidden(fence, runtime_dir):
    path, _ = runtime_dir
    assert outside(fence, LOOK, path).stdout == EVERYTHING + "wrote\n"
    os.unlink(f"{path}/work/new")
    r = sh(fence, {}, LOOK, path)
    assert r.stdout == "no-secret\nno-granted\nno-socket\nread-only\n", r.stderr


def test_grants_inside_it_show_what_they_name(fence, runtime_dir):
    path, _ = runtime_dir
    policy = {
        "filesystem": {"allowRead": [f"{path}/granted.txt"], "allowWrite": [f"{path}/work"]},
        "network": {"allowUnixSockets": [f"{path}/agent.sock"]},
    }
    r = sh(fence, policy, LOOK, path)
    assert r.stdout == "agent.sock\ngranted.txt\nwork\nno-secret\ngranted.txt content\nsocket\nwrote\n", r.stderr
    assert os.path.exists(f"{path}/work/new")  # the write grant is the host's directory


def test_a_grant_naming_it_shows_all_of_it(fence, runtime_dir):
    path, _ = runtime_dir
    r = sh(fence, {"filesystem": {"allowRead": [path]}}, LOOK, path)
    assert r.stdout == EVERYTHING + "read-only\n", r.stderr


def test_xdg_runtime_dir_there_is_repaired(fence, runtime_dir):
    """XDG_RUNTIME_DIR=/run/user/<uid>: inside it points at a fresh private directory that works."""
    path, made = runtime_dir
    if not made:
        pytest.skip("a real runtime directory: fence would keep its own runtime files in it")
    r = sh(
        fence,
        {},
        'echo "$XDG_RUNTIME_DIR"; touch "$XDG_RUNTIME_DIR/x" && echo usable',
        env=fence.env(XDG_RUNTIME_DIR=path),
    )
    lines = r.stdout.split("\n")
    assert lines[0].startswith("/tmp/fence-runtime-") and lines[1:] == ["usable", ""], r.stderr
