"""The init helper (Landlock and its other duties), run the way fence runs it: first thing inside a real bwrap sandbox.

bubblewrap binds the whole work directory writable, so every refusal seen
here is Landlock's (EACCES / EXDEV), not a read-only mount's (EROFS); every
check looks at the host file afterwards.  Filesystem cases run as the
current user and, when root, as an unprivileged one too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import session_dir
from fence.executor import inithelper
from fence.executor.host import find_bwrap

pytestmark = pytest.mark.sandbox

BWRAP = find_bwrap()
HELPER = os.path.abspath(inithelper.__file__)
SECCOMP_FD = 63
SYSTEM = [
    "-r",
    "/usr",
    "-r",
    "/etc",
    "-r",
    "/bin",
    "-r",
    "/lib",
    "-r",
    "/lib64",
    "-r",
    "/proc",
    "-w",
    "/dev",
    "-w",
    "/tmp",
]
"""Enough to start sh, coreutils and python; the work directory is then granted per test."""


def landlock_abi() -> int:
    try:
        return inithelper.abi_version()
    except OSError:
        return 0


ABI = landlock_abi()
needs_landlock = pytest.mark.skipif(ABI < 1, reason="kernel without Landlock")


class Runner:
    """Runs bwrap + the helper as one user, with an interpreter that user can read."""

    def __init__(self, user: str | None, python: str, helper: str = HELPER):
        self.user, self.python, self.helper = user, python, helper

    def workdir(self) -> Path:
        path = session_dir("fence-landlock-")
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def bwrap(self) -> list[str]:
        """fence's foundation sandbox (plan.py), for this user."""
        argv = [BWRAP, "--new-session", "--die-with-parent", "--unshare-pid", "--unshare-net"]
        if os.geteuid() == 0 and self.user is None:
            argv += ["--unshare-user", "--cap-drop", "ALL"]
        return argv + ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]

    def run(
        self,
        rules: list[str],
        command: list[str],
        *,
        work: Path | None = None,
        env: dict | None = None,
        program: bytes | None = None,
    ) -> subprocess.CompletedProcess:
        argv = self.bwrap()
        if work is not None:
            argv += ["--bind", str(work), str(work), "--chdir", str(work)]
        pass_fds: tuple[int, ...] = ()
        spill = None
        if program is not None:
            spill = tempfile.TemporaryFile()  # noqa: SIM115 -- its fd is passed to bwrap, closed after the run
            spill.write(program)
            spill.seek(0)
            os.dup2(spill.fileno(), SECCOMP_FD)
            argv += ["--seccomp", str(SECCOMP_FD)]
            pass_fds = (SECCOMP_FD,)
        argv += ["--", self.python, "-I", "-S", self.helper, *rules, "--", *command]
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=30,
                env={**base, **(env or {})},
                user=self.user,
                pass_fds=pass_fds,
            )
        finally:
            if spill is not None:
                os.close(SECCOMP_FD)
                spill.close()

    def sh(self, rules: list[str], script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(rules, ["sh", "-c", script], **kw)


@pytest.fixture(scope="session")
def self_runner() -> Runner:
    return Runner(None, sys.executable)


@pytest.fixture(scope="session")
def unprivileged() -> Iterator[Runner]:
    from conftest import TEST_USER, _ensure_test_user, _interpreter_for_others

    if os.geteuid() != 0:
        pytest.skip("not root: the current user is already unprivileged")
    _ensure_test_user()
    dest = session_dir("fence-landlock-helper-")
    os.chmod(dest, 0o755)
    helper = dest / "inithelper.py"
    shutil.copy(HELPER, helper)
    os.chmod(helper, 0o644)
    # a copy: the repo may sit where others cannot read
    yield Runner(TEST_USER, _interpreter_for_others(), str(helper))
    shutil.rmtree(dest, ignore_errors=True)


@pytest.fixture(params=["self", "unprivileged"])
def box(request) -> Runner:
    return request.getfixturevalue("self_runner" if request.param == "self" else "unprivileged")


@pytest.fixture
def tree(box):
    """work/{rw, rw2, ro, secret}, each holding a file; bwrap will bind all of work writable."""
    work = box.workdir()
    for name in ("rw", "rw2", "ro", "secret"):
        (work / name).mkdir()
        (work / name / "file").write_text(f"{name} original\n")
    if box.user:
        pw = pwd.getpwnam(box.user)
        for path in [work, *work.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def rules_for(work: Path) -> list[str]:
    return SYSTEM + ["-w", str(work / "rw"), "-w", str(work / "rw2"), "-r", str(work / "ro")]


# filesystem -------------------------------------------------------------------------------
@needs_landlock
def test_writes_outside_write_dirs_fail_even_where_bwrap_allows(box, tree):
    ro = tree / "ro"
    script = (
        f"echo new > rw/created && echo more >> rw/file && "
        f"for op in 'echo x > ro/file' 'echo x >> ro/file' 'echo x > ro/new' 'mkdir ro/d' 'rm ro/file' "
        f"'ln -s /etc ro/link' 'mkfifo ro/fifo' 'truncate -s0 ro/file' 'echo x > {tree}/top'; do "
        f'  sh -c "$op" 2>/dev/null && echo "ALLOWED: $op"; done; echo done'
    )
    r = box.sh(rules_for(tree), script, work=tree)
    assert (r.returncode, r.stdout) == (0, "done\n"), r.stderr
    assert (tree / "rw" / "created").read_text() == "new\n"
    assert (tree / "rw" / "file").read_text() == "rw original\nmore\n"
    assert (ro / "file").read_text() == "ro original\n"
    assert sorted(p.name for p in ro.iterdir()) == ["file"]
    assert not (tree / "top").exists()


@needs_landlock
def test_refusal_is_eacces_not_erofs(box, tree):
    r = box.sh(rules_for(tree), "echo x > ro/file", work=tree)
    assert r.returncode != 0 and "Permission denied" in r.stderr


@needs_landlock
def test_reads_are_denied_where_not_granted(box, tree):
    script = (
        "cat ro/file; cat secret/file 2>/dev/null || echo no-secret; ls secret 2>/dev/null || echo no-list; "
        "ls exe 2>/dev/null || echo no-list-exe; cat exe/file"
    )
    (tree / "exe").mkdir()
    (tree / "exe" / "file").write_text("exe original\n")
    if box.user:
        pw = pwd.getpwnam(box.user)
        os.chown(tree / "exe", pw.pw_uid, pw.pw_gid)
    r = box.sh(rules_for(tree) + ["-x", str(tree / "exe")], script, work=tree)
    assert r.stdout == "ro original\nno-secret\nno-list\nno-list-exe\nexe original\n", r.stderr


@needs_landlock
@pytest.mark.skipif(ABI < 2, reason="REFER needs Landlock ABI 2")
def test_refer_rename_and_link_across_directories(box, tree):
    script = (
        "mv rw/file ro/ 2>/dev/null || echo no-mv-out; "
        "ln ro/file rw/hard 2>/dev/null || echo no-hardlink-in; "
        "mv ro/file rw/ 2>/dev/null || echo no-mv-in; "
        "mv rw/file rw2/moved && echo mv-between-write-dirs; "
        "mv rw2/moved rw2/renamed && echo rename-in-place"
    )
    r = box.sh(rules_for(tree), script, work=tree)
    assert r.stdout == ("no-mv-out\nno-hardlink-in\nno-mv-in\nmv-between-write-dirs\nrename-in-place\n"), r.stderr
    assert (tree / "ro" / "file").read_text() == "ro original\n"
    assert not (tree / "rw" / "hard").exists()
    assert (tree / "rw2" / "renamed").read_text() == "rw original\n"


@needs_landlock
def test_rules_on_single_files_get_file_rights_only(box, tree):
    """A --write rule on a file (not a dir) must not fail: dir-only rights are dropped for it."""
    target = tree / "ro" / "file"
    r = box.sh(SYSTEM + ["-w", str(target), "-r", str(tree)], "echo changed > ro/file; echo x > ro/other", work=tree)
    assert target.read_text() == "changed\n"
    assert not (tree / "ro" / "other").exists()
    assert "Warning" not in r.stderr, r.stderr


@needs_landlock
def test_rights_option_grants_exactly_the_listed_rights(box, tree):
    script = "echo y >> rw/file && echo appended; echo z > rw/new 2>/dev/null || echo no-create; cat rw/file"
    r = box.sh(SYSTEM + ["--rights", "read_file,write_file", str(tree / "rw")], script, work=tree)
    assert r.stdout == "appended\nno-create\nrw original\ny\n", r.stderr


@needs_landlock
def test_missing_paths_are_skipped(box, tree):
    r = box.sh(rules_for(tree) + ["-w", "/does/not/exist", "-r", str(tree / "nope")], "echo ok", work=tree)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")


@needs_landlock
def test_devices_and_tmp_stay_usable(box, tree):
    script = "echo x > /dev/null && echo y > /tmp/t && cat /tmp/t && head -c 3 /dev/zero | wc -c && echo z >&2"
    r = box.sh(rules_for(tree), script, work=tree)
    assert (r.returncode, r.stdout, r.stderr) == (0, "y\n3\n", "z\n")


# environment, argv, exit codes ------------------------------------------------------------
def test_ld_variables_are_stripped_and_the_rest_kept(box, tree):
    r = box.run(
        rules_for(tree),
        ["env"],
        work=tree,
        env={"LD_LIBRARY_PATH": "/x", "LD_AUDIT": "/y", "ld_lower": "kept", "KEEP_ME": "1"},
    )
    lines = set(r.stdout.splitlines())
    assert "KEEP_ME=1" in lines and "ld_lower=kept" in lines
    assert not [line for line in lines if line.startswith("LD_")]


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc to build a preload library")
def test_a_real_ld_preload_library_never_reaches_the_command(tmp_path_factory):
    """The library announces every process it is loaded into; the command must not be one."""
    d = tmp_path_factory.mktemp("preload")
    src = d / "announce.c"
    src.write_text(
        "#include <stdio.h>\n#include <errno.h>\n"
        "__attribute__((constructor)) static void hi(void) "
        '{ fprintf(stderr, "PRELOADED-INTO %s\\n", program_invocation_short_name); }\n'
    )
    lib = session_dir("fence-announce-") / "announce.so"  # not /tmp: the helper loads it inside too
    subprocess.run(["gcc", "-shared", "-fPIC", "-D_GNU_SOURCE", "-o", str(lib), str(src)], check=True)
    try:
        r = Runner(None, sys.executable).run(
            SYSTEM, ["sh", "-c", "env | grep -c LD_PRELOAD; true"], env={"LD_PRELOAD": str(lib)}
        )
    finally:
        shutil.rmtree(lib.parent)
    assert r.stdout == "0\n"
    loaded = [line for line in r.stderr.splitlines() if line.startswith("PRELOADED-INTO")]
    # bwrap and the helper's interpreter start with it (fence strips LD_* before bwrap); sh, env, grep never
    assert loaded and {line.split()[1] for line in loaded} <= {"bwrap", "python", "python3", "python3.11"}, r.stderr


def test_argv_and_exit_code_are_preserved(box):
    r = box.run(SYSTEM, ["printf", "%s|", "a b", "*", "", "$HOME", "é"])
    assert (r.returncode, r.stdout) == (0, "a b|*||$HOME|é|")
    assert box.run(SYSTEM, ["sh", "-c", "exit 7"]).returncode == 7
    assert box.run(SYSTEM, ["sh", "-c", "kill -TERM $$"]).returncode == 128 + 15


def test_command_not_found_and_not_executable(box, tree):
    r = box.run(SYSTEM, ["no-such-command-xyz"])
    assert r.returncode == 127 and "command not found: no-such-command-xyz" in r.stderr
    r = box.run(SYSTEM, ["/no/such/path"])
    assert r.returncode == 127
    (tree / "rw" / "plain").write_text("echo hi\n")
    r = box.run(rules_for(tree), [str(tree / "rw" / "plain")], work=tree)
    assert r.returncode == 126 and "cannot execute" in r.stderr


def test_script_without_shebang_runs_under_sh(box, tree):
    script = tree / "rw" / "noshebang"
    script.write_text('echo from-sh "$1"\n')
    os.chmod(script, 0o755)
    r = box.run(rules_for(tree), [str(script), "arg"], work=tree)
    assert (r.returncode, r.stdout) == (0, "from-sh arg\n"), r.stderr


def test_bad_arguments_exit_2(box):
    for rules in (["--bogus"], ["-w"], ["--connect", "http"], ["--rights", "fly", "/"]):
        r = box.run(rules, ["true"])
        assert r.returncode == 2 and "[fence:landlock-wrapper] Error:" in r.stderr, rules
    r = box.run([], [])
    assert r.returncode == 2


# Landlock missing -------------------------------------------------------------------------
def _landlock_enosys() -> bytes:
    """A seccomp program making landlock_create_ruleset fail like a kernel without Landlock."""
    import pyseccomp as sc

    from fence.executor.seccomp import _export

    flt = sc.SyscallFilter(sc.ALLOW)
    flt.add_rule(sc.ERRNO(38), inithelper.SYS_CREATE_RULESET)
    return _export(flt)


def test_without_landlock_warn_and_run_or_refuse_in_strict_mode(box, tree):
    program = _landlock_enosys()
    r = box.sh(rules_for(tree), "echo x > ro/file && echo ran", work=tree, program=program)
    assert (r.returncode, r.stdout) == (0, "ran\n")
    assert r.stderr == (
        "[fence:linux] Warning: Landlock unavailable (kernel built without Landlock): "
        "filesystem enforcement is bubblewrap-only\n"
    )
    (tree / "ro" / "file").write_text("ro original\n")
    r = box.sh(["--strict"] + rules_for(tree), "echo x > ro/file; echo ran", work=tree, program=program)
    assert r.returncode == 126 and r.stdout == "" and "Refusing to run (strict mode)" in r.stderr
    assert (tree / "ro" / "file").read_text() == "ro original\n"


@needs_landlock
def test_debug_reports_the_abi(box):
    r = box.run(["--debug"] + SYSTEM, ["true"])
    assert r.returncode == 0
    assert f"[fence:landlock] Created ruleset (ABI v{min(ABI, 7)}, fd=" in r.stderr
    assert f"[fence:landlock] Applied restrictions (ABI v{min(ABI, 7)})" in r.stderr


# network and scoping ----------------------------------------------------------------------
NET_PROBE = r"""
import errno, socket
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
servers = {}
def listen(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(); servers[port] = s
out = [attempt(lambda: listen(port)) for port in (18001, 18002, 18003)]
out += [attempt(lambda: socket.create_connection(("127.0.0.1", port)).close()) for port in (18001, 18002)]
print(" ".join(out))
"""


@needs_landlock
@pytest.mark.skipif(ABI < 4, reason="TCP rules need Landlock ABI 4")
def test_tcp_bind_and_connect_only_to_listed_ports(box):
    python = ["python3", "-I", "-S", "-c", NET_PROBE]
    assert box.run(SYSTEM, python).stdout == "ok ok ok ok ok\n"
    r = box.run(SYSTEM + ["--bind", "18001", "--bind", "18002", "--connect", "18001"], python)
    assert r.stdout == "ok ok EACCES ok EACCES\n", r.stderr
    r = box.run(SYSTEM + ["--restrict-net"], python)
    assert r.stdout == "EACCES EACCES EACCES EACCES EACCES\n", r.stderr  # refused before any routing


SCOPE_PROBE = r"""
import errno, os, socket, sys
peer = int(sys.argv[1])
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print(attempt(lambda: socket.socket(socket.AF_UNIX).connect("\0fence-scope-test")),
      attempt(lambda: os.kill(peer, 0)))
"""

SCOPE_SERVER = (
    "import socket, time; s = socket.socket(socket.AF_UNIX); s.bind('\\0fence-scope-test'); s.listen(); time.sleep(30)"
)


@needs_landlock
@pytest.mark.skipif(ABI < 6, reason="scoping needs Landlock ABI 6")
def test_scope_blocks_abstract_sockets_and_signals_leaving_the_domain(box):
    """A server started before the helper is outside its domain: reachable without --scope only."""

    def run(extra):
        script = (
            f'python3 -I -S -c "{SCOPE_SERVER}" & pid=$!; sleep 0.3; '
            f"{box.python} -I -S {box.helper} {' '.join(extra + SYSTEM)} -- "
            f"python3 -I -S -c '{SCOPE_PROBE}' $pid; kill $pid"
        )
        r = subprocess.run(
            box.bwrap() + ["--", "sh", "-c", script], capture_output=True, text=True, timeout=30, user=box.user
        )
        return r.stdout

    assert run([]) == "ok ok\n"
    assert run(["--scope"]) == "EPERM EPERM\n"


@needs_landlock
def test_audit_flag_is_accepted(box):
    r = box.run(["--audit"] + SYSTEM, ["true"])
    assert (r.returncode, r.stderr) == (0, "")


# cost -------------------------------------------------------------------------------------
def test_helper_imports_only_builtin_modules():
    """Beyond what ``python -I -S`` loads anyway: only ``_ctypes`` (not ``ctypes``, ``os``, ``struct``...),
    and only once it makes a call (importing it on the host for ``helper_command`` loads nothing)."""
    code = (
        "import sys; before = set(sys.modules); "
        f"sys.path.insert(0, {os.path.dirname(HELPER)!r}); import inithelper; "
        "print(sorted(set(sys.modules) - before - {'inithelper'})); "
        "import errno\ntry:\n    inithelper.abi_version()\nexcept OSError:\n    pass\n"
        "print(sorted(set(sys.modules) - before - {'inithelper', 'errno'}))"
    )
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout == "[]\n['_ctypes']\n"


@needs_landlock
def test_public_ctypes_fallback(monkeypatch):
    import _ctypes

    monkeypatch.delattr(_ctypes, "FUNCFLAG_USE_ERRNO")
    monkeypatch.setattr(inithelper, "_libc", {})
    assert inithelper.abi_version() == ABI
    assert "ctypes" in sys.modules


@pytest.fixture
def var_tmp():
    """Like tmp_path, but visible inside the sandboxes (their /tmp is a private tmpfs)."""
    path = session_dir("fence-landlock-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_helper_command_prefers_a_current_pyc(var_tmp):
    """A fresh .pyc runs directly (no compile per run); a stale one or another interpreter gets the source."""
    import importlib.util
    import py_compile

    tmp_path = var_tmp
    source = tmp_path / "inithelper.py"
    shutil.copy(HELPER, source)
    cached = importlib.util.cache_from_source(str(source))
    spec = importlib.util.spec_from_file_location("inithelper_copy", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.helper_command() == [sys.executable, "-I", "-S", str(source)]  # no pyc yet
    py_compile.compile(str(source), cfile=cached, doraise=True)
    assert module.helper_command() == [sys.executable, "-I", "-S", cached]
    assert module.helper_command("/usr/bin/python3") == ["/usr/bin/python3", "-I", "-S", str(source)]
    if ABI:
        work = tmp_path / "w"
        work.mkdir()
        os.chmod(tmp_path, 0o755)
        r = subprocess.run(
            Runner(None, sys.executable).bwrap()
            + ["--bind", str(work), str(work), "--"]
            + module.helper_command()
            + ["-r", "/", "--", "sh", "-c", f"echo x > {work}/f"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode != 0 and "Permission denied" in r.stderr and not (work / "f").exists()
    source.write_text(source.read_text() + "\n# changed\n")
    assert module.helper_command() == [sys.executable, "-I", "-S", str(source)]
