"""Text the sandbox (or the agent) controls cannot forge a fence line or drive the terminal
(docs/compatibility.md#escaped-text).

Each case feeds newlines, CR, ESC sequences, C1 controls, bidi controls and
bytes that are not UTF-8 through a place fence prints (proxy decisions, a
SOCKS5 domain, a quarantined file name, a blocked exec's argv and path, a
preflight block, the ``-d`` command line) in a real sandbox, and reads
fence's stderr as bytes: no line starts with the forged ``[fence`` text and
no raw control character is left.  The sandboxed commands send their own
stderr to /dev/null, so every byte checked is fence's.  Only servers these
tests start on 127.0.0.1 are contacted (the forged hosts never resolve).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import marker_server
from fence.executor import execsupervisor
from test_run_supervised_net import sup  # noqa: F401 (fixture: a real supervisor, as root and unprivileged)

pytestmark = pytest.mark.sandbox

FORGED = "[fence] FORGED"
EVIL = f"a\x1b[2J\x1b[1;1H\r\n{FORGED} \x9b31m\u202egnp.exe"
"""ESC sequences, CR/LF and a forged line, a C1 CSI, a bidi override (argv cannot hold NUL: the SOCKS
case sends one)."""

needs_usernotif = pytest.mark.skipif(execsupervisor.supported() != "", reason="no seccomp user notification")


def _unsafe(c: str) -> bool:
    o = ord(c)
    return (
        (o < 0x20 and c != "\n")
        or 0x7F <= o < 0xA0
        or 0xD800 <= o <= 0xDFFF
        or c in "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    )


def assert_unforged(stderr: bytes) -> str:
    """fence's stderr: valid UTF-8, no raw control or bidi character, no line fence did not write."""
    text = stderr.decode("utf-8")  # a raw byte that is not UTF-8 fails here
    raw = sorted({f"U+{ord(c):04X}" for c in text if _unsafe(c)})
    assert not raw, f"raw control characters {raw} in fence's stderr: {stderr!r}"
    forged = [line for line in text.split("\n") if line.lstrip().startswith(FORGED)]
    assert not forged, f"forged lines {forged!r} in fence's stderr: {stderr!r}"
    return text


def run_bytes(fence, *args: str, cwd: Path) -> tuple[int, bytes, bytes]:
    """fence's exit code, stdout and stderr as bytes (text mode would turn a raw CR into a line break)."""
    proc = fence.popen(*args, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def workspace(fence, config: dict) -> Path:
    work = fence.workdir()
    (work / "fence.json").write_text(json.dumps(config))
    fence.own(work / "fence.json")
    return work


def put(fence, work: Path, name: str, text: str) -> str:
    path = work / name
    path.write_text(text)
    fence.own(path)
    return str(path)


@pytest.fixture(scope="module")
def origin():
    with marker_server("escaping-marker") as port:
        yield port


# --- proxy decisions ----------------------------------------------------------------------

HTTP_CLIENT = """\
import os, socket, sys
port = int(os.environ["HTTP_PROXY"].rstrip("/").rsplit(":", 1)[1])
evil = sys.argv[1].encode("utf-8", "surrogateescape")
for raw in (b"GET http://x" + evil + b".example/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
            b"GET http://x\\xc2\\x9b2J\\xe2\\x80\\xae.example/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
            b"GET http://127.0.0.1:" + sys.argv[2].encode() + b"/\\xc2\\x9b2J\\xe2\\x80\\xae HTTP/1.1\\r\\n"
            b"Host: x\\r\\n\\r\\n",
            b"CONNECT x\\xe2\\x80\\xae.example:443 HTTP/1.1\\r\\nHost: x\\x1b[2J\\r\\n\\r\\n"):
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.sendall(raw)
    s.recv(65536)
    s.close()
print("SENT")
"""


@pytest.mark.parametrize("flag", ["-d", "-m"])
def test_proxy_decision_lines_escape_hosts_and_urls(fence, origin, flag):
    """curl with a forged line in its URL (the ``-d`` command line shows it) and raw requests whose target
    carries C1 and bidi controls (the proxy's decision lines show them)."""
    work = workspace(fence, {"network": {"allowedDomains": ["127.0.0.1"]}})
    client = put(fence, work, "client.py", HTTP_CLIENT)
    script = (
        f"curl -s --max-time 5 -o /dev/null -x \"$HTTP_PROXY\" 'http://evil{EVIL}/' "
        f"2>/dev/null; python3 {client} '{EVIL}' {origin} 2>/dev/null"
    )
    _code, out, err = run_bytes(fence, flag, "-c", script, cwd=work)
    assert out == b"SENT\n", err
    text = assert_unforged(err)
    assert "[fence:http]" in text and "\\x9b2J\\u202e" in text
    if flag == "-d":
        assert "[fence] Command: " in text and f"\\x0a{FORGED}" in text


SOCKS_CLIENT = """\
import os, socket
port = int(os.environ["ALL_PROXY"].rstrip("/").rsplit(":", 1)[1])
names = [b"evil\\x1b[2J\\x1b[H\\r\\n[fence] FORGED\\x07.example", b"evil\\xc2\\x9b31m\\xe2\\x80\\xae.example",
         b"evil\\n[fence] FORGED\\x9b\\xff.example", b"\\x00\\n[fence] FORGED"]
for name in names:
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.sendall(b"\\x05\\x01\\x00")
    assert s.recv(2) == b"\\x05\\x00"
    s.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(name)]) + name + b"\\x01\\xbb")
    s.recv(64)
    s.close()
print("SENT")
"""


@pytest.mark.parametrize("flag", ["-d", "-m"])
def test_socks5_domain_names_are_escaped(fence, flag):
    """A tiny SOCKS5 client asks for names with ESC sequences, CR/LF, C1, bidi and non-UTF-8 bytes."""
    work = workspace(fence, {"network": {"allowedDomains": ["127.0.0.1"]}})
    client = put(fence, work, "socks.py", SOCKS_CLIENT)
    _code, out, err = run_bytes(fence, flag, "-c", f"python3 {client} 2>/dev/null", cwd=work)
    assert out == b"SENT\n", err
    text = assert_unforged(err)
    socks = [line for line in text.splitlines() if line.startswith("[fence:socks]")]
    assert len(socks) == 4, text
    assert "CONNECT evil\\x1b[2J\\x1b[H\\x0d\\x0a[fence] FORGED\\x07.example:443 BLOCKED" in socks[0]
    assert "evil\\x9b31m\\u202e.example" in socks[1]


@pytest.mark.nats
def test_supervised_run_escapes_the_proxy_process_events(sup):  # noqa: F811
    """Supervised, the decision lines come from the proxy process's events over NATS (``remote.py``)."""
    cfg = sup.config({"allowedDomains": ["127.0.0.1"]})
    client = put(sup.runner, sup.root, "socks.py", SOCKS_CLIENT)
    proc = sup.runner.popen(
        "-m",
        "-s",
        str(cfg),
        "-c",
        f"python3 {client} 2>/dev/null",
        env=sup.env,
        cwd=str(sup.root),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=60)
    assert out == b"SENT\n", err
    text = assert_unforged(err)
    assert text.count("[fence:socks]") == 4, text
    assert "CONNECT evil\\x1b[2J\\x1b[H\\x0d\\x0a[fence] FORGED\\x07.example:443 BLOCKED" in text


# --- files the sandbox made -----------------------------------------------------------------


def test_quarantined_file_names_are_escaped(fence):
    """A new .git/hooks is quarantined file by file: the file names are the sandbox's."""
    work = workspace(fence, {"filesystem": {"allowWrite": ["."]}, "command": {"useDefaults": False}})
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    shutil.rmtree(work / ".git" / "hooks")
    fence.own(work)
    code, _out, err = run_bytes(
        fence, "--", "bash", "-c", 'mkdir .git/hooks && printf evil > ".git/hooks/$1"', "sh", EVIL, cwd=work
    )
    assert code == 0, err
    text = assert_unforged(err)
    assert "[fence] Warning: the sandbox created protected path " in text
    assert f"\\x0d\\x0a{FORGED} \\x9b31m\\u202egnp.exe: moved to " in text
    assert not (work / ".git" / "hooks" / EVIL).exists()


# --- commands ----------------------------------------------------------------------------

EXEC_SCRIPT = """\
import os, shutil, sys
evil = sys.argv[1]
git = shutil.which("git")
os.symlink(git, "/tmp/" + evil)
for path, argv in (("/tmp/" + evil, ["innocent", "push"]), (git, ["git", "push", evil])):
    if os.fork() == 0:
        try:
            os.execv(path, argv)
        finally:
            os._exit(126)
    os.wait()
print("TRIED")
"""


@needs_usernotif
def test_blocked_exec_lines_escape_argv_and_paths(fence):
    """runtimeExecPolicy argv + ``git push``: a blocked exec through a symlink named like a forged line,
    and one whose argv carries it (the ``Runtime exec policy blocked`` line and the ``-m`` event line)."""
    work = workspace(fence, {"command": {"deny": ["git push"], "useDefaults": False, "runtimeExecPolicy": "argv"}})
    runner = put(fence, work, "exec.py", EXEC_SCRIPT)
    _code, out, err = run_bytes(fence, "-m", "--", "python3", runner, EVIL, cwd=work)
    assert out == b"TRIED\n", err
    text = assert_unforged(err)
    blocked = [line for line in text.splitlines() if line.startswith("Runtime exec policy blocked: ")]
    assert len(blocked) == 2, text
    assert f'\\x0d\\x0a{FORGED} \\x9b31m\\u202egnp.exe is git) matches "git push"' in blocked[0]
    assert '\\r\\n[fence] FORGED \\u009b31m\\u202egnp.exe" matches "git push"' in blocked[1]
    assert text.count("[fence:exec] ") == 2, text


def test_preflight_block_message_escapes_the_command(fence):
    """A ``-c`` string with ANSI, C1 and bidi sequences that preflight blocks: ``Error: command blocked``."""
    work = workspace(fence, {"command": {"deny": ["git push"], "useDefaults": False}})
    code, _out, err = run_bytes(fence, "-d", "-c", f"git push '{EVIL}'", cwd=work)
    assert code == 1, err
    text = assert_unforged(err)
    assert 'Error: command blocked by sandbox command policy: "git push ' in text
    assert '\\x1b[2J\\x1b[1;1H\\r\\n[fence] FORGED \\u009b31m\\u202egnp.exe" matches "git push"' in text


def test_missing_command_name_is_escaped(fence):
    work = fence.workdir()
    code, _out, err = run_bytes(fence, "--", EVIL, cwd=work)
    assert code == 127
    assert "Error: command not found: a\\x1b[2J" in assert_unforged(err)
