"""A run refused because a layer is missing names the layer, what needed it, and the setting to run with less.

Provoked for real where this machine allows it, as root and as the unprivileged user:

* no seccomp user notification for the argv policy: fence runs under a process whose seccomp
  filter chain already has a listener (on a syscall nobody makes), so the kernel refuses the init
  helper's own listener (EBUSY), as on a host whose container runtime took it;
* no Landlock: fence runs under a filter making ``landlock_create_ruleset`` fail with ENOSYS,
  as on a kernel built without it (not a refusal: the documented fail-open, said on stderr).

The missing network namespace is provoked in test_no_netns.py (``unshare`` + ``max_net_namespaces``).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from fence.executor import execsupervisor, inithelper, refusal

pytestmark = pytest.mark.sandbox

HOLD_A_LISTENER = r"""
import os, sys
from fence.executor import inithelper as h

machine = os.uname().machine
RET_ALLOW, RET_USER_NOTIF = 0x7FFF0000, 0x7FC00000
program = b"".join([h._bpf(0x20, 0, 0, 0), h._bpf(0x15, 0, 1, 1023),  # nr == 1023: no such call anywhere
                    h._bpf(0x06, 0, 0, RET_USER_NOTIF), h._bpf(0x06, 0, 0, RET_ALLOW)])
copy, address = h._function("buffer")(program)
fprog = (len(program) // 8).to_bytes(2, sys.byteorder) + bytes(6) + address.to_bytes(8, sys.byteorder)
h.prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
listener = h.syscall(h.SECCOMP_SYSCALL[machine], 1, 8, fprog)  # SET_MODE_FILTER, FLAG_NEW_LISTENER
pid = os.fork()
if pid == 0:
    os.close(listener)  # the filter keeps its listener while the parent holds this fd
    os.execv(sys.argv[1], sys.argv[1:])
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Run argv[1:] under a seccomp filter that already has a user-notification listener (held by this process)."""

NO_LANDLOCK = r"""
import os, sys
import pyseccomp as sc

flt = sc.SyscallFilter(sc.ALLOW)
flt.add_rule(sc.ERRNO(38), 444)  # landlock_create_ruleset -> ENOSYS
flt.load()
os.execv(sys.argv[1], sys.argv[1:])
"""
"""Run argv[1:] as on a kernel without Landlock."""


def run_under(fence, wrapper: str, work, *args: str) -> subprocess.CompletedProcess:
    python = fence.argv_prefix[0]
    return subprocess.run(
        [python, "-c", wrapper, *fence.argv(*args)],
        env=fence.env(),
        cwd=str(work),
        user=fence.user,
        capture_output=True,
        text=True,
        timeout=60,
    )


def workdir(fence, config: dict):
    work = fence.workdir()
    (work / "fence.json").write_text(json.dumps(config))
    fence.own(work)
    return work


def test_the_helper_and_the_planner_word_the_argv_refusal_alike():
    assert inithelper.argv_refusal("why") == refusal.argv_unavailable("why")
    assert refusal.argv_unavailable("why").startswith("seccomp user notification unavailable here (why): ")


@pytest.mark.skipif(execsupervisor.supported() != "", reason="no seccomp user notification on this kernel")
def test_argv_policy_without_a_user_notification_listener_is_refused_naming_layer_and_setting(fence):
    work = workdir(fence, {"command": {"runtimeExecPolicy": "argv"}})
    r = run_under(fence, HOLD_A_LISTENER, work, "-s", "fence.json", "--", "sh", "-c", "echo COMMAND-RAN")
    assert r.returncode == 126 and "COMMAND-RAN" not in r.stdout, r.stderr
    assert (
        "[fence:linux] Error: seccomp user notification unavailable here (Device or resource busy): "
        'command.runtimeExecPolicy "argv" needs it to check every exec. Refusing to run. To run with less '
        'protection: set command.runtimeExecPolicy to "path", the default'
    ) in r.stderr, r.stderr
    r = run_under(fence, HOLD_A_LISTENER, work, "-s", "fence.json", "-c", "echo COMMAND-RAN")
    assert r.returncode == 126 and "COMMAND-RAN" not in r.stdout
    (work / "fence.json").write_text(json.dumps({"command": {"runtimeExecPolicy": "path"}}))
    r = run_under(fence, HOLD_A_LISTENER, work, "-s", "fence.json", "--", "sh", "-c", "echo COMMAND-RAN")
    assert (r.returncode, r.stdout) == (0, "COMMAND-RAN\n"), r.stderr  # the setting named runs it, with less


def test_without_landlock_the_run_says_so_and_runs_bubblewrap_only(fence):
    work = workdir(fence, {"filesystem": {"allowWrite": ["."]}})
    r = run_under(fence, NO_LANDLOCK, work, "-s", "fence.json", "-d", "--", "sh", "-c", "echo COMMAND-RAN")
    assert (r.returncode, r.stdout) == (0, "COMMAND-RAN\n"), r.stderr
    assert (
        "[fence:linux] Warning: Landlock unavailable (Function not implemented): filesystem enforcement is "
        "bubblewrap-only"
    ) in r.stderr
    assert "landlock(unavailable)" in r.stderr
