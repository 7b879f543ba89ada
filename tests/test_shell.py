"""Shell selection for ``fence -c``: bash by default, a validated ``$SHELL`` on request."""

from __future__ import annotations

import pytest

from fence.executor.host import which
from fence.executor.shell import ShellError, select_shell


def test_bash_by_default():
    assert select_shell("bash", {"PATH": "/usr/bin:/bin"}, which).endswith("/bash")
    with pytest.raises(ShellError, match='shell "bash" not found'):
        select_shell("bash", {"PATH": "/nonexistent"}, which)


@pytest.mark.parametrize(
    "shell,problem",
    [
        ("", "not set"),
        ("sh", "absolute path"),
        ("/nonexistent/sh", "not an executable"),
        ("/etc/passwd", "not an executable"),
        ("/usr/bin/env", "not listed in"),
    ],
)
def test_user_shell_is_validated(shell, problem):
    with pytest.raises(ShellError, match=problem):
        select_shell("user", {"SHELL": shell} if shell else {}, which)


def test_user_shell_listed_in_etc_shells(tmp_path):
    shells = tmp_path / "shells"
    shells.write_text("# comment\n/bin/sh\n")
    assert select_shell("user", {"SHELL": "/bin/sh"}, which, str(shells)) == "/bin/sh"


def test_unknown_mode():
    with pytest.raises(ShellError, match="expected one of: bash, user"):
        select_shell("zsh", {}, which)


@pytest.mark.sandbox
def test_cli_user_shell(fence):
    r = fence.run("--shell", "user", "-c", "echo $0", env=fence.env(SHELL="/bin/sh"))
    assert (r.returncode, r.stdout) == (0, "/bin/sh\n"), r.stderr
    r = fence.run("--shell", "user", "-c", "echo $0", env=fence.env(SHELL="/usr/bin/env"))
    assert r.returncode == 1 and r.stderr == "Error: --shell user: $SHELL /usr/bin/env is not listed in /etc/shells\n"
    r = fence.run("-c", "echo $0", env=fence.env(SHELL="/bin/sh"))
    assert r.stdout.strip().endswith("bash")
